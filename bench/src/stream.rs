//! What a bench connection runs over: plain TCP, or TLS (rustls) over TCP to a server whose
//! certificate a CA file vouches for — tether's `server.tls.listen` — and, with the global
//! `--websocket PATH`, WebSocket frames over either (tether's `server.websocket.listen`):
//! every write one binary frame, the payloads of the frames read as the byte stream.

use crate::net::connect_from;
use crate::Fallible;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

/// How to open TLS connections: the trusted CA and the name the certificate must carry.
/// Every handshake is a full one (no session resumption), as for clients arriving anew,
/// unless made with [`TlsClient::resuming`].
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client trusting the certificates of the PEM file `ca_file`, expecting a server
    /// certificate for `name`.
    pub fn new(ca_file: &Path, name: &str) -> Fallible<Self> {
        let mut roots = rustls::RootCertStore::empty();
        let certificates = CertificateDer::pem_file_iter(ca_file)
            .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
            .map_err(|err| format!("{}: cannot read certificates: {err}", ca_file.display()))?;
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|err| format!("{}: unusable CA certificate: {err}", ca_file.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{}: no certificate in the file", ca_file.display()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| format!("cannot set up TLS: {err}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        let name = ServerName::try_from(name.to_string())
            .map_err(|err| format!("{name:?} is not a server name: {err}"))?;
        let config = Arc::new(config);
        Ok(Self {
            connector: TlsConnector::from(Arc::clone(&config)),
            name,
            config,
        })
    }

    /// The same client keeping the tickets servers send (in memory, shared by its clones),
    /// so that its handshakes after the first resume a session, as a client reconnecting
    /// does.
    pub fn resuming(&self) -> Self {
        let mut config = (*self.config).clone();
        config.resumption = rustls::client::Resumption::in_memory_sessions(256);
        let config = Arc::new(config);
        Self {
            connector: TlsConnector::from(Arc::clone(&config)),
            name: self.name.clone(),
            config,
        }
    }

    /// Runs the client side of a handshake over `stream`.
    pub async fn handshake(&self, stream: TcpStream) -> Fallible<BenchStream> {
        let stream = self
            .connector
            .connect(self.name.clone(), stream)
            .await
            .map_err(|err| format!("TLS handshake failed: {err}"))?;
        Ok(BenchStream::Tls(Box::new(stream)))
    }
}

/// The upgrade path every connection takes when the bench runs over WebSocket
/// (`--websocket PATH`), set once at start-up.
static WEBSOCKET: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes every connection from now on a WebSocket upgraded on `path`.
pub fn use_websocket(path: &str) {
    let _ = WEBSOCKET.set(path.to_string());
}

/// Opens a connection to `target` from `source`, through a TLS handshake when `tls` is set
/// and a WebSocket upgrade when the bench runs over WebSocket.
pub async fn connect(
    source: Ipv4Addr,
    target: SocketAddr,
    reuse_address: bool,
    tls: Option<&TlsClient>,
) -> Fallible<BenchStream> {
    let stream = connect_from(source, target, reuse_address).await?;
    let stream = match tls {
        None => BenchStream::Plain(stream),
        Some(tls) => tls.handshake(stream).await?,
    };
    match WEBSOCKET.get() {
        None => Ok(stream),
        Some(path) => websocket(stream, target, path, tls.is_some()).await,
    }
}

/// Upgrades `stream` to a WebSocket on `path` (tokio-tungstenite's client handshake), then
/// runs the frames over the same socket through [`WsBench`].
async fn websocket(
    stream: BenchStream,
    target: SocketAddr,
    path: &str,
    tls: bool,
) -> Fallible<BenchStream> {
    let scheme = if tls { "wss" } else { "ws" };
    let (socket, _) = tokio_tungstenite::client_async(format!("{scheme}://{target}{path}"), stream)
        .await
        .map_err(|err| format!("WebSocket upgrade failed: {err}"))?;
    // The server sends nothing after its `101` until it is spoken to, so the handshake left
    // no frame bytes behind in tokio-tungstenite's buffer.
    Ok(BenchStream::Ws(Box::new(WsBench::new(socket.into_inner()))))
}

/// Bytes asked of the socket per read (as the TCP receivers' buffers).
const WS_READ_CHUNK: usize = 16 * 1024;

/// A WebSocket as a byte stream, built to cost the bench machine little, as the TCP path
/// does: a read takes every frame the socket has in one `recv` and hands their payloads on
/// with one copy (headers parsed by tungstenite's `FrameHeader::parse`; no `Message`, no
/// UTF-8 check, no allocation per frame), and every write is one masked binary frame
/// (tungstenite's `Frame::format`). The server's frames are taken as they come: it is the
/// server under test, its conformance is the integration tests' business. tokio-tungstenite's
/// `Message` stream cost the bench client ~2× the TCP client's CPU per fan-out delivery on
/// the two cores it shares with the server (BENCHMARKS.md, "WebSocket against TCP").
pub struct WsBench {
    /// The socket, over plain TCP or TLS, after the upgrade.
    stream: BenchStream,
    /// Bytes read (`raw[head..tail]` not yet decoded: a partial header, or payload not yet
    /// handed on); allocated at the first read.
    raw: Vec<u8>,
    /// Where the undecoded bytes start in `raw`.
    head: usize,
    /// Where they end.
    tail: usize,
    /// Payload bytes of the current data frame still to hand on (at the start of `raw`).
    payload_left: u64,
    /// Payload bytes of the current control frame still to skip.
    skip_left: u64,
    /// Framed output the socket has not taken yet.
    out: Vec<u8>,
    /// Where the next frame's mask comes from.
    mask_state: u32,
    /// The server closed (or sent what is not a frame): reads answer the end.
    ended: bool,
}

impl WsBench {
    fn new(stream: BenchStream) -> Self {
        Self {
            stream,
            raw: Vec::new(),
            head: 0,
            tail: 0,
            payload_left: 0,
            skip_left: 0,
            out: Vec::new(),
            mask_state: 0x9e37_79b9,
            ended: false,
        }
    }

    /// Decodes what `raw` holds into `buf`: whether any payload was handed on.
    fn decode(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<bool> {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
        let mut got = false;
        loop {
            let held = (self.tail - self.head) as u64;
            if self.skip_left > 0 {
                let skip = held.min(self.skip_left);
                self.head += skip as usize;
                self.skip_left -= skip;
                if self.skip_left > 0 {
                    return Ok(got);
                }
            }
            if self.payload_left > 0 {
                let length = held.min(self.payload_left).min(buf.remaining() as u64) as usize;
                buf.put_slice(&self.raw[self.head..self.head + length]);
                self.head += length;
                self.payload_left -= length as u64;
                got |= length > 0;
                if self.payload_left > 0 {
                    return Ok(got);
                }
            }
            if self.ended || buf.remaining() == 0 {
                return Ok(got);
            }
            let mut cursor = io::Cursor::new(&self.raw[self.head..self.tail]);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(got),
                Err(err) => {
                    self.ended = true;
                    return if got {
                        Ok(got)
                    } else {
                        Err(io::Error::other(err))
                    };
                }
            };
            self.head += cursor.position() as usize;
            match header.opcode {
                OpCode::Data(_) => self.payload_left = length,
                OpCode::Control(Control::Close) => self.ended = true,
                OpCode::Control(_) => self.skip_left = length,
            }
        }
    }

    /// Reads once from the socket into `raw` (ready with the bytes read, 0 at the end).
    fn poll_fill(&mut self, task: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.head == self.tail {
            (self.head, self.tail) = (0, 0);
        }
        if self.raw.len() < WS_READ_CHUNK {
            self.raw.resize(WS_READ_CHUNK, 0);
        }
        if self.tail == self.raw.len() {
            // A partial header at the end: move it to the front.
            self.raw.copy_within(self.head..self.tail, 0);
            (self.head, self.tail) = (0, self.tail - self.head);
        }
        let mut read = ReadBuf::new(&mut self.raw[self.tail..]);
        std::task::ready!(Pin::new(&mut self.stream).poll_read(task, &mut read))?;
        let filled = read.filled().len();
        self.tail += filled;
        Poll::Ready(Ok(filled))
    }

    /// Writes `out` until it is empty (ready) or the socket takes no more (pending).
    fn poll_out(&mut self, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            match std::task::ready!(Pin::new(&mut self.stream).poll_write(task, &self.out)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(written) => drop(self.out.drain(..written)),
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Appends one masked, final frame of `payload` to `out`.
    fn frame(
        &mut self,
        opcode: tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode,
        payload: &[u8],
    ) {
        use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
        // xorshift: masks that differ frame to frame (the server checks only that there is one).
        self.mask_state ^= self.mask_state << 13;
        self.mask_state ^= self.mask_state >> 17;
        self.mask_state ^= self.mask_state << 5;
        let header = FrameHeader {
            opcode,
            mask: Some(self.mask_state.to_ne_bytes()),
            ..FrameHeader::default()
        };
        // Formatting into memory cannot fail.
        let _ = Frame::from_payload(header, bytes::Bytes::copy_from_slice(payload))
            .format(&mut self.out);
    }
}

impl AsyncRead for WsBench {
    /// Hands on the payloads of every frame already received that fits in `buf` (as one
    /// TCP read hands on every message that arrived), not one frame per read.
    fn poll_read(
        self: Pin<&mut Self>,
        task: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A frame the socket could not take at once goes before any more is waited for.
        if let Poll::Ready(Err(err)) = this.poll_out(task) {
            return Poll::Ready(Err(err));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.decode(buf)? || this.ended {
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(this.poll_fill(task)) {
                Ok(0) => this.ended = true,
                Ok(_) => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for WsBench {
    fn poll_write(
        self: Pin<&mut Self>,
        task: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        let this = self.get_mut();
        std::task::ready!(this.poll_out(task))?;
        this.frame(OpCode::Data(Data::Binary), buf);
        // What the socket does not take now goes with the next write, read or flush.
        if let Poll::Ready(Err(err)) = this.poll_out(task) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_out(task))?;
        Pin::new(&mut this.stream).poll_flush(task)
    }

    fn poll_shutdown(self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, OpCode};
        let this = self.get_mut();
        if !this.ended {
            // A close frame (no code) before the FIN, once.
            this.ended = true;
            this.frame(OpCode::Control(Control::Close), &[]);
        }
        std::task::ready!(this.poll_out(task))?;
        Pin::new(&mut this.stream).poll_shutdown(task)
    }
}

impl BenchStream {
    /// Whether this connection's handshake resumed a session (never, over plain TCP).
    pub fn resumed(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            Self::Tls(stream) => {
                stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
            }
            Self::Ws(stream) => stream.stream.resumed(),
        }
    }
}

/// A bench connection: plain TCP or TLS over TCP.
pub enum BenchStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: rustls's state is large next to a socket).
    Tls(Box<TlsStream<TcpStream>>),
    /// WebSocket frames over either (boxed likewise).
    Ws(Box<WsBench>),
}

impl AsyncRead for BenchStream {
    fn poll_read(
        self: Pin<&mut Self>,
        task: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(task, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(task, buf),
            Self::Ws(stream) => Pin::new(stream.as_mut()).poll_read(task, buf),
        }
    }
}

impl AsyncWrite for BenchStream {
    fn poll_write(
        self: Pin<&mut Self>,
        task: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(task, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(task, buf),
            Self::Ws(stream) => Pin::new(stream.as_mut()).poll_write(task, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(task),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(task),
            Self::Ws(stream) => Pin::new(stream.as_mut()).poll_flush(task),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(task),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(task),
            Self::Ws(stream) => Pin::new(stream.as_mut()).poll_shutdown(task),
        }
    }
}
