//! Several `tether` processes as one cluster (SPEC §8) over a private [`Redis`]: each node
//! is a [`TestServer`] with `[cluster]` set and its admin API on an ephemeral port, and the
//! same users file. [`Node`] wraps what the tests ask a node (publish, counts, `/healthz`,
//! `/metrics`, CPU time); [`Cluster`] waits for cluster-wide states with bounded timeouts.

use super::redis::Redis;
use super::{
    admin_addr, admin_call, cheap_hash, hardening, metric_in, wait_until, TestClient, TestConfig,
    TestServer,
};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use std::time::Duration;

/// How long a node may take to start and report `"cluster": "connected"`.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long counts and subscriptions may take to agree across nodes after a change.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One `tether` process of a cluster.
pub struct Node {
    /// The process.
    pub server: TestServer,
    /// `http://ADDR` of its admin API.
    base: String,
}

impl Node {
    /// Starts a node named `name` in the cluster on `redis` with key prefix `prefix`, the
    /// given (name, bcrypt hash) users, and `configure` applied to its configuration last.
    pub fn start(
        redis: &Redis,
        prefix: &str,
        name: &str,
        users: &[(&str, &str)],
        configure: &dyn Fn(TestConfig) -> TestConfig,
    ) -> Self {
        Self::start_url(&redis.url(), prefix, name, users, configure)
    }

    /// Like [`Node::start`] with any `cluster.redis` URL (Sentinel, Redis Cluster).
    pub fn start_url(
        url: &str,
        prefix: &str,
        name: &str,
        users: &[(&str, &str)],
        configure: &dyn Fn(TestConfig) -> TestConfig,
    ) -> Self {
        let config = TestConfig::new()
            .set("admin", "listen", "127.0.0.1:0")
            .set("events", "time_zone", "UTC")
            .auth("bcrypt_cost", 4)
            .set("cluster", "redis", url)
            .set("cluster", "node", name)
            .set("cluster", "prefix", prefix);
        let server = TestServer::start_with_hashes(&configure(config), users);
        server.wait_for_log("(admin API)", JOIN_TIMEOUT);
        let base = format!("http://{}", admin_addr(&server.stderr_text()));
        let node = Self { server, base };
        node.wait_cluster_state("connected", JOIN_TIMEOUT);
        node
    }

    /// A new client connected to this node.
    pub fn client(&self) -> TestClient {
        self.server.client()
    }

    /// A new client logged in as `name` on this node.
    pub fn login(&self, name: &str, password: &str) -> TestClient {
        let mut client = self.client();
        client.login(name, password);
        client
    }

    /// Sends an admin request; answers the status and the body as JSON (`Null` for an
    /// empty body).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let text = body.map(Value::to_string);
        let (status, answer) = admin_call(&self.base, None, method, path, text.as_deref());
        let value = if answer.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&answer).unwrap_or_else(|err| {
                panic!("{method} {path}: answer {answer:?} is not JSON: {err}")
            })
        };
        (status, value)
    }

    /// `POST /v1/events` for one event; answers the status and the body.
    pub fn publish(&self, user: &str, text: &str) -> (u16, Value) {
        self.call(
            "POST",
            "/v1/events",
            Some(&json!({"user": user, "text": text})),
        )
    }

    /// `POST /v1/events` that must be accepted; answers its `connections`.
    pub fn publish_ok(&self, user: &str, text: &str) -> u64 {
        let (status, body) = self.publish(user, text);
        assert_eq!(status, 202, "publish for {user:?} on a node: {body}");
        body["connections"]
            .as_u64()
            .unwrap_or_else(|| panic!("no connections count in {body}"))
    }

    /// The path of a route under `/v1/users/{name}`, the name percent-encoded.
    pub fn user_path(name: &str, rest: &str) -> String {
        format!(
            "/v1/users/{}{rest}",
            utf8_percent_encode(name, NON_ALPHANUMERIC)
        )
    }

    /// `GET /v1/users/{name}/connections`: the user's connections over the cluster.
    pub fn connections(&self, user: &str) -> u64 {
        let (status, body) = self.call("GET", &Self::user_path(user, "/connections"), None);
        assert_eq!(status, 200, "connections of {user:?}: {body}");
        body["connections"]
            .as_u64()
            .unwrap_or_else(|| panic!("no connections count in {body}"))
    }

    /// `POST /v1/users/{name}/invalidate`; answers the status and the body.
    pub fn invalidate(&self, user: &str) -> (u16, Value) {
        self.call("POST", &Self::user_path(user, "/invalidate"), None)
    }

    /// The `cluster_redis` field of `/healthz`: the Redis master(s) connected to now.
    pub fn cluster_redis(&self) -> Option<String> {
        let (status, body) = self.call("GET", "/healthz", None);
        assert_eq!(status, 200, "/healthz: {body}");
        body["cluster_redis"].as_str().map(str::to_owned)
    }

    /// The `cluster` field of `/healthz` (which must answer 200), if there is one.
    pub fn cluster_state(&self) -> Option<String> {
        let (status, body) = self.call("GET", "/healthz", None);
        assert_eq!(status, 200, "/healthz: {body}");
        body["cluster"].as_str().map(str::to_owned)
    }

    /// Waits until `/healthz` says `"cluster": state`; panics (with the log) after
    /// `timeout`.
    pub fn wait_cluster_state(&self, state: &str, timeout: Duration) {
        let reached = wait_until(timeout, || self.cluster_state().as_deref() == Some(state));
        assert!(
            reached,
            "/healthz did not say \"cluster\": {state:?} within {timeout:?} (it says {:?}); log:\n{}",
            self.cluster_state(),
            self.server.stderr_text()
        );
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        let (status, text) = admin_call(&self.base, None, "GET", "/metrics", None);
        assert_eq!(status, 200, "/metrics: {text}");
        text
    }

    /// The value of `series` (labels included, as written) in `/metrics`; panics when it
    /// is not there.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.metrics();
        metric_in(&text, series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
    }

    /// CPU time (user + system) the process has used, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        hardening::cpu_ticks(self.server.pid().as_raw())
    }
}

/// A private Redis and nodes `n1`, `n2`, … started on it, sharing one users file.
pub struct Cluster {
    /// The nodes, `n1` first; dropped before the Redis.
    pub nodes: Vec<Node>,
    /// The broker.
    pub redis: Redis,
    /// The key prefix every node was started with.
    pub prefix: String,
    /// The users as (name, bcrypt hash).
    users: Vec<(String, String)>,
}

impl Cluster {
    /// A Redis and `count` nodes with the default prefix and the given (name, password)
    /// users; `None` when Redis is not installed (outside CI).
    pub fn start(count: usize, users: &[(&str, &str)]) -> Option<Self> {
        Self::start_with(count, users, |config| config)
    }

    /// Like [`Cluster::start`], with `configure` applied to every node's configuration.
    pub fn start_with(
        count: usize,
        users: &[(&str, &str)],
        configure: impl Fn(TestConfig) -> TestConfig,
    ) -> Option<Self> {
        let redis = Redis::start()?;
        let mut cluster = Self {
            nodes: Vec::new(),
            redis,
            prefix: "tether".to_owned(),
            users: users
                .iter()
                .map(|(name, password)| ((*name).to_owned(), cheap_hash(password)))
                .collect(),
        };
        for _ in 0..count {
            cluster.add_node(&configure);
        }
        Some(cluster)
    }

    /// Starts one more node (`n{len+1}`) on the cluster's Redis, prefix and users.
    pub fn add_node(&mut self, configure: &dyn Fn(TestConfig) -> TestConfig) {
        let name = format!("n{}", self.nodes.len() + 1);
        let node = Node::start(
            &self.redis,
            &self.prefix,
            &name,
            &self.user_hashes(),
            configure,
        );
        self.nodes.push(node);
    }

    /// The users as (name, bcrypt hash) pairs.
    pub fn user_hashes(&self) -> Vec<(&str, &str)> {
        self.users
            .iter()
            .map(|(name, hash)| (name.as_str(), hash.as_str()))
            .collect()
    }

    /// Node `n{number}` (from 1).
    pub fn node(&self, number: usize) -> &Node {
        &self.nodes[number - 1]
    }

    /// Logs `user` (name, password) in once on each of the `N` nodes, in order, and waits
    /// until every node counts the `N` connections.
    pub fn login_everywhere<const N: usize>(&self, user: (&str, &str)) -> [TestClient; N] {
        assert_eq!(N, self.nodes.len(), "one connection per node");
        let clients = std::array::from_fn(|index| self.nodes[index].login(user.0, user.1));
        self.wait_connections(user.0, N as u64);
        clients
    }

    /// Waits until every node counts `expected` connections of `user`; panics after
    /// [`SETTLE_TIMEOUT`] naming what each node counts.
    pub fn wait_connections(&self, user: &str, expected: u64) {
        let agreed = wait_until(SETTLE_TIMEOUT, || {
            self.nodes
                .iter()
                .all(|node| node.connections(user) == expected)
        });
        let counts: Vec<u64> = self.nodes.iter().map(|n| n.connections(user)).collect();
        assert!(
            agreed,
            "the nodes did not all count {expected} connections of {user:?} within \
             {SETTLE_TIMEOUT:?}: they count {counts:?}"
        );
    }

    /// The per-user channels that have subscribers now, with their subscriber counts.
    pub fn user_channels(&self) -> Vec<(String, u64)> {
        self.redis
            .channels(&format!("{}:user:*", self.prefix))
            .into_iter()
            .map(|channel| {
                let subscribers = self.redis.subscribers(&channel);
                (channel, subscribers)
            })
            .collect()
    }

    /// Waits until the per-user channels' subscriber counts are `expected` (sorted, one
    /// per user with a connection somewhere: how many nodes subscribe for that user).
    pub fn wait_subscriber_counts(&self, expected: &[u64]) {
        let mut wanted = expected.to_vec();
        wanted.sort_unstable();
        let counts = || {
            let mut counts: Vec<u64> = self.user_channels().into_iter().map(|c| c.1).collect();
            counts.sort_unstable();
            counts
        };
        let reached = wait_until(SETTLE_TIMEOUT, || counts() == wanted);
        assert!(
            reached,
            "per-user channels under {}:user: have subscribers {:?}, expected {wanted:?}",
            self.prefix,
            self.user_channels()
        );
    }
}

/// The text of an `event` message; panics when `message` is something else.
pub fn event_text(message: &[String]) -> &str {
    assert!(
        message.len() == 3 && message[0] == "event",
        "expected an event, got {message:?}"
    );
    &message[2]
}

/// Receives the next message of `client`, which must be the event `text`, within
/// `timeout`.
pub fn expect_event(client: &mut TestClient, text: &str, timeout: Duration) {
    let message = client.recv_within(timeout);
    assert_eq!(event_text(&message), text, "message {message:?}");
}
