//! The server configuration of SPEC §4, read in two stages: TOML into raw structs that hold
//! the defaults and refuse unknown keys, then checked into a [`Config`] of real types that
//! the rest of the program trusts.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::config::SslMode;

use crate::toml_error::{line_and_column, Located};

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

/// The `[auth]` table: the users file and login rules.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The users file, already resolved against the configuration file's folder; not used
    /// when `database` is set.
    pub users_file: PathBuf,
    /// The PostgreSQL database users come from (SPEC §9), when set: a `postgres://` URL.
    pub database: Option<String>,
    /// The CA certificates (PEM) the database server's certificate must chain to; when
    /// set, the connection to `database` is TLS (rustls), and without it, plain TCP.
    pub database_ca_file: Option<PathBuf>,
    /// The table (or view) of users in `database`; also the name of the channel its
    /// trigger notifies.
    pub table: String,
    /// bcrypt cost of the hashes the server itself writes (4–16, the most a stored hash
    /// may have).
    pub bcrypt_cost: u32,
    /// Whether external edits of the users file are applied while running.
    pub watch: bool,
    /// Failed logins per (client address, name) and minute before further ones are
    /// refused without a check; 0 means no limit.
    pub login_failures_per_minute: u32,
    /// Threads running bcrypt (1–1024); a configured 0 is already resolved to one per CPU
    /// but one, at least one.
    pub password_threads: usize,
    /// The secret key of the verifiers that admit a returning login without bcrypt (SPEC
    /// §5), resolved against the configuration's folder; `None` (`""`): off.
    pub verifier_key_file: Option<PathBuf>,
    /// Where a node alone keeps its verifiers, resolved against the configuration's folder.
    pub verifier_file: PathBuf,
    /// How long an unused verifier is kept; at least a second.
    pub verifier_ttl: Duration,
}

/// The `[events]` table: how event times are written.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// The zone whose wall-clock time stamps events.
    pub time_zone: jiff::tz::TimeZone,
    /// The zone as written in the file ("local", "UTC" or an IANA name), for logs.
    pub time_zone_name: String,
}

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

/// The `[admin.tls]` table when set.
#[derive(Debug, Clone)]
pub struct AdminTls {
    /// The certificate chain, PEM.
    pub cert_file: PathBuf,
    /// The private key, PEM.
    pub key_file: PathBuf,
}

/// The `[cluster]` table when `redis` is set.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The Redis URL (`redis://` or `rediss://`; `redis+sentinel://`, `redis+cluster://`).
    pub redis: String,
    /// This node's name in logs, metrics and Redis.
    pub node: String,
    /// Whether `node` is the default (the host's name and the listen port): with port 0,
    /// the port the listener got replaces it at start.
    pub node_is_default: bool,
    /// The prefix of every Redis key and channel.
    pub prefix: String,
    /// With `rediss://`: the CA certificates (PEM) that alone are trusted for Redis's
    /// certificate; `None` trusts the system's roots.
    pub redis_ca_file: Option<PathBuf>,
}

/// The `[log]` table.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The level used when `RUST_LOG` is not set.
    pub level: log::LevelFilter,
}

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
        let config = Config {
            server: check.server(raw.server)?,
            auth: check.auth(raw.auth)?,
            events: check.events(raw.events)?,
            admin: check.admin(raw.admin)?,
            log: check.log(raw.log)?,
            cluster: None,
            source: Source::File(path.to_path_buf()),
        };
        let config = Config {
            cluster: check.cluster(raw.cluster, &config)?,
            ..config
        };
        check.distinct_listeners(&config)?;
        Ok(config)
    }

    /// The settings in force as `server.toml` text, every key with its checked value
    /// (automatic thread counts resolved, paths resolved); a set `admin.token` is masked.
    pub fn effective_toml(&self) -> String {
        use toml_edit::{value, DocumentMut, Item, Table};
        let mut document = DocumentMut::new();
        let mut section = |name: &str, keys: Vec<(&str, Item)>| {
            let mut table = Table::new();
            for (key, item) in keys {
                table.insert(key, item);
            }
            document.insert(name, Item::Table(table));
        };
        let count = |n: usize| value(i64::try_from(n).unwrap_or(i64::MAX));
        let server = &self.server;
        section(
            "server",
            vec![
                (
                    "listen",
                    value(server.listen.map_or_else(String::new, |a| a.to_string())),
                ),
                ("idle_timeout", value(format_duration(server.idle_timeout))),
                ("max_message_bytes", count(server.max_message_bytes)),
                ("max_pending_bytes", count(server.max_pending_bytes)),
                ("max_pending_total", count(server.max_pending_total)),
                ("max_connections", count(server.max_connections)),
                (
                    "shutdown_grace",
                    value(format_duration(server.shutdown_grace)),
                ),
                ("workers", count(server.workers)),
                (
                    "proxy_protocol_from",
                    value(
                        server
                            .proxy_protocol_from
                            .iter()
                            .map(ToString::to_string)
                            .collect::<toml_edit::Array>(),
                    ),
                ),
                ("tls", tls_table(server.tls.as_ref())),
                ("websocket", websocket_table(server.websocket.as_ref())),
            ],
        );
        let auth = &self.auth;
        // One of users_file and database: both set is an error when read back.
        let source = match &auth.database {
            Some(url) => ("database", value(mask_password(url))),
            None => (
                "users_file",
                value(auth.users_file.to_string_lossy().into_owned()),
            ),
        };
        let ca_file = auth
            .database_ca_file
            .as_ref()
            .map_or_else(String::new, |file| file.to_string_lossy().into_owned());
        section(
            "auth",
            vec![
                source,
                ("database_ca_file", value(ca_file)),
                ("table", value(auth.table.clone())),
                ("bcrypt_cost", value(i64::from(auth.bcrypt_cost))),
                ("watch", value(auth.watch)),
                (
                    "login_failures_per_minute",
                    value(i64::from(auth.login_failures_per_minute)),
                ),
                ("password_threads", count(auth.password_threads)),
                (
                    "verifier_key_file",
                    value(
                        auth.verifier_key_file
                            .as_ref()
                            .map_or_else(String::new, |p| p.to_string_lossy().into_owned()),
                    ),
                ),
                (
                    "verifier_file",
                    value(auth.verifier_file.to_string_lossy().into_owned()),
                ),
                ("verifier_ttl", value(format_duration(auth.verifier_ttl))),
            ],
        );
        section(
            "events",
            vec![("time_zone", value(self.events.time_zone_name.clone()))],
        );
        let listen = self
            .admin
            .listen
            .map_or_else(String::new, |a| a.to_string());
        let token = match self.admin.token {
            Some(_) => MASKED_TOKEN,
            None => "",
        };
        let admin_tls = self.admin.tls.as_ref();
        let path = |path: Option<&PathBuf>| {
            value(path.map_or_else(String::new, |p| p.to_string_lossy().into_owned()))
        };
        let mut tls = Table::new();
        tls.insert("cert_file", path(admin_tls.map(|tls| &tls.cert_file)));
        tls.insert("key_file", path(admin_tls.map(|tls| &tls.key_file)));
        section(
            "admin",
            vec![
                ("listen", value(listen)),
                ("token", value(token)),
                ("console", value(self.admin.console)),
                ("tls", Item::Table(tls)),
            ],
        );
        let level = self.log.level.to_string().to_ascii_lowercase();
        section("log", vec![("level", value(level))]);
        let cluster = self.cluster.as_ref();
        let text = |text: Option<&String>| value(text.map_or_else(String::new, Clone::clone));
        section(
            "cluster",
            vec![
                (
                    "redis",
                    value(cluster.map_or_else(String::new, |c| mask_password(&c.redis))),
                ),
                (
                    "redis_ca_file",
                    value(
                        cluster
                            .and_then(|c| c.redis_ca_file.as_ref())
                            .map_or_else(String::new, |p| p.to_string_lossy().into_owned()),
                    ),
                ),
                ("node", text(cluster.map(|c| &c.node))),
                (
                    "prefix",
                    value(cluster.map_or_else(|| DEFAULT_PREFIX.to_string(), |c| c.prefix.clone())),
                ),
            ],
        );
        document.to_string()
    }
}

/// The `[server.tls]` table as [`Config::effective_toml`] shows it.
fn tls_table(tls: Option<&TlsConfig>) -> toml_edit::Item {
    let path = |path: Option<&PathBuf>| {
        toml_edit::value(path.map_or_else(String::new, |p| p.to_string_lossy().into_owned()))
    };
    let mut table = toml_edit::Table::new();
    table.insert(
        "listen",
        toml_edit::value(
            tls.and_then(|tls| tls.listen)
                .map_or_else(String::new, |address| address.to_string()),
        ),
    );
    table.insert("cert_file", path(tls.map(|tls| &tls.cert_file)));
    table.insert("key_file", path(tls.map(|tls| &tls.key_file)));
    table.insert(
        "client_ca_file",
        path(tls.and_then(|tls| tls.client_ca_file.as_ref())),
    );
    toml_edit::Item::Table(table)
}

/// The `[server.websocket]` table as [`Config::effective_toml`] shows it.
fn websocket_table(websocket: Option<&WebSocketConfig>) -> toml_edit::Item {
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

/// What [`Config::effective_toml`] shows for a set `admin.token`.
pub const MASKED_TOKEN: &str = "(set, not shown)";

/// A duration the way `server.toml` writes it: `"1h1m1s1ms"`, `"30m"`, `"0s"`.
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut text = String::new();
    let units = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    for (unit, unit_ms) in units {
        let amount = ms / unit_ms;
        ms %= unit_ms;
        if amount > 0 {
            text.push_str(&format!("{amount}{unit}"));
        }
    }
    text
}

/// Why a configuration was refused: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file.
    file: PathBuf,
    /// Where in the file, when known.
    location: Location,
    /// What is wrong, for a person.
    message: String,
}

/// Where in the file a [`ConfigError`] lies.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// The file as a whole (it could not be read).
    File,
    /// A key path such as `server.idle_timeout`, and the 1-based line where it is set when
    /// it is in the file.
    Key(String, Option<usize>),
    /// A TOML syntax error: 1-based line and column.
    Text { line: usize, column: usize },
}

impl ConfigError {
    fn file(file: &Path, message: String) -> Self {
        Self {
            file: file.to_path_buf(),
            location: Location::File,
            message,
        }
    }

    fn key(file: &Path, key: &str, message: String) -> Self {
        Self {
            file: file.to_path_buf(),
            location: Location::Key(key.to_string(), None),
            message,
        }
    }

    /// The configuration file the error is about.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The key path at fault, such as `server.idle_timeout`, when there is one.
    pub fn key_path(&self) -> Option<&str> {
        match &self.location {
            Location::Key(key, _) => Some(key),
            _ => None,
        }
    }

    /// What is wrong, without the file and key.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (line, column, key) = match &self.location {
            Location::File => (None, None, None),
            Location::Key(key, line) => (*line, None, Some(key as &dyn fmt::Display)),
            Location::Text { line, column } => (Some(*line), Some(*column), None),
        };
        let located = Located {
            file: &self.file,
            line,
            column,
            key,
            message: &self.message,
        };
        located.fmt(f)
    }
}

impl std::error::Error for ConfigError {}

/// Reads a duration: one or more `<decimal integer><unit>` with units `ms`, `s`, `m`, `h`,
/// `d` and no spaces, such as `"30m"`, `"250ms"`, `"1m30s"` or `"7d"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const UNITS: &str = "units are ms, s, m, h and d";
    if text.is_empty() {
        return Err(
            "the duration is empty (write it like \"30m\", \"5s\", \"250ms\" or \"1m30s\")"
                .to_string(),
        );
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, after) = rest.split_at(digits_end);
        if digits.is_empty() {
            return Err(format!("expected a number at {rest:?} in {text:?}"));
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("missing unit after {digits} in {text:?} ({UNITS})")),
            other => return Err(format!("unknown unit {other:?} in {text:?} ({UNITS})")),
        };
        let too_long = || format!("the duration {text:?} is too long");
        let amount: u64 = digits.parse().map_err(|_| too_long())?;
        total_ms = amount
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(too_long)?;
        rest = after;
    }
    Ok(Duration::from_millis(total_ms))
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

/// The file as written; every key optional, with the defaults of SPEC §4.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    auth: RawAuth,
    events: RawEvents,
    admin: RawAdmin,
    log: RawLog,
    cluster: RawCluster,
}

/// `cluster.prefix` unless set.
const DEFAULT_PREFIX: &str = "tether";

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a [cluster] table")]
struct RawCluster {
    redis: String,
    redis_ca_file: String,
    node: String,
    prefix: String,
}

impl Default for RawCluster {
    fn default() -> Self {
        Self {
            redis: String::new(),
            redis_ca_file: String::new(),
            node: String::new(),
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a [server] table")]
struct RawServer {
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

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a [server.websocket] table")]
struct RawServerWebSocket {
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

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a [server.tls] table")]
struct RawServerTls {
    listen: String,
    cert_file: String,
    key_file: String,
    client_ca_file: String,
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

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "an [auth] table")]
struct RawAuth {
    users_file: Option<PathBuf>,
    database: String,
    database_ca_file: String,
    table: String,
    bcrypt_cost: u32,
    watch: bool,
    login_failures_per_minute: u32,
    password_threads: u64,
    verifier_key_file: String,
    verifier_file: String,
    verifier_ttl: String,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            users_file: None,
            database: String::new(),
            database_ca_file: String::new(),
            table: "tether_users".to_string(),
            bcrypt_cost: 12,
            watch: true,
            login_failures_per_minute: 10,
            password_threads: 0,
            verifier_key_file: String::new(),
            verifier_file: "verifiers".to_string(),
            verifier_ttl: "7d".to_string(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "an [events] table")]
struct RawEvents {
    time_zone: String,
}

impl Default for RawEvents {
    fn default() -> Self {
        Self {
            time_zone: "local".to_string(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "an [admin] table")]
struct RawAdmin {
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

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "an [admin.tls] table")]
struct RawAdminTls {
    cert_file: String,
    key_file: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a [log] table")]
struct RawLog {
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".to_string(),
        }
    }
}

/// Largest accepted `server.max_message_bytes`.
const MAX_MESSAGE_BYTES_LIMIT: u64 = 64 * 1024 * 1024;
/// Whether `name` may be `auth.table`: a PostgreSQL identifier that needs no quoting and
/// keeps its case (lowercase letters, digits and `_`, not starting with a digit, at most
/// 63 bytes), so it can name both the table and the channel its trigger notifies.
fn valid_table_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first == b'_')
        && bytes.all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
        && name.len() <= 63
}

/// `url` with the password it holds, if any, replaced by `****`.
pub fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|at| at + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:****{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Whether `url` is a Redis URL the broker can use.
fn redis_url_check(url: &str) -> Result<(), String> {
    tether_cluster::ClusterSettings::check_url(url)
}

/// Largest accepted `server.workers`.
const MAX_WORKERS: u64 = 1024;
/// Largest accepted `auth.password_threads`.
const MAX_PASSWORD_THREADS: u64 = 1024;

/// The bcrypt threads an `auth.password_threads` of 0 means: one per CPU but one, at least
/// one, so that a login storm always leaves a core to the event loops.
fn automatic_password_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    cpus.saturating_sub(1).max(1)
}

/// The second stage: raw values into checked ones, each error naming its key.
struct Check<'a> {
    /// The configuration file, for errors and relative paths.
    file: &'a Path,
}

impl Check<'_> {
    fn error(&self, key: &str, message: String) -> ConfigError {
        ConfigError::key(self.file, key, message)
    }

    fn server(&self, raw: RawServer) -> Result<ServerConfig, ConfigError> {
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
        let listen = match raw.listen.as_str() {
            "" => None,
            text => Some(self.address("server.listen", text)?),
        };
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

    /// CIDRs (or single addresses) of `key`.
    fn networks(&self, key: &str, texts: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
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

    /// `[server.websocket]`: `None` when `listen` is empty.
    fn server_websocket(
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

    fn server_tls(&self, raw: RawServerTls, wss: bool) -> Result<Option<TlsConfig>, ConfigError> {
        if raw.listen.is_empty() && !wss {
            return Ok(None);
        }
        let folder = self.file.parent().unwrap_or(Path::new(""));
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
            listen: match raw.listen.as_str() {
                "" => None,
                text => Some(self.address("server.tls.listen", text)?),
            },
            cert_file: file("server.tls.cert_file", &raw.cert_file)?,
            key_file: file("server.tls.key_file", &raw.key_file)?,
            client_ca_file: match raw.client_ca_file.as_str() {
                "" => None,
                text => Some(folder.join(text)),
            },
        }))
    }

    fn auth(&self, raw: RawAuth) -> Result<AuthConfig, ConfigError> {
        if raw
            .users_file
            .as_ref()
            .is_some_and(|file| file.as_os_str().is_empty())
        {
            return Err(self.error("auth.users_file", "must not be empty".into()));
        }
        let database = match raw.database.as_str() {
            "" => None,
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                if raw.users_file.is_some() {
                    return Err(self.error(
                        "auth.database",
                        "cannot be set together with auth.users_file: users come from one \
                         of them"
                            .into(),
                    ));
                }
                let parsed = match url.parse::<tokio_postgres::Config>() {
                    Ok(parsed) => parsed,
                    Err(err) => {
                        return Err(self.error("auth.database", format!("invalid URL: {err}")))
                    }
                };
                let ssl_mode = parsed.get_ssl_mode();
                if raw.database_ca_file.is_empty() && ssl_mode == SslMode::Require {
                    return Err(self.error(
                        "auth.database",
                        "sslmode=require needs auth.database_ca_file: the CA certificate \
                         (PEM) the database server's certificate is checked against"
                            .into(),
                    ));
                }
                if !raw.database_ca_file.is_empty() && ssl_mode == SslMode::Disable {
                    return Err(self.error(
                        "auth.database",
                        "sslmode=disable contradicts auth.database_ca_file (which makes the \
                         connection TLS)"
                            .into(),
                    ));
                }
                Some(url.to_string())
            }
            _ => {
                return Err(self.error(
                    "auth.database",
                    "must be a postgres:// URL, or \"\" for the users file".into(),
                ))
            }
        };
        if !valid_table_name(&raw.table) {
            return Err(self.error(
                "auth.table",
                format!(
                    "must be a table name, optionally schema-qualified (letters, digits and \
                     _, not starting with a digit, at most 63 bytes each), found {:?}",
                    raw.table
                ),
            ));
        }
        let max_cost = tether_actors::auth::password::MAX_STORED_COST;
        if !(4..=max_cost).contains(&raw.bcrypt_cost) {
            return Err(self.error(
                "auth.bcrypt_cost",
                format!("must be from 4 to {max_cost}, found {}", raw.bcrypt_cost),
            ));
        }
        let password_threads = match self.size(
            "auth.password_threads",
            raw.password_threads,
            0,
            MAX_PASSWORD_THREADS,
            "",
        )? {
            0 => automatic_password_threads(),
            threads => threads,
        };
        if database.is_none() && !raw.database_ca_file.is_empty() {
            return Err(self.error(
                "auth.database_ca_file",
                "is only for auth.database (leave it \"\" with the users file)".into(),
            ));
        }
        let folder = self.file.parent().unwrap_or(Path::new(""));
        let verifier_ttl = self.duration("auth.verifier_ttl", &raw.verifier_ttl)?;
        if verifier_ttl < Duration::from_secs(1) {
            return Err(self.error(
                "auth.verifier_ttl",
                format!("must be at least 1s, found {:?}", raw.verifier_ttl),
            ));
        }
        if raw.verifier_file.is_empty() {
            return Err(self.error(
                "auth.verifier_file",
                "must name a file (it is only written when auth.verifier_key_file is set)".into(),
            ));
        }
        Ok(AuthConfig {
            users_file: folder.join(
                raw.users_file
                    .unwrap_or_else(|| PathBuf::from("users.toml")),
            ),
            database,
            database_ca_file: match raw.database_ca_file.as_str() {
                "" => None,
                file => Some(folder.join(file)),
            },
            table: raw.table,
            bcrypt_cost: raw.bcrypt_cost,
            watch: raw.watch,
            login_failures_per_minute: raw.login_failures_per_minute,
            password_threads,
            verifier_key_file: match raw.verifier_key_file.as_str() {
                "" => None,
                file => Some(folder.join(file)),
            },
            verifier_file: folder.join(raw.verifier_file),
            verifier_ttl,
        })
    }

    /// `[cluster]`: `None` when `redis` is empty. `node` defaults to the host's name and
    /// the port of `server.listen` (else of `server.tls.listen`).
    fn cluster(
        &self,
        raw: RawCluster,
        config: &Config,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        if raw.redis.is_empty() {
            if !raw.redis_ca_file.is_empty() {
                return Err(self.error(
                    "cluster.redis_ca_file",
                    "is only used with a rediss:// cluster.redis".into(),
                ));
            }
            return Ok(None);
        }
        if ![
            "redis://",
            "rediss://",
            "redis+sentinel://",
            "rediss+sentinel://",
            "redis+cluster://",
            "rediss+cluster://",
        ]
        .iter()
        .any(|scheme| raw.redis.starts_with(scheme))
        {
            return Err(self.error(
                "cluster.redis",
                "must be a redis:// or rediss:// (TLS) URL, redis+sentinel://h1:p1,h2:p2/MASTER, \
                 redis+cluster://h1:p1,h2:p2 (rediss+… for TLS), or \"\" for a node alone"
                    .into(),
            ));
        }
        if !raw.redis_ca_file.is_empty() && !tether_cluster::ClusterSettings::is_tls(&raw.redis) {
            return Err(self.error(
                "cluster.redis_ca_file",
                "is only used with a rediss:// (TLS) cluster.redis".into(),
            ));
        }
        if let Err(err) = redis_url_check(&raw.redis) {
            return Err(self.error("cluster.redis", format!("invalid URL: {err}")));
        }
        let is_plain_text = |text: &str| !text.chars().any(char::is_control);
        let node = match raw.node.as_str() {
            // The host's name and the port (SPEC §4): the listen address alone would be
            // `0.0.0.0:7700` on every host.
            "" => config
                .server
                .listen
                .or(config.server.tls.as_ref().and_then(|tls| tls.listen))
                .or(config.server.websocket.as_ref().map(|ws| ws.listen))
                .map_or_else(String::new, |address| {
                    format!("{}:{}", tether_cluster::host_name(), address.port())
                }),
            node => node.to_string(),
        };
        if node.is_empty() || node.len() > 128 || !is_plain_text(&node) {
            return Err(self.error(
                "cluster.node",
                "must be 1 to 128 bytes without control characters".into(),
            ));
        }
        if raw.prefix.is_empty() || raw.prefix.len() > 128 || !is_plain_text(&raw.prefix) {
            return Err(self.error(
                "cluster.prefix",
                "must be 1 to 128 bytes without control characters".into(),
            ));
        }
        if let Err(err) = tether_cluster::ClusterSettings::check_prefix(&raw.redis, &raw.prefix) {
            return Err(self.error("cluster.prefix", err));
        }
        let folder = self.file.parent().unwrap_or(Path::new(""));
        Ok(Some(ClusterConfig {
            node_is_default: raw.node.is_empty(),
            redis: raw.redis,
            node,
            prefix: raw.prefix,
            redis_ca_file: match raw.redis_ca_file.as_str() {
                "" => None,
                text => Some(folder.join(text)),
            },
        }))
    }

    fn events(&self, raw: RawEvents) -> Result<EventsConfig, ConfigError> {
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

    fn admin(&self, raw: RawAdmin) -> Result<AdminConfig, ConfigError> {
        let listen = match raw.listen.as_str() {
            "" => None,
            text => Some(self.address("admin.listen", text)?),
        };
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
        let folder = self.file.parent().unwrap_or(Path::new(""));
        let tls = match (raw.tls.cert_file.as_str(), raw.tls.key_file.as_str()) {
            ("", "") => None,
            ("", _) => {
                return Err(self.error(
                    "admin.tls.cert_file",
                    "must be set when admin.tls.key_file is".into(),
                ))
            }
            (_, "") => {
                return Err(self.error(
                    "admin.tls.key_file",
                    "must be set when admin.tls.cert_file is".into(),
                ))
            }
            (cert, key) => Some(AdminTls {
                cert_file: folder.join(cert),
                key_file: folder.join(key),
            }),
        };
        Ok(AdminConfig {
            listen,
            token,
            tls,
            console: raw.console,
        })
    }

    /// Refuses an admin API on the client protocol's address: one of them could not bind.
    fn distinct_listeners(&self, config: &Config) -> Result<(), ConfigError> {
        let tls = config.server.tls.as_ref().and_then(|tls| tls.listen);
        let ws = config.server.websocket.as_ref().map(|ws| ws.listen);
        let same = |a: SocketAddr, b: SocketAddr| {
            a.port() != 0 && a.port() == b.port() && a.ip() == b.ip()
        };
        if let (Some(client), Some(tls)) = (config.server.listen, tls) {
            if same(client, tls) {
                return Err(self.error(
                    "server.tls.listen",
                    format!("{tls} is the address of server.listen; give TLS another port"),
                ));
            }
        }
        if let Some(ws) = ws {
            for (key, other) in [
                ("server.listen", config.server.listen),
                ("server.tls.listen", tls),
            ] {
                if other.is_some_and(|other| same(ws, other)) {
                    return Err(self.error(
                        "server.websocket.listen",
                        format!("{ws} is the address of {key}; give WebSocket another port"),
                    ));
                }
            }
        }
        let Some(admin) = config.admin.listen else {
            return Ok(());
        };
        for client in config.server.listen.into_iter().chain(tls).chain(ws) {
            self.distinct(client, admin)?;
        }
        Ok(())
    }

    /// Refuses `admin` on the client address `client`.
    fn distinct(&self, client: SocketAddr, admin: SocketAddr) -> Result<(), ConfigError> {
        let overlap = client.ip() == admin.ip()
            || client.ip().is_unspecified()
            || admin.ip().is_unspecified();
        if client.port() != 0 && client.port() == admin.port() && overlap {
            return Err(self.error(
                "admin.listen",
                format!("{admin} is the address of server.listen ({client}); give the admin API another port"),
            ));
        }
        Ok(())
    }

    fn log(&self, raw: RawLog) -> Result<LogConfig, ConfigError> {
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

    fn duration(&self, key: &str, text: &str) -> Result<Duration, ConfigError> {
        parse_duration(text).map_err(|message| self.error(key, message))
    }

    fn address(&self, key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
        text.parse().map_err(|_| {
            self.error(
                key,
                format!("invalid address {text:?}: expected an address like 127.0.0.1:7700"),
            )
        })
    }

    /// A count that must lie in `min..=max`; `why` explains the minimum when it is not
    /// obvious.
    fn size(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/tether/server.toml"))
    }

    fn refusal(text: &str) -> ConfigError {
        match config(text) {
            Ok(config) => panic!("accepted {text:?}: {config:?}"),
            Err(error) => error,
        }
    }

    /// Asserts that `text` is refused on `key`, with a message containing `words`.
    fn assert_refused(text: &str, key: &str, words: &str) {
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
        let auth = &config.auth;
        assert_eq!(auth.users_file, Path::new("/etc/tether/users.toml"));
        assert_eq!(auth.bcrypt_cost, 12);
        assert!(auth.watch);
        assert_eq!(auth.login_failures_per_minute, 10);
        assert_eq!(auth.password_threads, automatic_password_threads());
        assert_eq!(config.events.time_zone_name, "local");
        assert_eq!(config.admin.listen, Some("127.0.0.1:7701".parse().unwrap()));
        assert_eq!(config.admin.token, None);
        assert_eq!(config.log.level, log::LevelFilter::Info);
    }

    /// Every `section.key` of a configuration, sorted.
    fn section_keys(table: &toml::Table) -> Vec<String> {
        let mut keys: Vec<String> = table
            .iter()
            .flat_map(|(section, keys)| {
                let keys = keys.as_table().map(|keys| keys.keys().cloned().collect());
                let keys: Vec<String> = keys.unwrap_or_default();
                keys.into_iter().map(move |key| format!("{section}.{key}"))
            })
            .collect();
        keys.sort();
        keys
    }

    /// Every `section.key` there is: those of the defaults, and `auth.users_file`, which
    /// the defaults leave unset so that `auth.database` may be set instead.
    fn every_key() -> Vec<String> {
        let defaults = toml::Table::try_from(RawConfig::default()).unwrap();
        let mut keys = section_keys(&defaults);
        keys.push("auth.users_file".to_string());
        keys.sort();
        keys.dedup();
        keys
    }

    /// The keys of `table` plus whichever of `auth.users_file` and `auth.database` it lacks:
    /// a configuration sets one user source, never both.
    fn with_either_user_source(table: &toml::Table) -> Vec<String> {
        let mut keys = section_keys(table);
        keys.extend(["auth.users_file".to_string(), "auth.database".to_string()]);
        keys.sort();
        keys.dedup();
        keys
    }

    #[test]
    fn shipped_server_toml_documents_every_key() {
        // The keys, not their values: an operator editing the shipped file (a port, say)
        // must not make the tests fail.
        let shipped = include_str!("../server.toml");
        config(shipped).unwrap();
        let written: toml::Table = shipped.parse().unwrap();
        // `database` is there as a comment: it cannot be set beside `users_file`.
        assert!(
            shipped.contains("\n# database = "),
            "auth.database is not documented"
        );
        assert_eq!(with_either_user_source(&written), every_key());
        let lines: Vec<&str> = shipped.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            if line.contains(" = ") && !line.starts_with('#') {
                let above = index.checked_sub(1).map(|above| lines[above]);
                assert!(
                    above.is_some_and(|above| above.starts_with('#')),
                    "{line:?} has no comment above it"
                );
            }
        }
    }

    #[test]
    fn effective_toml_reads_back_as_the_same_settings() {
        let text = "[server]\nlisten = \"[::1]:9000\"\nidle_timeout = \"1m30s\"\n\
                    shutdown_grace = \"250ms\"\n[auth]\nwatch = false\n\
                    [events]\ntime_zone = \"UTC\"\n[log]\nlevel = \"debug\"\n";
        let original = config(text).unwrap();
        let effective = original.effective_toml();
        let again = config(&effective).unwrap();
        assert_eq!(format!("{again:?}"), format!("{original:?}"), "{effective}");
        assert!(
            effective.contains("idle_timeout = \"1m30s\""),
            "{effective}"
        );
        assert!(effective.contains("users_file = \"/etc/tether/users.toml\""));
    }

    #[test]
    fn effective_toml_shows_every_key() {
        let effective: toml::Table = config("").unwrap().effective_toml().parse().unwrap();
        assert_eq!(with_either_user_source(&effective), every_key());
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
    fn durations_are_written_back_in_their_largest_units() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(1800)), "30m");
        assert_eq!(
            format_duration(Duration::from_millis(3_661_001)),
            "1h1m1s1ms"
        );
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(7 * 86_400)), "7d");
    }

    #[test]
    fn verifier_keys_have_their_defaults_and_are_checked() {
        let auth = config("").unwrap().auth;
        assert_eq!(auth.verifier_key_file, None);
        assert_eq!(auth.verifier_file, Path::new("/etc/tether/verifiers"));
        assert_eq!(auth.verifier_ttl, Duration::from_secs(7 * 86_400));
        let auth = config("[auth]\nverifier_key_file = \"k\"\nverifier_ttl = \"1d12h\"")
            .unwrap()
            .auth;
        assert_eq!(
            auth.verifier_key_file.as_deref(),
            Some(Path::new("/etc/tether/k"))
        );
        assert_eq!(auth.verifier_ttl, Duration::from_secs(36 * 3_600));
        assert_refused(
            "[auth]\nverifier_ttl = \"0s\"",
            "auth.verifier_ttl",
            "at least 1s",
        );
        assert_refused(
            "[auth]\nverifier_ttl = \"7w\"",
            "auth.verifier_ttl",
            "unknown unit",
        );
        assert_refused(
            "[auth]\nverifier_file = \"\"",
            "auth.verifier_file",
            "must name",
        );
    }

    #[test]
    fn admin_api_on_the_client_address_is_refused() {
        assert_refused(
            "[server]\nlisten = \"127.0.0.1:7700\"\n[admin]\nlisten = \"127.0.0.1:7700\"",
            "admin.listen",
            "the address of server.listen",
        );
        assert_refused(
            "[server]\nlisten = \"0.0.0.0:7700\"\n[admin]\nlisten = \"127.0.0.1:7700\"",
            "admin.listen",
            "another port",
        );
        assert!(
            config("[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"").is_ok()
        );
        assert!(config(
            "[server]\nlisten = \"127.0.0.1:7700\"\n[admin]\nlisten = \"127.0.0.2:7700\""
        )
        .is_ok());
    }

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
            [auth]
            users_file = "/var/lib/tether/users.toml"
            bcrypt_cost = 4
            watch = false
            login_failures_per_minute = 0
            password_threads = 5
            [events]
            time_zone = "UTC"
            [admin]
            listen = "0.0.0.0:9001"
            token = "s3cret"
            [log]
            level = "DEBUG"
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
        assert_eq!(
            config.auth.users_file,
            Path::new("/var/lib/tether/users.toml")
        );
        assert_eq!(config.auth.bcrypt_cost, 4);
        assert!(!config.auth.watch);
        assert_eq!(config.auth.login_failures_per_minute, 0);
        assert_eq!(config.auth.password_threads, 5);
        assert_eq!(config.admin.listen, Some("0.0.0.0:9001".parse().unwrap()));
        assert_eq!(config.admin.token.as_deref(), Some("s3cret"));
        assert_eq!(config.log.level, log::LevelFilter::Debug);
    }

    #[test]
    fn relative_users_file_is_resolved_against_the_config_folder() {
        let text = "[auth]\nusers_file = \"data/users.toml\"";
        let config = Config::from_toml(text, Path::new("/srv/tether/server.toml")).unwrap();
        assert_eq!(
            config.auth.users_file,
            Path::new("/srv/tether/data/users.toml")
        );
        let config = Config::from_toml(text, Path::new("server.toml")).unwrap();
        assert_eq!(config.auth.users_file, Path::new("data/users.toml"));
    }

    #[test]
    fn database_and_users_file_together_are_refused() {
        assert_refused(
            "[auth]\nusers_file = \"u.toml\"\ndatabase = \"postgres://h/db\"",
            "auth.database",
            "users_file",
        );
        assert_refused(
            "[auth]\ndatabase = \"mysql://h/db\"",
            "auth.database",
            "postgres://",
        );
        assert_refused(
            "[auth]\ntable = \"Users; drop\"",
            "auth.table",
            "table name",
        );
        let config = Config::from_toml(
            "[auth]\ndatabase = \"postgres://me:secret@h:5433/db\"\ntable = \"people\"",
            Path::new("/etc/tether/server.toml"),
        )
        .expect("valid");
        assert_eq!(config.auth.table, "people");
        let effective = config.effective_toml();
        assert!(effective.contains("database = \"postgres://me:****@h:5433/db\""));
        assert!(!effective.contains("users_file"));
    }

    #[test]
    fn a_database_ca_file_goes_with_a_database_that_may_use_tls() {
        assert_refused(
            "[auth]\ndatabase = \"postgres://h/db?sslmode=require\"",
            "auth.database",
            "database_ca_file",
        );
        assert_refused(
            "[auth]\ndatabase = \"postgres://h/db?sslmode=disable\"\ndatabase_ca_file = \"ca.pem\"",
            "auth.database",
            "contradicts",
        );
        assert_refused(
            "[auth]\ndatabase_ca_file = \"ca.pem\"",
            "auth.database_ca_file",
            "only for auth.database",
        );
        let config = Config::from_toml(
            "[auth]\ndatabase = \"postgres://h/db?sslmode=require\"\ndatabase_ca_file = \"ca.pem\"",
            Path::new("/etc/tether/server.toml"),
        )
        .expect("valid");
        assert_eq!(
            config.auth.database_ca_file.as_deref(),
            Some(Path::new("/etc/tether/ca.pem"))
        );
        let again = Config::from_toml(&config.effective_toml(), Path::new("/x/server.toml"))
            .expect("reads back");
        assert_eq!(again.auth.database_ca_file, config.auth.database_ca_file);
    }

    #[test]
    fn cluster_keys_are_checked_and_the_node_defaults_to_the_host_name_and_port() {
        assert!(config("").unwrap().cluster.is_none(), "alone by default");
        assert!(config("[cluster]\nnode = \"n1\"")
            .unwrap()
            .cluster
            .is_none());
        let clustered = config(
            "[server]\nlisten = \"127.0.0.1:9000\"\n\
             [cluster]\nredis = \"redis://:pw@127.0.0.1:6390/2\"",
        )
        .unwrap();
        let cluster = clustered.cluster.as_ref().expect("clustered");
        let default_node = format!("{}:9000", tether_cluster::host_name());
        assert_eq!(
            (cluster.node.as_str(), cluster.prefix.as_str()),
            (default_node.as_str(), "tether")
        );
        let effective = clustered.effective_toml();
        assert!(effective.contains("redis = \"redis://:****@127.0.0.1:6390/2\""));
        assert!(effective.contains(&format!("node = \"{default_node}\"")));
        let tls = Config::from_toml(
            "[cluster]\nredis = \"rediss://h:6379\"\nredis_ca_file = \"ca.pem\"",
            Path::new("/etc/tether/server.toml"),
        )
        .unwrap();
        let cluster = tls.cluster.as_ref().expect("clustered over TLS");
        assert_eq!(
            cluster.redis_ca_file.as_deref(),
            Some(Path::new("/etc/tether/ca.pem"))
        );
        assert!(tls
            .effective_toml()
            .contains("redis_ca_file = \"/etc/tether/ca.pem\""));
        assert!(config("[cluster]\nredis = \"rediss://h:6379\"")
            .unwrap()
            .cluster
            .is_some_and(|cluster| cluster.redis_ca_file.is_none()));
        assert_refused(
            "[cluster]\nredis = \"redis://h:6379\"\nredis_ca_file = \"ca.pem\"",
            "cluster.redis_ca_file",
            "rediss://",
        );
        assert_refused(
            "[cluster]\nredis = \"http://h\"",
            "cluster.redis",
            "redis://",
        );
        assert_refused(
            "[cluster]\nredis = \"redis://h\"\nnode = \"a\\u001fb\"",
            "cluster.node",
            "control",
        );
        assert_refused(
            "[cluster]\nredis = \"redis://h\"\nprefix = \"\"",
            "cluster.prefix",
            "1 to 128",
        );
    }

    #[test]
    fn sentinel_and_redis_cluster_urls_are_checked() {
        let sentinel = config(
            "[cluster]\nredis = \"redis+sentinel://u:pw@h1:26379,h2:26379/mymaster\"\nnode = \"n\"",
        )
        .unwrap();
        assert!(sentinel
            .effective_toml()
            .contains("redis = \"redis+sentinel://u:****@h1:26379,h2:26379/mymaster\""));
        assert!(
            config("[cluster]\nredis = \"redis+cluster://h1:7000,h2:7001\"\nnode = \"n\"")
                .unwrap()
                .cluster
                .is_some()
        );
        assert!(Config::from_toml(
            "[cluster]\nredis = \"rediss+cluster://h1:7000\"\nnode = \"n\"\nredis_ca_file = \"ca.pem\"",
            Path::new("/etc/tether/server.toml"),
        )
        .is_ok());
        for (url, why) in [
            ("redis+sentinel://h1:26379,h2:26379/", "master"),
            ("redis+sentinel://h1:x/m", "host:port"),
            ("redis+cluster://h1:7000/3", "database 0"),
            ("redis+cluster://", "no host"),
            ("nats://h:4222", "redis+sentinel://"),
        ] {
            assert_refused(
                &format!("[cluster]\nredis = \"{url}\"\nnode = \"n\""),
                "cluster.redis",
                why,
            );
        }
        assert_refused(
            "[cluster]\nredis = \"redis+cluster://h:7000\"\nnode = \"n\"\nprefix = \"t{x}\"",
            "cluster.prefix",
            "hash tags",
        );
        assert_refused(
            "[cluster]\nredis = \"redis+sentinel://h:1/m\"\nnode = \"n\"\nredis_ca_file = \"ca.pem\"",
            "cluster.redis_ca_file",
            "rediss://",
        );
    }

    #[test]
    fn empty_users_file_is_refused() {
        assert_refused("[auth]\nusers_file = \"\"", "auth.users_file", "empty");
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

    #[test]
    fn bcrypt_cost_outside_4_to_16_is_refused() {
        assert_refused(
            "[auth]\nbcrypt_cost = 3",
            "auth.bcrypt_cost",
            "from 4 to 16",
        );
        assert_refused(
            "[auth]\nbcrypt_cost = 17",
            "auth.bcrypt_cost",
            "from 4 to 16",
        );
    }

    #[test]
    fn zero_password_threads_means_one_per_cpu_but_one() {
        let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let expected = cpus.saturating_sub(1).max(1);
        assert_eq!(config("").unwrap().auth.password_threads, expected);
        assert_eq!(
            config("[auth]\npassword_threads = 0")
                .unwrap()
                .auth
                .password_threads,
            expected
        );
    }

    #[test]
    fn positive_password_threads_are_kept() {
        for threads in [1, 3, 1024] {
            let text = format!("[auth]\npassword_threads = {threads}");
            assert_eq!(config(&text).unwrap().auth.password_threads, threads);
        }
    }

    #[test]
    fn too_many_password_threads_are_refused() {
        assert_refused(
            "[auth]\npassword_threads = 1025",
            "auth.password_threads",
            "at most 1024",
        );
    }

    #[test]
    fn negative_password_threads_are_refused() {
        assert_refused(
            "[auth]\npassword_threads = -1",
            "auth.password_threads",
            "invalid value",
        );
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

    #[test]
    fn durations_in_every_unit_and_combined_are_read() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("1h1m1s1ms"),
            Ok(Duration::from_millis(3_661_001))
        );
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn empty_duration_is_rejected() {
        assert!(parse_duration("").unwrap_err().contains("empty"));
    }

    #[test]
    fn duration_without_unit_is_rejected() {
        assert!(parse_duration("30")
            .unwrap_err()
            .contains("missing unit after 30"));
        assert!(parse_duration("1m30")
            .unwrap_err()
            .contains("missing unit after 30"));
    }

    #[test]
    fn duration_with_unknown_unit_is_rejected() {
        for text in ["5x", "5sec", "5S", "5 s", "5s "] {
            assert!(
                parse_duration(text).unwrap_err().contains("unknown unit"),
                "{text}"
            );
        }
    }

    #[test]
    fn duration_without_number_is_rejected() {
        for text in ["s", "ms", "-5s", "+5s", " 5s", "1.5s", "1m s"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }

    #[test]
    fn duration_that_overflows_is_rejected() {
        assert!(parse_duration("99999999999999999999ms")
            .unwrap_err()
            .contains("too long"));
        assert!(parse_duration("5124095576030432h")
            .unwrap_err()
            .contains("too long"));
        assert!(parse_duration("5124095576030431h5124095576030431h")
            .unwrap_err()
            .contains("too long"));
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
