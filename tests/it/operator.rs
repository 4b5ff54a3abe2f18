//! What an operator meets first, against the real binary: `--version`, `--help`,
//! `check-config`, the start-up log, fatal errors whatever the log level, listeners bound
//! before `listening on`, capped client input in log lines, completions and the man page.

use crate::common::{run_to_exit, tether_command, users_toml, Ran, TestConfig, TestServer};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long a command that must end by itself may run.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// `tether ARGS` without `--config`, in `cwd`.
fn tether(args: &[&str], cwd: &Path) -> Ran {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    command.args(args).current_dir(cwd).env_remove("RUST_LOG");
    run_to_exit(command, EXIT_TIMEOUT)
}

/// A folder holding `server.toml` with `config` and `users.toml` with `users` (name, hash).
fn folder_with(config: &str, users: Option<&str>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("server.toml");
    std::fs::write(&config_path, config).expect("write config");
    if let Some(users) = users {
        std::fs::write(dir.path().join("users.toml"), users).expect("write users");
    }
    (dir, config_path)
}

/// `tether --config PATH ARGS`, run to its end.
fn with_config(config_path: &Path, args: &[&str]) -> Ran {
    let mut command = tether_command(config_path);
    command.args(args);
    run_to_exit(command, EXIT_TIMEOUT)
}

fn assert_exit(ran: &Ran, code: i32) {
    assert_eq!(ran.status.code(), Some(code), "{ran:?}");
}

#[test]
fn version_is_printed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = tether(&["--version"], dir.path());
    assert_exit(&ran, 0);
    assert_eq!(
        ran.stdout.trim(),
        format!("tether {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_says_what_runs_the_server_the_signals_and_rust_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = tether(&["--help"], dir.path());
    assert_exit(&ran, 0);
    for words in [
        "Without a command, tether runs the server",
        "SIGTERM",
        "SIGHUP",
        "RUST_LOG",
        "check-config",
    ] {
        assert!(
            ran.stdout.contains(words),
            "--help lacks {words:?}:\n{}",
            ran.stdout
        );
    }
    let short = tether(&["-h"], dir.path());
    assert!(short
        .stdout
        .contains("Without a command, tether runs the server"));
}

#[test]
fn check_config_prints_the_settings_in_force_with_the_token_masked() {
    let config = TestConfig::new()
        .server("idle_timeout", "90s")
        .set("admin", "listen", "127.0.0.1:0")
        .set("admin", "token", "hunter2-secret");
    let users = users_toml(&[("alice", &crate::common::cheap_hash("pw"))]);
    let (_dir, config_path) = folder_with(&config.to_toml(), Some(&users));
    let ran = with_config(&config_path, &["check-config"]);
    assert_exit(&ran, 0);
    assert!(!ran.stdout.contains("hunter2-secret"), "{}", ran.stdout);
    for words in [
        format!("configuration file: {}", config_path.display()),
        "1 user(s)".to_string(),
        "idle_timeout = \"1m30s\"".to_string(),
        "token = \"(set, not shown)\"".to_string(),
        "bcrypt_cost = 12".to_string(),
    ] {
        assert!(
            ran.stdout.contains(&words),
            "lacks {words:?}:\n{}",
            ran.stdout
        );
    }
}

#[test]
fn check_config_without_a_default_file_says_defaults_are_used() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = tether(&["check-config"], dir.path());
    assert_exit(&ran, 0);
    assert!(
        ran.stdout
            .contains("server.toml does not exist: all defaults"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("tether passwd NAME"), "{}", ran.stdout);
}

#[test]
fn check_config_exits_2_for_a_bad_configuration_or_users_file() {
    let (_dir, config_path) = folder_with("[server]\nworkers = -1\n", None);
    let ran = with_config(&config_path, &["check-config"]);
    assert_exit(&ran, 2);
    assert!(ran.stderr.contains("server.workers"), "{ran:?}");

    let users = users_toml(&[("mallory", "plain-text")]);
    let (_dir, config_path) = folder_with(&TestConfig::new().to_toml(), Some(&users));
    let ran = with_config(&config_path, &["check-config"]);
    assert_exit(&ran, 2);
    assert!(ran.stderr.contains("\"mallory\""), "{ran:?}");
    assert!(ran.stdout.is_empty(), "{ran:?}");
}

#[test]
fn check_config_exits_2_naming_a_certificate_file_start_up_could_not_read() {
    let users = users_toml(&[]);
    let missing = "/nonexistent/tether-check-config";
    let cases = [
        format!(
            "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{missing}/cert.pem\"\nkey_file = \"{missing}/key.pem\"\n"
        ),
        format!(
            "[admin.tls]\ncert_file = \"{missing}/admin-cert.pem\"\nkey_file = \"{missing}/admin-key.pem\"\n"
        ),
        format!(
            "[cluster]\nredis = \"rediss://127.0.0.1:1\"\nredis_ca_file = \"{missing}/redis-ca.pem\"\n"
        ),
    ];
    for (case, file) in cases
        .iter()
        .zip(["cert.pem", "admin-cert.pem", "redis-ca.pem"])
    {
        let config = format!("{}\n{case}", TestConfig::new().to_toml());
        let (_dir, config_path) = folder_with(&config, Some(&users));
        let ran = with_config(&config_path, &["check-config"]);
        assert_exit(&ran, 2);
        assert!(ran.stderr.contains(file), "{case}: {ran:?}");
        assert!(ran.stdout.is_empty(), "{case}: {ran:?}");
    }
}

#[test]
fn start_up_log_names_the_version_and_the_configuration_file() {
    let server = TestServer::with_users(&[]);
    let log = server.stderr_text();
    let line = format!(
        "tether {}; configuration file: {}",
        env!("CARGO_PKG_VERSION"),
        server.config_path().display()
    );
    assert!(log.contains(&line), "expected {line:?} in:\n{log}");
}

#[test]
fn missing_users_file_warning_names_the_command_that_adds_a_user() {
    let (dir, _) = folder_with(&TestConfig::new().to_toml(), None);
    let cwd = dir.path().to_owned();
    let server = TestServer::start_in(dir, &cwd);
    let log = server.stderr_text();
    assert!(log.contains("`tether passwd NAME`"), "{log}");
}

#[test]
fn a_busy_port_is_reported_on_stderr_even_with_logging_off() {
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = busy.local_addr().expect("address").to_string();
    let config = TestConfig::new()
        .server("listen", address.as_str())
        .set("log", "level", "off");
    let (_dir, config_path) = folder_with(&config.to_toml(), Some(&users_toml(&[])));
    let ran = with_config(&config_path, &[]);
    assert_exit(&ran, 1);
    assert!(
        ran.stderr.contains(&format!("cannot listen on {address}")),
        "{ran:?}"
    );
}

#[test]
fn a_busy_admin_port_stops_start_up_before_anything_is_listening() {
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = busy.local_addr().expect("address").to_string();
    let config = TestConfig::new().set("admin", "listen", address.as_str());
    let (_dir, config_path) = folder_with(&config.to_toml(), Some(&users_toml(&[])));
    let ran = with_config(&config_path, &[]);
    assert_exit(&ran, 1);
    assert!(
        ran.stderr
            .contains(&format!("cannot listen on {address} (admin API)")),
        "{ran:?}"
    );
    assert!(!ran.stderr.contains("listening on"), "{ran:?}");
}

#[test]
fn the_admin_api_on_the_client_address_is_a_configuration_error() {
    let config = TestConfig::new().server("listen", "127.0.0.1:7790").set(
        "admin",
        "listen",
        "127.0.0.1:7790",
    );
    let (_dir, config_path) = folder_with(&config.to_toml(), Some(&users_toml(&[])));
    let ran = with_config(&config_path, &[]);
    assert_exit(&ran, 2);
    assert!(ran.stderr.contains("admin.listen"), "{ran:?}");
    assert!(ran.stderr.contains("server.listen"), "{ran:?}");
}

#[test]
fn a_bad_users_file_at_start_up_is_reported_once() {
    let users = users_toml(&[("mallory", "plain-text")]);
    let (_dir, config_path) = folder_with(&TestConfig::new().to_toml(), Some(&users));
    let ran = with_config(&config_path, &[]);
    assert_exit(&ran, 2);
    assert_eq!(ran.stderr.matches("\"mallory\"").count(), 1, "{ran:?}");
}

#[test]
fn a_huge_login_name_is_cut_short_in_the_log() {
    let config = TestConfig::new().auth("bcrypt_cost", 4);
    let server = TestServer::start(&config, &[("alice", "pw")]);
    let mut client = server.client();
    let name = "x".repeat(65_000);
    client.send(&["login", &name, "pw"]);
    client.expect(&["login_invalid"]);
    server.wait_for_log("(65000 bytes) failed", Duration::from_secs(5));
    let log = server.stderr_text();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1000, "a log line of {longest} bytes");
}

#[test]
fn completions_and_man_page_come_from_the_command_line_definition() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = tether(&["completions", "bash"], dir.path());
    assert_exit(&ran, 0);
    assert!(ran.stdout.contains("check-config"), "{}", ran.stdout);
    let ran = tether(&["man"], dir.path());
    assert_exit(&ran, 0);
    assert!(ran.stdout.contains(".TH tether 1"), "{}", ran.stdout);
    assert!(ran.stdout.contains("check\\-config"), "{}", ran.stdout);
    // Issue 23: both were hidden from --help.
    let ran = tether(&["--help"], dir.path());
    assert_exit(&ran, 0);
    for command in ["completions", "man"] {
        assert!(
            ran.stdout
                .lines()
                .any(|line| line.trim_start().starts_with(command)),
            "{command} missing from --help:\n{}",
            ran.stdout
        );
    }
}

#[test]
fn passwd_names_the_users_file_it_creates() {
    let (dir, config_path) = folder_with(&TestConfig::new().auth("bcrypt_cost", 4).to_toml(), None);
    let mut command = tether_command(&config_path);
    command.args(["passwd", "alice"]);
    let ran = crate::common::run_with_input(command, b"pw\n", EXIT_TIMEOUT);
    assert_exit(&ran, 0);
    let users_path = dir.path().join("users.toml");
    assert!(
        ran.stdout.contains(&format!(
            "created in {} (a new users file)",
            users_path.display()
        )),
        "{ran:?}"
    );
}

#[test]
fn a_service_manager_is_told_when_the_server_is_ready_and_stopping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("bind");
    socket
        .set_read_timeout(Some(EXIT_TIMEOUT))
        .expect("read timeout");
    let (dir, _) = folder_with(&TestConfig::new().to_toml(), Some(&users_toml(&[])));
    let cwd = dir.path().to_owned();
    let mut server = TestServer::start_customized(dir, &cwd, |command| {
        command.env("NOTIFY_SOCKET", &socket_path);
    });
    let mut message = [0u8; 256];
    let read = socket
        .recv(&mut message)
        .expect("READY=1 within the timeout");
    assert_eq!(&message[..read], b"READY=1\n");
    server.terminate();
    let read = socket
        .recv(&mut message)
        .expect("STOPPING=1 within the timeout");
    assert_eq!(&message[..read], b"STOPPING=1\n");
    assert_eq!(server.wait_exit(EXIT_TIMEOUT).code(), Some(0));
}

/// `contrib/tether.service`: the key `key`'s values, every line of it, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .flat_map(str::split_whitespace)
        .collect()
}

#[test]
fn the_systemd_unit_waits_for_the_network_and_never_restarts_a_bad_configuration() {
    // Issue 23: After=network.target though the server talks to Redis / PostgreSQL at
    // start, and an ExecStartPre check failing with exit 2 restarted in a loop (systemd's
    // RestartPreventExitStatus= looks at the main process only).
    let unit_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/tether.service");
    let unit = std::fs::read_to_string(&unit_path).expect("contrib/tether.service");
    assert!(
        unit_values(&unit, "Wants").contains(&"network-online.target"),
        "{unit}"
    );
    assert!(
        unit_values(&unit, "After").contains(&"network-online.target"),
        "{unit}"
    );
    assert!(
        !unit_values(&unit, "After").contains(&"network.target"),
        "{unit}"
    );
    assert!(unit_values(&unit, "ExecStartPre").is_empty(), "{unit}");
    assert!(
        unit_values(&unit, "RestartPreventExitStatus").contains(&"2"),
        "{unit}"
    );

    // And systemd itself finds nothing wrong with it (the binary put where it says).
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        crate::common::skip_without(
            "systemd-analyze (checks contrib/tether.service)",
            "install Debian's systemd package",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let checked = dir.path().join("tether.service");
    let binary = env!("CARGO_BIN_EXE_tether");
    std::fs::write(
        &checked,
        unit.replace("/usr/local/bin/tether", binary)
            .replace("Documentation=man:tether(1)\n", ""),
    )
    .expect("write the unit");
    let ran = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&checked)
        .output()
        .expect("systemd-analyze runs");
    let said =
        String::from_utf8_lossy(&ran.stderr).into_owned() + &String::from_utf8_lossy(&ran.stdout);
    // Only what concerns the unit: the host's own units may have their own complaints.
    let about_it: Vec<&str> = said
        .lines()
        .filter(|line| line.contains("tether.service"))
        .collect();
    assert!(about_it.is_empty(), "systemd-analyze verify:\n{said}");
}
