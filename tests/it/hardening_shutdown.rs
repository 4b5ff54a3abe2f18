//! Shutdown under load (issue 6, SPEC §7): thousands of bound connections, events flowing
//! through the admin API, then SIGTERM. Every client's last message is `shutdown`, the
//! process exits 0 soon after `shutdown_grace`, and every event the API acknowledged
//! before the signal reached each connection of its user, in order, before `shutdown`.

use crate::common::hardening::{connect_with, loopback_source, SocketOptions};
use crate::common::{admin_addr, encode, RecvError, TestClient, TestConfig, TestServer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 2000;
const USERS: usize = 10;
const GRACE: Duration = Duration::from_secs(2);

fn user(index: usize) -> String {
    format!("user{index}")
}

/// Publishes events round-robin over the users until `stop`; answers, per user, the
/// sequence numbers the API acknowledged (202) and when the last acknowledgement came.
fn publish_until(
    admin: SocketAddr,
    stop: &AtomicBool,
    acknowledged: &AtomicUsize,
) -> HashMap<String, Vec<(usize, Instant)>> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let url = format!("http://{admin}/v1/events");
    let mut acked: HashMap<String, Vec<(usize, Instant)>> = HashMap::new();
    let mut sequence = 0;
    while !stop.load(Ordering::SeqCst) {
        let name = user(sequence % USERS);
        let body = format!(r#"{{"user":"{name}","text":"seq-{sequence}"}}"#);
        match agent
            .post(&url)
            .set("Content-Type", "application/json")
            .send_string(&body)
        {
            Ok(response) if response.status() == 202 => {
                acked
                    .entry(name)
                    .or_default()
                    .push((sequence, Instant::now()));
                acknowledged.fetch_add(1, Ordering::SeqCst);
            }
            Ok(response) => panic!("event answered {}", response.status()),
            // The server is going away: nothing more is acknowledged.
            Err(_) => break,
        }
        sequence += 1;
    }
    acked
}

#[test]
fn sigterm_under_load_says_shutdown_to_everyone_and_drops_no_acknowledged_event() {
    let names: Vec<String> = (0..USERS).map(user).collect();
    let users: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "pw")).collect();
    let config = TestConfig::new()
        .set("admin", "listen", "127.0.0.1:0")
        .auth("watch", false)
        .auth("bcrypt_cost", 4)
        .server("shutdown_grace", "2s");
    // The clients' sockets, and room for the harness and the publisher.
    crate::common::hardening::allow_open_files(CONNECTIONS as u64 + 256);
    let mut server = TestServer::start(&config, &users);
    server.wait_for_log("(admin API)", Duration::from_secs(10));
    let admin = admin_addr(&server.stderr_text());

    // Connect and log everyone in, pipelined: all logins out first, then all replies.
    let mut clients: Vec<(usize, TestClient)> = (0..CONNECTIONS)
        .map(|index| {
            let options = SocketOptions {
                source: Some(loopback_source(index as u32)),
                ..SocketOptions::default()
            };
            let stream = connect_with(server.addr(), options).expect("connects");
            let mut client = TestClient::from_stream(stream);
            client.send_raw(&encode(&["login", &user(index % USERS), "pw"]));
            (index % USERS, client)
        })
        .collect();
    for (_, client) in &mut clients {
        assert_eq!(
            client.recv_within(crate::common::CHECKS_TIMEOUT),
            ["login_valid"]
        );
    }

    // Events flow; the clients read nothing until the end (the kernel holds a few KiB).
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let stop = Arc::clone(&stop);
        let acknowledged = Arc::clone(&acknowledged);
        std::thread::spawn(move || publish_until(admin, &stop, &acknowledged))
    };
    // Events flowing: a few acknowledged for every user before the signal.
    let flowing = crate::common::wait_until(Duration::from_secs(30), || {
        acknowledged.load(Ordering::SeqCst) >= 5 * USERS
    });
    assert!(flowing, "events were not acknowledged before the signal");
    let signalled = Instant::now();
    server.terminate();
    // The grace, and what exiting takes after it: closing 2,000 sockets and the threads.
    // On a loaded 2-core machine that is seconds; a server that ignores the grace (waits
    // for the clients, who read nothing, or for the idle timeout) takes far longer.
    let exit_bound = GRACE + Duration::from_secs(4);
    let status = server.wait_exit(exit_bound + Duration::from_secs(5));
    let exited_after = signalled.elapsed();
    stop.store(true, Ordering::SeqCst);
    let acked = publisher.join().expect("publisher");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        exited_after <= exit_bound,
        "exited {exited_after:?} after SIGTERM, grace {GRACE:?}"
    );

    // Every client: events of its user in publish order, every one acknowledged before the
    // signal among them, and `shutdown` last.
    let mut events_seen = 0;
    for (number, (user_index, client)) in clients.iter_mut().enumerate() {
        let name = user(*user_index);
        let mut received = Vec::new();
        let last = loop {
            match client.try_recv(crate::common::RECV_TIMEOUT) {
                Ok(message) if message[0] == "event" => {
                    let sequence: usize = message[2]
                        .strip_prefix("seq-")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("client #{number}: odd event {message:?}"));
                    received.push(sequence);
                }
                Ok(message) => break message,
                Err(RecvError::Closed(partial)) => {
                    panic!("client #{number} closed without `shutdown` (partial {partial:?})")
                }
                Err(RecvError::Timeout(_)) => panic!("client #{number}: no `shutdown`"),
            }
        };
        assert_eq!(last, ["shutdown"], "client #{number}: last message");
        client.expect_closed_within(Duration::from_secs(5));
        assert!(
            received.windows(2).all(|pair| pair[0] < pair[1]),
            "client #{number}: events out of order"
        );
        let must_have: Vec<usize> = acked
            .get(&name)
            .map(|acks| {
                acks.iter()
                    .filter(|(_, at)| *at < signalled)
                    .map(|(sequence, _)| *sequence)
                    .collect()
            })
            .unwrap_or_default();
        let missing: Vec<&usize> = must_have
            .iter()
            .filter(|sequence| received.binary_search(sequence).is_err())
            .collect();
        assert!(
            missing.is_empty(),
            "client #{number} ({name}) lost acknowledged events {missing:?}"
        );
        events_seen += received.len();
    }
    let acked_total: usize = acked.values().map(Vec::len).sum();
    eprintln!(
        "shutdown under load: {CONNECTIONS} connections, {acked_total} events acknowledged, \
         {events_seen} deliveries read, exit after {exited_after:?}"
    );
    assert!(acked_total > 0, "no event was published before the signal");
}

/// Events acknowledged an instant before shutdown may still sit in a connection's mailbox
/// when the shutdown notice reaches it; they must be written before `shutdown`, not
/// dropped.
#[test]
fn events_acknowledged_just_before_shutdown_are_written_before_it() {
    const BURST: usize = 3000;
    let server = crate::common::in_process::InProcessServer::start(
        crate::common::in_process::test_settings(),
        &[("alice", "pw")],
    );
    let mut clients = server.logged_in("alice", "pw", 4);

    // A burst of events, all in flight at once; every one acknowledged before shutdown.
    let handle = server.handle().clone();
    let receipts = server.block_on(async move {
        let mut burst = tokio::task::JoinSet::new();
        for sequence in 0..BURST {
            let handle = handle.clone();
            burst.spawn(async move {
                (
                    sequence,
                    handle.publish("alice", format!("seq-{sequence}")).await,
                )
            });
        }
        let mut receipts = Vec::new();
        while let Some(done) = burst.join_next().await {
            receipts.push(done.expect("publish task"));
        }
        receipts
    });
    let acked: Vec<usize> = receipts
        .iter()
        .filter(|(_, receipt)| receipt.as_ref().is_ok_and(|r| r.connections == 4))
        .map(|(sequence, _)| *sequence)
        .collect();
    assert_eq!(
        acked.len(),
        BURST,
        "every event handed to all four connections"
    );
    drop(server); // shuts down gracefully, at once

    for (number, client) in clients.iter_mut().enumerate() {
        let received = client.events_before_shutdown();
        assert_eq!(
            received, BURST,
            "client #{number} got {received} of {BURST} acknowledged events before `shutdown`"
        );
    }
}
