//! The client protocol (SPEC §1–§3) against the real `tether` binary: commands and their
//! replies, framing, bindings and invalidation, the idle timeout, message size limits,
//! half-closed connections, login throttling, and bcrypt running off the event loops.

use crate::common::{
    admin_addr, encode, encode_all, expect_all_silent, metric_in, wait_until, RecvError,
    TestClient, TestConfig, TestServer,
};
use std::thread;
use std::time::{Duration, Instant};

/// Long enough for a message the server would send to have arrived.
const QUIET: Duration = Duration::from_millis(300);

const ALICE: (&str, &str) = ("alice", "alice-secret");
const BOB: (&str, &str) = ("bob", "bob-secret");

fn alice_and_bob() -> TestServer {
    TestServer::with_users(&[ALICE, BOB])
}

const LOGIN_ALICE: &[&str] = &["login", "alice", "alice-secret"];

/// A fresh alice-and-bob server and a connection to it that has had `steps` (each command
/// answered by its one-part reply, see `TestClient::converse`).
fn conversation(steps: &[(&[&str], &str)]) -> (TestServer, TestClient) {
    let server = alice_and_bob();
    let mut client = server.client();
    client.converse(steps);
    (server, client)
}

/// A fresh connection logs in as `user` and sends `invalidate`: every other connection
/// bound to `user` gets `invalidated`.
fn invalidate_as(server: &TestServer, (name, password): (&str, &str)) {
    let mut invalidator = server.client();
    invalidator.login(name, password);
    invalidator.converse(&[(&["invalidate"], "invalidate_ack")]);
}

/// Asserts that `client` is bound to `user`: an invalidation of `user` reaches it.
fn assert_bound(server: &TestServer, client: &mut TestClient, user: (&str, &str)) {
    invalidate_as(server, user);
    client.expect(&["invalidated"]);
}

/// Asserts that `client` is not bound to `user`: an invalidation of `user` does not reach
/// it (nor anything else).
fn assert_not_bound(server: &TestServer, client: &mut TestClient, user: (&str, &str)) {
    invalidate_as(server, user);
    client.expect_nothing_for(QUIET);
}

// ---------------------------------------------------------------------------------------
// Commands and replies (§2)
// ---------------------------------------------------------------------------------------

#[test]
fn login_with_the_right_password_is_valid() {
    conversation(&[(LOGIN_ALICE, "login_valid")]);
}

#[test]
fn login_of_an_unknown_user_is_invalid() {
    conversation(&[(&["login", "carol", "alice-secret"], "login_invalid")]);
}

#[test]
fn login_with_a_wrong_password_is_invalid() {
    conversation(&[
        (&["login", "alice", "bob-secret"], "login_invalid"),
        (&["login", "alice", "alice-secreT"], "login_invalid"),
    ]);
}

#[test]
fn login_with_an_empty_name_or_password_is_invalid() {
    conversation(&[
        (&["login", "", "alice-secret"], "login_invalid"),
        (&["login", "alice", ""], "login_invalid"),
        (&["login", "", ""], "login_invalid"),
    ]);
}

#[test]
fn password_longer_than_72_bytes_is_rejected_not_truncated() {
    let password_72: String = "correct-horse-battery-staple-"
        .repeat(3)
        .chars()
        .take(72)
        .collect();
    assert_eq!(password_72.len(), 72);
    let password_73 = format!("{password_72}!");
    let server = TestServer::with_users(&[("alice", &password_72)]);

    // bcrypt itself only looks at the first 72 bytes: the 73-byte password would match.
    let mut client = server.client();
    client.send(&["login", "alice", &password_73]);
    client.expect(&["login_invalid"]);

    // The 72-byte password itself is fine.
    client.login("alice", &password_72);
}

#[test]
fn login_with_a_control_character_in_the_name_is_invalid() {
    let logins: Vec<[&str; 3]> = ["ali\u{7}ce", "alice\u{0}", "\u{7f}alice", "ali\nce"]
        .into_iter()
        .map(|name| ["login", name, "alice-secret"])
        .collect();
    let mut steps: Vec<(&[&str], &str)> = logins
        .iter()
        .map(|login| (&login[..], "login_invalid"))
        .collect();
    // The connection is still usable.
    steps.push((LOGIN_ALICE, "login_valid"));
    conversation(&steps);
}

#[test]
fn logout_is_acknowledged() {
    conversation(&[
        (&["logout"], "logout_ack"),
        (LOGIN_ALICE, "login_valid"),
        (&["logout"], "logout_ack"),
    ]);
}

#[test]
fn disconnect_is_acknowledged_then_the_server_closes_the_connection() {
    let server = alice_and_bob();
    let mut client = server.client();
    client.login("alice", "alice-secret");
    client.send(&["disconnect"]);
    client.expect(&["disconnect_ack"]);
    client.expect_closed();
}

#[test]
fn commands_pipelined_after_disconnect_are_not_answered() {
    let server = alice_and_bob();
    let mut client = server.client();
    client.send_raw(&encode_all(&[
        &["disconnect"],
        &["prolongate"],
        &["logout"],
    ]));
    client.expect(&["disconnect_ack"]);
    client.expect_closed();
}

#[test]
fn prolongate_is_acknowledged() {
    conversation(&[
        (&["prolongate"], "prolongate_ack"),
        (&["prolongate"], "prolongate_ack"),
    ]);
}

#[test]
fn invalidate_without_a_binding_is_only_acknowledged() {
    let server = alice_and_bob();
    let mut alice = server.client();
    alice.login("alice", "alice-secret");
    let mut anonymous = server.client();
    anonymous.send(&["invalidate"]);
    anonymous.expect(&["invalidate_ack"]);
    expect_all_silent(&mut [&mut alice, &mut anonymous], QUIET);
}

// ---------------------------------------------------------------------------------------
// unknown_command / invalid_args_count
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_command_type_is_rejected_whatever_the_argument_count() {
    conversation(&[
        (&["frobnicate"], "unknown_command"),
        (&["frobnicate", "a"], "unknown_command"),
        (&["frobnicate", "a", "b", "c"], "unknown_command"),
        (&["event", "1", "text"], "unknown_command"),
        (&["login_valid"], "unknown_command"),
    ]);
}

#[test]
fn empty_message_is_an_unknown_command() {
    alice_and_bob().client().converse_raw(&[
        (b"\x1e", "unknown_command"),
        // A message of two empty parts: empty type, one empty argument.
        (b"\x1f\x1e", "unknown_command"),
        (b"prolongate\x1e", "prolongate_ack"),
    ]);
}

#[test]
fn command_types_are_case_sensitive() {
    let (server, mut client) = conversation(&[
        (&["LOGIN", "alice", "alice-secret"], "unknown_command"),
        (&["Login", "alice", "alice-secret"], "unknown_command"),
        (&["Logout"], "unknown_command"),
        (&["PROLONGATE"], "unknown_command"),
        (&["Disconnect"], "unknown_command"),
        (&["inValidate"], "unknown_command"),
        (&[" prolongate"], "unknown_command"),
        (&["prolongate "], "unknown_command"),
    ]);
    // Still connected (Disconnect did nothing) and not logged in (LOGIN did nothing).
    assert_not_bound(&server, &mut client, ALICE);
}

#[test]
fn known_commands_with_a_wrong_argument_count_get_invalid_args_count() {
    conversation(&[
        (&["login"], "invalid_args_count"),
        (&["login", "alice"], "invalid_args_count"),
        (
            &["login", "alice", "alice-secret", "extra"],
            "invalid_args_count",
        ),
        (&["login", "a", "b", "c", "d"], "invalid_args_count"),
        (&["logout", "x"], "invalid_args_count"),
        (&["logout", ""], "invalid_args_count"),
        (&["disconnect", "now"], "invalid_args_count"),
        (&["prolongate", "x"], "invalid_args_count"),
        (&["prolongate", "x", "y"], "invalid_args_count"),
        (&["invalidate", "alice"], "invalid_args_count"),
        // `disconnect now` did not close the connection.
        (&["prolongate"], "prolongate_ack"),
    ]);
}

#[test]
fn login_with_too_many_arguments_does_not_bind() {
    let (server, mut client) = conversation(&[(
        &["login", "alice", "alice-secret", "extra"],
        "invalid_args_count",
    )]);
    assert_not_bound(&server, &mut client, ALICE);
}

// ---------------------------------------------------------------------------------------
// Pipelining and framing (§1, §2)
// ---------------------------------------------------------------------------------------

#[test]
fn pipelined_commands_are_answered_in_order() {
    let config = TestConfig::new().auth("login_failures_per_minute", 100);
    let server = TestServer::start(&config, &[ALICE, BOB]);
    let round: [(&[&str], &str); 10] = [
        (&["prolongate"], "prolongate_ack"),
        (&["login", "alice", "wrong"], "login_invalid"),
        (&["login", "alice", "alice-secret"], "login_valid"),
        (&["invalidate"], "invalidate_ack"),
        (&["frobnicate", "x"], "unknown_command"),
        (&["logout", "y"], "invalid_args_count"),
        (&["logout"], "logout_ack"),
        (&["login", "bob", "bob-secret"], "login_valid"),
        (&["login", "nobody", "bob-secret"], "login_invalid"),
        (&["login", "bob"], "invalid_args_count"),
    ];
    let mut commands: Vec<&[&str]> = Vec::new();
    let mut replies: Vec<&str> = Vec::new();
    for _ in 0..6 {
        for (command, reply) in round {
            commands.push(command);
            replies.push(reply);
        }
    }
    commands.push(&["disconnect"]);
    replies.push("disconnect_ack");
    assert!(commands.len() >= 50);

    let mut client = server.client();
    client.send_raw(&encode_all(&commands));
    for (index, (command, reply)) in commands.iter().zip(&replies).enumerate() {
        let got = client.recv();
        assert_eq!(got, [*reply], "reply #{index} (to {command:?})");
    }
    client.expect_closed();
}

#[test]
fn command_pipelined_behind_a_login_acts_on_its_result() {
    let server = alice_and_bob();
    let mut alice = server.client();
    alice.login("alice", "alice-secret");
    let mut second = server.client();
    second.send_raw(&encode_all(&[
        &["login", "alice", "alice-secret"],
        &["invalidate"],
    ]));
    second.expect(&["login_valid"]);
    second.expect(&["invalidate_ack"]);
    alice.expect(&["invalidated"]);
}

#[test]
fn command_split_into_single_bytes_is_understood() {
    let server = alice_and_bob();
    let mut client = server.client();
    client.send_bytewise(&encode(&["prolongate"]), Duration::from_millis(3));
    client.expect(&["prolongate_ack"]);
    client.send_bytewise(
        &encode(&["login", "alice", "alice-secret"]),
        Duration::from_millis(3),
    );
    client.expect(&["login_valid"]);
}

#[test]
fn login_split_inside_multibyte_characters_succeeds() {
    let server = TestServer::with_users(&[("Алиса", "пароль-ключ")]);
    let mut client = server.client();
    let bytes = encode(&["login", "Алиса", "пароль-ключ"]);
    assert!(bytes.len() > 30, "the name and password are multi-byte");
    client.send_bytewise(&bytes, Duration::from_millis(3));
    client.expect(&["login_valid"]);
    // The binding is to exactly that name.
    assert_bound(&server, &mut client, ("Алиса", "пароль-ключ"));
}

#[test]
fn several_messages_in_one_write_are_each_answered() {
    let server = alice_and_bob();
    let mut client = server.client();
    client.send_raw(&encode_all(&[
        &["prolongate"],
        &["login", "alice", "alice-secret"],
        &["logout"],
    ]));
    client.expect_all(&[&["prolongate_ack"], &["login_valid"], &["logout_ack"]]);
    client.expect_nothing_for(Duration::from_millis(100));
}

#[test]
fn message_split_across_writes_at_any_point_is_reassembled() {
    let server = alice_and_bob();
    let mut client = server.client();
    // The end of one message and the start of the next in the same write.
    client.send_raw(b"prolong");
    client.expect_nothing_for(Duration::from_millis(100));
    client.send_raw(b"ate\x1elog");
    client.expect(&["prolongate_ack"]);
    client.send_raw(b"in\x1falice\x1f");
    client.expect_nothing_for(Duration::from_millis(100));
    client.send_raw(b"alice-secret\x1e");
    client.expect(&["login_valid"]);
}

#[test]
fn messages_with_empty_parts_are_parsed_as_such() {
    alice_and_bob().client().converse_raw(&[
        (b"login\x1f\x1f\x1e", "login_invalid"),
        (b"login\x1falice\x1f\x1e", "login_invalid"),
        (b"login\x1f\x1falice-secret\x1e", "login_invalid"),
        (b"login\x1f\x1f\x1f\x1e", "invalid_args_count"),
        (b"prolongate\x1f\x1e", "invalid_args_count"),
    ]);
}

// ---------------------------------------------------------------------------------------
// Bindings and invalidation (§2, §3)
// ---------------------------------------------------------------------------------------

#[test]
fn invalidate_reaches_only_other_connections_of_the_same_user() {
    let server = alice_and_bob();
    let mut alice1 = server.client();
    let mut alice2 = server.client();
    let mut alice3 = server.client();
    let mut bob = server.client();
    alice1.login("alice", "alice-secret");
    alice2.login("alice", "alice-secret");
    alice3.login("alice", "alice-secret");
    bob.login("bob", "bob-secret");

    alice1.send(&["invalidate"]);
    alice1.expect(&["invalidate_ack"]);
    alice2.expect(&["invalidated"]);
    alice3.expect(&["invalidated"]);
    expect_all_silent(
        &mut [&mut bob, &mut alice1, &mut alice2, &mut alice3],
        QUIET,
    );

    // #2 and #3 are bound to nothing now, and stay connected.
    alice2.send(&["invalidate"]);
    alice2.expect(&["invalidate_ack"]);
    expect_all_silent(&mut [&mut alice3, &mut alice1, &mut bob], QUIET);
    alice3.send(&["prolongate"]);
    alice3.expect(&["prolongate_ack"]);
}

#[test]
fn logged_out_connection_is_not_invalidated() {
    let server = alice_and_bob();
    let mut logged_out = server.client();
    let mut still_in = server.client();
    let mut invalidator = server.client();
    logged_out.login("alice", "alice-secret");
    still_in.login("alice", "alice-secret");
    invalidator.login("alice", "alice-secret");
    logged_out.send(&["logout"]);
    logged_out.expect(&["logout_ack"]);

    invalidator.send(&["invalidate"]);
    invalidator.expect(&["invalidate_ack"]);
    still_in.expect(&["invalidated"]);
    logged_out.expect_nothing_for(QUIET);
}

#[test]
fn failed_login_keeps_the_previous_binding() {
    let server = alice_and_bob();
    let mut client = server.client();
    client.login("alice", "alice-secret");
    client.send(&["login", "bob", "wrong"]);
    client.expect(&["login_invalid"]);
    // Not bound to bob, still bound to alice.
    assert_not_bound(&server, &mut client, BOB);
    assert_bound(&server, &mut client, ALICE);
}

#[test]
fn login_under_another_name_moves_the_binding() {
    let server = alice_and_bob();
    let mut client = server.client();
    client.login("alice", "alice-secret");
    client.login("bob", "bob-secret");
    assert_not_bound(&server, &mut client, ALICE);
    assert_bound(&server, &mut client, BOB);
}

#[test]
fn invalidated_connection_is_bound_to_nothing() {
    let server = alice_and_bob();
    let mut first = server.client();
    let mut second = server.client();
    first.login("alice", "alice-secret");
    second.login("alice", "alice-secret");
    first.send(&["invalidate"]);
    first.expect(&["invalidate_ack"]);
    second.expect(&["invalidated"]);

    // A later invalidate of alice no longer reaches the invalidated connection.
    invalidate_as(&server, ALICE);
    first.expect(&["invalidated"]);
    second.expect_nothing_for(QUIET);
}

// ---------------------------------------------------------------------------------------
// Inactivity timeout (§2)
// ---------------------------------------------------------------------------------------

fn one_second_idle_timeout() -> TestServer {
    let config = TestConfig::new().server("idle_timeout", "1s");
    TestServer::start(&config, &[ALICE])
}

/// The earliest a `timeout` may come after the last command, for a 1 s timeout.
const NOT_BEFORE: Duration = Duration::from_millis(800);
/// The latest it may come (generous, for loaded machines).
const NOT_AFTER: Duration = Duration::from_millis(2500);

#[test]
fn silent_client_gets_timeout_then_close_after_the_idle_timeout() {
    let server = one_second_idle_timeout();
    let opened = Instant::now();
    let mut client = server.client();
    let got = client.recv_within(Duration::from_secs(4));
    let elapsed = opened.elapsed();
    assert_eq!(got, ["timeout"]);
    assert!(
        elapsed >= NOT_BEFORE && elapsed <= NOT_AFTER,
        "timeout came after {elapsed:?}, expected about 1 s"
    );
    client.expect_closed();
}

#[test]
fn prolongate_keeps_the_connection_alive() {
    let server = one_second_idle_timeout();
    let mut client = server.client();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        thread::sleep(Duration::from_millis(400));
        client.send(&["prolongate"]);
        client.expect(&["prolongate_ack"]);
    }
    client.send(&["prolongate"]);
    client.expect(&["prolongate_ack"]);
}

#[test]
fn partial_bytes_do_not_reset_the_idle_timer() {
    let server = one_second_idle_timeout();
    let opened = Instant::now();
    let mut client = server.client();
    let mut got = None;
    // One byte of an unterminated message every 300 ms, for at most 3 s.
    for byte in b"prolongate".iter() {
        if client.try_send_raw(std::slice::from_ref(byte)).is_err() {
            break;
        }
        match client.try_recv(Duration::from_millis(300)) {
            Ok(message) => {
                got = Some((message, opened.elapsed()));
                break;
            }
            Err(RecvError::Timeout(_)) => {}
            Err(RecvError::Closed(partial)) => {
                panic!("closed without a timeout message (incomplete: {partial:?})")
            }
        }
    }
    let (message, elapsed) = match got {
        Some(got) => got,
        None => (client.recv_within(Duration::from_secs(1)), opened.elapsed()),
    };
    assert_eq!(message, ["timeout"]);
    assert!(
        elapsed >= NOT_BEFORE && elapsed <= NOT_AFTER,
        "timeout came after {elapsed:?}, expected about 1 s after the connection opened"
    );
    client.expect_closed();
}

#[test]
fn any_command_resets_the_idle_timer() {
    // A 3 s timeout and a command half-way: a stall of the test thread up to 1.5 s still
    // sends it in time (a 1 s timeout left a loaded machine 400 ms).
    const IDLE: Duration = Duration::from_secs(3);
    let config = TestConfig::new().server("idle_timeout", "3s");
    let server = TestServer::start(&config, &[ALICE]);
    let opened = Instant::now();
    let mut client = server.client();
    thread::sleep(IDLE / 2);
    // The server's new deadline is counted from when it reads the command: after this.
    let sent = Instant::now();
    client.send(&["frobnicate"]);
    client.expect(&["unknown_command"]);
    // Past the first deadline (3 s after opening), still connected and silent.
    client.expect_nothing_for((opened + IDLE + IDLE / 4).saturating_duration_since(Instant::now()));
    let got = client.recv_within(IDLE * 3);
    let elapsed = sent.elapsed();
    assert_eq!(got, ["timeout"]);
    // Not before a whole timeout after the command; the upper bound is loose (a loaded
    // machine), the lower one exact.
    assert!(
        elapsed >= IDLE && elapsed <= IDLE * 3,
        "timeout came {elapsed:?} after the last command, expected {IDLE:?}"
    );
    client.expect_closed();
}

// ---------------------------------------------------------------------------------------
// Message size limit (§3 io_error)
// ---------------------------------------------------------------------------------------

fn small_message_limit() -> TestServer {
    let config = TestConfig::new().server("max_message_bytes", 1024);
    TestServer::start(&config, &[ALICE])
}

#[test]
fn message_longer_than_the_limit_gets_io_error_and_close() {
    let server = small_message_limit();
    let mut bystander = server.client();
    bystander.login("alice", "alice-secret");

    let mut client = server.client();
    let mut big = vec![b'x'; 2000];
    big.push(crate::common::RS);
    client.send_raw(&big);
    client.expect(&["io_error"]);
    client.expect_closed();

    bystander.send(&["prolongate"]);
    bystander.expect(&["prolongate_ack"]);
}

#[test]
fn message_of_exactly_the_limit_is_accepted() {
    let server = small_message_limit();
    let mut client = server.client();
    let mut exact = vec![b'x'; 1024];
    exact.push(crate::common::RS);
    client.send_raw(&exact);
    client.expect(&["unknown_command"]);

    // With parts: the separators count, the terminator does not.
    let padding = "p".repeat(1024 - "login\x1falice\x1f".len());
    let message = encode(&["login", "alice", &padding]);
    assert_eq!(message.len(), 1025);
    client.send_raw(&message);
    client.expect(&["login_invalid"]);

    client.send(&["prolongate"]);
    client.expect(&["prolongate_ack"]);
}

#[test]
fn unterminated_bytes_at_the_limit_are_not_an_error() {
    let server = small_message_limit();
    let mut client = server.client();
    client.send_raw(&[b'x'; 1024]);
    client.expect_nothing_for(QUIET);
    client.send_raw(&[crate::common::RS]);
    client.expect(&["unknown_command"]);
}

#[test]
fn unterminated_stream_past_the_limit_gets_io_error_while_others_are_served() {
    let server = small_message_limit();
    let mut bystander = server.client();
    let mut client = server.client();

    client.send_raw(&[b'x'; 1000]);
    bystander.send(&["prolongate"]);
    bystander.expect(&["prolongate_ack"]);
    client.expect_nothing_for(Duration::from_millis(100));

    client.send_raw(&[b'x'; 25]);
    client.expect(&["io_error"]);
    client.expect_closed();

    bystander.send(&["prolongate"]);
    bystander.expect(&["prolongate_ack"]);
}

// ---------------------------------------------------------------------------------------
// Half-close (§3)
// ---------------------------------------------------------------------------------------

#[test]
fn half_closed_client_gets_all_replies_then_eof() {
    let server = alice_and_bob();
    let mut client = server.client();
    client.send_raw(&encode_all(&[
        &["prolongate"],
        &["login", "alice", "alice-secret"],
        &["frobnicate"],
        &["invalidate"],
        &["login", "bob", "wrong"],
        &["logout"],
    ]));
    client.shutdown_write();
    client.expect_all(&[
        &["prolongate_ack"],
        &["login_valid"],
        &["unknown_command"],
        &["invalidate_ack"],
        &["login_invalid"],
        &["logout_ack"],
    ]);
    client.expect_closed();
}

// ---------------------------------------------------------------------------------------
// Login throttling (§2, auth.login_failures_per_minute)
// ---------------------------------------------------------------------------------------

/// How many `login` commands the server has handled (checks started or refused), from
/// `/metrics` of the admin API at `admin`.
fn logins_handled(admin: std::net::SocketAddr) -> f64 {
    let text = ureq::get(&format!("http://{admin}/metrics"))
        .call()
        .expect("GET /metrics")
        .into_string()
        .expect("metrics text");
    metric_in(&text, r#"tether_commands_total{type="login"}"#).unwrap_or(0.0)
}

#[test]
fn logins_past_the_failure_limit_are_refused_at_once_even_with_the_right_password() {
    // "At once" is shown by an order, not a time (a loaded machine stretches both): the one
    // password thread is kept busy with slow checks of another name, and the throttled
    // login is answered while they are still going on. Checked, it would queue behind them.
    let slow_hash = bcrypt::hash("carol-secret", 12).expect("hash");
    let alice_hash = crate::common::cheap_hash("alice-secret");
    let bob_hash = crate::common::cheap_hash("bob-secret");
    let config = TestConfig::new()
        .auth("login_failures_per_minute", 3)
        .auth("password_threads", 1)
        .set("admin", "listen", "127.0.0.1:0");
    let server = TestServer::start_with_hashes(
        &config,
        &[
            ("alice", &alice_hash),
            ("bob", &bob_hash),
            ("carol", &slow_hash),
        ],
    );
    server.wait_for_log("(admin API)", Duration::from_secs(10));
    let admin = admin_addr(&server.stderr_text());
    let logins_handled = || logins_handled(admin);

    let mut first = server.client();
    for _ in 0..3 {
        first.send(&["login", "alice", "wrong"]);
        first.expect(&["login_invalid"]);
    }

    // Two slow checks for carol: one running, one queued behind it (cost 12: a few
    // hundred milliseconds of a core each, far more for the nice-10 thread of a loaded
    // machine).
    let mut slow: Vec<TestClient> = (0..2).map(|_| server.client()).collect();
    for client in &mut slow {
        client.send(&["login", "carol", "carol-secret"]);
    }
    assert!(
        wait_until(Duration::from_secs(10), || logins_handled() == 5.0),
        "carol's logins never reached the server"
    );

    // The pair is (address, name), not the connection.
    let mut second = server.client();
    second.send(&["login", "alice", "alice-secret"]);
    second.expect(&["login_invalid"]);
    let slow_answered = slow
        .iter_mut()
        .map(|client| client.has_pending_input())
        .filter(|&answered| answered)
        .count();
    assert!(
        slow_answered < slow.len(),
        "the throttled login was answered only after the checks queued before it: it was \
         checked"
    );

    first.send(&["login", "alice", "alice-secret"]);
    first.expect(&["login_invalid"]);

    // Another name from the same address is unaffected.
    first.login("bob", "bob-secret");
    second.login("bob", "bob-secret");
    for (index, client) in slow.iter_mut().enumerate() {
        let got = client.recv_within(crate::common::CHECKS_TIMEOUT);
        assert_eq!(got, ["login_valid"], "carol's login #{index}");
    }
}

#[test]
fn logins_below_the_failure_limit_still_succeed() {
    let config = TestConfig::new().auth("login_failures_per_minute", 3);
    let server = TestServer::start(&config, &[ALICE]);
    let mut client = server.client();
    for _ in 0..2 {
        client.send(&["login", "alice", "wrong"]);
        client.expect(&["login_invalid"]);
    }
    client.login("alice", "alice-secret");
}

// ---------------------------------------------------------------------------------------
// bcrypt off the event loops (§2)
// ---------------------------------------------------------------------------------------

#[test]
fn slow_password_checks_do_not_stall_other_connections() {
    // Each check takes a bcrypt thread about a quarter of a second (far more on a loaded
    // machine, where the nice-10 threads get little CPU).
    let slow_hash = bcrypt::hash("alice-secret", 12).expect("hash");
    let config = TestConfig::new().set("admin", "listen", "127.0.0.1:0");
    let server = TestServer::start_with_hashes(&config, &[("alice", &slow_hash)]);
    server.wait_for_log("(admin API)", Duration::from_secs(10));
    let admin = admin_addr(&server.stderr_text());
    let logins_handled = || logins_handled(admin);

    let mut logins: Vec<_> = (0..8).map(|_| server.client()).collect();
    let mut other = server.client();
    for client in &mut logins {
        client.send(&["login", "alice", "alice-secret"]);
    }
    // Every login handled: each check is running or queued.
    assert!(
        wait_until(Duration::from_secs(10), || logins_handled() == 8.0),
        "not every login reached the server"
    );
    // An event loop that ran a check itself would answer `other` only after that check:
    // every prolongate must come back while all the checks are still going on.
    for _ in 0..20 {
        other.send(&["prolongate"]);
        other.expect(&["prolongate_ack"]);
    }
    let answered = logins
        .iter_mut()
        .map(|client| client.has_pending_input())
        .filter(|&answered| answered)
        .count();
    assert_eq!(
        answered, 0,
        "{answered} login(s) were answered before the prolongates were"
    );

    for (index, client) in logins.iter_mut().enumerate() {
        let got = client.recv_within(crate::common::CHECKS_TIMEOUT);
        assert_eq!(got, ["login_valid"], "login #{index}");
    }
}
