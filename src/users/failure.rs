//! [`Failure`]: why a user command (`passwd`, `deluser`, `check-config`, `db …`) failed,
//! with the exit code it ends with.

use crate::users::read::UsersFileError;

/// Why a command failed: the message for the person and the process's exit code.
#[derive(Debug)]
pub struct Failure {
    /// 2 for bad input or configuration, 1 for an I/O failure or an absent user.
    pub exit_code: u8,
    /// What went wrong, naming the user and the file.
    pub message: String,
}

impl Failure {
    /// Bad input: a name, a password or a users file that breaks the rules.
    pub(crate) fn invalid(message: String) -> Self {
        Self {
            exit_code: 2,
            message,
        }
    }

    /// Something that could not be done: reading, hashing, writing.
    pub(crate) fn failed(message: String) -> Self {
        Self {
            exit_code: 1,
            message,
        }
    }
}

impl From<UsersFileError> for Failure {
    fn from(error: UsersFileError) -> Self {
        if error.is_io() {
            Self::failed(error.to_string())
        } else {
            Self::invalid(error.to_string())
        }
    }
}
