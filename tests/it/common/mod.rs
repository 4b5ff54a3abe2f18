//! Black-box test harness: a `tether` process started on temporary configuration files
//! ([`TestServer`]) and a protocol client over a plain blocking TCP socket ([`TestClient`]).
//!
//! The client knows nothing about how the server was started, so in-process tests can use
//! it against any address. [`in_process`] runs the server inside the test process instead;
//! [`hardening`] looks at the server process through `/proc` and opens sockets with options.

pub mod brokers;
pub mod cluster;
pub mod haproxy;
pub mod hardening;
pub mod in_process;
pub mod nginx;
pub mod postgres;
pub mod redis;
pub mod tls;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Terminates every message (U+001E).
pub const RS: u8 = 0x1E;
/// Separates the parts of a message (U+001F).
pub const US: u8 = 0x1F;

/// How long [`TestClient::recv`] waits for a message unless told otherwise: a guard against
/// a hang, not a bound on speed. A reply behind a password check waits for a bcrypt thread
/// at nice 10, which gets about a tenth of a core beside busy processes of normal priority.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a test waits for bcrypt checks it queued by the hundred (or for a few of a high
/// cost) to be answered: the same threads, on a loaded machine, may take minutes.
pub const CHECKS_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the server may take to log its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`admin_call`] waits for an answer: a request that hangs fails the test.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// bcrypt cost for the users a test creates by password: cheap, so logins are fast.
pub const TEST_BCRYPT_COST: u32 = 4;

/// Encodes one message: `parts` joined by US, terminated by RS.
pub fn encode(parts: &[&str]) -> Vec<u8> {
    let mut bytes = parts.join("\u{1f}").into_bytes();
    bytes.push(RS);
    bytes
}

/// Encodes several messages back to back, as one buffer for a single write.
pub fn encode_all(messages: &[&[&str]]) -> Vec<u8> {
    messages.iter().flat_map(|parts| encode(parts)).collect()
}

/// A bcrypt hash of `password` at the cheap test cost.
pub fn cheap_hash(password: &str) -> String {
    bcrypt::hash(password, TEST_BCRYPT_COST).expect("bcrypt hash")
}

/// The file [`skip_without`] appends one line to per skip, under the target directory:
/// `scripts/test` empties it before a run and prints it after, so the summary a user sees
/// names every test that did nothing and how to get what it needs.
pub const SKIPPED_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/skipped-tests.txt");

/// Whether this run is CI's: `CI` set to exactly `true` (as GitHub Actions, GitLab and most
/// others set it). Under CI nothing may be skipped.
pub fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// What a test does when an external program it needs (a database, a proxy, a broker) is
/// not installed — the one rule for every such test: outside CI it records the skip
/// (`TEST NAME: why; advice` in [`SKIPPED_FILE`], and the same line on stderr) and the test
/// returns; under `CI=true` it fails, so CI never passes by skipping. `advice` says how to
/// get the program.
pub fn skip_without(why: &str, advice: &str) {
    assert!(!under_ci(), "needed under CI=true: {why}; {advice}");
    // libtest names each test's thread after the test; a thread the test started has no
    // name (or `main` with --test-threads=1).
    let current = thread::current();
    let test = match current.name() {
        Some(name) if name != "main" => name,
        _ => "(a test)",
    };
    let line = format!("{test}: {why}; {advice}\n");
    eprint!("skipped: {line}");
    // One `write` of one short line to a file opened for appending: lines from parallel
    // tests (and test binaries) do not interleave; the lock keeps this process's in order.
    static RECORD: Mutex<()> = Mutex::new(());
    let _held = RECORD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(SKIPPED_FILE)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(err) = written {
        eprintln!("(could not record the skip in {SKIPPED_FILE}: {err})");
    }
}

/// A loopback port nobody listens on now (another process may take it before the caller
/// does: a caller that cannot bind it should try another).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// A `server.toml` built key by key, so tests state only what they change and no TOML
/// table is written twice. Starts from a test baseline: clients on an ephemeral loopback
/// port, admin API off, log level info.
#[derive(Debug, Clone)]
pub struct TestConfig {
    /// Section name → key → value.
    sections: toml::Table,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TestConfig {
    /// The baseline configuration.
    pub fn new() -> Self {
        Self {
            sections: toml::Table::new(),
        }
        .set("server", "listen", "127.0.0.1:0")
        .set("admin", "listen", "")
        .set("log", "level", "info")
    }

    /// Sets `[section] key = value`, replacing an earlier value of the same key.
    pub fn set(mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        let table = self
            .sections
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table
            .as_table_mut()
            .expect("a section is a table")
            .insert(key.to_owned(), value.into());
        self
    }

    /// Sets a key of `[server]`.
    pub fn server(self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.set("server", key, value)
    }

    /// Sets a key of `[auth]`.
    pub fn auth(self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.set("auth", key, value)
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.sections).expect("config serialises")
    }
}

/// The text of a users file holding `users` as (name, bcrypt hash) pairs.
pub fn users_toml(users: &[(&str, &str)]) -> String {
    let mut entries = toml::Table::new();
    for (name, hash) in users {
        let mut entry = toml::Table::new();
        entry.insert("password_hash".into(), (*hash).into());
        entries.insert((*name).to_owned(), entry.into());
    }
    let mut root = toml::Table::new();
    root.insert("users".into(), entries.into());
    toml::to_string(&root).expect("users serialise")
}

// ---------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------

/// Everything the child wrote to stderr so far, and a signal for new lines.
#[derive(Default)]
struct StderrLog {
    /// The text received so far.
    text: Mutex<String>,
    /// Notified whenever text is appended or the stream ends.
    grew: Condvar,
}

/// Starts a thread that drains `stderr` into a shared log until the pipe closes, so the
/// child never blocks on a full pipe and tests can read its log at any time.
fn drain_stderr(stderr: impl Read + Send + 'static) -> Arc<StderrLog> {
    let log = Arc::new(StderrLog::default());
    let writer = Arc::clone(&log);
    thread::spawn(move || {
        let mut stderr = stderr;
        let mut buf = [0u8; 4096];
        loop {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut text = writer.text.lock().expect("log lock");
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                    writer.grew.notify_all();
                }
            }
        }
        writer.grew.notify_all();
    });
    log
}

/// The client address in a `listening on <addr>` line of `log`, if there is one.
fn listening_addr(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        let rest = &line[line.find("listening on ")? + "listening on ".len()..];
        let token: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != ',' && *c != ')')
            .collect();
        token.parse().ok()
    })
}

/// A `tether` binary running on configuration files in its own temporary folder.
/// Dropping it kills the process.
pub struct TestServer {
    /// The running process; `None` once it has been reaped.
    child: Option<Child>,
    /// What the process has logged.
    log: Arc<StderrLog>,
    /// The address clients connect to, from the `listening on` line.
    addr: SocketAddr,
    /// Holds `server.toml` and `users.toml`; removed on drop.
    dir: tempfile::TempDir,
    /// How the process ended, once it has.
    status: Option<ExitStatus>,
}

impl TestServer {
    /// Starts a server with `config` and the given (name, password) users, hashed at the
    /// cheap test cost.
    pub fn start(config: &TestConfig, users: &[(&str, &str)]) -> Self {
        let hashed: Vec<(String, String)> = users
            .iter()
            .map(|(name, pw)| ((*name).to_owned(), cheap_hash(pw)))
            .collect();
        let pairs: Vec<(&str, &str)> = hashed
            .iter()
            .map(|(n, h)| (n.as_str(), h.as_str()))
            .collect();
        Self::start_with_hashes(config, &pairs)
    }

    /// Starts a server with `config` and the given (name, bcrypt hash) users.
    pub fn start_with_hashes(config: &TestConfig, users: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("server.toml"), config.to_toml()).expect("write config");
        std::fs::write(dir.path().join("users.toml"), users_toml(users)).expect("write users");
        let cwd = dir.path().to_owned();
        Self::start_in(dir, &cwd)
    }

    /// Starts a server on `dir/server.toml` (and whatever else the test put into `dir`),
    /// with `cwd` as its working directory.
    pub fn start_in(dir: tempfile::TempDir, cwd: &Path) -> Self {
        Self::start_customized(dir, cwd, |_| {})
    }

    /// Like [`TestServer::start_in`], letting `customize` adjust the command first (such
    /// as resource limits for the child).
    pub fn start_customized(
        dir: tempfile::TempDir,
        cwd: &Path,
        customize: impl FnOnce(&mut Command),
    ) -> Self {
        let config_path = dir.path().join("server.toml");
        let config_text = std::fs::read_to_string(&config_path).expect("read config");
        let mut command = tether_command(&config_path);
        customize(&mut command);
        let mut child = command
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tether");
        let log = drain_stderr(child.stderr.take().expect("stderr piped"));
        let addr = wait_until_listening(&mut child, &log, &config_text);
        Self {
            child: Some(child),
            log,
            addr,
            dir,
            status: None,
        }
    }

    /// A server with the baseline configuration and the given (name, password) users.
    pub fn with_users(users: &[(&str, &str)]) -> Self {
        Self::start(&TestConfig::new(), users)
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The folder holding the configuration files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration file the server runs on.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("server.toml")
    }

    /// The users file the server runs on.
    pub fn users_path(&self) -> PathBuf {
        self.dir.path().join("users.toml")
    }

    /// A new client connected to this server.
    pub fn client(&self) -> TestClient {
        TestClient::connect(self.addr)
    }

    /// A new client logged in as `name`.
    pub fn logged_in(&self, name: &str, password: &str) -> TestClient {
        let mut client = self.client();
        client.login(name, password);
        client
    }

    /// What a fresh connection gets for `login name password`, its parts joined by spaces.
    pub fn login_reply(&self, name: &str, password: &str) -> String {
        let mut client = self.client();
        client.send(&["login", name, password]);
        client.recv().join(" ")
    }

    /// Everything the server has written to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.log.text.lock().expect("log lock").clone()
    }

    /// Waits until the server's stderr contains `needle`; panics after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut text = self.log.text.lock().expect("log lock");
        while !text.contains(needle) {
            let now = Instant::now();
            assert!(
                now < deadline,
                "server did not log {needle:?} within {timeout:?}; its log:\n{text}"
            );
            text = self
                .log
                .grew
                .wait_timeout(text, deadline - now)
                .expect("log lock")
                .0;
        }
    }

    /// The process id, for signals and `/proc`.
    pub fn pid(&self) -> nix::unistd::Pid {
        let child = self.child.as_ref().expect("server still running");
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"))
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("send signal");
    }

    /// Waits for the process to exit; panics (with its log) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let child = self.child.as_mut().expect("server process");
        let status = wait_child(child, timeout).unwrap_or_else(|| {
            panic!(
                "server did not exit within {timeout:?}; its log:\n{}",
                self.log.text.lock().expect("log lock")
            )
        });
        self.status = Some(status);
        status
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A command running the `tether` binary under test with `--config path`, with a clean
/// log environment.
pub fn tether_command(config_path: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    command
        .arg("--config")
        .arg(config_path)
        .env_remove("RUST_LOG");
    command
}

/// Polls `child` until it exits or `timeout` passes.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let mut exited = None;
    wait_until(timeout, || {
        exited = child.try_wait().expect("wait for tether");
        exited.is_some()
    });
    exited
}

/// Waits (at most `timeout`) until `condition` holds, asking again every 10 ms; answers
/// whether it did. The one polling loop of the harness: use it for any state the server
/// reports only when asked.
///
/// The last question is asked at or after the deadline: a test thread descheduled on a
/// busy machine between a `false` and its look at the clock would otherwise answer "not
/// by the deadline" for a state reached before it. (So `!wait_until(..)` cannot prove
/// that something did *not* happen by a deadline: it may count a little past it.)
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let expired = Instant::now() >= deadline;
        if condition() {
            return true;
        }
        if expired {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The current UTC time in milliseconds since the epoch, as event times count it.
pub fn utc_millis_now() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since_epoch.as_millis()).expect("fits")
}

/// The value of `series` (as written, labels included) in a `/metrics` text; `None` when
/// it is not there.
pub fn metric_in(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("a number"))
}

/// The admin API's address, from the server's `listening on ADDR (admin API)` log line.
pub fn admin_addr(log: &str) -> SocketAddr {
    log.lines()
        .filter(|line| line.contains("(admin API)"))
        .find_map(listening_addr)
        .unwrap_or_else(|| panic!("no admin listening line in:\n{log}"))
}

/// Sends an admin API request (with `Authorization: Bearer TOKEN` when `token` is set,
/// a JSON `body` when there is one) to `base` (`http://ADDR`); answers the status and the
/// body, whatever the status. Panics on a transport error, or when no answer comes within
/// [`ADMIN_TIMEOUT`].
pub fn admin_call(
    base: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut request = ureq::request(method, &format!("{base}{path}")).timeout(ADMIN_TIMEOUT);
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let result = match body {
        Some(body) => request
            .set("Content-Type", "application/json")
            .send_string(body),
        None => request.call(),
    };
    match result {
        Ok(response) => {
            let status = response.status();
            (status, response.into_string().expect("body readable"))
        }
        Err(ureq::Error::Status(status, response)) => {
            (status, response.into_string().expect("body readable"))
        }
        Err(err) => panic!("{method} {path}: transport error {err}"),
    }
}

/// Waits for the `listening on` line; panics with the log if the process exits first or
/// the line does not come within [`START_TIMEOUT`].
fn wait_until_listening(child: &mut Child, log: &StderrLog, config: &str) -> SocketAddr {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut text = log.text.lock().expect("log lock");
    loop {
        if let Some(addr) = listening_addr(&text) {
            return addr;
        }
        if let Some(status) = child.try_wait().expect("wait for tether") {
            panic!("tether exited ({status}) before listening; config:\n{config}\nlog:\n{text}");
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tether did not log `listening on` within {START_TIMEOUT:?}; log:\n{text}");
        }
        let step = (deadline - now).min(Duration::from_millis(50));
        text = log.grew.wait_timeout(text, step).expect("log lock").0;
    }
}

/// Runs `command` to its end with nothing on its standard input, killing it (and
/// failing) if it is still running after `timeout` — a server that should have refused to
/// start but did not.
pub fn run_to_exit(command: Command, timeout: Duration) -> Ran {
    run_with_input(command, &[], timeout)
}

/// The outcome of a `tether` command run to its end with some standard input.
#[derive(Debug)]
pub struct Ran {
    /// How the process ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

/// Runs `command` with `input` as its standard input (then closed) to its end; panics if it
/// is still running after `timeout`.
pub fn run_with_input(mut command: Command, input: &[u8], timeout: Duration) -> Ran {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tether");
    let stdout = drain_stderr(child.stdout.take().expect("stdout piped"));
    let stderr = drain_stderr(child.stderr.take().expect("stderr piped"));
    let mut stdin = child.stdin.take().expect("stdin piped");
    // The command may exit before reading everything (a refused name): ignore EPIPE.
    let _ = stdin.write_all(input);
    drop(stdin);
    let status = wait_child(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "tether still running after {timeout:?}; stderr:\n{}",
            stderr.text.lock().expect("log lock")
        )
    });
    // The pipes close when the process ends; wait for the drain threads to finish.
    let deadline = Instant::now() + Duration::from_secs(2);
    while (Arc::strong_count(&stdout) > 1 || Arc::strong_count(&stderr) > 1)
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(5));
    }
    let text = |log: &StderrLog| log.text.lock().expect("log lock").clone();
    Ran {
        status,
        stdout: text(&stdout),
        stderr: text(&stderr),
    }
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// Why no message could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvError {
    /// Nothing complete arrived in time; holds the bytes of an incomplete message, if any.
    Timeout(Vec<u8>),
    /// The server closed (or reset) the connection; holds the bytes of an incomplete
    /// message, if any.
    Closed(Vec<u8>),
}

/// A protocol client over a blocking socket. Every wait is bounded.
pub struct TestClient {
    /// The connection.
    stream: TcpStream,
    /// Bytes received but not yet returned as messages.
    buffer: Vec<u8>,
    /// Whether the server has closed its side (EOF or reset seen).
    closed: bool,
}

impl TestClient {
    /// Connects to `addr` (with `TCP_NODELAY`, so every `send` leaves at once).
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|err| panic!("connect to {addr}: {err}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        Self {
            stream,
            buffer: Vec::new(),
            closed: false,
        }
    }

    /// A client over a stream the test connected itself (from another source address, with
    /// other socket options).
    pub fn from_stream(stream: TcpStream) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
            closed: false,
        }
    }

    /// Takes the stream back, to close it in a particular way.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Sends one message made of `parts`.
    pub fn send(&mut self, parts: &[&str]) {
        self.send_raw(&encode(parts));
    }

    /// Sends `bytes` as they are, in one write.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.try_send_raw(bytes)
            .unwrap_or_else(|err| panic!("send {:?}: {err}", String::from_utf8_lossy(bytes)));
    }

    /// Sends `bytes`, reporting a failure instead of panicking.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends `bytes` one byte per write, pausing `pause` between them.
    pub fn send_bytewise(&mut self, bytes: &[u8], pause: Duration) {
        for byte in bytes {
            self.send_raw(std::slice::from_ref(byte));
            thread::sleep(pause);
        }
    }

    /// Closes the sending side; replies can still be read.
    pub fn shutdown_write(&mut self) {
        self.stream
            .shutdown(Shutdown::Write)
            .expect("shutdown write");
    }

    /// The next message as its parts, waiting at most [`RECV_TIMEOUT`].
    pub fn recv(&mut self) -> Vec<String> {
        self.recv_within(RECV_TIMEOUT)
    }

    /// The next message as its parts; panics if none arrives within `timeout`.
    pub fn recv_within(&mut self, timeout: Duration) -> Vec<String> {
        match self.try_recv(timeout) {
            Ok(parts) => parts,
            Err(RecvError::Timeout(partial)) => panic!(
                "no message within {timeout:?} (incomplete bytes: {:?})",
                String::from_utf8_lossy(&partial)
            ),
            Err(RecvError::Closed(partial)) => panic!(
                "connection closed while waiting for a message (incomplete bytes: {:?})",
                String::from_utf8_lossy(&partial)
            ),
        }
    }

    /// The next message as its parts, or why there is none within `timeout`.
    pub fn try_recv(&mut self, timeout: Duration) -> Result<Vec<String>, RecvError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == RS) {
                let message: Vec<u8> = self.buffer.drain(..=end).collect();
                return Ok(split_message(&message[..end]));
            }
            if self.closed {
                return Err(RecvError::Closed(self.buffer.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvError::Timeout(self.buffer.clone()));
            }
            self.fill(deadline - now);
        }
    }

    /// Reads what arrives within `wait` into the buffer; notes EOF or a reset.
    fn fill(&mut self, wait: Duration) {
        let wait = wait.max(Duration::from_millis(1));
        self.stream
            .set_read_timeout(Some(wait))
            .expect("set read timeout");
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) => self.closed = true,
            Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) if is_reset(&err) => self.closed = true,
            Err(err) => panic!("read from server: {err}"),
        }
    }

    /// Asserts that the next message is exactly `parts`.
    pub fn expect(&mut self, parts: &[&str]) {
        let got = self.recv();
        assert_eq!(got, parts, "expected message {parts:?}, got {got:?}");
    }

    /// Asserts that the next messages are exactly `messages`, in order.
    pub fn expect_all(&mut self, messages: &[&[&str]]) {
        for (index, parts) in messages.iter().enumerate() {
            let got = self.recv();
            assert_eq!(
                &got, parts,
                "message #{index}: expected {parts:?}, got {got:?}"
            );
        }
    }

    /// Asserts that the server closes the connection within [`RECV_TIMEOUT`] without
    /// sending anything more. A reset counts as closed.
    pub fn expect_closed(&mut self) {
        self.expect_closed_within(RECV_TIMEOUT);
    }

    /// Asserts that the server closes the connection within `timeout`, sending nothing
    /// more first.
    pub fn expect_closed_within(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            assert!(
                self.buffer.is_empty(),
                "expected the connection to close, got {:?}",
                String::from_utf8_lossy(&self.buffer)
            );
            let now = Instant::now();
            assert!(
                now < deadline,
                "the server did not close the connection within {timeout:?}"
            );
            self.fill(deadline - now);
        }
        assert!(
            self.buffer.is_empty(),
            "expected the connection to close, got {:?} first",
            String::from_utf8_lossy(&self.buffer)
        );
    }

    /// Asserts that not a single byte arrives, and the connection stays open, for `wait`.
    /// Only what is seen before the deadline counts: a thread descheduled on a busy
    /// machine may read, past the deadline, what arrived just after it.
    pub fn expect_nothing_for(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            assert!(
                self.buffer.is_empty(),
                "expected nothing, got {:?}",
                String::from_utf8_lossy(&self.buffer)
            );
            assert!(!self.closed, "expected nothing, but the connection closed");
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            self.fill(deadline - now);
            if Instant::now() >= deadline {
                return;
            }
        }
    }

    /// Whether a byte is waiting to be read right now (without consuming it).
    pub fn has_pending_input(&mut self) -> bool {
        if !self.buffer.is_empty() {
            return true;
        }
        self.stream.set_nonblocking(true).expect("set nonblocking");
        let mut byte = [0u8; 1];
        let pending = matches!(self.stream.peek(&mut byte), Ok(n) if n > 0);
        self.stream.set_nonblocking(false).expect("set blocking");
        pending
    }

    /// Sends each message in turn (raw bytes, terminators included) and asserts the
    /// one-part reply it gets before sending the next.
    pub fn converse_raw(&mut self, steps: &[(&[u8], &str)]) {
        for (index, (message, reply)) in steps.iter().enumerate() {
            self.send_raw(message);
            let got = self.recv();
            assert_eq!(
                got,
                [*reply],
                "step #{index}: reply to {:?}",
                String::from_utf8_lossy(message)
            );
        }
    }

    /// Sends each command in turn and asserts the one-part reply it gets before sending
    /// the next.
    pub fn converse(&mut self, steps: &[(&[&str], &str)]) {
        let messages: Vec<Vec<u8>> = steps.iter().map(|(command, _)| encode(command)).collect();
        let raw: Vec<(&[u8], &str)> = messages
            .iter()
            .zip(steps)
            .map(|(message, (_, reply))| (message.as_slice(), *reply))
            .collect();
        self.converse_raw(&raw);
    }

    /// Reads events up to the next other message, which must be `shutdown`; answers how
    /// many events came before it.
    pub fn events_before_shutdown(&mut self) -> usize {
        let mut events = 0;
        loop {
            let message = self.recv();
            if message[0] != "event" {
                assert_eq!(message, ["shutdown"], "after {events} event(s)");
                return events;
            }
            events += 1;
        }
    }

    /// Logs in and asserts the login is valid.
    pub fn login(&mut self, name: &str, password: &str) {
        self.send(&["login", name, password]);
        // A login waits for a bcrypt thread (nice 10): a hang guard of minutes.
        let got = self.recv_within(CHECKS_TIMEOUT);
        assert_eq!(
            got,
            ["login_valid"],
            "login as {name:?} should be valid, got {got:?}"
        );
    }
}

/// Whether `err` means the peer reset or dropped the connection.
fn is_reset(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// Splits a message (without its terminator) into parts; panics on invalid UTF-8.
fn split_message(message: &[u8]) -> Vec<String> {
    message
        .split(|&b| b == US)
        .map(|part| {
            String::from_utf8(part.to_vec())
                .unwrap_or_else(|_| panic!("server sent a part that is not UTF-8: {part:?}"))
        })
        .collect()
}

/// Asserts that none of `clients` receives a byte or is closed during `wait`: the first
/// is watched for the whole `wait`, the others are then checked for anything that arrived
/// meanwhile.
pub fn expect_all_silent(clients: &mut [&mut TestClient], wait: Duration) {
    for (index, client) in clients.iter_mut().enumerate() {
        let watch = if index == 0 {
            wait
        } else {
            Duration::from_millis(20)
        };
        client.expect_nothing_for(watch);
    }
}

/// What one kind of failure writes through the server's rate-limited failure log.
pub struct FailureLogLines {
    /// Part of the line logged at once for a failure.
    pub immediate: &'static str,
    /// What follows the count in a summary line ("N more …").
    pub summed: &'static str,
    /// Part of every summary line.
    pub summary: &'static str,
}

impl FailureLogLines {
    /// Failures in `log` logged at once, and failures summed up in summary lines.
    fn counts(&self, log: &str) -> (usize, u64) {
        let immediate = log.matches(self.immediate).count();
        let summed = log
            .lines()
            .filter_map(|line| {
                let before = &line[..line.find(self.summed)?];
                before.rsplit(' ').next()?.parse::<u64>().ok()
            })
            .sum();
        (immediate, summed)
    }
}

/// Asserts that `failed` failures were logged as one line at once (two if a summary time
/// with nothing to sum up fell between them) and the rest summed up within the interval.
pub fn assert_failures_logged_once_then_summed(
    server: &TestServer,
    failed: u64,
    lines: &FailureLogLines,
) {
    let (immediate, _) = lines.counts(&server.stderr_text());
    assert!(
        (1..=2).contains(&immediate),
        "{immediate} lines for {failed} failures:\n{}",
        server.stderr_text()
    );
    let summed_up = wait_until(Duration::from_secs(25), || {
        let (immediate, summed) = lines.counts(&server.stderr_text());
        immediate as u64 + summed == failed
    });
    assert!(summed_up, "{}", server.stderr_text());
    assert!(
        server.stderr_text().contains(lines.summary),
        "{}",
        server.stderr_text()
    );
}
