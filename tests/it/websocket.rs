//! The protocol over WebSocket (SPEC §11) against the real binary: a real WebSocket client
//! (tungstenite, blocking) for the protocol, the handshake's answers, close codes, `wss`,
//! `X-Forwarded-For` and the limits shared with TCP; raw bytes on a TCP socket for the
//! handshakes and frames a careless or hostile client sends.

use crate::common::tls::{ca_and_server_pair, client_config};
use crate::common::{
    admin_addr, admin_call, cheap_hash, metric_in, users_toml, wait_until, TestClient, TestConfig,
    TestServer, RS, US,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// How long a test waits for something that should come at once.
const WAIT: Duration = Duration::from_secs(5);

/// The `[server.websocket]` table of the tests: a listener on a free loopback port with
/// `extra` keys over it.
fn ws_table(extra: &[(&str, toml::Value)]) -> toml::Table {
    let mut table = toml::Table::new();
    table.insert("listen".into(), "127.0.0.1:0".into());
    for (key, value) in extra {
        table.insert((*key).into(), value.clone());
    }
    table
}

/// The address of the `listening on ADDR (clients, WebSocket …)` line of `log`.
fn ws_addr(log: &str) -> SocketAddr {
    log.lines()
        .find(|line| line.contains("(clients, WebSocket"))
        .and_then(|line| line.split("listening on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|address| address.parse().ok())
        .unwrap_or_else(|| panic!("no WebSocket listening line in:\n{log}"))
}

/// A server running `config` (plus `files` written beside it) with users alice and bob
/// (password `secret`); answers it and its WebSocket address.
fn start_in(dir: tempfile::TempDir, config: &TestConfig) -> (TestServer, SocketAddr) {
    std::fs::write(dir.path().join("server.toml"), config.to_toml()).expect("write config");
    let hash = cheap_hash("secret");
    let users = users_toml(&[("alice", &hash), ("bob", &hash)]);
    std::fs::write(dir.path().join("users.toml"), users).expect("write users");
    let cwd = dir.path().to_owned();
    let server = TestServer::start_in(dir, &cwd);
    server.wait_for_log("(clients, WebSocket", WAIT);
    let addr = ws_addr(&server.stderr_text());
    (server, addr)
}

/// A server with a plaintext and a WebSocket listener, `extra` keys in `[server.websocket]`.
fn start(config: TestConfig, extra: &[(&str, toml::Value)]) -> (TestServer, SocketAddr) {
    let config = config.server("websocket", ws_table(extra));
    start_in(tempfile::tempdir().expect("temp dir"), &config)
}

/// One message of the protocol with its terminator.
fn message(parts: &[&str]) -> String {
    let mut text = parts.join(&char::from(US).to_string());
    text.push(char::from(RS));
    text
}

/// A blocking WebSocket client of the protocol.
struct WsClient<S: Read + Write> {
    socket: WebSocket<S>,
}

impl WsClient<TcpStream> {
    /// Connects to `ws://addr/` and upgrades.
    fn connect(addr: SocketAddr) -> Self {
        Self::connect_with(addr, "/", &[])
    }

    /// Connects to `ws://addr{path}` with `headers` added to the upgrade request.
    fn connect_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Self {
        let tcp = TcpStream::connect(addr).expect("connect");
        Self::over(tcp, addr, path, headers).expect("upgrade")
    }
}

impl<S: Read + Write> WsClient<S> {
    /// Upgrades `stream` (to `addr`) on `path` with `headers`; the error is the handshake's.
    fn over(
        stream: S,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, tungstenite::Error> {
        let mut request = format!("ws://{addr}{path}")
            .into_client_request()
            .expect("request");
        for (name, value) in headers {
            request.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        let (socket, _) =
            tungstenite::client::client(request, stream).map_err(|err| match err {
                tungstenite::HandshakeError::Failure(err) => err,
                tungstenite::HandshakeError::Interrupted(_) => {
                    tungstenite::Error::Io(std::io::ErrorKind::WouldBlock.into())
                }
            })?;
        Ok(Self { socket })
    }

    /// Sends one message of `parts` in a text frame.
    fn send(&mut self, parts: &[&str]) {
        self.socket
            .send(Message::text(message(parts)))
            .expect("send");
    }

    /// The next frame but pings and pongs.
    fn next(&mut self) -> Message {
        loop {
            match self.socket.read().expect("read a frame") {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return other,
            }
        }
    }

    /// The next frame, which must be a text frame of exactly one message; its parts.
    fn recv(&mut self) -> Vec<String> {
        match self.next() {
            Message::Text(text) => {
                let text = text.as_str();
                assert!(
                    text.ends_with(char::from(RS)) && text.matches(char::from(RS)).count() == 1,
                    "not one whole message: {text:?}"
                );
                text[..text.len() - 1]
                    .split(char::from(US))
                    .map(str::to_owned)
                    .collect()
            }
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next message must be `parts`.
    fn expect(&mut self, parts: &[&str]) {
        assert_eq!(self.recv(), parts);
    }

    /// The next frame must be a close frame with `code`.
    fn expect_close(&mut self, code: u16) {
        match self.next() {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), code),
            other => panic!("expected close {code}, got {other:?}"),
        }
    }

    /// Logs in as `name` with password `secret`.
    fn login(&mut self, name: &str) {
        self.send(&["login", name, "secret"]);
        self.expect(&["login_valid"]);
    }
}

/// Sets the read timeout of a client's socket.
fn timeout(client: &WsClient<TcpStream>, wait: Duration) {
    client
        .socket
        .get_ref()
        .set_read_timeout(Some(wait))
        .expect("read timeout");
}

/// A raw TCP connection to `addr` that sent the upgrade request `request` (no final
/// empty line: `\r\n` is added) and read the response head; answers it and the head.
fn raw_request(addr: SocketAddr, request: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream
        .write_all(format!("{request}\r\n").as_bytes())
        .expect("send the request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

/// A good upgrade request's head on `path`, with `extra` header lines (each ending `\r\n`).
fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}"
    )
}

/// A raw upgraded connection: frames are written by hand.
fn raw_upgraded(addr: SocketAddr) -> TcpStream {
    let (stream, head) = raw_request(addr, &upgrade_request("/", ""));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// A client frame: `first` (FIN and opcode), masked with a zero mask unless `unmasked`.
fn frame(first: u8, payload: &[u8], unmasked: bool) -> Vec<u8> {
    let mask_bit = if unmasked { 0 } else { 0x80 };
    let mut bytes = vec![first];
    match payload.len() {
        length @ 0..=125 => bytes.push(mask_bit | length as u8),
        length @ 126..=65535 => {
            bytes.push(mask_bit | 126);
            bytes.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            bytes.push(mask_bit | 127);
            bytes.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    if !unmasked {
        // The zero mask leaves the payload as it is.
        bytes.extend_from_slice(&[0, 0, 0, 0]);
    }
    bytes.extend_from_slice(payload);
    bytes
}

/// The close code of the server frames read from `stream` until a close frame (skipping
/// data frames); `None` when the stream ends first.
fn close_code_on(stream: &mut TcpStream) -> Option<u16> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Parse what is there.
        let mut at = 0;
        while all.len() >= at + 2 {
            let opcode = all[at] & 0x0F;
            let (length, header) = match all[at + 1] & 0x7F {
                126 if all.len() >= at + 4 => {
                    (u16::from_be_bytes([all[at + 2], all[at + 3]]) as usize, 4)
                }
                126 => break,
                127 => panic!("a server frame over 64 KiB"),
                length => (length as usize, 2),
            };
            if all.len() < at + header + length {
                break;
            }
            if opcode == 0x8 {
                let payload = &all[at + header..at + header + length];
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
            at += header + length;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(read) => all.extend_from_slice(&chunk[..read]),
        }
    }
}

#[test]
fn commands_get_one_text_frame_per_reply_and_frames_may_split_or_bundle_messages() {
    let (_server, addr) = start(TestConfig::new(), &[]);
    let mut client = WsClient::connect(addr);
    client.login("alice");
    // Two commands and half of a third in one binary frame, the rest in a text frame.
    let mut bundle = message(&["prolongate"]).into_bytes();
    bundle.extend_from_slice(message(&["logout"]).as_bytes());
    bundle.extend_from_slice(b"prolon");
    client.socket.send(Message::binary(bundle)).expect("send");
    client
        .socket
        .send(Message::text(format!("gate{}", char::from(RS))))
        .expect("send");
    client.expect(&["prolongate_ack"]);
    client.expect(&["logout_ack"]);
    client.expect(&["prolongate_ack"]);
    client.send(&["nonsense", "x"]);
    client.expect(&["unknown_command"]);
    client.send(&["disconnect"]);
    client.expect(&["disconnect_ack"]);
    client.expect_close(1000);
}

#[test]
fn events_and_invalidations_cross_transports_as_one_set_of_connections() {
    let config = TestConfig::new().set("admin", "listen", "127.0.0.1:0");
    let (server, addr) = start(config, &[]);
    server.wait_for_log("(admin API)", WAIT);
    let base = format!("http://{}", admin_addr(&server.stderr_text()));
    let mut ws = WsClient::connect(addr);
    ws.login("alice");
    let mut tcp = server.logged_in("alice", "secret");
    let (status, answer) = admin_call(
        &base,
        None,
        "POST",
        "/v1/events",
        Some(r#"{"user":"alice","text":"héllo"}"#),
    );
    assert_eq!(status, 202, "{answer}");
    assert!(answer.contains("\"connections\":2"), "{answer}");
    let event = ws.recv();
    assert_eq!((event[0].as_str(), event[2].as_str()), ("event", "héllo"));
    assert_eq!(tcp.recv()[2], "héllo");

    // A WebSocket client invalidates the TCP one, and the other way round.
    ws.send(&["invalidate"]);
    ws.expect(&["invalidate_ack"]);
    tcp.expect(&["invalidated"]);
    tcp.login("alice", "secret");
    tcp.send(&["invalidate"]);
    tcp.expect(&["invalidate_ack"]);
    ws.expect(&["invalidated"]);
}

#[test]
fn origins_paths_and_plain_requests_get_403_404_and_426_without_an_upgrade() {
    let origins = toml::Value::Array(vec!["https://App.example.com".into()]);
    let (server, addr) = start(
        TestConfig::new().set("admin", "listen", "127.0.0.1:0"),
        &[("path", "/tether".into()), ("allowed_origins", origins)],
    );
    server.wait_for_log("(admin API)", WAIT);
    let status = |request: &str| {
        let (_, head) = raw_request(addr, request);
        head.lines().next().unwrap_or_default().to_owned()
    };
    let evil = upgrade_request("/tether", "Origin: https://evil.example.com\r\n");
    assert!(
        status(&evil).starts_with("HTTP/1.1 403"),
        "{}",
        status(&evil)
    );
    let allowed = upgrade_request("/tether?v=1", "Origin: https://app.EXAMPLE.com\r\n");
    assert!(status(&allowed).starts_with("HTTP/1.1 101"));
    // A program sends no Origin: accepted.
    assert!(status(&upgrade_request("/tether", "")).starts_with("HTTP/1.1 101"));
    assert!(status(&upgrade_request("/", "")).starts_with("HTTP/1.1 404"));
    assert!(status("GET /tether HTTP/1.1\r\nHost: x\r\n").starts_with("HTTP/1.1 426"));
    assert!(status("garbage\r\n").starts_with("HTTP/1.1 400"));
    let base = format!("http://{}", admin_addr(&server.stderr_text()));
    let (_, metrics) = admin_call(&base, None, "GET", "/metrics", None);
    let failures = |cause: &str| {
        metric_in(
            &metrics,
            &format!("tether_websocket_handshake_failures_total{{cause=\"{cause}\"}}"),
        )
    };
    assert_eq!(failures("origin"), Some(1.0));
    assert_eq!(failures("not_found"), Some(1.0));
    assert_eq!(failures("not_upgrade"), Some(1.0));
}

#[test]
fn the_subprotocol_tether_v1_is_selected_when_offered() {
    let (_server, addr) = start(TestConfig::new(), &[]);
    let (_, head) = raw_request(
        addr,
        &upgrade_request("/", "Sec-WebSocket-Protocol: other, tether.v1\r\n"),
    );
    assert!(
        head.contains("\r\nSec-WebSocket-Protocol: tether.v1\r\n"),
        "{head}"
    );
    let (_, head) = raw_request(addr, &upgrade_request("/", ""));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "{head}"
    );
    let mut client = WsClient::connect_with(addr, "/", &[("Sec-WebSocket-Protocol", "tether.v1")]);
    client.login("alice");
}

#[test]
fn a_handshake_sent_a_byte_per_second_is_dropped_at_10_s() {
    let (_server, addr) = start(TestConfig::new(), &[]);
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(10)))
        .expect("timeout");
    let request = upgrade_request("/", "");
    let began = Instant::now();
    let mut closed_at = None;
    for byte in request.bytes() {
        if stream.write_all(&[byte]).is_err() {
            closed_at = Some(began.elapsed());
            break;
        }
        let mut buf = [0u8; 16];
        if let Ok(0) = stream.read(&mut buf) {
            closed_at = Some(began.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let closed_at = closed_at.expect("the dribbled handshake was never dropped");
    assert!(
        closed_at >= Duration::from_secs(9) && closed_at < Duration::from_secs(14),
        "dropped after {closed_at:?}"
    );
}

#[test]
fn timeout_and_disconnect_close_with_1000_and_shutdown_with_1001() {
    let config = TestConfig::new().server("idle_timeout", "1s");
    let (server, addr) = start(config, &[]);
    let mut idle = WsClient::connect(addr);
    idle.expect(&["timeout"]);
    idle.expect_close(1000);

    let config = TestConfig::new();
    let (server2, addr2) = start(config, &[]);
    let mut client = WsClient::connect(addr2);
    client.login("alice");
    server2.terminate();
    client.expect(&["shutdown"]);
    client.expect_close(1001);
    drop(server);
}

#[test]
fn pings_are_answered_but_do_not_keep_a_connection_open() {
    let config = TestConfig::new().server("idle_timeout", "2s");
    let (_server, addr) = start(config, &[]);
    let mut client = WsClient::connect(addr);
    timeout(&client, Duration::from_millis(300));
    let began = Instant::now();
    let mut pongs = 0;
    let timed_out = loop {
        client
            .socket
            .send(Message::Ping(b"hi".to_vec().into()))
            .expect("ping");
        match client.socket.read() {
            Ok(Message::Pong(data)) => {
                assert_eq!(&data[..], b"hi");
                pongs += 1;
            }
            Ok(Message::Text(text)) => break text.as_str().to_owned(),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(err)) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => panic!("{err}"),
        }
        assert!(
            began.elapsed() < Duration::from_secs(6),
            "no timeout while pinging"
        );
    };
    assert_eq!(timed_out, message(&["timeout"]));
    assert!(pongs >= 3, "{pongs} pongs");
    assert!(began.elapsed() >= Duration::from_millis(1500));
}

#[test]
fn a_close_frame_is_the_client_leaving_after_its_replies() {
    let (_server, addr) = start(TestConfig::new(), &[]);
    let mut client = WsClient::connect(addr);
    client.send(&["login", "alice", "secret"]);
    client.send(&["prolongate"]);
    client.socket.close(None).expect("close");
    client.expect(&["login_valid"]);
    client.expect(&["prolongate_ack"]);
    match client.next() {
        Message::Close(_) => {}
        other => panic!("expected the close echo, got {other:?}"),
    }
}

#[test]
fn frames_breaking_the_protocol_get_their_close_codes() {
    let config = TestConfig::new().server("max_message_bytes", 1024);
    let (_server, addr) = start(config, &[]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // A header claiming 2^63 bytes: refused from the header.
        (
            "2^63 bytes",
            {
                let mut header = vec![0x82, 0x80 | 127];
                header.extend_from_slice(&(1u64 << 63).to_be_bytes());
                header.extend_from_slice(&[0, 0, 0, 0]);
                header
            },
            1009,
        ),
        (
            "past max_message_bytes",
            frame(0x82, &[b'a'; 1026], false),
            1009,
        ),
        (
            "invalid UTF-8 text",
            frame(0x81, b"login\x1f\xff\xfe\x1e", false),
            1007,
        ),
        (
            "unmasked",
            frame(0x81, message(&["prolongate"]).as_bytes(), true),
            1002,
        ),
        (
            "ping over 125 bytes",
            frame(0x89, &[b'p'; 126], false),
            1002,
        ),
        ("fragmented ping", frame(0x09, b"p", false), 1002),
    ];
    for (case, bytes, code) in cases {
        let mut stream = raw_upgraded(addr);
        stream
            .write_all(&frame(0x81, message(&["prolongate"]).as_bytes(), false))
            .expect("send");
        let _ = stream.write_all(&bytes);
        assert_eq!(close_code_on(&mut stream), Some(code), "{case}");
    }
}

#[test]
fn the_largest_message_fits_one_frame_and_a_longer_one_is_io_error() {
    let config = TestConfig::new().server("max_message_bytes", 1024);
    let (_server, addr) = start(config, &[]);
    let mut client = WsClient::connect(addr);
    // 1024 bytes and the terminator: one frame of 1025.
    let longest = format!("{}{}", "x".repeat(1024), char::from(RS));
    client.socket.send(Message::text(longest)).expect("send");
    client.expect(&["unknown_command"]);
    // Over the bound in two frames: the message, as on TCP.
    client
        .socket
        .send(Message::text("y".repeat(1000)))
        .expect("send");
    client
        .socket
        .send(Message::text("y".repeat(1000)))
        .expect("send");
    client.expect(&["io_error"]);
    client.expect_close(1000);
}

#[test]
fn x_forwarded_for_names_the_client_only_from_forwarded_from_peers() {
    let config = TestConfig::new().auth("login_failures_per_minute", 1);
    let trusted = toml::Value::Array(vec!["127.0.0.2".into()]);
    let (server, addr) = start(config, &[("forwarded_from", trusted)]);
    let from = |source: [u8; 4]| from(source, addr);
    let forwarded = [("X-Forwarded-For", "10.1.1.1, 192.0.2.7")];
    // From the proxy 127.0.0.2: the client is 192.0.2.7.
    let mut proxied = WsClient::over(from([127, 0, 0, 2]), addr, "/", &forwarded).expect("upgrade");
    proxied.send(&["login", "alice", "wrong"]);
    proxied.expect(&["login_invalid"]);
    server.wait_for_log("192.0.2.7:0: login as \"alice\" failed", WAIT);
    // From 127.0.0.3, not trusted: the header is ignored.
    let mut direct = WsClient::over(from([127, 0, 0, 3]), addr, "/", &forwarded).expect("upgrade");
    direct.send(&["login", "alice", "wrong"]);
    direct.expect(&["login_invalid"]);
    server.wait_for_log("127.0.0.3:", WAIT);
    // The throttle (one failure a minute) holds 192.0.2.7 through another proxied
    // connection: the right password is refused unchecked.
    let mut again = WsClient::over(from([127, 0, 0, 2]), addr, "/", &forwarded).expect("upgrade");
    again.send(&["login", "alice", "secret"]);
    again.expect(&["login_invalid"]);
    // …but not another client behind the same proxy.
    let other = [("X-Forwarded-For", "198.51.100.4")];
    let mut another = WsClient::over(from([127, 0, 0, 2]), addr, "/", &other).expect("upgrade");
    another.login("alice");
    let log = server.stderr_text();
    assert!(!log.contains("127.0.0.3:0"), "{log}");
}

/// A TCP connection to `addr` from the loopback address `source`.
fn from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local = SocketAddr::from((source, 0));
    socket.bind(&local.into()).expect("bind a loopback source");
    socket.connect(&addr.into()).expect("connect");
    TcpStream::from(socket)
}

#[test]
fn a_proxy_protocol_header_comes_before_the_upgrade_and_names_the_client() {
    let config = TestConfig::new().server("proxy_protocol_from", vec!["127.0.0.2"]);
    let (server, addr) = start(config, &[]);
    let mut balancer = from([127, 0, 0, 2], addr);
    balancer
        .write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 7780\r\n")
        .expect("send the header");
    let mut client = WsClient::over(balancer, addr, "/", &[]).expect("upgrade after the header");
    client.send(&["login", "alice", "wrong"]);
    client.expect(&["login_invalid"]);
    server.wait_for_log("203.0.113.9:5555: login as \"alice\" failed", WAIT);
    // Without the header, a trusted peer's upgrade request is not a PROXY header: closed.
    let headerless = WsClient::over(from([127, 0, 0, 2], addr), addr, "/", &[]);
    assert!(headerless.is_err());
}

#[test]
fn wss_serves_the_protocol_with_the_tls_certificate_and_only_wss() {
    let Some(dir) = ca_and_server_pair("test") else {
        return;
    };
    let mut tls = toml::Table::new();
    tls.insert("cert_file".into(), "server.pem".into());
    tls.insert("key_file".into(), "server.key".into());
    let config = TestConfig::new()
        .server("listen", "")
        .server("tls", tls)
        .server("websocket", ws_table(&[("tls", true.into())]));
    let ca = dir.path().join("test-ca.pem");
    let (_server, addr) = start_in(dir, &config);
    let tcp = TcpStream::connect(addr).expect("connect");
    let name = rustls_name();
    let connection = tokio_rustls::rustls::ClientConnection::new(client_config(&ca, None), name)
        .expect("client");
    let stream = tokio_rustls::rustls::StreamOwned::new(connection, tcp);
    let mut client = WsClient::over(stream, addr, "/", &[]).expect("wss upgrade");
    client.login("alice");
    client.send(&["disconnect"]);
    client.expect(&["disconnect_ack"]);
    client.expect_close(1000);
    // Plain WebSocket on the wss port is not a TLS handshake: refused.
    assert!(WsClient::over(TcpStream::connect(addr).expect("connect"), addr, "/", &[]).is_err());
}

/// The name the tests' server certificate is for.
fn rustls_name() -> tokio_rustls::rustls::pki_types::ServerName<'static> {
    tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name")
}

#[test]
fn max_connections_is_shared_by_tcp_and_websocket() {
    let config = TestConfig::new().server("max_connections", 2);
    let (server, addr) = start(config, &[]);
    let mut tcp = server.logged_in("alice", "secret");
    let mut ws = WsClient::connect(addr);
    ws.login("bob");
    // The third, on either listener, is closed at accept.
    let refused = TcpStream::connect(addr)
        .and_then(|tcp| WsClient::over(tcp, addr, "/", &[]).map_err(std::io::Error::other));
    assert!(refused.is_err());
    let mut third = TestClient::connect(server.addr());
    third.expect_closed();
    tcp.send(&["prolongate"]);
    tcp.expect(&["prolongate_ack"]);
    ws.send(&["prolongate"]);
    ws.expect(&["prolongate_ack"]);
}

#[test]
fn a_websocket_client_that_stops_reading_is_cut_off_and_metrics_say_ws() {
    let config = TestConfig::new()
        .set("admin", "listen", "127.0.0.1:0")
        .server("max_pending_bytes", 65_536);
    let (server, addr) = start(config, &[]);
    server.wait_for_log("(admin API)", WAIT);
    let base = format!("http://{}", admin_addr(&server.stderr_text()));
    let mut reader = WsClient::connect(addr);
    reader.login("alice");
    let metrics = || admin_call(&base, None, "GET", "/metrics", None).1;
    let open = |text: &str| metric_in(text, "tether_transport_connections_open{transport=\"ws\"}");
    assert_eq!(open(&metrics()), Some(1.0));
    // Never read again: events pile up until the output bound cuts it off.
    let text = "e".repeat(8_000);
    let body = format!(r#"{{"user":"alice","text":"{text}"}}"#);
    let cut = wait_until(Duration::from_secs(30), || {
        admin_call(&base, None, "POST", "/v1/events", Some(&body));
        metric_in(&metrics(), "tether_io_errors_total{cause=\"slow_reader\"}") == Some(1.0)
    });
    assert!(cut, "never cut off:\n{}", metrics());
    assert!(wait_until(WAIT, || open(&metrics()) == Some(0.0)));
    assert_eq!(
        metric_in(
            &metrics(),
            "tether_transport_connections_accepted_total{transport=\"ws\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn an_embedding_program_starts_the_websocket_listener_alone_and_publishes_to_it() {
    use crate::common::in_process::{test_settings, user_set};
    use std::sync::Arc;
    use tether_actors::auth::user_store::UserTable;
    use tether_actors::{Listeners, Tether, WebSocketListener, WebSocketPolicy};
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (publish_tx, publish_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let listeners = Listeners {
                plain: None,
                tls: None,
                websocket: Some(WebSocketListener {
                    listener,
                    policy: WebSocketPolicy {
                        path: "/embedded".into(),
                        ..WebSocketPolicy::default()
                    },
                    tls: None,
                }),
                proxy_trust: Default::default(),
            };
            let users = Arc::new(UserTable::new(user_set(&[("alice", "secret")], 4)));
            let tether = Tether::start_listeners(listeners, test_settings(), users).expect("start");
            let address = tether.ws_local_addr().expect("a WebSocket address");
            assert_eq!(tether.local_addr(), address);
            started_tx.send(address).expect("test waits");
            let handle = tether.handle();
            let publisher = tokio::task::spawn_blocking(move || publish_rx.recv());
            if let Ok(Ok(())) = publisher.await {
                handle
                    .publish("alice", "from the host")
                    .await
                    .expect("publish");
            }
            let _ = stopped.await;
            tether.shutdown().await;
        });
    });
    let addr = started_rx.recv_timeout(WAIT).expect("started");
    let mut client = WsClient::connect_with(addr, "/embedded", &[]);
    client.login("alice");
    publish_tx.send(()).expect("publish");
    assert_eq!(client.recv()[2], "from the host");
    let _ = stop.send(());
    client.expect(&["shutdown"]);
    client.expect_close(1001);
    thread.join().expect("server thread");
}

/// The next frame the server sends on `stream`: its opcode and payload.
fn server_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).expect("a frame header");
    let length = match header[1] & 0x7F {
        126 => {
            let mut extended = [0u8; 2];
            stream.read_exact(&mut extended).expect("a length");
            usize::from(u16::from_be_bytes(extended))
        }
        127 => panic!("a server frame over 64 KiB"),
        length => usize::from(length),
    };
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).expect("a payload");
    (header[0] & 0x0F, payload)
}

#[test]
fn a_ping_flood_is_answered_at_the_pace_the_client_reads() {
    let (_server, addr) = start(TestConfig::new(), &[]);
    let mut stream = raw_upgraded(addr);
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let ping = frame(0x89, b"flood!", false);
    let burst = ping.repeat(1000);
    let mut sent = 0usize;
    // Never reading a pong: the server must stop reading pings, so the client's writes
    // block once the kernel buffers between them are full (a few MiB), long before 64 MiB.
    let blocked = loop {
        match stream.write(&burst) {
            Ok(written) => {
                sent += written;
                if sent > 64 << 20 {
                    break false;
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break true
            }
            Err(err) => panic!("write failed: {err}"),
        }
    };
    assert!(
        blocked,
        "the server took {sent} bytes of pings while no pong was read"
    );
    // Now read: every ping whole sent gets its pong, then the protocol goes on.
    let mut reader = stream.try_clone().expect("clone");
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let counting = std::thread::spawn(move || {
        let mut pongs = 0usize;
        loop {
            match server_frame(&mut reader) {
                (0xA, payload) => {
                    assert_eq!(payload, b"flood!");
                    pongs += 1;
                }
                (0x1, payload) => {
                    assert_eq!(payload, message(&["prolongate_ack"]).as_bytes());
                    return pongs;
                }
                (opcode, payload) => panic!("unexpected frame {opcode}: {payload:?}"),
            }
        }
    });
    let rest = (ping.len() - sent % ping.len()) % ping.len();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream
        .write_all(&ping[ping.len() - rest..])
        .expect("finish the last ping");
    stream
        .write_all(&frame(0x81, message(&["prolongate"]).as_bytes(), false))
        .expect("send a command");
    let pongs = counting.join().expect("reader");
    assert_eq!(pongs, (sent + rest) / ping.len());
}
