//! [`FailureLog`]: the log of connections that failed before they were served (a TLS
//! handshake, a PROXY protocol header), which a storm of them cannot flood — the first
//! failure after a quiet interval is logged at once, the others are counted by cause and
//! summed up in one line per [`FAILURE_SUMMARY_INTERVAL`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How often the failures not logged one by one are summed up.
pub(crate) const FAILURE_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// A cause of failure a [`FailureLog`] counts: a metrics label enum.
pub(crate) trait FailureCause: Copy + 'static {
    /// Every cause, in declaration order (`cause as usize` indexes it).
    const ALL: &'static [Self];
    /// Where this cause is in [`FailureCause::ALL`].
    fn index(self) -> usize;
    /// The cause as the summary names it.
    fn label(self) -> &'static str;
}

/// The log of one kind of failure, shared by the workers: see the module.
#[derive(Debug)]
pub(crate) struct FailureLog<C> {
    /// What one failure is, as its line says it after the peer ("TLS handshake failed").
    one: &'static str,
    /// What several are, as the summary says it ("TLS handshake(s) failed").
    many: &'static str,
    state: Mutex<FailureLogState>,
    cause: std::marker::PhantomData<C>,
}

#[derive(Debug)]
struct FailureLogState {
    /// Nothing was logged since the last summary time: the next failure is logged at once.
    quiet: bool,
    /// Failures since then not logged, by cause.
    unlogged: Vec<u64>,
    /// The last of them: its peer and why.
    last: Option<String>,
}

impl<C: FailureCause> FailureLog<C> {
    /// A log with nothing to say yet, whose lines call one failure `one` and several
    /// `many`.
    pub(crate) fn new(one: &'static str, many: &'static str) -> Self {
        Self {
            one,
            many,
            state: Mutex::new(FailureLogState {
                quiet: true,
                unlogged: vec![0; C::ALL.len()],
                last: None,
            }),
            cause: std::marker::PhantomData,
        }
    }

    /// Logs the failure of `peer`'s connection (cause `cause`, as `why` says) now if
    /// nothing was logged since the last summary time, else keeps it for the next summary.
    pub(crate) fn failed(&self, cause: C, peer: SocketAddr, why: String) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.quiet {
            state.quiet = false;
            drop(state);
            log::info!("{peer}: {}: {why}", self.one);
        } else {
            state.unlogged[cause.index()] += 1;
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
        let causes: Vec<String> = C::ALL
            .iter()
            .zip(&state.unlogged)
            .filter(|(_, count)| **count > 0)
            .map(|(cause, count)| format!("{count} {}", cause.label()))
            .collect();
        let last = state.last.take().unwrap_or_default();
        state.unlogged.iter_mut().for_each(|count| *count = 0);
        Some(format!(
            "{total} more {} in the last {}s ({}); the last: {last}",
            self.many,
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
    use crate::util::metrics::HandshakeFailure;

    #[test]
    fn a_storm_of_failures_is_one_line_then_one_summary_per_interval() {
        let log = FailureLog::new("TLS handshake failed", "TLS handshake(s) failed");
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
}
