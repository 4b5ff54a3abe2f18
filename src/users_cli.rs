//! The `tether passwd` and `tether deluser` commands (SPEC §5): they edit the users file
//! named by the configuration; a running server picks the change up itself.

use std::io::{BufRead, IsTerminal};

use tether_actors::credentials::{check_name, check_password};

use crate::config::Config;
use crate::users_file::{self, PasswordChange, UsersFileError};

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
    fn invalid(message: String) -> Self {
        Self {
            exit_code: 2,
            message,
        }
    }

    /// Something that could not be done: reading, hashing, writing.
    fn failed(message: String) -> Self {
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

/// `tether passwd NAME`: reads a password (twice without echo on a terminal, one line from
/// standard input otherwise), hashes it at `auth.bcrypt_cost` and sets it, creating the
/// user if needed. Answers what it did.
pub fn passwd(config: &Config, name: &str) -> Result<String, Failure> {
    check_name(name).map_err(|error| Failure::invalid(format!("user {name:?}: {error}")))?;
    let password = read_password(name)?;
    let hash = bcrypt::hash(&password, config.auth.bcrypt_cost)
        .map_err(|error| Failure::failed(format!("cannot hash the password: {error}")))?;
    let path = &config.auth.users_file;
    let change = users_file::set_password_hash(path, name, &hash)?;
    Ok(match change {
        PasswordChange::Created => format!("user {name:?} created in {}", path.display()),
        PasswordChange::Changed => {
            format!("password of user {name:?} changed in {}", path.display())
        }
    })
}

/// `tether deluser NAME`: removes the user; an absent user is a failure (exit code 1) and
/// leaves the file untouched. Answers what it did.
pub fn deluser(config: &Config, name: &str) -> Result<String, Failure> {
    check_name(name).map_err(|error| Failure::invalid(format!("user {name:?}: {error}")))?;
    let path = &config.auth.users_file;
    if users_file::remove_user(path, name)? {
        Ok(format!("user {name:?} removed from {}", path.display()))
    } else {
        Err(Failure::failed(format!(
            "no user {name:?} in {}; nothing removed",
            path.display()
        )))
    }
}

/// The new password of `name`, checked against SPEC §5.
fn read_password(name: &str) -> Result<Vec<u8>, Failure> {
    let stdin = std::io::stdin();
    let cannot_read =
        |error: std::io::Error| Failure::failed(format!("cannot read the password: {error}"));
    let password = if stdin.is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {name:?}: "))
            .map_err(cannot_read)?
            .into_bytes();
        check(&first)?;
        let second = rpassword::prompt_password("Repeat it: ")
            .map_err(cannot_read)?
            .into_bytes();
        if first != second {
            return Err(Failure::invalid(
                "the two passwords differ; nothing changed".to_string(),
            ));
        }
        first
    } else {
        let mut line = Vec::new();
        let read = stdin.lock().read_until(b'\n', &mut line);
        if read.map_err(cannot_read)? == 0 {
            return Err(Failure::invalid(
                "no password on standard input (expected one line)".to_string(),
            ));
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        line
    };
    check(&password)?;
    Ok(password)
}

/// Refuses a password that breaks SPEC §5.
fn check(password: &[u8]) -> Result<(), Failure> {
    check_password(password).map_err(|error| {
        Failure::invalid(format!(
            "{error} (passwords are 1–72 bytes without U+001E or U+001F); nothing changed"
        ))
    })
}
