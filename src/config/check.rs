//! The second stage's frame: [`Check`] turns raw values into checked ones, each error naming
//! its key. The checks every table uses (durations, addresses, counts, networks, paths) are
//! here; each table's file adds its own `impl Check` with the check of that table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::duration::parse_duration;
use crate::config::error::ConfigError;

/// The second stage: raw values into checked ones, each error naming its key.
pub(super) struct Check<'a> {
    /// The configuration file, for errors and relative paths.
    pub(super) file: &'a Path,
}

impl Check<'_> {
    /// An error about the key path `key`.
    pub(super) fn error(&self, key: &str, message: String) -> ConfigError {
        ConfigError::key(self.file, key, message)
    }

    /// The configuration file's folder, against which relative paths are resolved.
    pub(super) fn folder(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new(""))
    }

    /// A path key: `None` when `""`, else resolved against [`Check::folder`].
    pub(super) fn optional_path(&self, text: &str) -> Option<PathBuf> {
        match text {
            "" => None,
            text => Some(self.folder().join(text)),
        }
    }

    /// CIDRs (or single addresses) of `key`.
    pub(super) fn networks(
        &self,
        key: &str,
        texts: &[String],
    ) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        texts
            .iter()
            .map(|text| {
                text.parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        self.error(
                            key,
                            format!("invalid network {text:?}: expected a CIDR like 10.0.0.0/8 or an address"),
                        )
                    })
            })
            .collect()
    }

    /// A duration key.
    pub(super) fn duration(&self, key: &str, text: &str) -> Result<Duration, ConfigError> {
        parse_duration(text).map_err(|message| self.error(key, message))
    }

    /// An `IP:port` key.
    pub(super) fn address(&self, key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
        text.parse().map_err(|_| {
            self.error(
                key,
                format!("invalid address {text:?}: expected an address like 127.0.0.1:7700"),
            )
        })
    }

    /// An `IP:port` key where `""` means none.
    pub(super) fn optional_address(
        &self,
        key: &str,
        text: &str,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        match text {
            "" => Ok(None),
            text => self.address(key, text).map(Some),
        }
    }

    /// A count that must lie in `min..=max`; `why` explains the minimum when it is not
    /// obvious.
    pub(super) fn size(
        &self,
        key: &str,
        value: u64,
        min: u64,
        max: u64,
        why: &str,
    ) -> Result<usize, ConfigError> {
        if value < min {
            return Err(self.error(key, format!("must be at least {min}{why}, found {value}")));
        }
        if value > max {
            return Err(self.error(key, format!("must be at most {max}, found {value}")));
        }
        usize::try_from(value)
            .map_err(|_| self.error(key, format!("{value} is too large for this machine")))
    }
}
