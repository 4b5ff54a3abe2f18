//! [`Reply`]: the one-part messages the server sends (SPEC §2–§3), and their words.

/// `Reply::name` and `Reply::message` from one table of words, so the two cannot differ.
macro_rules! words {
    ($($reply:ident => $word:literal,)*) => {
        /// The message's only part, as sent, such as `login_valid`. Inline: the server
        /// writes one per reply.
        #[inline]
        pub const fn name(self) -> &'static str {
            match self {
                $(Self::$reply => $word,)*
            }
        }

        /// The whole message as sent: the part and the terminator (RS, U+001E), such as
        /// `login_valid␞` — what [`encode_message`](crate::encode_message) makes of
        /// [`Reply::name`], ready-made: the server queues one per command.
        #[inline]
        pub const fn message(self) -> &'static [u8] {
            match self {
                $(Self::$reply => concat!($word, "\u{1e}").as_bytes(),)*
            }
        }
    };
}

/// The first part of `event␟<time>␟<text>`, the one message the server sends with more
/// than one part.
pub const EVENT: &str = "event";

/// A one-part message the server sends: a reply to a command or a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reply {
    /// `login_valid`: the login succeeded.
    LoginValid,
    /// `login_invalid`: the login failed, for whatever reason.
    LoginInvalid,
    /// `logout_ack`: the connection is bound to no name.
    LogoutAck,
    /// `disconnect_ack`: the connection closes after this reply.
    DisconnectAck,
    /// `prolongate_ack`: the inactivity timer was reset.
    ProlongateAck,
    /// `invalidate_ack`: the other connections of the same name were invalidated.
    InvalidateAck,
    /// `unknown_command`: the first part named no command.
    UnknownCommand,
    /// `invalid_args_count`: a known command with the wrong number of arguments.
    InvalidArgsCount,
    /// Notification `timeout`: the inactivity timeout expired; the connection closes.
    Timeout,
    /// Notification `invalidated`: the connection's binding was revoked.
    Invalidated,
    /// Notification `io_error`: the server hit an error on this connection; it closes.
    IoError,
    /// Notification `shutdown`: the server is stopping; the connection closes.
    Shutdown,
}

impl Reply {
    /// Every one-part message, replies first, then notifications.
    pub const ALL: [Reply; 12] = [
        Self::LoginValid,
        Self::LoginInvalid,
        Self::LogoutAck,
        Self::DisconnectAck,
        Self::ProlongateAck,
        Self::InvalidateAck,
        Self::UnknownCommand,
        Self::InvalidArgsCount,
        Self::Timeout,
        Self::Invalidated,
        Self::IoError,
        Self::Shutdown,
    ];

    words! {
        LoginValid => "login_valid",
        LoginInvalid => "login_invalid",
        LogoutAck => "logout_ack",
        DisconnectAck => "disconnect_ack",
        ProlongateAck => "prolongate_ack",
        InvalidateAck => "invalidate_ack",
        UnknownCommand => "unknown_command",
        InvalidArgsCount => "invalid_args_count",
        Timeout => "timeout",
        Invalidated => "invalidated",
        IoError => "io_error",
        Shutdown => "shutdown",
    }

    /// The one-part message whose part is `bytes`, if there is one (exact bytes, so
    /// case-sensitive).
    pub fn from_name(bytes: &[u8]) -> Option<Reply> {
        Self::ALL
            .into_iter()
            .find(|reply| reply.name().as_bytes() == bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::is_valid_part;

    #[test]
    fn every_name_is_a_valid_part_and_reads_back() {
        for reply in Reply::ALL {
            assert!(is_valid_part(reply.name().as_bytes()), "{reply:?}");
            assert_eq!(Reply::from_name(reply.name().as_bytes()), Some(reply));
        }
        assert_eq!(Reply::InvalidArgsCount.name(), "invalid_args_count");
        assert_eq!(Reply::from_name(b"LOGIN_VALID"), None);
        assert_eq!(Reply::from_name(b"event"), None);
    }

    #[test]
    fn every_message_is_its_name_encoded() {
        for reply in Reply::ALL {
            assert_eq!(
                reply.message(),
                &crate::encoded_message(&[reply.name().as_bytes()])[..],
                "{reply:?}"
            );
            assert_eq!(reply.message().last(), Some(&crate::RS));
        }
    }
}
