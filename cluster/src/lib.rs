//! Several tether nodes as one service over Redis (SPEC §8): [`RedisBroker`], the
//! [`Broker`] that `tether-actors`' bus hands events and invalidations to.
//!
//! The broker runs its Redis I/O on a thread of its own (`tether-redis`, a current-thread
//! tokio runtime), never on the actors' event loops: every [`Broker`] method only queues a
//! request for it. See ARCHITECTURE.md ("Cluster") for the Redis keys, the delivery
//! semantics and what happens while Redis is unreachable.
//!
//! A host program that embeds the library runs clustered the same way as the binary:
//!
//! ```no_run
//! # fn start(listeners: tether_actors::Listeners, settings: tether_actors::Settings,
//! #          users: std::sync::Arc<dyn tether_actors::users::UserStore>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let broker = tether_cluster::RedisBroker::start(tether_cluster::ClusterSettings {
//!     redis: "redis://127.0.0.1:6379/0".into(),
//!     node: "node-1".into(),
//!     prefix: "tether".into(),
//!     redis_ca: None,
//! })?;
//! let tether = tether_actors::Tether::start_clustered(listeners, settings, users, Some(broker))?;
//! # Ok(()) }
//! ```

mod metrics;
mod names;
mod verifiers;
mod worker;

pub use metrics::ClusterMetrics;
pub use verifiers::RedisVerifiers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_actors::hub::broker::{
    Answered, Broker, BrokerUnreachable, ClusterEvent, Inbox, OtherNodes, OtherNodesMany,
};
use tether_actors::verifiers::VerifierStore;
use tokio::sync::{mpsc, oneshot};

/// How long [`Broker::stop`] waits for this node's presence to be withdrawn from Redis.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// What a node needs to join a cluster (`[cluster]` of SPEC §4).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The Redis URL: `redis://[:password@]host:port/db`, or `rediss://…` for TLS.
    pub redis: String,
    /// This node's name, unique in the cluster, without control characters.
    pub node: String,
    /// The prefix of every Redis key and channel.
    pub prefix: String,
    /// With a `rediss://` URL: the certificates (PEM) that alone are trusted to sign the
    /// Redis server's certificate (a private CA). `None` trusts the system's roots.
    pub redis_ca: Option<Vec<u8>>,
}

impl ClusterSettings {
    /// Checks a Redis URL as [`RedisBroker::start`] will read it.
    pub fn check_url(url: &str) -> Result<(), String> {
        client(url, None).map(drop).map_err(|err| err.to_string())
    }

    /// Checks a Redis URL with the CA certificates (PEM) it is to be trusted with, as
    /// [`RedisBroker::start`] will read them: the URL must be `rediss://` and the PEM must
    /// hold at least one certificate.
    pub fn check_tls(url: &str, ca_pem: &[u8]) -> Result<(), String> {
        if !url.starts_with("rediss://") {
            return Err("a CA file is only used with a rediss:// (TLS) URL".into());
        }
        if !ca_pem
            .windows(b"-----BEGIN CERTIFICATE-----".len())
            .any(|window| window == b"-----BEGIN CERTIFICATE-----")
        {
            return Err("the CA file holds no PEM certificate".into());
        }
        client(url, Some(ca_pem))
            .map(drop)
            .map_err(|err| err.to_string())
    }
}

/// The Redis client for `url`, trusting only `ca_pem` (PEM certificates) when given.
///
/// TLS is rustls with the *ring* provider: the `redis` crate builds its rustls
/// configuration with the process's default provider, so ring is installed as that
/// default unless the host program installed one already.
///
/// Its sockets are `TCP_NODELAY` (the crate's default leaves Nagle's algorithm on): a
/// pipeline written while the previous one is unacknowledged would otherwise wait for
/// Redis's delayed ACK (up to 40 ms on Linux) before Redis sees it whole.
fn client(url: &str, ca_pem: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo;
    if url.starts_with("rediss://") && rustls::crypto::CryptoProvider::get_default().is_none() {
        // Fails only when another thread installed one meanwhile: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let info = url
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    match ca_pem {
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
        None => redis::Client::open(info),
    }
}

/// Why a broker could not start.
#[derive(Debug)]
pub enum ClusterError {
    /// The Redis URL (or, with TLS, the CA certificates) is not valid.
    Url(redis::RedisError),
    /// The broker's thread could not be started.
    Thread(std::io::Error),
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(err) => write!(f, "invalid cluster.redis URL: {err}"),
            Self::Thread(err) => write!(f, "cannot start the cluster broker's thread: {err}"),
        }
    }
}

impl std::error::Error for ClusterError {}

/// The Redis broker: a handle on its thread. Connects (and reconnects) on its own; until it
/// is connected, publishes are refused ([`BrokerUnreachable`]).
#[derive(Debug)]
pub struct RedisBroker {
    /// Requests for the broker's thread, handled in order.
    requests: mpsc::UnboundedSender<worker::Request>,
    /// Whether the thread is connected to Redis now.
    connected: Arc<AtomicBool>,
    /// What the broker counts.
    metrics: ClusterMetrics,
}

impl RedisBroker {
    /// Starts the broker's thread, which connects to Redis at once (and keeps trying).
    pub fn start(settings: ClusterSettings) -> Result<Arc<Self>, ClusterError> {
        let client =
            client(&settings.redis, settings.redis_ca.as_deref()).map_err(ClusterError::Url)?;
        let (requests, incoming) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        let metrics = ClusterMetrics::new();
        let worker = worker::Worker::new(
            client,
            names::Names::new(&settings.prefix, &settings.node),
            incoming,
            Arc::clone(&connected),
            metrics.clone(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClusterError::Thread)?;
        std::thread::Builder::new()
            .name("tether-redis".into())
            .spawn(move || runtime.block_on(worker.run()))
            .map_err(ClusterError::Thread)?;
        Ok(Arc::new(Self {
            requests,
            connected,
            metrics,
        }))
    }

    /// What the broker counts; register it with the server's Prometheus registry.
    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    /// Queues a request that is answered with the other nodes' count.
    fn ask(&self, request: impl FnOnce(worker::Answer) -> worker::Request) -> OtherNodes {
        let (answer, answered) = oneshot::channel();
        self.send(request(worker::Answer::Channel(answer)));
        answered
    }

    /// Queues `request`, or answers it unreachable at once while Redis is.
    fn send(&self, request: worker::Request) {
        if self.connected() {
            match self.requests.send(request) {
                Ok(()) => {}
                Err(mpsc::error::SendError(request)) => request.refuse(),
            }
        } else {
            request.refuse();
        }
    }
}

impl Broker for RedisBroker {
    fn attach(&self, inbox: Arc<dyn Inbox>) {
        let _ = self.requests.send(worker::Request::Attach(inbox));
    }

    fn publish(&self, event: ClusterEvent, answered: Answered) {
        self.send(worker::Request::Publish {
            event,
            answer: worker::Answer::Call(answered),
        });
    }

    fn invalidate(&self, user: Arc<str>) -> OtherNodes {
        self.ask(|answer| worker::Request::Invalidate {
            user,
            answer: Some(answer),
        })
    }

    fn invalidate_later(&self, user: Arc<str>) {
        let _ = self
            .requests
            .send(worker::Request::Invalidate { user, answer: None });
    }

    fn count(&self, user: Arc<str>) -> OtherNodes {
        self.ask(|answer| worker::Request::Count { user, answer })
    }

    fn count_many(&self, users: Vec<Arc<str>>) -> OtherNodesMany {
        let (answer, answered) = oneshot::channel();
        if !self.connected() {
            let _ = answer.send(Err(BrokerUnreachable));
        } else if let Err(mpsc::error::SendError(request)) = self
            .requests
            .send(worker::Request::CountMany { users, answer })
        {
            request.refuse();
        }
        answered
    }

    fn presence(&self, user: &str, delta: i32, subscribed: Option<oneshot::Sender<()>>) {
        // A thread gone drops `subscribed` with the request: the login is answered at once.
        let _ = self.requests.send(worker::Request::Presence {
            user: Arc::from(user),
            delta,
            subscribed,
        });
    }

    fn flush(&self) -> oneshot::Receiver<()> {
        let (done, flushed) = oneshot::channel();
        // When the thread is gone, `done` is dropped: nothing is left to answer.
        let _ = self.requests.send(worker::Request::Flush(done));
        flushed
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Kept in Redis through this broker's thread (`RedisVerifiers`).
    fn verifiers(&self, ttl: Duration) -> Option<Arc<dyn VerifierStore>> {
        Some(Arc::new(RedisVerifiers::new(
            self.requests.clone(),
            Arc::clone(&self.connected),
            ttl,
        )))
    }

    fn stop(&self) {
        let (done, stopped) = std::sync::mpsc::channel();
        if self.requests.send(worker::Request::Stop(done)).is_ok() {
            let _ = stopped.recv_timeout(STOP_WAIT);
        }
    }
}
