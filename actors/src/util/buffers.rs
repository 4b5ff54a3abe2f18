//! Per-thread spare I/O buffers: a connection holds a read or write buffer only while it has
//! bytes in it, yet a busy connection does not allocate one per wake-up. Each event-loop
//! thread keeps one spare of each kind; connections on that thread take it when they need a
//! buffer and give it back when theirs is empty.

use bytes::BytesMut;
use std::cell::Cell;

/// Buffers larger than this are freed rather than kept as the spare.
const LARGEST_SPARE: usize = 64 * 1024;
/// The least a buffer is allocated with when there is no spare.
const FRESH_CAPACITY: usize = 4096;

thread_local! {
    static SPARE_INPUT: Cell<Option<BytesMut>> = const { Cell::new(None) };
    static SPARE_OUTPUT: Cell<Option<BytesMut>> = const { Cell::new(None) };
    static SPARE_FRAMES: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// Which spare a buffer comes from and goes back to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Spare {
    /// Bytes read from a socket, not yet decoded.
    Input,
    /// Encoded messages not yet written to a socket.
    Output,
    /// A WebSocket's framed output, filled from the output while that still holds its
    /// buffer (sharing the output's spare, each write would allocate one of them anew).
    Frames,
}

impl Spare {
    fn with<R>(self, f: impl FnOnce(&Cell<Option<BytesMut>>) -> R) -> R {
        match self {
            Self::Input => SPARE_INPUT.with(f),
            Self::Output => SPARE_OUTPUT.with(f),
            Self::Frames => SPARE_FRAMES.with(f),
        }
    }
}

/// Makes sure `buffer` has room for `additional` bytes, taking this thread's spare first
/// when it holds no memory, or else allocating at least [`FRESH_CAPACITY`] bytes (a buffer
/// grown a message at a time would be reallocated several times per wake-up). Inline: it
/// runs once per reply, and a buffer with room only needs the check.
#[inline]
pub(crate) fn reserve(buffer: &mut BytesMut, additional: usize, spare: Spare) {
    if buffer.capacity() == 0 {
        take_spare(buffer, additional, spare);
    }
    buffer.reserve(additional);
}

/// Gives `buffer`, which holds no memory, this thread's spare, or else a fresh buffer of
/// at least [`FRESH_CAPACITY`] bytes.
fn take_spare(buffer: &mut BytesMut, additional: usize, spare: Spare) {
    match spare.with(Cell::take) {
        Some(taken) => *buffer = taken,
        None => *buffer = BytesMut::with_capacity(additional.max(FRESH_CAPACITY)),
    }
}

/// Gives an empty `buffer`'s memory back as this thread's spare (or frees it), leaving the
/// connection holding none.
pub(crate) fn release(buffer: &mut BytesMut, spare: Spare) {
    debug_assert!(buffer.is_empty(), "only empty buffers are released");
    let mut taken = std::mem::take(buffer);
    if taken.capacity() == 0 || taken.capacity() > LARGEST_SPARE {
        return;
    }
    taken.clear();
    spare.with(|cell| cell.set(Some(taken)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_buffer_is_reused_by_the_next_reserve_on_the_thread() {
        let mut first = BytesMut::new();
        reserve(&mut first, 4096, Spare::Input);
        let address = first.as_ptr();
        first.extend_from_slice(b"abc");
        first.clear();
        release(&mut first, Spare::Input);
        assert_eq!(first.capacity(), 0, "the connection holds no memory");

        let mut second = BytesMut::new();
        reserve(&mut second, 100, Spare::Input);
        assert_eq!(second.as_ptr(), address, "the spare was reused");

        let mut third = BytesMut::new();
        reserve(&mut third, 100, Spare::Output);
        assert_ne!(third.as_ptr(), address, "input and output spares are apart");
    }

    #[test]
    fn a_buffer_without_a_spare_starts_at_the_fresh_capacity() {
        // Another test on this thread may have left a spare: take it first.
        let mut spare_holder = BytesMut::new();
        reserve(&mut spare_holder, 1, Spare::Output);
        let mut fresh = BytesMut::new();
        reserve(&mut fresh, 15, Spare::Output);
        assert!(fresh.capacity() >= FRESH_CAPACITY, "{}", fresh.capacity());
    }

    #[test]
    fn oversized_buffers_are_freed_not_kept() {
        let mut big = BytesMut::with_capacity(LARGEST_SPARE * 2);
        release(&mut big, Spare::Output);
        assert_eq!(big.capacity(), 0);
        let mut next = BytesMut::new();
        reserve(&mut next, 10, Spare::Output);
        assert!(next.capacity() < LARGEST_SPARE * 2);
    }
}
