//! [`Verb`]: the commands a client sends (SPEC §2), by their words — the first part of a
//! client's message.

/// `Verb::word` and `Verb::message` from one table of words, so the two cannot differ.
macro_rules! words {
    ($($verb:ident => $word:literal,)*) => {
        /// The command's word, as sent, such as `prolongate`.
        #[inline]
        pub const fn word(self) -> &'static str {
            match self {
                $(Self::$verb => $word,)*
            }
        }

        /// The command without arguments as a whole message: its word and the terminator
        /// (RS, U+001E), such as `prolongate␞`. Only [`Verb::Login`] needs arguments, so
        /// `login␞` alone is answered `invalid_args_count`.
        #[inline]
        pub const fn message(self) -> &'static [u8] {
            match self {
                $(Self::$verb => concat!($word, "\u{1e}").as_bytes(),)*
            }
        }
    };
}

/// A command a client sends: the first part of its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `login␟name␟password`: check the password and bind the connection to `name`.
    Login,
    /// `logout`: bind the connection to no name.
    Logout,
    /// `disconnect`: answer, then close the connection.
    Disconnect,
    /// `prolongate`: reset the inactivity timer.
    Prolongate,
    /// `invalidate`: invalidate every other connection bound to the same name.
    Invalidate,
}

impl Verb {
    /// Every command, in the order of SPEC §2's table.
    pub const ALL: [Verb; 5] = [
        Self::Login,
        Self::Logout,
        Self::Disconnect,
        Self::Prolongate,
        Self::Invalidate,
    ];

    words! {
        Login => "login",
        Logout => "logout",
        Disconnect => "disconnect",
        Prolongate => "prolongate",
        Invalidate => "invalidate",
    }

    /// How many arguments the command takes after its word.
    #[inline]
    pub fn arguments(self) -> usize {
        match self {
            Self::Login => 2,
            Self::Logout | Self::Disconnect | Self::Prolongate | Self::Invalidate => 0,
        }
    }

    /// The command whose word is `bytes`, if there is one (exact bytes, so
    /// case-sensitive). Runs once per message a client sends.
    #[inline]
    pub fn from_word(bytes: &[u8]) -> Option<Verb> {
        match bytes {
            b"login" => Some(Self::Login),
            b"logout" => Some(Self::Logout),
            b"disconnect" => Some(Self::Disconnect),
            b"prolongate" => Some(Self::Prolongate),
            b"invalidate" => Some(Self::Invalidate),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::is_valid_part;

    #[test]
    fn every_word_is_a_valid_part_and_reads_back() {
        for verb in Verb::ALL {
            assert!(is_valid_part(verb.word().as_bytes()), "{verb:?}");
            assert_eq!(Verb::from_word(verb.word().as_bytes()), Some(verb));
        }
        assert_eq!(Verb::from_word(b"LOGIN"), None);
        assert_eq!(Verb::from_word(b""), None);
        assert_eq!(Verb::from_word(b"login_valid"), None);
    }

    #[test]
    fn every_message_is_its_word_encoded() {
        for verb in Verb::ALL {
            assert_eq!(
                verb.message(),
                &crate::encoded_message(&[verb.word().as_bytes()])[..],
                "{verb:?}"
            );
        }
    }
}
