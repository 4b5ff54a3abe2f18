//! Several real `tether` processes as one service over a private Redis (SPEC §8), while
//! Redis is healthy: events reach every node's connections of the user once and in order,
//! and only the nodes that have the user; invalidations and counts span the nodes; names
//! that look like channel patterns stay apart; prefixes keep clusters apart; a node that
//! dies or stops concerns only its own connections. `cluster_faults` breaks Redis.

use crate::common::cluster::{event_text, expect_event, Cluster, Node, SETTLE_TIMEOUT};
use crate::common::{expect_all_silent, wait_until, TestClient};
use nix::sys::signal::Signal;
use serde_json::json;
use std::time::{Duration, Instant};

/// Long enough to see that nothing more comes.
const QUIET: Duration = Duration::from_millis(300);
/// How long a delivery across nodes may take in these tests.
const DELIVERY: Duration = Duration::from_secs(5);
/// SPEC §8: a dead node's connections stop being counted within 10 s.
const DEAD_NODE_FORGOTTEN: Duration = Duration::from_secs(10);

const ALICE: (&str, &str) = ("alice", "pw-a");
const BOB: (&str, &str) = ("bob", "pw-b");

/// Receives `count` events on `client` and answers their texts.
fn receive_events(client: &mut TestClient, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| event_text(&client.recv_within(DELIVERY)).to_owned())
        .collect()
}

#[test]
fn events_reach_each_connection_of_the_user_on_every_node_once_in_order() {
    let Some(cluster) = Cluster::start(3, &[ALICE, BOB]) else {
        return;
    };
    let (n1, n2, n3) = (cluster.node(1), cluster.node(2), cluster.node(3));
    let mut alice = [
        n1.login(ALICE.0, ALICE.1),
        n1.login(ALICE.0, ALICE.1),
        n2.login(ALICE.0, ALICE.1),
        n3.login(ALICE.0, ALICE.1),
    ];
    // Bob is on n1 only: n2 and n3 must not even receive his events.
    let mut bob = n1.login(BOB.0, BOB.1);
    cluster.wait_connections(ALICE.0, 4);
    cluster.wait_connections(BOB.0, 1);
    cluster.wait_subscriber_counts(&[3, 1]);
    cluster.redis.cli(&["CONFIG", "RESETSTAT"]);

    const EVENTS: usize = 1000;
    let mut bob_events = Vec::new();
    for index in 0..EVENTS {
        let text = format!("a{index}");
        assert_eq!(n1.publish_ok(ALICE.0, &text), 4, "answer for {text}");
        if index % 10 == 0 {
            let text = format!("b{index}");
            assert_eq!(n1.publish_ok(BOB.0, &text), 1, "answer for {text}");
            bob_events.push(text);
        }
    }

    let expected: Vec<String> = (0..EVENTS).map(|index| format!("a{index}")).collect();
    for (number, client) in alice.iter_mut().enumerate() {
        let got = receive_events(client, EVENTS);
        assert!(
            got == expected,
            "alice's connection #{number}: events out of order or missing (first differing \
             at {:?})",
            got.iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
    assert_eq!(receive_events(&mut bob, bob_events.len()), bob_events);
    let [a1, a2, a3, a4] = &mut alice;
    expect_all_silent(&mut [a1, a2, a3, a4, &mut bob], QUIET);

    // One PUBLISH per event, whatever the number of nodes holding the user.
    let published = EVENTS + bob_events.len();
    assert_eq!(
        cluster.redis.command_calls("publish"),
        published as u64,
        "Redis commands meanwhile: {:?}",
        cluster.redis.all_command_calls()
    );
    // n2 and n3 receive alice's events, and none of bob's.
    for node in [n2, n3] {
        assert_eq!(
            node.metric(r#"tether_cluster_events_total{direction="received"}"#),
            EVENTS as f64
        );
    }
    assert_eq!(
        n1.metric(r#"tether_cluster_events_total{direction="sent"}"#),
        published as f64
    );
    assert_eq!(n1.metric("tether_cluster_subscribed_users"), 2.0);
    assert_eq!(n2.metric("tether_cluster_subscribed_users"), 1.0);
}

#[test]
fn a_client_invalidate_reaches_the_users_other_connections_on_every_node() {
    let Some(cluster) = Cluster::start(3, &[ALICE, BOB]) else {
        return;
    };
    let (n1, n2, n3) = (cluster.node(1), cluster.node(2), cluster.node(3));
    let mut sender = n1.login(ALICE.0, ALICE.1);
    let mut sibling = n1.login(ALICE.0, ALICE.1);
    let mut on_n2 = n2.login(ALICE.0, ALICE.1);
    let mut on_n3 = n3.login(ALICE.0, ALICE.1);
    let mut bob = n2.login(BOB.0, BOB.1);
    cluster.wait_connections(ALICE.0, 4);
    cluster.wait_subscriber_counts(&[3, 1]);

    sender.send(&["invalidate"]);
    sender.expect(&["invalidate_ack"]);
    for client in [&mut sibling, &mut on_n2, &mut on_n3] {
        assert_eq!(client.recv_within(DELIVERY), ["invalidated"]);
    }
    expect_all_silent(
        &mut [&mut sender, &mut sibling, &mut on_n2, &mut on_n3, &mut bob],
        QUIET,
    );
    // The invalidated connections are bound to no name; the sender still is.
    cluster.wait_connections(ALICE.0, 1);
    sender.send(&["prolongate"]);
    sender.expect(&["prolongate_ack"]);
    assert_eq!(n3.publish_ok(ALICE.0, "after"), 1);
    expect_event(&mut sender, "after", DELIVERY);
    expect_all_silent(&mut [&mut sibling, &mut on_n2, &mut on_n3], QUIET);
}

#[test]
fn admin_invalidate_and_counts_cover_every_node() {
    let Some(cluster) = Cluster::start(3, &[ALICE, BOB]) else {
        return;
    };
    let (n1, n2, n3) = (cluster.node(1), cluster.node(2), cluster.node(3));
    let mut alice = [
        n1.login(ALICE.0, ALICE.1),
        n2.login(ALICE.0, ALICE.1),
        n2.login(ALICE.0, ALICE.1),
    ];
    let mut bob = n1.login(BOB.0, BOB.1);
    // n3 has no connection of alice and still counts and invalidates them all.
    cluster.wait_connections(ALICE.0, 3);
    cluster.wait_connections("nobody", 0);

    let (status, body) = n3.invalidate(ALICE.0);
    assert_eq!((status, body), (200, json!({"invalidated": 3})));
    for client in &mut alice {
        assert_eq!(client.recv_within(DELIVERY), ["invalidated"]);
    }
    let [a1, a2, a3] = &mut alice;
    expect_all_silent(&mut [a1, a2, a3, &mut bob], QUIET);
    cluster.wait_connections(ALICE.0, 0);
    cluster.wait_connections(BOB.0, 1);
    assert_eq!(n3.invalidate(ALICE.0), (200, json!({"invalidated": 0})));
    // Nobody is subscribed for alice any more; bob's channel stays.
    cluster.wait_subscriber_counts(&[1]);
}

#[test]
fn names_that_look_like_channel_patterns_do_not_cross_users() {
    // SPEC §5 allows any UTF-8 without control characters, up to 128 bytes: glob
    // characters, the separator a channel name may use, spaces, and other prefixes.
    let long = "x".repeat(128);
    let wide = "é".repeat(64);
    let names = [
        "a",
        "a*",
        "*",
        "a?",
        "a[bc]",
        "[a]",
        "a:b",
        "a b",
        "a\\",
        "{a}",
        "tether:user:a",
        "user:a",
        "ä",
        long.as_str(),
        wide.as_str(),
    ];
    let users: Vec<(&str, &str)> = names.iter().map(|name| (*name, "pw")).collect();
    let Some(cluster) = Cluster::start(2, &users) else {
        return;
    };
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let mut clients: Vec<TestClient> = names.iter().map(|name| n2.login(name, "pw")).collect();
    for name in names {
        cluster.wait_connections(name, 1);
    }
    cluster.wait_subscriber_counts(&vec![1; names.len()]);
    for channel in cluster.redis.channels("*") {
        assert!(channel.starts_with("tether:"), "channel {channel:?}");
    }

    for name in names {
        assert_eq!(n1.publish_ok(name, &format!("for {name}")), 1, "{name:?}");
    }
    for (name, client) in names.iter().zip(&mut clients) {
        expect_event(client, &format!("for {name}"), DELIVERY);
    }
    let mut silent: Vec<&mut TestClient> = clients.iter_mut().collect();
    expect_all_silent(&mut silent, QUIET);

    // Invalidating one of them concerns it alone.
    assert_eq!(n1.invalidate("a*"), (200, json!({"invalidated": 1})));
    assert_eq!(clients[1].recv_within(DELIVERY), ["invalidated"]);
    let mut silent: Vec<&mut TestClient> = clients.iter_mut().collect();
    expect_all_silent(&mut silent, QUIET);
}

#[test]
fn clusters_with_other_prefixes_share_a_redis_without_crossing() {
    let Some(cluster) = Cluster::start(1, &[ALICE]) else {
        return;
    };
    let other = Node::start(
        &cluster.redis,
        "other",
        "m1",
        &cluster.user_hashes(),
        &|config| config,
    );
    let mut ours = cluster.node(1).login(ALICE.0, ALICE.1);
    let mut theirs = other.login(ALICE.0, ALICE.1);
    cluster.wait_connections(ALICE.0, 1);
    assert!(wait_until(SETTLE_TIMEOUT, || other.connections(ALICE.0) == 1));
    assert_eq!(cluster.redis.channels("other:user:*").len(), 1);
    assert_eq!(cluster.redis.channels("tether:user:*").len(), 1);
    for channel in cluster.redis.channels("*") {
        assert!(
            channel.starts_with("tether:") || channel.starts_with("other:"),
            "channel {channel:?}"
        );
    }
    for key in cluster.redis.cli(&["KEYS", "*"]).lines() {
        assert!(
            key.starts_with("tether:") || key.starts_with("other:"),
            "key {key:?}"
        );
    }

    assert_eq!(cluster.node(1).publish_ok(ALICE.0, "ours"), 1);
    assert_eq!(other.publish_ok(ALICE.0, "theirs"), 1);
    expect_event(&mut ours, "ours", DELIVERY);
    expect_event(&mut theirs, "theirs", DELIVERY);
    expect_all_silent(&mut [&mut ours, &mut theirs], QUIET);
}

#[test]
fn a_killed_nodes_connections_stop_being_counted_within_10_s() {
    let Some(mut cluster) = Cluster::start(3, &[ALICE]) else {
        return;
    };
    let mut on_n1 = cluster.node(1).login(ALICE.0, ALICE.1);
    let _on_n2 = [
        cluster.node(2).login(ALICE.0, ALICE.1),
        cluster.node(2).login(ALICE.0, ALICE.1),
    ];
    let mut on_n3 = cluster.node(3).login(ALICE.0, ALICE.1);
    cluster.wait_connections(ALICE.0, 4);

    let killed = cluster.nodes.remove(1);
    killed.server.signal(Signal::SIGKILL);
    let started = Instant::now();
    // SPEC's 10 s is what the design gives (a dead node's entry expires 8–10 s after its
    // last heartbeat); the survivors' timers and this poll lag on a loaded 2-core machine.
    // 3 s more still fails a node never forgotten, or forgotten only by a later sweep.
    let bound = DEAD_NODE_FORGOTTEN + Duration::from_secs(3);
    let forgotten = wait_until(bound, || {
        cluster
            .nodes
            .iter()
            .all(|node| node.connections(ALICE.0) == 2)
    });
    let took = started.elapsed();
    eprintln!("a killed node's 2 connections were forgotten after {took:?}");
    assert!(
        forgotten && took <= bound,
        "counts after {took:?}: {:?}",
        cluster
            .nodes
            .iter()
            .map(|node| node.connections(ALICE.0))
            .collect::<Vec<_>>()
    );
    drop(killed);

    assert_eq!(cluster.node(2).publish_ok(ALICE.0, "still here"), 2);
    expect_event(&mut on_n1, "still here", DELIVERY);
    expect_event(&mut on_n3, "still here", DELIVERY);
}

#[test]
fn sigterm_sends_shutdown_to_that_nodes_clients_only() {
    let Some(mut cluster) = Cluster::start(2, &[ALICE, BOB]) else {
        return;
    };
    let mut alice_n1 = cluster.node(1).login(ALICE.0, ALICE.1);
    let mut bob_n1 = cluster.node(1).login(BOB.0, BOB.1);
    let mut alice_n2 = cluster.node(2).login(ALICE.0, ALICE.1);
    let mut anonymous_n2 = cluster.node(2).client();
    cluster.wait_connections(ALICE.0, 2);

    let mut stopping = cluster.nodes.remove(0);
    stopping.server.terminate();
    for client in [&mut alice_n1, &mut bob_n1] {
        assert_eq!(client.recv_within(DELIVERY), ["shutdown"]);
        client.expect_closed();
    }
    let status = stopping.server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    expect_all_silent(&mut [&mut alice_n2, &mut anonymous_n2], QUIET);

    cluster.wait_connections(ALICE.0, 1);
    cluster.wait_connections(BOB.0, 0);
    assert_eq!(cluster.node(1).publish_ok(ALICE.0, "n2 serves"), 1);
    expect_event(&mut alice_n2, "n2 serves", DELIVERY);
    anonymous_n2.send(&["login", BOB.0, BOB.1]);
    anonymous_n2.expect(&["login_valid"]);
}

#[test]
fn with_users_files_in_a_cluster_the_user_routes_answer_409() {
    let Some(cluster) = Cluster::start(2, &[ALICE]) else {
        return;
    };
    let n1 = cluster.node(1);
    let users_file = || std::fs::read_to_string(n1.server.users_path()).expect("users file");
    let before = users_file();
    let mut alice = cluster.node(2).login(ALICE.0, ALICE.1);
    cluster.wait_connections(ALICE.0, 1);

    let password = json!({"password": "new-pw"});
    for (method, path, body) in [
        (
            "PUT",
            Node::user_path(ALICE.0, "/password"),
            Some(&password),
        ),
        (
            "PUT",
            Node::user_path("carol", "/password"),
            Some(&password),
        ),
        ("DELETE", Node::user_path(ALICE.0, ""), None),
    ] {
        let (status, answer) = n1.call(method, &path, body);
        assert_eq!(status, 409, "{method} {path}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|reason| !reason.is_empty()),
            "{method} {path}: no reason in {answer}"
        );
    }
    assert_eq!(users_file(), before, "the users file must stay as it was");
    alice.expect_nothing_for(QUIET);
    // Invalidation is not a user change: it still works across the nodes.
    assert_eq!(n1.invalidate(ALICE.0), (200, json!({"invalidated": 1})));
    assert_eq!(alice.recv_within(DELIVERY), ["invalidated"]);
}

#[test]
fn a_batch_published_on_one_node_reaches_every_node_in_order_with_cluster_counts() {
    let Some(cluster) = Cluster::start(3, &[ALICE, BOB]) else {
        return;
    };
    let [mut a1, mut a2, mut a3] = cluster.login_everywhere(ALICE);
    let mut bob = cluster.node(3).login(BOB.0, BOB.1);
    cluster.wait_connections(BOB.0, 1);
    cluster.wait_subscriber_counts(&[3, 1]);

    let events: Vec<_> = (0..100)
        .map(|index| {
            let user = if index % 4 == 0 { BOB.0 } else { ALICE.0 };
            json!({"user": user, "text": format!("{user}-{index}")})
        })
        .collect();
    let (status, body) =
        cluster
            .node(2)
            .call("POST", "/v1/events", Some(&json!({ "events": events })));
    assert_eq!(status, 202, "{body}");
    let answers = body["events"].as_array().expect("an answer per event");
    assert_eq!(answers.len(), events.len());
    for (event, answer) in events.iter().zip(answers) {
        let expected = if event["user"] == BOB.0 { 1 } else { 3 };
        assert_eq!(answer["user"], event["user"], "{answer}");
        assert_eq!(answer["connections"], expected, "{answer}");
    }

    let texts_for = |user: &str| -> Vec<String> {
        events
            .iter()
            .filter(|event| event["user"] == user)
            .map(|event| event["text"].as_str().expect("text").to_owned())
            .collect()
    };
    let alice_texts = texts_for(ALICE.0);
    for client in [&mut a1, &mut a2, &mut a3] {
        assert_eq!(receive_events(client, alice_texts.len()), alice_texts);
    }
    let bob_texts = texts_for(BOB.0);
    assert_eq!(receive_events(&mut bob, bob_texts.len()), bob_texts);
    expect_all_silent(&mut [&mut a1, &mut a2, &mut a3, &mut bob], QUIET);
}

#[test]
fn an_event_published_elsewhere_right_after_login_valid_reaches_the_new_connection() {
    // The node subscribes to a user's channel when it gains the user's first connection;
    // `login_valid` waits for Redis to confirm it, so an event another node publishes as
    // soon as the client reads `login_valid` reaches it, every time.
    const USERS: usize = 300;
    let names: Vec<String> = (0..USERS).map(|index| format!("fresh{index}")).collect();
    let users: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "pw")).collect();
    let Some(cluster) = Cluster::start(2, &users) else {
        return;
    };
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let mut missed = Vec::new();
    for name in &names {
        let mut client = n2.login(name, "pw");
        n1.publish_ok(name, "right after");
        match client.try_recv(Duration::from_secs(2)) {
            Ok(message) if message.len() == 3 && message[2] == "right after" => {}
            Ok(other) => missed.push(format!("{name}: {other:?}")),
            Err(_) => missed.push(format!("{name}: nothing")),
        }
    }
    assert!(
        missed.is_empty(),
        "{} of {USERS} fresh logins missed the event: {missed:?}",
        missed.len()
    );
}
