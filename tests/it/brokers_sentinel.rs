//! Nodes over Redis with Sentinel (`redis+sentinel://`, SPEC §8): a master, its replica and
//! three sentinels, one of them down from the start (which changes nothing). The master is
//! killed (`SIGKILL`) under a steady stream of events: every publish is answered `503` or
//! its event is delivered (never `202` and lost while both nodes are connected), delivery
//! across nodes resumes within 10 s of the promotion, `/healthz`, `/metrics` and the log
//! name the new master; the old master, back as a replica, takes no writes.

use crate::common::brokers::SentinelSet;
use crate::common::cheap_hash;
use crate::common::cluster::{event_text, Node};
use crate::common::{wait_until, RecvError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// SPEC §8: within 10 s after the sentinels promoted a replica, events cross nodes again.
const RESUME_BOUND: Duration = Duration::from_secs(10);
/// How long the sentinels may take to promote the replica (down after 1 s, then a vote).
const PROMOTION_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between two publishes of the stream.
const STREAM_PAUSE: Duration = Duration::from_millis(20);

/// One publish of the stream: its number, when it was sent, the status answered.
struct Published {
    number: usize,
    sent: Instant,
    status: u16,
}

#[test]
fn a_sentinel_failover_moves_every_node_to_the_promoted_replica() {
    let Some(mut set) = SentinelSet::start() else {
        return;
    };
    // One sentinel down of three, listed first: the nodes ask the next ones.
    set.sentinels[0].kill();
    let hash = cheap_hash("pw");
    let users = [("alice", hash.as_str())];
    let n1 = Node::start_url(&set.url(), "tether", "n1", &users, &|config| config);
    let n2 = Node::start_url(&set.url(), "tether", "n2", &users, &|config| config);
    let master = set.master.addr().to_string();
    let replica = set.replica.addr().to_string();
    for node in [&n1, &n2] {
        assert_eq!(node.cluster_redis().as_deref(), Some(master.as_str()));
        assert_eq!(
            node.metric(&format!(
                "tether_cluster_redis_master{{address=\"{master}\"}}"
            )),
            1.0
        );
    }
    let mut alice = n2.login("alice", "pw");
    assert!(
        wait_until(Duration::from_secs(10), || n1.connections("alice") == 1),
        "n1 does not count alice's connection on n2"
    );

    let stop = AtomicBool::new(false);
    let published = Mutex::new(Vec::<Published>::new());
    let mut received: Vec<(usize, Instant)> = Vec::new();
    let (killed_at, promoted_at, both_back_at) = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut number = 0;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let (status, _) = n1.publish("alice", &format!("e{number}"));
                published.lock().expect("lock").push(Published {
                    number,
                    sent,
                    status,
                });
                number += 1;
                std::thread::sleep(STREAM_PAUSE);
            }
        });
        let receiving = scope.spawn(|| {
            let mut got = Vec::new();
            loop {
                match alice.try_recv(Duration::from_millis(100)) {
                    Ok(message) => {
                        let text = event_text(&message);
                        let number = text[1..].parse::<usize>().expect("e<number>");
                        got.push((number, Instant::now()));
                    }
                    Err(RecvError::Timeout(_)) if stop.load(Ordering::Relaxed) => return got,
                    Err(RecvError::Timeout(_)) => {}
                    Err(RecvError::Closed(_)) => panic!("alice's connection closed"),
                }
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        let killed_at = Instant::now();
        set.master.kill();
        let promoted = wait_until(PROMOTION_TIMEOUT, || SentinelSet::is_master(&set.replica));
        assert!(promoted, "the sentinels did not promote the replica");
        let promoted_at = Instant::now();
        let back = wait_until(RESUME_BOUND, || {
            [&n1, &n2]
                .iter()
                .all(|node| node.cluster_redis().as_deref() == Some(replica.as_str()))
        });
        let both_back_at = Instant::now();
        // A little more stream on the new master, then stop.
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        received = receiving.join().expect("receiver");
        assert!(
            back,
            "the nodes did not move to the new master {replica} within {RESUME_BOUND:?}; \
             n1 says {:?}, n2 {:?}; n2's log:\n{}",
            n1.cluster_redis(),
            n2.cluster_redis(),
            n2.server.stderr_text()
        );
        (killed_at, promoted_at, both_back_at)
    });
    let published = published.into_inner().expect("lock");

    // Delivered once each, in order.
    let numbers: Vec<usize> = received.iter().map(|(number, _)| *number).collect();
    assert!(
        numbers.windows(2).all(|pair| pair[0] < pair[1]),
        "events duplicated or out of order: {numbers:?}"
    );
    // Accepted while both nodes were connected (before the kill, after both were back):
    // delivered.
    let lost: Vec<usize> = published
        .iter()
        .filter(|p| p.status == 202 && (p.sent < killed_at || p.sent > both_back_at))
        .map(|p| p.number)
        .filter(|number| !numbers.contains(number))
        .collect();
    assert!(lost.is_empty(), "events answered 202 and lost: {lost:?}");
    // The truthful answers while the master is lost (SPEC §6): 503 when nothing was sent,
    // 504 when the event was sent to the dying master and its outcome is unknown.
    let statuses: Vec<u16> = published.iter().map(|p| p.status).collect();
    assert!(
        statuses
            .iter()
            .all(|status| matches!(status, 202 | 503 | 504)),
        "every publish is 202, 503 or 504: {statuses:?}"
    );
    let refused = published.iter().filter(|p| p.status == 503).count();
    // Delivery across nodes resumed within the bound after the promotion.
    let first_after = received
        .iter()
        .find(|(number, _)| {
            published
                .iter()
                .any(|p| p.number == *number && p.sent > promoted_at)
        })
        .map(|(_, at)| *at)
        .expect("an event published after the promotion was delivered");
    let resumed = first_after.saturating_duration_since(promoted_at);
    eprintln!(
        "promotion {:?} after the kill; first delivery across nodes {resumed:?} after the \
         promotion; {refused} publish(es) refused (503) meanwhile",
        promoted_at - killed_at
    );
    assert!(
        resumed < RESUME_BOUND,
        "delivery resumed {resumed:?} after the promotion"
    );
    // One log line per change names the new master and the old one.
    for node in [&n1, &n2] {
        let log = node.server.stderr_text();
        assert!(
            log.contains(&format!("{replica} (was {master})")),
            "no log line naming the change of master:\n{log}"
        );
        assert_eq!(
            node.metric(&format!(
                "tether_cluster_redis_master{{address=\"{replica}\"}}"
            )),
            1.0
        );
        assert!(
            !node.metrics().contains(&format!("address=\"{master}\"")),
            "the old master is still in /metrics"
        );
    }

    // The old master comes back; the sentinels make it a replica; it takes no writes.
    set.master.restart();
    let demoted = wait_until(PROMOTION_TIMEOUT, || !SentinelSet::is_master(&set.master));
    assert!(
        demoted,
        "the sentinels did not turn the old master into a replica"
    );
    for number in 0..20 {
        let (status, body) = n1.publish("alice", &format!("later{number}"));
        assert_eq!(status, 202, "{body}");
        let message = alice.recv_within(Duration::from_secs(5));
        assert_eq!(event_text(&message), format!("later{number}"));
    }
    assert_eq!(
        set.master.command_calls("evalsha"),
        0,
        "a node ran its script on the old master"
    );
    for node in [&n1, &n2] {
        assert_eq!(node.cluster_redis().as_deref(), Some(replica.as_str()));
    }
}

#[test]
fn the_urls_password_reaches_a_master_and_sentinels_that_want_it() {
    let Some(set) = SentinelSet::start_with_password(Some("s3cret")) else {
        return;
    };
    let hash = cheap_hash("pw");
    let users = [("alice", hash.as_str())];
    let url = set.url_with(":s3cret@");
    let n1 = Node::start_url(&url, "tether", "n1", &users, &|config| config);
    let n2 = Node::start_url(&url, "tether", "n2", &users, &|config| config);
    let master = set.master.addr().to_string();
    assert_eq!(n1.cluster_redis().as_deref(), Some(master.as_str()));
    let mut alice = n2.login("alice", "pw");
    assert!(wait_until(Duration::from_secs(10), || n1
        .connections("alice")
        == 1));
    assert_eq!(n1.publish_ok("alice", "hello"), 1);
    assert_eq!(
        event_text(&alice.recv_within(Duration::from_secs(5))),
        "hello"
    );
    // The password is not written to the log.
    for node in [&n1, &n2] {
        assert!(
            !node.server.stderr_text().contains("s3cret"),
            "the log shows the password"
        );
    }
}
