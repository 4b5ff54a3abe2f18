//! Nodes over a Redis Cluster (`redis+cluster://`, SPEC §8): events and invalidations go by
//! sharded pub/sub on the shard that owns the user — `SPUBLISH` on every master, never
//! `PUBLISH` — exactly once and in order per publishing node for users spread over the
//! slots; a slot migration under a steady stream and a master's failover lose no
//! subscriber for longer than a few seconds.

use crate::common::brokers::RedisCluster;
use crate::common::cluster::{event_text, Node, SETTLE_TIMEOUT};
use crate::common::{
    cheap_hash, run_to_exit, tether_command, users_toml, wait_until, TestClient, TestConfig,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long a delivery across nodes may take while the cluster is healthy.
const DELIVERY: Duration = Duration::from_secs(5);
/// After a master is killed: its replica is promoted within ~3 s (node timeout 1 s); every
/// node must deliver across again within 10 s of that (SPEC §8's bound for Sentinel, kept
/// for a Redis Cluster too).
const FAILOVER_BOUND: Duration = Duration::from_secs(10);
/// How long a user's subscription may be missing after its slot moved: the node
/// resubscribes on the `sunsubscribe` push Redis sends, one round trip later (~0.2 s here
/// on a quiet machine). Asserted as "every user receives an event published after the
/// reshard within this", with room for a loaded 2-core machine.
const RESHARD_BOUND: Duration = Duration::from_secs(5);

/// `count` users `u0000`… with one password.
fn users(count: usize) -> Vec<(String, String)> {
    let hash = cheap_hash("pw");
    (0..count)
        .map(|i| (format!("u{i:04}"), hash.clone()))
        .collect()
}

/// Starts node `name` on `cluster` with `users`.
fn node(cluster: &RedisCluster, name: &str, users: &[(String, String)]) -> Node {
    let users: Vec<(&str, &str)> = users
        .iter()
        .map(|(name, hash)| (name.as_str(), hash.as_str()))
        .collect();
    Node::start_url(&cluster.url(), "tether", name, &users, &|config| config)
}

/// Publishes one batch (at most 1000 events) on `node`; every entry must be accepted.
fn publish_batch(node: &Node, events: &[(String, String)]) {
    let entries: Vec<Value> = events
        .iter()
        .map(|(user, text)| json!({"user": user, "text": text}))
        .collect();
    let (status, body) = node.call("POST", "/v1/events", Some(&json!({ "events": entries })));
    assert_eq!(status, 202, "batch publish: {body}");
}

/// Sums `calls` of `command` in `INFO commandstats` over the masters.
fn calls_per_master(cluster: &RedisCluster, command: &str) -> Vec<u64> {
    cluster
        .masters()
        .iter()
        .map(|master| master.command_calls(command))
        .collect()
}

#[test]
fn events_go_by_spublish_on_every_master_once_and_in_order_and_survive_reshard_and_failover() {
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    const USERS: usize = 1000;
    let users = users(USERS);
    // One more user, for an invalidation.
    let mut everyone = users.clone();
    everyone.push(("victim".to_owned(), cheap_hash("pw")));
    let n1 = node(&cluster, "n1", &everyone);
    let n2 = node(&cluster, "n2", &everyone);
    let healthz = n1.cluster_redis().expect("cluster_redis in /healthz");
    for master in cluster.masters() {
        assert!(
            healthz.contains(&master.addr().to_string()),
            "/healthz names the masters: {healthz}"
        );
    }
    // One connection per user on n2; n1 publishes.
    let mut clients: Vec<TestClient> = users.iter().map(|(name, _)| n2.login(name, "pw")).collect();
    let counted = wait_until(SETTLE_TIMEOUT, || n1.connections(&users[USERS - 1].0) == 1);
    assert!(counted, "n1 does not count n2's connections");
    for master in cluster.masters() {
        master.cli(&["CONFIG", "RESETSTAT"]);
    }

    // 1. Three events per user, interleaved, in one batch per round: each user gets its
    //    three once and in order, nothing else.
    const ROUNDS: usize = 3;
    for round in 0..ROUNDS {
        let batch: Vec<(String, String)> = users
            .iter()
            .map(|(name, _)| (name.clone(), format!("{name}-{round}")))
            .collect();
        publish_batch(&n1, &batch);
    }
    for (client, (name, _)) in clients.iter_mut().zip(&users) {
        for round in 0..ROUNDS {
            let message = client.recv_within(DELIVERY);
            assert_eq!(event_text(&message), format!("{name}-{round}"), "{name}");
        }
    }
    for client in clients.iter_mut().step_by(50) {
        client.expect_nothing_for(Duration::from_millis(20));
    }
    let spublish = calls_per_master(&cluster, "spublish");
    let evalsha: u64 = calls_per_master(&cluster, "evalsha").iter().sum();
    assert!(
        spublish.iter().all(|&calls| calls > 0),
        "SPUBLISH on every master: {spublish:?}"
    );
    assert_eq!(
        spublish.iter().sum::<u64>(),
        (USERS * ROUNDS) as u64,
        "one SPUBLISH per event: {spublish:?}"
    );
    assert_eq!(
        calls_per_master(&cluster, "publish").iter().sum::<u64>(),
        0,
        "no PUBLISH on a Redis Cluster"
    );
    assert!(
        evalsha >= (USERS * ROUNDS) as u64,
        "one script run per event: {evalsha}"
    );

    // An operator's invalidation on n1 reaches the user's connection on n2, by SPUBLISH.
    let mut victim = n2.login("victim", "pw");
    let counted = wait_until(SETTLE_TIMEOUT, || n1.connections("victim") == 1);
    assert!(counted, "n1 does not count the victim's connection on n2");
    let (status, body) = n1.invalidate("victim");
    assert_eq!((status, body), (200, json!({"invalidated": 1})));
    assert_eq!(victim.recv_within(DELIVERY), ["invalidated"]);
    assert_eq!(
        calls_per_master(&cluster, "spublish").iter().sum::<u64>(),
        (USERS * ROUNDS) as u64 + 1,
        "one SPUBLISH for the invalidation"
    );

    // Redis cuts the subscription connections (`CLIENT KILL TYPE pubsub` on every master):
    // n2 notices, reconnects, resubscribes; every user is reached again.
    let reconnects = n2.metric("tether_cluster_reconnects_total");
    for master in cluster.masters() {
        master.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    }
    let again = wait_until(SETTLE_TIMEOUT, || {
        n2.metric("tether_cluster_reconnects_total") > reconnects
            && n2.cluster_state().as_deref() == Some("connected")
    });
    assert!(
        again,
        "n2 did not reconnect after its subscriptions were cut"
    );
    reach_everyone(&n1, &mut clients, &users, "after-kill", DELIVERY, &[&n2]);

    // 2. A slot migration under a steady stream: afterwards every user is reached again
    //    within RESHARD_BOUND.
    let stream_users: Vec<&str> = users.iter().map(|(name, _)| name.as_str()).collect();
    let masters = cluster.masters();
    let (from, to) = (masters[0], masters[1]);
    let log_before = n2.server.stderr_text().len();
    let start = Instant::now();
    std::thread::scope(|scope| {
        let reshard = scope.spawn(|| cluster.reshard(from, to, 500));
        let mut round = 0;
        while !reshard.is_finished() {
            let batch: Vec<(String, String)> = stream_users
                .iter()
                .step_by(10)
                .map(|name| ((*name).to_owned(), format!("r{round}")))
                .collect();
            let entries: Vec<Value> = batch
                .iter()
                .map(|(user, text)| json!({"user": user, "text": text}))
                .collect();
            // During the move a publish may be refused (503): the backend retries.
            let _ = n1.call("POST", "/v1/events", Some(&json!({ "events": entries })));
            round += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        reshard.join().expect("reshard");
    });
    eprintln!("reshard of 500 slots took {:?}", start.elapsed());
    // The subscriber follows the moved slots without losing Redis.
    let lost: Vec<String> = n2.server.stderr_text()[log_before..]
        .lines()
        .filter(|line| line.contains("unreachable ("))
        .map(str::to_owned)
        .collect();
    assert!(
        lost.is_empty(),
        "n2 lost the cluster during the reshard: {lost:?}"
    );
    // What the stream delivered is still queued: reach_everyone skips it.
    let after = Instant::now();
    reach_everyone(
        &n1,
        &mut clients,
        &users,
        "after-reshard",
        RESHARD_BOUND,
        &[&n2],
    );
    eprintln!(
        "every user reached again {:?} after the reshard",
        after.elapsed()
    );

    // 3. A master killed: its replica takes over, delivery resumes within FAILOVER_BOUND.
    let victim = cluster
        .servers
        .iter()
        .position(|server| {
            server.running() && crate::common::brokers::SentinelSet::is_master(server)
        })
        .expect("a master");
    let killed_at = Instant::now();
    cluster.servers[victim].kill();
    let promoted = wait_until(Duration::from_secs(15), || {
        cluster.masters().len() == 3
            && cluster
                .masters()
                .iter()
                .all(|m| m.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    });
    assert!(promoted, "no replica took over");
    let promoted_at = Instant::now();
    eprintln!(
        "replica promoted {:?} after the kill",
        promoted_at - killed_at
    );
    let left = FAILOVER_BOUND.saturating_sub(promoted_at.elapsed());
    reach_everyone(
        &n1,
        &mut clients,
        &users,
        "after-failover",
        left,
        &[&n1, &n2],
    );
    eprintln!(
        "delivery resumed {:?} after the promotion",
        promoted_at.elapsed()
    );
}

/// Publishes `text` to every user on `node` (again to those not reached, refusals
/// included) until each of `clients` has received it; panics after `bound`.
fn reach_everyone(
    node: &Node,
    clients: &mut [TestClient],
    users: &[(String, String)],
    text: &str,
    bound: Duration,
    logs_of: &[&Node],
) {
    let deadline = Instant::now() + bound;
    let mut missing: Vec<usize> = (0..users.len()).collect();
    let mut attempt = 0;
    while !missing.is_empty() && Instant::now() < deadline {
        for chunk in missing.chunks(1000) {
            let entries: Vec<Value> = chunk
                .iter()
                .map(|&i| json!({"user": users[i].0, "text": format!("{text}-{attempt}")}))
                .collect();
            let _ = node.call("POST", "/v1/events", Some(&json!({ "events": entries })));
        }
        // Clients reached have their event buffered already: only the others wait.
        let pass = Instant::now() + Duration::from_millis(500);
        missing.retain(|&i| {
            let wait = pass.saturating_duration_since(Instant::now());
            while let Ok(message) = clients[i].try_recv(wait) {
                if event_text(&message).starts_with(text) {
                    return false;
                }
            }
            true
        });
        attempt += 1;
    }
    let names: Vec<&str> = missing.iter().map(|&i| users[i].0.as_str()).collect();
    let logs: Vec<String> = logs_of
        .iter()
        .map(|node| node.server.stderr_text())
        .collect();
    assert!(
        names.is_empty(),
        "{} user(s) not reached ({text}) within {bound:?}: {:?}…; logs:\n{}",
        names.len(),
        &names[..names.len().min(10)],
        logs.join("\n----\n")
    );
}

/// Issue 23's guarantees hold over a Redis Cluster too, each script on one slot: an event
/// id is published once whichever node the retry goes to, a node name another live node
/// holds is refused, and ten failed logins through one node throttle the pair on the other
/// (told on the sharded throttle channel).
#[test]
fn event_ids_name_claims_and_the_login_throttle_hold_over_a_redis_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let users = users(2);
    let (alice, bob) = (users[0].0.as_str(), users[1].0.as_str());
    let n1 = node(&cluster, "n1", &users);
    let n2 = node(&cluster, "n2", &users);
    let mut on_n2 = n2.login(alice, "pw");
    let counted = wait_until(SETTLE_TIMEOUT, || n1.connections(alice) == 1);
    assert!(counted, "n1 does not count n2's connection");

    // 1. An event id: delivered once; its retry on either node answers duplicate.
    let event = json!({"user": alice, "text": "once", "id": "order-7"});
    let (status, first) = n1.call("POST", "/v1/events", Some(&event));
    assert_eq!(status, 202, "{first}");
    assert_eq!(event_text(&on_n2.recv_within(DELIVERY)), "once");
    for node in [&n2, &n1] {
        let (status, again) = node.call("POST", "/v1/events", Some(&event));
        assert_eq!(status, 202, "{again}");
        assert_eq!(again["duplicate"], true, "{again}");
        assert_eq!(again["time"], first["time"], "{again}");
    }
    on_n2.expect_nothing_for(Duration::from_millis(400));

    // 2. The name n1 is held: another node called n1 refuses to start.
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("server.toml");
    let config = TestConfig::new()
        .set("admin", "listen", "")
        .set("cluster", "redis", cluster.url())
        .set("cluster", "node", "n1")
        .set("cluster", "prefix", "tether");
    std::fs::write(&config_path, config.to_toml()).expect("write config");
    std::fs::write(dir.path().join("users.toml"), users_toml(&[])).expect("write users");
    let ran = run_to_exit(tether_command(&config_path), Duration::from_secs(20));
    assert_eq!(ran.status.code(), Some(1), "stderr:\n{}", ran.stderr);
    assert!(
        ran.stderr.contains("\"n1\"") && ran.stderr.contains("another node holds it"),
        "{}",
        ran.stderr
    );

    // 3. Ten failures through n1: n2 refuses even the right password, unchecked; another
    //    name is not concerned.
    for _ in 0..10 {
        assert_eq!(n1.server.login_reply(alice, "guess"), "login_invalid");
    }
    // At once: n2, if the sharded throttle channel has not brought it the pair yet, asks
    // the pair's shard before admitting the right password.
    assert_eq!(n2.server.login_reply(alice, "pw"), "login_invalid");
    assert_eq!(n2.server.login_reply(bob, "pw"), "login_valid");
}

/// `user`'s presence hash over a Redis Cluster: `tether:presence:{hex}`.
fn presence_key(user: &str) -> String {
    let hex: String = user.bytes().map(|b| format!("{b:02x}")).collect();
    format!("tether:presence:{{{hex}}}")
}

/// The fields of `key`, a hash on whichever master owns its slot (`redis-cli -c`).
fn hash_fields(cluster: &RedisCluster, key: &str) -> Vec<String> {
    let mut fields: Vec<String> = cluster.masters()[0]
        .cli(&["-c", "HKEYS", key])
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    fields.sort();
    fields
}

/// A node's heartbeat claims its name and renews it in one script run (the name's claim
/// sits on the live-node set's slot), with its probe of every master at the same time:
/// one `EVALSHA` per heartbeat, not a claim and then a renewal (two round trips, two
/// `EVALSHA`s). An idle node's only commands are its heartbeats: a `PING` to each master
/// and the script.
#[test]
fn a_heartbeat_claims_the_name_and_renews_the_node_in_one_script_run() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let n1 = node(&cluster, "n1", &users(1));
    for master in cluster.masters() {
        master.cli(&["CONFIG", "RESETSTAT"]);
    }
    let masters = cluster.masters().len() as u64;
    // Three heartbeats at least (one every 2 s).
    let beats = wait_until(Duration::from_secs(15), || {
        calls_per_master(&cluster, "ping").iter().sum::<u64>() >= 3 * masters
    });
    assert!(beats, "no heartbeat probed the masters");
    let evalsha: u64 = calls_per_master(&cluster, "evalsha").iter().sum();
    let pings: u64 = calls_per_master(&cluster, "ping").iter().sum();
    assert!(
        evalsha >= 1 && evalsha <= pings / masters + 1,
        "{evalsha} EVALSHA for {} heartbeat(s) ({pings} PING)",
        pings / masters
    );
    assert_eq!(n1.cluster_state().as_deref(), Some("connected"));
}

/// A run killed without withdrawing leaves its field (`n1#start-ms`) in its users'
/// presence hashes; the next run of the node deletes those at its start, and nothing of
/// another node.
#[test]
fn a_restarted_node_deletes_the_presence_its_killed_run_left() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let users = users(2);
    let (alice, bob) = (users[0].0.as_str(), users[1].0.as_str());
    let mut n1 = node(&cluster, "n1", &users);
    let n2 = node(&cluster, "n2", &users);
    let _on_n1 = n1.login(alice, "pw");
    let _on_n2 = n2.login(bob, "pw");
    let counted = wait_until(SETTLE_TIMEOUT, || {
        n2.connections(alice) == 1 && n1.connections(bob) == 1
    });
    assert!(counted, "the nodes do not count each other's connections");
    let left = hash_fields(&cluster, &presence_key(alice));
    assert!(
        left.len() == 1 && left[0].starts_with("n1#"),
        "alice's presence: {left:?}"
    );
    let kept = hash_fields(&cluster, &presence_key(bob));
    assert!(
        kept.len() == 1 && kept[0].starts_with("n2#"),
        "bob's presence: {kept:?}"
    );

    n1.server.signal(nix::sys::signal::Signal::SIGKILL);
    n1.server.wait_exit(Duration::from_secs(10));
    // The next run takes the name over (its holder, a process of this host, is gone).
    n1 = node(&cluster, "n1", &users);
    let swept = wait_until(SETTLE_TIMEOUT, || {
        !hash_fields(&cluster, &presence_key(alice)).contains(&left[0])
    });
    assert!(
        swept,
        "the killed run's field is still there: {:?}; log:\n{}",
        hash_fields(&cluster, &presence_key(alice)),
        n1.server.stderr_text()
    );
    assert_eq!(hash_fields(&cluster, &presence_key(bob)), kept);
    assert!(n1
        .server
        .stderr_text()
        .contains("removed 1 presence field(s) left by earlier runs of node \"n1\""));
}

/// Verifiers over a Redis Cluster (SPEC §5): users who logged in on n1 are admitted on n2
/// without bcrypt, their logins sent at once — n2's checks (`GETEX`) and n1's keeps (`SET`)
/// go in the broker's batches, one pipeline per master — and their verifiers live on
/// every master, each on its user's slot.
#[test]
fn verifiers_are_kept_and_checked_on_every_master_of_a_redis_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("verifier.key");
    let keygen = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("keygen")
        .arg(&key)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tether keygen");
    assert!(keygen.status.success(), "keygen: {keygen:?}");
    const USERS: usize = 60;
    let users = users(USERS);
    let pairs: Vec<(&str, &str)> = users
        .iter()
        .map(|(name, hash)| (name.as_str(), hash.as_str()))
        .collect();
    let key_path = key.to_string_lossy().into_owned();
    let configure = |config: TestConfig| config.auth("verifier_key_file", key_path.as_str());
    let n1 = Node::start_url(&cluster.url(), "tether", "n1", &pairs, &configure);
    let n2 = Node::start_url(&cluster.url(), "tether", "n2", &pairs, &configure);
    let storm = |node: &Node| -> Vec<String> {
        let mut clients: Vec<TestClient> = users
            .iter()
            .map(|(name, _)| {
                let mut client = TestClient::connect(node.server.addr());
                client.send(&["login", name, "pw"]);
                client
            })
            .collect();
        clients
            .iter_mut()
            .map(|client| client.recv().join(" "))
            .collect()
    };
    let checks = |node: &Node| {
        (
            node.metric("tether_password_check_seconds_count") as u64,
            node.metric("tether_password_checks_saved_total") as u64,
        )
    };
    assert!(storm(&n1).iter().all(|reply| reply == "login_valid"));
    assert_eq!(checks(&n1), (USERS as u64, 0));
    let kept = wait_until(SETTLE_TIMEOUT, || {
        cluster
            .masters()
            .iter()
            .map(|master| {
                master
                    .cli(&["KEYS", "tether:verifier:*"])
                    .lines()
                    .filter(|l| !l.is_empty())
                    .count()
            })
            .sum::<usize>()
            == USERS
    });
    assert!(kept, "the verifiers did not reach Redis");
    for master in cluster.masters() {
        assert!(
            !master.cli(&["KEYS", "tether:verifier:*"]).trim().is_empty(),
            "a master without verifiers"
        );
    }
    assert!(storm(&n2).iter().all(|reply| reply == "login_valid"));
    assert_eq!(checks(&n2), (0, USERS as u64), "n2 ran bcrypt");
}

/// After a reshard, a node that follows none of the moved users (no sharded subscription:
/// Redis tells it nothing) still has the old slot map: its next batches meet `MOVED` on
/// the old owner. Those commands were not run; sent again through the crate's routing,
/// each event arrives once and in order, and every publish is accepted.
#[test]
fn a_publisher_with_a_stale_slot_map_delivers_each_event_once_and_in_order() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    const USERS: usize = 200;
    let users = users(USERS);
    let n1 = node(&cluster, "n1", &users);
    let n2 = node(&cluster, "n2", &users);
    let mut clients: Vec<TestClient> = users.iter().map(|(name, _)| n2.login(name, "pw")).collect();
    let counted = wait_until(SETTLE_TIMEOUT, || n1.connections(&users[USERS - 1].0) == 1);
    assert!(counted, "n1 does not count n2's connections");
    let masters = cluster.masters();
    cluster.reshard(masters[0], masters[1], 3000);
    // n2 follows its users to their new shard: every channel has its subscriber again.
    let shard_channels = || -> usize {
        cluster
            .masters()
            .iter()
            .map(|master| {
                master
                    .cli(&["PUBSUB", "SHARDCHANNELS", "tether:user:*"])
                    .lines()
                    .filter(|line| !line.is_empty())
                    .count()
            })
            .sum()
    };
    let followed = wait_until(SETTLE_TIMEOUT, || shard_channels() == USERS);
    assert!(
        followed,
        "{} of {USERS} channels subscribed",
        shard_channels()
    );
    let spublish_before = calls_per_master(&cluster, "spublish").iter().sum::<u64>();
    const ROUNDS: usize = 3;
    for round in 0..ROUNDS {
        let batch: Vec<(String, String)> = users
            .iter()
            .map(|(name, _)| (name.clone(), format!("{name}-{round}")))
            .collect();
        publish_batch(&n1, &batch);
    }
    for (client, (name, _)) in clients.iter_mut().zip(&users) {
        for round in 0..ROUNDS {
            let message = client.recv_within(DELIVERY);
            assert_eq!(event_text(&message), format!("{name}-{round}"), "{name}");
        }
    }
    for client in clients.iter_mut().step_by(10) {
        client.expect_nothing_for(Duration::from_millis(20));
    }
    assert_eq!(
        calls_per_master(&cluster, "spublish").iter().sum::<u64>() - spublish_before,
        (USERS * ROUNDS) as u64,
        "one SPUBLISH per event"
    );
    assert!(
        !n1.server.stderr_text().contains("unreachable ("),
        "n1 lost the cluster:\n{}",
        n1.server.stderr_text()
    );
}
