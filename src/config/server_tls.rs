//! The `[server.tls]` table: the client protocol over TLS, and the certificate `wss` uses.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use crate::config::check::Check;
use crate::config::error::ConfigError;
use crate::config::format;

/// The `[server.tls]` table when its `listen` is set or `server.websocket.tls` is on: the
/// client protocol over TLS, and the certificate `wss` uses.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Where TLS clients connect; `None` when only `wss` uses the certificate.
    pub listen: Option<SocketAddr>,
    /// The certificate chain, PEM.
    pub cert_file: PathBuf,
    /// The private key, PEM.
    pub key_file: PathBuf,
    /// When set, clients must present a certificate this CA (PEM) signed.
    pub client_ca_file: Option<PathBuf>,
}

/// `[server.tls]` as written; every key optional, all `""` by default (no TLS).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a [server.tls] table")]
pub(super) struct RawServerTls {
    listen: String,
    cert_file: String,
    key_file: String,
    client_ca_file: String,
}

impl Check<'_> {
    /// `[server.tls]`: `None` unless its `listen` is set or `wss` (`server.websocket.tls`)
    /// needs its certificate.
    pub(super) fn server_tls(
        &self,
        raw: RawServerTls,
        wss: bool,
    ) -> Result<Option<TlsConfig>, ConfigError> {
        if raw.listen.is_empty() && !wss {
            return Ok(None);
        }
        let folder = self.folder();
        let file = |key: &str, text: &str| {
            if text.is_empty() {
                Err(self.error(
                    key,
                    "must be set when server.tls.listen is, or server.websocket.tls".into(),
                ))
            } else {
                Ok(folder.join(text))
            }
        };
        Ok(Some(TlsConfig {
            listen: self.optional_address("server.tls.listen", &raw.listen)?,
            cert_file: file("server.tls.cert_file", &raw.cert_file)?,
            key_file: file("server.tls.key_file", &raw.key_file)?,
            client_ca_file: self.optional_path(&raw.client_ca_file),
        }))
    }
}

/// `[server.tls]` as [`Config::effective_toml`](crate::config::Config::effective_toml) shows
/// it.
pub(super) fn effective(tls: Option<&TlsConfig>) -> Item {
    let mut table = toml_edit::Table::new();
    table.insert("listen", format::address(tls.and_then(|tls| tls.listen)));
    table.insert(
        "cert_file",
        format::path(tls.map(|tls| tls.cert_file.as_path())),
    );
    table.insert(
        "key_file",
        format::path(tls.map(|tls| tls.key_file.as_path())),
    );
    table.insert(
        "client_ca_file",
        format::path(tls.and_then(|tls| tls.client_ca_file.as_deref())),
    );
    Item::Table(table)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::testing::{assert_refused, config};

    #[test]
    fn a_tls_listener_needs_its_files_and_may_stand_alone() {
        assert_refused(
            "[server.tls]\nlisten = \"127.0.0.1:7443\"",
            "server.tls.cert_file",
            "must be set when server.tls.listen is",
        );
        let tls_only = "[server]\nlisten = \"\"\n[server.tls]\nlisten = \"127.0.0.1:7443\"\n\
                        cert_file = \"c.pem\"\nkey_file = \"k.pem\"";
        let config = config(tls_only).unwrap();
        assert_eq!(config.server.listen, None);
        let tls = config.server.tls.unwrap();
        assert_eq!(tls.cert_file, Path::new("/etc/tether/c.pem"));
        assert_eq!(tls.client_ca_file, None);
    }
}
