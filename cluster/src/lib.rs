//! Several tether nodes as one service over Redis (SPEC §8): [`RedisBroker`], the
//! [`Broker`] that `tether-actors`' bus hands events and invalidations to, over one Redis,
//! a master found through Sentinel, or a Redis Cluster (sharded pub/sub); [`start`] picks
//! it from the URL.
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
//! #          users: std::sync::Arc<dyn tether_actors::auth::user_store::UserStore>) -> Result<(), Box<dyn std::error::Error>> {
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

#![forbid(unsafe_code)]

mod answer;
mod history;
mod metrics;
mod names;
mod sentinel;
mod sharded;
mod throttle;
mod topology;
mod verifiers;
mod worker;

pub use metrics::ClusterMetrics;
pub use verifiers::RedisVerifiers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_actors::auth::verifiers::VerifierStore;
use tether_actors::hub::broker::{
    Answered, Broker, BrokerUnreachable, ClusterEvent, Inbox, OtherNodes, OtherNodesMany,
};
use tokio::sync::{mpsc, oneshot};
use topology::{Source, Topology};

/// How long [`Broker::stop`] waits for this node's presence to be withdrawn from Redis.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// What a node needs to join a cluster (`[cluster]` of SPEC §4).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The Redis URL: `redis://[:password@]host:port/db`, or `rediss://…` for TLS;
    /// `redis+sentinel://[user:password@]h1:p1,h2:p2/MASTER[/db]` (Sentinel);
    /// `redis+cluster://[user:password@]h1:p1,h2:p2` (Redis Cluster); `rediss+…` for TLS
    /// to the data nodes.
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
        Topology::parse(url, None).map(drop)
    }

    /// Checks a key prefix for `url`: a Redis Cluster places a user's keys and channel on
    /// one shard by a hash tag (`{…}`), so its prefix may hold no brace.
    pub fn check_prefix(url: &str, prefix: &str) -> Result<(), String> {
        if (url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://"))
            && prefix.contains(['{', '}'])
        {
            return Err("may hold no { or } with a Redis Cluster (they are its hash tags)".into());
        }
        Ok(())
    }

    /// Whether `url` reaches its data nodes over TLS (`rediss://`, `rediss+…://`).
    pub fn is_tls(url: &str) -> bool {
        Topology::is_tls_url(url)
    }

    /// Checks a Redis URL with the CA certificates (PEM) it is to be trusted with, as
    /// [`RedisBroker::start`] will read them: the URL must be `rediss://` and the PEM must
    /// hold at least one certificate.
    pub fn check_tls(url: &str, ca_pem: &[u8]) -> Result<(), String> {
        if !Topology::is_tls_url(url) {
            return Err("a CA file is only used with a rediss:// (TLS) URL".into());
        }
        if !ca_pem
            .windows(b"-----BEGIN CERTIFICATE-----".len())
            .any(|window| window == b"-----BEGIN CERTIFICATE-----")
        {
            return Err("the CA file holds no PEM certificate".into());
        }
        Topology::parse(url, Some(ca_pem)).map(drop)
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

/// This machine's host name (`/proc/sys/kernel/hostname`, else `/etc/hostname`, else
/// `$HOSTNAME`), or `"localhost"` when none says: the default node name is it, a colon and
/// `server.listen`'s port.
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| {
            let name = std::fs::read_to_string(path).ok()?;
            let name = name.trim();
            (!name.is_empty()).then(|| name.to_owned())
        })
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Another live node of the cluster holds this node's name (SPEC §8): the node must not
/// join under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTaken {
    /// The name.
    pub node: String,
}

impl std::fmt::Display for NameTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cluster.node {:?} is held by another live node of this cluster: another node \
             holds it; give this node a unique cluster.node",
            self.node
        )
    }
}

impl std::error::Error for NameTaken {}

/// Why a broker could not start.
#[derive(Debug)]
pub enum ClusterError {
    /// The Redis URL (or, with TLS, the CA certificates) is not valid.
    Url(String),
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

/// Starts the broker `settings.redis` names (one Redis, Sentinel or a Redis Cluster): the
/// one function a server calls to join a cluster.
pub fn start(settings: ClusterSettings) -> Result<Arc<dyn Broker>, ClusterError> {
    Ok(RedisBroker::start(settings)? as Arc<dyn Broker>)
}

/// The Redis broker: a handle on its thread. Connects (and reconnects) on its own; until it
/// is connected, publishes are refused ([`BrokerUnreachable`]).
#[derive(Debug)]
pub struct RedisBroker {
    /// Requests for the broker's thread, handled in order.
    requests: mpsc::UnboundedSender<worker::Request>,
    /// Whether the thread is connected to Redis now.
    connected: Arc<AtomicBool>,
    /// The address(es) of the Redis master(s) connected to now.
    upstream: Arc<Mutex<Option<String>>>,
    /// The live nodes' names as the last heartbeat read them (shared with the thread).
    live_nodes: Arc<Mutex<Vec<String>>>,
    /// What the broker counts.
    metrics: ClusterMetrics,
    /// How the first attempt to join went, once the thread says (taken by
    /// `wait_joined`).
    joined: std::sync::Mutex<Option<std::sync::mpsc::Receiver<worker::Joined>>>,
    /// This node's name.
    node: String,
    /// The pairs the cluster throttles (shared with the thread).
    throttled: Arc<throttle::Throttled>,
}

impl RedisBroker {
    /// Starts the broker's thread, which connects to Redis at once (and keeps trying).
    pub fn start(settings: ClusterSettings) -> Result<Arc<Self>, ClusterError> {
        let topology = Topology::parse(&settings.redis, settings.redis_ca.as_deref())
            .map_err(ClusterError::Url)?;
        if let Err(err) = ClusterSettings::check_prefix(&settings.redis, &settings.prefix) {
            return Err(ClusterError::Url(format!("cluster.prefix {err}")));
        }
        let (requests, incoming) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        let upstream = Arc::new(Mutex::new(None));
        let live_nodes = Arc::new(Mutex::new(Vec::new()));
        let metrics = ClusterMetrics::new();
        let (tell_joined, joined) = std::sync::mpsc::sync_channel(1);
        let throttled = Arc::new(throttle::Throttled::default());
        let names = names::Names::new(&settings.prefix, &settings.node);
        let status = worker::Status {
            connected: Arc::clone(&connected),
            upstream: Arc::clone(&upstream),
            live_nodes: Arc::clone(&live_nodes),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClusterError::Thread)?;
        let wiring = worker::Wiring {
            names,
            requests: incoming,
            status,
            metrics: metrics.clone(),
            joined: tell_joined,
            throttled: Arc::clone(&throttled),
        };
        let run: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match topology {
            Topology::Single { client, address } => {
                let source = Source::Single {
                    client: Box::new(client),
                    address,
                };
                Box::pin(worker::Worker::new(source, wiring).run())
            }
            Topology::Sentinel(sentinels) => {
                let sentinels = Arc::new(sentinels);
                let source = Source::Sentinel {
                    switched: sentinels.switched.subscribe(),
                    sentinels: Arc::clone(&sentinels),
                };
                let worker = worker::Worker::new(source, wiring);
                Box::pin(async move {
                    let watcher = tokio::spawn(sentinels.watch());
                    worker.run().await;
                    watcher.abort();
                })
            }
            Topology::Cluster { seeds, ca } => {
                Box::pin(sharded::Worker::new((seeds, ca), wiring).run())
            }
        };
        std::thread::Builder::new()
            .name("tether-redis".into())
            .spawn(move || runtime.block_on(run))
            .map_err(ClusterError::Thread)?;
        Ok(Arc::new(Self {
            requests,
            connected,
            upstream,
            live_nodes,
            metrics,
            joined: std::sync::Mutex::new(Some(joined)),
            node: settings.node,
            throttled,
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
            answer: answered,
        });
    }

    fn invalidate(&self, user: Arc<str>) -> OtherNodes {
        self.ask(|answer| worker::Request::Invalidate {
            user,
            answer: Some(answer),
            made: worker::now_ms(),
        })
    }

    fn invalidate_later(&self, user: Arc<str>) {
        let _ = self.requests.send(worker::Request::Invalidate {
            user,
            answer: None,
            made: worker::now_ms(),
        });
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

    fn login_throttled(&self, client: std::net::IpAddr, name: &[u8]) -> bool {
        self.throttled.is_throttled(client, name)
    }

    fn login_failed(
        &self,
        client: std::net::IpAddr,
        name: &[u8],
        limit: u32,
    ) -> Option<oneshot::Receiver<()>> {
        // Not counted while Redis is unreachable: the node's own throttle holds then.
        if !self.connected() {
            return None;
        }
        let (counted, answered) = oneshot::channel();
        let _ = self.requests.send(worker::Request::LoginFailed {
            client,
            name: Box::from(name),
            limit,
            counted,
        });
        Some(answered)
    }

    fn login_succeeded(
        &self,
        client: std::net::IpAddr,
        name: &[u8],
        limit: u32,
    ) -> Option<oneshot::Receiver<bool>> {
        // Unreachable: admitted at once, the node's own throttle holds meanwhile.
        if !self.connected() {
            self.throttled.forget(client, name);
            return None;
        }
        // Asked where the failures are counted: the cluster may throttle the pair already
        // while this node has not yet heard it on the throttle channel.
        let (admitted, answered) = oneshot::channel();
        let _ = self.requests.send(worker::Request::LoginSucceeded {
            client,
            name: Box::from(name),
            limit,
            admitted,
        });
        Some(answered)
    }

    /// Waits, at most `within`, for the first attempt to join the cluster: `Err` (a
    /// [`NameTaken`]'s text) when another live node holds this node's name (SPEC §8: the
    /// node must refuse to start). `Ok` when it joined, when Redis could not be reached
    /// (the node starts and keeps trying; should the name turn out taken then, the node
    /// stops serving the cluster side), or when `within` passed. Call it once, at start.
    fn wait_joined(&self, within: Duration) -> Result<(), String> {
        let joined = match self.joined.lock() {
            Ok(mut joined) => joined.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        match joined.map(|joined| joined.recv_timeout(within)) {
            Some(Ok(worker::Joined::NameTaken)) => Err(NameTaken {
                node: self.node.clone(),
            }
            .to_string()),
            _ => Ok(()),
        }
    }

    /// Kept in Redis through this broker's thread (`RedisVerifiers`).
    fn verifiers(&self, ttl: Duration) -> Option<Arc<dyn VerifierStore>> {
        let requests = self.requests.clone();
        Some(Arc::new(RedisVerifiers::new(
            Box::new(move |op| requests.send(worker::Request::Verifier(op)).is_ok()),
            Arc::clone(&self.connected),
            ttl,
        )))
    }

    fn upstream(&self) -> Option<String> {
        self.upstream
            .lock()
            .ok()
            .and_then(|upstream| upstream.clone())
    }

    fn live_nodes(&self) -> Option<Vec<String>> {
        if !self.connected.load(Ordering::Relaxed) {
            return None;
        }
        self.live_nodes.lock().ok().map(|nodes| nodes.clone())
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
    }

    fn stop(&self) {
        let (done, stopped) = std::sync::mpsc::channel();
        if self.requests.send(worker::Request::Stop(done)).is_ok() {
            let _ = stopped.recv_timeout(STOP_WAIT);
        }
    }
}
