//! The `[log]` table: the log level used when `RUST_LOG` is not set.

use serde::{Deserialize, Serialize};
use toml_edit::{value, Table};

use crate::config::check::Check;
use crate::config::error::ConfigError;

/// The `[log]` table.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The level used when `RUST_LOG` is not set.
    pub level: log::LevelFilter,
}

/// `[log]` as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a [log] table")]
pub(super) struct RawLog {
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".to_string(),
        }
    }
}

impl Check<'_> {
    /// `[log]`: the level parsed, in any case.
    pub(super) fn log(&self, raw: RawLog) -> Result<LogConfig, ConfigError> {
        let level = raw.level.parse().map_err(|_| {
            self.error(
                "log.level",
                format!(
                    "unknown level {:?} (expected off, error, warn, info, debug or trace)",
                    raw.level
                ),
            )
        })?;
        Ok(LogConfig { level })
    }
}

/// `[log]` as [`Config::effective_toml`](crate::config::Config::effective_toml) shows it.
pub(super) fn effective(log: &LogConfig) -> Table {
    let mut table = Table::new();
    table.insert("level", value(log.level.to_string().to_ascii_lowercase()));
    table
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_refused, config};

    #[test]
    fn empty_file_gives_the_defaults_of_the_spec() {
        let config = config("").unwrap();
        assert_eq!(config.log.level, log::LevelFilter::Info);
    }

    #[test]
    fn unknown_log_level_is_refused() {
        assert_refused(
            "[log]\nlevel = \"verbose\"",
            "log.level",
            "unknown level \"verbose\"",
        );
    }

    #[test]
    fn log_level_is_case_insensitive() {
        assert_eq!(
            config("[log]\nlevel = \"Trace\"").unwrap().log.level,
            log::LevelFilter::Trace
        );
        assert_eq!(
            config("[log]\nlevel = \"off\"").unwrap().log.level,
            log::LevelFilter::Off
        );
    }
}
