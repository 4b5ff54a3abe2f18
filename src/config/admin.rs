//! The `[admin]` table: the HTTP admin API's listener, its token and the web console. Its
//! `[admin.tls]` table has a file of its own.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use toml_edit::{value, Table};

use crate::config::admin_tls::{self, AdminTls, RawAdminTls};
use crate::config::check::Check;
use crate::config::error::ConfigError;
use crate::config::format;

/// The `[admin]` table: the HTTP admin API.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where the admin API listens; `None` turns it off.
    pub listen: Option<SocketAddr>,
    /// The bearer token every route but `/healthz` needs; `None` means no check.
    /// Always set when `listen` is not a loopback address.
    pub token: Option<String>,
    /// `[admin.tls]`: the certificate chain and key (PEM) that make the API HTTPS only;
    /// `None` for plain HTTP.
    pub tls: Option<AdminTls>,
    /// Whether the admin listener serves the web console at `/console/` (SPEC §12).
    pub console: bool,
}

/// What [`Config::effective_toml`](crate::config::Config::effective_toml) shows for a set
/// `admin.token`.
pub const MASKED_TOKEN: &str = "(set, not shown)";

/// `[admin]` as written; every key optional.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "an [admin] table")]
pub(super) struct RawAdmin {
    listen: String,
    token: String,
    console: bool,
    tls: RawAdminTls,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7701".to_string(),
            token: String::new(),
            console: true,
            tls: RawAdminTls::default(),
        }
    }
}

impl Check<'_> {
    /// `[admin]`: a non-loopback listener needs a token.
    pub(super) fn admin(&self, raw: RawAdmin) -> Result<AdminConfig, ConfigError> {
        let listen = self.optional_address("admin.listen", &raw.listen)?;
        let token = match raw.token {
            token if token.is_empty() => None,
            token if !token.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(self.error(
                    "admin.token",
                    "must be printable ASCII without spaces (it is sent in an HTTP header)".into(),
                ))
            }
            token => Some(token),
        };
        if let Some(address) = listen {
            if token.is_none() && !address.ip().to_canonical().is_loopback() {
                return Err(self.error(
                    "admin.token",
                    format!(
                        "a non-loopback admin.listen needs a token ({address} is not loopback)"
                    ),
                ));
            }
        }
        Ok(AdminConfig {
            listen,
            token,
            tls: self.admin_tls(raw.tls)?,
            console: raw.console,
        })
    }
}

/// `[admin]` as [`Config::effective_toml`](crate::config::Config::effective_toml) shows it,
/// with a set token masked.
pub(super) fn effective(admin: &AdminConfig) -> Table {
    let token = match admin.token {
        Some(_) => MASKED_TOKEN,
        None => "",
    };
    let mut table = Table::new();
    table.insert("listen", format::address(admin.listen));
    table.insert("token", value(token));
    table.insert("console", value(admin.console));
    table.insert("tls", admin_tls::effective(admin.tls.as_ref()));
    table
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_refused, config};
    use crate::config::MASKED_TOKEN;

    #[test]
    fn empty_file_gives_the_defaults_of_the_spec() {
        let config = config("").unwrap();
        assert_eq!(config.admin.listen, Some("127.0.0.1:7701".parse().unwrap()));
        assert_eq!(config.admin.token, None);
    }

    #[test]
    fn every_key_is_read() {
        let config = config(
            r#"
            [admin]
            listen = "0.0.0.0:9001"
            token = "s3cret"
            "#,
        )
        .unwrap();
        assert_eq!(config.admin.listen, Some("0.0.0.0:9001".parse().unwrap()));
        assert_eq!(config.admin.token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn effective_toml_masks_the_admin_token() {
        let effective = config("[admin]\ntoken = \"s3cret\"")
            .unwrap()
            .effective_toml();
        assert!(!effective.contains("s3cret"), "{effective}");
        assert!(effective.contains(MASKED_TOKEN), "{effective}");
        let effective = config("").unwrap().effective_toml();
        assert!(effective.contains("token = \"\""), "{effective}");
    }

    #[test]
    fn empty_admin_listen_turns_the_admin_api_off() {
        let config = config("[admin]\nlisten = \"\"").unwrap();
        assert_eq!(config.admin.listen, None);
    }

    #[test]
    fn the_web_console_is_on_by_default_and_can_be_turned_off() {
        assert!(config("").unwrap().admin.console);
        let off = config("[admin]\nconsole = false").unwrap();
        assert!(!off.admin.console);
        assert!(off.effective_toml().contains("console = false"));
        assert_refused("[admin]\nconsole = \"no\"", "admin.console", "bool");
    }

    #[test]
    fn bad_admin_listen_is_refused() {
        assert_refused(
            "[admin]\nlisten = \"7701\"",
            "admin.listen",
            "expected an address",
        );
    }

    #[test]
    fn non_loopback_admin_listen_without_token_is_refused() {
        assert_refused(
            "[admin]\nlisten = \"0.0.0.0:7701\"",
            "admin.token",
            "a non-loopback admin.listen needs a token",
        );
    }

    #[test]
    fn loopback_admin_listen_needs_no_token() {
        assert!(config("[admin]\nlisten = \"[::1]:7701\"").is_ok());
        assert!(config("[admin]\nlisten = \"[::ffff:127.0.0.1]:7701\"").is_ok());
    }

    #[test]
    fn admin_token_that_cannot_travel_in_a_header_is_refused() {
        assert_refused(
            "[admin]\ntoken = \"two words\"",
            "admin.token",
            "printable ASCII",
        );
    }
}
