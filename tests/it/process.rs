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

/// One key `server.toml` documents: its section path, its name, the value it shows, and
/// whether the file shows it commented out (an optional key or section).
#[derive(Debug)]
struct DocumentedKey {
    section: Vec<String>,
    name: String,
    value: toml::Value,
    commented: bool,
    line: usize,
}

impl DocumentedKey {
    fn path(&self) -> String {
        format!("{}.{}", self.section.join("."), self.name)
    }
}

/// Every key of `server.toml` as its conventions write them: `[section]` and
/// `[section.sub]` headers, `key = value` lines, and optional keys or whole sections
/// commented out as `# key = value` and `# [section]` (a value may continue over further
/// `# ` lines, as a TOML array or table does). A comment line that begins like a key but
/// does not read as one fails here, so that no key is silently left out.
fn documented_keys(text: &str) -> Vec<DocumentedKey> {
    let is_name = |word: &str| {
        !word.is_empty()
            && word
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let header = |line: &str| -> Option<Vec<String>> {
        let inner = line.strip_prefix('[')?.strip_suffix(']')?;
        let parts: Vec<String> = inner
            .split('.')
            .map(|part| part.trim().to_owned())
            .collect();
        parts.iter().all(|part| is_name(part)).then_some(parts)
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut keys = Vec::new();
    let mut section: Vec<String> = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let raw = lines[index].trim();
        let (commented, line) = match raw.strip_prefix('#') {
            Some(rest) => (true, rest.trim()),
            None => (false, raw),
        };
        index += 1;
        if let Some(parts) = header(line) {
            section = parts;
            continue;
        }
        let Some((name, _)) = line.split_once('=') else {
            assert!(
                commented || line.is_empty(),
                "server.toml line {index}: neither a header nor a key: {raw:?}"
            );
            continue;
        };
        let name = name.trim();
        if !is_name(name) {
            assert!(commented, "server.toml line {index}: not a key: {raw:?}");
            continue;
        }
        // The value, over as many further lines (commented alike) as it takes to read.
        let first = index;
        let mut source = line.to_owned();
        let value = loop {
            if let Ok(table) = source.parse::<toml::Table>() {
                break table.get(name).cloned();
            }
            let next = lines.get(index).map(|next| next.trim());
            let continued = match next {
                Some(next) if commented => next.strip_prefix('#').map(str::trim),
                Some(next) if !next.starts_with('#') && !next.is_empty() => Some(next),
                _ => None,
            };
            let Some(continued) = continued else {
                break None;
            };
            source.push('\n');
            source.push_str(continued);
            index += 1;
        };
        match value {
            Some(value) => keys.push(DocumentedKey {
                section: section.clone(),
                name: name.to_owned(),
                value,
                commented,
                line: first,
            }),
            // Prose that happens to start like `word = …` in a comment.
            None if commented && !line.contains('"') && !line.contains('[') => {
                index = first;
            }
            None => panic!("server.toml line {first}: {raw:?} looks like a key but is not TOML"),
        }
    }
    keys
}

#[test]
fn the_documented_keys_are_read_from_server_toml_commented_ones_too() {
    let text = "# Intro = prose.\n[a]\nx = 1\n# y = [\n#   \"p\",\n# ]\n\n# [a.b]\n# z = \"\"\n[c]\nw = true\n";
    let found: Vec<(String, bool)> = documented_keys(text)
        .iter()
        .map(|key| (key.path(), key.commented))
        .collect();
    assert_eq!(
        found,
        [
            ("a.x".to_owned(), false),
            ("a.y".to_owned(), true),
            ("a.b.z".to_owned(), true),
            ("c.w".to_owned(), false),
        ]
    );
}

#[test]
fn every_documented_key_is_accepted() {
    // Every key server.toml documents, each set alone to the value it shows (commented-out
    // ones too) over the test baseline: `check-config` accepts it and shows it among the
    // settings in force. A key added to server.toml is covered without touching this test.
    let documented = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/server.toml"))
        .expect("read server.toml");
    let keys = documented_keys(&documented);
    for expected in [
        "server.max_pending_total",
        "server.tls.client_ca_file",
        "auth.database",
        "admin.tls.key_file",
        "cluster.prefix",
    ] {
        assert!(
            keys.iter().any(|key| key.path() == expected),
            "{expected} not found in server.toml: the reader of its conventions is wrong"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("users.toml"), users_toml(&[])).expect("write users");
    let config_path = dir.path().join("server.toml");
    let baseline: toml::Table = TestConfig::new().to_toml().parse().expect("baseline TOML");
    for key in &keys {
        let mut config = baseline.clone();
        let mut table = &mut config;
        for part in &key.section {
            table = table
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("a section is a table");
        }
        table.insert(key.name.clone(), key.value.clone());
        let text = toml::to_string(&config).expect("config serialises");
        std::fs::write(&config_path, &text).expect("write config");
        let mut command = tether_command(&config_path);
        command.arg("check-config");
        let ran = run_to_exit(command, REFUSAL_TIMEOUT);
        let what = format!(
            "{} = {} (server.toml line {}{})",
            key.path(),
            key.value,
            key.line,
            if key.commented { ", commented out" } else { "" }
        );
        assert!(
            ran.status.success(),
            "check-config refused {what}: {}\nconfiguration:\n{text}",
            ran.stderr
        );
        let in_force: toml::Table = ran.stdout.parse().unwrap_or_else(|err| {
            panic!(
                "{what}: check-config printed no TOML ({err}):\n{}",
                ran.stdout
            )
        });
        let shown = key
            .section
            .iter()
            .try_fold(&in_force, |table, part| table.get(part)?.as_table())
            .and_then(|table| table.get(&key.name));
        assert!(
            shown.is_some(),
            "{what}: not among the settings in force:\n{}",
            ran.stdout
        );
    }
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
    // With no users, a login is checked against the stand-in of the configured cost: the
    // default 12 waits minutes for a nice-10 bcrypt thread on a loaded machine.
    let config = TestConfig::new().auth("bcrypt_cost", crate::common::TEST_BCRYPT_COST);
    std::fs::write(dir.path().join("server.toml"), config.to_toml()).expect("write config");
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
