//! The `[events]` table: the time zone whose wall-clock time stamps events.

use serde::{Deserialize, Serialize};
use toml_edit::{value, Table};

use crate::config::check::Check;
use crate::config::error::ConfigError;

/// The `[events]` table: how event times are written.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// The zone whose wall-clock time stamps events.
    pub time_zone: jiff::tz::TimeZone,
    /// The zone as written in the file ("local", "UTC" or an IANA name), for logs.
    pub time_zone_name: String,
}

/// `[events]` as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "an [events] table")]
pub(super) struct RawEvents {
    time_zone: String,
}

impl Default for RawEvents {
    fn default() -> Self {
        Self {
            time_zone: "local".to_string(),
        }
    }
}

impl Check<'_> {
    /// `[events]`: the zone looked up.
    pub(super) fn events(&self, raw: RawEvents) -> Result<EventsConfig, ConfigError> {
        let key = "events.time_zone";
        let time_zone = match raw.time_zone.as_str() {
            "local" => jiff::tz::TimeZone::try_system().map_err(|error| {
                self.error(key, format!("cannot find the system time zone: {error}"))
            })?,
            "UTC" => jiff::tz::TimeZone::UTC,
            name => jiff::tz::TimeZone::get(name).map_err(|_| {
                self.error(
                    key,
                    format!(
                        "unknown time zone {name:?} \
                         (expected \"local\", \"UTC\" or an IANA name like \"Europe/Moscow\")"
                    ),
                )
            })?,
        };
        Ok(EventsConfig {
            time_zone,
            time_zone_name: raw.time_zone,
        })
    }
}

/// `[events]` as [`Config::effective_toml`](crate::config::Config::effective_toml) shows it.
pub(super) fn effective(events: &EventsConfig) -> Table {
    let mut table = Table::new();
    table.insert("time_zone", value(events.time_zone_name.clone()));
    table
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_refused, config};

    #[test]
    fn empty_file_gives_the_defaults_of_the_spec() {
        let config = config("").unwrap();
        assert_eq!(config.events.time_zone_name, "local");
    }

    #[test]
    fn utc_time_zone_is_utc() {
        let config = config("[events]\ntime_zone = \"UTC\"").unwrap();
        assert_eq!(config.events.time_zone, jiff::tz::TimeZone::UTC);
        assert_eq!(config.events.time_zone_name, "UTC");
    }

    #[test]
    fn iana_time_zone_is_looked_up() {
        let config = config("[events]\ntime_zone = \"Europe/Moscow\"").unwrap();
        let instant: jiff::Timestamp = "2026-11-26T22:33:06.123Z".parse().unwrap();
        let offset = config.events.time_zone.to_offset(instant);
        assert_eq!(offset.seconds(), 3 * 3600);
        assert_eq!(config.events.time_zone_name, "Europe/Moscow");
    }

    #[test]
    fn unknown_time_zone_is_named() {
        assert_refused(
            "[events]\ntime_zone = \"Mars/Olympus_Mons\"",
            "events.time_zone",
            "unknown time zone \"Mars/Olympus_Mons\"",
        );
    }
}
