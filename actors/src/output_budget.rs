//! The server-wide bound on unsent output (`max_pending_total`). Each connection's unsent
//! output is bounded by `max_pending_bytes`, but with every connection at that bound the
//! server would hold `max_connections × max_pending_bytes` (about 10 GiB with the
//! defaults). Output beyond a free [`FREE_BYTES`] per connection is charged to one budget
//! for the whole server; a connection that needs more while the budget is spent (and the
//! kernel takes none of it) is cut off like one over `max_pending_bytes`.
//!
//! A connection whose output stays under [`FREE_BYTES`] — every client that reads — never
//! touches the shared counter, so the fast paths stay free of contention.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Unsent output each connection may hold without charging the budget.
pub(crate) const FREE_BYTES: usize = 64 * 1024;

/// Bytes of unsent output charged, server-wide, against a limit.
#[derive(Debug)]
pub(crate) struct OutputBudget {
    /// The most that may be charged at once.
    limit: usize,
    /// What is charged now.
    charged: AtomicUsize,
}

impl OutputBudget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            charged: AtomicUsize::new(0),
        })
    }

    /// Takes `bytes` from the budget; answers false, taking nothing, when they do not fit.
    fn take(&self, bytes: usize) -> bool {
        self.charged
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |charged| {
                charged
                    .checked_add(bytes)
                    .filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    /// Gives `bytes` back.
    fn give_back(&self, bytes: usize) {
        self.charged.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One connection's share of the budget; given back when dropped.
#[derive(Debug)]
pub(crate) struct OutputCharge {
    /// The budget charged.
    budget: Arc<OutputBudget>,
    /// What this connection has charged.
    bytes: usize,
}

impl OutputCharge {
    /// A connection's charge, empty.
    pub(crate) fn new(budget: Arc<OutputBudget>) -> Self {
        Self { budget, bytes: 0 }
    }

    /// Charges for `pending` bytes of unsent output (those beyond [`FREE_BYTES`]); answers
    /// false, changing nothing, when the budget has no room for the growth. Shrinking
    /// always succeeds.
    pub(crate) fn settle(&mut self, pending: usize) -> bool {
        let wanted = pending.saturating_sub(FREE_BYTES);
        if wanted > self.bytes {
            if !self.budget.take(wanted - self.bytes) {
                return false;
            }
        } else if wanted < self.bytes {
            self.budget.give_back(self.bytes - wanted);
        }
        self.bytes = wanted;
        true
    }

    /// Whether anything is charged (the output is past [`FREE_BYTES`]).
    pub(crate) fn is_charged(&self) -> bool {
        self.bytes > 0
    }
}

impl Drop for OutputCharge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_under_the_free_bytes_charges_nothing() {
        let budget = OutputBudget::new(0);
        let mut charge = OutputCharge::new(Arc::clone(&budget));
        assert!(charge.settle(FREE_BYTES));
        assert!(!charge.is_charged());
        assert!(!charge.settle(FREE_BYTES + 1), "a budget of 0 has no room");
    }

    #[test]
    fn charges_grow_shrink_and_are_given_back_on_drop() {
        let budget = OutputBudget::new(100);
        let mut first = OutputCharge::new(Arc::clone(&budget));
        let mut second = OutputCharge::new(Arc::clone(&budget));
        assert!(first.settle(FREE_BYTES + 60));
        assert!(!second.settle(FREE_BYTES + 41), "60 + 41 is over 100");
        assert!(!second.is_charged(), "a refused charge takes nothing");
        assert!(second.settle(FREE_BYTES + 40));
        assert!(first.settle(FREE_BYTES + 10), "shrinking gives 50 back");
        assert!(second.settle(FREE_BYTES + 90));
        drop(second);
        assert!(
            first.settle(FREE_BYTES + 100),
            "the dropped charge was given back"
        );
        assert!(first.settle(0));
        assert_eq!(budget.charged.load(Ordering::Acquire), 0);
    }
}
