//! The rules a user name and a password must follow (SPEC §5), shared by the login path,
//! the users file and every API that names a user.

use std::fmt;

/// Longest accepted user name, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest accepted password, in bytes: bcrypt reads no further, and we never truncate.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// Why a user name or a password was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    /// The name is empty.
    EmptyName,
    /// The name is longer than [`MAX_NAME_BYTES`].
    NameTooLong,
    /// The name is not valid UTF-8.
    NameNotUtf8,
    /// The name holds a control character (U+0000–U+001F or U+007F).
    NameHasControlCharacter,
    /// The password is empty.
    EmptyPassword,
    /// The password is longer than [`MAX_PASSWORD_BYTES`].
    PasswordTooLong,
    /// The password holds a message or part separator (U+001E or U+001F).
    PasswordHasSeparator,
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EmptyName => "the user name is empty",
            Self::NameTooLong => "the user name is longer than 128 bytes",
            Self::NameNotUtf8 => "the user name is not valid UTF-8",
            Self::NameHasControlCharacter => "the user name contains a control character",
            Self::EmptyPassword => "the password is empty",
            Self::PasswordTooLong => "the password is longer than 72 bytes",
            Self::PasswordHasSeparator => "the password contains U+001E or U+001F",
        })
    }
}

impl std::error::Error for CredentialError {}

/// Checks a user name given as raw bytes (as it arrives on the wire) and returns it as text.
pub fn check_name_bytes(name: &[u8]) -> Result<&str, CredentialError> {
    let name = std::str::from_utf8(name).map_err(|_| CredentialError::NameNotUtf8)?;
    check_name(name)?;
    Ok(name)
}

/// Checks a user name: 1–128 bytes with no control characters.
pub fn check_name(name: &str) -> Result<(), CredentialError> {
    if name.is_empty() {
        return Err(CredentialError::EmptyName);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(CredentialError::NameTooLong);
    }
    // Byte by byte: those characters (U+0000–U+001F, U+007F: ASCII's controls) are one
    // byte each, and no byte of a longer UTF-8 sequence is below 0x80 (every event of a
    // batch is checked here).
    if name.bytes().any(|byte| byte.is_ascii_control()) {
        return Err(CredentialError::NameHasControlCharacter);
    }
    Ok(())
}

/// Checks a password: 1–72 bytes with no U+001E or U+001F.
pub fn check_password(password: &[u8]) -> Result<(), CredentialError> {
    if password.is_empty() {
        return Err(CredentialError::EmptyPassword);
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(CredentialError::PasswordTooLong);
    }
    if !tether_wire::is_valid_part(password) {
        return Err(CredentialError::PasswordHasSeparator);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules_of_the_users_section() {
        assert_eq!(check_name("alice"), Ok(()));
        assert_eq!(check_name("Алиса 🙂"), Ok(()));
        // U+0085 is a control of the C1 set, which SPEC §5 does not exclude.
        assert_eq!(check_name("a\u{85}b"), Ok(()));
        assert_eq!(check_name(&"a".repeat(128)), Ok(()));
        assert_eq!(check_name(""), Err(CredentialError::EmptyName));
        assert_eq!(
            check_name(&"a".repeat(129)),
            Err(CredentialError::NameTooLong)
        );
        assert_eq!(
            check_name("a\tb"),
            Err(CredentialError::NameHasControlCharacter)
        );
        assert_eq!(
            check_name("a\u{7F}"),
            Err(CredentialError::NameHasControlCharacter)
        );
        assert_eq!(check_name_bytes(b"\xFF"), Err(CredentialError::NameNotUtf8));
    }

    #[test]
    fn passwords_follow_the_rules_of_the_users_section() {
        assert_eq!(check_password(b"secret"), Ok(()));
        assert_eq!(check_password(&[b'p'; 72]), Ok(()));
        assert_eq!(check_password(b""), Err(CredentialError::EmptyPassword));
        assert_eq!(
            check_password(&[b'p'; 73]),
            Err(CredentialError::PasswordTooLong)
        );
        assert_eq!(
            check_password(b"a\x1Eb"),
            Err(CredentialError::PasswordHasSeparator)
        );
    }
}
