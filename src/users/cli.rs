//! The `tether passwd` and `tether deluser` commands (SPEC §5), which edit the users file
//! named by the configuration (a running server picks the change up itself), and
//! `tether check-config`.

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use tether_actors::credentials::{check_name, check_password};

use crate::config::Config;
use crate::users::edit::{self, PasswordChange};
use crate::users::read::{self, Contents, UsersFileError};

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

/// `tether passwd NAME`: reads a password (twice without echo on a terminal, one line from
/// standard input otherwise), hashes it at `auth.bcrypt_cost` and sets it, creating the
/// user (and the file) if needed. Answers what it did, naming the file.
pub fn passwd(config: &Config, name: &str) -> Result<String, Failure> {
    check_name(name).map_err(|error| Failure::invalid(format!("user {name:?}: {error}")))?;
    let path = &config.auth.users_file;
    let shown = match &config.auth.database {
        Some(_) => format!("table {}", config.auth.table),
        None => shown_path(path),
    };
    let password = read_password(name, &shown)?;
    let hash = bcrypt::hash(&password, config.auth.bcrypt_cost)
        .map_err(|error| Failure::failed(format!("cannot hash the password: {error}")))?;
    if config.auth.database.is_some() {
        return crate::users::db_cli::set_hash(config, name, &hash);
    }
    let new_file = !path.exists();
    let change = edit::set_password_hash(path, name, &hash)?.outcome;
    Ok(match change {
        PasswordChange::Created if new_file => {
            format!("user {name:?} created in {shown} (a new users file)")
        }
        PasswordChange::Created => format!("user {name:?} created in {shown}"),
        PasswordChange::Changed => format!("password of user {name:?} changed in {shown}"),
    })
}

/// `tether deluser NAME`: removes the user; an absent user is a failure (exit code 1) and
/// leaves the file untouched. Answers what it did.
pub fn deluser(config: &Config, name: &str) -> Result<String, Failure> {
    check_name(name).map_err(|error| Failure::invalid(format!("user {name:?}: {error}")))?;
    if config.auth.database.is_some() {
        return crate::users::db_cli::remove(config, name);
    }
    let path = &config.auth.users_file;
    let shown = shown_path(path);
    if edit::remove_user(path, name)?.outcome {
        Ok(format!("user {name:?} removed from {shown}"))
    } else {
        Err(Failure::failed(format!(
            "no user {name:?} in {shown}; nothing removed"
        )))
    }
}

/// `tether check-config`: checks the configuration (already loaded), the users file it
/// names and the certificate files it names (without connecting anywhere), and answers the settings in force as `server.toml` text, the admin token masked.
/// Every failure is exit code 2: the server would refuse to start.
pub fn check_config(config: &Config) -> Result<String, Failure> {
    let path = &config.auth.users_file;
    let shown = shown_path(path);
    let contents = read::read_contents(path);
    let users = match contents.users(path) {
        _ if config.auth.database.is_some() => format!(
            "table {} in auth.database (not read: `tether db init` creates it)",
            config.auth.table
        ),
        Ok(users) => format!("{shown}: {} user(s)", users.len()),
        Err(_) if contents == Contents::Missing => {
            format!(
                "{shown} does not exist: nobody can log in until `tether passwd NAME` adds a user"
            )
        }
        Err(error) => return Err(Failure::invalid(error.to_string())),
    };
    // Certificate and CA files are read as start-up reads them: a file that would stop
    // the server is named here too.
    crate::serve::load_certificates(config).map_err(Failure::invalid)?;
    // So is the verifier key: too short or too open stops the server.
    crate::admission::load_key(config).map_err(Failure::invalid)?;
    if let Some(url) = &config.auth.database {
        crate::users::pg_schema::Database::new(url, config.auth.database_ca_file.as_deref())
            .map_err(|why| Failure::invalid(format!("auth.database_ca_file: {why}")))?;
    }
    Ok(format!(
        "# configuration file: {}\n# users file: {users}\n# the configuration is valid; the settings in force:\n\n{}",
        config.source,
        config.effective_toml().trim_end()
    ))
}

/// `path` made absolute for messages, so that the person sees which file was meant.
fn shown_path(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// The new password of `name`, checked against SPEC §5.
fn read_password(name: &str, file: &str) -> Result<Vec<u8>, Failure> {
    let stdin = std::io::stdin();
    let cannot_read =
        |error: std::io::Error| Failure::failed(format!("cannot read the password: {error}"));
    let password = if stdin.is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {name:?} (in {file}): "))
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
