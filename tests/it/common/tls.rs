//! TLS in tests: certificates made with the `openssl` command in a test's folder, and a
//! blocking rustls client speaking the protocol.

use super::{encode, RS, US};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Whether the `openssl` command is there. Outside CI a missing one skips the test (one
/// line says so and how to install it); under `CI=true` it fails the test.
pub fn openssl_available() -> bool {
    let found = Command::new("openssl").arg("version").output().is_ok();
    if !found {
        super::skip_without("no openssl command", "apt-get install openssl");
    }
    found
}

/// Runs `openssl` with `args` in `dir`; panics with its output when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME-ca.pem`/`NAME-ca.key`) in `dir`; answers the certificate's path.
pub fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
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
            "2",
            "-subj",
            &format!("/CN={name} CA"),
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
        ],
    );
    dir.join(format!("{name}-ca.pem"))
}

/// A new folder with a CA `CA-ca.pem` and a server pair `server.pem`/`server.key` it
/// signed; `None` (after [`openssl_available`]'s skip line) where openssl is missing.
pub fn ca_and_server_pair(ca: &str) -> Option<tempfile::TempDir> {
    if !openssl_available() {
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    make_ca(dir.path(), ca);
    make_signed(dir.path(), ca, "server");
    Some(dir)
}

/// A certificate `NAME.pem` with key `NAME.key` in `dir`, for 127.0.0.1 and localhost,
/// signed by the CA `CA-ca.pem` made by [`make_ca`].
pub fn make_signed(dir: &Path, ca: &str, name: &str) {
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("write extensions");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A client configuration trusting the CA at `ca`, presenting `identity` (certificate and
/// key PEM paths) when given.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(certificate.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("read client certificate")
                .collect::<Result<Vec<_>, _>>()
                .expect("client certificate PEM");
            let key = PrivateKeyDer::from_pem_file(key).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client identity")
        }
    };
    Arc::new(config)
}

/// A protocol client over TLS (blocking).
pub struct TlsClient {
    /// The TLS stream.
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    /// Bytes received but not yet returned as messages.
    buffer: Vec<u8>,
    /// The server sent close_notify before ending the stream.
    ended_cleanly: bool,
}

impl TlsClient {
    /// Connects to `addr` and completes the handshake (for the name `localhost`); the
    /// error is the handshake's.
    pub fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<Self> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(super::RECV_TIMEOUT))?;
        let name = ServerName::try_from("localhost").expect("server name");
        let connection =
            rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(Self {
            stream,
            buffer: Vec::new(),
            ended_cleanly: false,
        })
    }

    /// Whether the handshake was a full one or resumed a session.
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.stream.conn.handshake_kind()
    }

    /// The server's certificate (the first of its chain).
    pub fn server_certificate(&self) -> Vec<u8> {
        let chain = self
            .stream
            .conn
            .peer_certificates()
            .expect("server certificates");
        chain[0].as_ref().to_vec()
    }

    /// Sends one message made of `parts`.
    pub fn send(&mut self, parts: &[&str]) {
        self.stream
            .write_all(&encode(parts))
            .expect("send over TLS");
        self.stream.flush().expect("flush TLS");
    }

    /// The next message as its parts; the error says why none came (closed, timed out,
    /// or a TLS alert such as a refused client certificate).
    pub fn try_recv(&mut self) -> std::io::Result<Vec<String>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == RS) {
                let message: Vec<u8> = self.buffer.drain(..=end).collect();
                return Ok(message[..end]
                    .split(|&b| b == US)
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect());
            }
            let mut chunk = [0u8; 4096];
            let read = self.stream.read(&mut chunk)?;
            if read == 0 {
                // rustls answers 0 only after close_notify; a bare TCP end is an error.
                self.ended_cleanly = true;
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    /// Sends `request` (raw HTTP/1.1, `Connection: close`) and answers everything the
    /// server sends back until it closes.
    pub fn http(&mut self, request: &str) -> String {
        self.stream
            .write_all(request.as_bytes())
            .expect("send request");
        self.stream.flush().expect("flush TLS");
        let mut answer = Vec::new();
        // A close without close_notify still ends the answer.
        let _ = self.stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Whether the server ended the stream with TLS's close_notify.
    pub fn closed_cleanly(&self) -> bool {
        self.ended_cleanly
    }

    /// Asserts that the next message is `parts`.
    pub fn expect(&mut self, parts: &[&str]) {
        let got = self.try_recv().expect("a message over TLS");
        assert_eq!(got, parts);
    }
}

/// A client session store (rustls's in-memory one) that counts the TLS 1.3 tickets it is
/// given: what the server sends after each handshake.
#[derive(Debug)]
pub struct CountingSessions {
    /// Where the sessions are kept.
    sessions: rustls::client::ClientSessionMemoryCache,
    /// TLS 1.3 tickets received so far.
    tickets: std::sync::atomic::AtomicUsize,
}

impl CountingSessions {
    /// An empty store.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            sessions: rustls::client::ClientSessionMemoryCache::new(64),
            tickets: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// TLS 1.3 tickets received so far.
    pub fn tickets(&self) -> usize {
        self.tickets.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl rustls::client::ClientSessionStore for CountingSessions {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.sessions.set_kx_hint(name, group);
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.sessions.kx_hint(name)
    }

    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.sessions.set_tls12_session(name, value);
    }

    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.sessions.tls12_session(name)
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.sessions.remove_tls12_session(name);
    }

    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.sessions.insert_tls13_ticket(name, value);
    }

    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.sessions.take_tls13_ticket(name)
    }
}

/// A client configuration trusting the CA at `ca` that keeps its sessions in `sessions`,
/// so that its next handshakes offer to resume them.
pub fn resuming_client_config(
    ca: &Path,
    sessions: Arc<CountingSessions>,
) -> Arc<rustls::ClientConfig> {
    let mut config = (*client_config(ca, None)).clone();
    config.resumption = rustls::client::Resumption::store(sessions);
    Arc::new(config)
}
