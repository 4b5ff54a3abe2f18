//! A cluster (SPEC §8) while its Redis fails: killed with `SIGKILL` and started again,
//! paused with `SIGSTOP`, its pub/sub connections killed, a node cut off as a slow
//! subscriber. The nodes keep serving their own clients, publishing answers 503 while Redis
//! is unreachable, `/healthz` says so within 10 s, and after Redis is back delivery
//! resumes without a restart of tether, nothing duplicated; a client's `invalidate` made
//! during the outage reaches the other nodes afterwards.

use crate::common::cluster::{event_text, Cluster, Node};
use crate::common::{expect_all_silent, wait_until, RecvError, TestClient};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// SPEC §8: a dead, paused or cut Redis connection is noticed within 10 s.
const NOTICED: Duration = Duration::from_secs(10);
/// How long a node may take to be back once Redis is: its backoff is capped, plus the
/// resubscription.
const BACK: Duration = Duration::from_secs(15);
/// Long enough to see that nothing more comes.
const QUIET: Duration = Duration::from_millis(300);
/// Clock ticks per second in `/proc/PID/stat` (Linux).
const TICKS_PER_SECOND: f64 = 100.0;

const ALICE: (&str, &str) = ("alice", "pw-a");

/// Waits until `/healthz` of every node in `nodes` says `state`; answers how long it took.
fn wait_all(nodes: &[Node], state: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    for node in nodes {
        node.wait_cluster_state(state, timeout.saturating_sub(started.elapsed()));
    }
    started.elapsed()
}

/// The number in an event text `PREFIX-N`; panics on anything else.
fn sequence_number(message: &[String], prefix: &str) -> u64 {
    let text = event_text(message);
    text.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("expected an event {prefix}-N, got {message:?}"))
}

/// Reads what `client` receives until nothing comes for `wait` (or for a second at most,
/// while events keep coming): the numbers of its `PREFIX-N` events, appended to `into`,
/// which must stay strictly increasing (nothing duplicated or reordered).
fn drain_numbered(client: &mut TestClient, prefix: &str, into: &mut Vec<u64>, wait: Duration) {
    let deadline = Instant::now() + wait.max(Duration::from_secs(1));
    while Instant::now() < deadline {
        match client.try_recv(wait) {
            Ok(message) => {
                let number = sequence_number(&message, prefix);
                if let Some(&last) = into.last() {
                    assert!(
                        number > last,
                        "event {prefix}-{number} after {prefix}-{last}: duplicated or reordered"
                    );
                }
                into.push(number);
            }
            // A partial message stays in the client's buffer for the next call.
            Err(RecvError::Timeout(_)) => return,
            Err(RecvError::Closed(partial)) => {
                panic!("the connection closed while reading {prefix} events ({partial:?})")
            }
        }
    }
}

/// Publishes `PREFIX-0`, `PREFIX-1`, … for `user` on `node` every 200 ms until every one
/// of `clients` has received one of them (panics after `timeout`); then lets the rest
/// arrive. Each client's events must come in order without duplicates.
fn publish_until_received(
    node: &Node,
    user: &str,
    clients: &mut [&mut TestClient],
    prefix: &str,
    timeout: Duration,
) {
    let started = Instant::now();
    let mut received: Vec<Vec<u64>> = vec![Vec::new(); clients.len()];
    let mut statuses = Vec::new();
    for number in 0.. {
        let (status, _) = node.publish(user, &format!("{prefix}-{number}"));
        statuses.push(status);
        for (client, got) in clients.iter_mut().zip(&mut received) {
            drain_numbered(client, prefix, got, Duration::from_millis(200) / 4);
        }
        if received.iter().all(|got| !got.is_empty()) {
            break;
        }
        assert!(
            started.elapsed() < timeout,
            "{prefix}: not every client received one of the events published for \
             {timeout:?} (answers {statuses:?}, received {received:?})"
        );
    }
    for (client, got) in clients.iter_mut().zip(&mut received) {
        drain_numbered(client, prefix, got, QUIET);
    }
}

/// Answers of `POST /v1/events` made by [`Publisher`], in order: (number, status).
type Answers = Mutex<Vec<(u64, u16)>>;

/// Publishes `s-0`, `s-1`, … for `user` on `node` every 10 ms until `stop`; records each
/// answer's status in `answers`.
fn publish_steadily(node: &Node, user: &str, stop: &AtomicBool, answers: &Answers) {
    let mut number = 0;
    while !stop.load(Ordering::Relaxed) {
        let (status, body) = node.publish(user, &format!("s-{number}"));
        // 504: sent when Redis died, outcome unknown (SPEC §6) — either may be received.
        assert!(
            status == 202 || status == 503 || status == 504,
            "publish s-{number}: {status} {body}"
        );
        if status != 202 {
            assert!(
                body["error"].is_string(),
                "{status} without a reason: {body}"
            );
        }
        answers.lock().expect("answers").push((number, status));
        number += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sets its flag when dropped, also while a panic unwinds.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How many answers with `status` `answers` holds.
fn count_status(answers: &Answers, status: u16) -> usize {
    answers
        .lock()
        .expect("answers")
        .iter()
        .filter(|answer| answer.1 == status)
        .count()
}

#[test]
fn redis_killed_mid_stream_answers_503_then_delivery_resumes_on_every_node() {
    let Some(mut cluster) = Cluster::start(3, &[ALICE]) else {
        return;
    };
    let mut clients: Vec<TestClient> = Vec::from(cluster.login_everywhere::<3>(ALICE));
    cluster.wait_subscriber_counts(&[3]);
    let stop = AtomicBool::new(false);
    let answers = Answers::default();
    let mut received: Vec<Vec<u64>> = vec![Vec::new(); clients.len()];
    let mut outage_ticks = Vec::new();
    let mut outage = Duration::ZERO;
    std::thread::scope(|scope| {
        let publisher =
            scope.spawn(|| publish_steadily(&cluster.nodes[0], ALICE.0, &stop, &answers));
        // A failed assertion below must stop the publisher too, or the scope waits forever.
        let _stop_publisher = StopOnDrop(&stop);
        let read_all = |clients: &mut Vec<TestClient>, received: &mut Vec<Vec<u64>>| {
            for (client, got) in clients.iter_mut().zip(received.iter_mut()) {
                drain_numbered(client, "s", got, Duration::from_millis(20));
            }
        };
        assert!(
            wait_until(Duration::from_secs(10), || count_status(&answers, 202)
                >= 50),
            "50 publishes were not accepted within 10 s: {:?}",
            answers.lock().expect("answers")
        );
        read_all(&mut clients, &mut received);

        cluster.redis.kill();
        let killed = Instant::now();
        let ticks_before: Vec<u64> = cluster.nodes.iter().map(Node::cpu_ticks).collect();
        assert!(
            wait_until(NOTICED, || count_status(&answers, 503) > 0),
            "no publish answered 503 within {NOTICED:?} of Redis being killed"
        );
        // The outage lasts 3 s: a fixed wait is the point here.
        std::thread::sleep(Duration::from_secs(3).saturating_sub(killed.elapsed()));
        outage = killed.elapsed();
        outage_ticks = cluster
            .nodes
            .iter()
            .zip(&ticks_before)
            .map(|(node, before)| node.cpu_ticks() - before)
            .collect();
        read_all(&mut clients, &mut received);
        let before_restart = answers.lock().expect("answers").len();
        cluster.redis.restart();
        wait_all(&cluster.nodes, "connected", BACK);

        // Delivery resumes: every client receives events published after the restart.
        let resumed = wait_until(BACK, || {
            read_all(&mut clients, &mut received);
            received.iter().all(|got| {
                got.last()
                    .is_some_and(|&last| last >= before_restart as u64)
            })
        });
        assert!(
            resumed,
            "not every node delivered events again within {BACK:?} of Redis being back; \
             received up to {:?}",
            received.iter().map(|got| got.last()).collect::<Vec<_>>()
        );
        stop.store(true, Ordering::Relaxed);
        publisher.join().expect("publisher");
    });
    for (client, got) in clients.iter_mut().zip(&mut received) {
        drain_numbered(client, "s", got, QUIET);
    }

    let answers = answers.into_inner().expect("answers");
    let refused: Vec<u64> = answers.iter().filter(|a| a.1 == 503).map(|a| a.0).collect();
    let last_accepted = answers
        .iter()
        .rev()
        .find(|answer| answer.1 == 202)
        .expect("accepted publishes")
        .0;
    for (number, got) in received.iter().enumerate() {
        for event in got {
            assert!(
                !refused.contains(event),
                "client on n{}: received s-{event}, whose publish answered 503",
                number + 1
            );
        }
        assert_eq!(
            got.last(),
            Some(&last_accepted),
            "client on n{}: the last accepted event is missing",
            number + 1
        );
    }
    // No busy loop while Redis is away: well under a quarter of a core each.
    let ceiling = (outage.as_secs_f64() * TICKS_PER_SECOND / 4.0) as u64;
    eprintln!(
        "Redis outage {outage:?}: {} publishes refused; CPU ticks of the nodes meanwhile \
         {outage_ticks:?} (ceiling {ceiling})",
        refused.len()
    );
    for (number, ticks) in outage_ticks.iter().enumerate() {
        assert!(
            *ticks <= ceiling,
            "n{} used {ticks} ticks of CPU during a {outage:?} Redis outage",
            number + 1
        );
    }
}

#[test]
fn redis_paused_for_15_s_is_noticed_within_10_s_and_the_nodes_recover() {
    let carol = ("carol", "pw-c");
    let Some(cluster) = Cluster::start(2, &[ALICE, carol]) else {
        return;
    };
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let [mut on_n1, mut on_n2] = cluster.login_everywhere(ALICE);
    assert_eq!(n1.metric("tether_cluster_connected"), 1.0);

    cluster.redis.pause();
    let paused = Instant::now();
    let noticed = wait_all(
        &cluster.nodes,
        "unreachable",
        NOTICED + Duration::from_secs(1),
    );
    eprintln!("a paused Redis was noticed by both nodes after {noticed:?}");
    assert!(noticed <= NOTICED, "noticed after {noticed:?}");
    for node in &cluster.nodes {
        assert_eq!(node.metric("tether_cluster_connected"), 0.0);
        node.server
            .wait_for_log("unreachable", Duration::from_secs(1));
    }
    let (status, body) = n1.publish(ALICE.0, "during");
    assert_eq!(status, 503, "{body}");
    let (status, body) = n2.invalidate(ALICE.0);
    assert_eq!(status, 503, "{body}");
    // The node still serves its own clients.
    on_n2.send(&["prolongate"]);
    on_n2.expect(&["prolongate_ack"]);
    let mut fresh = n2.client();
    fresh.login(ALICE.0, ALICE.1);
    // A user new to n2 is answered at once too: it does not wait for a subscription that
    // cannot be made (it is made after the reconnect).
    let asked = Instant::now();
    let _carol = n2.login(carol.0, carol.1);
    let answered = asked.elapsed();
    // A login waiting for the subscription would be answered when the broker's 3 s answer
    // timeout ends it, or after the reconnect; 2 s leaves a loaded machine room for the
    // connect and the bcrypt check.
    assert!(
        answered < Duration::from_secs(2),
        "login of a new user answered after {answered:?} while Redis is unreachable"
    );

    std::thread::sleep(Duration::from_secs(15).saturating_sub(paused.elapsed()));
    cluster.redis.resume();
    wait_all(&cluster.nodes, "connected", BACK);
    assert_eq!(n2.metric("tether_cluster_connected"), 1.0);
    publish_until_received(
        n1,
        ALICE.0,
        &mut [&mut on_n1, &mut on_n2, &mut fresh],
        "n1",
        BACK,
    );
    publish_until_received(
        n2,
        ALICE.0,
        &mut [&mut on_n1, &mut on_n2, &mut fresh],
        "n2",
        BACK,
    );
    cluster.wait_connections(ALICE.0, 3);
}

#[test]
fn killed_pubsub_connections_are_reopened() {
    let Some(cluster) = Cluster::start(2, &[ALICE]) else {
        return;
    };
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let [mut on_n1, mut on_n2] = cluster.login_everywhere(ALICE);
    cluster.wait_subscriber_counts(&[2]);
    let reconnects = |node: &Node| node.metric("tether_cluster_reconnects_total");
    let before = [reconnects(n1), reconnects(n2)];

    let killed: u64 = cluster
        .redis
        .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .trim()
        .parse()
        .expect("a count");
    assert!(killed >= 2, "CLIENT KILL TYPE pubsub killed {killed}");
    for (node, before) in cluster.nodes.iter().zip(before) {
        assert!(
            wait_until(NOTICED, || reconnects(node) > before),
            "tether_cluster_reconnects_total stayed {before}"
        );
    }
    wait_all(&cluster.nodes, "connected", BACK);
    publish_until_received(n1, ALICE.0, &mut [&mut on_n1, &mut on_n2], "n1", BACK);
    publish_until_received(n2, ALICE.0, &mut [&mut on_n1, &mut on_n2], "n2", BACK);
    cluster.wait_subscriber_counts(&[2]);
}

#[test]
fn a_node_cut_off_as_a_slow_subscriber_reconnects_and_keeps_serving() {
    let Some(cluster) = Cluster::start(2, &[ALICE, ("flood", "pw")]) else {
        return;
    };
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let mut alice = n2.login(ALICE.0, ALICE.1);
    let _flooded = n2.login("flood", "pw");
    cluster.wait_connections("flood", 1);
    cluster.wait_subscriber_counts(&[1, 1]);
    cluster.redis.cli(&[
        "CONFIG",
        "SET",
        "client-output-buffer-limit",
        "pubsub 64kb 0 0",
    ]);
    let reconnects_before = n2.metric("tether_cluster_reconnects_total");

    // n2 stops reading (SIGSTOP) while n1 publishes up to 24 MB for a user of n2, in
    // batches under the admin API's 64 KiB body limit, until Redis, holding what n2 does
    // not take (past the kernel's socket buffers) beyond its tiny limit, cuts n2 off.
    let text = "f".repeat(1000);
    let batch = json!({"events": vec![json!({"user": "flood", "text": text}); 60]});
    n2.server.signal(Signal::SIGSTOP);
    let cut_off = || cluster.redis.log().contains("output buffer limits");
    for _ in 0..400 {
        if cut_off() {
            break;
        }
        let (status, body) = n1.call("POST", "/v1/events", Some(&batch));
        assert_eq!(status, 202, "flood batch: {body}");
    }
    let logged = wait_until(NOTICED, cut_off);
    n2.server.signal(Signal::SIGCONT);
    assert!(
        logged,
        "Redis did not cut n2 off as a slow subscriber; its log:\n{}",
        cluster.redis.log()
    );

    assert!(
        wait_until(NOTICED, || {
            n2.metric("tether_cluster_reconnects_total") > reconnects_before
        }),
        "n2 did not reconnect after being cut off"
    );
    wait_all(&cluster.nodes, "connected", BACK);
    publish_until_received(n1, ALICE.0, &mut [&mut alice], "after", BACK);
    let mut fresh = n2.client();
    fresh.login(ALICE.0, ALICE.1);
    fresh.send(&["prolongate"]);
    fresh.expect(&["prolongate_ack"]);
}

#[test]
fn a_client_invalidate_made_while_redis_is_down_reaches_the_other_nodes_afterwards() {
    let Some(mut cluster) = Cluster::start(2, &[ALICE]) else {
        return;
    };
    let (mut sender, mut sibling, mut remote) = {
        let (n1, n2) = (cluster.node(1), cluster.node(2));
        (
            n1.login(ALICE.0, ALICE.1),
            n1.login(ALICE.0, ALICE.1),
            n2.login(ALICE.0, ALICE.1),
        )
    };
    cluster.wait_connections(ALICE.0, 3);
    cluster.wait_subscriber_counts(&[2]);

    cluster.redis.kill();
    cluster.node(1).wait_cluster_state("unreachable", NOTICED);
    sender.send(&["invalidate"]);
    sender.expect(&["invalidate_ack"]);
    // The node's own connections at once; the other node's once Redis is back.
    assert_eq!(sibling.recv(), ["invalidated"]);
    remote.expect_nothing_for(QUIET);

    cluster.redis.restart();
    wait_all(&cluster.nodes, "connected", BACK);
    assert_eq!(remote.recv_within(BACK), ["invalidated"]);
    expect_all_silent(&mut [&mut sender, &mut sibling, &mut remote], QUIET);
    // Presence is rebuilt in the new, empty Redis: only the sender is bound.
    cluster.wait_connections(ALICE.0, 1);
    let (status, body): (u16, Value) = cluster.node(2).invalidate(ALICE.0);
    assert_eq!((status, body), (200, json!({"invalidated": 1})));
    assert_eq!(sender.recv(), ["invalidated"]);
}
