//! `tether client`, the real binary, against a real server (in-process, over real TCP):
//! scripts through pipes, and a person at a prompt through a real pseudo-terminal.

use crate::common::in_process::{test_settings, InProcessServer};
use crate::common::{run_with_input, Ran};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tether_client::jiff::tz::TimeZone;
use tether_client::EventTime;

/// How long a client run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a test waits for a line of output.
const WAIT: Duration = Duration::from_secs(10);

/// An empty configuration file, so that the client reads no `server.toml` of the
/// working directory.
struct EmptyConfig {
    /// Holds `server.toml`.
    dir: tempfile::TempDir,
}

impl EmptyConfig {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("server.toml"), "").expect("write config");
        Self { dir }
    }

    /// `tether --config <empty> client --addr <addr> <args>`.
    fn client(&self, addr: SocketAddr, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
        command
            .arg("--config")
            .arg(self.dir.path().join("server.toml"))
            .arg("client")
            .arg("--addr")
            .arg(addr.to_string())
            .args(args)
            .env_remove("RUST_LOG");
        command
    }
}

fn lines(ran: &Ran) -> Vec<&str> {
    ran.stdout.lines().collect()
}

/// How `tether client --server-zone Europe/Moscow --zone UTC` shows an event of `time`.
fn shown_in_utc(time: i64, text: &str) -> String {
    let moscow = TimeZone::get("Europe/Moscow").expect("zone known");
    let instant = EventTime::from_local_millis(time)
        .to_timestamp(&moscow)
        .expect("in range");
    let shown = instant
        .to_zoned_datetime(TimeZone::UTC)
        .strftime("%Y-%m-%d %H:%M:%S%.3f +00:00")
        .to_string();
    format!("event {shown} {text}")
}

#[test]
fn a_script_prints_one_reply_per_line_and_exits_zero() {
    let server = InProcessServer::start(test_settings(), &[("alice", "secret")]);
    let config = EmptyConfig::new();
    let command = config.client(
        server.addr(),
        &[
            "--login",
            "alice",
            "--password-stdin",
            "-c",
            "prolongate",
            "-c",
            "invalidate",
            "-c",
            "logout",
        ],
    );
    let ran = run_with_input(command, b"secret\n", RUN_TIMEOUT);
    assert!(ran.status.success(), "{ran:?}");
    assert_eq!(
        lines(&ran),
        [
            "login_valid",
            "prolongate_ack",
            "invalidate_ack",
            "logout_ack"
        ]
    );
}

#[test]
fn login_invalid_exits_one_without_running_the_commands() {
    let server = InProcessServer::start(test_settings(), &[("alice", "secret")]);
    let config = EmptyConfig::new();
    let command = config.client(
        server.addr(),
        &["--login", "alice", "--password-stdin", "-c", "prolongate"],
    );
    let ran = run_with_input(command, b"wrong\n", RUN_TIMEOUT);
    assert_eq!(ran.status.code(), Some(1), "{ran:?}");
    assert_eq!(lines(&ran), ["login_invalid"]);
}

#[test]
fn bad_commands_exit_two_and_an_unreachable_server_exits_three() {
    let server = InProcessServer::start(test_settings(), &[]);
    let config = EmptyConfig::new();
    let ran = run_with_input(
        config.client(server.addr(), &["-c", "hello"]),
        b"",
        RUN_TIMEOUT,
    );
    assert_eq!(ran.status.code(), Some(2), "{ran:?}");
    assert!(ran.stderr.contains("hello"), "{ran:?}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let addr = closed.local_addr().expect("bound");
    drop(closed);
    let ran = run_with_input(config.client(addr, &["-c", "prolongate"]), b"", RUN_TIMEOUT);
    assert_eq!(ran.status.code(), Some(3), "{ran:?}");
    assert!(ran.stderr.contains("cannot connect"), "{ran:?}");
}

#[test]
fn commands_piped_one_per_line_are_answered_in_order() {
    let server = InProcessServer::start(test_settings(), &[("alice", "secret")]);
    let config = EmptyConfig::new();
    let input = b"login alice secret\n\nprolongate\nlogin alice\nwrong\nquit\ninvalidate\n";
    let ran = run_with_input(config.client(server.addr(), &[]), input, RUN_TIMEOUT);
    assert!(ran.status.success(), "{ran:?}");
    assert_eq!(
        lines(&ran),
        ["login_valid", "prolongate_ack", "login_invalid"]
    );
}

#[test]
fn a_piped_line_that_is_no_command_is_reported_and_fails_the_run() {
    // Issue 23: the help says exit code 2 for a bad command; a pipe got 0. The lines after
    // it are still sent; the complaint goes to standard error, the replies to standard
    // output.
    let server = InProcessServer::start(test_settings(), &[("alice", "secret")]);
    let config = EmptyConfig::new();
    let input = b"login alice secret\nbogus\nprolongate\n";
    let ran = run_with_input(config.client(server.addr(), &[]), input, RUN_TIMEOUT);
    assert_eq!(ran.status.code(), Some(2), "{ran:?}");
    assert_eq!(lines(&ran), ["login_valid", "prolongate_ack"]);
    assert!(
        ran.stderr.contains("unknown command `bogus` (type `help`)"),
        "{ran:?}"
    );
}

#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    // Issue 23: `tether man | head` printed "Broken pipe". Whatever the CLI prints, a
    // reader gone is a normal end.
    let dir = tempfile::tempdir().expect("temp dir");
    for args in [&["man"][..], &["completions", "bash"], &["--help"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(args)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tether starts");
        // The reader takes nothing and goes away, as `head -0` would.
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("tether ends");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("Broken pipe") && !stderr.contains("panicked"),
            "tether {args:?}: {stderr}"
        );
        assert_eq!(output.status.code(), Some(0), "tether {args:?}: {stderr}");
    }
}

#[test]
fn piped_commands_end_after_disconnect_ack() {
    let server = InProcessServer::start(test_settings(), &[]);
    let config = EmptyConfig::new();
    let input = b"disconnect\nprolongate\n";
    let ran = run_with_input(config.client(server.addr(), &[]), input, RUN_TIMEOUT);
    assert!(ran.status.success(), "{ran:?}");
    assert_eq!(lines(&ran), ["disconnect_ack"]);
}

#[test]
fn listen_prints_pushes_with_readable_times_until_the_connection_closes() {
    let mut settings = test_settings();
    settings.time_zone = TimeZone::get("Europe/Moscow").expect("zone known");
    let mut server = InProcessServer::start(settings, &[("alice", "secret")]);
    let config = EmptyConfig::new();
    let mut child = config
        .client(
            server.addr(),
            &[
                "--login",
                "alice",
                "--password-stdin",
                "--listen",
                "--server-zone",
                "Europe/Moscow",
                "--zone",
                "UTC",
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tether client");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin piped");
        stdin.write_all(b"secret\n").expect("password written");
    }
    let stdout = child.stdout.take().expect("stdout piped");
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = || line_rx.recv_timeout(WAIT).expect("a line in time");
    assert_eq!(next_line(), "login_valid");
    server.wait_for_connections("alice", 1);
    let receipt = server
        .block_on(server.handle().publish("alice", "hello ü"))
        .expect("published");
    assert_eq!(next_line(), shown_in_utc(receipt.time, "hello ü"));
    server.begin_shutdown();
    assert_eq!(next_line(), "shutdown");
    let status = child.wait().expect("client exits");
    assert!(status.success(), "{status}");
}

/// The interactive prompt in a pseudo-terminal, as a person sees it.
mod terminal {
    use super::*;
    use rexpect::session::{spawn_command, PtySession};

    /// What the prompt ends with.
    const PROMPT_END: &str = "> ";

    fn start(config: &EmptyConfig, addr: SocketAddr, args: &[&str]) -> PtySession {
        let client = config.client(addr, args);
        // rexpect turns the terminal's echo off before it starts the program; a person's
        // terminal echoes, so turn it back on, or a password shown by mistake would go
        // unnoticed.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("stty echo && exec \"$0\" \"$@\"")
            .arg(client.get_program())
            .args(client.get_args())
            .env_remove("RUST_LOG")
            .env("TERM", "xterm");
        let timeout_ms = u64::try_from(WAIT.as_millis()).expect("fits");
        let mut session = spawn_command(command, Some(timeout_ms)).expect("spawns in a pty");
        session
            .exp_string("type `help`")
            .expect("greets the person");
        session.exp_string(PROMPT_END).expect("shows a prompt");
        session
    }

    #[test]
    fn login_asks_for_the_password_without_echoing_it() {
        let server = InProcessServer::start(test_settings(), &[("alice", "s3cret-pw")]);
        let config = EmptyConfig::new();
        let mut session = start(&config, server.addr(), &[]);
        session.send_line("login alice").expect("typed");
        session
            .exp_string("password: ")
            .expect("asks for the password");
        session.send_line("s3cret-pw").expect("typed");
        let shown = session.exp_string("login_valid").expect("logged in");
        assert!(
            !shown.contains("s3cret-pw"),
            "the password was echoed: {shown:?}"
        );
        session.exp_string(PROMPT_END).expect("prompt again");
        session.send_line("prolongate").expect("typed");
        session.exp_string("prolongate_ack").expect("answered");
        session.send_line("quit").expect("typed");
        session.exp_eof().expect("exits");
    }

    #[test]
    fn a_pushed_event_is_shown_while_at_the_prompt() {
        let mut settings = test_settings();
        settings.time_zone = TimeZone::get("Europe/Moscow").expect("zone known");
        let server = InProcessServer::start(settings, &[("alice", "secret")]);
        let config = EmptyConfig::new();
        let mut session = start(
            &config,
            server.addr(),
            &["--server-zone", "Europe/Moscow", "--zone", "UTC"],
        );
        session.send_line("login alice secret").expect("typed");
        session.exp_string("login_valid").expect("logged in");
        session.exp_string(PROMPT_END).expect("back at the prompt");
        server.wait_for_connections("alice", 1);
        let receipt = server
            .block_on(server.handle().publish("alice", "while you wait"))
            .expect("published");
        session
            .exp_string(&shown_in_utc(receipt.time, "while you wait"))
            .expect("the event is shown without typing anything");
        session
            .exp_string(PROMPT_END)
            .expect("the prompt is drawn again below the event");
        session.send_line("invalidate").expect("typed");
        session.exp_string("invalidate_ack").expect("still usable");
        session.send_control('d').expect("Ctrl-D");
        session.exp_eof().expect("exits");
    }
}
