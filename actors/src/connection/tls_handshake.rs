//! The server side of a client's TLS handshake (SPEC §10), and what its failures leave: a
//! count by cause (`tether_tls_handshake_failures_total`) and a log that a storm of them
//! cannot flood — the first failure after a quiet interval is logged at once, the others
//! are counted and summed up in one line per [`FAILURE_SUMMARY_INTERVAL`].

use crate::hub::state::HubState;
use crate::util::metrics::{HandshakeFailure, Metrics};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its TLS handshake (SPEC §10).
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the failures not logged one by one are summed up.
pub(crate) const FAILURE_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

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
    failures: &FailureLog,
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

/// The log of one listener's failed handshakes, shared by the workers: see the module.
#[derive(Debug)]
pub(crate) struct FailureLog {
    state: Mutex<FailureLogState>,
}

#[derive(Debug)]
struct FailureLogState {
    /// Nothing was logged since the last summary time: the next failure is logged at once.
    quiet: bool,
    /// Failures since then not logged, by cause.
    unlogged: [u64; HandshakeFailure::ALL.len()],
    /// The last of them: its peer and why.
    last: Option<String>,
}

impl FailureLog {
    /// A log with nothing to say yet.
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(FailureLogState {
                quiet: true,
                unlogged: [0; HandshakeFailure::ALL.len()],
                last: None,
            }),
        }
    }

    /// Logs the failure of `peer`'s handshake (cause `cause`, as `why` says) now if nothing
    /// was logged since the last summary time, else keeps it for the next summary.
    pub(crate) fn failed(&self, cause: HandshakeFailure, peer: SocketAddr, why: String) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.quiet {
            state.quiet = false;
            drop(state);
            log::info!("{peer}: TLS handshake failed: {why}");
        } else {
            state.unlogged[cause as usize] += 1;
            state.last = Some(format!("{peer}: {why}"));
        }
    }

    /// The line summing up the failures not logged since the last call, if there were any
    /// (then they count as logged); with none, the next failure is logged at once.
    fn summary(&self) -> Option<String> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let total: u64 = state.unlogged.iter().sum();
        if total == 0 {
            state.quiet = true;
            return None;
        }
        let causes: Vec<String> = HandshakeFailure::ALL
            .iter()
            .zip(state.unlogged)
            .filter(|(_, count)| *count > 0)
            .map(|(cause, count)| format!("{count} {}", cause.label()))
            .collect();
        let last = state.last.take().unwrap_or_default();
        state.unlogged = [0; HandshakeFailure::ALL.len()];
        Some(format!(
            "{total} more TLS handshake(s) failed in the last {}s ({}); the last: {last}",
            FAILURE_SUMMARY_INTERVAL.as_secs(),
            causes.join(", ")
        ))
    }

    /// Logs [`FailureLog::summary`] every [`FAILURE_SUMMARY_INTERVAL`], for ever.
    pub(crate) async fn summarise(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(FAILURE_SUMMARY_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Some(line) = self.summary() {
                log::info!("{line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_of_failures_is_one_line_then_one_summary_per_interval() {
        let log = FailureLog::new();
        let peer: SocketAddr = ([127, 0, 0, 1], 9).into();
        // The first failure is logged at once; the next ones wait for the summary.
        log.failed(HandshakeFailure::Closed, peer, "first".into());
        for _ in 0..3 {
            log.failed(HandshakeFailure::Protocol, peer, "garbage".into());
        }
        log.failed(HandshakeFailure::Timeout, peer, "slow".into());
        assert_eq!(
            log.summary().as_deref(),
            Some(
                "4 more TLS handshake(s) failed in the last 10s (1 timeout, 3 protocol); \
                 the last: 127.0.0.1:9: slow"
            )
        );
        // A quiet interval: the next failure is logged at once again.
        assert_eq!(log.summary(), None);
        log.failed(HandshakeFailure::Alert, peer, "now".into());
        assert_eq!(log.summary(), None);
    }

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
