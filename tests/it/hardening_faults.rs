//! Actor faults under load (issue 6): the registry and the bus panic again and again while
//! clients log in and out and events flow. The supervisor replaces them each time (after
//! growing delays as the faults keep coming), and afterwards every connection that stayed
//! bound still gets what is published for it.

use crate::common::in_process::{test_settings, InProcessServer};
use crate::common::{RecvError, TestClient};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_actors::hub::supervisor::{FaultTarget, MAX_RESTART_DELAY};

const USERS: usize = 6;
/// Connections per user that stay bound through the storm.
const STEADY_PER_USER: usize = 3;
/// Panics injected into each of the registry and the bus, each into a running actor: enough
/// for the restart delay to double up to its cap (0, 0.1, 0.2 … 3.2, then 5 s: ~11 s).
const PANICS_EACH: usize = 8;

fn user(index: usize) -> String {
    format!("user{index}")
}

/// Reads from `client` until the event with `text` arrives; events before it must be
/// events (storm traffic), and nothing else may come.
fn expect_event_eventually(client: &mut TestClient, text: &str, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match client.try_recv(left) {
            Ok(message) => message,
            Err(RecvError::Timeout(_)) => panic!("{who}: {text:?} never arrived"),
            Err(RecvError::Closed(_)) => panic!("{who}: closed before {text:?} arrived"),
        };
        assert_eq!(message[0], "event", "{who}: unexpected {message:?}");
        if message[2] == text {
            return;
        }
    }
}

/// The next reply on `client`, skipping the events a bound connection may get before it.
fn expect_reply(client: &mut TestClient, reply: &str) {
    loop {
        let message = client.recv();
        if message[0] != "event" {
            assert_eq!(message, [reply]);
            return;
        }
    }
}

#[test]
fn registry_and_bus_panicking_repeatedly_under_load_lose_no_binding() {
    let names: Vec<String> = (0..USERS).map(user).collect();
    let users: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "pw")).collect();
    let server = Arc::new(InProcessServer::start(test_settings(), &users));

    let mut steady: Vec<(usize, TestClient)> = Vec::new();
    for index in 0..USERS {
        for _ in 0..STEADY_PER_USER {
            let mut client = TestClient::connect(server.addr());
            client.login(&user(index), "pw");
            steady.push((index, client));
        }
    }
    for name in &names {
        server.wait_for_connections(name, STEADY_PER_USER);
    }

    let storm = Arc::new(AtomicBool::new(true));
    // Churn: connections log in, out, in as another user, and go.
    let churners: Vec<_> = (0..2)
        .map(|worker| {
            let storm = Arc::clone(&storm);
            let addr = server.addr();
            std::thread::spawn(move || {
                let mut rounds = 0;
                while storm.load(Ordering::SeqCst) {
                    let mut client = TestClient::connect(addr);
                    client.login(&user((rounds + worker) % USERS), "pw");
                    client.send(&["logout"]);
                    expect_reply(&mut client, "logout_ack");
                    client.send(&["login", &user((rounds + worker + 1) % USERS), "pw"]);
                    expect_reply(&mut client, "login_valid");
                    if rounds % 2 == 0 {
                        client.send(&["disconnect"]);
                        expect_reply(&mut client, "disconnect_ack");
                    }
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    // Events flow to every user; a publish may fail while the bus is being replaced.
    let publisher = {
        let storm = Arc::clone(&storm);
        let server = Arc::clone(&server);
        std::thread::spawn(move || {
            let (mut published, mut failed) = (0usize, 0usize);
            while storm.load(Ordering::SeqCst) {
                let name = user(published % USERS);
                match server.block_on(server.handle().publish(name, "storm")) {
                    Ok(_) => published += 1,
                    Err(_) => failed += 1,
                }
            }
            (published, failed)
        })
    };

    // Each panic goes to a running actor: the next one only once the supervisor has put the
    // fresh registry shards and bus in place (it counts a restart once the fresh actor is
    // reachable). Failing again within seconds, each waits a longer delay than the last.
    const REGISTRY: &str = "tether_actor_restarts_total{actor=\"registry\"}";
    const BUS: &str = "tether_actor_restarts_total{actor=\"bus\"}";
    let (registry_before, bus_before) = (server.metric(REGISTRY), server.metric(BUS));
    let shards = server.workers() as f64;
    for round in 1..=PANICS_EACH {
        server.handle().inject_panic(FaultTarget::Registry);
        server.handle().inject_panic(FaultTarget::Bus);
        let expected = (
            registry_before + round as f64 * shards,
            bus_before + round as f64,
        );
        // The longest restart delay, and a margin for a loaded machine.
        let replaced =
            crate::common::wait_until(MAX_RESTART_DELAY + Duration::from_secs(10), || {
                (server.metric(REGISTRY), server.metric(BUS)) == expected
            });
        assert!(
            replaced,
            "panic round {round}: {} registry and {} bus restart(s), expected {} and {}",
            server.metric(REGISTRY) - registry_before,
            server.metric(BUS) - bus_before,
            expected.0 - registry_before,
            expected.1 - bus_before
        );
    }
    storm.store(false, Ordering::SeqCst);
    let churned: usize = churners
        .into_iter()
        .map(|churner| churner.join().expect("churner"))
        .sum();
    let (published, failed) = publisher.join().expect("publisher");
    eprintln!(
        "fault storm: {} panics; {churned} churn rounds; {published} events published, \
         {failed} publishes failed",
        2 * PANICS_EACH
    );
    assert!(churned > 0 && published > 0, "no load during the storm");

    // Every steady connection is still bound (once the churners' last connections are
    // gone); one more, awaited, registry replacement shows the registry rebuilt from them
    // (the storm's last ones may still be under way).
    for name in &names {
        server.wait_for_connections(name, STEADY_PER_USER);
    }
    server.replace_the_registry();
    // The storm's last bus restart may still be waiting out its delay.
    let bus_up =
        crate::common::wait_until(MAX_RESTART_DELAY * 2, || server.handle().bus().connected());
    assert!(bus_up, "no bus running after the storm");
    for (index, name) in names.iter().enumerate() {
        let text = format!("after the storm {index}");
        let receipt = server
            .block_on(server.handle().publish(name.as_str(), text.as_str()))
            .expect("published after the storm");
        assert_eq!(receipt.connections, STEADY_PER_USER, "{name}");
    }
    for (number, (index, client)) in steady.iter_mut().enumerate() {
        let who = format!("steady connection #{number} of {}", user(*index));
        expect_event_eventually(client, &format!("after the storm {index}"), &who);
        client.send(&["prolongate"]);
        client.expect(&["prolongate_ack"]);
    }
}
