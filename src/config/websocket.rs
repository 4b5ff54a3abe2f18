//! The `[server.websocket]` table: the client protocol over WebSocket for browsers (SPEC
//! §11).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::check::Check;
use crate::config::error::ConfigError;

/// The `[server.websocket]` table when its `listen` is set (SPEC §11).
#[derive(Debug, Clone)]
pub struct WebSocketConfig {
    /// Where WebSocket clients connect.
    pub listen: SocketAddr,
    /// The upgrade path; other paths get `404`.
    pub path: String,
    /// Browser origins allowed (`scheme://host[:port]`, lower case), or `"*"`.
    pub allowed_origins: Vec<String>,
    /// `wss://` with `[server.tls]`'s certificate and key.
    pub tls: bool,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub forwarded_from: Vec<ipnet::IpNet>,
}

/// `[server.websocket]` as written; every key optional.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a [server.websocket] table")]
pub(super) struct RawServerWebSocket {
    listen: String,
    path: String,
    allowed_origins: Vec<String>,
    tls: bool,
    forwarded_from: Vec<String>,
}

impl Default for RawServerWebSocket {
    fn default() -> Self {
        Self {
            listen: String::new(),
            path: "/".to_string(),
            allowed_origins: Vec::new(),
            tls: false,
            forwarded_from: Vec::new(),
        }
    }
}

impl Check<'_> {
    /// `[server.websocket]`: `None` when `listen` is empty.
    pub(super) fn server_websocket(
        &self,
        raw: RawServerWebSocket,
    ) -> Result<Option<WebSocketConfig>, ConfigError> {
        let forwarded_from =
            self.networks("server.websocket.forwarded_from", &raw.forwarded_from)?;
        if !raw.path.starts_with('/')
            || raw.path.contains('?')
            || raw.path.contains('#')
            || raw
                .path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(self.error(
                "server.websocket.path",
                format!(
                    "{:?} is not a path: it must begin with \"/\" and hold no spaces, \"?\" or \"#\"",
                    raw.path
                ),
            ));
        }
        let allowed_origins = raw
            .allowed_origins
            .iter()
            .map(|origin| self.origin(origin))
            .collect::<Result<Vec<_>, _>>()?;
        if raw.listen.is_empty() {
            return Ok(None);
        }
        Ok(Some(WebSocketConfig {
            listen: self.address("server.websocket.listen", &raw.listen)?,
            path: raw.path,
            allowed_origins,
            tls: raw.tls,
            forwarded_from,
        }))
    }

    /// One of `allowed_origins`: `"*"`, or `scheme://host[:port]` (lower-cased).
    fn origin(&self, text: &str) -> Result<String, ConfigError> {
        if text == "*" {
            return Ok(text.to_string());
        }
        let host = text
            .split_once("://")
            .filter(|(scheme, _)| {
                !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            })
            .map(|(_, host)| host);
        match host {
            Some(host)
                if !host.is_empty()
                    && !host.contains('/')
                    && !host.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                Ok(text.to_ascii_lowercase())
            }
            _ => Err(self.error(
                "server.websocket.allowed_origins",
                format!(
                    "{text:?} is not an origin: expected scheme://host[:port] such as \
                     \"https://app.example.com\" (no path, no trailing slash), or \"*\""
                ),
            )),
        }
    }
}

/// `[server.websocket]` as
/// [`Config::effective_toml`](crate::config::Config::effective_toml) shows it.
pub(super) fn effective(websocket: Option<&WebSocketConfig>) -> toml_edit::Item {
    use toml_edit::value;
    let list = |items: Vec<String>| value(items.into_iter().collect::<toml_edit::Array>());
    let mut table = toml_edit::Table::new();
    table.insert(
        "listen",
        value(websocket.map_or_else(String::new, |ws| ws.listen.to_string())),
    );
    table.insert(
        "path",
        value(websocket.map_or_else(|| "/".to_string(), |ws| ws.path.clone())),
    );
    table.insert(
        "allowed_origins",
        list(websocket.map_or_else(Vec::new, |ws| ws.allowed_origins.clone())),
    );
    table.insert("tls", value(websocket.is_some_and(|ws| ws.tls)));
    table.insert(
        "forwarded_from",
        list(websocket.map_or_else(Vec::new, |ws| {
            ws.forwarded_from.iter().map(ToString::to_string).collect()
        })),
    );
    toml_edit::Item::Table(table)
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_refused, config};

    #[test]
    fn websocket_keys_are_checked_and_a_websocket_listener_may_stand_alone() {
        let text = "[server]\nlisten = \"\"\n[server.websocket]\nlisten = \"127.0.0.1:7780\"\n\
                    path = \"/tether\"\nallowed_origins = [\"https://App.example.com\", \"*\"]\n\
                    forwarded_from = [\"10.0.0.0/8\", \"192.0.2.1\"]\n";
        let loaded = config(text).expect("a WebSocket listener alone");
        let ws = loaded.server.websocket.as_ref().expect("on");
        assert_eq!(ws.path, "/tether");
        assert_eq!(ws.allowed_origins, ["https://app.example.com", "*"]);
        assert_eq!(ws.forwarded_from.len(), 2);
        assert!(!ws.tls && loaded.server.tls.is_none());
        let shown = loaded.effective_toml();
        assert!(
            shown.contains("[server.websocket]") && shown.contains("\"/tether\""),
            "{shown}"
        );
        assert!(config(&shown).is_ok(), "{shown}");

        let ws = |keys: &str| format!("[server.websocket]\nlisten = \"127.0.0.1:7780\"\n{keys}\n");
        assert_refused(
            &ws("tls = true"),
            "server.tls.cert_file",
            "server.websocket.tls",
        );
        let wss = format!(
            "{}[server.tls]\ncert_file = \"s.pem\"\nkey_file = \"s.key\"\n",
            ws("tls = true")
        );
        let loaded = config(&wss).expect("wss with [server.tls]'s files and no TLS listener");
        assert_eq!(loaded.server.tls.as_ref().and_then(|tls| tls.listen), None);
        assert_refused(
            &ws("path = \"tether\""),
            "server.websocket.path",
            "not a path",
        );
        assert_refused(
            &ws("allowed_origins = [\"https://app.example.com/\"]"),
            "server.websocket.allowed_origins",
            "not an origin",
        );
        assert_refused(
            &ws("forwarded_from = [\"proxy\"]"),
            "server.websocket.forwarded_from",
            "invalid network",
        );
        assert_refused(
            "[server]\nlisten = \"127.0.0.1:7780\"\n[server.websocket]\nlisten = \"127.0.0.1:7780\"\n",
            "server.websocket.listen",
            "another port",
        );
    }
}
