//! Answers that tell the truth and guards that guard, in a cluster and alone (issue 23,
//! SPEC §6 and §8): idempotent publishing with `"id"` and `504` when the outcome is
//! unknown; presence rewritten by a node that was forgotten, and a login's count in Redis
//! before its `login_valid`; unique node names; one login throttle for the cluster; a
//! stale invalidation that spares the sessions made after it.

use crate::cluster_internals::{embedded_node, two_nodes_one_relayed};
use crate::common::cluster::{event_text, expect_event, Cluster, Node};
use crate::common::{
    admin_addr, admin_call, run_to_exit, tether_command, users_toml, wait_until, TestConfig,
    TestServer,
};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// SPEC §8: a dead, paused or cut Redis connection is noticed within 10 s.
const NOTICED: Duration = Duration::from_secs(10);
/// How long a node may take to be back once Redis is.
const BACK: Duration = Duration::from_secs(15);
/// Long enough to see that nothing more comes.
const QUIET: Duration = Duration::from_millis(400);

const ALICE: (&str, &str) = ("alice", "pw-a");
const BOB: (&str, &str) = ("bob", "pw-b");
/// The user of `cluster_internals::two_nodes_one_relayed`.
const RELAYED_ALICE: (&str, &str) = ("alice", "alice-pw");

/// `POST /v1/events` with `body` on `node`.
fn post(node: &Node, body: &Value) -> (u16, Value) {
    node.call("POST", "/v1/events", Some(body))
}

/// A node alone (no Redis) with its admin API: the server and `http://ADDR`.
fn alone() -> (TestServer, String) {
    let config = TestConfig::new()
        .set("admin", "listen", "127.0.0.1:0")
        .set("events", "time_zone", "UTC")
        .set("auth", "bcrypt_cost", 4);
    let server = TestServer::start(&config, &[ALICE, BOB]);
    server.wait_for_log("(admin API)", Duration::from_secs(10));
    let base = format!("http://{}", admin_addr(&server.stderr_text()));
    (server, base)
}

/// `POST /v1/events` with `body` on the admin API at `base`.
fn post_alone(base: &str, body: &Value) -> (u16, Value) {
    let (status, text) = admin_call(base, None, "POST", "/v1/events", Some(&body.to_string()));
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

// ---------------------------------------------------------------------------------------
// 1. Idempotent publishing; 503 only when nothing was sent, 504 when the outcome is unknown.
// ---------------------------------------------------------------------------------------

#[test]
fn alone_an_event_id_is_delivered_once_and_its_retry_answers_duplicate() {
    let (server, base) = alone();
    let mut alice = server.logged_in(ALICE.0, ALICE.1);
    let mut bob = server.logged_in(BOB.0, BOB.1);

    let (status, first) = post_alone(&base, &json!({"user": "alice", "text": "one", "id": "e-1"}));
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["connections"], 1, "{first}");
    assert!(first.get("duplicate").is_none(), "a first event: {first}");
    expect_event(&mut alice, "one", Duration::from_secs(5));

    let (status, again) = post_alone(&base, &json!({"user": "alice", "text": "one", "id": "e-1"}));
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(
        again["time"], first["time"],
        "the first event's time: {again}"
    );
    assert_eq!(again["connections"], 0, "{again}");
    alice.expect_nothing_for(QUIET);

    // In a batch: a known id, the same new id twice, and an event without an id.
    let (status, batch) = post_alone(
        &base,
        &json!({"events": [
            {"user": "alice", "text": "one", "id": "e-1"},
            {"user": "bob", "text": "two", "id": "e-2"},
            {"user": "bob", "text": "two", "id": "e-2"},
            {"user": "alice", "text": "three"},
        ]}),
    );
    assert_eq!(status, 202, "{batch}");
    let duplicates: Vec<bool> = batch["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|entry| entry["duplicate"] == true)
        .collect();
    assert_eq!(duplicates, [true, false, true, false], "{batch}");
    expect_event(&mut bob, "two", Duration::from_secs(5));
    expect_event(&mut alice, "three", Duration::from_secs(5));
    bob.expect_nothing_for(QUIET);
    alice.expect_nothing_for(QUIET);

    // The same id for another user is its own event only if the id differs: ids are the
    // publisher's, across users.
    let (status, other) = post_alone(&base, &json!({"user": "bob", "text": "x", "id": "e-1"}));
    assert_eq!(
        (status, other["duplicate"].clone()),
        (202, json!(true)),
        "{other}"
    );
    bob.expect_nothing_for(QUIET);
}

#[test]
fn bad_event_ids_are_refused_with_400_and_nothing_is_delivered() {
    let (server, base) = alone();
    let mut alice = server.logged_in(ALICE.0, ALICE.1);
    let long = "é".repeat(129);
    for id in [json!(""), json!(long), json!(17), json!(null), json!(["a"])] {
        let (status, body) = post_alone(&base, &json!({"user": "alice", "text": "x", "id": id}));
        if id.is_null() {
            // `null` is no id at all.
            assert_eq!(status, 202, "id {id}: {body}");
            expect_event(&mut alice, "x", Duration::from_secs(5));
            continue;
        }
        assert_eq!(status, 400, "id {id}: {body}");
        let (status, body) = post_alone(
            &base,
            &json!({"events": [{"user": "alice", "text": "y"}, {"user": "alice", "text": "x", "id": id}]}),
        );
        assert_eq!(status, 400, "batch with id {id}: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains("events[1]"),
            "{body}"
        );
    }
    let exactly = "é".repeat(128);
    let (status, body) = post_alone(&base, &json!({"user": "alice", "text": "z", "id": exactly}));
    assert_eq!(status, 202, "{body}");
    expect_event(&mut alice, "z", Duration::from_secs(5));
    // An id beside a batch's "events" is not where ids go.
    let (status, body) = post_alone(
        &base,
        &json!({"id": "x", "events": [{"user": "alice", "text": "w"}]}),
    );
    assert_eq!(status, 400, "{body}");
    alice.expect_nothing_for(QUIET);
}

#[test]
fn in_a_cluster_an_event_id_is_delivered_once_whichever_node_the_retry_goes_to() {
    let Some(cluster) = Cluster::start(2, &[ALICE]) else {
        return;
    };
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let [mut on_n1, mut on_n2] = cluster.login_everywhere(ALICE);
    let (status, first) = post(
        n1,
        &json!({"user": "alice", "text": "once", "id": "order-7"}),
    );
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["connections"], 2, "{first}");
    expect_event(&mut on_n1, "once", Duration::from_secs(5));
    expect_event(&mut on_n2, "once", Duration::from_secs(5));
    for node in [n2, n1] {
        let (status, again) = post(
            node,
            &json!({"user": "alice", "text": "once", "id": "order-7"}),
        );
        assert_eq!(status, 202, "{again}");
        assert_eq!(again["duplicate"], true, "{again}");
        assert_eq!(again["time"], first["time"], "{again}");
    }
    let (status, batch) = post(
        n2,
        &json!({"events": [
            {"user": "alice", "text": "once", "id": "order-7"},
            {"user": "alice", "text": "new", "id": "order-8"},
            {"user": "alice", "text": "new", "id": "order-8"},
        ]}),
    );
    assert_eq!(status, 202, "{batch}");
    assert_eq!(
        batch["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|entry| entry["duplicate"] == true)
            .collect::<Vec<_>>(),
        [true, false, true],
        "{batch}"
    );
    expect_event(&mut on_n1, "new", Duration::from_secs(5));
    expect_event(&mut on_n2, "new", Duration::from_secs(5));
    on_n1.expect_nothing_for(QUIET);
    on_n2.expect_nothing_for(QUIET);
}

#[test]
fn a_publish_redis_stops_answering_is_504_and_its_retry_with_the_id_is_not_delivered_twice() {
    let Some(cluster) = Cluster::start(2, &[ALICE]) else {
        return;
    };
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let [_on_n1, mut on_n2] = cluster.login_everywhere(ALICE);

    // Redis stops while the node still counts it connected: the event is sent, and no
    // answer comes (3 s).
    cluster.redis.pause();
    let (status, body) = post(
        n1,
        &json!({"user": "alice", "text": "maybe", "id": "pay-1"}),
    );
    assert_eq!(status, 504, "outcome unknown, not 'nothing sent': {body}");
    // Noticed: nothing is sent any more, and that is what 503 says.
    n1.wait_cluster_state("unreachable", NOTICED);
    let (status, body) = post(
        n1,
        &json!({"user": "alice", "text": "never", "id": "pay-0"}),
    );
    assert_eq!(status, 503, "{body}");
    // Redis resumes and runs what it had been sent.
    cluster.redis.resume();
    n1.wait_cluster_state("connected", BACK);
    let (status, retry) = post(
        n1,
        &json!({"user": "alice", "text": "maybe", "id": "pay-1"}),
    );
    assert_eq!(status, 202, "{retry}");
    assert_eq!(
        retry["duplicate"], true,
        "the retry of an event Redis ran: {retry}"
    );
    let (status, never) = post(n1, &json!({"user": "alice", "text": "now", "id": "pay-0"}));
    assert_eq!(status, 202, "{never}");
    assert!(
        never.get("duplicate").is_none(),
        "503 sent nothing: {never}"
    );
    // alice on n2 got "maybe" at most once (once if n2 was still subscribed when Redis
    // ran it), then "now".
    let mut texts = Vec::new();
    while let Ok(message) = on_n2.try_recv(Duration::from_secs(2)) {
        texts.push(event_text(&message).to_owned());
    }
    assert!(
        texts == ["now"] || texts == ["maybe", "now"],
        "alice on n2 received {texts:?}"
    );

    // A batch: 504 as a whole when its entries' outcome is unknown; its retry delivers
    // nothing twice.
    let batch = json!({"events": [
        {"user": "alice", "text": "b-1", "id": "pay-2"},
        {"user": "alice", "text": "b-2", "id": "pay-3"},
    ]});
    cluster.redis.pause();
    let (status, body) = post(n1, &batch);
    assert_eq!(status, 504, "{body}");
    n1.wait_cluster_state("unreachable", NOTICED);
    cluster.redis.resume();
    n1.wait_cluster_state("connected", BACK);
    let (status, retry) = post(n1, &batch);
    assert_eq!(status, 202, "{retry}");
    // The first entry was sent (Redis ran it when it resumed): a duplicate now. The
    // second may not have been sent (it waited behind the first): delivered now if not.
    let duplicates: Vec<bool> = retry["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|entry| entry["duplicate"] == true)
        .collect();
    assert_eq!(duplicates.first(), Some(&true), "{retry}");
    let mut texts = Vec::new();
    while let Ok(message) = on_n2.try_recv(Duration::from_secs(2)) {
        texts.push(event_text(&message).to_owned());
    }
    let mut unique = texts.clone();
    unique.dedup();
    assert_eq!(
        unique, texts,
        "alice on n2 received an event twice: {texts:?}"
    );
    if duplicates.get(1) == Some(&false) {
        assert!(texts.contains(&"b-2".to_owned()), "{texts:?}");
    }
    let _ = n2;
    on_n2.expect_nothing_for(QUIET);
}

// ---------------------------------------------------------------------------------------
// 3. Counts that go stale.
// ---------------------------------------------------------------------------------------

/// Does to `node`'s entries in Redis what the other nodes' heartbeats do to a node silent
/// for a minute (and what a minute does to its claim on its name): forgets it. A test
/// cannot wait the 65 s; the state it leaves is the same.
fn forget(cluster: &Cluster, node: &str) {
    let prefix = &cluster.prefix;
    cluster
        .redis
        .cli(&["ZREM", &format!("{prefix}:nodes"), node]);
    cluster.redis.cli(&[
        "DEL",
        &format!("{prefix}:node:{node}"),
        &format!("{prefix}:owner:{node}"),
    ]);
}

#[test]
fn a_node_forgotten_while_paused_writes_its_presence_again_and_is_counted_within_10_s() {
    let Some(cluster) = Cluster::start(2, &[ALICE]) else {
        return;
    };
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let mut on_n1 = n1.login(ALICE.0, ALICE.1);
    cluster.wait_connections(ALICE.0, 1);

    n1.server.signal(Signal::SIGSTOP);
    forget(&cluster, "n1");
    assert_eq!(n2.connections(ALICE.0), 0, "n1 is forgotten");
    n1.server.signal(Signal::SIGCONT);
    let resumed = Instant::now();
    let counted = wait_until(Duration::from_secs(10), || n2.connections(ALICE.0) == 1);
    assert!(
        counted,
        "n1's connection is not counted again {:?} after it resumed; log:\n{}",
        resumed.elapsed(),
        n1.server.stderr_text()
    );
    assert_eq!(n2.publish_ok(ALICE.0, "counted"), 1);
    expect_event(&mut on_n1, "counted", Duration::from_secs(5));
}

#[test]
fn a_logins_count_is_in_redis_before_its_login_valid() {
    let Some(cluster) = Cluster::start(2, &[ALICE]) else {
        return;
    };
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    // n1 follows alice already: a second login needs no subscription.
    let _first = n1.login(ALICE.0, ALICE.1);
    cluster.wait_connections(ALICE.0, 1);

    let mut second = n1.client();
    cluster.redis.pause();
    second.send(&["login", ALICE.0, ALICE.1]);
    // Its count cannot reach a paused Redis, so its login_valid must wait (bounded).
    let early = second.try_recv(Duration::from_millis(400));
    cluster.redis.resume();
    assert!(
        early.is_err(),
        "login_valid came while its count could not be written: {early:?}"
    );
    assert_eq!(second.recv_within(Duration::from_secs(5)), ["login_valid"]);
    let written = cluster
        .redis
        .cli(&["HGET", &format!("{}:node:n1", cluster.prefix), ALICE.0]);
    assert_eq!(
        written.trim(),
        "2",
        "n1's count of alice in Redis at login_valid"
    );
    assert_eq!(n2.publish_ok(ALICE.0, "both"), 2);
}

// ---------------------------------------------------------------------------------------
// 4. Node names are unique.
// ---------------------------------------------------------------------------------------

#[test]
fn a_node_whose_name_another_live_node_holds_refuses_to_start() {
    let Some(cluster) = Cluster::start(1, &[ALICE]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("server.toml");
    let config = TestConfig::new()
        .set("admin", "listen", "")
        .set("cluster", "redis", cluster.redis.url())
        .set("cluster", "node", "n1")
        .set("cluster", "prefix", cluster.prefix.as_str());
    std::fs::write(&config_path, config.to_toml()).expect("write config");
    std::fs::write(dir.path().join("users.toml"), users_toml(&[])).expect("write users");
    let ran = run_to_exit(tether_command(&config_path), Duration::from_secs(20));
    assert_eq!(ran.status.code(), Some(1), "stderr:\n{}", ran.stderr);
    assert!(
        ran.stderr.contains("\"n1\"") && ran.stderr.contains("another node holds it"),
        "the refusal names the name and says another node holds it:\n{}",
        ran.stderr
    );
    // The live node was not disturbed.
    let mut alice = cluster.node(1).login(ALICE.0, ALICE.1);
    assert_eq!(cluster.node(1).publish_ok(ALICE.0, "still"), 1);
    expect_event(&mut alice, "still", Duration::from_secs(5));
}

#[test]
fn a_node_restarted_at_once_after_a_crash_takes_its_name_back() {
    let Some(mut cluster) = Cluster::start(2, &[ALICE]) else {
        return;
    };
    let crashed = cluster.nodes.remove(0);
    crashed.server.signal(Signal::SIGKILL);
    drop(crashed);
    // Its claim has not lapsed yet; the run holding it is gone.
    let hashes = cluster.user_hashes();
    let again = Node::start(&cluster.redis, &cluster.prefix, "n1", &hashes, &|config| {
        config
    });
    let mut alice = again.login(ALICE.0, ALICE.1);
    assert!(wait_until(Duration::from_secs(10), || cluster
        .node(1)
        .connections(ALICE.0)
        == 1));
    assert_eq!(cluster.node(1).publish_ok(ALICE.0, "back"), 1);
    expect_event(&mut alice, "back", Duration::from_secs(5));
}

#[test]
fn a_node_whose_name_was_taken_while_it_was_paused_stops_serving_the_cluster_side() {
    let Some(cluster) = Cluster::start(2, &[ALICE]) else {
        return;
    };
    let (old, n2) = (cluster.node(1), cluster.node(2));
    let mut on_old = old.login(ALICE.0, ALICE.1);
    cluster.wait_connections(ALICE.0, 1);
    old.server.signal(Signal::SIGSTOP);
    forget(&cluster, "n1");
    let hashes = cluster.user_hashes();
    let new = Node::start(&cluster.redis, &cluster.prefix, "n1", &hashes, &|config| {
        config
    });
    let mut on_new = new.login(ALICE.0, ALICE.1);
    old.server.signal(Signal::SIGCONT);

    old.wait_cluster_state("unreachable", Duration::from_secs(10));
    let (status, body) = old.publish(ALICE.0, "from the old one");
    assert_eq!(status, 503, "{body}");
    // It still serves its own clients.
    on_old.send(&["prolongate"]);
    on_old.expect(&["prolongate_ack"]);
    // The cluster goes on with the new holder of the name.
    assert!(wait_until(Duration::from_secs(10), || n2
        .connections(ALICE.0)
        == 1));
    assert_eq!(n2.publish_ok(ALICE.0, "to the new one"), 1);
    expect_event(&mut on_new, "to the new one", Duration::from_secs(5));
    on_old.expect_nothing_for(QUIET);
    std::thread::sleep(Duration::from_secs(3));
    let log = old.server.stderr_text();
    assert_eq!(
        log.matches("was taken over").count(),
        1,
        "one log line says so:\n{log}"
    );
    assert_eq!(old.cluster_state().as_deref(), Some("unreachable"));
}

// ---------------------------------------------------------------------------------------
// 6. A stale invalidation spares the sessions made after it.
// ---------------------------------------------------------------------------------------

#[test]
fn a_client_invalidate_queued_while_its_node_was_cut_off_spares_later_logins_elsewhere() {
    let Some((_redis, relay, n1, n2)) = two_nodes_one_relayed() else {
        return;
    };
    // n2 reaches Redis through the relay; n1 directly.
    let mut sender = n2.login(RELAYED_ALICE.0, RELAYED_ALICE.1);
    let mut before = n1.login(RELAYED_ALICE.0, RELAYED_ALICE.1);
    assert!(wait_until(Duration::from_secs(10), || n1
        .connections(RELAYED_ALICE.0)
        == 2));

    relay.cut();
    n2.wait_cluster_state("unreachable", NOTICED);
    sender.send(&["invalidate"]);
    sender.expect(&["invalidate_ack"]);
    before.expect_nothing_for(QUIET);
    // A login on n1 made after the invalidation (n1 notes its logins' order each second).
    std::thread::sleep(Duration::from_millis(1100));
    let mut after = n1.login(RELAYED_ALICE.0, RELAYED_ALICE.1);

    relay.restore();
    n2.wait_cluster_state("connected", BACK);
    assert_eq!(before.recv_within(BACK), ["invalidated"]);
    after.expect_nothing_for(QUIET);
    after.send(&["prolongate"]);
    after.expect(&["prolongate_ack"]);
    // A fresh invalidation still reaches every session, the later one included.
    sender.send(&["invalidate"]);
    sender.expect(&["invalidate_ack"]);
    assert_eq!(after.recv_within(Duration::from_secs(5)), ["invalidated"]);
}

// ---------------------------------------------------------------------------------------
// 5. One login throttle for the cluster.
// ---------------------------------------------------------------------------------------

/// `tether_logins_total{result="throttled"}` of `node`.
fn throttled_logins(node: &Node) -> f64 {
    node.metric("tether_logins_total{result=\"throttled\"}")
}

/// Sends `node` wrong passwords for `name` (each on a connection of its own) until it
/// refuses one unchecked; panics after 10 s.
fn wait_throttled(node: &Node, name: &str) {
    let before = throttled_logins(node);
    let throttled = wait_until(Duration::from_secs(10), || {
        assert_eq!(node.server.login_reply(name, "wrong"), "login_invalid");
        throttled_logins(node) > before
    });
    assert!(throttled, "the node does not throttle {name:?}");
}

#[test]
fn ten_failures_through_one_node_throttle_the_pair_on_every_node() {
    let Some(mut cluster) = Cluster::start(3, &[ALICE, BOB]) else {
        return;
    };
    for _ in 0..10 {
        assert_eq!(
            cluster.node(1).server.login_reply(ALICE.0, "guess"),
            "login_invalid"
        );
    }
    // At once, even the right password is refused elsewhere: a node that has not yet
    // received the pair on the throttle channel asks Redis before admitting it.
    assert_eq!(
        cluster.node(2).server.login_reply(ALICE.0, ALICE.1),
        "login_invalid"
    );
    for number in [2, 3] {
        let node = cluster.node(number);
        wait_throttled(node, ALICE.0);
        // Even the right password: no check until the minute ends.
        assert_eq!(node.server.login_reply(ALICE.0, ALICE.1), "login_invalid");
        // Another name from the same address is not concerned.
        assert_eq!(node.server.login_reply(BOB.0, BOB.1), "login_valid");
    }
    // A node that joins later learns it from the next failure's count.
    cluster.add_node(&|config| config);
    assert_eq!(
        cluster.node(4).server.login_reply(ALICE.0, "guess"),
        "login_invalid"
    );
    wait_throttled(cluster.node(4), ALICE.0);

    // Redis unreachable: each node falls back to its own count, and says so.
    cluster.redis.kill();
    for node in &cluster.nodes {
        node.wait_cluster_state("unreachable", NOTICED);
    }
    let n2 = cluster.node(2);
    assert!(
        n2.server
            .stderr_text()
            .contains("throttles logins by its own count of failures only"),
        "{}",
        n2.server.stderr_text()
    );
    for _ in 0..10 {
        assert_eq!(n2.server.login_reply(BOB.0, "guess"), "login_invalid");
    }
    assert_eq!(n2.server.login_reply(BOB.0, BOB.1), "login_invalid");
    assert_eq!(
        cluster.node(3).server.login_reply(BOB.0, BOB.1),
        "login_valid"
    );
}

/// The pair's failures in Redis (`{prefix}:throttle:{<hex name>}:<address>`, Redis ms).
fn throttle_key(prefix: &str, name: &str, client: &str) -> String {
    let hex: String = name.bytes().map(|byte| format!("{byte:02x}")).collect();
    format!("{prefix}:throttle:{{{hex}}}:{client}")
}

/// Redis's clock in ms (`TIME`).
fn redis_ms(redis: &crate::common::redis::Redis) -> u64 {
    let time = redis.cli(&["TIME"]);
    let mut parts = time
        .lines()
        .map(|part| part.trim().parse::<u64>().expect("TIME"));
    let (seconds, micros) = (parts.next().expect("seconds"), parts.next().expect("µs"));
    seconds * 1000 + micros / 1000
}

/// The window of the throttle channel, closed: a node that never heard of a pair the
/// cluster throttles (its failures are in Redis, the announcement never came) refuses the
/// right password all the same, and leaves the count in place; a pair short of the limit
/// is admitted and its failures forgotten.
#[test]
fn a_pair_throttled_in_redis_is_refused_by_a_node_that_was_not_told() {
    let Some(cluster) = Cluster::start(2, &[ALICE, BOB]) else {
        return;
    };
    let n1 = cluster.node(1);
    let (alice_key, bob_key) = (
        throttle_key(&cluster.prefix, ALICE.0, "127.0.0.1"),
        throttle_key(&cluster.prefix, BOB.0, "127.0.0.1"),
    );
    // Ten failures of alice and nine of bob, as other nodes would have counted them, with
    // no message on the throttle channel.
    let now = redis_ms(&cluster.redis).to_string();
    for (key, count) in [(&alice_key, 10), (&bob_key, 9)] {
        for number in 0..count {
            let member = format!("elsewhere:{number}");
            cluster.redis.cli(&["ZADD", key, &now, &member]);
        }
    }
    let before = throttled_logins(n1);
    assert_eq!(n1.server.login_reply(ALICE.0, ALICE.1), "login_invalid");
    assert_eq!(throttled_logins(n1), before + 1.0, "refused as throttled");
    assert_eq!(cluster.redis.cli(&["ZCARD", &alice_key]).trim(), "10");
    // Now known on n1: refused unchecked there without asking again.
    assert_eq!(n1.server.login_reply(ALICE.0, ALICE.1), "login_invalid");
    // Short of the limit: admitted, and the pair's failures forgotten cluster-wide.
    assert_eq!(n1.server.login_reply(BOB.0, BOB.1), "login_valid");
    assert_eq!(cluster.redis.cli(&["EXISTS", &bob_key]).trim(), "0");
    // n2, not told either, refuses alice too.
    assert_eq!(
        cluster.node(2).server.login_reply(ALICE.0, ALICE.1),
        "login_invalid"
    );
}

#[test]
fn a_nodes_default_name_is_the_host_name_and_the_listen_port() {
    let Some(redis) = crate::common::redis::Redis::start() else {
        return;
    };
    let config = TestConfig::new().set("admin", "listen", "127.0.0.1:0").set(
        "cluster",
        "redis",
        redis.url(),
    );
    let server = TestServer::start(&config, &[ALICE]);
    server.wait_for_log("cluster: connected to Redis", Duration::from_secs(10));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("a host name");
    let name = format!("{}:{}", host.trim(), server.addr().port());
    let log = server.stderr_text();
    assert!(
        log.contains(&format!("cluster: node {name:?}")),
        "the node is named {name:?}:\n{log}"
    );
    let nodes = redis.cli(&["ZRANGE", "tether:nodes", "0", "-1"]);
    assert_eq!(nodes.trim(), name, "the name in Redis");
}

#[test]
fn the_embedded_handle_says_duplicate_alone_and_in_a_cluster() {
    use tether_actors::hub::bus::Publish;
    // Alone.
    let server = crate::common::in_process::InProcessServer::start(
        crate::common::in_process::test_settings(),
        &[RELAYED_ALICE],
    );
    let mut alice = server
        .logged_in(RELAYED_ALICE.0, RELAYED_ALICE.1, 1)
        .remove(0);
    let event = || Publish::new(RELAYED_ALICE.0, "once").with_id("k-1");
    let first = server
        .block_on(server.handle().publish_event(event()))
        .expect("published");
    assert!(!first.duplicate);
    let again = server
        .block_on(server.handle().publish_event(event()))
        .expect("answered");
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.time, first.time);
    expect_event(&mut alice, "once", Duration::from_secs(5));
    alice.expect_nothing_for(QUIET);
    let bad = server.block_on(
        server
            .handle()
            .publish_event(Publish::new(RELAYED_ALICE.0, "x").with_id("")),
    );
    assert_eq!(bad, Err(tether_actors::hub::bus::PublishError::InvalidId));

    // In a cluster.
    let Some(redis) = crate::common::redis::Redis::start() else {
        return;
    };
    let (_, node, _stop) = embedded_node(&redis, "e1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    assert!(wait_until(Duration::from_secs(10), || node
        .cluster_connected()
        == Some(true)));
    let first = runtime
        .block_on(node.publish_event(event()))
        .expect("published");
    let again = runtime
        .block_on(node.publish_event(event()))
        .expect("answered");
    assert_eq!((first.duplicate, again.duplicate), (false, true));
    assert_eq!(again.time, first.time);
}
