//! Logins racing a change of the user's password (SPEC §5): a login must not outlive an
//! invalidation it raced.

use crate::common::in_process::{test_settings, InProcessServer};
use crate::common::{wait_until, TestClient};
use std::time::Duration;

#[test]
fn a_login_checked_against_a_hash_replaced_during_the_check_is_refused() {
    let server = InProcessServer::start(test_settings(), &[]);
    // A slow hash (a quarter second, more on a busy machine), so the check is still running
    // when the password changes; the test checks that it was.
    server.replace_users(&[("alice", "old-pw")], 12);
    let mut client = TestClient::connect(server.addr());
    client.send(&["login", "alice", "old-pw"]);
    // Counted once the login was handled: its check is under way against the old hash.
    assert!(
        wait_until(Duration::from_secs(5), || {
            server.metric(r#"tether_commands_total{type="login"}"#) == 1.0
        }),
        "the login never reached the server"
    );
    let changed = server.replace_users(&[("alice", "new-pw")], 4);
    assert_eq!(changed, ["alice"]);
    assert!(
        !client.has_pending_input(),
        "the check ended before the password changed: the test proved nothing"
    );
    // A hang guard, not a bound: the check runs at nice 10, and on a 2-core machine
    // busy with twenty other processes one cost-12 check took over 30 s (CI, load 20).
    assert_eq!(
        client.recv_within(Duration::from_secs(120)),
        ["login_invalid"]
    );
    server.wait_for_connections("alice", 0);
    client.login("alice", "new-pw");
}

#[test]
fn logins_waiting_for_a_check_are_answered_and_told_shutdown_when_the_server_stops() {
    let mut settings = test_settings();
    settings.password_threads = 1;
    settings.shutdown_grace = Duration::from_secs(2);
    let mut server = InProcessServer::start(settings, &[]);
    // Twelve checks at cost 12 take one thread about 3 s: longer than the grace period.
    server.replace_users(&[("alice", "pw")], 12);
    let mut clients: Vec<TestClient> = (0..12)
        .map(|_| TestClient::connect(server.addr()))
        .collect();
    for client in &mut clients {
        client.send(&["login", "alice", "pw"]);
    }
    // Every login handled, so every check is running or queued when the stop comes.
    assert!(
        wait_until(Duration::from_secs(5), || {
            server.metric(r#"tether_commands_total{type="login"}"#) == 12.0
        }),
        "not every login reached the server"
    );
    server.begin_shutdown();
    for (index, client) in clients.iter_mut().enumerate() {
        let reply = client.recv();
        assert!(
            reply == ["login_valid"] || reply == ["login_invalid"],
            "client {index}: {reply:?}"
        );
        client.expect(&["shutdown"]);
    }
}
