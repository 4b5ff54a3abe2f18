//! Cluster behaviour that needs one node cut off from Redis while the others reach it
//! (SPEC §8 "reconciles: every invalidation … it missed is applied after it is back"): node
//! 2 reaches Redis through a TCP relay of the test's, which the test cuts and restores.

use crate::common::cluster::Node;
use crate::common::redis::Redis;
use crate::common::{cheap_hash, TestClient};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

const ALICE: (&str, &str) = ("alice", "alice-pw");
/// A node notices a lost Redis within 10 s (SPEC §8).
const NOTICED: Duration = Duration::from_secs(10);
/// How long a node may take to reconnect and reconcile once Redis is reachable again.
const BACK: Duration = Duration::from_secs(15);

/// Relays TCP connections to `upstream` until cut: then every relayed connection is shut
/// and new ones are closed at once, until restored.
pub(crate) struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// What is relayed towards Redis passes here: a Redis slow to answer one command.
    hold: Arc<Hold>,
}

/// Holds the bytes relayed towards Redis from the first read that holds a marker on (that
/// connection stalls behind it) until released: Redis has the command and has not answered.
#[derive(Default)]
struct Hold {
    state: Mutex<HoldState>,
    changed: Condvar,
}

#[derive(Debug, Default, Clone, PartialEq)]
enum HoldState {
    #[default]
    Off,
    /// Waiting for the marker.
    Armed(Vec<u8>),
    /// The marker came; its bytes wait.
    Holding,
    Released,
}

impl Hold {
    /// Holds the first bytes containing `marker` from now on.
    fn arm(&self, marker: &[u8]) {
        *self.state.lock().expect("not poisoned") = HoldState::Armed(marker.to_vec());
    }

    /// Waits (at most `timeout`) until bytes with the marker are held.
    fn wait_holding(&self, timeout: Duration) -> bool {
        let state = self.state.lock().expect("not poisoned");
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |state| *state != HoldState::Holding)
            .expect("not poisoned");
        *state == HoldState::Holding
    }

    /// Lets the held bytes, and what follows, through.
    fn release(&self) {
        *self.state.lock().expect("not poisoned") = HoldState::Released;
        self.changed.notify_all();
    }

    /// Returns once `chunk` may be relayed.
    fn pass(&self, chunk: &[u8]) {
        let mut state = self.state.lock().expect("not poisoned");
        if let HoldState::Armed(marker) = &*state {
            if chunk
                .windows(marker.len())
                .any(|window| window == marker.as_slice())
            {
                *state = HoldState::Holding;
                self.changed.notify_all();
            }
        }
        while *state == HoldState::Holding {
            state = self.changed.wait(state).expect("not poisoned");
        }
    }
}

impl Relay {
    pub(crate) fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds a loopback port");
        let addr = listener.local_addr().expect("has an address");
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let hold = Arc::new(Hold::default());
        let (accepting_cut, accepting_open) = (Arc::clone(&cut), Arc::clone(&open));
        let accepting_hold = Arc::clone(&hold);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if accepting_cut.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let mut open = accepting_open.lock().expect("not poisoned");
                for stream in [&client, &server] {
                    open.push(stream.try_clone().expect("clones a socket"));
                }
                pipe(&client, &server, Some(Arc::clone(&accepting_hold)));
                pipe(&server, &client, None);
            }
        });
        Self {
            addr,
            cut,
            open,
            hold,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Shuts every relayed connection and refuses new ones.
    pub(crate) fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().expect("not poisoned").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again.
    pub(crate) fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on a thread of its own until either side ends, each read through
/// `hold` when given.
fn pipe(from: &TcpStream, to: &TcpStream, hold: Option<Arc<Hold>>) {
    let (mut from, mut to) = (
        from.try_clone().expect("clones a socket"),
        to.try_clone().expect("clones a socket"),
    );
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        while let Ok(read) = from.read(&mut buffer) {
            if let Some(hold) = &hold {
                hold.pass(&buffer[..read]);
            }
            if read == 0 || to.write_all(&buffer[..read]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// Node 1 on Redis directly, node 2 through a relay; alice may log in on both.
pub(crate) fn two_nodes_one_relayed() -> Option<(Redis, Relay, Node, Node)> {
    let redis = Redis::start()?;
    let relay = Relay::start(redis.addr());
    let hash = cheap_hash(ALICE.1);
    let users = [(ALICE.0, hash.as_str())];
    let n1 = Node::start(&redis, "tether", "n1", &users, &|config| config);
    let relayed = relay.url();
    let n2 = Node::start(&redis, "tether", "n2", &users, &|config| {
        config.set("cluster", "redis", relayed.as_str())
    });
    Some((redis, relay, n1, n2))
}

/// Waits until `node` counts `expected` connections of alice over the cluster.
fn wait_alice(node: &Node, expected: u64) {
    let counted = crate::common::wait_until(Duration::from_secs(10), || {
        node.connections(ALICE.0) == expected
    });
    assert!(
        counted,
        "the node does not count {expected} of alice's connections"
    );
}

#[test]
fn an_invalidation_missed_while_cut_off_is_applied_after_reconnecting_and_spares_later_logins() {
    let Some((_redis, relay, n1, n2)) = two_nodes_one_relayed() else {
        return;
    };
    let mut before = n2.login(ALICE.0, ALICE.1);
    wait_alice(&n1, 1);

    relay.cut();
    n2.wait_cluster_state("unreachable", NOTICED);
    // Node 1 still reaches Redis: its invalidation is published while node 2 hears nothing.
    let (status, body) = n1.invalidate(ALICE.0);
    assert_eq!(status, 200, "{body}");
    before.expect_nothing_for(Duration::from_millis(500));
    // A login on node 2 after the invalidation must survive it.
    std::thread::sleep(Duration::from_millis(1100));
    let mut after: TestClient = n2.login(ALICE.0, ALICE.1);

    relay.restore();
    n2.wait_cluster_state("connected", BACK);
    assert_eq!(before.recv_within(BACK), ["invalidated"]);
    after.expect_nothing_for(Duration::from_millis(500));
    after.send(&["prolongate"]);
    after.expect(&["prolongate_ack"]);
    // And the cluster agrees: one connection of alice left, on node 2.
    wait_alice(&n1, 1);
    let (status, body) = n1.invalidate(ALICE.0);
    assert_eq!((status, body), (200, json!({"invalidated": 1})));
    assert_eq!(after.recv(), ["invalidated"]);
}

#[test]
fn a_node_cut_off_answers_503_for_publishes_and_counts_while_its_own_clients_go_on() {
    let Some((_redis, relay, n1, n2)) = two_nodes_one_relayed() else {
        return;
    };
    let mut here = n2.login(ALICE.0, ALICE.1);
    wait_alice(&n1, 1);
    relay.cut();
    n2.wait_cluster_state("unreachable", NOTICED);
    assert_eq!(n2.metric("tether_cluster_connected"), 0.0);
    let (status, body) = n2.publish(ALICE.0, "lost");
    assert_eq!(status, 503, "{body}");
    let (status, _) = n2.call("GET", &Node::user_path(ALICE.0, "/connections"), None);
    assert_eq!(status, 503);
    let (status, _) = n2.call("GET", "/v1/users", None);
    assert_eq!(status, 503, "the list cannot count the other nodes");
    let (status, _) = n2.invalidate(ALICE.0);
    assert_eq!(status, 503);
    // Nothing was delivered, and the node's own client is served.
    here.send(&["prolongate"]);
    here.expect(&["prolongate_ack"]);
    // Node 1 is unaffected: its publish reaches nobody on node 2 meanwhile.
    let (status, _) = n1.publish(ALICE.0, "elsewhere");
    assert_eq!(status, 202);
    here.expect_nothing_for(Duration::from_millis(500));

    relay.restore();
    n2.wait_cluster_state("connected", BACK);
    assert!(n2.metric("tether_cluster_reconnects_total") >= 1.0);
    let connections = n1.publish_ok(ALICE.0, "again");
    assert_eq!(connections, 1);
    let message = here.recv_within(BACK);
    assert_eq!(message[2], "again", "{message:?}");
}

/// A node started the way a host program embeds one (SPEC §8: "the same cluster mode is
/// available to a host program"): `RedisBroker` and `Tether::start_clustered` on an actix
/// System of its own; stopped when the answered sender is dropped.
pub(crate) fn embedded_node(
    redis: &Redis,
    node: &str,
) -> (
    SocketAddr,
    tether_actors::TetherHandle,
    tokio::sync::oneshot::Sender<()>,
) {
    use crate::common::in_process::{test_settings, user_set};
    use tether_actors::auth::user_store::UserTable;
    let broker = tether_cluster::RedisBroker::start(tether_cluster::ClusterSettings {
        redis: redis.url(),
        node: node.to_owned(),
        prefix: "embedded".to_owned(),
        redis_ca: None,
    })
    .expect("the broker starts");
    let (started, started_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").expect("binds a loopback port");
            let listeners = tether_actors::Listeners {
                plain: Some(listener),
                tls: None,
                websocket: None,
                proxy_trust: Default::default(),
            };
            let users = Arc::new(UserTable::new(user_set(&[ALICE], 4)));
            let broker = broker as Arc<dyn tether_actors::hub::broker::Broker>;
            let tether = tether_actors::Tether::start_clustered(
                listeners,
                test_settings(),
                users,
                Some(broker),
            )
            .expect("the server starts");
            let _ = started.send((tether.local_addr(), tether.handle()));
            let _ = stopped.await;
            tether.shutdown().await;
        });
    });
    let (addr, handle) = started_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("started within 10 s");
    (addr, handle, stop)
}

#[test]
fn a_host_program_embedding_two_nodes_publishes_across_them_through_its_handle() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let (_, first, _stop_first) = embedded_node(&redis, "e1");
    let (second_addr, second, _stop_second) = embedded_node(&redis, "e2");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let connected = crate::common::wait_until(Duration::from_secs(10), || {
        first.cluster_connected() == Some(true) && second.cluster_connected() == Some(true)
    });
    assert!(connected, "both embedded nodes connect to Redis");

    let mut alice = TestClient::connect(second_addr);
    alice.login(ALICE.0, ALICE.1);
    let counted = crate::common::wait_until(Duration::from_secs(10), || {
        runtime.block_on(first.cluster_connections(ALICE.0)) == Ok(1)
    });
    assert!(
        counted,
        "the first node counts alice's connection on the second"
    );
    assert_eq!(
        first.connections(ALICE.0),
        0,
        "none on the first node itself"
    );

    let receipt = runtime
        .block_on(first.publish(ALICE.0, "through the handle"))
        .expect("published");
    assert_eq!(receipt.connections, 1);
    let message = alice.recv_within(BACK);
    assert_eq!(message[2], "through the handle", "{message:?}");
    let invalidated = runtime
        .block_on(first.invalidate(
            ALICE.0,
            tether_actors::util::metrics::InvalidationCause::Operator,
        ))
        .expect("invalidated");
    assert_eq!(invalidated, 1);
    assert_eq!(alice.recv(), ["invalidated"]);
}

#[test]
fn a_node_started_while_redis_is_unreachable_joins_once_it_is_with_one_log_line_each_way() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let relay = Relay::start(redis.addr());
    relay.cut();
    let relayed = relay.url();
    let hash = cheap_hash(ALICE.1);
    let restore = std::thread::spawn(move || {
        // Long enough for several failed attempts (100 ms doubling, jittered).
        std::thread::sleep(Duration::from_secs(3));
        relay.restore();
        relay
    });
    // Node::start returns once /healthz says connected (within 15 s).
    let node = Node::start(
        &redis,
        "tether",
        "n1",
        &[(ALICE.0, hash.as_str())],
        &|config| config.set("cluster", "redis", relayed.as_str()),
    );
    let _relay = restore.join().expect("the relay thread ends");
    let log = node.server.stderr_text();
    let unreachable = log.matches("cluster: Redis unreachable").count();
    let connected = log.matches("cluster: connected to Redis").count();
    assert_eq!(
        (unreachable, connected),
        (1, 1),
        "one line per change of state:\n{log}"
    );
    let mut alice = node.login(ALICE.0, ALICE.1);
    alice.send(&["prolongate"]);
    alice.expect(&["prolongate_ack"]);
    assert_eq!(node.publish_ok(ALICE.0, "joined"), 1);
}

#[test]
fn the_user_list_counts_every_live_node_with_one_script_run_per_page() {
    const BOB: (&str, &str) = ("bob", "bob-pw");
    const CAROL: (&str, &str) = ("carol", "carol-pw");
    let Some(cluster) = crate::common::cluster::Cluster::start(2, &[ALICE, BOB, CAROL]) else {
        return;
    };
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let _alice_here = n1.login(ALICE.0, ALICE.1);
    let _alice_there = [n2.login(ALICE.0, ALICE.1), n2.login(ALICE.0, ALICE.1)];
    let _bob_there = n2.login(BOB.0, BOB.1);
    cluster.wait_connections(ALICE.0, 3);
    cluster.wait_connections(BOB.0, 1);
    let counts = |node: &Node| {
        let (status, body) = node.call("GET", "/v1/users", None);
        assert_eq!(status, 200, "{body}");
        body["users"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|user| {
                (
                    user["name"].as_str().expect("a name").to_owned(),
                    user["connections"].as_u64().expect("a count"),
                )
            })
            .collect::<Vec<_>>()
    };
    let hmgets = cluster.redis.command_calls("hmget");
    let expected = vec![
        ("alice".to_owned(), 3),
        ("bob".to_owned(), 1),
        ("carol".to_owned(), 0),
    ];
    assert_eq!(counts(n1), expected, "on n1");
    // One HMGET per other live node for the whole page, not one lookup per user.
    assert_eq!(cluster.redis.command_calls("hmget"), hmgets + 1);
    assert_eq!(counts(n2), expected, "on n2");
}

#[test]
fn a_publish_accepted_while_redis_is_slow_at_sigterm_reaches_the_node_s_clients_before_shutdown() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let relay = Relay::start(redis.addr());
    let hash = cheap_hash(ALICE.1);
    let relayed = relay.url();
    let mut node = Node::start(
        &redis,
        "tether",
        "n1",
        &[(ALICE.0, hash.as_str())],
        &|config| config.set("cluster", "redis", relayed.as_str()),
    );
    let mut alice = node.login(ALICE.0, ALICE.1);
    // Redis is slow with the publish when the node is told to stop: the relay holds the
    // publish (found by its text) on its way to Redis, SIGTERM follows, and Redis gets it,
    // and answers, only once the node has taken the signal.
    const TEXT: &str = "last words";
    relay.hold.arm(TEXT.as_bytes());
    let (status, body) = std::thread::scope(|scope| {
        let publisher = scope.spawn(|| node.publish(ALICE.0, TEXT));
        let held = relay.hold.wait_holding(Duration::from_secs(10));
        if held {
            node.server.terminate();
            node.server
                .wait_for_log("SIGTERM received", Duration::from_secs(5));
        }
        relay.hold.release();
        assert!(held, "the publish never went to Redis");
        publisher.join().expect("the publisher thread ends")
    });
    assert_eq!(status, 202, "the publish in flight at SIGTERM: {body}");
    assert_eq!(
        alice.events_before_shutdown(),
        1,
        "accepted ({body}) but not delivered before shutdown"
    );
    let status = node.server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}
