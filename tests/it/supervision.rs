//! Supervision: when the registry or the bus panics, a fresh one takes over (counted in
//! `tether_actor_restarts_total`), the registry rebuilt from the connections, and clients
//! notice nothing; one that keeps failing is restarted after growing delays.

use crate::common::in_process::{test_settings, InProcessServer};
use crate::common::{wait_until, TestClient};
use std::time::{Duration, Instant};
use tether_actors::hub::supervisor::{FaultTarget, FIRST_RESTART_DELAY, MAX_RESTART_DELAY};

const QUIET: Duration = Duration::from_millis(300);

struct Scene {
    server: InProcessServer,
    alice_1: TestClient,
    alice_2: TestClient,
    alice_3: TestClient,
    bob: TestClient,
}

fn scene() -> Scene {
    let server = InProcessServer::start(test_settings(), &[("alice", "pw-a"), ("bob", "pw-b")]);
    let mut alice_1 = TestClient::connect(server.addr());
    let mut alice_2 = TestClient::connect(server.addr());
    let mut alice_3 = TestClient::connect(server.addr());
    let mut bob = TestClient::connect(server.addr());
    for client in [&mut alice_1, &mut alice_2, &mut alice_3] {
        client.login("alice", "pw-a");
    }
    bob.login("bob", "pw-b");
    server.wait_for_connections("alice", 3);
    server.wait_for_connections("bob", 1);
    Scene {
        server,
        alice_1,
        alice_2,
        alice_3,
        bob,
    }
}

/// Events and invalidations still reach the connections bound before the fault.
fn assert_bindings_survived(scene: &mut Scene) {
    let server = &scene.server;
    assert_eq!(server.handle().connections("alice"), 3);
    assert_eq!(server.handle().connections("bob"), 1);

    let receipt = server
        .block_on(server.handle().publish("alice", "after the fault"))
        .expect("published");
    assert_eq!(receipt.connections, 3);
    let time = receipt.time.to_string();
    for client in [&mut scene.alice_1, &mut scene.alice_2, &mut scene.alice_3] {
        client.expect(&["event", &time, "after the fault"]);
    }

    scene.alice_1.send(&["invalidate"]);
    scene.alice_1.expect(&["invalidate_ack"]);
    scene.alice_2.expect(&["invalidated"]);
    scene.alice_3.expect(&["invalidated"]);
    crate::common::expect_all_silent(&mut [&mut scene.bob, &mut scene.alice_1], QUIET);
    server.wait_for_connections("alice", 1);
}

/// Makes the bus panic and waits until the supervisor has put a fresh one in its place;
/// answers how long that took.
fn replace_the_bus(server: &InProcessServer) -> Duration {
    const RESTARTS: &str = "tether_actor_restarts_total{actor=\"bus\"}";
    let restarts = server.metric(RESTARTS);
    let panicked = server.handle().bus();
    let injected = Instant::now();
    server.handle().inject_panic(FaultTarget::Bus);
    assert!(
        wait_until(Duration::from_secs(10), || server.handle().bus()
            != panicked),
        "the bus was not replaced"
    );
    let replaced = injected.elapsed();
    // Its mailbox goes with the rest of it, just after its death notice.
    assert!(
        wait_until(Duration::from_secs(1), || !panicked.connected()),
        "the panicked bus still runs"
    );
    // Counted by the supervisor as it starts the new bus, which may be a moment after the
    // handle is swapped: awaited, then exactly one.
    wait_until(Duration::from_secs(5), || {
        server.metric(RESTARTS) >= restarts + 1.0
    });
    assert_eq!(
        server.metric(RESTARTS),
        restarts + 1.0,
        "one bus restart counted"
    );
    replaced
}

#[test]
fn a_panicking_registry_is_replaced_and_rebuilt_from_the_connections() {
    let mut scene = scene();
    scene.server.replace_the_registry();
    assert_eq!(
        scene
            .server
            .metric("tether_actor_restarts_total{actor=\"bus\"}"),
        0.0,
        "the bus ran on"
    );
    assert_bindings_survived(&mut scene);
}

#[test]
fn a_panicking_bus_is_replaced_and_delivery_continues() {
    let mut scene = scene();
    replace_the_bus(&scene.server);
    assert_bindings_survived(&mut scene);
}

#[test]
fn repeated_faults_of_both_children_leave_every_binding_in_place() {
    let mut scene = scene();
    for round in 0..5 {
        if round % 2 == 0 {
            scene.server.replace_the_registry();
        } else {
            replace_the_bus(&scene.server);
        }
        let receipt = scene
            .server
            .block_on(
                scene
                    .server
                    .handle()
                    .publish("bob", format!("round {round}")),
            )
            .expect("published");
        assert_eq!(receipt.connections, 1, "round {round}");
        scene.bob.expect(&[
            "event",
            &receipt.time.to_string(),
            &format!("round {round}"),
        ]);
    }
    let restarts = |actor: &str| {
        scene
            .server
            .metric(&format!("tether_actor_restarts_total{{actor=\"{actor}\"}}"))
    };
    let workers = test_settings().workers as f64;
    assert_eq!(
        (restarts("registry"), restarts("bus")),
        (3.0 * workers, 2.0)
    );
    assert_bindings_survived(&mut scene);
}

#[test]
fn a_bus_failing_again_and_again_is_restarted_after_growing_delays_and_serves_afterwards() {
    let mut scene = scene();
    let took: Vec<Duration> = (0..5).map(|_| replace_the_bus(&scene.server)).collect();
    // At once the first time (bounded loosely: a loaded machine is slow to run the
    // restart; the exact delays are unit-tested); then 100 ms, 200 ms, 400 ms, 800 ms,
    // each failure coming right after its restart.
    assert!(
        took[0] < MAX_RESTART_DELAY / 2,
        "the first restart took {:?}",
        took[0]
    );
    for (failure, took) in took.iter().enumerate().skip(1) {
        let delay = FIRST_RESTART_DELAY * (1 << (failure - 1));
        assert!(
            *took >= delay,
            "restart #{} took {took:?}, less than its delay {delay:?}",
            failure + 1
        );
    }
    assert_bindings_survived(&mut scene);
}
