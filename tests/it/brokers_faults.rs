//! The single-Redis fault cases of `cluster_faults` (SPEC §8, "Redis unreachable"), over
//! Sentinel and over a Redis Cluster: a master paused (`SIGSTOP`: the sentinels, or the
//! cluster, promote its replica; resumed, it comes back as a replica and takes nothing),
//! connections killed on the masters (`CLIENT KILL TYPE pubsub`, then `TYPE normal`), a
//! node cut off as a slow subscriber (`client-output-buffer-limit pubsub`).
//!
//! Under a steady stream of events from one node to a client of the other: every publish
//! answers `202`, `503` (nothing sent) or `504` (sent, outcome unknown); an event answered
//! `503` is never delivered; the events delivered come once each and in order; an event
//! accepted while neither node was cut off is delivered; delivery resumes after the fault;
//! `/healthz` and `/metrics` say what happened. A node cut off reconciles: an invalidation
//! made meanwhile reaches its connections afterwards.

use crate::common::brokers::{RedisCluster, SentinelSet};
use crate::common::cheap_hash;
use crate::common::cluster::{event_text, Node};
use crate::common::redis::Redis;
use crate::common::{wait_until, RecvError, TestClient};
use nix::sys::signal::Signal;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// SPEC §8: a dead, paused or cut Redis connection is noticed within 10 s.
const NOTICED: Duration = Duration::from_secs(10);
/// How long a node may take to be back once Redis is (backoff capped at 5 s, then the
/// resubscription), or once a replica was promoted (SPEC §8: 10 s), with room for a loaded
/// machine.
const BACK: Duration = Duration::from_secs(15);
/// How long the sentinels or the cluster may take to promote a replica (down after 1 s).
const PROMOTION: Duration = Duration::from_secs(20);
/// Pause between two publishes of the stream.
const STREAM_PAUSE: Duration = Duration::from_millis(20);
/// How long the receiver waits for stragglers once the stream stopped.
const QUIET: Duration = Duration::from_millis(500);

const ALICE: (&str, &str) = ("alice", "pw");

/// One publish of the stream.
#[derive(Debug)]
struct Published {
    number: u64,
    /// When it was sent, and when it was answered.
    sent: Instant,
    answered: Instant,
    status: u16,
}

/// A time during which a node was cut off: events accepted then may be lost for its
/// connections (SPEC §8: at most once), never duplicated.
type Window = (Instant, Instant);

/// What a stream did.
struct Stream {
    published: Vec<Published>,
    /// Event numbers in the order received.
    received: Vec<u64>,
}

impl Stream {
    fn count(&self, status: u16) -> usize {
        self.published.iter().filter(|p| p.status == status).count()
    }
}

/// Publishes `s-0`, `s-1`, … for `user` on `from` every [`STREAM_PAUSE`] while `client`
/// (bound to `user` on another node) reads them and `faults` runs; `faults` answers the
/// windows during which a node was cut off. Then streams on until an event published
/// after the last window is delivered (panics after [`BACK`]), and checks what every
/// stream through a fault must hold (see the module comment).
fn stream_through(
    from: &Node,
    user: &str,
    client: &mut TestClient,
    faults: impl FnOnce() -> Vec<Window>,
) -> Stream {
    let stop = AtomicBool::new(false);
    let published = Mutex::new(Vec::<Published>::new());
    let received = Mutex::new(Vec::<(u64, Instant)>::new());
    let windows = std::thread::scope(|scope| {
        // Stops both threads also when an assertion below fails.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        scope.spawn(|| {
            let mut number = 0;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let (status, body) = from.publish(user, &format!("s-{number}"));
                if status != 202 {
                    assert!(
                        body["error"].is_string(),
                        "{status} without a reason: {body}"
                    );
                }
                published.lock().expect("lock").push(Published {
                    number,
                    sent,
                    answered: Instant::now(),
                    status,
                });
                number += 1;
                std::thread::sleep(STREAM_PAUSE);
            }
        });
        scope.spawn(|| loop {
            let wait = if stop.load(Ordering::Relaxed) {
                QUIET
            } else {
                Duration::from_millis(100)
            };
            match client.try_recv(wait) {
                Ok(message) => {
                    let text = event_text(&message);
                    let number = text
                        .strip_prefix("s-")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("an event s-N, not {message:?}"));
                    received
                        .lock()
                        .expect("lock")
                        .push((number, Instant::now()));
                }
                Err(RecvError::Timeout(_)) if stop.load(Ordering::Relaxed) => return,
                Err(RecvError::Timeout(_)) => {}
                Err(RecvError::Closed(partial)) => {
                    panic!("the client's connection closed ({partial:?})")
                }
            }
        });
        // A little stream before the faults.
        let warm = wait_until(BACK, || received.lock().expect("lock").len() >= 10);
        assert!(
            warm,
            "the stream did not start: {:?}",
            published.lock().expect("lock")
        );
        let windows = faults();
        let last_end = windows
            .iter()
            .map(|w| w.1)
            .max()
            .unwrap_or_else(Instant::now);
        // Delivery resumes: an event published after the last window arrives.
        let resumed = wait_until(BACK, || {
            let published = published.lock().expect("lock");
            received.lock().expect("lock").iter().any(|(number, _)| {
                published
                    .iter()
                    .any(|p| p.number == *number && p.sent > last_end)
            })
        });
        assert!(
            resumed,
            "no event published after the fault was delivered within {BACK:?}"
        );
        // Some more stream, then stop.
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        windows
    });
    let stream = Stream {
        published: published.into_inner().expect("lock"),
        received: received
            .into_inner()
            .expect("lock")
            .into_iter()
            .map(|(number, _)| number)
            .collect(),
    };
    check_stream(&stream, &windows);
    stream
}

/// The stream's promises (module comment).
fn check_stream(stream: &Stream, windows: &[Window]) {
    let statuses: Vec<u16> = stream.published.iter().map(|p| p.status).collect();
    assert!(
        statuses.iter().all(|s| matches!(s, 202 | 503 | 504)),
        "every publish answers 202, 503 or 504: {statuses:?}"
    );
    assert!(
        stream.received.windows(2).all(|pair| pair[0] < pair[1]),
        "events duplicated or out of order: {:?}",
        stream.received
    );
    let status_of = |number: u64| {
        stream
            .published
            .iter()
            .find(|p| p.number == number)
            .map(|p| p.status)
    };
    for number in &stream.received {
        assert_ne!(
            status_of(*number),
            Some(503),
            "s-{number} was answered 503 (nothing sent) and delivered"
        );
    }
    // Accepted before any node was cut off (answered before a window began) or after
    // both were back (sent after it ended): delivered.
    let lost: Vec<u64> = stream
        .published
        .iter()
        .filter(|p| p.status == 202)
        .filter(|p| {
            windows
                .iter()
                .all(|(start, end)| p.answered < *start || p.sent > *end)
        })
        .map(|p| p.number)
        .filter(|number| !stream.received.contains(number))
        .collect();
    assert!(
        lost.is_empty(),
        "events answered 202 while no node was cut off, and lost: {lost:?}"
    );
    eprintln!(
        "stream: {} published ({} × 202, {} × 503, {} × 504), {} delivered",
        stream.published.len(),
        stream.count(202),
        stream.count(503),
        stream.count(504),
        stream.received.len()
    );
}

/// Publishes `later-0` … `later-19` on `from`, each accepted and counting alice's two
/// connections, each received by `client` (alice on the other node) within 5 s. An event
/// of `stream` that was sent into the paused master may come first, when that master runs
/// again and runs what it had been sent (a Redis Cluster master also hands it to the rest
/// of its former shard, its promoted replica included): that one must have been answered
/// `504` (outcome unknown), and not delivered before.
fn later_events(from: &Node, client: &mut TestClient, stream: &Stream) {
    let mut late = Vec::new();
    for number in 0..20 {
        assert_eq!(from.publish_ok(ALICE.0, &format!("later-{number}")), 2);
        loop {
            let message = client.recv_within(Duration::from_secs(5));
            let text = event_text(&message);
            if text == format!("later-{number}") {
                break;
            }
            let old: u64 = text
                .strip_prefix("s-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("later-{number} expected, not {message:?}"));
            let status = stream
                .published
                .iter()
                .find(|p| p.number == old)
                .map(|p| p.status);
            assert_eq!(
                status,
                Some(504),
                "s-{old} delivered late, answered {status:?}"
            );
            assert!(
                !stream.received.contains(&old) && !late.contains(&old),
                "s-{old} delivered twice"
            );
            late.push(old);
        }
    }
    eprintln!("events answered 504 and delivered once the old master ran again: {late:?}");
}

/// Two nodes `n1`, `n2` on `url` with alice and `flood` (a user for
/// [`slow_subscriber_cut_off`]); alice logged in on both (the stream goes to the one on
/// n2); answers when each node counts both connections.
fn two_nodes(url: &str, flood: &str) -> (Node, Node, TestClient, TestClient) {
    let hash = cheap_hash(ALICE.1);
    let users = [(ALICE.0, hash.as_str()), (flood, hash.as_str())];
    let n1 = Node::start_url(url, "tether", "n1", &users, &|config| config);
    let n2 = Node::start_url(url, "tether", "n2", &users, &|config| config);
    let on_n1 = n1.login(ALICE.0, ALICE.1);
    let on_n2 = n2.login(ALICE.0, ALICE.1);
    wait_connections(&[&n1, &n2], ALICE.0, 2);
    (n1, n2, on_n1, on_n2)
}

/// Waits until every node counts `expected` connections of `user` (presence in Redis).
fn wait_connections(nodes: &[&Node], user: &str, expected: u64) {
    let agreed = wait_until(BACK, || {
        nodes.iter().all(|node| node.connections(user) == expected)
    });
    let counts: Vec<u64> = nodes.iter().map(|node| node.connections(user)).collect();
    assert!(
        agreed,
        "the nodes count {counts:?} connections of {user:?}, not {expected}"
    );
}

fn reconnects(node: &Node) -> f64 {
    node.metric("tether_cluster_reconnects_total")
}

/// Runs `kill` (connections killed on the data nodes) and answers the window until both
/// nodes reconnected (their reconnect counts grew, if `both_notice`, else either's) and
/// say `connected`.
fn kill_window(nodes: [&Node; 2], both_notice: bool, kill: impl FnOnce()) -> Window {
    let before = nodes.map(reconnects);
    let start = Instant::now();
    kill();
    let noticed = wait_until(NOTICED, || {
        let grew = nodes
            .iter()
            .zip(before)
            .map(|(node, before)| reconnects(node) > before);
        if both_notice {
            grew.into_iter().all(|grew| grew)
        } else {
            grew.into_iter().any(|grew| grew)
        }
    });
    assert!(
        noticed,
        "the nodes did not reconnect within {NOTICED:?} (reconnects {before:?} → {:?})",
        nodes.map(reconnects)
    );
    for node in nodes {
        node.wait_cluster_state("connected", BACK);
    }
    (start, Instant::now())
}

/// The slow subscriber case, on any set-up: `masters` get a tiny pub/sub output limit;
/// n2 stops reading (`SIGSTOP`) while n1 floods `flood`, a user of n2 on alice's shard,
/// until a master cuts n2 off; meanwhile n1 invalidates alice (who is on n2 too), which
/// n2 cannot receive. Resumed, n2 notices, reconnects, reconciles (alice's connection on
/// n2 gets `invalidated`), and delivers again.
fn slow_subscriber_cut_off(
    masters: &[&Redis],
    (n1, n2): (&Node, &Node),
    flood: &str,
    alice_on_n2: &mut TestClient,
) {
    let _flooded = n2.login(flood, ALICE.1);
    wait_connections(&[n1, n2], flood, 1);
    for master in masters {
        master.cli(&[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "pubsub 64kb 0 0",
        ]);
    }
    let before = reconnects(n2);
    let text = "f".repeat(1000);
    let batch = json!({"events": vec![json!({"user": flood, "text": text}); 60]});
    let cut_off = || {
        masters
            .iter()
            .any(|master| master.log().contains("output buffer limits"))
    };
    n2.server.signal(Signal::SIGSTOP);
    for _ in 0..400 {
        if cut_off() {
            break;
        }
        let (status, body) = n1.call("POST", "/v1/events", Some(&batch));
        assert_eq!(status, 202, "flood batch: {body}");
    }
    let logged = wait_until(NOTICED, cut_off);
    // Made while n2 is cut off: n1 counts alice's two connections (presence).
    let invalidated = logged.then(|| n1.invalidate(ALICE.0));
    n2.server.signal(Signal::SIGCONT);
    assert!(logged, "no master cut n2 off as a slow subscriber");
    let (status, body) = invalidated.expect("invalidated");
    assert_eq!((status, body), (200, json!({"invalidated": 2})));
    assert!(
        wait_until(NOTICED, || reconnects(n2) > before),
        "n2 did not reconnect after being cut off; its log:\n{}",
        n2.server.stderr_text()
    );
    n2.wait_cluster_state("connected", BACK);
    // Reconciled: the invalidation it missed reaches its connection now (after the
    // flood's events it still had).
    let reconciled = wait_until(BACK, || {
        matches!(
            alice_on_n2.try_recv(Duration::from_millis(200)),
            Ok(message) if message == ["invalidated"]
        )
    });
    assert!(
        reconciled,
        "alice on n2 was not invalidated after n2 came back; n2's log:\n{}",
        n2.server.stderr_text()
    );
    // Delivers again, to a new login.
    let mut fresh = n2.login(ALICE.0, ALICE.1);
    wait_connections(&[n1, n2], ALICE.0, 1);
    assert_eq!(n1.publish_ok(ALICE.0, "after"), 1);
    assert_eq!(
        event_text(&fresh.recv_within(Duration::from_secs(5))),
        "after"
    );
    assert_eq!(n2.metric("tether_cluster_connected"), 1.0);
}

// ---- Sentinel ----

#[test]
fn sentinel_master_paused_fails_over_and_resumed_it_takes_nothing() {
    let Some(set) = SentinelSet::start() else {
        return;
    };
    let (n1, n2, _on_n1, mut on_n2) = two_nodes(&set.url(), "flood");
    let (master, replica) = (
        set.master.addr().to_string(),
        set.replica.addr().to_string(),
    );
    let stream = stream_through(&n1, ALICE.0, &mut on_n2, || {
        let paused = Instant::now();
        set.master.pause();
        let promoted = wait_until(PROMOTION, || SentinelSet::is_master(&set.replica));
        assert!(promoted, "the sentinels did not promote the replica");
        let moved = wait_until(BACK, || {
            [&n1, &n2]
                .iter()
                .all(|node| node.cluster_redis().as_deref() == Some(replica.as_str()))
        });
        assert!(
            moved,
            "the nodes did not move to {replica}; n1's log:\n{}",
            n1.server.stderr_text()
        );
        for node in [&n1, &n2] {
            node.wait_cluster_state("connected", BACK);
        }
        vec![(paused, Instant::now())]
    });
    assert!(
        stream.count(503) + stream.count(504) > 0,
        "publishes were all accepted while the master was paused"
    );
    // Resumed, the old master learns it is a replica; the nodes stay on the new master.
    set.master.resume();
    let demoted = wait_until(PROMOTION, || !SentinelSet::is_master(&set.master));
    assert!(demoted, "the sentinels did not demote the resumed master");
    set.master.cli(&["CONFIG", "RESETSTAT"]);
    later_events(&n1, &mut on_n2, &stream);
    assert_eq!(
        set.master.command_calls("evalsha"),
        0,
        "a node ran its script on the old master"
    );
    for node in [&n1, &n2] {
        assert_eq!(node.cluster_redis().as_deref(), Some(replica.as_str()));
        assert_eq!(
            node.metric(&format!(
                "tether_cluster_redis_master{{address=\"{replica}\"}}"
            )),
            1.0
        );
        assert!(!node.metrics().contains(&format!("address=\"{master}\"")));
    }
    // Presence holds on the new master: both connections counted by both nodes.
    wait_connections(&[&n1, &n2], ALICE.0, 2);
}

#[test]
fn sentinel_masters_connections_killed_nodes_reconnect_and_lose_nothing_answered() {
    let Some(set) = SentinelSet::start() else {
        return;
    };
    let (n1, n2, _on_n1, mut on_n2) = two_nodes(&set.url(), "flood");
    stream_through(&n1, ALICE.0, &mut on_n2, || {
        let pubsub = kill_window([&n1, &n2], true, || {
            let killed = set.master.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
            assert!(killed.trim().parse::<u64>().expect("a count") >= 2);
        });
        // Command connections (the sentinels' too: they reconnect, no failover).
        let normal = kill_window([&n1, &n2], true, || {
            let killed = set.master.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
            assert!(killed.trim().parse::<u64>().expect("a count") >= 2);
        });
        vec![pubsub, normal]
    });
    assert!(SentinelSet::is_master(&set.master), "no failover happened");
    wait_connections(&[&n1, &n2], ALICE.0, 2);
}

#[test]
fn sentinel_node_cut_off_as_a_slow_subscriber_reconnects_and_reconciles() {
    let Some(set) = SentinelSet::start() else {
        return;
    };
    let (n1, n2, _on_n1, mut on_n2) = two_nodes(&set.url(), "flood");
    slow_subscriber_cut_off(&[&set.master], (&n1, &n2), "flood", &mut on_n2);
    assert!(SentinelSet::is_master(&set.master), "no failover happened");
}

// ---- Redis Cluster ----

/// One line of `CLUSTER NODES`: (id, port, flags, master id, slot ranges).
struct ClusterNode {
    id: String,
    port: u16,
    flags: String,
    master: String,
    slots: Vec<(u16, u16)>,
}

/// `CLUSTER NODES` as `server` sees it.
fn cluster_nodes(server: &Redis) -> Vec<ClusterNode> {
    server
        .cli(&["CLUSTER", "NODES"])
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let address = fields.get(1)?.split(['@', ',']).next()?;
            let port = address.rsplit(':').next()?.parse().ok()?;
            let slots = fields
                .iter()
                .skip(8)
                .filter(|slot| !slot.starts_with('['))
                .filter_map(|slot| {
                    let (first, last) = slot.split_once('-').unwrap_or((slot, slot));
                    Some((first.parse().ok()?, last.parse().ok()?))
                })
                .collect();
            Some(ClusterNode {
                id: (*fields.first()?).to_owned(),
                port,
                flags: (*fields.get(2)?).to_owned(),
                master: (*fields.get(3)?).to_owned(),
                slots,
            })
        })
        .collect()
}

/// The index in `cluster.servers` of the master that serves `user`'s channel now, and of
/// its replica, as `asked` (a running, unpaused server) sees them.
fn shard_of(cluster: &RedisCluster, asked: &Redis, user: &str) -> (usize, usize) {
    let (master, replica) = shard_ports(asked, user);
    let index = |port: u16| {
        cluster
            .servers
            .iter()
            .position(|server| server.addr().port() == port)
            .expect("one of the cluster's servers")
    };
    (index(master), index(replica))
}

/// A user name `flood…` whose channel is on the same shard as `user`'s.
fn name_on_the_shard_of(asked: &Redis, user: &str) -> String {
    let shard = shard_ports(asked, user).0;
    (0..)
        .map(|n| format!("flood{n}"))
        .find(|name| shard_ports(asked, name).0 == shard)
        .expect("a name")
}

/// The ports of the master that serves `user`'s channel now and of its replica.
fn shard_ports(asked: &Redis, user: &str) -> (u16, u16) {
    let hex: String = user.bytes().map(|byte| format!("{byte:02x}")).collect();
    let slot: u16 = asked
        .cli(&["CLUSTER", "KEYSLOT", &format!("tether:user:{{{hex}}}")])
        .trim()
        .parse()
        .expect("a slot");
    let nodes = cluster_nodes(asked);
    let master = nodes
        .iter()
        .find(|node| {
            node.flags.contains("master")
                && node
                    .slots
                    .iter()
                    .any(|(first, last)| (*first..=*last).contains(&slot))
        })
        .expect("a master serves the slot");
    let replica = nodes
        .iter()
        .find(|node| node.master == master.id)
        .expect("the master has a replica");
    (master.port, replica.port)
}

#[test]
fn cluster_master_paused_its_replica_takes_over_and_resumed_it_takes_nothing() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let (n1, n2, _on_n1, mut on_n2) = two_nodes(&cluster.url(), "flood");
    let (master, replica) = shard_of(&cluster, &cluster.servers[0], ALICE.0);
    let stream = stream_through(&n1, ALICE.0, &mut on_n2, || {
        let paused = Instant::now();
        cluster.servers[master].pause();
        let promoted = wait_until(PROMOTION, || {
            SentinelSet::is_master(&cluster.servers[replica])
        });
        assert!(
            promoted,
            "the replica of the paused master was not promoted; it sees:\n{}\nits log:\n{}",
            cluster.servers[replica].cli(&["CLUSTER", "NODES"]),
            cluster.servers[replica].log()
        );
        for node in [&n1, &n2] {
            // Back on the promoted replica: /healthz names it.
            let address = cluster.servers[replica].addr().to_string();
            let moved = wait_until(BACK, || {
                node.cluster_redis()
                    .is_some_and(|masters| masters.contains(&address))
            });
            assert!(
                moved,
                "a node did not name the promoted replica {address} (it says {:?}); its log:\n{}",
                node.cluster_redis(),
                node.server.stderr_text()
            );
            node.wait_cluster_state("connected", BACK);
        }
        vec![(paused, Instant::now())]
    });
    assert!(
        stream.count(503) + stream.count(504) > 0,
        "publishes for the paused shard were all accepted"
    );
    // Resumed, the old master becomes a replica of its replica and takes no script.
    cluster.servers[master].resume();
    let demoted = wait_until(PROMOTION, || {
        !SentinelSet::is_master(&cluster.servers[master])
    });
    assert!(demoted, "the resumed master was not turned into a replica");
    cluster.servers[master].cli(&["CONFIG", "RESETSTAT"]);
    later_events(&n1, &mut on_n2, &stream);
    assert_eq!(
        cluster.servers[master].command_calls("evalsha"),
        0,
        "a node ran its script on the old master"
    );
    let old = cluster.servers[master].addr().to_string();
    for node in [&n1, &n2] {
        let masters = node.cluster_redis().expect("cluster_redis");
        assert!(
            !masters.contains(&old),
            "/healthz names the old master: {masters}"
        );
    }
    wait_connections(&[&n1, &n2], ALICE.0, 2);
}

#[test]
fn cluster_masters_connections_killed_nodes_reconnect_and_lose_nothing_answered() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let (n1, n2, _on_n1, mut on_n2) = two_nodes(&cluster.url(), "flood");
    let masters = cluster.masters();
    stream_through(&n1, ALICE.0, &mut on_n2, || {
        // Sharded subscriptions on every master: both nodes follow users.
        let pubsub = kill_window([&n1, &n2], true, || {
            for master in &masters {
                master.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
            }
        });
        // The command connections on every master.
        let normal = kill_window([&n1, &n2], true, || {
            for master in &masters {
                master.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
            }
        });
        vec![pubsub, normal]
    });
    assert_eq!(cluster.masters().len(), 3, "no failover happened");
    wait_connections(&[&n1, &n2], ALICE.0, 2);
}

#[test]
fn cluster_node_cut_off_as_a_slow_subscriber_reconnects_and_reconciles() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let flood = name_on_the_shard_of(&cluster.servers[0], ALICE.0);
    let (n1, n2, _on_n1, mut on_n2) = two_nodes(&cluster.url(), &flood);
    let masters = cluster.masters();
    slow_subscriber_cut_off(&masters, (&n1, &n2), &flood, &mut on_n2);
    assert_eq!(cluster.masters().len(), 3, "no failover happened");
}
