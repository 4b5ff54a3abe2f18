//! What the server counts, for the admin API's `/metrics`: one [`Metrics`] per server,
//! with every labelled child created up front so the hot paths only add to an atomic.

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::fmt;

/// A label set of one `(name, value)` pair, its value one of the label enums below.
type Label<E> = [(&'static str, E); 1];

/// The label set of a per-worker metric: `worker="<index>"`.
type WorkerLabel = Vec<(&'static str, String)>;

/// Makes one worker's delivery histogram: 10 µs to 1.3 s, doubling.
fn delivery_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 18))
}

/// The result of a `login`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoginResult {
    /// The password matched.
    Valid,
    /// The password was checked and did not match (or the user is unknown).
    Invalid,
    /// Refused unchecked by the throttle.
    Throttled,
    /// Refused unchecked: the user store did not answer the lookup.
    Unchecked,
}

/// The type of a client message, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// `login`.
    Login,
    /// `logout`.
    Logout,
    /// `disconnect`.
    Disconnect,
    /// `prolongate`.
    Prolongate,
    /// `invalidate`.
    Invalidate,
    /// Answered `unknown_command`.
    Unknown,
    /// Answered `invalid_args_count`.
    InvalidArgsCount,
}

/// Why a client's TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// Not done within the 10 s a handshake has.
    Timeout,
    /// The client closed (or reset) the connection before the end.
    Closed,
    /// The client ended it with an alert, such as refusing the server's certificate.
    Alert,
    /// The client's certificate was missing or not trusted (`client_ca_file`).
    ClientCertificate,
    /// Anything else the client sent that is not a good handshake (plaintext, garbage).
    Protocol,
}

/// Why a connection from a `proxy_protocol_from` address was closed before its PROXY
/// protocol header was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyHeaderFailure {
    /// Not complete within the 5 s a header has.
    Timeout,
    /// The peer closed (or reset) the connection before the header's end.
    Closed,
    /// The bytes are not a valid v1 or v2 header (or a longer one than allowed).
    Malformed,
}

/// What a client connection runs over, as logs and `/metrics` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// Plain TCP (`server.listen`).
    Tcp,
    /// TLS (`server.tls.listen`).
    Tls,
    /// WebSocket (`server.websocket.listen`).
    Ws,
    /// WebSocket inside TLS (`server.websocket.tls = true`).
    Wss,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why a WebSocket upgrade (SPEC §11) was refused or did not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WsHandshakeFailure {
    /// Not done within the 10 s a handshake has.
    Timeout,
    /// The client closed (or reset) the connection before the end of its request.
    Closed,
    /// Not an HTTP/1.1 request, or a head over 8 KiB: `400`/`431`.
    Malformed,
    /// Another path than `server.websocket.path`: `404`.
    NotFound,
    /// A request that asks for no WebSocket upgrade: `426`.
    NotUpgrade,
    /// An `Origin` not in `allowed_origins`: `403`.
    Origin,
}

/// Why a WebSocket connection was closed for breaking the frame protocol, by close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WsViolationCode {
    /// 1002: a protocol error (unmasked frame, bad control frame, bad opcode…).
    Protocol,
    /// 1007: a text frame that is not UTF-8.
    InvalidUtf8,
    /// 1009: a frame or message over `max_message_bytes` and its terminator.
    TooBig,
}

/// Why a connection got `io_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoErrorCause {
    /// A message longer than `max_message_bytes`.
    MessageTooLong,
    /// Reading the socket failed.
    Read,
    /// Writing the socket failed.
    Write,
    /// Unsent output passed `max_pending_bytes`.
    SlowReader,
    /// The client CA changed and no longer accepts the connection's client certificate.
    ClientCertificate,
}

/// Why a user's connections are invalidated; for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidationCause {
    /// Another connection of the user sent `invalidate`.
    Client,
    /// The user's password hash changed.
    PasswordChanged,
    /// The user was removed.
    UserRemoved,
    /// An operator or the host program asked for it.
    Operator,
    /// Another node of the cluster invalidated the user (any of the causes above there).
    Cluster,
}

/// A supervised actor of the hub, as `tether_actor_restarts_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HubActor {
    /// A registry shard.
    Registry,
    /// The event bus.
    Bus,
}

impl fmt::Display for InvalidationCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Client => "invalidate command",
            Self::PasswordChanged => "password changed",
            Self::UserRemoved => "user removed",
            Self::Operator => "operator request",
            Self::Cluster => "from another node",
        })
    }
}

/// Gives each label enum its label text, in one place, and the list of its values in
/// declaration order (so `value as usize` indexes the children created up front).
macro_rules! label_values {
    ($($enum:ident { $($variant:ident => $text:literal),* $(,)? })*) => {$(
        impl $enum {
            /// Every value, in declaration order.
            pub(crate) const ALL: &'static [Self] = &[$(Self::$variant),*];

            /// The text of this value in `/metrics`.
            pub fn label(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),*
                }
            }
        }

        impl crate::util::failure_log::FailureCause for $enum {
            const ALL: &'static [Self] = &[$(Self::$variant),*];

            fn index(self) -> usize {
                self as usize
            }

            fn label(self) -> &'static str {
                $enum::label(self)
            }
        }

        impl EncodeLabelValue for $enum {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
                self.label().encode(encoder)
            }
        }
    )*};
}

label_values! {
    LoginResult {
        Valid => "valid",
        Invalid => "invalid",
        Throttled => "throttled",
        Unchecked => "unchecked",
    }
    CommandKind {
        Login => "login",
        Logout => "logout",
        Disconnect => "disconnect",
        Prolongate => "prolongate",
        Invalidate => "invalidate",
        Unknown => "unknown",
        InvalidArgsCount => "invalid_args_count",
    }
    HandshakeFailure {
        Timeout => "timeout",
        Closed => "closed",
        Alert => "alert",
        ClientCertificate => "client_certificate",
        Protocol => "protocol",
    }
    ProxyHeaderFailure {
        Timeout => "timeout",
        Closed => "closed",
        Malformed => "malformed",
    }
    IoErrorCause {
        MessageTooLong => "message_too_long",
        Read => "read",
        Write => "write",
        SlowReader => "slow_reader",
        ClientCertificate => "client_certificate",
    }
    InvalidationCause {
        Client => "client",
        PasswordChanged => "password_changed",
        UserRemoved => "user_removed",
        Operator => "operator",
        Cluster => "cluster",
    }
    HubActor {
        Registry => "registry",
        Bus => "bus",
    }
    TransportKind {
        Tcp => "tcp",
        Tls => "tls",
        Ws => "ws",
        Wss => "wss",
    }
    WsHandshakeFailure {
        Timeout => "timeout",
        Closed => "closed",
        Malformed => "malformed",
        NotFound => "not_found",
        NotUpgrade => "not_upgrade",
        Origin => "origin",
    }
    WsViolationCode {
        Protocol => "1002",
        InvalidUtf8 => "1007",
        TooBig => "1009",
    }
}

/// Every metric of one server.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Open client connections.
    pub(crate) connections_open: Gauge,
    /// Connections bound to a user.
    pub(crate) connections_bound: Gauge,
    logins: [Counter; 4],
    commands: [Counter; 7],
    /// Events accepted by the bus.
    pub(crate) events_published: Counter,
    /// Event messages handed to connections.
    pub(crate) events_delivered: Counter,
    invalidations: [Counter; 5],
    /// Connections closed by the idle timeout.
    pub(crate) timeouts: Counter,
    io_errors: [Counter; 5],
    /// Password checks and admin password hashes waiting for a bcrypt thread.
    pub(crate) password_queue_depth: Gauge,
    /// Time one bcrypt check took.
    pub(crate) password_check_seconds: Histogram,
    /// Checks and admin hashes dropped unrun because whoever asked was gone (the
    /// connection, or the admin request, left first).
    pub(crate) password_checks_dropped: Counter,
    /// Logins admitted by a kept verifier instead of bcrypt (SPEC §5).
    pub(crate) password_checks_saved: Counter,
    /// Connections refused because `max_connections` was reached.
    pub(crate) connections_refused: Counter,
    /// Client TLS handshakes under way, each holding a `max_connections` slot.
    pub(crate) tls_handshakes_pending: Gauge,
    tls_handshake_failures: [Counter; 5],
    restarts: [Counter; 2],
    proxy_header_failures: [Counter; 3],
    transport_open: [Gauge; 4],
    transport_accepted: [Counter; 4],
    ws_handshake_failures: [Counter; 6],
    ws_violations: [Counter; 3],
    families: Families,
}

/// The labelled families, kept for registration.
#[derive(Debug, Clone)]
struct Families {
    logins: Family<Label<LoginResult>, Counter>,
    commands: Family<Label<CommandKind>, Counter>,
    invalidations: Family<Label<InvalidationCause>, Counter>,
    io_errors: Family<Label<IoErrorCause>, Counter>,
    tls_handshake_failures: Family<Label<HandshakeFailure>, Counter>,
    proxy_header_failures: Family<Label<ProxyHeaderFailure>, Counter>,
    event_delivery_seconds: Family<WorkerLabel, Histogram, fn() -> Histogram>,
    restarts: Family<Label<HubActor>, Counter>,
    registry_bindings: Family<WorkerLabel, Gauge>,
    transport_open: Family<Label<TransportKind>, Gauge>,
    transport_accepted: Family<Label<TransportKind>, Counter>,
    ws_handshake_failures: Family<Label<WsHandshakeFailure>, Counter>,
    ws_violations: Family<Label<WsViolationCode>, Counter>,
}

/// The child of `family` for each of `values`, created now, in the order of `values`.
fn children<E, const N: usize>(
    family: &Family<Label<E>, Counter>,
    key: &'static str,
    values: &[E],
) -> [Counter; N]
where
    E: EncodeLabelValue + Copy + Eq + std::hash::Hash + fmt::Debug,
{
    debug_assert_eq!(values.len(), N, "one child per value");
    std::array::from_fn(|index| family.get_or_create_owned(&[(key, values[index])]))
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        let families = Families {
            logins: Family::default(),
            commands: Family::default(),
            invalidations: Family::default(),
            io_errors: Family::default(),
            tls_handshake_failures: Family::default(),
            proxy_header_failures: Family::default(),
            event_delivery_seconds: Family::new_with_constructor(delivery_histogram),
            restarts: Family::default(),
            registry_bindings: Family::default(),
            transport_open: Family::default(),
            transport_accepted: Family::default(),
            ws_handshake_failures: Family::default(),
            ws_violations: Family::default(),
        };
        let transport_open = std::array::from_fn(|index| {
            families
                .transport_open
                .get_or_create_owned(&[("transport", TransportKind::ALL[index])])
        });
        Self {
            connections_open: Gauge::default(),
            connections_bound: Gauge::default(),
            logins: children(&families.logins, "result", LoginResult::ALL),
            commands: children(&families.commands, "type", CommandKind::ALL),
            events_published: Counter::default(),
            events_delivered: Counter::default(),
            invalidations: children(&families.invalidations, "cause", InvalidationCause::ALL),
            timeouts: Counter::default(),
            io_errors: children(&families.io_errors, "cause", IoErrorCause::ALL),
            password_queue_depth: Gauge::default(),
            password_check_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 14)),
            password_checks_dropped: Counter::default(),
            password_checks_saved: Counter::default(),
            connections_refused: Counter::default(),
            tls_handshakes_pending: Gauge::default(),
            tls_handshake_failures: children(
                &families.tls_handshake_failures,
                "cause",
                HandshakeFailure::ALL,
            ),
            restarts: children(&families.restarts, "actor", HubActor::ALL),
            proxy_header_failures: children(
                &families.proxy_header_failures,
                "cause",
                ProxyHeaderFailure::ALL,
            ),
            transport_open,
            transport_accepted: children(
                &families.transport_accepted,
                "transport",
                TransportKind::ALL,
            ),
            ws_handshake_failures: children(
                &families.ws_handshake_failures,
                "cause",
                WsHandshakeFailure::ALL,
            ),
            ws_violations: children(&families.ws_violations, "code", WsViolationCode::ALL),
            families,
        }
    }

    /// Adds every metric to `registry` (give it a `tether` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_open",
            "Open client connections",
            self.connections_open.clone(),
        );
        registry.register(
            "connections_bound",
            "Client connections bound to a user",
            self.connections_bound.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at accept because max_connections was reached",
            self.connections_refused.clone(),
        );
        registry.register(
            "tls_handshakes_pending",
            "Client TLS handshakes under way (each holds a max_connections slot)",
            self.tls_handshakes_pending.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Client TLS handshakes that failed, by cause",
            self.families.tls_handshake_failures.clone(),
        );
        registry.register(
            "proxy_header_failures",
            "Connections from proxy_protocol_from closed without a valid PROXY protocol header, by cause",
            self.families.proxy_header_failures.clone(),
        );
        registry.register(
            "transport_connections_open",
            "Open client connections by transport (tcp, tls, ws, wss)",
            self.families.transport_open.clone(),
        );
        registry.register(
            "transport_connections_accepted",
            "Client connections served (handshakes done) by transport (tcp, tls, ws, wss)",
            self.families.transport_accepted.clone(),
        );
        registry.register(
            "websocket_handshake_failures",
            "WebSocket upgrades refused or not finished, by cause",
            self.families.ws_handshake_failures.clone(),
        );
        registry.register(
            "websocket_protocol_closes",
            "WebSocket connections closed for breaking the frame protocol, by close code",
            self.families.ws_violations.clone(),
        );
        registry.register("logins", "Logins by result", self.families.logins.clone());
        registry.register(
            "commands",
            "Client messages by command type",
            self.families.commands.clone(),
        );
        registry.register(
            "events_published",
            "Events accepted for delivery",
            self.events_published.clone(),
        );
        registry.register(
            "events_delivered",
            "Event messages handed to connections",
            self.events_delivered.clone(),
        );
        registry.register(
            "invalidations",
            "Connections sent `invalidated`, by cause",
            self.families.invalidations.clone(),
        );
        registry.register(
            "timeouts",
            "Connections closed by the idle timeout",
            self.timeouts.clone(),
        );
        registry.register(
            "io_errors",
            "Connections closed with io_error, by cause",
            self.families.io_errors.clone(),
        );
        registry.register(
            "password_check_queue_depth",
            "Password checks and admin password hashes waiting for a bcrypt thread",
            self.password_queue_depth.clone(),
        );
        registry.register(
            "password_check_seconds",
            "Time one bcrypt password check took",
            self.password_check_seconds.clone(),
        );
        registry.register(
            "password_checks_dropped",
            "Password checks and admin password hashes dropped unrun because their \
             connection or admin request had gone",
            self.password_checks_dropped.clone(),
        );
        registry.register(
            "password_checks_saved",
            "Logins admitted by a kept verifier (auth.verifier_key_file) without a bcrypt check",
            self.password_checks_saved.clone(),
        );
        registry.register(
            "event_delivery_seconds",
            "Time from an event accepted by the bus to its bytes written to a connection's \
             socket, per worker",
            self.families.event_delivery_seconds.clone(),
        );
        registry.register(
            "actor_restarts",
            "Hub actors (registry shards, the bus) that stopped or panicked and were \
             replaced by a fresh one",
            self.families.restarts.clone(),
        );
        registry.register(
            "registry_bindings",
            "Bindings each worker's registry shard holds: below the worker's bound \
             connections while a replaced shard is refilled by its connections",
            self.families.registry_bindings.clone(),
        );
    }

    /// The delivery histogram of each of `workers` workers, created now so that every
    /// worker shows in `/metrics` from the start.
    pub(crate) fn event_delivery_seconds(&self, workers: usize) -> Box<[Histogram]> {
        (0..workers)
            .map(|worker| {
                self.families
                    .event_delivery_seconds
                    .get_or_create_owned(&vec![("worker", worker.to_string())])
            })
            .collect()
    }

    /// The gauge of the bindings registry shard `worker` holds.
    pub(crate) fn registry_bindings(&self, worker: usize) -> Gauge {
        self.families
            .registry_bindings
            .get_or_create_owned(&vec![("worker", worker.to_string())])
    }

    /// Counts a restart of `actor`.
    pub(crate) fn restarted(&self, actor: HubActor) {
        self.restarts[actor as usize].inc();
    }

    pub(crate) fn login(&self, result: LoginResult) {
        self.logins[result as usize].inc();
    }

    pub(crate) fn invalidated(&self, cause: InvalidationCause, connections: usize) {
        self.invalidations[cause as usize].inc_by(connections as u64);
    }

    pub(crate) fn io_error(&self, cause: IoErrorCause) {
        self.io_errors[cause as usize].inc();
    }

    pub(crate) fn tls_handshake_failed(&self, cause: HandshakeFailure) {
        self.tls_handshake_failures[cause as usize].inc();
    }

    pub(crate) fn proxy_header_failed(&self, cause: ProxyHeaderFailure) {
        self.proxy_header_failures[cause as usize].inc();
    }

    /// Counts a connection over `transport` served from now, open until
    /// [`Self::transport_closed`].
    pub(crate) fn transport_opened(&self, transport: TransportKind) {
        self.transport_accepted[transport as usize].inc();
        self.transport_open[transport as usize].inc();
    }

    /// Counts a connection over `transport` closed.
    pub(crate) fn transport_closed(&self, transport: TransportKind) {
        self.transport_open[transport as usize].dec();
    }

    pub(crate) fn ws_handshake_failed(&self, cause: WsHandshakeFailure) {
        self.ws_handshake_failures[cause as usize].inc();
    }

    pub(crate) fn ws_violation(&self, code: WsViolationCode) {
        self.ws_violations[code as usize].inc();
    }
}

/// Commands counted on the stack and added to the shared counters in one go, so a
/// pipelined burst costs one atomic add per command type rather than one per command.
#[derive(Debug, Default)]
pub(crate) struct CommandTally([u64; 7]);

impl CommandTally {
    /// Counts one command.
    pub(crate) fn count(&mut self, kind: CommandKind) {
        self.0[kind as usize] += 1;
    }

    /// Adds the counts to `metrics`.
    pub(crate) fn add_to(&self, metrics: &Metrics) {
        for (counter, &count) in metrics.commands.iter().zip(&self.0) {
            if count > 0 {
                counter.inc_by(count);
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn each_label_enum_lists_its_values_in_declaration_order() {
        let orders: [Vec<usize>; 7] = [
            LoginResult::ALL.iter().map(|v| *v as usize).collect(),
            CommandKind::ALL.iter().map(|v| *v as usize).collect(),
            IoErrorCause::ALL.iter().map(|v| *v as usize).collect(),
            InvalidationCause::ALL.iter().map(|v| *v as usize).collect(),
            HandshakeFailure::ALL.iter().map(|v| *v as usize).collect(),
            HubActor::ALL.iter().map(|v| *v as usize).collect(),
            ProxyHeaderFailure::ALL
                .iter()
                .map(|v| *v as usize)
                .collect(),
        ];
        for order in orders {
            assert!(order.iter().copied().eq(0..order.len()), "{order:?}");
        }
        assert_eq!(CommandKind::ALL.len(), CommandTally::default().0.len());
    }

    #[test]
    fn registered_metrics_show_their_families_and_counts() {
        let metrics = Metrics::new();
        let mut registry = Registry::with_prefix("tether");
        metrics.register(&mut registry);
        metrics.login(LoginResult::Throttled);
        let mut tally = CommandTally::default();
        tally.count(CommandKind::InvalidArgsCount);
        tally.count(CommandKind::InvalidArgsCount);
        tally.add_to(&metrics);
        metrics.io_error(IoErrorCause::SlowReader);
        metrics.invalidated(InvalidationCause::Operator, 3);
        metrics.tls_handshake_failed(HandshakeFailure::Alert);
        metrics.restarted(HubActor::Bus);
        metrics.registry_bindings(1).set(2);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        for line in [
            "tether_logins_total{result=\"throttled\"} 1",
            "tether_logins_total{result=\"valid\"} 0",
            "tether_commands_total{type=\"invalid_args_count\"} 2",
            "tether_io_errors_total{cause=\"slow_reader\"} 1",
            "tether_invalidations_total{cause=\"operator\"} 3",
            "tether_connections_open 0",
            "tether_tls_handshake_failures_total{cause=\"alert\"} 1",
            "tether_tls_handshake_failures_total{cause=\"timeout\"} 0",
            "tether_tls_handshakes_pending 0",
            "tether_actor_restarts_total{actor=\"bus\"} 1",
            "tether_actor_restarts_total{actor=\"registry\"} 0",
            "tether_registry_bindings{worker=\"1\"} 2",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
