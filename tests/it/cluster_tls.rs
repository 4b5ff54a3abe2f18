//! A cluster over TLS to Redis (`cluster.redis = "rediss://…"`, SPEC §4): a private Redis
//! given a TLS port (`CONFIG SET tls-port`) with a certificate from a CA made by `openssl`;
//! nodes trusting that CA (`cluster.redis_ca_file`) deliver across, a node trusting
//! another CA stays unreachable (and says why), an unusable CA file stops the start-up.

use crate::common::cluster::{expect_event, Node, SETTLE_TIMEOUT};
use crate::common::redis::Redis;
use crate::common::tls::{ca_and_server_pair, make_ca};
use crate::common::{
    admin_addr, admin_call, cheap_hash, free_port, run_to_exit, tether_command, TestConfig,
    TestServer,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

const ALICE: (&str, &str) = ("alice", "alice-pw");

/// A Redis that also listens with TLS, and the folder with its CA (`redis-ca.pem`) and
/// another CA (`other-ca.pem`) that did not sign its certificate.
struct TlsRedis {
    redis: Redis,
    dir: tempfile::TempDir,
    tls_port: u16,
}

impl TlsRedis {
    /// `None` (after a skip line) without `redis-server` or `openssl`, outside CI.
    fn start() -> Option<Self> {
        let dir = ca_and_server_pair("redis")?;
        let redis = Redis::start()?;
        make_ca(dir.path(), "other");
        let file = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        redis.cli(&["CONFIG", "SET", "tls-cert-file", &file("server.pem")]);
        redis.cli(&["CONFIG", "SET", "tls-key-file", &file("server.key")]);
        redis.cli(&["CONFIG", "SET", "tls-ca-cert-file", &file("redis-ca.pem")]);
        redis.cli(&["CONFIG", "SET", "tls-auth-clients", "no"]);
        let tls_port = free_port();
        redis.cli(&["CONFIG", "SET", "tls-port", &tls_port.to_string()]);
        Some(Self {
            redis,
            dir,
            tls_port,
        })
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.tls_port)
    }

    fn ca(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}-ca.pem"))
    }

    /// Starts node `name` on the TLS port trusting `ca`; waits until it is connected.
    fn node(&self, name: &str, ca: &Path) -> Node {
        let hash = cheap_hash(ALICE.1);
        let url = self.url();
        let ca = ca.to_string_lossy().into_owned();
        Node::start(
            &self.redis,
            "tls",
            name,
            &[(ALICE.0, hash.as_str())],
            &|config| {
                config.set("cluster", "redis", url.as_str()).set(
                    "cluster",
                    "redis_ca_file",
                    ca.as_str(),
                )
            },
        )
    }

    /// The number of clients Redis has on its TLS port now (`CLIENT LIST` `laddr`).
    fn tls_clients(&self) -> usize {
        let suffix = format!(":{} ", self.tls_port);
        self.redis
            .cli(&["CLIENT", "LIST"])
            .lines()
            .filter(|line| {
                line.split(' ').any(|field| {
                    field.starts_with("laddr=") && format!("{field} ").ends_with(&suffix)
                })
            })
            .count()
    }
}

#[test]
fn two_nodes_over_rediss_with_a_private_ca_deliver_an_event_across() {
    let Some(redis) = TlsRedis::start() else {
        return;
    };
    let n1 = redis.node("n1", &redis.ca("redis"));
    let n2 = redis.node("n2", &redis.ca("redis"));
    // Both connections of both nodes go to the TLS port.
    assert_eq!(
        redis.tls_clients(),
        4,
        "{}",
        redis.redis.cli(&["CLIENT", "LIST"])
    );
    let mut alice = n2.login(ALICE.0, ALICE.1);
    let subscribed = crate::common::wait_until(SETTLE_TIMEOUT, || n1.connections(ALICE.0) == 1);
    assert!(subscribed, "n1 does not count alice's login on n2");
    assert_eq!(n1.publish_ok(ALICE.0, "over TLS"), 1);
    expect_event(&mut alice, "over TLS", Duration::from_secs(5));
}

#[test]
fn a_node_that_does_not_trust_redis_certificate_stays_unreachable_and_says_why() {
    let Some(redis) = TlsRedis::start() else {
        return;
    };
    let config = TestConfig::new()
        .set("admin", "listen", "127.0.0.1:0")
        .auth("bcrypt_cost", 4)
        .set("cluster", "redis", redis.url())
        .set("cluster", "node", "n1")
        .set(
            "cluster",
            "redis_ca_file",
            redis.ca("other").to_string_lossy().into_owned(),
        );
    let hash = cheap_hash(ALICE.1);
    let server = TestServer::start_with_hashes(&config, &[(ALICE.0, hash.as_str())]);
    server.wait_for_log("cluster: Redis unreachable", Duration::from_secs(10));
    // The start waits for the first attempt (is the node's name free?): the line can come
    // before the admin API listens.
    server.wait_for_log("(admin API)", Duration::from_secs(10));
    let log = server.stderr_text();
    let line = log
        .lines()
        .find(|line| line.contains("cluster: Redis unreachable"))
        .unwrap_or_default();
    assert!(line.contains("certificate"), "the reason is given: {line}");
    let base = format!("http://{}", admin_addr(&log));
    let (status, body) = admin_call(&base, None, "GET", "/healthz", None);
    assert_eq!(status, 200);
    assert!(body.contains("\"cluster\":\"unreachable\""), "{body}");
    let (status, _) = admin_call(
        &base,
        None,
        "POST",
        "/v1/events",
        Some(r#"{"user":"alice","text":"x"}"#),
    );
    assert_eq!(status, 503);
    // One line for the change of state, not one per attempt: counted once the node has
    // tried again a few times. Redis logs (at `verbose`) every TLS connection it could not
    // accept: the node's attempts, refused by the node at the handshake.
    redis.redis.wait_refused_tls_handshakes(3);
    assert_eq!(
        server
            .stderr_text()
            .matches("cluster: Redis unreachable")
            .count(),
        1,
        "{}",
        server.stderr_text()
    );
    // Its own clients are served.
    let mut alice = server.logged_in(ALICE.0, ALICE.1);
    alice.send(&["prolongate"]);
    alice.expect(&["prolongate_ack"]);
}

#[test]
fn a_redis_ca_file_without_a_certificate_or_with_redis_url_stops_the_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate\n").expect("write CA");
    let cases = [
        ("rediss://127.0.0.1:1/0", ca.clone(), "no PEM certificate"),
        (
            "rediss://127.0.0.1:1/0",
            dir.path().join("missing.pem"),
            "cannot read",
        ),
        ("redis://127.0.0.1:1/0", ca.clone(), "rediss://"),
    ];
    for (url, file, words) in cases {
        let config = TestConfig::new().set("cluster", "redis", url).set(
            "cluster",
            "redis_ca_file",
            file.to_string_lossy().into_owned(),
        );
        let path = dir.path().join("server.toml");
        std::fs::write(&path, config.to_toml()).expect("write config");
        std::fs::write(dir.path().join("users.toml"), "").expect("write users");
        let ran = run_to_exit(tether_command(&path), Duration::from_secs(10));
        assert_eq!(ran.status.code(), Some(2), "{url} {file:?}: {}", ran.stderr);
        assert!(
            ran.stderr.contains("cluster.redis_ca_file") && ran.stderr.contains(words),
            "{words:?} not in {}",
            ran.stderr
        );
    }
}
