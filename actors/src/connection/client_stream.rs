//! [`ClientStream`]: what a connection runs over — plain TCP, TLS over TCP, or a WebSocket
//! over either — behind the one [`Stream`] the transport knows; and [`TlsSocket`], the TCP socket under a TLS stream,
//! which moves from the event loop its handshake ran on to its connection's worker.

use super::transport::Stream;
use super::websocket::WsStream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A client's stream: the plaintext listener's or the TLS listener's (handshake done).
pub enum ClientStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP; boxed, as rustls's state is large next to a socket.
    Tls(Box<TlsStream<TlsSocket>>),
    /// WebSocket frames over plain TCP or TLS (SPEC §11); boxed, as its frame state is
    /// large next to a socket.
    Ws(Box<WsStream>),
}

impl ClientStream {
    /// The transport's name in logs and metrics: `tcp`, `tls`, `ws` or `wss`.
    pub(crate) fn transport(&self) -> crate::util::metrics::TransportKind {
        use crate::util::metrics::TransportKind;
        match self {
            Self::Plain(_) => TransportKind::Tcp,
            Self::Tls(_) => TransportKind::Tls,
            Self::Ws(ws) if ws.is_tls() => TransportKind::Wss,
            Self::Ws(_) => TransportKind::Ws,
        }
    }
}

/// The TCP socket under a TLS stream. A tokio socket is bound to the event loop that
/// registered it, and a handshake runs on another loop than its connection (see
/// `tls_handshake`); tokio-rustls cannot rebuild a stream from its socket and rustls
/// state, so the socket is moved inside the stream: [`Self::detach`] on the handshake's
/// loop, [`Self::attach`] on the worker's.
pub enum TlsSocket {
    /// Registered with the event loop of the thread using it.
    Registered(TcpStream),
    /// Between two event loops, registered with neither: no I/O until attached.
    Detached(std::net::TcpStream),
    /// Lost in a move that failed: every I/O fails.
    Lost,
}

impl TlsSocket {
    /// Takes the socket off the current event loop.
    pub(crate) fn detach(&mut self) -> io::Result<()> {
        if let Self::Registered(socket) = std::mem::replace(self, Self::Lost) {
            *self = Self::Detached(socket.into_std()?);
        }
        Ok(())
    }

    /// Registers the socket with the current event loop (it must run in a tokio runtime).
    pub(crate) fn attach(&mut self) -> io::Result<()> {
        match std::mem::replace(self, Self::Lost) {
            Self::Detached(socket) => *self = Self::Registered(TcpStream::from_std(socket)?),
            other => *self = other,
        }
        Ok(())
    }

    /// The registered socket, or the error of I/O on one that is not.
    fn registered(self: Pin<&mut Self>) -> io::Result<Pin<&mut TcpStream>> {
        match self.get_mut() {
            Self::Registered(socket) => Ok(Pin::new(socket)),
            Self::Detached(_) | Self::Lost => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl AsyncRead for TlsSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        task: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.registered()?.poll_read(task, buf)
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        task: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.registered()?.poll_write(task, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        task: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.registered()?.poll_write_vectored(task, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.registered()?.poll_flush(task)
    }

    fn poll_shutdown(self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.registered()?.poll_shutdown(task)
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        task: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(task, buf),
            // A client that closes without TLS's close_notify (most do) has closed, as over
            // TCP: the protocol's messages carry their own ends, so nothing can be cut
            // unnoticed.
            Self::Tls(stream) => match Pin::new(stream.as_mut()).poll_read(task, buf) {
                Poll::Ready(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(()))
                }
                read => read,
            },
            Self::Ws(stream) => Pin::new(stream.as_mut()).poll_read(task, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
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

impl Stream for ClientStream {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(stream) => stream.try_write(buf),
            // rustls takes the bytes into its bounded buffer of records (64 KiB) and
            // writes what the socket takes; the rest goes with the next flush, which
            // registers the real waker.
            Self::Tls(stream) => {
                let mut task = Context::from_waker(Waker::noop());
                match Pin::new(stream.as_mut()).poll_write(&mut task, buf) {
                    Poll::Ready(result) => result,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
            Self::Ws(stream) => stream.try_write(buf),
        }
    }

    fn poll_read_ready(&self, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(stream) => stream.poll_read_ready(task),
            // rustls may hold decrypted input the socket no longer shows: only a read
            // tells (and registers the waker when there is nothing).
            Self::Tls(_) => Poll::Ready(Ok(())),
            Self::Ws(stream) => stream.poll_read_ready(task),
        }
    }

    fn set_close_code(&mut self, code: u16) {
        if let Self::Ws(stream) = self {
            stream.set_close_code(code);
        }
    }

    fn close_now(&mut self) {
        if let Self::Ws(stream) = self {
            stream.close_now();
        }
    }
}
