//! The server side of a client's TLS handshake (SPEC §10), and what its failures leave: a
//! count by cause (`tether_tls_handshake_failures_total`) and a line in a [`FailureLog`],
//! which a storm of them cannot flood.

use crate::hub::state::HubState;
use crate::util::failure_log::FailureLog;
use crate::util::metrics::{HandshakeFailure, Metrics};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its TLS handshake (SPEC §10).
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the server side of a TLS handshake on `stream`, on the connection's worker (it
/// waits for the client without holding the thread): `None` when it fails, takes longer
/// than [`TLS_HANDSHAKE_TIMEOUT`], or shutdown begins first; a failure is counted and told
/// to `failures`. Its memory is rustls's (its input buffer grows to 64 KiB at most for
/// handshake messages); the caller's permit counts it against `max_connections`, and
/// `tether_tls_handshakes_pending` counts it while it runs.
pub(crate) async fn tls_handshake(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    mut hub: watch::Receiver<HubState>,
    metrics: &Metrics,
    failures: &FailureLog<HandshakeFailure>,
) -> Option<TlsStream<TcpStream>> {
    let _pending = PendingHandshake::new(metrics);
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    let shutdown = hub.wait_for(|state| state.shutting_down);
    let (cause, why) = tokio::select! {
        done = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake) => match done {
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

/// Counts one handshake in `tether_tls_handshakes_pending` for as long as it lives, however
/// the handshake ends (a worker stopping drops it unfinished).
struct PendingHandshake<'a>(&'a Metrics);

impl<'a> PendingHandshake<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.tls_handshakes_pending.inc();
        Self(metrics)
    }
}

impl Drop for PendingHandshake<'_> {
    fn drop(&mut self) {
        self.0.tls_handshakes_pending.dec();
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
