//! Reading a configuration: the file's text into [`RawConfig`] (serde, with the defaults
//! and no unknown key), each table checked by its own file, and [`Config`] assembled from
//! the checked tables. Errors name the key and the line where it is set.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::admin::RawAdmin;
use crate::config::auth::RawAuth;
use crate::config::check::Check;
use crate::config::cluster::RawCluster;
use crate::config::error::{ConfigError, Location};
use crate::config::events::RawEvents;
use crate::config::logging::RawLog;
use crate::config::server::RawServer;
use crate::config::{Config, Source};
use crate::toml_error::line_and_column;

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml(&text, path),
            Err(error) => Err(ConfigError::file(path, format!("cannot read it: {error}"))),
        }
    }

    /// Like [`Config::load`], but a missing file gives all defaults (used for the default
    /// `./server.toml`). Relative paths are then resolved against `path`'s folder all the same.
    pub fn load_or_defaults(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml(&text, path),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut config = Config::from_toml("", path)?;
                config.source = Source::Defaults(path.to_path_buf());
                Ok(config)
            }
            Err(error) => Err(ConfigError::file(path, format!("cannot read it: {error}"))),
        }
    }

    /// Checks TOML text that came from `path`; `path` names the file in errors and is the
    /// base of relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::check_toml(text, path).map_err(|mut error| {
            // Every error about a key says on which line the key is set (issue 23).
            if let Location::Key(key, line @ None) = &mut error.location {
                *line = key_line(text, key);
            }
            error
        })
    }

    fn check_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw = deserialize(text, path)?;
        let check = Check { file: path };
        let server = check.server(raw.server)?;
        let auth = check.auth(raw.auth)?;
        let events = check.events(raw.events)?;
        let admin = check.admin(raw.admin)?;
        let log = check.log(raw.log)?;
        let cluster = check.cluster(raw.cluster, &server)?;
        let config = Config {
            server,
            auth,
            events,
            admin,
            log,
            cluster,
            source: Source::File(path.to_path_buf()),
        };
        check.distinct_listeners(&config)?;
        Ok(config)
    }
}

/// The file as written; every key optional, with the defaults of SPEC §4.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    server: RawServer,
    auth: RawAuth,
    events: RawEvents,
    admin: RawAdmin,
    log: RawLog,
    cluster: RawCluster,
}

/// TOML text into the raw structs; type errors and unknown keys name their key path.
fn deserialize(text: &str, file: &Path) -> Result<RawConfig, ConfigError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|error| {
        let (line, column) = error
            .span()
            .map_or((1, 1), |span| line_and_column(text, span.start));
        ConfigError {
            file: file.to_path_buf(),
            location: Location::Text { line, column },
            message: error.message().to_string(),
        }
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let message = error.inner().message();
        let message = describe_unknown_key(error.path(), message)
            .unwrap_or_else(|| plain_integer_words(message));
        let line = error
            .inner()
            .span()
            .map(|span| line_and_column(text, span.start).0);
        ConfigError {
            location: Location::Key(error.path().to_string(), line),
            ..ConfigError::key(file, "", message)
        }
    })
}

/// The 1-based line where the key path `key` (`server.tls.listen`, `auth.users[0]`) is set
/// in `text`, if it is.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let document = toml_edit::Document::parse(text).ok()?;
    let mut table: &dyn toml_edit::TableLike = document.as_table();
    let mut span = None;
    for part in key.split('.') {
        // `name[3]`: the line of `name` (an array written on one line, or its first).
        let part = part.split('[').next().unwrap_or(part);
        let item = table.get(part)?;
        span = table
            .key(part)
            .and_then(toml_edit::Key::span)
            .or_else(|| item.span());
        match item.as_table_like() {
            Some(inner) => table = inner,
            None => break,
        }
    }
    span.map(|span| line_and_column(text, span.start).0)
}

/// serde's name of an integer type in "expected u64" as a person reads it.
fn plain_integer_words(message: &str) -> String {
    let mut message = message.to_string();
    for (rust, words) in [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number from 0 to 18446744073709551615"),
        ("usize", "a whole number from 0 up"),
        ("i32", "a whole number"),
        ("i64", "a whole number"),
    ] {
        if let Some(stem) = message.strip_suffix(&format!("expected {rust}")) {
            message = format!("{stem}expected {words}");
            break;
        }
    }
    message.replace(" as i128", "")
}

/// Rewrites serde's "unknown field `name`, expected …" to name the table the key was in;
/// `None` for any other error.
fn describe_unknown_key(path: &serde_path_to_error::Path, message: &str) -> Option<String> {
    let keys: Vec<String> = path.iter().map(ToString::to_string).collect();
    let (name, tables) = keys.split_last()?;
    let expected = message.strip_prefix(&format!("unknown field `{name}`"))?;
    Some(match tables {
        [] => format!("unknown top-level key `{name}`{expected}"),
        tables => format!("unknown key `{name}` in [{}]{expected}", tables.join(".")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{assert_refused, refusal};

    #[test]
    fn the_source_says_whether_a_file_was_read() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("server.toml");
        let config = Config::load_or_defaults(&path).unwrap();
        assert_eq!(config.source, Source::Defaults(path.clone()));
        assert!(config.source.to_string().contains("does not exist"));
        std::fs::write(&path, "").unwrap();
        assert_eq!(
            Config::load_or_defaults(&path).unwrap().source,
            Source::File(path)
        );
    }

    #[test]
    fn missing_file_is_an_error_for_load_and_defaults_for_load_or_defaults() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("server.toml");
        let error = Config::load(&path).unwrap_err();
        assert!(error
            .to_string()
            .starts_with(&format!("{}: cannot read it", path.display())));
        let config = Config::load_or_defaults(&path).unwrap();
        assert_eq!(config.auth.users_file, folder.path().join("users.toml"));
    }

    #[test]
    fn load_reads_the_file() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("server.toml");
        std::fs::write(&path, "[server]\nworkers = 2\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().server.workers, 2);
        assert_eq!(Config::load_or_defaults(&path).unwrap().server.workers, 2);
    }

    #[test]
    fn unknown_key_is_named_with_its_table() {
        let error = refusal("[server]\nlisten = \"127.0.0.1:1\"\nmax_conections = 5\n");
        assert_eq!(error.key_path(), Some("server.max_conections"));
        assert!(
            error
                .message()
                .starts_with("unknown key `max_conections` in [server]"),
            "{error}"
        );
    }

    #[test]
    fn unknown_table_is_named() {
        let error = refusal("[sever]\nlisten = \"127.0.0.1:1\"\n");
        assert_eq!(error.key_path(), Some("sever"));
        assert!(
            error.message().starts_with("unknown top-level key `sever`"),
            "{error}"
        );
    }

    #[test]
    fn wrong_type_names_the_key_and_the_type() {
        let error = refusal("[server]\nmax_connections = \"many\"\n");
        assert!(
            error.to_string().starts_with(
                "/etc/tether/server.toml: line 2: server.max_connections: invalid type: string \
                 \"many\", expected a whole number"
            ),
            "{error}"
        );
    }

    #[test]
    fn table_given_as_a_value_is_refused() {
        assert_refused("server = 5", "server", "expected a [server] table");
    }

    #[test]
    fn syntax_error_gives_line_and_column() {
        let error = refusal("[server]\nlisten = \"127.0.0.1:1\"\nworkers = = 2\n");
        assert_eq!(error.key_path(), None);
        assert!(
            error
                .to_string()
                .starts_with("/etc/tether/server.toml: line 3, column "),
            "{error}"
        );
    }

    #[test]
    fn every_error_about_a_key_names_its_line_in_plain_words() {
        // Issue 23: `expected u64` without a line.
        let error = refusal("[server]\nlisten = \"127.0.0.1:1\"\n\nmax_connections = -1\n");
        assert_eq!(error.key_path(), Some("server.max_connections"));
        assert_eq!(
            error.to_string(),
            "/etc/tether/server.toml: line 4: server.max_connections: invalid value: \
             integer `-1`, expected a whole number from 0 to 18446744073709551615"
        );
        let error = refusal("# c\n[auth]\nlogin_failures_per_minute = \"ten\"\n");
        assert!(
            error.to_string().starts_with(
                "/etc/tether/server.toml: line 3: auth.login_failures_per_minute: invalid \
                 type: string \"ten\", expected a whole number from 0 to 4294967295"
            ),
            "{error}"
        );
        // Found valid in type, refused by the checks: the line of the key all the same.
        let error = refusal("[server]\n\nidle_timeout = \"30x\"\n");
        assert!(
            error
                .to_string()
                .starts_with("/etc/tether/server.toml: line 3: server.idle_timeout: "),
            "{error}"
        );
        let error = refusal("[server.tls]\n\nlisten = \"127.0.0.1:7443\"\n");
        assert!(
            error
                .to_string()
                .starts_with("/etc/tether/server.toml: server.tls.cert_file: "),
            "a key not in the file has no line: {error}"
        );
    }
}
