//! The commands a client sends and the one-part messages the server answers with
//! (SPEC §2–§3), independent of sockets and actors.

use crate::protocol::codec::parts;
/// The one-part messages the server sends, from `tether-wire` (the client reads the same).
pub use tether_wire::Reply;
use tether_wire::Verb;

/// A well-formed command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `login␟name␟password`: check the password and bind the connection to `name`.
    Login {
        /// The user name as sent, not yet checked.
        name: &'a [u8],
        /// The password as sent, not yet checked.
        password: &'a [u8],
    },
    /// `logout`: bind the connection to no name.
    Logout,
    /// `disconnect`: answer, then close the connection.
    Disconnect,
    /// `prolongate`: reset the inactivity timer.
    Prolongate,
    /// `invalidate`: invalidate every other connection bound to the same name.
    Invalidate,
}

/// Why a message is not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    /// The first part names no command.
    Unknown,
    /// A known command with the wrong number of arguments.
    InvalidArgsCount,
}

impl CommandError {
    /// The reply this error gets.
    pub fn reply(self) -> Reply {
        match self {
            Self::Unknown => Reply::UnknownCommand,
            Self::InvalidArgsCount => Reply::InvalidArgsCount,
        }
    }
}

/// Reads the command a message (without its terminator) carries. Types are compared as
/// exact bytes. Allocates nothing: it runs once per message a client sends.
#[inline]
pub fn parse_command(message: &[u8]) -> Result<Command<'_>, CommandError> {
    let mut parts = parts(message);
    let verb = Verb::from_word(parts.next().unwrap_or_default()).ok_or(CommandError::Unknown)?;
    let command = match verb {
        Verb::Login => match (parts.next(), parts.next()) {
            (Some(name), Some(password)) => Command::Login { name, password },
            _ => return Err(CommandError::InvalidArgsCount),
        },
        Verb::Logout => Command::Logout,
        Verb::Disconnect => Command::Disconnect,
        Verb::Prolongate => Command::Prolongate,
        Verb::Invalidate => Command::Invalidate,
    };
    match parts.next() {
        None => Ok(command),
        Some(_) => Err(CommandError::InvalidArgsCount),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::{encoded_message, MessageCodec};
    use bytes::BytesMut;

    /// The message made of `parts`, as the connection hands it to `parse_command`.
    fn frame(parts: &[&[u8]]) -> Vec<u8> {
        let mut buf = BytesMut::from(&encoded_message(parts)[..]);
        let frame = MessageCodec::new(1024)
            .decode_frame(&mut buf)
            .expect("decodes")
            .expect("whole");
        frame.as_bytes().to_vec()
    }

    #[test]
    fn each_command_parses_with_its_argument_count() {
        let login = frame(&[b"login", b"alice", b"pw"]);
        assert_eq!(
            parse_command(&login),
            Ok(Command::Login {
                name: b"alice",
                password: b"pw"
            })
        );
        assert_eq!(parse_command(&frame(&[b"logout"])), Ok(Command::Logout));
        assert_eq!(
            parse_command(&frame(&[b"disconnect"])),
            Ok(Command::Disconnect)
        );
        assert_eq!(
            parse_command(&frame(&[b"prolongate"])),
            Ok(Command::Prolongate)
        );
        assert_eq!(
            parse_command(&frame(&[b"invalidate"])),
            Ok(Command::Invalidate)
        );
    }

    #[test]
    fn wrong_argument_counts_are_reported_for_known_commands() {
        for parts in [
            &[&b"login"[..]][..],
            &[b"login", b"alice"],
            &[b"login", b"a", b"b", b"c"],
            &[b"logout", b""],
            &[b"prolongate", b"x", b"y"],
        ] {
            assert_eq!(
                parse_command(&frame(parts)),
                Err(CommandError::InvalidArgsCount),
                "{parts:?}"
            );
        }
    }

    #[test]
    fn unknown_types_the_empty_message_and_other_cases_are_unknown() {
        for parts in [
            &[&b""[..]][..],
            &[b"LOGIN", b"a", b"b"],
            &[b"Logout"],
            &[b"hello", b"x", b"y", b"z"],
            &[b"", b"login"],
        ] {
            assert_eq!(
                parse_command(&frame(parts)),
                Err(CommandError::Unknown),
                "{parts:?}"
            );
        }
    }
}
