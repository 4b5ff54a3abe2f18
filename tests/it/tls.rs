//! Client TLS (SPEC §10): the protocol over rustls, mutual TLS, hostile handshakes,
//! start-up errors naming the file, and certificate reload on SIGHUP.

use crate::common::tls::{
    ca_and_server_pair, client_config, make_ca, make_signed, resuming_client_config,
    CountingSessions, TlsClient,
};
use crate::common::{run_to_exit, tether_command, RecvError, TestClient, TestConfig, TestServer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// The `[server.tls]` table of the tests: a TLS listener on a free loopback port serving
/// `server.pem`/`server.key`, with `extra` keys set over those.
fn tls_table(extra: &[(&str, &str)]) -> toml::Table {
    let mut tls = toml::Table::new();
    tls.insert("listen".into(), "127.0.0.1:0".into());
    tls.insert("cert_file".into(), "server.pem".into());
    tls.insert("key_file".into(), "server.key".into());
    for (key, value) in extra {
        tls.insert((*key).into(), (*value).into());
    }
    tls
}

/// A TLS test before its server starts: a folder with a CA `test` and a server pair
/// `server.pem`/`server.key` it signed, and a configuration with a TLS listener beside a
/// plaintext one.
struct TlsSetup {
    /// The folder the server runs in.
    dir: tempfile::TempDir,
    /// The configuration it starts with.
    config: TestConfig,
}

impl TlsSetup {
    /// The set-up; `None` (after one skip line) where openssl is missing.
    fn new() -> Option<Self> {
        let dir = ca_and_server_pair("test")?;
        let config = TestConfig::new().server("tls", tls_table(&[]));
        Some(Self { dir, config })
    }

    /// With the TLS listener only (no plaintext one).
    fn tls_only(self) -> Self {
        self.with(|config| config.server("listen", ""))
    }

    /// Requiring client certificates signed by the CA `test`.
    fn client_ca(self) -> Self {
        self.with(|config| config.server("tls", tls_table(&[("client_ca_file", "test-ca.pem")])))
    }

    /// With `change` made to the configuration.
    fn with(mut self, change: impl FnOnce(TestConfig) -> TestConfig) -> Self {
        self.config = change(self.config);
        self
    }

    /// The folder the server will run in.
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server with user alice; answers it and its TLS address.
    fn start(self) -> (TestServer, SocketAddr) {
        let Self { dir, config } = self;
        std::fs::write(dir.path().join("server.toml"), config.to_toml()).expect("write config");
        let users = crate::common::users_toml(&[("alice", &crate::common::cheap_hash("secret"))]);
        std::fs::write(dir.path().join("users.toml"), users).expect("write users");
        let cwd = dir.path().to_owned();
        let server = TestServer::start_in(dir, &cwd);
        server.wait_for_log("(clients, TLS)", Duration::from_secs(5));
        let tls = tls_addr(&server.stderr_text());
        (server, tls)
    }

    /// Starts the server with the admin API on too; answers it, its TLS address and the
    /// admin API's address.
    fn start_with_metrics(self) -> (TestServer, SocketAddr, SocketAddr) {
        let (server, tls) = self
            .with(|config| config.set("admin", "listen", "127.0.0.1:0"))
            .start();
        server.wait_for_log("(admin API)", Duration::from_secs(5));
        let admin = crate::common::admin_addr(&server.stderr_text());
        (server, tls, admin)
    }
}

/// A started server with a TLS and a plaintext listener and its TLS address; `None` where
/// openssl is missing.
fn tls_server() -> Option<(TestServer, SocketAddr)> {
    Some(TlsSetup::new()?.start())
}

/// The address of the `listening on ADDR (clients, TLS)` line.
fn tls_addr(log: &str) -> SocketAddr {
    let line = log
        .lines()
        .find(|line| line.contains("(clients, TLS)"))
        .expect("TLS listening line");
    let rest = &line[line.find("listening on ").expect("listening on") + 13..];
    rest.split_whitespace()
        .next()
        .expect("address")
        .parse()
        .expect("an address")
}

fn ca(server: &TestServer) -> std::path::PathBuf {
    server.dir().join("test-ca.pem")
}

#[test]
fn the_protocol_runs_over_tls_beside_plain_tcp() {
    let Some((server, tls)) = tls_server() else {
        return;
    };
    let mut client = TlsClient::connect(tls, client_config(&ca(&server), None)).expect("handshake");
    client.send(&["login", "alice", "secret"]);
    client.expect(&["login_valid"]);
    client.send(&["prolongate"]);
    client.expect(&["prolongate_ack"]);
    // An orderly close ends in close_notify and the end of the stream.
    client.send(&["disconnect"]);
    client.expect(&["disconnect_ack"]);
    let ended = client.try_recv();
    assert!(ended.is_err(), "{ended:?}");
    assert!(client.closed_cleanly(), "no close_notify before the end");
    let mut plain = server.client();
    plain.send(&["login", "alice", "secret"]);
    plain.expect(&["login_valid"]);
}

/// Connects with `config`, exchanges one `prolongate` (so the tickets sent after the
/// handshake have arrived) and closes; answers the kind of handshake it was.
fn one_exchange(tls: SocketAddr, config: &Arc<rustls::ClientConfig>) -> rustls::HandshakeKind {
    let mut client = TlsClient::connect(tls, config.clone()).expect("handshake");
    client.send(&["prolongate"]);
    client.expect(&["prolongate_ack"]);
    client.handshake_kind().expect("handshake done")
}

#[test]
fn a_reconnecting_client_resumes_its_session_after_many_other_clients() {
    let Some((server, tls)) = tls_server() else {
        return;
    };
    let sessions = CountingSessions::new();
    let returning = resuming_client_config(&ca(&server), sessions.clone());
    assert_eq!(one_exchange(tls, &returning), rustls::HandshakeKind::Full);
    // One ticket per handshake: a client reconnects one connection at a time, and each
    // resumption brings a fresh ticket.
    assert_eq!(sessions.tickets(), 1, "tickets sent after a full handshake");
    // Many other clients in between (a server-side cache of sessions would forget the
    // first one's: rustls's default keeps 256, two per handshake).
    for _ in 0..150 {
        one_exchange(tls, &client_config(&ca(&server), None));
    }
    assert_eq!(
        one_exchange(tls, &returning),
        rustls::HandshakeKind::Resumed,
        "the returning client's ticket was not honoured"
    );
    assert_eq!(
        sessions.tickets(),
        2,
        "a resumption brings one fresh ticket"
    );
    assert_eq!(
        one_exchange(tls, &returning),
        rustls::HandshakeKind::Resumed
    );
}

#[test]
fn an_empty_server_listen_leaves_tls_only() {
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    let (server, tls) = setup.tls_only().start();
    assert_eq!(server.addr(), tls);
    assert!(!server.stderr_text().contains("(clients)\n"));
    let mut client = TlsClient::connect(tls, client_config(&ca(&server), None)).expect("handshake");
    client.send(&["login", "alice", "secret"]);
    client.expect(&["login_valid"]);
}

#[test]
fn mutual_tls_accepts_a_signed_client_and_refuses_others() {
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    let (server, tls) = setup.tls_only().client_ca().start();
    let d = server.dir();
    make_signed(d, "test", "client");
    make_ca(d, "other");
    make_signed(d, "other", "stranger");
    let signed = client_config(
        &ca(&server),
        Some((&d.join("client.pem"), &d.join("client.key"))),
    );
    let mut client = TlsClient::connect(tls, signed).expect("handshake with a signed certificate");
    client.send(&["login", "alice", "secret"]);
    client.expect(&["login_valid"]);

    // TLS 1.3: the client finishes first; the refusal comes as an alert on its first read.
    for config in [
        client_config(&ca(&server), None),
        client_config(
            &ca(&server),
            Some((&d.join("stranger.pem"), &d.join("stranger.key"))),
        ),
    ] {
        let refused = TlsClient::connect(tls, config).and_then(|mut client| {
            client.send(&["prolongate"]);
            client.try_recv()
        });
        assert!(
            refused.is_err(),
            "a client without a signed certificate got {refused:?}"
        );
    }
    server.wait_for_log("TLS handshake failed", Duration::from_secs(5));
}

#[test]
fn plaintext_garbage_and_truncated_handshakes_are_closed_harmlessly() {
    let Some((server, tls)) = tls_server() else {
        return;
    };
    assert_closed_with_at_most_an_alert(
        tls,
        &crate::common::encode(&["login", "alice", "secret"]),
        false,
    );
    assert_closed_with_at_most_an_alert(tls, &[0xff; 3000], false);
    // A ClientHello cut short, then an end.
    assert_closed_with_at_most_an_alert(tls, &HALF_HELLO, true);
    let mut client = TlsClient::connect(tls, client_config(&ca(&server), None)).expect("handshake");
    client.send(&["login", "alice", "secret"]);
    client.expect(&["login_valid"]);
}

/// Half a ClientHello: a record header promising 512 bytes, then the first 6 of them (the
/// start of the handshake message).
const HALF_HELLO: [u8; 11] = [
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

/// `count` connections to the TLS port that have each sent [`HALF_HELLO`] and stay open.
fn half_hellos(tls: SocketAddr, count: usize) -> Vec<TestClient> {
    (0..count)
        .map(|_| {
            let mut client = TestClient::connect(tls);
            client.send_raw(&HALF_HELLO);
            client
        })
        .collect()
}

/// Sends `bytes` to the TLS port (then ends its input if `end`): the server closes the
/// connection within 5 s, having sent nothing but a TLS alert (never a protocol reply).
fn assert_closed_with_at_most_an_alert(tls: SocketAddr, bytes: &[u8], end: bool) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(tls).expect("connect");
    stream.write_all(bytes).expect("send");
    if end {
        stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shut down");
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(err) => panic!("not closed within 5 s: {err}"),
    }
    assert!(got.is_empty() || got[0] == 0x15, "not an alert: {got:?}");
    assert!(
        !got.contains(&crate::common::RS),
        "a protocol reply: {got:?}"
    );
}

#[test]
fn a_handshake_not_done_in_ten_seconds_is_dropped_and_counted_meanwhile() {
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    let (server, tls, admin) = setup
        .with(|config| config.server("max_connections", 1))
        .start_with_metrics();
    // The server's 10 s start when it accepts the connection: no sooner than this.
    let connected = std::time::Instant::now();
    let mut stalled = TestClient::connect(tls);
    stalled.send_raw(&[0x16, 0x03, 0x01, 0x02, 0x00]);
    // The TLS listener accepts on its own loop (the handshake threads'): wait until it has
    // taken the handshake before probing, or a probe on the plaintext listener could take
    // the one slot first.
    let pending = crate::common::wait_until(Duration::from_secs(5), || {
        metric(admin, "tether_tls_handshakes_pending") == 1.0
    });
    assert!(pending, "the half handshake is not pending");
    // The pending handshake holds the one connection slot.
    let mut probe = server.client();
    assert!(
        matches!(
            probe.try_recv(Duration::from_secs(5)),
            Err(RecvError::Closed(_))
        ),
        "a connection past max_connections was not refused while the handshake held its slot"
    );
    // Untouched until 10 s after the connection was made (the server's clock started
    // later), however long the steps above took — less 250 ms, as a read time-out can end
    // a little late and see the close just after its deadline; then dropped. The upper
    // bound leaves a loaded machine 5 s; a handshake never timed out stays open for good.
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    let quiet_until = connected + HANDSHAKE_TIMEOUT - Duration::from_millis(250);
    stalled.expect_nothing_for(quiet_until.saturating_duration_since(std::time::Instant::now()));
    stalled.expect_closed_within(Duration::from_secs(5));
    server.wait_for_log(
        "TLS handshake failed: not done within 10s",
        Duration::from_secs(5),
    );
    // Its slot comes back with it. A connection refused is closed at once; one let in is
    // answered, on a loaded machine perhaps seconds later (given up on too soon, it would
    // hold the one slot until the server saw it go).
    let served = crate::common::wait_until(Duration::from_secs(30), || {
        let mut plain = server.client();
        plain.send(&["prolongate"]);
        plain.try_recv(crate::common::RECV_TIMEOUT).is_ok()
    });
    assert!(served, "the dropped handshake's slot did not come back");
}

/// Runs the server on `config` in `dir` expecting exit 2 with `words` in its error.
fn assert_refused_to_start(dir: &Path, config: &TestConfig, words: &[&str]) {
    let path = dir.join("server.toml");
    std::fs::write(&path, config.to_toml()).expect("write config");
    let ran = run_to_exit(tether_command(&path), Duration::from_secs(10));
    assert_eq!(ran.status.code(), Some(2), "{}", ran.stderr);
    for word in words {
        assert!(ran.stderr.contains(word), "{word:?} not in {}", ran.stderr);
    }
}

#[test]
fn bad_certificate_files_stop_the_start_naming_the_file() {
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    let d = setup.dir();
    make_signed(d, "test", "other");
    let set = |key: &str, file: &str| {
        setup
            .config
            .clone()
            .server("tls", tls_table(&[(key, file)]))
    };
    assert_refused_to_start(d, &set("cert_file", "missing.pem"), &["missing.pem"]);
    assert_refused_to_start(
        d,
        &set("key_file", "other.key"),
        &["other.key", "does not match"],
    );
    std::fs::write(d.join("empty.pem"), "not a certificate\n").expect("write");
    assert_refused_to_start(
        d,
        &set("cert_file", "empty.pem"),
        &["empty.pem", "no certificate"],
    );
    assert_refused_to_start(
        d,
        &set("key_file", "empty.pem"),
        &["empty.pem", "private key"],
    );
}

#[test]
fn sighup_reloads_the_pair_for_new_handshakes_and_keeps_open_connections() {
    let Some((server, tls)) = tls_server() else {
        return;
    };
    let d = server.dir();
    let trust = client_config(&ca(&server), None);
    let mut open = TlsClient::connect(tls, trust.clone()).expect("handshake");
    open.send(&["login", "alice", "secret"]);
    open.expect(&["login_valid"]);
    let before = open.server_certificate();

    make_signed(d, "test", "server");
    server.signal(nix::sys::signal::Signal::SIGHUP);
    server.wait_for_log("TLS certificate reloaded", Duration::from_secs(5));
    let renewed = TlsClient::connect(tls, trust.clone()).expect("handshake after reload");
    assert_ne!(
        renewed.server_certificate(),
        before,
        "the new pair serves new handshakes"
    );
    open.send(&["prolongate"]);
    open.expect(&["prolongate_ack"]);

    // A key that does not match: reported, and the pair in force stays.
    make_signed(d, "test", "spare");
    std::fs::copy(d.join("spare.key"), d.join("server.key")).expect("copy key");
    server.signal(nix::sys::signal::Signal::SIGHUP);
    server.wait_for_log("TLS certificate not reloaded", Duration::from_secs(5));
    let kept = TlsClient::connect(tls, trust).expect("handshake with the kept pair");
    assert_eq!(kept.server_certificate(), renewed.server_certificate());
}

/// Publishes `text` to alice through the admin API at `admin`.
fn publish(admin: SocketAddr, text: &str) {
    let body = format!(r#"{{"user":"alice","text":"{text}"}}"#);
    let response = ureq::post(&format!("http://{admin}/v1/events"))
        .set("Content-Type", "application/json")
        .send_string(&body)
        .expect("publish");
    assert_eq!(response.status(), 202);
}

/// Asserts that each client's next message is the event `text`.
fn expect_event(clients: &mut [TlsClient], text: &str) {
    for client in clients {
        let got = client.try_recv().expect("an event over TLS");
        assert_eq!(
            (got[0].as_str(), got.last().map(String::as_str)),
            ("event", Some(text))
        );
    }
}

#[test]
fn a_changed_pair_is_picked_up_while_100_tls_clients_keep_getting_events() {
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    let (server, tls, admin) = setup.start_with_metrics();
    let trust = client_config(&ca(&server), None);
    let mut clients: Vec<TlsClient> = (0..100)
        .map(|_| {
            let mut client = TlsClient::connect(tls, trust.clone()).expect("handshake");
            client.send(&["login", "alice", "secret"]);
            client.expect(&["login_valid"]);
            client
        })
        .collect();
    let before = clients[0].server_certificate();
    publish(admin, "before");
    expect_event(&mut clients, "before");

    // A new pair put in place as deployment tools do: written beside, renamed over.
    let d = server.dir();
    make_signed(d, "test", "next");
    std::fs::rename(d.join("next.key"), d.join("server.key")).expect("rename key");
    std::fs::rename(d.join("next.pem"), d.join("server.pem")).expect("rename certificate");
    let renewed = crate::common::wait_until(Duration::from_secs(10), || {
        let client = TlsClient::connect(tls, trust.clone()).expect("handshake");
        client.server_certificate() != before
    });
    assert!(renewed, "new handshakes still get the old certificate");
    server.wait_for_log("(files changed)", Duration::from_secs(10));
    publish(admin, "after");
    expect_event(&mut clients, "after");
}

/// `config` with the admin API on a free loopback port, over HTTPS with the test's
/// certificate and `key_file`.
fn with_admin_tls(config: TestConfig, key_file: &str) -> TestConfig {
    let mut admin_tls = toml::Table::new();
    admin_tls.insert("cert_file".into(), "server.pem".into());
    admin_tls.insert("key_file".into(), key_file.into());
    config
        .set("admin", "listen", "127.0.0.1:0")
        .set("admin", "tls", admin_tls)
}

#[test]
fn admin_tls_makes_the_admin_api_https_only() {
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    let (server, _) = setup
        .with(|config| with_admin_tls(config, "server.key"))
        .start();
    server.wait_for_log("(admin API), HTTPS", Duration::from_secs(5));
    let admin = crate::common::admin_addr(&server.stderr_text());
    let mut https =
        TlsClient::connect(admin, client_config(&ca(&server), None)).expect("handshake");
    let answer =
        https.http("GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Plain HTTP gets no HTTP answer.
    let plain = ureq::get(&format!("http://{admin}/healthz"))
        .timeout(Duration::from_secs(5))
        .call();
    assert!(matches!(plain, Err(ureq::Error::Transport(_))), "{plain:?}");
    assert!(!server.stderr_text().contains("without TLS"));
}

#[test]
fn the_admin_api_certificate_is_reloaded_when_its_files_change_and_on_sighup() {
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    // Its own pair, so that only the admin API's reload can change what it serves.
    make_signed(setup.dir(), "test", "admin");
    let mut admin_tls = toml::Table::new();
    admin_tls.insert("cert_file".into(), "admin.pem".into());
    admin_tls.insert("key_file".into(), "admin.key".into());
    let setup = setup.with(|config| {
        config
            .set("admin", "listen", "127.0.0.1:0")
            .set("admin", "tls", admin_tls)
    });
    let (server, _) = setup.start();
    server.wait_for_log("(admin API), HTTPS", Duration::from_secs(5));
    let admin = crate::common::admin_addr(&server.stderr_text());
    let trust = client_config(&ca(&server), None);
    let served = || {
        TlsClient::connect(admin, trust.clone())
            .expect("admin handshake")
            .server_certificate()
    };
    let before = served();
    // Replaced as deployment tools do: written beside, renamed over.
    let d = server.dir();
    make_signed(d, "test", "next");
    std::fs::rename(d.join("next.key"), d.join("admin.key")).expect("rename key");
    std::fs::rename(d.join("next.pem"), d.join("admin.pem")).expect("rename certificate");
    let renewed = crate::common::wait_until(Duration::from_secs(10), || served() != before);
    assert!(
        renewed,
        "new admin handshakes still get the old certificate"
    );
    let reloaded = |why: &str| {
        server.stderr_text().lines().any(|line| {
            line.contains("admin API TLS certificate reloaded from") && line.ends_with(why)
        })
    };
    assert!(reloaded("(files changed)"), "{}", server.stderr_text());
    let after_change = served();
    // SIGHUP reads the files again too.
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let on_signal = crate::common::wait_until(Duration::from_secs(5), || reloaded("(SIGHUP)"));
    assert!(on_signal, "{}", server.stderr_text());
    // A bad pair keeps the one in force.
    std::fs::write(d.join("admin.key"), "not a key").expect("write key");
    server.signal(nix::sys::signal::Signal::SIGHUP);
    server.wait_for_log(
        "admin API TLS certificate not reloaded",
        Duration::from_secs(5),
    );
    assert_eq!(served(), after_change);
}

#[test]
fn a_non_loopback_admin_api_without_tls_is_warned_about() {
    let config = TestConfig::new()
        .set("admin", "listen", "0.0.0.0:0")
        .set("admin", "token", "s3cret");
    let server = TestServer::start(&config, &[]);
    server.wait_for_log("(admin API), HTTP", Duration::from_secs(5));
    assert!(server
        .stderr_text()
        .contains("without TLS: its token and requests cross the network in clear"));
}

#[test]
fn bad_admin_tls_files_stop_the_start_naming_the_file() {
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    let config = with_admin_tls(setup.config.clone(), "absent.key");
    assert_refused_to_start(setup.dir(), &config, &["absent.key"]);
}

#[test]
fn a_client_closing_without_close_notify_has_simply_closed() {
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    let (server, tls) = setup
        .with(|config| config.set("log", "level", "debug"))
        .start();
    let mut client = TlsClient::connect(tls, client_config(&ca(&server), None)).expect("handshake");
    client.send(&["login", "alice", "secret"]);
    client.expect(&["login_valid"]);
    // rustls sends no close_notify on drop: the TCP connection just ends.
    drop(client);
    server.wait_for_log("peer closed", Duration::from_secs(5));
    assert!(
        !server.stderr_text().contains("io_error"),
        "{}",
        server.stderr_text()
    );
}

/// The value of the series `series` (labels included) on the admin API `admin`'s
/// `/metrics`; 0 when it is not there.
fn metric(admin: SocketAddr, series: &str) -> f64 {
    let text = ureq::get(&format!("http://{admin}/metrics"))
        .call()
        .expect("GET /metrics")
        .into_string()
        .expect("metrics text");
    crate::common::metric_in(&text, series).unwrap_or(0.0)
}

#[test]
fn a_thousand_half_handshakes_are_bounded_by_max_connections_then_dropped() {
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    // A plaintext client and a TLS client, and 100 pending handshakes.
    const SLOTS: usize = 102;
    const OPEN: usize = 2;
    const STALLED: usize = 1000;
    let (server, tls, admin) = setup
        .with(|config| config.server("max_connections", SLOTS as i64))
        .start_with_metrics();
    let mut plain = server.client();
    plain.send(&["login", "alice", "secret"]);
    plain.expect(&["login_valid"]);
    let mut over_tls =
        TlsClient::connect(tls, client_config(&ca(&server), None)).expect("handshake");
    over_tls.send(&["login", "alice", "secret"]);
    over_tls.expect(&["login_valid"]);
    let mut stalled = half_hellos(tls, STALLED);
    // Each pending handshake holds a slot from its accept on: the ones past the cap are
    // refused at accept, whatever the listener.
    let pending = r#"tether_tls_handshakes_pending"#;
    let refused = r#"tether_connections_refused_total"#;
    let bounded = crate::common::wait_until(Duration::from_secs(8), || {
        metric(admin, pending) == (SLOTS - OPEN) as f64
            && metric(admin, refused) == (STALLED - (SLOTS - OPEN)) as f64
    });
    assert!(
        bounded,
        "not {} pending and {} refused: {} and {}",
        SLOTS - OPEN,
        STALLED - (SLOTS - OPEN),
        metric(admin, pending),
        metric(admin, refused)
    );
    let mut probe = server.client();
    assert!(
        matches!(
            probe.try_recv(Duration::from_secs(5)),
            Err(RecvError::Closed(_))
        ),
        "a connection past max_connections was not refused while the handshakes held their slots"
    );
    // The server keeps serving while the handshakes are pending: commands and events, over
    // TCP and over TLS.
    plain.send(&["prolongate"]);
    plain.expect(&["prolongate_ack"]);
    over_tls.send(&["prolongate"]);
    over_tls.expect(&["prolongate_ack"]);
    publish(admin, "meanwhile");
    expect_event(std::slice::from_mut(&mut over_tls), "meanwhile");
    let got = plain.recv();
    assert_eq!(
        (got[0].as_str(), got[got.len() - 1].as_str()),
        ("event", "meanwhile")
    );
    for client in &mut stalled {
        client.expect_closed_within(Duration::from_secs(15));
    }
    // Their slots are free again.
    let freed = crate::common::wait_until(Duration::from_secs(5), || {
        metric(admin, pending) == 0.0
            && metric(
                admin,
                r#"tether_tls_handshake_failures_total{cause="timeout"}"#,
            ) == (SLOTS - OPEN) as f64
    });
    assert!(freed, "the dropped handshakes were not counted out");
    let mut again = server.client();
    again.send(&["prolongate"]);
    again.expect(&["prolongate_ack"]);
}

#[test]
fn handshakes_run_on_low_priority_threads_and_serve_new_clients_beside_a_thousand_stalled() {
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    const STALLED: usize = 1000;
    let (server, tls, admin) = setup
        .with(|config| config.server("workers", 3))
        .start_with_metrics();
    let line = "TLS handshakes: 3 thread(s) (nice 10)";
    assert!(
        server.stderr_text().contains(line),
        "no {line:?} in the log"
    );
    // A new thread names itself once it runs, then lowers its priority: give both a moment.
    let started = crate::common::wait_until(Duration::from_secs(5), || {
        handshake_thread_nice_values(server.pid()) == [10, 10, 10]
    });
    assert!(
        started,
        "not 3 handshake threads at nice 10: {:?}",
        handshake_thread_nice_values(server.pid())
    );
    let _stalled = half_hellos(tls, STALLED);
    let pending = crate::common::wait_until(Duration::from_secs(8), || {
        metric(admin, "tether_tls_handshakes_pending") == STALLED as f64
    });
    assert!(pending, "not {STALLED} handshakes pending");
    let trust = client_config(&ca(&server), None);
    // Handshakes run there: the CPU that new handshakes take goes to the nice-10 threads,
    // not to the event loops. Handshakes until the process has used 0.3 s of CPU, enough to
    // tell where it went (a debug build's handshake takes a few ms).
    let pid = server.pid().as_raw();
    let before: std::collections::HashMap<u32, u64> = crate::common::hardening::threads(pid)
        .into_iter()
        .map(|thread| (thread.tid, thread.cpu_ticks))
        .collect();
    let busy_since = std::time::Instant::now();
    let mut handshakes = 0;
    while crate::common::hardening::cpu_ticks(pid) < before.values().sum::<u64>() + 30 {
        assert!(
            busy_since.elapsed() < Duration::from_secs(60),
            "{handshakes} handshakes took under 0.3 s of CPU in 60 s"
        );
        drop(TlsClient::connect(tls, trust.clone()).expect("handshake"));
        handshakes += 1;
    }
    let gained: Vec<(String, i64, u64)> = crate::common::hardening::threads(pid)
        .into_iter()
        .map(|thread| {
            let earlier = before.get(&thread.tid).copied().unwrap_or(0);
            (thread.name, thread.nice, thread.cpu_ticks - earlier)
        })
        .filter(|(_, _, ticks)| *ticks > 0)
        .collect();
    let total: u64 = gained.iter().map(|(_, _, ticks)| ticks).sum();
    let on_handshake_threads: u64 = gained
        .iter()
        .filter(|(name, nice, _)| name == "tether-tls" && *nice == 10)
        .map(|(_, _, ticks)| ticks)
        .sum();
    assert!(
        on_handshake_threads * 10 >= total * 7,
        "{on_handshake_threads} of {total} ticks of {handshakes} handshakes on the handshake \
         threads; (name, nice, ticks): {gained:?}"
    );
    // The handshake threads still complete new handshakes, and the workers serve them.
    let mut clients: Vec<TlsClient> = (0..10)
        .map(|_| {
            let mut client = TlsClient::connect(tls, trust.clone()).expect("handshake");
            client.send(&["login", "alice", "secret"]);
            client.expect(&["login_valid"]);
            client
        })
        .collect();
    let mut plain = server.client();
    plain.login("alice", "secret");
    publish(admin, "beside");
    expect_event(&mut clients, "beside");
    let got = plain.recv();
    assert_eq!(
        (got[0].as_str(), got[got.len() - 1].as_str()),
        ("event", "beside")
    );
}

#[test]
fn shutdown_drops_pending_handshakes_without_waiting_out_the_grace() {
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    const GRACE: Duration = Duration::from_secs(8);
    let (mut server, tls, admin) = setup
        .with(|config| config.server("shutdown_grace", "8s"))
        .start_with_metrics();
    let mut open = TlsClient::connect(tls, client_config(&ca(&server), None)).expect("handshake");
    open.send(&["login", "alice", "secret"]);
    open.expect(&["login_valid"]);
    let mut stalled = TestClient::connect(tls);
    stalled.send_raw(&[0x16, 0x03, 0x01, 0x02, 0x00]);
    let pending = crate::common::wait_until(Duration::from_secs(5), || {
        metric(admin, "tether_tls_handshakes_pending") == 1.0
    });
    assert!(pending, "the half handshake is not pending");
    let signalled = std::time::Instant::now();
    server.terminate();
    open.expect(&["shutdown"]);
    stalled.expect_closed_within(Duration::from_secs(5));
    let status = server.wait_exit(GRACE + Duration::from_secs(3));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    // A pending handshake holds a connection slot, which shutdown waits for: dropped at
    // once, it does not keep the server for the whole grace.
    assert!(
        signalled.elapsed() < GRACE / 2,
        "exited {:?} after SIGTERM, grace {GRACE:?}",
        signalled.elapsed()
    );
}

/// The nice values of process `pid`'s TLS handshake threads (named `tether-tls`).
fn handshake_thread_nice_values(pid: nix::unistd::Pid) -> Vec<i64> {
    crate::common::hardening::threads(pid.as_raw())
        .into_iter()
        .filter(|thread| thread.name == "tether-tls")
        .map(|thread| thread.nice)
        .collect()
}

/// Immediate failure lines and the failures summed up in summary lines, in `log`.
#[test]
fn failed_handshakes_are_counted_by_cause_and_logged_once_per_interval() {
    const FAILED: usize = 30;
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    let (server, tls, admin) = setup.start_with_metrics();
    let plaintext = crate::common::encode(&["login", "alice", "secret"]);
    for _ in 0..FAILED {
        assert_closed_with_at_most_an_alert(tls, &plaintext, false);
    }
    let counted = crate::common::wait_until(Duration::from_secs(5), || {
        metric(
            admin,
            r#"tether_tls_handshake_failures_total{cause="protocol"}"#,
        ) == FAILED as f64
    });
    assert!(counted, "the failed handshakes were not counted by cause");
    crate::common::assert_failures_logged_once_then_summed(
        &server,
        FAILED as u64,
        &crate::common::FailureLogLines {
            immediate: "TLS handshake failed",
            summed: " more TLS handshake(s) failed",
            summary: "TLS handshake(s) failed in the last 10s (",
        },
    );
}

#[test]
fn tether_client_speaks_tls_with_a_ca_file() {
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    let (server, tls) = setup.tls_only().start();
    let run = |ca: &Path| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tether"));
        command
            .arg("--config")
            .arg(server.config_path())
            .args(["client", "--tls", "--ca-file"])
            .arg(ca)
            .args(["--addr", &format!("localhost:{}", tls.port())])
            .args(["--login", "alice", "--password-stdin", "-c", "prolongate"])
            .env_remove("RUST_LOG");
        crate::common::run_with_input(command, b"secret\n", Duration::from_secs(10))
    };
    let ran = run(&ca(&server));
    assert!(ran.status.success(), "{ran:?}");
    assert_eq!(
        ran.stdout.lines().collect::<Vec<_>>(),
        ["login_valid", "prolongate_ack"]
    );
    // A certificate from another CA is refused: exit 3, saying why.
    make_ca(server.dir(), "other");
    let ran = run(&server.dir().join("other-ca.pem"));
    assert_eq!(ran.status.code(), Some(3), "{ran:?}");
    assert!(ran.stderr.contains("TLS handshake"), "{ran:?}");
}

#[test]
fn an_expired_certificate_is_served_with_a_warning() {
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    crate::common::tls::openssl(
        setup.dir(),
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "test-ca.pem",
            "-CAkey",
            "test-ca.key",
            "-days",
            "-1",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    let (server, tls) = setup.start();
    assert!(
        server.stderr_text().contains("the certificate expired"),
        "{}",
        server.stderr_text()
    );
    // The client got the expired certificate: it trusts the CA and refuses the certificate
    // for its dates alone (not for a reset, a wrong name or an unknown issuer).
    let Err(refused) = TlsClient::connect(tls, client_config(&ca(&server), None)) else {
        panic!("a client accepted an expired certificate");
    };
    let reason = refused
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    assert!(
        matches!(
            reason,
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
            ))
        ),
        "the client did not refuse an expired certificate but: {refused:?}"
    );
}

#[test]
fn only_a_finished_handshake_becomes_a_connection() {
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    const FAILED: usize = 20;
    const STALLED: usize = 20;
    let (server, tls, admin) = setup.start_with_metrics();
    let trust = client_config(&ca(&server), None);
    let mut open = TlsClient::connect(tls, trust.clone()).expect("handshake");
    open.send(&["login", "alice", "secret"]);
    open.expect(&["login_valid"]);
    let _stalled = half_hellos(tls, STALLED);
    let plaintext = crate::common::encode(&["login", "alice", "secret"]);
    for _ in 0..FAILED {
        assert_closed_with_at_most_an_alert(tls, &plaintext, false);
    }
    let settled = crate::common::wait_until(Duration::from_secs(5), || {
        metric(admin, "tether_tls_handshakes_pending") == STALLED as f64
            && metric(
                admin,
                r#"tether_tls_handshake_failures_total{cause="protocol"}"#,
            ) == FAILED as f64
    });
    assert!(
        settled,
        "the stalled and failed handshakes were not counted"
    );
    // Neither the failed handshakes nor the pending ones are connections: only the one
    // client whose handshake finished is.
    assert_eq!(metric(admin, "tether_connections_open"), 1.0);
    let mut second = TlsClient::connect(tls, trust).expect("handshake");
    second.send(&["prolongate"]);
    second.expect(&["prolongate_ack"]);
    assert_eq!(metric(admin, "tether_connections_open"), 2.0);
}

/// One thread of a child process held in a ptrace stop (the process's other threads run
/// on) until dropped.
struct StoppedThread(nix::unistd::Pid);

impl StoppedThread {
    /// Stops thread `tid` of a child of this process; `None`, with a skip line (a failure
    /// under `CI=true`), where ptrace is not allowed.
    fn stop(tid: nix::unistd::Pid) -> Option<Self> {
        use nix::sys::ptrace;
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        if let Err(err) = ptrace::seize(tid, ptrace::Options::empty()) {
            crate::common::skip_without(
                &format!("ptrace is not allowed here ({err})"),
                "run as the server's parent with ptrace permitted",
            );
            return None;
        }
        ptrace::interrupt(tid).expect("interrupt the thread");
        let status = waitpid(tid, Some(WaitPidFlag::__WALL)).expect("wait for the stop");
        assert!(
            matches!(
                status,
                WaitStatus::PtraceEvent(..) | WaitStatus::Stopped(..)
            ),
            "not stopped: {status:?}"
        );
        Some(Self(tid))
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        let _ = nix::sys::ptrace::detach(self.0, None);
    }
}

#[test]
fn tls_connections_are_accepted_and_served_while_the_main_thread_is_stopped() {
    let Some((server, tls)) = tls_server() else {
        return;
    };
    let trust = client_config(&ca(&server), None);
    let mut plain = server.client();
    plain.send(&["prolongate"]);
    plain.expect(&["prolongate_ack"]);
    // The main thread runs the System's event loop, where the plaintext listener is
    // accepted; the TLS listener is accepted on the handshake threads, and an established
    // connection goes straight to its worker.
    let Some(stopped) = StoppedThread::stop(server.pid()) else {
        return;
    };
    let mut late = server.client();
    late.send(&["prolongate"]);
    assert!(
        matches!(
            late.try_recv(Duration::from_secs(1)),
            Err(RecvError::Timeout(_))
        ),
        "a plaintext connection was accepted while the main thread was stopped"
    );
    let mut over_tls = TlsClient::connect(tls, trust).expect("handshake");
    over_tls.send(&["login", "alice", "secret"]);
    over_tls.expect(&["login_valid"]);
    plain.send(&["prolongate"]);
    plain.expect(&["prolongate_ack"]);
    drop(stopped);
    late.expect(&["prolongate_ack"]);
}

/// `tether client --tls --ca-file CA --addr ADDR --login alice -c prolongate` against
/// `server`.
fn tls_client_run(server: &TestServer, ca: &Path, addr: &str) -> crate::common::Ran {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tether"));
    command
        .arg("--config")
        .arg(server.config_path())
        .args(["client", "--tls", "--ca-file"])
        .arg(ca)
        .args(["--addr", addr])
        .args(["--login", "alice", "--password-stdin", "-c", "prolongate"])
        .env_remove("RUST_LOG");
    crate::common::run_with_input(command, b"secret\n", Duration::from_secs(10))
}

/// The README's self-signed pair, word for word but for the names: `NAME.pem`/`NAME.key`
/// in `dir`, valid for `subject_alt_names`.
fn readme_pair(dir: &Path, name: &str, subject_alt_names: &str) {
    crate::common::tls::openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "365",
            "-subj",
            "/CN=localhost",
            "-addext",
            &format!("subjectAltName={subject_alt_names}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

#[test]
fn tether_client_trusts_the_readmes_self_signed_certificate_given_as_its_ca_file() {
    // Issue 23: OpenSSL 3's `req -x509` marks the certificate CA:TRUE, and rustls refused
    // it as the server's own: "invalid peer certificate: Other(OtherError(
    // CaUsedAsEndEntity))". The help says a self-signed server certificate will do.
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    readme_pair(setup.dir(), "server", "DNS:localhost,IP:127.0.0.1");
    readme_pair(setup.dir(), "other", "DNS:localhost,IP:127.0.0.1");
    let (server, tls) = setup.tls_only().start();
    let pinned = server.dir().join("server.pem");
    for addr in [format!("localhost:{}", tls.port()), tls.to_string()] {
        let ran = tls_client_run(&server, &pinned, &addr);
        assert!(ran.status.success(), "{addr}: {ran:?}");
        assert_eq!(
            ran.stdout.lines().collect::<Vec<_>>(),
            ["login_valid", "prolongate_ack"]
        );
    }
    // The exact certificate is trusted, not another one like it nor what a CA signed;
    // each refusal is a sentence, not rustls's debug text.
    let localhost = format!("localhost:{}", tls.port());
    for (ca, says) in [
        (
            server.dir().join("other.pem"),
            "not the certificate of --ca-file",
        ),
        (ca(&server), "not signed by"),
    ] {
        let ran = tls_client_run(&server, &ca, &localhost);
        assert_eq!(ran.status.code(), Some(3), "{ran:?}");
        assert!(ran.stderr.contains(says), "{}", ran.stderr);
        for raw in ["Other(", "OtherError", "CaUsedAsEndEntity", "UnknownIssuer"] {
            assert!(!ran.stderr.contains(raw), "{}", ran.stderr);
        }
    }
    drop(server);

    // The pinned certificate, for another name: refused, saying so.
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    readme_pair(setup.dir(), "server", "DNS:elsewhere.example");
    let (server, tls) = setup.tls_only().start();
    let pinned = server.dir().join("server.pem");
    let ran = tls_client_run(&server, &pinned, &format!("localhost:{}", tls.port()));
    assert_eq!(ran.status.code(), Some(3), "{ran:?}");
    assert!(
        ran.stderr.contains("not valid for localhost"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_client_ca_rotation_closes_the_sessions_the_new_ca_does_not_sign() {
    // Issue 23: after client_ca_file changed, sessions of the old CA stayed open forever.
    let Some(setup) = TlsSetup::new() else {
        return;
    };
    let (server, tls) = setup.tls_only().client_ca().start();
    let d = server.dir();
    make_signed(d, "test", "client");
    make_ca(d, "new");
    make_signed(d, "new", "renewed");
    // What the clients trust the server's certificate with (the CA file is rotated).
    let server_ca = d.join("server-ca.pem");
    std::fs::copy(ca(&server), &server_ca).expect("copy");
    let old_client = client_config(
        &server_ca,
        Some((&d.join("client.pem"), &d.join("client.key"))),
    );
    let mut old = TlsClient::connect(tls, old_client).expect("handshake, old CA");
    old.send(&["login", "alice", "secret"]);
    old.expect(&["login_valid"]);

    // The client CA file now holds only the new CA (written whole, then renamed in).
    std::fs::copy(d.join("new-ca.pem"), d.join("rotated.pem")).expect("copy");
    std::fs::rename(d.join("rotated.pem"), d.join("test-ca.pem")).expect("rename");
    server.signal(nix::sys::signal::Signal::SIGHUP);
    server.wait_for_log("TLS certificate reloaded", Duration::from_secs(5));
    // io_error, then the end of the stream.
    assert_eq!(old.try_recv().expect("a reply"), ["io_error"]);
    assert!(old.try_recv().is_err(), "the connection stays open");
    server.wait_for_log(
        "client certificate no longer accepted",
        Duration::from_secs(5),
    );

    // A certificate of the new CA gets in.
    let renewed = client_config(
        &server_ca,
        Some((&d.join("renewed.pem"), &d.join("renewed.key"))),
    );
    let mut fresh = TlsClient::connect(tls, renewed).expect("handshake, new CA");
    fresh.send(&["login", "alice", "secret"]);
    fresh.expect(&["login_valid"]);
}
