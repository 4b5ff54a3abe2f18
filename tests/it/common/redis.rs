//! A private `redis-server` for a test, on a free loopback port in a temporary folder,
//! without persistence, that the test can kill (`SIGKILL`), start again on the same port,
//! pause (`SIGSTOP`) and resume, and send commands to with `redis-cli` (Debian's
//! `redis-server` package brings both programs).
//!
//! Without them, [`Redis::start`] prints one line saying the test was skipped and how to
//! install them, and answers `None`; under `CI=true` it fails instead
//! ([`super::skip_without`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a started Redis may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports [`Redis::start`] tries when another process takes the first.
const PORT_ATTEMPTS: usize = 5;

/// A private Redis; dropping it kills the server and removes its folder.
pub struct Redis {
    /// Holds the log (`redis.log`); the server's working folder.
    dir: tempfile::TempDir,
    /// The loopback port, kept across restarts.
    port: u16,
    /// The running server; `None` while killed.
    child: Option<Child>,
    /// Arguments added to every start (a cluster node's, a replica's…).
    extra: Vec<String>,
    /// A sentinel's configuration file: the server runs `--sentinel` with it.
    sentinel_conf: Option<String>,
    /// The password `redis-cli` gives, when the server wants one.
    pub cli_password: Option<String>,
}

/// Whether `program` can be run (it answers `--version`).
fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether a Redis on `addr` answers `PING` now.
fn answers_ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    // A server with a password answers, too: that it wants one.
    stream.read_exact(&mut answer).is_ok() && (&answer == b"+PONG\r\n" || &answer == b"-NOAUTH")
}

impl Redis {
    /// Starts a Redis on a free loopback port; `None` (after one line saying so) when
    /// `redis-server` or `redis-cli` is not installed, outside CI.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// Like [`Redis::start`], with `extra` arguments to `redis-server` at every start; a
    /// `{dir}` in them stands for the server's folder.
    pub fn start_with(extra: &[String]) -> Option<Self> {
        Self::spawn_new(extra, None)
    }

    /// A sentinel (`redis-server CONF --sentinel`) on a free loopback port; `conf` must be
    /// writable (the sentinel rewrites it).
    pub fn start_sentinel(conf: &str) -> Option<Self> {
        Self::spawn_new(&[], Some(conf.to_owned()))
    }

    /// Starts a server of either kind on a free port.
    fn spawn_new(extra: &[String], sentinel_conf: Option<String>) -> Option<Self> {
        for program in ["redis-server", "redis-cli"] {
            if !installed(program) {
                super::skip_without(
                    &format!("cluster test (no `{program}` command)"),
                    "install it with `apt-get install redis-server`",
                );
                return None;
            }
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let extra = extra
            .iter()
            .map(|arg| arg.replace("{dir}", &dir.path().display().to_string()))
            .collect();
        let mut redis = Self {
            dir,
            port: 0,
            child: None,
            extra,
            sentinel_conf,
            cli_password: None,
        };
        for _ in 0..PORT_ATTEMPTS {
            redis.port = super::free_port();
            if redis.try_spawn() {
                return Some(redis);
            }
        }
        panic!(
            "redis-server did not start on any of {PORT_ATTEMPTS} free ports; log:\n{}",
            redis.log()
        );
    }

    /// Spawns the server on `self.port` and waits until it answers `PING`; answers `false`
    /// when it exits first (the port was taken meanwhile).
    fn try_spawn(&mut self) -> bool {
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new("redis-server");
        if let Some(conf) = &self.sentinel_conf {
            command.arg(conf).arg("--sentinel");
        }
        let mut child = command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let addr = self.addr();
        let mut exited = false;
        let up = super::wait_until(START_TIMEOUT, || {
            exited = child.try_wait().ok().flatten().is_some();
            exited || answers_ping(addr)
        });
        if exited {
            return false;
        }
        if !up {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "redis-server did not answer PING on {addr} within {START_TIMEOUT:?}; log:\n{}",
                self.log()
            );
        }
        self.child = Some(child);
        true
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The URL for `cluster.redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Whether the server runs now (not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's process id; panics while it is killed.
    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("redis-server running");
        i32::try_from(child.id()).expect("pid fits i32")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Kills the server with `SIGKILL` (every connection cut, nothing kept) and reaps it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("redis-server running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the server again on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a killed redis-server only");
        assert!(
            self.try_spawn(),
            "redis-server could not start again on port {}; log:\n{}",
            self.port,
            self.log()
        );
    }

    /// Freezes the server (`SIGSTOP`): connections stay open and nothing answers, as when
    /// a host hangs or a network drops packets.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a paused server run again (`SIGCONT`).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)
            .expect("signal redis-server");
    }

    /// Runs one command with `redis-cli` and answers its output in `redis-cli`'s raw form
    /// (one line per element of an array reply); panics when Redis answers an error.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|failure| panic!("redis-cli {args:?} failed: {failure}"))
    }

    /// Like [`Redis::cli`], answering why it failed rather than panicking (a server that
    /// closes connections, as a sentinel's promotion does).
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--raw"])
            .args(
                self.cli_password
                    .iter()
                    .flat_map(|password| ["-a", password, "--no-auth-warning"]),
            )
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() && !text.starts_with("ERR") && !text.starts_with("WRONG") {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&output.stderr)))
        }
    }

    /// Waits (at most 30 s, panicking then) until a client has tried `attempts` more TLS
    /// handshakes that failed: Redis logs at `verbose` (set here) every TLS connection it
    /// could not accept — a client that does not trust its certificate breaks it off.
    pub fn wait_refused_tls_handshakes(&self, attempts: usize) {
        self.cli(&["CONFIG", "SET", "loglevel", "verbose"]);
        let refused = || {
            self.log()
                .matches("Error accepting a client connection")
                .count()
        };
        let first = refused();
        let retried = super::wait_until(Duration::from_secs(30), || refused() >= first + attempts);
        assert!(
            retried,
            "the client tried {} more time(s) in 30 s; Redis's log:\n{}",
            refused() - first,
            self.log()
        );
    }

    /// The channels matching `pattern` that have at least one subscriber
    /// (`PUBSUB CHANNELS`), sorted.
    pub fn channels(&self, pattern: &str) -> Vec<String> {
        let mut channels: Vec<String> = self
            .cli(&["PUBSUB", "CHANNELS", pattern])
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect();
        channels.sort();
        channels
    }

    /// How many subscribers `channel` has (`PUBSUB NUMSUB`).
    pub fn subscribers(&self, channel: &str) -> u64 {
        let text = self.cli(&["PUBSUB", "NUMSUB", channel]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "PUBSUB NUMSUB {channel}: {text:?}");
        lines[1].parse().expect("a count")
    }

    /// How many times `command` (lower case, as `INFO commandstats` names it) has run
    /// since the start or the last `CONFIG RESETSTAT`.
    pub fn command_calls(&self, command: &str) -> u64 {
        let text = self.cli(&["INFO", "commandstats"]);
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .map_or(0, |rest| {
                rest.split(',')
                    .next()
                    .and_then(|calls| calls.parse().ok())
                    .expect("a call count")
            })
    }

    /// Every command's call count from `INFO commandstats`, as (name, calls).
    pub fn all_command_calls(&self) -> Vec<(String, u64)> {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(":calls=")?;
                let calls = rest.split(',').next()?.parse().ok()?;
                Some((name.to_owned(), calls))
            })
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL ends a stopped process too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
