//! [`Transport`]: the byte side of a connection, generic over its stream (plain TCP now,
//! TLS next) — the read buffer and the framing, the output buffer with its bounds
//! (`max_pending_bytes`, the server-wide budget), the delivery histogram of the events in
//! it, the one deadline, and where the connection is in its close. It knows nothing of the
//! protocol's commands: the [`Session`](super::session::Session) does.

use crate::protocol::codec::{ends_at_boundary, DecodeError, MessageCodec};
use crate::protocol::command::Reply;
use crate::util::buffers::{self, Spare};
use crate::util::output_budget::{Evictee, OutputCharge, FREE_BYTES};
use bytes::{Buf, BytesMut};
use prometheus_client::metrics::histogram::Histogram;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 4096;

/// A stream a connection runs over: what tokio's `AsyncRead`/`AsyncWrite` give, plus the
/// two readiness shortcuts the hot paths use.
pub trait Stream: AsyncRead + AsyncWrite + Unpin {
    /// Writes what the stream takes now, without waiting and without registering a waker
    /// (`WouldBlock` if it takes nothing).
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Whether there may be input to read; registers the waker when there is none.
    fn poll_read_ready(&self, task: &mut std::task::Context<'_>) -> Poll<io::Result<()>>;
    /// The code of the close frame a WebSocket sends when its sending side is shut down
    /// (SPEC §11); other streams have none.
    fn set_close_code(&mut self, _code: u16) {}
    /// Sends a WebSocket's close frame now if the socket takes it, after a failure's last
    /// output; other streams have none.
    fn close_now(&mut self) {}
}

impl Stream for TcpStream {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }

    fn poll_read_ready(&self, task: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, task)
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading commands and writing replies and pushes.
    Open,
    /// Writing what is left, then shutting down the sending side.
    Flushing {
        /// Whether to linger (read and discard) once the sending side is shut.
        linger: bool,
    },
    /// Sending side shut; discarding input until the peer closes or the linger ends.
    Lingering,
}

/// The output went past a bound; the connection must fail with `io_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Over `max_pending_bytes` even after writing what the kernel takes.
    Connection,
    /// Over the server-wide budget and stalled longest.
    Server,
}

/// The events in a connection's output not yet written: each is counted in
/// `tether_event_delivery_seconds` when the write that empties the output completes. The
/// oldest and the newest are counted with their own ages (exact for one or two events in a
/// write); those between, at the midpoint of the two (they were accepted in between). Kept
/// in the size of one `Instant` and a count.
#[derive(Debug, Clone, Copy)]
struct UnwrittenEvents {
    /// When the bus accepted the oldest of them.
    oldest: Instant,
    /// How many.
    count: u32,
    /// How long after the oldest the bus accepted the newest, in microseconds.
    newest_after_us: u32,
}

impl UnwrittenEvents {
    /// Counts them in `histogram`, written now.
    fn observe(self, histogram: &Histogram) {
        for (age, events) in self.ages(self.oldest.elapsed().as_secs_f64()) {
            for _ in 0..events {
                histogram.observe(age);
            }
        }
    }

    /// Their ages in seconds, each with how many events have it, when the oldest's is
    /// `oldest`: the oldest, the newest, and those between.
    fn ages(self, oldest: f64) -> [(f64, u32); 3] {
        let newest = (oldest - f64::from(self.newest_after_us) / 1e6).max(0.0);
        [
            (oldest, 1),
            (newest, u32::from(self.count > 1)),
            ((oldest + newest) / 2.0, self.count.saturating_sub(2)),
        ]
    }
}

/// The byte side of one connection over a stream `S`, told to go through `E` when the
/// server-wide output budget needs room.
pub(crate) struct Transport<S, E: Evictee> {
    /// The stream; reads and writes happen in place, without a split.
    stream: S,
    /// Splits the input into messages and bounds their length.
    codec: MessageCodec,
    /// Received bytes not yet decoded; holds no memory while no message is partial.
    pub input: BytesMut,
    /// Encoded output the kernel has not taken yet.
    pub output: BytesMut,
    /// The last byte handed to the kernel ended a message (or none was sent yet).
    output_at_boundary: bool,
    /// The events in `output`, for the delivery histogram once they are written.
    unwritten_events: Option<UnwrittenEvents>,
    /// What `output` has charged to the server-wide budget; given back on drop.
    output_charge: OutputCharge<E>,
    /// Unsent output allowed before `io_error`.
    max_pending_bytes: usize,
    /// This worker's `tether_event_delivery_seconds`.
    delivery_seconds: Option<Histogram>,
    /// When the last complete message arrived (or the connection opened).
    pub last_message: Instant,
    /// When to look again at idleness (open), give up the last output (flushing), or stop
    /// lingering; moved lazily, not per message.
    pub deadline: Pin<Box<Sleep>>,
    /// Where the connection is in its life.
    pub phase: Phase,
    /// The client shut its sending side (or the read side failed): nothing to linger for.
    pub input_closed: bool,
}

impl<S: Stream, E: Evictee> Transport<S, E> {
    /// A transport over `stream`, open, its deadline `deadline` from now.
    pub(crate) fn new(
        stream: S,
        max_message_bytes: usize,
        max_pending_bytes: usize,
        output_charge: OutputCharge<E>,
        delivery_seconds: Option<Histogram>,
        deadline: std::time::Duration,
    ) -> Self {
        Self {
            stream,
            codec: MessageCodec::new(max_message_bytes),
            input: BytesMut::new(),
            output: BytesMut::new(),
            output_at_boundary: true,
            unwritten_events: None,
            output_charge,
            max_pending_bytes,
            delivery_seconds,
            last_message: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(deadline)),
            phase: Phase::Open,
            input_closed: false,
        }
    }

    /// Queues `reply`; an `Err` says which bound the output passed. Inline: it runs once
    /// per command, and copies a ready-made message.
    #[inline]
    pub(crate) fn queue_reply(&mut self, reply: Reply) -> Result<(), Overflow> {
        let message = reply.message();
        buffers::reserve(&mut self.output, message.len(), Spare::Output);
        self.output.extend_from_slice(message);
        self.output_grew()
    }

    /// Queues an event message accepted by the bus at `accepted`.
    pub(crate) fn queue_event(
        &mut self,
        message: &[u8],
        accepted: Instant,
    ) -> Result<(), Overflow> {
        // Noted first: writing may complete at once (past the output limit).
        match &mut self.unwritten_events {
            Some(events) => {
                events.count = events.count.saturating_add(1);
                let after = accepted
                    .saturating_duration_since(events.oldest)
                    .as_micros();
                events.newest_after_us = u32::try_from(after).unwrap_or(u32::MAX);
            }
            None => {
                self.unwritten_events = Some(UnwrittenEvents {
                    oldest: accepted,
                    count: 1,
                    newest_after_us: 0,
                });
            }
        }
        buffers::reserve(&mut self.output, message.len(), Spare::Output);
        self.output.extend_from_slice(message);
        self.output_grew()
    }

    /// Enforces `max_pending_bytes` and the server-wide `max_pending_total` (where the
    /// budget is spent, the connections stalled longer than this one are told to go
    /// first; see [`crate::util::output_budget`]). Inline: it runs once per reply, and
    /// output under both bounds needs only the check.
    #[inline]
    fn output_grew(&mut self) -> Result<(), Overflow> {
        if self.output.len() <= self.max_pending_bytes.min(FREE_BYTES) {
            return Ok(());
        }
        self.enforce_output_bounds()
    }

    /// [`Self::output_grew`] past one of the bounds' thresholds.
    fn enforce_output_bounds(&mut self) -> Result<(), Overflow> {
        if self.output.len() > self.max_pending_bytes {
            // What the kernel takes right now is not pending.
            if self.write_now().is_err() || self.output.len() > self.max_pending_bytes {
                return Err(Overflow::Connection);
            }
        }
        if self.output.len() > FREE_BYTES && !self.output_charge.settle(self.output.len()) {
            // `write_now` settles the charge for what the kernel takes.
            if self.write_now().is_err() || !self.output_charge.settle_or_evict(self.output.len()) {
                return Err(Overflow::Server);
            }
        }
        Ok(())
    }

    /// Hands the kernel what it takes without waiting.
    fn write_now(&mut self) -> io::Result<()> {
        while !self.output.is_empty() {
            match self.stream.try_write(&self.output) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.consume_output(written),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    fn consume_output(&mut self, written: usize) {
        self.output_at_boundary = ends_at_boundary(&self.output[..written]);
        if written < self.output.len() {
            self.output.advance(written);
        } else {
            // `clear`, not `advance`: the buffer keeps its whole capacity for the spare
            // (advanced to its end, it would report none and be freed).
            self.output.clear();
            buffers::release(&mut self.output, Spare::Output);
            if let (Some(events), Some(histogram)) =
                (self.unwritten_events.take(), &self.delivery_seconds)
            {
                events.observe(histogram);
            }
        }
        if self.output_charge.is_charged() {
            self.output_charge.taken(self.output.len());
        }
    }

    /// Drops the unsent output and, if the client is not mid-message, queues `io_error`
    /// and hands the kernel what it takes of it now (best effort).
    pub(crate) fn fail_output(&mut self) {
        self.output.clear();
        self.unwritten_events = None;
        if self.output_at_boundary {
            self.output.extend_from_slice(Reply::IoError.message());
            let _ = self.write_now();
        }
        self.stream.close_now();
    }

    /// Sets the code of the close frame a WebSocket sends at the end (SPEC §11).
    pub(crate) fn set_close_code(&mut self, code: u16) {
        self.stream.set_close_code(code);
    }

    /// Writes the output until it is empty (ready) or the stream takes no more (pending).
    pub(crate) fn poll_flush(&mut self, task: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        // Through `AsyncWrite` rather than `try_write`: a short write clears the readiness
        // at once, so waiting for room costs no `EAGAIN`.
        while !self.output.is_empty() {
            match Pin::new(&mut self.stream).poll_write(task, &self.output) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(written)) if written > 0 => self.consume_output(written),
                Poll::Ready(result) => {
                    let err = result
                        .err()
                        .unwrap_or_else(|| io::ErrorKind::WriteZero.into());
                    return Poll::Ready(Err(err));
                }
            }
        }
        // Nothing for TCP; for TLS, the records rustls still holds.
        Pin::new(&mut self.stream).poll_flush(task)
    }

    /// Shuts the sending side down; for TCP this completes at once, and an error means the
    /// peer is gone anyway.
    pub(crate) fn shutdown(&mut self, task: &mut std::task::Context<'_>) {
        let _ = Pin::new(&mut self.stream).poll_shutdown(task);
    }

    /// The length of the next complete message in the input, if there is one.
    pub(crate) fn next_message(&mut self) -> Result<Option<usize>, DecodeError> {
        self.codec.next_message(&self.input)
    }

    /// As [`Self::next_message`], in `input`: the input taken out while its messages are
    /// handled, past those handled (which are dropped from it afterwards, all at once).
    pub(crate) fn next_message_in(&mut self, input: &[u8]) -> Result<Option<usize>, DecodeError> {
        self.codec.next_message(input)
    }

    /// Reads one chunk into the input: the bytes read (0 at the end of the input), or
    /// pending when there are none for now.
    pub(crate) fn poll_read(
        &mut self,
        task: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if let Err(err) = std::task::ready!(self.stream.poll_read_ready(task)) {
            return Poll::Ready(Err(err));
        }
        buffers::reserve(&mut self.input, READ_CHUNK, Spare::Input);
        // Through `AsyncRead` rather than `try_read`: a read that leaves part of the
        // buffer empty has drained the socket, and tokio then clears the readiness, so
        // the next loop does not spend a `recv` to learn it (`EAGAIN`).
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), task, &mut self.input);
        if read.is_pending() && self.input.is_empty() {
            buffers::release(&mut self.input, Spare::Input);
        }
        read
    }

    /// Holds no read buffer while no message is partial.
    pub(crate) fn release_idle_input(&mut self) {
        if self.input.is_empty() {
            buffers::release(&mut self.input, Spare::Input);
        }
    }

    /// Moves the deadline to `at`.
    pub(crate) fn move_deadline(&mut self, at: Instant) {
        self.deadline.as_mut().reset(at.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_and_newest_unwritten_events_count_their_own_ages_those_between_the_midpoint() {
        let events = |count, newest_after_us| UnwrittenEvents {
            oldest: Instant::now(),
            count,
            newest_after_us,
        };
        assert_eq!(
            events(1, 0).ages(0.004),
            [(0.004, 1), (0.004, 0), (0.004, 0)]
        );
        assert_eq!(
            events(2, 3000).ages(0.004),
            [(0.004, 1), (0.001, 1), (0.0025, 0)]
        );
        assert_eq!(
            events(5, 4000).ages(0.006),
            [(0.006, 1), (0.002, 1), (0.004, 3)]
        );
    }
}
