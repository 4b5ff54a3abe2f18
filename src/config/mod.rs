//! The server configuration of SPEC §4, read in two stages: TOML into raw structs that hold
//! the defaults and refuse unknown keys, then checked into a [`Config`] of real types that
//! the rest of the program trusts.
//!
//! One file per table of `server.toml`, each holding that table's raw (serde) form with its
//! defaults, its checked form, the check between them, its lines of the effective
//! configuration (`tether check-config`) and its unit tests: `server.rs`, `server_tls.rs`,
//! `websocket.rs`, `auth.rs`, `events.rs`, `admin.rs`, `admin_tls.rs`, `logging.rs`,
//! `cluster.rs`. Around them: `error.rs` ([`ConfigError`]), `duration.rs`, `format.rs` (how
//! values are written back), `check.rs` (the checks every table uses), `listeners.rs` (the
//! one check across tables), `load.rs` (reading a file and assembling [`Config`]) and
//! `effective.rs` (the printer's frame).
//!
//! A new key of an existing table is a change of that table's file (its raw field and
//! default, its checked field, its check, its effective line, its test) and of the
//! documented `server.toml`.

mod admin;
mod admin_tls;
mod auth;
mod check;
mod cluster;
mod duration;
mod effective;
mod error;
mod events;
mod format;
mod listeners;
mod load;
mod logging;
mod server;
mod server_tls;
mod websocket;

use std::fmt;
use std::path::PathBuf;

pub use admin::{AdminConfig, MASKED_TOKEN};
pub use admin_tls::AdminTls;
pub use auth::AuthConfig;
pub use cluster::ClusterConfig;
pub use duration::{format_duration, parse_duration};
pub use error::ConfigError;
pub use events::EventsConfig;
pub use format::mask_password;
pub use logging::LogConfig;
pub use server::ServerConfig;
pub use server_tls::TlsConfig;
pub use websocket::WebSocketConfig;

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The client protocol listener and its limits.
    pub server: ServerConfig,
    /// The users file and login rules.
    pub auth: AuthConfig,
    /// How event times are written.
    pub events: EventsConfig,
    /// The HTTP admin API.
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// `[cluster]`: several nodes as one service over Redis (SPEC §8), when set.
    pub cluster: Option<ClusterConfig>,
    /// Where these settings came from.
    pub source: Source,
}

/// Where a [`Config`] came from, for the start-up log and `tether check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Read from this file.
    File(PathBuf),
    /// All defaults, because this default file does not exist.
    Defaults(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Defaults(path) => {
                write!(f, "none ({} does not exist: all defaults)", path.display())
            }
        }
    }
}

/// What the tests of every table use: a configuration read as if from
/// `/etc/tether/server.toml`, and a refusal checked for its key, words and line.
#[cfg(test)]
mod testing {
    use std::path::Path;

    use super::{Config, ConfigError};

    /// `text` read as `/etc/tether/server.toml`.
    pub(super) fn config(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/tether/server.toml"))
    }

    /// The error that refuses `text`; panics when it is accepted.
    pub(super) fn refusal(text: &str) -> ConfigError {
        match config(text) {
            Ok(config) => panic!("accepted {text:?}: {config:?}"),
            Err(error) => error,
        }
    }

    /// Asserts that `text` is refused on `key`, with a message containing `words`.
    pub(super) fn assert_refused(text: &str, key: &str, words: &str) {
        let error = refusal(text);
        assert_eq!(error.key_path(), Some(key), "{error}");
        assert!(error.message().contains(words), "{error}");
        // `line N: ` when the key is in the file (issue 23).
        let shown = error.to_string();
        let after_file = shown
            .strip_prefix("/etc/tether/server.toml: ")
            .unwrap_or_else(|| panic!("{error}"));
        let after_line = after_file
            .strip_prefix("line ")
            .and_then(|rest| rest.split_once(": "))
            .map_or(after_file, |(_, rest)| rest);
        assert!(after_line.starts_with(&format!("{key}: ")), "{error}");
    }
}
