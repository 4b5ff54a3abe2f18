//! The `[server]` table: the client protocol listener and its limits. Its `[server.tls]`
//! and `[server.websocket]` tables have files of their own.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml_edit::{value, Table};

use crate::config::check::Check;
use crate::config::duration::format_duration;
use crate::config::error::ConfigError;
use crate::config::format;
use crate::config::server_tls::{self, RawServerTls, TlsConfig};
use crate::config::websocket::{self, RawServerWebSocket, WebSocketConfig};

/// The `[server]` table: the client protocol listener and its limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where clients connect in plain TCP; `None` (`listen = ""`) when only TLS is on.
    pub listen: Option<SocketAddr>,
    /// The TLS listener (`[server.tls]`), when on (its listener, or `wss` for WebSocket).
    pub tls: Option<TlsConfig>,
    /// The WebSocket listener (`[server.websocket]`, SPEC §11), when on.
    pub websocket: Option<WebSocketConfig>,
    /// Networks whose connections begin with a PROXY protocol header (a single address is
    /// a /32 or /128).
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// How long a connection may stay silent before it gets `timeout`; never zero.
    pub idle_timeout: Duration,
    /// Longest message accepted from a client, without its terminator.
    ///
    /// At least 256 so that every valid command fits: the longest, `login` with a
    /// 128-byte name and a 72-byte password, is 207 bytes. At most 64 MiB.
    pub max_message_bytes: usize,
    /// Unsent output held for one connection before it gets `io_error`; at least 1024.
    pub max_pending_bytes: usize,
    /// Unsent output held for all connections together (beyond 64 KiB each) before the
    /// one that needs more gets `io_error`.
    pub max_pending_total: usize,
    /// Open connections beyond which new ones are refused at accept; at least 1.
    pub max_connections: usize,
    /// How long shutdown waits for output to flush; may be zero.
    pub shutdown_grace: Duration,
    /// Event-loop threads; a configured 0 is already resolved to the number of CPUs.
    pub workers: usize,
}

/// `[server]` as written; every key optional.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a [server] table")]
pub(super) struct RawServer {
    listen: String,
    idle_timeout: String,
    max_message_bytes: u64,
    max_pending_bytes: u64,
    max_pending_total: u64,
    max_connections: u64,
    shutdown_grace: String,
    workers: u64,
    proxy_protocol_from: Vec<String>,
    tls: RawServerTls,
    websocket: RawServerWebSocket,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7700".to_string(),
            idle_timeout: "30m".to_string(),
            max_message_bytes: 65_536,
            max_pending_bytes: 1_048_576,
            max_pending_total: 268_435_456,
            max_connections: 10_000,
            shutdown_grace: "5s".to_string(),
            workers: 0,
            proxy_protocol_from: Vec::new(),
            tls: RawServerTls::default(),
            websocket: RawServerWebSocket::default(),
        }
    }
}

/// Largest accepted `server.max_message_bytes`.
const MAX_MESSAGE_BYTES_LIMIT: u64 = 64 * 1024 * 1024;
/// Largest accepted `server.workers`.
const MAX_WORKERS: u64 = 1024;

impl Check<'_> {
    pub(super) fn server(&self, raw: RawServer) -> Result<ServerConfig, ConfigError> {
        let idle_timeout = self.duration("server.idle_timeout", &raw.idle_timeout)?;
        if idle_timeout.is_zero() {
            return Err(self.error("server.idle_timeout", "must be longer than 0".into()));
        }
        let max_message_bytes = self.size(
            "server.max_message_bytes",
            raw.max_message_bytes,
            256,
            MAX_MESSAGE_BYTES_LIMIT,
            " (256 lets every valid command fit)",
        )?;
        let max_pending_bytes = self.size(
            "server.max_pending_bytes",
            raw.max_pending_bytes,
            1024,
            u64::MAX,
            "",
        )?;
        let max_pending_total = self.size(
            "server.max_pending_total",
            raw.max_pending_total,
            0,
            u64::MAX,
            "",
        )?;
        let max_connections = self.size(
            "server.max_connections",
            raw.max_connections,
            1,
            u64::MAX,
            "",
        )?;
        let workers = match self.size("server.workers", raw.workers, 0, MAX_WORKERS, "")? {
            0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            workers => workers,
        };
        let listen = self.optional_address("server.listen", &raw.listen)?;
        let websocket = self.server_websocket(raw.websocket)?;
        let wss = websocket.as_ref().is_some_and(|ws| ws.tls);
        let tls = self.server_tls(raw.tls, wss)?;
        let tls_listen = tls.as_ref().and_then(|tls| tls.listen);
        if listen.is_none() && tls_listen.is_none() && websocket.is_none() {
            return Err(self.error(
                "server.listen",
                "must be set unless server.tls.listen or server.websocket.listen is \
                 (clients need a listener)"
                    .into(),
            ));
        }
        let proxy_protocol_from =
            self.networks("server.proxy_protocol_from", &raw.proxy_protocol_from)?;
        Ok(ServerConfig {
            listen,
            tls,
            websocket,
            proxy_protocol_from,
            idle_timeout,
            max_message_bytes,
            max_pending_bytes,
            max_pending_total,
            max_connections,
            shutdown_grace: self.duration("server.shutdown_grace", &raw.shutdown_grace)?,
            workers,
        })
    }
}

/// `[server]` as [`Config::effective_toml`](crate::config::Config::effective_toml) shows it,
/// with its `[server.tls]` and `[server.websocket]` tables.
pub(super) fn effective(server: &ServerConfig) -> Table {
    let mut table = Table::new();
    table.insert("listen", format::address(server.listen));
    table.insert("idle_timeout", value(format_duration(server.idle_timeout)));
    table.insert("max_message_bytes", format::count(server.max_message_bytes));
    table.insert("max_pending_bytes", format::count(server.max_pending_bytes));
    table.insert("max_pending_total", format::count(server.max_pending_total));
    table.insert("max_connections", format::count(server.max_connections));
    table.insert(
        "shutdown_grace",
        value(format_duration(server.shutdown_grace)),
    );
    table.insert("workers", format::count(server.workers));
    table.insert(
        "proxy_protocol_from",
        value(
            server
                .proxy_protocol_from
                .iter()
                .map(ToString::to_string)
                .collect::<toml_edit::Array>(),
        ),
    );
    table.insert("tls", server_tls::effective(server.tls.as_ref()));
    table.insert("websocket", websocket::effective(server.websocket.as_ref()));
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{assert_refused, config};

    #[test]
    fn empty_file_gives_the_defaults_of_the_spec() {
        let config = config("").unwrap();
        let server = &config.server;
        assert_eq!(
            server.listen,
            Some("127.0.0.1:7700".parse::<SocketAddr>().unwrap())
        );
        assert_eq!(server.idle_timeout, Duration::from_secs(30 * 60));
        assert_eq!(server.max_message_bytes, 65_536);
        assert_eq!(server.max_pending_bytes, 1_048_576);
        assert_eq!(server.max_pending_total, 268_435_456);
        assert_eq!(server.max_connections, 10_000);
        assert_eq!(server.shutdown_grace, Duration::from_secs(5));
        assert!(server.workers >= 1);
    }

    #[test]
    fn every_key_is_read() {
        let config = config(
            r#"
            [server]
            listen = "[::1]:9000"
            idle_timeout = "1m30s"
            max_message_bytes = 256
            max_pending_bytes = 1024
            max_pending_total = 2048
            max_connections = 1
            shutdown_grace = "0s"
            workers = 3
            "#,
        )
        .unwrap();
        assert_eq!(
            config.server.listen,
            Some("[::1]:9000".parse::<SocketAddr>().unwrap())
        );
        assert_eq!(config.server.idle_timeout, Duration::from_secs(90));
        assert_eq!(config.server.max_message_bytes, 256);
        assert_eq!(config.server.max_pending_bytes, 1024);
        assert_eq!(config.server.max_pending_total, 2048);
        assert_eq!(config.server.max_connections, 1);
        assert_eq!(config.server.shutdown_grace, Duration::ZERO);
        assert_eq!(config.server.workers, 3);
    }

    #[test]
    fn listen_that_is_not_an_address_is_refused() {
        assert_refused(
            "[server]\nlisten = \"localhost:7700\"",
            "server.listen",
            "expected an address like 127.0.0.1:7700",
        );
        assert_refused(
            "[server]\nlisten = \"\"",
            "server.listen",
            "must be set unless server.tls.listen or server.websocket.listen is",
        );
    }

    #[test]
    fn proxy_protocol_from_takes_networks_and_addresses() {
        let config = config("[server]\nproxy_protocol_from = [\"10.0.0.0/8\", \"::1\"]").unwrap();
        let shown: Vec<String> = config
            .server
            .proxy_protocol_from
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["10.0.0.0/8", "::1/128"]);
        assert_refused(
            "[server]\nproxy_protocol_from = [\"10.0.0.0/33\"]",
            "server.proxy_protocol_from",
            "expected a CIDR",
        );
    }

    #[test]
    fn zero_idle_timeout_is_refused() {
        assert_refused(
            "[server]\nidle_timeout = \"0s\"",
            "server.idle_timeout",
            "longer than 0",
        );
    }

    #[test]
    fn bad_duration_is_refused_with_its_key() {
        assert_refused(
            "[server]\nidle_timeout = \"30\"",
            "server.idle_timeout",
            "missing unit",
        );
        assert_refused(
            "[server]\nshutdown_grace = \"5 s\"",
            "server.shutdown_grace",
            "unknown unit",
        );
    }

    #[test]
    fn max_message_bytes_must_fit_every_command_and_stay_bounded() {
        assert_refused(
            "[server]\nmax_message_bytes = 255",
            "server.max_message_bytes",
            "at least 256",
        );
        assert_refused(
            "[server]\nmax_message_bytes = 67108865",
            "server.max_message_bytes",
            "at most 67108864",
        );
        assert!(config("[server]\nmax_message_bytes = 67108864").is_ok());
    }

    #[test]
    fn small_max_pending_bytes_is_refused() {
        assert_refused(
            "[server]\nmax_pending_bytes = 1023",
            "server.max_pending_bytes",
            "at least 1024",
        );
    }

    #[test]
    fn zero_max_connections_is_refused() {
        assert_refused(
            "[server]\nmax_connections = 0",
            "server.max_connections",
            "at least 1",
        );
    }

    #[test]
    fn negative_count_is_refused_with_its_key() {
        assert_refused(
            "[server]\nmax_connections = -1",
            "server.max_connections",
            "invalid value",
        );
    }

    #[test]
    fn too_many_workers_are_refused() {
        assert_refused("[server]\nworkers = 1025", "server.workers", "at most 1024");
    }
}
