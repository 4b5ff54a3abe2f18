//! The server side of a client's TLS handshake (SPEC §10), run on threads of its own at a
//! lower CPU priority than the workers ([`HandshakeThreads`]), so that a storm of
//! handshakes never stands between an open connection and its worker; and what failures
//! leave: a count by cause (`tether_tls_handshake_failures_total`) and a line in a
//! [`FailureLog`], which a storm of them cannot flood.

use super::client_stream::TlsSocket;
use crate::hub::state::HubState;
use crate::util::failure_log::FailureLog;
use crate::util::metrics::{HandshakeFailure, Metrics};
use crate::util::priority;
use prometheus_client::metrics::gauge::Gauge;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its TLS handshake (SPEC §10).
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The threads TLS handshakes run on: an event loop of their own (a tokio runtime of
/// `threads` threads, named `tether-tls`), at [`priority::BACKGROUND_NICENESS`]. A
/// handshake's CPU work (key exchange, signature) then waits while the workers have
/// connections to serve, as password checks do; once done, its socket moves to its
/// connection's worker. Dropping this stops the threads and drops the handshakes still
/// pending.
pub(crate) struct HandshakeThreads(Option<tokio::runtime::Runtime>);

impl HandshakeThreads {
    /// Starts `threads` handshake threads (at least one); answers them and where
    /// handshakes are spawned on them.
    pub(crate) fn start(threads: usize) -> io::Result<(Self, tokio::runtime::Handle)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("tether-tls")
            .on_thread_start(|| priority::run_in_background("a TLS handshake thread"))
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok((Self(Some(runtime)), handle))
    }
}

impl Drop for HandshakeThreads {
    fn drop(&mut self) {
        // Without waiting for the threads: this may run on an event loop.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs the server side of a TLS handshake on `stream` (on a handshake thread; it waits
/// for the client without holding the thread): `None` when it fails, is not done by
/// `deadline` ([`TLS_HANDSHAKE_TIMEOUT`] after it could begin), or shutdown begins first;
/// a failure is counted and told to `failures`. Its memory is rustls's (its input buffer
/// grows to 64 KiB at most for handshake messages); the caller's permit counts it against
/// `max_connections`, and its [`PendingHandshake`] in `tether_tls_handshakes_pending`.
pub(crate) async fn tls_handshake(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    deadline: Instant,
    mut hub: watch::Receiver<HubState>,
    metrics: &Metrics,
    failures: &FailureLog<HandshakeFailure>,
) -> Option<TlsStream<TlsSocket>> {
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(TlsSocket::Registered(stream));
    let shutdown = hub.wait_for(|state| state.shutting_down);
    let (cause, why) = tokio::select! {
        done = tokio::time::timeout_at(deadline, handshake) => match done {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(err)) => (failure_cause(&err), format!("{err}")),
            Err(_) => (
                HandshakeFailure::Timeout,
                format!("not done within {TLS_HANDSHAKE_TIMEOUT:?}"),
            ),
        },
        _ = shutdown => return None,
    };
    metrics.tls_handshake_failed(cause);
    failures.failed(cause, peer, why);
    None
}

/// Counts one TLS connection in `tether_tls_handshakes_pending` from its accept until its
/// handshake is done, however it ends (shutdown drops it unfinished).
pub(crate) struct PendingHandshake(Gauge);

impl PendingHandshake {
    /// Counts one more pending handshake.
    pub(crate) fn new(metrics: &Metrics) -> Self {
        metrics.tls_handshakes_pending.inc();
        Self(metrics.tls_handshakes_pending.clone())
    }
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Why the handshake that ended with `err` failed.
fn failure_cause(err: &io::Error) -> HandshakeFailure {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(_)) => HandshakeFailure::Alert,
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => {
            HandshakeFailure::ClientCertificate
        }
        Some(_) => HandshakeFailure::Protocol,
        // Not rustls's verdict: the socket's (end of input, reset).
        None => HandshakeFailure::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_told_apart_by_rustls_verdict() {
        let wrapped = |err: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, err);
        assert_eq!(
            failure_cause(&wrapped(rustls::Error::AlertReceived(
                rustls::AlertDescription::BadCertificate
            ))),
            HandshakeFailure::Alert
        );
        assert_eq!(
            failure_cause(&wrapped(rustls::Error::NoCertificatesPresented)),
            HandshakeFailure::ClientCertificate
        );
        assert_eq!(
            failure_cause(&wrapped(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))),
            HandshakeFailure::Protocol
        );
        assert_eq!(
            failure_cause(&io::ErrorKind::UnexpectedEof.into()),
            HandshakeFailure::Closed
        );
    }
}
