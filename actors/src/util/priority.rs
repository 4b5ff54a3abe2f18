//! Background threads: the ones whose work may wait (password checks, TLS handshakes) run
//! at a lower CPU priority than the event loops, so that when they compete for a core,
//! the connections already open are served first.

/// Niceness of background threads: below the event loops (nice 0).
pub(crate) const BACKGROUND_NICENESS: i32 = 10;

/// Lowers the calling thread to [`BACKGROUND_NICENESS`]; `what` names the thread in the
/// debug line that says it could not be done.
pub(crate) fn run_in_background(what: &str) {
    // On Linux the nice value is per thread: this lowers only the calling thread.
    if let Err(err) = rustix::process::setpriority_process(None, BACKGROUND_NICENESS) {
        log::debug!("cannot lower the priority of {what}: {err}");
    }
}
