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

/// Upgrades `stream` to a WebSocket on `path`.
async fn websocket(
    stream: BenchStream,
    target: SocketAddr,
    path: &str,
    tls: bool,
) -> Fallible<BenchStream> {
    let scheme = if tls { "wss" } else { "ws" };
    let mut config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    // Every write goes out at once, as on TCP (the drivers flush only in their exchanges).
    config.write_buffer_size = 0;
    config.read_buffer_size = 16 * 1024;
    let (socket, _) = tokio_tungstenite::client_async_with_config(
        format!("{scheme}://{target}{path}"),
        stream,
        Some(config),
    )
    .await
    .map_err(|err| format!("WebSocket upgrade failed: {err}"))?;
    Ok(BenchStream::Ws(Box::new(WsBench {
        socket,
        unread: bytes::Bytes::new(),
        ended: false,
    })))
}

/// A WebSocket as a byte stream.
pub struct WsBench {
    /// The socket, over plain TCP or TLS.
    socket: tokio_tungstenite::WebSocketStream<BenchStream>,
    /// Payload not yet read.
    unread: bytes::Bytes,
    /// The server closed (or the socket failed): reads answer the end.
    ended: bool,
}

impl AsyncRead for WsBench {
    /// Hands on the payloads of every frame already received that fits in `buf` (as one
    /// TCP read hands on every message that arrived), not one frame per read.
    fn poll_read(
        self: Pin<&mut Self>,
        task: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        use futures_util::Stream;
        use tokio_tungstenite::tungstenite::Message;
        let this = self.get_mut();
        let mut got = false;
        loop {
            if !this.unread.is_empty() {
                let length = this.unread.len().min(buf.remaining());
                buf.put_slice(&this.unread.split_to(length));
                got = true;
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            let next = match Pin::new(&mut this.socket).poll_next(task) {
                Poll::Pending if got => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(next) => next,
            };
            match next {
                None | Some(Ok(Message::Close(_))) => this.ended = true,
                Some(Ok(Message::Text(text))) => this.unread = text.into(),
                Some(Ok(Message::Binary(data))) => this.unread = data,
                Some(Ok(_)) => {}
                Some(Err(_)) if got => {
                    this.ended = true;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(err)) => return Poll::Ready(Err(io::Error::other(err))),
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
        use futures_util::Sink;
        use tokio_tungstenite::tungstenite::Message;
        let this = self.get_mut();
        std::task::ready!(Pin::new(&mut this.socket).poll_ready(task)).map_err(io::Error::other)?;
        let message = Message::binary(bytes::Bytes::copy_from_slice(buf));
        Pin::new(&mut this.socket)
            .start_send(message)
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        use futures_util::Sink;
        Pin::new(&mut self.get_mut().socket)
            .poll_flush(task)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        use futures_util::Sink;
        Pin::new(&mut self.get_mut().socket)
            .poll_close(task)
            .map_err(io::Error::other)
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
            Self::Ws(stream) => stream.socket.get_ref().resumed(),
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
