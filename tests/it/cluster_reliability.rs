//! Answers that tell the truth and guards that guard, in a cluster and alone (issue 23,
//! SPEC §6 and §8): idempotent publishing with `"id"` and `504` when the outcome is
//! unknown; presence rewritten by a node that was forgotten, and a login's count in Redis
//! before its `login_valid`; unique node names; one login throttle for the cluster; a
//! stale invalidation that spares the sessions made after it.

use crate::common::cluster::{event_text, expect_event, Cluster, Node};
use crate::common::{admin_addr, admin_call, TestConfig, TestServer};
use serde_json::{json, Value};
use std::time::Duration;

/// SPEC §8: a dead, paused or cut Redis connection is noticed within 10 s.
const NOTICED: Duration = Duration::from_secs(10);
/// How long a node may take to be back once Redis is.
const BACK: Duration = Duration::from_secs(15);
/// Long enough to see that nothing more comes.
const QUIET: Duration = Duration::from_millis(400);

const ALICE: (&str, &str) = ("alice", "pw-a");
const BOB: (&str, &str) = ("bob", "pw-b");

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
