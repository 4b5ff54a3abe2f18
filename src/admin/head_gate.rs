//! The admin listener's gate against connections that send nothing (issue 23, "admin
//! slowloris"): 600 connections that never sent a request head, reopened as they were
//! closed, took every one of the HTTP server's connection slots at accept, each for the
//! 5 s head deadline, and a backend's request waited in the kernel's listen queue behind
//! them for 9–13 s, or timed out at 30 s.
//!
//! Now a connection is accepted at once and waits here, holding no HTTP slot, until its
//! first bytes arrive; only then is it handed to the HTTP service (where the head and
//! body deadlines of [`super::HEAD_TIMEOUT`] and [`super::BODY_TIMEOUT`] apply as before).
//! At most [`WAITING_MAX`] connections wait; when one more comes, the one that has waited
//! longest is closed. So the head deadline shrinks with load, as HAProxy's `timeout
//! http-request` and nginx's reuse of idle connections under `worker_connections` do: a
//! client that sends its request when it connects (a backend does) is never behind the
//! silent ones, and the silent ones cost one descriptor each, at most [`WAITING_MAX`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Most connections that wait for their first bytes at once; past it the oldest waiting
/// one is closed. 1,024 descriptors, a few KiB of memory each.
pub const WAITING_MAX: usize = 1024;

/// How often the log may say that waiting connections were closed.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The connections of one worker waiting for their first bytes, oldest first.
#[derive(Default)]
pub struct Waiting {
    /// Each waiting connection's number and how to close it.
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
    /// The next connection's number.
    next: u64,
    /// Connections closed for room since the last log line.
    closed_for_room: u64,
    /// When the log last said so.
    logged: Option<Instant>,
}

/// Shared by one worker's connections (its event loop is single-threaded).
pub type Gate = Rc<RefCell<Waiting>>;

/// Waits until `stream` has bytes to read (or its peer closed it: the HTTP service then
/// sees the end), at most `deadline`; `false` when the deadline passed or the connection
/// was closed to make room for a newer one (it is then dropped unanswered).
pub async fn first_bytes(gate: &Gate, stream: &TcpStream, deadline: Duration) -> bool {
    let (close, closed) = oneshot::channel();
    let number = {
        let mut waiting = gate.borrow_mut();
        if waiting.queue.len() >= WAITING_MAX {
            if let Some((_, oldest)) = waiting.queue.pop_front() {
                let _ = oldest.send(());
                waiting.closed_for_room += 1;
            }
            if waiting
                .logged
                .is_none_or(|logged| logged.elapsed() >= LOG_EVERY)
            {
                log::warn!(
                    "admin API: {} connection(s) that sent nothing closed to make room \
                     ({WAITING_MAX} wait at most)",
                    waiting.closed_for_room
                );
                waiting.closed_for_room = 0;
                waiting.logged = Some(Instant::now());
            }
        }
        let number = waiting.next;
        waiting.next += 1;
        waiting.queue.push_back((number, close));
        number
    };
    let ready = tokio::select! {
        ready = stream.readable() => ready.is_ok(),
        _ = closed => false,
        () = tokio::time::sleep(deadline) => false,
    };
    let mut waiting = gate.borrow_mut();
    if let Some(place) = waiting.queue.iter().position(|(n, _)| *n == number) {
        waiting.queue.remove(place);
    }
    ready
}
