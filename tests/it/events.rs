//! Events published through the library API (SPEC §3): who gets them, in which order, and
//! the time they carry.

use crate::common::in_process::{test_settings, InProcessServer};
use crate::common::{utc_millis_now, RecvError, TestClient};
use std::time::Duration;
use tether_actors::auth::credentials::CredentialError;
use tether_actors::hub::bus::{Publish, PublishError, EVENTS_IN_FLIGHT, MAX_BATCH_EVENTS};

const QUIET: Duration = Duration::from_millis(300);

fn server() -> InProcessServer {
    InProcessServer::start(test_settings(), &[("alice", "pw-a"), ("bob", "pw-b")])
}

#[test]
fn events_reach_every_bound_connection_of_the_user_in_publish_order_and_nobody_else() {
    let server = server();
    let mut alice_1 = TestClient::connect(server.addr());
    let mut alice_2 = TestClient::connect(server.addr());
    let mut bob = TestClient::connect(server.addr());
    let mut anonymous = TestClient::connect(server.addr());
    alice_1.login("alice", "pw-a");
    alice_2.login("alice", "pw-a");
    bob.login("bob", "pw-b");
    server.wait_for_connections("alice", 2);

    let mut times = Vec::new();
    for n in 0..50 {
        let receipt = server
            .block_on(server.handle().publish("alice", format!("event {n} ü")))
            .expect("published");
        assert_eq!(
            receipt.connections, 2,
            "event {n} handed to both connections"
        );
        times.push(receipt.time);
    }
    for client in [&mut alice_1, &mut alice_2] {
        for (n, time) in times.iter().enumerate() {
            let text = format!("event {n} ü");
            client.expect(&["event", &time.to_string(), &text]);
        }
    }
    crate::common::expect_all_silent(&mut [&mut bob, &mut anonymous, &mut alice_1], QUIET);
}

#[test]
fn events_for_a_user_without_connections_are_not_stored() {
    let server = server();
    let receipt = server
        .block_on(server.handle().publish("alice", "nobody hears this"))
        .expect("published");
    assert_eq!(receipt.connections, 0);
    let unknown = server
        .block_on(server.handle().publish("nobody-by-that-name", "x"))
        .expect("published");
    assert_eq!(unknown.connections, 0);

    let mut alice = TestClient::connect(server.addr());
    alice.login("alice", "pw-a");
    alice.expect_nothing_for(QUIET);
}

#[test]
fn events_stop_reaching_a_connection_after_logout_invalidation_or_relogin() {
    let server = server();
    let mut logged_out = TestClient::connect(server.addr());
    let mut invalidated = TestClient::connect(server.addr());
    let mut moved = TestClient::connect(server.addr());
    let mut staying = TestClient::connect(server.addr());
    for client in [&mut logged_out, &mut invalidated, &mut moved, &mut staying] {
        client.login("alice", "pw-a");
    }
    logged_out.send(&["logout"]);
    logged_out.expect(&["logout_ack"]);
    moved.login("bob", "pw-b");
    staying.send(&["invalidate"]);
    staying.expect(&["invalidate_ack"]);
    invalidated.expect(&["invalidated"]);
    server.wait_for_connections("alice", 1);

    let receipt = server
        .block_on(server.handle().publish("alice", "only for the one left"))
        .expect("published");
    assert_eq!(receipt.connections, 1);
    staying.expect(&["event", &receipt.time.to_string(), "only for the one left"]);
    crate::common::expect_all_silent(&mut [&mut logged_out, &mut invalidated, &mut moved], QUIET);
}

#[test]
fn event_time_is_utc_milliseconds_with_utc_zone() {
    let server = server();
    let mut alice = TestClient::connect(server.addr());
    alice.login("alice", "pw-a");
    server.wait_for_connections("alice", 1);
    let before = utc_millis_now();
    let receipt = server
        .block_on(server.handle().publish("alice", "t"))
        .expect("published");
    let after = utc_millis_now();
    assert!(
        (before..=after).contains(&receipt.time),
        "{} not within [{before}, {after}]",
        receipt.time
    );
    alice.expect(&["event", &receipt.time.to_string(), "t"]);
}

#[test]
fn event_time_is_local_wall_clock_of_the_configured_zone() {
    let mut settings = test_settings();
    settings.time_zone = jiff::tz::TimeZone::get("Europe/Moscow").expect("zone known");
    let server = InProcessServer::start(settings, &[("alice", "pw-a")]);
    let mut alice = TestClient::connect(server.addr());
    alice.login("alice", "pw-a");
    server.wait_for_connections("alice", 1);
    let three_hours = 3 * 3600 * 1000;
    let before = utc_millis_now();
    let receipt = server
        .block_on(server.handle().publish("alice", "moscow"))
        .expect("published");
    let after = utc_millis_now();
    assert!(
        (before + three_hours..=after + three_hours).contains(&receipt.time),
        "{} is not UTC+3 of [{before}, {after}]",
        receipt.time
    );
    alice.expect(&["event", &receipt.time.to_string(), "moscow"]);
}

#[test]
fn events_with_separators_or_invalid_user_names_are_refused_and_not_delivered() {
    let server = server();
    let mut alice = TestClient::connect(server.addr());
    alice.login("alice", "pw-a");
    server.wait_for_connections("alice", 1);
    for text in ["a\u{1e}b", "a\u{1f}b"] {
        assert_eq!(
            server.block_on(server.handle().publish("alice", text)),
            Err(PublishError::TextHasSeparator)
        );
    }
    assert_eq!(
        server.block_on(server.handle().publish("", "x")),
        Err(PublishError::InvalidUser(CredentialError::EmptyName))
    );
    assert_eq!(
        server.block_on(server.handle().publish("a\nb", "x")),
        Err(PublishError::InvalidUser(
            CredentialError::NameHasControlCharacter
        ))
    );
    alice.expect_nothing_for(QUIET);
}

#[test]
fn events_are_whole_messages_between_pipelined_replies() {
    let server = server();
    let mut alice = TestClient::connect(server.addr());
    alice.login("alice", "pw-a");
    server.wait_for_connections("alice", 1);
    let pipeline: Vec<&[&str]> = vec![&["prolongate"]; 200];
    let burst = crate::common::encode_all(&pipeline);
    let handle = server.handle().clone();
    let publisher = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        for n in 0..100 {
            runtime
                .block_on(handle.publish("alice", format!("e{n}")))
                .expect("published");
        }
    });
    for _ in 0..5 {
        alice.send_raw(&burst);
    }
    publisher.join().expect("publisher finished");
    let (mut acks, mut events) = (0, 0);
    while acks < 1000 || events < 100 {
        let message = alice.recv();
        match message[0].as_str() {
            "prolongate_ack" => {
                assert_eq!(message.len(), 1);
                acks += 1;
            }
            "event" => {
                assert_eq!(message.len(), 3, "{message:?}");
                assert_eq!(message[2], format!("e{events}"), "events in publish order");
                events += 1;
            }
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[test]
fn a_connection_checking_a_new_login_still_takes_its_users_events() {
    let server = InProcessServer::start(test_settings(), &[]);
    // An unknown user is checked against a stand-in of a cost the users have: about a
    // second at 14.
    server.replace_users(&[("alice", "pw-a")], 14);
    let mut alice = TestClient::connect(server.addr());
    alice.send(&["login", "alice", "pw-a"]);
    assert_eq!(
        alice.recv_within(crate::common::CHECKS_TIMEOUT),
        ["login_valid"]
    );
    alice.send(&["login", "nobody", "pw"]);
    alice.send(&["prolongate"]);
    // Counted once the login was handled: its check is under way.
    assert!(
        crate::common::wait_until(Duration::from_secs(5), || {
            server.metric(r#"tether_commands_total{type="login"}"#) == 2.0
        }),
        "the second login never reached the server"
    );

    // More events than may be in flight: if the checking connection held them, the last
    // publishes would wait for its verdict.
    for seq in 0..=EVENTS_IN_FLIGHT {
        let receipt = server
            .block_on(server.handle().publish("alice", seq.to_string()))
            .expect("published");
        assert_eq!(receipt.connections, 1);
    }
    for seq in 0..=EVENTS_IN_FLIGHT {
        let event = alice.recv();
        assert_eq!(
            (event[0].as_str(), event[2].as_str()),
            ("event", &*seq.to_string())
        );
    }
    assert!(
        matches!(alice.try_recv(Duration::ZERO), Err(RecvError::Timeout(_))),
        "the login check ended too soon for this test"
    );
    // The command behind the login waited for its verdict.
    assert_eq!(
        alice.recv_within(crate::common::CHECKS_TIMEOUT),
        ["login_invalid"]
    );
    assert_eq!(alice.recv(), ["prolongate_ack"]);
}

fn batch(events: &[(&str, String)]) -> Vec<Publish> {
    events
        .iter()
        .map(|(user, text)| Publish::new(*user, text.clone()))
        .collect()
}

#[test]
fn a_batch_through_the_handle_reaches_each_user_in_order_with_a_receipt_per_event() {
    let server = server();
    let mut alice = TestClient::connect(server.addr());
    let mut bob = TestClient::connect(server.addr());
    alice.login("alice", "pw-a");
    bob.login("bob", "pw-b");
    server.wait_for_connections("alice", 1);
    server.wait_for_connections("bob", 1);

    let events: Vec<(&str, String)> = (0..200)
        .map(|n| (if n % 3 == 0 { "bob" } else { "alice" }, format!("e{n}")))
        .collect();
    let receipts = server
        .block_on(server.handle().publish_batch(batch(&events)))
        .expect("published");
    assert_eq!(receipts.len(), events.len());
    for ((user, text), receipt) in events.iter().zip(&receipts) {
        assert_eq!(receipt.connections, 1, "{text}");
        let client = if *user == "bob" { &mut bob } else { &mut alice };
        client.expect(&["event", &receipt.time.to_string(), text]);
    }
    crate::common::expect_all_silent(&mut [&mut alice, &mut bob], QUIET);

    let refused = server.block_on(
        server
            .handle()
            .publish_batch(batch(&[("alice", "ok".into()), ("bob", "a\u{1f}b".into())])),
    );
    assert_eq!(
        refused,
        Err(PublishError::InBatch {
            index: 1,
            error: Box::new(PublishError::TextHasSeparator)
        })
    );
    alice.expect_nothing_for(QUIET);
}

#[test]
fn every_batched_event_acknowledged_before_shutdown_is_written_before_it() {
    const BATCHES: usize = 3;
    let mut server = server();
    let mut clients = server.logged_in("alice", "pw-a", 4);

    let handle = server.handle().clone();
    let acknowledged = server.block_on(async move {
        let mut batches = tokio::task::JoinSet::new();
        for number in 0..BATCHES {
            let handle = handle.clone();
            let events: Vec<(&str, String)> = (0..MAX_BATCH_EVENTS)
                .map(|n| ("alice", format!("b{number}-{n}")))
                .collect();
            batches.spawn(async move { handle.publish_batch(batch(&events)).await });
        }
        let mut acknowledged = 0;
        while let Some(done) = batches.join_next().await {
            let receipts = done.expect("batch task").expect("published");
            assert!(receipts.iter().all(|receipt| receipt.connections == 4));
            acknowledged += receipts.len();
        }
        acknowledged
    });
    assert_eq!(acknowledged, BATCHES * MAX_BATCH_EVENTS);
    server.begin_shutdown();

    for (number, client) in clients.iter_mut().enumerate() {
        let received = client.events_before_shutdown();
        assert_eq!(
            received, acknowledged,
            "client #{number} got {received} of {acknowledged} acknowledged events before `shutdown`"
        );
    }
}
