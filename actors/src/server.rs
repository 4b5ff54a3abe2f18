//! [`Tether`]: the protocol server started inside a running actix System — the accept loop,
//! the connection cap, the worker arbiters, the hub, and graceful shutdown — and
//! [`TetherHandle`], through which the host publishes events and invalidates users.

use crate::auth::password::{stand_in_hash, PasswordChecker};
use crate::auth::throttle::LoginThrottle;
use crate::auth::user_store::UserStore;
use crate::connection::tls_handshake::{
    tls_handshake, HandshakeThreads, PendingHandshake, TLS_HANDSHAKE_TIMEOUT,
};
use crate::connection::websocket::WsStream;
use crate::connection::ws_handshake::{self, WebSocketPolicy, WS_HANDSHAKE_TIMEOUT};
use crate::connection::{
    ClientCertificateRevoked, ClientStream, ConnectionActor, ConnectionShared,
};
use crate::hub::broker::{Broker, Inbox};
use crate::hub::bus::{BusLimits, EventBusActor};
use crate::hub::messages::{
    BindingId, Drain, Invalidate, InvalidationCause, Publish, PublishBatch, PublishError,
    PublishReceipt, RemoteEvent, RemoteInvalidate,
};
use crate::hub::presence::Presence;
use crate::hub::roster::Roster;
use crate::hub::state::HubState;
use crate::hub::supervisor::{BeginShutdown, HubSupervisor};
use crate::protocol::proxy_header::{self, ProxyTrust};
use crate::util::clock::EventClock;
use crate::util::failure_log::FailureLog;
use crate::util::metrics::{HandshakeFailure, Metrics, ProxyHeaderFailure, WsHandshakeFailure};
use crate::util::output_budget::OutputBudget;
use crate::util::priority::BACKGROUND_NICENESS;
use actix::prelude::*;
use actix_rt::{Arbiter, ArbiterHandle};
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

/// Connections the kernel may hold completed but not yet accepted (it caps this at
/// `net.core.somaxconn`); the standard library listens with 128.
const LISTEN_BACKLOG: i32 = 4096;
/// First pause after a failed `accept` (such as running out of file descriptors).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause after repeated `accept` failures.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often a refusal at the connection cap is logged at most.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Room in an event message for everything but its text: `event`, the time, separators.
const EVENT_OVERHEAD: usize = 64;
/// How long a handle waits for the supervisor to replace a failed bus or registry.
const RESTART_WAIT: Duration = Duration::from_secs(1);
/// The least `SO_SNDBUF` asked for a connection, whatever `max_pending_bytes`: Linux
/// doubles it, and 128 KiB in flight keeps a reader on a fast link at full speed.
const MIN_SEND_BUFFER: usize = 64 * 1024;
/// How long a trusted load balancer has to send the PROXY protocol header (SPEC §10).
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the server needs to know, already checked (see the application's config).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Inactivity after which a connection gets `timeout` and is closed.
    pub idle_timeout: Duration,
    /// Longest message accepted from a client, terminator excluded.
    pub max_message_bytes: usize,
    /// Unsent output allowed per connection before `io_error`.
    pub max_pending_bytes: usize,
    /// Unsent output allowed for all connections together, not counting the first 64 KiB
    /// of each; a connection that needs more while it is spent gets `io_error`.
    pub max_pending_total: usize,
    /// Connections beyond this are closed at accept.
    pub max_connections: u32,
    /// How long shutdown waits for connections to flush and close.
    pub shutdown_grace: Duration,
    /// Event-loop threads for connections (at least 1).
    pub workers: usize,
    /// Threads running bcrypt (at least 1).
    pub password_threads: usize,
    /// Failed logins per client address and name per minute before refusal; 0 = no limit.
    pub login_failures_per_minute: u32,
    /// Cost of the stand-in hash checked for unknown users when the user store has none.
    pub bcrypt_cost: u32,
    /// The zone whose wall-clock time events carry.
    pub time_zone: jiff::tz::TimeZone,
    /// Admission without bcrypt for a login a kept verifier vouches for (SPEC §5,
    /// `auth.verifier_key_file`); `None`: every login pays bcrypt and nothing is kept.
    pub verifiers: Option<crate::auth::verifiers::Verifiers>,
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The listener or a thread could not be set up.
    Io(std::io::Error),
    /// The stand-in hash could not be made (an invalid bcrypt cost).
    Hash(bcrypt::BcryptError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(err) => write!(f, "cannot start the server: {err}"),
            Self::Hash(err) => write!(f, "cannot prepare password checks: {err}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<std::io::Error> for StartError {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err)
    }
}

/// The listeners a server accepts clients on: plain TCP, TLS, WebSocket, any of them.
pub struct Listeners {
    /// The plaintext listener (`server.listen`).
    pub plain: Option<std::net::TcpListener>,
    /// The TLS listener (`server.tls.listen`) and the configuration its handshakes use.
    pub tls: Option<(std::net::TcpListener, TlsConfigSlot)>,
    /// The WebSocket listener (`server.websocket.listen`, SPEC §11).
    pub websocket: Option<WebSocketListener>,
    /// Peers whose connections, on any listener, begin with a PROXY protocol header
    /// (`proxy_protocol_from`).
    pub proxy_trust: ProxyTrust,
}

/// The WebSocket listener (SPEC §11): the same protocol in WebSocket frames, for browsers.
pub struct WebSocketListener {
    /// The bound listener.
    pub listener: std::net::TcpListener,
    /// Its path, the origins it allows, the proxies whose `X-Forwarded-For` it believes.
    pub policy: WebSocketPolicy,
    /// For `wss://`: the TLS configuration its handshakes use (the TLS listener's slot,
    /// so reloads reach both).
    pub tls: Option<TlsConfigSlot>,
}

/// The TLS configuration new handshakes use, replaceable while the server runs (a
/// certificate reload): connections already open keep the one they started with — but
/// when the client CA changes, those whose client certificate the new one does not accept
/// are closed (see [`TlsConfigSlot::replace_checking_clients`]).
#[derive(Clone)]
pub struct TlsConfigSlot(Arc<RwLock<Arc<rustls::ServerConfig>>>, Arc<TlsClients>);

impl TlsConfigSlot {
    /// A slot holding `config`.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self(Arc::new(RwLock::new(config)), Arc::default())
    }

    /// Puts `config` in force for the handshakes that begin from now on.
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = config;
    }

    /// Puts `config` in force, then checks the client certificate of every open TLS
    /// connection with `clients` (the new configuration's client verifier, `None` when it
    /// asks for no client certificate): a connection it refuses — signed by a CA no longer
    /// trusted, or with no certificate — gets `io_error` and is closed (issue 23: a CA
    /// rotation left the old CA's sessions open for good). Answers how many were closed.
    pub fn replace_checking_clients(
        &self,
        config: Arc<rustls::ServerConfig>,
        clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> usize {
        self.replace(config);
        match clients {
            Some(verifier) => self.1.revoke_refused(verifier.as_ref()),
            None => 0,
        }
    }

    /// The configuration in force.
    fn current(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The open TLS connections and the client certificates they presented.
#[derive(Default)]
pub(crate) struct TlsClients(std::sync::Mutex<TlsClientList>);

#[derive(Default)]
struct TlsClientList {
    /// Every TLS connection registered and not yet found closed.
    open: Vec<TlsClient>,
    /// Size past which closed connections are swept out (amortized O(1) per insert).
    sweep_at: usize,
}

/// One open TLS connection.
struct TlsClient {
    /// The certificate chain the client presented (empty: none).
    certificates: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Its actor; gone once the connection closed.
    connection: actix::WeakRecipient<ClientCertificateRevoked>,
}

impl TlsClients {
    fn lock(&self) -> std::sync::MutexGuard<'_, TlsClientList> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers an open connection and its client's certificates.
    fn register(
        &self,
        certificates: Vec<rustls::pki_types::CertificateDer<'static>>,
        connection: actix::WeakRecipient<ClientCertificateRevoked>,
    ) {
        let mut list = self.lock();
        if list.open.len() >= list.sweep_at {
            list.open
                .retain(|client| client.connection.upgrade().is_some());
            list.sweep_at = (list.open.len() * 2).max(1024);
        }
        list.open.push(TlsClient {
            certificates,
            connection,
        });
    }

    /// Closes the connections whose certificates `verifier` refuses now.
    fn revoke_refused(&self, verifier: &dyn rustls::server::danger::ClientCertVerifier) -> usize {
        let now = rustls::pki_types::UnixTime::now();
        let mut revoked = 0;
        let mut list = self.lock();
        list.open.retain(|client| {
            let Some(connection) = client.connection.upgrade() else {
                return false;
            };
            let accepted = match client.certificates.split_first() {
                Some((end_entity, intermediates)) => verifier
                    .verify_client_cert(end_entity, intermediates, now)
                    .is_ok(),
                None => !verifier.client_auth_mandatory(),
            };
            if accepted {
                return true;
            }
            connection.do_send(ClientCertificateRevoked);
            revoked += 1;
            false
        });
        revoked
    }
}

/// A running protocol server.
pub struct Tether {
    /// Where clients connect: the plaintext listener's address, else the TLS listener's.
    local_addr: SocketAddr,
    /// Where TLS clients connect, when there is a TLS listener.
    tls_local_addr: Option<SocketAddr>,
    /// Where WebSocket clients connect, when there is a WebSocket listener.
    ws_local_addr: Option<SocketAddr>,
    /// The hub's state, for handles.
    hub: watch::Receiver<HubState>,
    /// Restarts the registry and the bus; starts the shutdown broadcast.
    supervisor: Addr<HubSupervisor>,
    /// The accept loops, one per listener, and the TLS listener's failure summaries;
    /// aborting them stops accepting.
    accept: Vec<JoinHandle<()>>,
    /// One permit per open connection, `max_connections` in all.
    permits: Arc<Semaphore>,
    /// The number of permits.
    max_connections: u32,
    /// How long shutdown waits for connections.
    shutdown_grace: Duration,
    /// The worker and hub threads, stopped at the end of shutdown.
    arbiters: Vec<Arbiter>,
    /// The TLS handshake threads, when there is a TLS listener; stopped with the others.
    handshake_threads: Option<HandshakeThreads>,
    /// What the server counts.
    metrics: Metrics,
    /// Which shards hold connections of which user.
    presence: Arc<Presence>,
    /// In a cluster, the broker to the other nodes.
    broker: Option<Arc<dyn Broker>>,
    /// The bcrypt threads, for handles that make new hashes.
    passwords: PasswordChecker,
}

impl Tether {
    /// Starts serving `listener` (plain TCP) in the current actix System.
    ///
    /// Makes the stand-in hash of the configured cost first (about a millisecond; see
    /// [`stand_in_hash`]).
    pub fn start(
        listener: std::net::TcpListener,
        settings: Settings,
        users: Arc<dyn UserStore>,
    ) -> Result<Self, StartError> {
        let listeners = Listeners {
            plain: Some(listener),
            tls: None,
            websocket: None,
            proxy_trust: ProxyTrust::default(),
        };
        Self::start_listeners(listeners, settings, users)
    }

    /// Starts serving `listeners` in the current actix System; both kinds share the
    /// connection cap and everything else. At least one listener must be given.
    pub fn start_listeners(
        listeners: Listeners,
        settings: Settings,
        users: Arc<dyn UserStore>,
    ) -> Result<Self, StartError> {
        Self::start_clustered(listeners, settings, users, None)
    }

    /// Starts serving `listeners` as [`Self::start_listeners`] does, as one node of a
    /// cluster when a `broker` is given (SPEC §8): events and invalidations then go through
    /// it, and it hands in what the other nodes publish.
    pub fn start_clustered(
        listeners: Listeners,
        settings: Settings,
        users: Arc<dyn UserStore>,
        broker: Option<Arc<dyn Broker>>,
    ) -> Result<Self, StartError> {
        let proxy_trust = Arc::new(listeners.proxy_trust);
        let plain = listeners.plain.map(prepare_listener).transpose()?;
        let tls = match listeners.tls {
            Some((listener, config)) => Some((prepare_listener(listener)?, config)),
            None => None,
        };
        let tls_local_addr = tls.as_ref().map(|((_, address), _)| *address);
        let websocket = match listeners.websocket {
            Some(ws) => Some((prepare_listener(ws.listener)?, ws.policy, ws.tls)),
            None => None,
        };
        let ws_local_addr = websocket.as_ref().map(|((_, address), _, _)| *address);
        // The plaintext listener's accept loop runs here, on the System's event loop.
        let plain = plain
            .map(|(listener, address)| {
                tokio::net::TcpListener::from_std(listener).map(|listener| (listener, address))
            })
            .transpose()?;
        let first = plain
            .as_ref()
            .map(|(_, address)| *address)
            .or(tls_local_addr)
            .or(ws_local_addr);
        let local_addr = match first {
            Some(address) => address,
            None => {
                return Err(StartError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "no listener to serve",
                )))
            }
        };

        let metrics = Metrics::new();
        let workers: Vec<Arbiter> = (0..settings.workers.max(1))
            .map(|_| Arbiter::new())
            .collect();
        let hub_arbiter = Arbiter::new();
        let presence = Arc::new(Presence::with_broker(workers.len(), broker.clone()));
        let roster = Arc::new(Roster::new(workers.len()));
        let (supervisor, hub) = HubSupervisor::launch(
            hub_arbiter.handle(),
            workers.iter().map(Arbiter::handle).collect(),
            BusLimits {
                clock: EventClock::new(settings.time_zone.clone()),
                max_text_bytes: settings.max_pending_bytes.saturating_sub(EVENT_OVERHEAD),
                metrics: metrics.clone(),
                presence: Arc::clone(&presence),
                broker: broker.clone(),
                recent_ids: Arc::default(),
            },
            Arc::clone(&roster) as Arc<dyn crate::hub::roster::HubListeners>,
        );
        if let Some(broker) = &broker {
            broker.attach(Arc::new(NodeInbox { hub: hub.clone() }));
        }
        let passwords = PasswordChecker::start_with_verifiers(
            settings.password_threads,
            metrics.clone(),
            settings.verifiers.clone(),
        )?;
        let shared = Arc::new(ConnectionShared {
            idle_timeout: settings.idle_timeout,
            max_message_bytes: settings.max_message_bytes,
            max_pending_bytes: settings.max_pending_bytes,
            output_budget: OutputBudget::new(settings.max_pending_total),
            users,
            checker: passwords.clone(),
            throttle: Arc::new(LoginThrottle::new(settings.login_failures_per_minute)),
            cluster_throttle: crate::connection::cluster_throttle::ClusterThrottle::new(
                broker.clone(),
                settings.login_failures_per_minute,
            ),
            stand_in_hash: stand_in_hash(settings.bcrypt_cost).map_err(StartError::Hash)?,
            metrics: metrics.clone(),
            presence: Arc::clone(&presence),
            roster,
            delivery_seconds: metrics.event_delivery_seconds(workers.len()),
        });
        let permits = Arc::new(Semaphore::new(settings.max_connections as usize));
        let handshake_failures = Arc::new(FailureLog::new(
            "TLS handshake failed",
            "TLS handshake(s) failed",
        ));
        let header_failures = Arc::new(FailureLog::new(
            "closed: no valid PROXY protocol header",
            "connection(s) closed without a valid PROXY protocol header",
        ));
        let ws_failures = Arc::new(FailureLog::new(
            "WebSocket handshake failed",
            "WebSocket handshake(s) failed",
        ));
        let mut summaries: Vec<JoinHandle<()>> = Vec::new();
        let mut handshake_threads = None;
        let mut handshake_handle = None;
        let mut tls_loop = None;
        let wss = websocket.as_ref().is_some_and(|(_, _, tls)| tls.is_some());
        if tls.is_some() || wss {
            summaries.push(actix_rt::spawn(Arc::clone(&handshake_failures).summarise()));
            // As many as there are workers: on an idle machine handshakes go as fast as
            // they did on the workers themselves.
            let (threads, handle) = HandshakeThreads::start(workers.len())?;
            log::info!(
                "TLS handshakes: {} thread(s) (nice {BACKGROUND_NICENESS})",
                workers.len()
            );
            handshake_threads = Some(threads);
            handshake_handle = Some(handle);
        }
        // A TLS listener is registered with the handshake threads' event loop and accepted
        // on there: a new TLS connection touches a worker only once its handshake is done.
        let on_handshake_threads = |listener, config, handle: &tokio::runtime::Handle| {
            let _on_handshake_threads = handle.enter();
            let tls = TlsAccept {
                config,
                failures: Arc::clone(&handshake_failures),
            };
            tokio::net::TcpListener::from_std(listener).map(|listener| (listener, tls))
        };
        if let (Some(((listener, _), config)), Some(handle)) = (tls, handshake_handle.clone()) {
            let (listener, tls) = on_handshake_threads(listener, config, &handle)?;
            tls_loop = Some((listener, Serve::Tls(tls), Some(handle)));
        }
        let mut ws_loop = None;
        if let Some(((listener, _), policy, tls)) = websocket {
            summaries.push(actix_rt::spawn(Arc::clone(&ws_failures).summarise()));
            let policy = Arc::new(policy);
            let failures = Arc::clone(&ws_failures);
            ws_loop = Some(match (tls, handshake_handle) {
                // wss: accepted, and its TLS handshake and upgrade done, on the handshake
                // threads, as the TLS listener's connections are.
                (Some(config), Some(handle)) => {
                    let (listener, tls) = on_handshake_threads(listener, config, &handle)?;
                    let serve = Serve::Ws(WsAccept { policy, failures }, Some(tls));
                    (listener, serve, Some(handle))
                }
                _ => (
                    tokio::net::TcpListener::from_std(listener)?,
                    Serve::Ws(WsAccept { policy, failures }, None),
                    None,
                ),
            });
        }
        if proxy_trust.trusts_any() {
            summaries.push(actix_rt::spawn(Arc::clone(&header_failures).summarise()));
        }
        let loops = plain
            .map(|(listener, _)| (listener, Serve::Plain, None))
            .into_iter()
            .chain(tls_loop)
            .chain(ws_loop);
        let mut accept: Vec<JoinHandle<()>> = loops
            .map(|(listener, serve, threads)| {
                let accepting = accept_loop(
                    listener,
                    serve,
                    (Arc::clone(&proxy_trust), Arc::clone(&header_failures)),
                    workers.iter().map(Arbiter::handle).collect(),
                    Arc::clone(&permits),
                    Arc::clone(&shared),
                    hub.clone(),
                );
                match threads {
                    Some(threads) => threads.spawn(accepting),
                    None => actix_rt::spawn(accepting),
                }
            })
            .collect();
        accept.extend(summaries);
        let mut arbiters = workers;
        arbiters.push(hub_arbiter);
        Ok(Self {
            local_addr,
            tls_local_addr,
            ws_local_addr,
            hub,
            supervisor,
            accept,
            permits,
            max_connections: settings.max_connections,
            shutdown_grace: settings.shutdown_grace,
            arbiters,
            handshake_threads,
            metrics,
            presence,
            broker,
            passwords,
        })
    }

    /// What the server counts; register it with a Prometheus registry to expose it.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where TLS clients connect, when the server has a TLS listener.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_local_addr
    }

    /// Where WebSocket clients connect, when the server has a WebSocket listener.
    pub fn ws_local_addr(&self) -> Option<SocketAddr> {
        self.ws_local_addr
    }

    /// A handle for publishing events and invalidating users.
    pub fn handle(&self) -> TetherHandle {
        TetherHandle {
            hub: self.hub.clone(),
            presence: Arc::clone(&self.presence),
            broker: self.broker.clone(),
            passwords: self.passwords.clone(),
        }
    }

    /// Stops accepting, sends `shutdown` to every connection and waits up to the grace
    /// period for them to flush and close; then stops the server's threads.
    pub async fn shutdown(self) {
        for accept in &self.accept {
            accept.abort();
        }
        let open = self.max_connections as usize - self.permits.available_permits();
        log::info!("shutting down: closing {open} connection(s)");
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        self.drain_events(deadline).await;
        if self.supervisor.send(BeginShutdown).await.is_err() {
            log::error!("the hub supervisor is gone; connections are dropped without notice");
        }
        let drained =
            tokio::time::timeout_at(deadline, self.permits.acquire_many(self.max_connections))
                .await;
        if drained.is_err() {
            let left = self.max_connections as usize - self.permits.available_permits();
            log::warn!("shutdown grace ran out with {left} connection(s) still flushing");
        }
        if let Some(broker) = &self.broker {
            broker.stop();
        }
        for arbiter in self.arbiters {
            arbiter.stop();
        }
        drop(self.handshake_threads);
    }

    /// Waits (until `deadline` at most) for every event acknowledged so far to be queued
    /// in its connections' mailboxes, so that the `shutdown` they queue next follows it.
    async fn drain_events(&self, deadline: tokio::time::Instant) {
        let bus = self.hub.borrow().bus.clone();
        match tokio::time::timeout_at(deadline, bus.send(Drain)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => log::warn!(
                "the event bus was restarting at shutdown: events acknowledged just before may be lost"
            ),
            Err(_) => log::warn!("shutdown grace ran out while events were still being handed on"),
        }
    }
}

/// What the TLS listener's accept loop needs for its handshakes.
struct TlsAccept {
    /// The configuration new handshakes use.
    config: TlsConfigSlot,
    /// Where failed handshakes are told.
    failures: Arc<FailureLog<HandshakeFailure>>,
}

/// What the WebSocket listener's accept loop needs for its upgrades.
struct WsAccept {
    /// What it accepts.
    policy: Arc<WebSocketPolicy>,
    /// Where failed upgrades are told.
    failures: Arc<FailureLog<WsHandshakeFailure>>,
}

/// What a WebSocket connection's upgrade needs: the policy, and where failures are told.
type WsUpgrade = (Arc<WebSocketPolicy>, Arc<FailureLog<WsHandshakeFailure>>);

/// How a listener's connections are served.
enum Serve {
    /// The protocol straight on TCP.
    Plain,
    /// Inside TLS.
    Tls(TlsAccept),
    /// In WebSocket frames, inside TLS (`wss`) when given.
    Ws(WsAccept, Option<TlsAccept>),
}

/// Accepts connections and hands each to a worker arbiter, round-robin. The TLS and `wss`
/// listeners' loops run on the handshake threads: each connection's PROXY header and
/// handshakes run there too (a task of its own), and only an established connection moves
/// to its worker.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    serve: Serve,
    (proxy_trust, header_failures): (Arc<ProxyTrust>, Arc<FailureLog<ProxyHeaderFailure>>),
    workers: Vec<ArbiterHandle>,
    permits: Arc<Semaphore>,
    shared: Arc<ConnectionShared>,
    hub: watch::Receiver<HubState>,
) {
    let mut next_worker = 0;
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failures_in_a_row: u64 = 0;
    let mut last_refusal_log: Option<Instant> = None;
    let send_buffer = send_buffer_size(shared.max_pending_bytes);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                if failures_in_a_row > 0 {
                    log::info!("accepting again after {failures_in_a_row} failed attempt(s)");
                }
                backoff = ACCEPT_BACKOFF_MIN;
                failures_in_a_row = 0;
                accepted
            }
            Err(err) if is_per_connection(&err) => {
                // That one connection is gone; the next may be fine.
                log::debug!("accept failed for one connection: {err}");
                continue;
            }
            Err(err) => {
                // Out of descriptors or memory: the pending connection stays queued and
                // the listener stays ready, so retrying at once would spin.
                log::warn!("accept failed: {err}; pausing {backoff:?}");
                failures_in_a_row += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            shared.metrics.connections_refused.inc();
            if last_refusal_log.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL) {
                log::warn!("{peer}: refused: max_connections reached");
                last_refusal_log = Some(Instant::now());
            }
            continue;
        };
        if let Err(err) = stream.set_nodelay(true) {
            log::debug!("{peer}: cannot disable Nagle's algorithm: {err}");
        }
        if let Err(err) = socket2::SockRef::from(&stream).set_send_buffer_size(send_buffer) {
            log::debug!("{peer}: cannot bound the kernel's send buffer: {err}");
        }
        let shard = next_worker % workers.len();
        let worker = workers[shard].clone();
        next_worker = next_worker.wrapping_add(1);
        let proxied = proxy_trust
            .trusts(peer.ip())
            .then(|| Arc::clone(&header_failures));
        let connection = Accepted {
            peer,
            proxied,
            shard,
            permit,
            shared: Arc::clone(&shared),
            hub: hub.clone(),
        };
        let (tls, ws) = match &serve {
            Serve::Plain => (None, None),
            Serve::Tls(tls) => (Some(tls), None),
            Serve::Ws(ws, tls) => (tls.as_ref(), Some(ws)),
        };
        let ws = ws.map(|ws| (Arc::clone(&ws.policy), Arc::clone(&ws.failures)));
        let Some(tls) = tls else {
            // A socket is bound to the event loop that registered it: move it as a plain
            // socket and register it on its worker's.
            match stream.into_std() {
                Ok(stream) => {
                    worker.spawn(connection.serve_plain(stream, ws));
                }
                Err(err) => log::warn!("{peer}: cannot hand over the connection: {err}"),
            }
            continue;
        };
        // The TLS configuration in force at accept is the one this handshake uses. It runs
        // here, on the handshake threads, where the socket is registered already.
        let handshake = connection.serve_tls(
            stream,
            tls.config.current(),
            (Arc::clone(&tls.failures), Arc::clone(&tls.config.1)),
            worker,
            ws,
        );
        drop(tokio::spawn(handshake));
    }
}

/// Runs the WebSocket upgrade on `stream` from `client` until `deadline` (or shutdown):
/// `None` when it fails (counted, told to `failures`), is refused, or shutdown begins.
async fn upgrade_within<S>(
    stream: &mut S,
    client: SocketAddr,
    (policy, failures): &WsUpgrade,
    deadline: tokio::time::Instant,
    mut hub: watch::Receiver<HubState>,
    metrics: &Metrics,
) -> Option<ws_handshake::Upgraded>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let upgrade = tokio::time::timeout_at(deadline, ws_handshake::upgrade(stream, client, policy));
    let shutdown = hub.wait_for(|state| state.shutting_down);
    let refused = tokio::select! {
        done = upgrade => match done {
            Ok(Ok(upgraded)) => return Some(upgraded),
            Ok(Err(refused)) => refused,
            Err(_) => ws_handshake::Refused {
                cause: WsHandshakeFailure::Timeout,
                why: format!("not done within {WS_HANDSHAKE_TIMEOUT:?}"),
            },
        },
        _ = shutdown => return None,
    };
    metrics.ws_handshake_failed(refused.cause);
    failures.failed(refused.cause, client, refused.why);
    None
}

/// The WebSocket stream of an upgraded connection over `inner`.
fn websocket(inner: ClientStream, early: &[u8], shared: &ConnectionShared) -> ClientStream {
    // A frame may hold the longest message and its terminator.
    let max_payload = shared.max_message_bytes.saturating_add(1);
    ClientStream::Ws(Box::new(WsStream::new(inner, early, max_payload)))
}

/// A connection just accepted (but for its socket), with everything it needs to be served.
struct Accepted {
    /// Its peer's address.
    peer: SocketAddr,
    /// Where a missing or malformed PROXY protocol header is told, if its peer is trusted
    /// to send one (it must).
    proxied: Option<Arc<FailureLog<ProxyHeaderFailure>>>,
    /// The worker it is served on.
    shard: usize,
    /// Its place among `max_connections`.
    permit: OwnedSemaphorePermit,
    /// What every connection shares.
    shared: Arc<ConnectionShared>,
    /// The hub's state, for shutdown.
    hub: watch::Receiver<HubState>,
}

impl Accepted {
    /// Serves a plaintext connection (a WebSocket one when `ws` is given: its upgrade
    /// first); runs on its worker.
    async fn serve_plain(self, stream: std::net::TcpStream, ws: Option<WsUpgrade>) {
        let accepted = tokio::time::Instant::now();
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(err) => {
                log::warn!("{}: cannot register the connection: {err}", self.peer);
                return;
            }
        };
        let Some((mut stream, mut peer)) = self.addressed(stream).await else {
            return;
        };
        let mut upgraded = None;
        if let Some(ws) = &ws {
            let began = self.began(accepted);
            let deadline = began + WS_HANDSHAKE_TIMEOUT;
            let metrics = &self.shared.metrics;
            let hub = self.hub.clone();
            let Some(done) = upgrade_within(&mut stream, peer, ws, deadline, hub, metrics).await
            else {
                return;
            };
            peer = done.client;
            upgraded = Some(done.early);
        }
        let stream = match upgraded {
            Some(early) => websocket(ClientStream::Plain(stream), &early, &self.shared),
            None => ClientStream::Plain(stream),
        };
        let (shared, shard, permit) = (self.shared, self.shard, self.permit);
        let hub = self.hub;
        ConnectionActor::create(|ctx| {
            ConnectionActor::new(stream, peer, shared, &hub, shard, permit, ctx)
        });
    }

    /// When the client could begin its handshakes: at `accepted`, or at the end of the
    /// PROXY header that comes first.
    fn began(&self, accepted: tokio::time::Instant) -> tokio::time::Instant {
        if self.proxied.is_some() {
            tokio::time::Instant::now()
        } else {
            accepted
        }
    }

    /// Serves a TLS connection accepted on the handshake threads (`stream` is registered
    /// there), to be spawned there: see [`Self::handshake_then_hand_over`]. It counts as
    /// pending, and its handshake time runs, from now (its accept), not from when busy
    /// handshake threads get to it.
    fn serve_tls(
        self,
        stream: tokio::net::TcpStream,
        config: Arc<rustls::ServerConfig>,
        (failures, clients): (Arc<FailureLog<HandshakeFailure>>, Arc<TlsClients>),
        worker: ArbiterHandle,
        ws: Option<WsUpgrade>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let pending = PendingHandshake::new(&self.shared.metrics);
        let accepted = tokio::time::Instant::now();
        self.handshake_then_hand_over(
            stream,
            (config, failures, clients),
            worker,
            (pending, ws),
            accepted,
        )
    }

    /// Reads the PROXY protocol header, then runs the TLS handshake (on the handshake
    /// threads) and for `wss` the WebSocket upgrade, then hands the connection to `worker`.
    async fn handshake_then_hand_over(
        self,
        stream: tokio::net::TcpStream,
        (config, failures, clients): (
            Arc<rustls::ServerConfig>,
            Arc<FailureLog<HandshakeFailure>>,
            Arc<TlsClients>,
        ),
        worker: ArbiterHandle,
        (pending, ws): (PendingHandshake, Option<WsUpgrade>),
        accepted: tokio::time::Instant,
    ) {
        let Some((stream, mut peer)) = self.addressed(stream).await else {
            return;
        };
        // The handshake's time runs from when the client could begin it: from accept, or
        // from the end of the header that comes first.
        let began = self.began(accepted);
        let metrics = &self.shared.metrics;
        let deadline = began + TLS_HANDSHAKE_TIMEOUT;
        let Some(mut stream) = tls_handshake(
            stream,
            peer,
            config,
            deadline,
            self.hub.clone(),
            metrics,
            &failures,
        )
        .await
        else {
            return;
        };
        drop(pending);
        let mut early = None;
        if let Some(ws) = &ws {
            // The same deadline: TLS and the upgrade together within 10 s.
            let hub = self.hub.clone();
            let Some(upgraded) =
                upgrade_within(&mut stream, peer, ws, deadline, hub, metrics).await
            else {
                return;
            };
            peer = upgraded.client;
            early = Some(upgraded.early);
        }
        if let Err(err) = stream.get_mut().0.detach() {
            log::warn!("{peer}: cannot hand over the connection: {err}");
            return;
        }
        let (shared, shard, permit, hub) = (self.shared, self.shard, self.permit, self.hub);
        worker.spawn(async move {
            if let Err(err) = stream.get_mut().0.attach() {
                log::warn!("{peer}: cannot register the connection: {err}");
                return;
            }
            let certificates = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|chain| chain.iter().map(|cert| cert.clone().into_owned()).collect())
                .unwrap_or_default();
            let stream = ClientStream::Tls(Box::new(stream));
            let stream = match early {
                Some(early) => websocket(stream, &early, &shared),
                None => stream,
            };
            let connection = ConnectionActor::create(|ctx| {
                ConnectionActor::new(stream, peer, shared, &hub, shard, permit, ctx)
            });
            clients.register(certificates, connection.downgrade().recipient());
        });
    }

    /// Finds the client's address: the one the PROXY protocol header `stream` begins with
    /// carries when its peer is trusted to send one, else its peer's. `None` when the
    /// header fails (counted).
    async fn addressed(
        &self,
        mut stream: tokio::net::TcpStream,
    ) -> Option<(tokio::net::TcpStream, SocketAddr)> {
        let client = match &self.proxied {
            Some(failures) => {
                let metrics = &self.shared.metrics;
                client_address(&mut stream, self.peer, self.hub.clone(), metrics, failures).await?
            }
            None => self.peer,
        };
        Some((stream, client))
    }
}

/// The client's address from the PROXY protocol header `stream` from the load balancer
/// `peer` begins with (or `peer` itself for a header that carries none): `None` when the
/// header is missing, malformed or not complete within [`PROXY_HEADER_TIMEOUT`], or
/// shutdown begins first; the connection is then closed without a reply, the failure
/// counted by cause and told to `failures`.
async fn client_address(
    stream: &mut tokio::net::TcpStream,
    peer: SocketAddr,
    mut hub: watch::Receiver<HubState>,
    metrics: &Metrics,
    failures: &FailureLog<ProxyHeaderFailure>,
) -> Option<SocketAddr> {
    let header = tokio::time::timeout(PROXY_HEADER_TIMEOUT, proxy_header::read(stream));
    let shutdown = hub.wait_for(|state| state.shutting_down);
    let (cause, why) = tokio::select! {
        read = header => match read {
            Ok(Ok(carried)) => return Some(carried.unwrap_or(peer)),
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::InvalidData => {
                (ProxyHeaderFailure::Malformed, err.to_string())
            }
            Ok(Err(err)) => (ProxyHeaderFailure::Closed, err.to_string()),
            Err(_) => (
                ProxyHeaderFailure::Timeout,
                format!("not complete within {PROXY_HEADER_TIMEOUT:?}"),
            ),
        },
        _ = shutdown => return None,
    };
    metrics.proxy_header_failed(cause);
    failures.failed(cause, peer, why);
    None
}

/// Makes `listener` non-blocking with a deep accept queue, ready to be registered with the
/// event loop that accepts on it; answers it with its address.
fn prepare_listener(
    listener: std::net::TcpListener,
) -> std::io::Result<(std::net::TcpListener, SocketAddr)> {
    listener.set_nonblocking(true)?;
    // A burst of connections (clients reconnecting after a restart) must not overflow
    // the accept queue: a dropped SYN costs its client a one-second retry.
    socket2::SockRef::from(&listener).listen(LISTEN_BACKLOG)?;
    let address = listener.local_addr()?;
    Ok((listener, address))
}

/// `SO_SNDBUF` for an accepted connection: half of `max_pending_bytes` (at least
/// [`MIN_SEND_BUFFER`]), which Linux doubles for its bookkeeping. A client that does not
/// read then holds about `max_pending_bytes` of kernel memory besides as much in the
/// server, instead of the up to 4 MiB (`net.ipv4.tcp_wmem`'s maximum) that autotuning
/// grows an unbounded buffer to. The kernel caps the request at `net.core.wmem_max`.
fn send_buffer_size(max_pending_bytes: usize) -> usize {
    (max_pending_bytes / 2).max(MIN_SEND_BUFFER)
}

/// Whether an `accept` error concerns only the connection being accepted (it was reset or
/// refused before it was taken), rather than the server (EMFILE, ENFILE, ENOBUFS, ENOMEM).
fn is_per_connection(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::Interrupted
            | ErrorKind::PermissionDenied
    )
}

/// Publishes events and invalidates users from anywhere in the host program; cheap to
/// clone. Calls ride out a restart of the bus or the registry.
#[derive(Clone)]
pub struct TetherHandle {
    /// The hub's state: where the bus and the registry are now.
    hub: watch::Receiver<HubState>,
    /// Which shards hold connections of which user: the one count of this node's
    /// connections.
    presence: Arc<Presence>,
    /// In a cluster, the broker, which counts the other nodes' connections.
    broker: Option<Arc<dyn Broker>>,
    /// The bcrypt threads the logins use.
    passwords: PasswordChecker,
}

impl TetherHandle {
    /// The bounded, low-priority bcrypt threads the logins use: where a new password's
    /// hash is made, so that a burst of them never takes the cores from the event loops.
    pub fn passwords(&self) -> &PasswordChecker {
        &self.passwords
    }

    /// The event bus in force, for sending it [`Publish`] or [`Invalidate`] directly.
    pub fn bus(&self) -> Addr<EventBusActor> {
        self.hub.borrow().bus.clone()
    }

    /// Publishes `text` for `user`; see [`Publish`].
    pub async fn publish(
        &self,
        user: impl Into<String>,
        text: impl Into<String>,
    ) -> Result<PublishReceipt, PublishError> {
        self.ask_bus(Publish::new(user, text)).await
    }

    /// Publishes `event` (which may carry an id, see [`Publish::id`]); see [`Publish`].
    /// A retry of an event whose outcome is unknown
    /// ([`PublishError::OutcomeUnknown`]) is safe with the same id.
    pub async fn publish_event(&self, event: Publish) -> Result<PublishReceipt, PublishError> {
        self.ask_bus(event).await
    }

    /// Publishes several events in order; see [`PublishBatch`]. One invalid event fails
    /// the whole batch ([`PublishError::InBatch`] names it) and nothing is published.
    pub async fn publish_batch(
        &self,
        events: impl Into<Arc<[Publish]>>,
    ) -> Result<Vec<PublishReceipt>, PublishError> {
        let events = events.into();
        self.ask_bus(PublishBatch { events }).await
    }

    /// Invalidates every connection bound to `user`; answers how many there were. For a
    /// password change or a removal, the user's verifier is forgotten first.
    pub async fn invalidate(
        &self,
        user: impl Into<String>,
        cause: InvalidationCause,
    ) -> Result<usize, PublishError> {
        let user = user.into();
        if matches!(
            cause,
            InvalidationCause::PasswordChanged | InvalidationCause::UserRemoved
        ) {
            self.passwords.forget_verifier(&user);
        }
        let message = Invalidate {
            user,
            except: None,
            cause,
        };
        self.ask_bus(message).await
    }

    /// Makes the registry or the bus panic, to prove that supervision restores them.
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self, target: crate::hub::messages::FaultTarget) {
        use crate::hub::messages::{FaultTarget, InjectPanic};
        let hub = self.hub.borrow();
        match target {
            FaultTarget::Registry => {
                for registry in hub.shards.registries.iter() {
                    registry.do_send(InjectPanic);
                }
            }
            FaultTarget::Bus => hub.bus.do_send(InjectPanic),
        }
    }

    /// How many connections are bound to `user` on this node now: the count a publish for
    /// `user` would answer here, from the same place (the hub's `Presence`). It counts a
    /// connection from its `login_valid` until its binding ends, whatever happens to the
    /// registry meanwhile.
    pub fn connections(&self, user: &str) -> usize {
        self.presence.count(user)
    }

    /// How many connections are bound to `user` on every node: this node's (as
    /// [`Self::connections`]) and, in a cluster, those of the other live nodes, which the
    /// broker counts ([`PublishError::ClusterUnreachable`] while it cannot).
    pub async fn cluster_connections(&self, user: &str) -> Result<usize, PublishError> {
        let here = self.connections(user);
        let Some(broker) = &self.broker else {
            return Ok(here);
        };
        match broker.count(Arc::from(user)).await {
            Ok(Ok(others)) => Ok(here + others),
            _ => Err(PublishError::ClusterUnreachable),
        }
    }

    /// [`Self::cluster_connections`] of each of `users`, in order, with one request to the
    /// broker for all of them.
    pub async fn cluster_connections_many(
        &self,
        users: &[&str],
    ) -> Result<Vec<usize>, PublishError> {
        let here: Vec<usize> = users.iter().map(|user| self.connections(user)).collect();
        let Some(broker) = self.broker.as_ref().filter(|_| !users.is_empty()) else {
            return Ok(here);
        };
        match broker
            .count_many(users.iter().map(|user| Arc::from(*user)).collect())
            .await
        {
            Ok(Ok(others)) if others.len() == here.len() => Ok(here
                .iter()
                .zip(others)
                .map(|(here, others)| here + others)
                .collect()),
            _ => Err(PublishError::ClusterUnreachable),
        }
    }

    /// Whether this node is connected to its cluster's broker; `None` when it runs alone.
    pub fn cluster_connected(&self) -> Option<bool> {
        self.broker.as_ref().map(|broker| broker.connected())
    }

    /// What this node's cluster broker is connected to now (the Redis master's address…);
    /// `None` when it runs alone or the broker is connected to nothing.
    pub fn cluster_upstream(&self) -> Option<String> {
        self.broker.as_ref().and_then(|broker| broker.upstream())
    }

    /// The names of the cluster's live nodes, this one included ([`Broker::live_nodes`]);
    /// `None` when not clustered or not connected.
    pub fn cluster_live_nodes(&self) -> Option<Vec<String>> {
        self.broker.as_ref().and_then(|broker| broker.live_nodes())
    }

    /// Adds the cluster broker's metrics, if any, to `registry`.
    pub fn register_broker_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        if let Some(broker) = &self.broker {
            broker.register_metrics(registry);
        }
    }

    /// Sends `message` to the bus, again after a restart if the bus or the registry died
    /// before handling it.
    async fn ask_bus<M, R>(&self, message: M) -> Result<R, PublishError>
    where
        M: Message<Result = Result<R, PublishError>> + Clone + Send + 'static,
        R: Send + 'static,
        EventBusActor: Handler<M>,
    {
        let mut hub = self.hub.clone();
        for _ in 0..3 {
            let bus = hub.borrow_and_update().bus.clone();
            match bus.send(message.clone()).await {
                Ok(Err(PublishError::Unavailable)) | Err(_) => wait_for_restart(&mut hub).await,
                Ok(answer) => return answer,
            }
        }
        Err(PublishError::Unavailable)
    }
}

/// Hands what other nodes publish to the bus in force.
struct NodeInbox {
    /// Where the bus is now.
    hub: watch::Receiver<HubState>,
}

impl Inbox for NodeInbox {
    fn event(&self, user: Arc<str>, time: i64, text: Arc<str>) -> bool {
        let bus = self.hub.borrow().bus.clone();
        bus.try_send(RemoteEvent { user, time, text }).is_ok()
    }

    fn invalidate(&self, user: Arc<str>, issued_before: Option<BindingId>) {
        let bus = self.hub.borrow().bus.clone();
        bus.do_send(RemoteInvalidate {
            user,
            issued_before,
        });
    }
}

/// Waits (bounded) until the supervisor publishes a new hub state.
async fn wait_for_restart(hub: &mut watch::Receiver<HubState>) {
    let _ = tokio::time::timeout(RESTART_WAIT, hub.changed()).await;
}
