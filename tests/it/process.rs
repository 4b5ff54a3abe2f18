//! The `tether` process (SPEC §4, §5 start-up, §7): configuration errors and exit codes,
//! the listening log line, relative paths, and shutdown on signals.

use crate::common::{run_to_exit, tether_command, users_toml, Ran, TestConfig, TestServer};
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::Duration;

/// How long a server that must refuse to start may run before the test gives up.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs tether on `server_toml` (and an empty users file) in a fresh folder and asserts
/// that it refuses to start with exit code 2 and a message naming the configuration file.
fn refuses_config(server_toml: &str) -> Ran {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("server.toml");
    std::fs::write(&config_path, server_toml).expect("write config");
    std::fs::write(dir.path().join("users.toml"), users_toml(&[])).expect("write users");
    let finished = run_to_exit(tether_command(&config_path), REFUSAL_TIMEOUT);
    assert_exit_2_naming(&finished, &config_path);
    finished
}

fn assert_exit_2_naming(finished: &Ran, file: &Path) {
    assert_eq!(
        finished.status.code(),
        Some(2),
        "expected exit code 2, got {}; stderr:\n{}",
        finished.status,
        finished.stderr
    );
    let file = file.display().to_string();
    assert!(
        finished.stderr.contains(&file),
        "stderr should name the file {file}:\n{}",
        finished.stderr
    );
}

fn assert_names(finished: &Ran, what: &str) {
    assert!(
        finished.stderr.contains(what),
        "stderr should name {what:?}:\n{}",
        finished.stderr
    );
}

/// The test baseline (ephemeral port, no admin API) plus `extra` lines of `[server]`.
fn server_section(extra: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:0\"\n{extra}\n\n[admin]\nlisten = \"\"\n")
}

/// The minimal configuration followed by `section` (a header and its keys).
fn with_section(section: &str) -> String {
    format!("{}\n{section}\n", server_section(""))
}

// ---------------------------------------------------------------------------------------
// Configuration errors (§4)
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_key_stops_start_up_naming_the_key() {
    let finished = refuses_config(&server_section("nope = 1"));
    assert_names(&finished, "server.nope");
}

#[test]
fn unknown_section_stops_start_up_naming_it() {
    let finished = refuses_config(&with_section("[serverr]\nlisten = \"x\""));
    assert_names(&finished, "serverr");
}

#[test]
fn wrong_type_stops_start_up_naming_the_key() {
    let finished = refuses_config(&server_section("max_connections = \"many\""));
    assert_names(&finished, "server.max_connections");
}

#[test]
fn bad_duration_stops_start_up_naming_the_key() {
    let finished = refuses_config(&server_section("idle_timeout = \"5 minutes\""));
    assert_names(&finished, "server.idle_timeout");
}

#[test]
fn bad_listen_address_stops_start_up_naming_the_key() {
    let finished =
        refuses_config("[server]\nlisten = \"not an address\"\n\n[admin]\nlisten = \"\"\n");
    assert_names(&finished, "server.listen");
}

#[test]
fn unknown_time_zone_stops_start_up_naming_the_key() {
    let finished = refuses_config(&with_section("[events]\ntime_zone = \"Mars/Olympus_Mons\""));
    assert_names(&finished, "events.time_zone");
}

#[test]
fn non_loopback_admin_listen_without_token_stops_start_up() {
    let finished = refuses_config(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"0.0.0.0:0\"\ntoken = \"\"\n",
    );
    assert_names(&finished, "admin.");
}

#[test]
fn missing_explicit_config_file_stops_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("missing.toml");
    let finished = run_to_exit(tether_command(&config_path), REFUSAL_TIMEOUT);
    assert_exit_2_naming(&finished, &config_path);
}

#[test]
fn users_file_with_a_non_bcrypt_hash_stops_start_up_naming_the_user() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("server.toml");
    let users_path = dir.path().join("users.toml");
    std::fs::write(&config_path, TestConfig::new().to_toml()).expect("write config");
    let good = crate::common::cheap_hash("pw");
    std::fs::write(
        &users_path,
        users_toml(&[("alice", &good), ("mallory", "not-a-bcrypt-hash")]),
    )
    .expect("write users");
    let finished = run_to_exit(tether_command(&config_path), REFUSAL_TIMEOUT);
    assert_exit_2_naming(&finished, &users_path);
    assert_names(&finished, "mallory");
}

#[test]
fn every_documented_key_is_accepted() {
    let config = TestConfig::new()
        .server("idle_timeout", "1m30s")
        .server("max_message_bytes", 4096)
        .server("max_pending_bytes", 65536)
        .server("max_connections", 100)
        .server("shutdown_grace", "250ms")
        .server("workers", 2)
        .auth("users_file", "users.toml")
        .auth("bcrypt_cost", 10)
        .auth("watch", false)
        .auth("login_failures_per_minute", 0)
        .auth("password_threads", 2)
        .events("time_zone", "Europe/Moscow")
        .set("admin", "token", "")
        .set("log", "level", "debug");
    let server = TestServer::start(&config, &[("alice", "pw")]);
    let mut client = server.client();
    client.login("alice", "pw");
}

// ---------------------------------------------------------------------------------------
// Start-up (§4, §5, §7)
// ---------------------------------------------------------------------------------------

#[test]
fn listening_address_is_logged_once_accepting() {
    let server = TestServer::with_users(&[]);
    let log = server.stderr_text();
    let line = format!("listening on {}", server.addr());
    assert!(log.contains(&line), "expected {line:?} in:\n{log}");
    assert!(server.addr().ip().is_loopback());
    assert_ne!(
        server.addr().port(),
        0,
        "the logged address is the bound one"
    );
    let mut client = server.client();
    client.send(&["prolongate"]);
    client.expect(&["prolongate_ack"]);
}

#[test]
fn configured_password_threads_are_started_and_logged() {
    let config = TestConfig::new().auth("password_threads", 3);
    let server = TestServer::start(&config, &[("alice", "pw")]);
    let log = server.stderr_text();
    let line = "password checks: 3 thread(s) (bcrypt, nice 10)";
    assert!(log.contains(line), "expected {line:?} in:\n{log}");
    // A new thread names itself once it runs: give the names a moment to appear.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while bcrypt_threads(server.pid()) < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(bcrypt_threads(server.pid()), 3);
    let mut client = server.client();
    client.login("alice", "pw");
}

/// How many threads of process `pid` are password checkers (named `tether-bcrypt-N`).
fn bcrypt_threads(pid: nix::unistd::Pid) -> usize {
    crate::common::hardening::threads(pid.as_raw())
        .iter()
        .filter(|thread| thread.name.starts_with("tether-bcrypt-"))
        .count()
}

#[test]
fn too_many_password_threads_stop_start_up_naming_the_key() {
    let finished = refuses_config(&with_section("[auth]\npassword_threads = 1025"));
    assert_names(&finished, "auth.password_threads");
}

#[test]
fn relative_users_file_is_resolved_against_the_config_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let elsewhere = tempfile::tempdir().expect("another temp dir");
    let config = TestConfig::new().auth("users_file", "accounts/people.toml");
    std::fs::write(dir.path().join("server.toml"), config.to_toml()).expect("write config");
    std::fs::create_dir(dir.path().join("accounts")).expect("mkdir");
    std::fs::write(
        dir.path().join("accounts/people.toml"),
        users_toml(&[("alice", &crate::common::cheap_hash("pw"))]),
    )
    .expect("write users");
    let server = TestServer::start_in(dir, elsewhere.path());
    let mut client = server.client();
    client.login("alice", "pw");
}

#[test]
fn missing_users_file_means_no_users_yet() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("server.toml"), TestConfig::new().to_toml())
        .expect("write config");
    let cwd = dir.path().to_owned();
    let server = TestServer::start_in(dir, &cwd);
    let log = server.stderr_text();
    assert!(
        log.contains("WARN"),
        "a missing users file should be warned about:\n{log}"
    );
    let mut client = server.client();
    client.send(&["login", "alice", "pw"]);
    client.expect(&["login_invalid"]);
}

// ---------------------------------------------------------------------------------------
// Shutdown (§7)
// ---------------------------------------------------------------------------------------

fn shutdown_on(signal: Signal) {
    let config = TestConfig::new().server("shutdown_grace", "1s");
    let mut server = TestServer::start(&config, &[("alice", "pw-a"), ("bob", "pw-b")]);
    let mut alice = server.client();
    alice.login("alice", "pw-a");
    let mut bob = server.client();
    bob.login("bob", "pw-b");
    let mut anonymous = server.client();
    anonymous.send(&["prolongate"]);
    anonymous.expect(&["prolongate_ack"]);

    let signalled = std::time::Instant::now();
    server.signal(signal);
    for client in [&mut alice, &mut bob, &mut anonymous] {
        client.expect(&["shutdown"]);
        client.expect_closed();
    }
    // shutdown_grace (1 s) + 1 s, counted from the signal.
    let deadline = signalled + Duration::from_secs(2);
    let status = server.wait_exit(deadline.saturating_duration_since(std::time::Instant::now()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after {signal}: {status}"
    );
}

#[test]
fn sigterm_sends_shutdown_to_every_client_and_exits_0() {
    shutdown_on(Signal::SIGTERM);
}

#[test]
fn sigint_sends_shutdown_to_every_client_and_exits_0() {
    shutdown_on(Signal::SIGINT);
}

#[test]
fn terminate_with_no_clients_exits_0_promptly() {
    let config = TestConfig::new().server("shutdown_grace", "1s");
    let mut server = TestServer::start(&config, &[]);
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(2));
    assert_eq!(status.code(), Some(0), "exit status: {status}");
}
