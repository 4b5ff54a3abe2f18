//! Redis with Sentinel: asking the sentinels which node is the master, and listening for
//! `+switch-master` so that a node moves to a promoted replica as soon as the sentinels
//! announce it, rather than after its next failed attempt.
//!
//! The sentinels are asked in turn, starting with the one that answered last; the first
//! answer is taken. A sentinel that wants a password (`NOAUTH`) is asked again with the
//! URL's credentials, so one URL serves both set-ups: sentinels without a password, and
//! sentinels with the data nodes' password. The answer is only a hint: the worker checks
//! with `ROLE` that the node it reaches is a master (a stale answer, or an old master that
//! came back as a replica, counts as unreachable).

use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A URL that lists several hosts: `scheme://[userinfo@]h1:p1,h2:p2[/path]`.
#[derive(Debug)]
pub(crate) struct MultiHost {
    /// TLS to the data nodes (`rediss+…`).
    pub tls: bool,
    /// `user:pass` or `:pass`, as written (percent-encoded).
    pub userinfo: Option<String>,
    /// `host:port` each.
    pub hosts: Vec<String>,
    /// What follows the hosts' `/`, without it.
    pub path: String,
}

impl MultiHost {
    /// Reads the part of `url` after `scheme://`.
    pub(crate) fn parse(tls: bool, rest: &str) -> Result<Self, String> {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (Some(authority[..at].to_owned()), &authority[at + 1..]),
            None => (None, authority),
        };
        let hosts: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|host| !host.is_empty())
            .map(str::to_owned)
            .collect();
        if hosts.is_empty() {
            return Err("lists no host".into());
        }
        for host in &hosts {
            let port = host.rsplit_once(':').map(|(_, port)| port);
            if port.and_then(|port| port.parse::<u16>().ok()).is_none() {
                return Err(format!("{host:?} is not host:port"));
            }
        }
        Ok(Self {
            tls,
            userinfo,
            hosts,
            path: path.to_owned(),
        })
    }

    /// The data node URL for `host` (`host:port`), with the credentials and `db`.
    pub(crate) fn node_url(&self, host: &str, db: &str) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let credentials = self
            .userinfo
            .as_deref()
            .map_or_else(String::new, |userinfo| format!("{userinfo}@"));
        format!("{scheme}://{credentials}{host}/{db}")
    }
}

/// How long a sentinel may take to connect or answer.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause of the `+switch-master` watcher between sentinels that do not answer.
const WATCH_PAUSE: Duration = Duration::from_secs(1);
/// How often the watcher probes the sentinel it listens to.
const WATCH_PROBE: Duration = Duration::from_secs(5);

/// The sentinels of one master, from a `redis+sentinel://` URL.
#[derive(Debug)]
pub(crate) struct Sentinels {
    /// The sentinels and the data nodes' credentials and TLS.
    hosts: MultiHost,
    /// The master's name in the sentinels' configuration.
    master: String,
    /// The database number on the data nodes.
    db: String,
    /// The CA certificates (PEM) trusted for TLS to the data nodes.
    ca: Option<Vec<u8>>,
    /// The sentinel to ask first: the one that answered last.
    first: AtomicUsize,
    /// Whether the sentinels asked for the URL's credentials.
    authenticate: AtomicBool,
    /// Counts the sentinels' announcements of a new master for `master`.
    pub(crate) switched: watch::Sender<u64>,
}

impl Sentinels {
    /// Checks the URLs the sentinels and data nodes will be reached with.
    pub(crate) fn new(
        hosts: MultiHost,
        master: String,
        db: String,
        ca: Option<Vec<u8>>,
    ) -> Result<Self, String> {
        for host in &hosts.hosts {
            redis::Client::open(format!("redis://{host}/")).map_err(|err| err.to_string())?;
            crate::client(&hosts.node_url(host, &db), ca.as_deref())
                .map_err(|err| err.to_string())?;
        }
        Ok(Self {
            hosts,
            master,
            db,
            ca,
            first: AtomicUsize::new(0),
            authenticate: AtomicBool::new(false),
            switched: watch::Sender::new(0),
        })
    }

    /// The master's name.
    pub(crate) fn master_name(&self) -> &str {
        &self.master
    }

    /// The client of the data node at `address` (`host:port`).
    pub(crate) fn client_for(&self, address: &str) -> redis::RedisResult<redis::Client> {
        crate::client(&self.hosts.node_url(address, &self.db), self.ca.as_deref())
    }

    /// The client of sentinel `index`, with the URL's credentials when they asked for them.
    fn sentinel(&self, index: usize, authenticate: bool) -> redis::RedisResult<redis::Client> {
        let host = &self.hosts.hosts[index % self.hosts.hosts.len()];
        match (&self.hosts.userinfo, authenticate) {
            (Some(userinfo), true) => redis::Client::open(format!("redis://{userinfo}@{host}/")),
            _ => redis::Client::open(format!("redis://{host}/")),
        }
    }

    /// Asks the sentinels in turn for the master's address (`host:port`); the reasons of
    /// every sentinel when none answers.
    pub(crate) async fn ask(&self) -> Result<String, String> {
        let count = self.hosts.hosts.len();
        let first = self.first.load(Ordering::Relaxed);
        let mut reasons = Vec::new();
        for step in 0..count {
            let index = (first + step) % count;
            match self.ask_one(index).await {
                Ok(address) => {
                    self.first.store(index, Ordering::Relaxed);
                    return Ok(address);
                }
                Err(reason) => {
                    reasons.push(format!("sentinel {}: {reason}", self.hosts.hosts[index]))
                }
            }
        }
        Err(reasons.join("; "))
    }

    /// Asks sentinel `index`, again with credentials when it wants them.
    async fn ask_one(&self, index: usize) -> Result<String, String> {
        let authenticate = self.authenticate.load(Ordering::Relaxed);
        match self.ask_as(index, authenticate).await {
            Err(err) if !authenticate && needs_auth(&err) && self.hosts.userinfo.is_some() => {
                self.authenticate.store(true, Ordering::Relaxed);
                self.ask_as(index, true)
                    .await
                    .map_err(|err| err.to_string())
            }
            answer => answer.map_err(|err| err.to_string()),
        }
    }

    /// One question to one sentinel.
    async fn ask_as(&self, index: usize, authenticate: bool) -> redis::RedisResult<String> {
        let client = self.sentinel(index, authenticate)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(SENTINEL_TIMEOUT))
            .set_response_timeout(Some(SENTINEL_TIMEOUT));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let answer: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(&mut connection)
            .await?;
        match answer {
            Some((host, port)) if host.contains(':') => Ok(format!("[{host}]:{port}")),
            Some((host, port)) => Ok(format!("{host}:{port}")),
            None => Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "does not know the master",
                self.master.clone(),
            ))),
        }
    }

    /// Listens to one sentinel at a time for `+switch-master` of this master, waking
    /// `switched` for each; moves to the next sentinel when one is lost.
    /// Runs until the runtime ends.
    pub(crate) async fn watch(self: Arc<Self>) {
        let mut index = 0;
        loop {
            if let Err(reason) = self.watch_one(index).await {
                log::debug!(
                    "cluster: not listening to sentinel {} ({reason})",
                    self.hosts.hosts[index % self.hosts.hosts.len()]
                );
            }
            index = (index + 1) % self.hosts.hosts.len();
            tokio::time::sleep(WATCH_PAUSE).await;
        }
    }

    /// Listens to sentinel `index` until it is lost.
    async fn watch_one(&self, index: usize) -> Result<(), String> {
        let authenticate = self.authenticate.load(Ordering::Relaxed);
        let client = self
            .sentinel(index, authenticate)
            .map_err(|err| err.to_string())?;
        let pubsub = tokio::time::timeout(SENTINEL_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| "no answer".to_owned())?
            .map_err(|err| err.to_string())?;
        let (mut sink, mut messages) = pubsub.split();
        tokio::time::timeout(SENTINEL_TIMEOUT, sink.subscribe("+switch-master"))
            .await
            .map_err(|_| "no answer".to_owned())?
            .map_err(|err| err.to_string())?;
        let mut probe = tokio::time::interval(WATCH_PROBE);
        probe.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return Err("connection closed".into());
                    };
                    let text: String = message.get_payload().unwrap_or_default();
                    // "<master> <old ip> <old port> <new ip> <new port>"
                    let fields: Vec<&str> = text.split(' ').collect();
                    if fields.first() == Some(&self.master.as_str()) {
                        log::info!(
                            "cluster: sentinel {} announces a new master for {:?}: {}",
                            self.hosts.hosts[index % self.hosts.hosts.len()],
                            self.master,
                            fields.get(3..5).map(|new| new.join(":")).unwrap_or_default()
                        );
                        self.switched.send_modify(|count| *count += 1);
                    }
                }
                _ = probe.tick() => {
                    tokio::time::timeout(SENTINEL_TIMEOUT, sink.ping::<redis::Value>())
                        .await
                        .map_err(|_| "no answer to a probe".to_owned())?
                        .map_err(|err| err.to_string())?;
                }
            }
        }
    }
}

/// Whether `err` says the server wants credentials.
fn needs_auth(err: &redis::RedisError) -> bool {
    err.code() == Some("NOAUTH")
        || err.kind() == redis::ErrorKind::AuthenticationFailed
        || err.to_string().contains("NOAUTH")
}
