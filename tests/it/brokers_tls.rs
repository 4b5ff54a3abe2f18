//! TLS to the data nodes over Sentinel (`rediss+sentinel://`) and over a Redis Cluster
//! (`rediss+cluster://`), SPEC §4 and §8: Redis servers started with `--tls-port` and a
//! certificate from a CA made by `openssl`. Nodes trusting that CA
//! (`cluster.redis_ca_file`) deliver events across, every connection of theirs on a TLS
//! port; a node trusting another CA stays unreachable and says why in one log line.
//!
//! Over Sentinel the sentinels are asked in plain text (they only name the master) and
//! watch the master over TLS (`tls-replication yes`), so they name its TLS port. A Redis
//! Cluster gossips over TLS (`tls-cluster yes`) and names each master's TLS port to a
//! client that asks over TLS.

use crate::common::brokers::{create_cluster, MASTER_NAME};
use crate::common::cluster::{expect_event, Node};
use crate::common::redis::Redis;
use crate::common::tls::{ca_and_server_pair, make_ca};
use crate::common::{
    admin_addr, admin_call, cheap_hash, free_port, wait_until, TestConfig, TestServer,
};
use std::path::Path;
use std::time::Duration;

const ALICE: (&str, &str) = ("alice", "alice-pw");
/// How long a set-up may take to agree.
const SETUP: Duration = Duration::from_secs(20);

/// The `redis-server` arguments of a data node with a TLS port `tls_port`, its certificate
/// `server.pem` signed by `redis-ca.pem` in `dir`; clients need no certificate.
fn tls_args(dir: &Path, tls_port: u16) -> Vec<String> {
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    [
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &file("server.pem"),
        "--tls-key-file",
        &file("server.key"),
        "--tls-ca-cert-file",
        &file("redis-ca.pem"),
        "--tls-auth-clients",
        "no",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect()
}

/// The connections Redis has on `port` now (`CLIENT LIST` `laddr`), its own `redis-cli`
/// and the sentinels' left out.
fn clients_on(redis: &Redis, port: u16) -> usize {
    let suffix = format!(":{port}");
    redis
        .cli(&["CLIENT", "LIST"])
        .lines()
        .filter(|line| !line.contains("cmd=client|list") && !line.contains("name=sentinel-"))
        .filter(|line| {
            line.split(' ')
                .any(|field| field.starts_with("laddr=") && field.ends_with(&suffix))
        })
        .count()
}

/// Starts `n1` and `n2` on `url` trusting the CA at `ca`, with alice; an event published
/// on n1 reaches alice's connection on n2.
fn deliver_across(url: &str, ca: &Path) -> (Node, Node) {
    let hash = cheap_hash(ALICE.1);
    let ca = ca.to_string_lossy().into_owned();
    let configure = |config: TestConfig| config.set("cluster", "redis_ca_file", ca.as_str());
    let n1 = Node::start_url(url, "tls", "n1", &[(ALICE.0, hash.as_str())], &configure);
    let n2 = Node::start_url(url, "tls", "n2", &[(ALICE.0, hash.as_str())], &configure);
    let mut alice = n2.login(ALICE.0, ALICE.1);
    let counted = wait_until(Duration::from_secs(10), || n1.connections(ALICE.0) == 1);
    assert!(counted, "n1 does not count alice's login on n2");
    assert_eq!(n1.publish_ok(ALICE.0, "over TLS"), 1);
    expect_event(&mut alice, "over TLS", Duration::from_secs(5));
    (n1, n2)
}

/// A node on `url` trusting `other-ca.pem` (which did not sign Redis's certificate): it
/// starts, stays unreachable, says why in one log line — naming the certificate — however
/// often it tries again (`redis` logs, at `verbose`, each handshake the node broke off),
/// answers publishes 503 and serves its own clients.
fn wrong_ca_refused(url: &str, dir: &Path, redis: &Redis) {
    make_ca(dir, "other");
    let config = TestConfig::new()
        .set("admin", "listen", "127.0.0.1:0")
        .auth("bcrypt_cost", 4)
        .set("cluster", "redis", url)
        .set("cluster", "node", "n1")
        .set(
            "cluster",
            "redis_ca_file",
            dir.join("other-ca.pem").to_string_lossy().into_owned(),
        );
    let hash = cheap_hash(ALICE.1);
    let server = TestServer::start_with_hashes(&config, &[(ALICE.0, hash.as_str())]);
    server.wait_for_log("unreachable (", Duration::from_secs(15));
    server.wait_for_log("(admin API)", Duration::from_secs(15));
    // One line for the change of state, not one per attempt: counted once the node has
    // tried again a few times.
    redis.wait_refused_tls_handshakes(3);
    let log = server.stderr_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("unreachable ("))
        .collect();
    assert_eq!(lines.len(), 1, "one line, not one per attempt:\n{log}");
    assert!(
        lines[0].contains("certificate"),
        "the reason is given: {}",
        lines[0]
    );
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
    let mut alice = server.logged_in(ALICE.0, ALICE.1);
    alice.send(&["prolongate"]);
    alice.expect(&["prolongate_ack"]);
}

#[test]
fn sentinel_over_tls_delivers_across_and_a_wrong_ca_is_refused() {
    let Some(dir) = ca_and_server_pair("redis") else {
        return;
    };
    let tls_port = free_port();
    let Some(master) = Redis::start_with(&tls_args(dir.path(), tls_port)) else {
        return;
    };
    // One sentinel, watching the master over TLS (so that it names the TLS port).
    let conf = dir.path().join("sentinel.conf");
    let file = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {tls_port} 1\n\
             tls-replication yes\n\
             tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n",
            file("server.pem"),
            file("server.key"),
            file("redis-ca.pem"),
        ),
    )
    .expect("write sentinel.conf");
    let Some(sentinel) = Redis::start_sentinel(&conf.display().to_string()) else {
        return;
    };
    let watching = wait_until(SETUP, || {
        sentinel
            .try_cli(&["SENTINEL", "MASTER", MASTER_NAME])
            .is_ok_and(|text| {
                text.lines()
                    .skip_while(|line| *line != "flags")
                    .nth(1)
                    .is_some_and(|flags| flags == "master")
            })
    });
    assert!(
        watching,
        "the sentinel does not see the master over TLS; its log:\n{}",
        sentinel.log()
    );
    let url = format!("rediss+sentinel://{}/{MASTER_NAME}", sentinel.addr());
    let (n1, n2) = deliver_across(&url, &dir.path().join("redis-ca.pem"));
    let address = format!("127.0.0.1:{tls_port}");
    for node in [&n1, &n2] {
        assert_eq!(node.cluster_redis().as_deref(), Some(address.as_str()));
    }
    // Both connections of both nodes are on the TLS port, none on the plain one.
    assert_eq!(
        clients_on(&master, tls_port),
        4,
        "{}",
        master.cli(&["CLIENT", "LIST"])
    );
    assert_eq!(clients_on(&master, master.addr().port()), 0);
    drop((n1, n2));

    wrong_ca_refused(&url, dir.path(), &master);
}

#[test]
fn redis_cluster_over_tls_delivers_across_and_a_wrong_ca_is_refused() {
    let Some(dir) = ca_and_server_pair("redis") else {
        return;
    };
    let mut servers = Vec::new();
    let mut tls_ports = Vec::new();
    for _ in 0..3 {
        let tls_port = free_port();
        let mut args = tls_args(dir.path(), tls_port);
        args.extend(
            [
                "--tls-cluster",
                "yes",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "{dir}/nodes.conf",
                "--cluster-node-timeout",
                "1000",
            ]
            .map(str::to_owned),
        );
        let Some(server) = Redis::start_with(&args) else {
            return;
        };
        servers.push(server);
        tls_ports.push(tls_port);
    }
    // Made one cluster through the plain ports; the bus speaks TLS.
    create_cluster(&servers, 0);
    let hosts: Vec<String> = tls_ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let url = format!("rediss+cluster://{}", hosts.join(","));
    let (n1, n2) = deliver_across(&url, &dir.path().join("redis-ca.pem"));
    let named = n1.cluster_redis().expect("cluster_redis");
    for host in &hosts {
        assert!(
            named.contains(host.as_str()),
            "/healthz names the TLS ports: {named}"
        );
    }
    // Every connection of the nodes is on a TLS port; each master has some.
    for (server, tls_port) in servers.iter().zip(&tls_ports) {
        assert!(
            clients_on(server, *tls_port) >= 2,
            "{}",
            server.cli(&["CLIENT", "LIST"])
        );
        assert_eq!(
            clients_on(server, server.addr().port()),
            0,
            "{}",
            server.cli(&["CLIENT", "LIST"])
        );
    }
    drop((n1, n2));

    wrong_ca_refused(&url, dir.path(), &servers[0]);
}
