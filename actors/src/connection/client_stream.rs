//! [`ClientStream`]: what a connection runs over — plain TCP, or TLS over TCP — behind the
//! one [`Stream`] the transport knows.

use super::transport::Stream;
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
    Tls(Box<TlsStream<TcpStream>>),
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
        }
    }

    fn poll_flush(self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(task),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(task),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(task),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(task),
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
        }
    }

    fn poll_read_ready(&self, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(stream) => stream.poll_read_ready(task),
            // rustls may hold decrypted input the socket no longer shows: only a read
            // tells (and registers the waker when there is nothing).
            Self::Tls(_) => Poll::Ready(Ok(())),
        }
    }
}
