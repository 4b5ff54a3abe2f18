//! The `tether passwd` and `tether deluser` commands (SPEC §5), which change the user
//! store the configuration names (a running server picks the change up itself).

use std::io::{BufRead, IsTerminal};

use tether_actors::auth::credentials::{check_name, check_password};

use crate::config::Config;
use crate::users::failure::Failure;

/// `tether passwd NAME`: reads a password (twice without echo on a terminal, one line from
/// standard input otherwise), hashes it at `auth.bcrypt_cost` and sets it in the user
/// store, creating the user (and the users file) if needed. Answers what it did, naming
/// the store.
pub fn passwd(config: &Config, name: &str) -> Result<String, Failure> {
    check_name(name).map_err(|error| Failure::invalid(format!("user {name:?}: {error}")))?;
    let store = crate::users::open(config)?;
    let password = read_password(name, &store.shown())?;
    let hash = bcrypt::hash(&password, config.auth.bcrypt_cost)
        .map_err(|error| Failure::failed(format!("cannot hash the password: {error}")))?;
    store.set_password_hash(name, &hash)
}

/// `tether deluser NAME`: removes the user from the user store; an absent user is a
/// failure (exit code 1) and changes nothing. Answers what it did.
pub fn deluser(config: &Config, name: &str) -> Result<String, Failure> {
    check_name(name).map_err(|error| Failure::invalid(format!("user {name:?}: {error}")))?;
    crate::users::open(config)?.remove_user(name)
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
