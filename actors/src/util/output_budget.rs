//! The server-wide bound on unsent output (`max_pending_total`). Each connection's unsent
//! output is bounded by `max_pending_bytes`, but with every connection at that bound the
//! server would hold `max_connections × max_pending_bytes` (about 10 GiB with the
//! defaults). Output beyond a free [`FREE_BYTES`] per connection is charged to one budget
//! for the whole server.
//!
//! When a connection needs more than the budget has left (and its kernel buffer takes none
//! of it), the connection that has gone longest without the kernel taking any of its
//! output is cut off, not necessarily the one asking: charged connections that took
//! nothing since before the asker last made progress are told to go (their charge is set
//! aside until they have), and the asker is charged. Only when the asker itself is the
//! longest stalled is it refused and cut off. So an attack by clients that never read
//! exhausts the budget for themselves, not for a client that reads and lags for a moment.
//!
//! Progress is ordered by a counter in the ledger, not by the clock: a charged
//! connection's stamp is the count when it was charged or when its kernel last took
//! output. Charges set aside for connections told to go are bounded by the limit too, so
//! at most twice the limit is held, the second half only until those connections' threads
//! get to them.
//!
//! A connection whose output stays under [`FREE_BYTES`] — every client that reads — never
//! touches the ledger, so the fast paths stay free of contention.

use slab::Slab;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Unsent output each connection may hold without charging the budget.
pub(crate) const FREE_BYTES: usize = 64 * 1024;

/// Tells a connection to go: it has held the budget longest without progress. Called
/// outside the ledger's lock, from whichever thread needed room.
pub(crate) type Evict = Arc<dyn Fn() + Send + Sync>;

/// How a connection is told to go, kept by its [`OutputCharge`] as is (no allocation)
/// and made into an [`Evict`] only when the connection is first charged — most never are.
pub(crate) trait Evictee: Clone + Send + Sync + 'static {
    /// Tells the connection to go.
    fn evict(&self);
}

/// Bytes of unsent output charged, server-wide, against a limit.
pub(crate) struct OutputBudget {
    /// The most that connections not told to go may have charged at once; also the most
    /// set aside for connections told to go.
    limit: usize,
    /// Who has charged what.
    ledger: Mutex<Ledger>,
}

impl std::fmt::Debug for OutputBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ledger = lock(&self.ledger);
        f.debug_struct("OutputBudget")
            .field("limit", &self.limit)
            .field("live", &ledger.live)
            .field("evicted", &ledger.evicted)
            .field("holders", &ledger.holders.len())
            .finish()
    }
}

/// The charges of the connections past their free bytes.
#[derive(Default)]
struct Ledger {
    /// Charged by connections not told to go; at most the limit.
    live: usize,
    /// Charged by connections told to go that have not given it back yet; at most the
    /// limit.
    evicted: usize,
    /// Counts charges and progress; orders the holders' stamps.
    clock: u64,
    /// The connections with something charged.
    holders: Slab<Holder>,
}

/// What a settlement may do besides setting the charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Nothing: growth that does not fit is refused.
    Plain,
    /// Counts as progress: the connection's kernel took output.
    Taken,
    /// Growth that does not fit tells holders stalled longer to go.
    OrEvict,
}

/// One connection's entry in the ledger while it has something charged.
struct Holder {
    /// What it has charged.
    bytes: usize,
    /// The clock when it was charged or its kernel last took output.
    stamp: u64,
    /// It was told to go; its bytes count as `evicted`, and it may not grow.
    evicted: bool,
    /// How to tell it to go.
    evict: Evict,
}

impl Ledger {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Sets the charge of `holder` (a key, or `None` for a connection with nothing
    /// charged) to `wanted`; answers false, changing nothing, when it must grow and cannot.
    /// Holders told to go (with [`Settle::OrEvict`]) are added to `told`; a new holder is
    /// told to go through what `make_evict` makes.
    fn settle(
        &mut self,
        limit: usize,
        holder: &mut Option<usize>,
        wanted: usize,
        how: Settle,
        make_evict: &dyn Fn() -> Evict,
        told: &mut Vec<Evict>,
    ) -> bool {
        let entry = holder.and_then(|key| self.holders.get(key));
        let (held, evicted, stamp) = entry.map_or((0, false, None), |entry| {
            (entry.bytes, entry.evicted, Some(entry.stamp))
        });
        if wanted > held {
            let growth = wanted - held;
            if evicted {
                return false;
            }
            if self.live + growth > limit {
                // A new holder is charged as of now: every holder is older.
                let stamp = stamp.unwrap_or(self.clock + 1);
                if how != Settle::OrEvict
                    || !self.evict_stalled(limit, growth, *holder, stamp, told)
                {
                    return false;
                }
            }
            self.live += growth;
        } else if evicted {
            self.evicted -= held - wanted;
        } else {
            self.live -= held - wanted;
        }
        match *holder {
            Some(key) if wanted == 0 => {
                self.holders.try_remove(key);
                *holder = None;
            }
            Some(key) => {
                let stamp = (how == Settle::Taken).then(|| self.tick());
                if let Some(entry) = self.holders.get_mut(key) {
                    entry.bytes = wanted;
                    entry.stamp = stamp.unwrap_or(entry.stamp);
                }
            }
            None if wanted == 0 => {}
            None => {
                let stamp = self.tick();
                *holder = Some(self.holders.insert(Holder {
                    bytes: wanted,
                    stamp,
                    evicted: false,
                    evict: make_evict(),
                }));
            }
        }
        true
    }

    /// Tells holders other than `asker`, stalled since before `stamp`, longest stalled
    /// first, to go until `growth` fits; answers false when it cannot fit (the asker is
    /// the longest stalled, or a limit's worth is already set aside). Those told before
    /// it gives up stay told: they were stalled longer than the asker, cut off anyway.
    fn evict_stalled(
        &mut self,
        limit: usize,
        growth: usize,
        asker: Option<usize>,
        stamp: u64,
        told: &mut Vec<Evict>,
    ) -> bool {
        while self.live + growth > limit {
            let Some((_, victim)) = self
                .holders
                .iter_mut()
                .filter(|(key, entry)| !entry.evicted && Some(*key) != asker && entry.stamp < stamp)
                .min_by_key(|(_, entry)| entry.stamp)
            else {
                return false;
            };
            if self.evicted + victim.bytes > limit {
                return false;
            }
            victim.evicted = true;
            self.live -= victim.bytes;
            self.evicted += victim.bytes;
            told.push(Arc::clone(&victim.evict));
        }
        true
    }
}

impl OutputBudget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            ledger: Mutex::default(),
        })
    }
}

/// One connection's share of the budget; given back when dropped.
pub(crate) struct OutputCharge<E: Evictee> {
    /// The budget charged.
    budget: Arc<OutputBudget>,
    /// Tells this connection to go when it is the longest stalled and room is needed.
    evictee: E,
    /// This connection's key in the ledger while it has something charged.
    holder: Option<usize>,
}

impl<E: Evictee> std::fmt::Debug for OutputCharge<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputCharge")
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl<E: Evictee> OutputCharge<E> {
    /// A connection's charge, empty; `evictee` tells the connection to go.
    pub(crate) fn new(budget: Arc<OutputBudget>, evictee: E) -> Self {
        Self {
            budget,
            evictee,
            holder: None,
        }
    }

    /// Charges for `pending` bytes of unsent output (those beyond [`FREE_BYTES`]); answers
    /// false, changing nothing, when the budget has no room for the growth (or this
    /// connection was told to go). Shrinking always succeeds.
    pub(crate) fn settle(&mut self, pending: usize) -> bool {
        self.update(pending, Settle::Plain)
    }

    /// Like [`Self::settle`], but makes room by telling the connections that have gone
    /// longer than this one without progress to go; answers false only when this one is
    /// the longest stalled (or a limit's worth is already set aside for those told to go).
    pub(crate) fn settle_or_evict(&mut self, pending: usize) -> bool {
        self.update(pending, Settle::OrEvict)
    }

    /// The kernel took output; `pending` is what is left. Shrinks the charge and counts
    /// as progress.
    pub(crate) fn taken(&mut self, pending: usize) {
        self.update(pending, Settle::Taken);
    }

    fn update(&mut self, pending: usize, how: Settle) -> bool {
        let wanted = pending.saturating_sub(FREE_BYTES);
        if wanted == 0 && self.holder.is_none() {
            return true;
        }
        let mut told = Vec::new();
        let fits = lock(&self.budget.ledger).settle(
            self.budget.limit,
            &mut self.holder,
            wanted,
            how,
            &|| {
                let evictee = self.evictee.clone();
                Arc::new(move || evictee.evict())
            },
            &mut told,
        );
        for evict in told {
            evict();
        }
        fits
    }

    /// Whether anything is charged (the output is past [`FREE_BYTES`]).
    pub(crate) fn is_charged(&self) -> bool {
        self.holder.is_some()
    }
}

impl<E: Evictee> Drop for OutputCharge<E> {
    fn drop(&mut self) {
        if self.holder.is_some() {
            self.update(0, Settle::Plain);
        }
    }
}

/// The ledger stays consistent even if a holder panicked: no update panics half-way.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the times it was told to go.
    #[derive(Clone)]
    struct Counter(Arc<AtomicUsize>);

    impl Evictee for Counter {
        fn evict(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A charge whose evictions are counted in the answer.
    fn charge(budget: &Arc<OutputBudget>) -> (OutputCharge<Counter>, Arc<AtomicUsize>) {
        let told = Arc::new(AtomicUsize::new(0));
        let counter = Counter(Arc::clone(&told));
        (OutputCharge::new(Arc::clone(budget), counter), told)
    }

    fn charged(budget: &OutputBudget) -> (usize, usize) {
        let ledger = lock(&budget.ledger);
        (ledger.live, ledger.evicted)
    }

    #[test]
    fn output_under_the_free_bytes_charges_nothing() {
        let budget = OutputBudget::new(0);
        let (mut charge, _) = charge(&budget);
        assert!(charge.settle(FREE_BYTES));
        assert!(!charge.is_charged());
        assert!(!charge.settle(FREE_BYTES + 1), "a budget of 0 has no room");
        assert!(
            !charge.settle_or_evict(FREE_BYTES + 1),
            "nobody to evict either"
        );
    }

    #[test]
    fn charges_grow_shrink_and_are_given_back_on_drop() {
        let budget = OutputBudget::new(100);
        let (mut first, _) = charge(&budget);
        let (mut second, _) = charge(&budget);
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
        assert_eq!(charged(&budget), (0, 0));
    }

    #[test]
    fn the_longest_stalled_holder_goes_not_the_one_making_progress() {
        let budget = OutputBudget::new(100);
        let (mut stalled, stalled_told) = charge(&budget);
        let (mut reader, reader_told) = charge(&budget);
        assert!(stalled.settle(FREE_BYTES + 60));
        assert!(reader.settle(FREE_BYTES + 30));
        reader.taken(FREE_BYTES + 20);
        assert!(
            !reader.settle(FREE_BYTES + 50),
            "90 + 10 > 100 without evicting"
        );
        assert!(reader.settle_or_evict(FREE_BYTES + 50));
        assert_eq!(stalled_told.load(Ordering::Relaxed), 1);
        assert_eq!(charged(&budget), (50, 60), "set aside until it is gone");
        assert!(
            !stalled.settle(FREE_BYTES + 61),
            "a connection told to go may not grow"
        );
        assert!(!stalled.settle_or_evict(FREE_BYTES + 61));
        stalled.taken(FREE_BYTES + 10);
        assert_eq!(charged(&budget), (50, 10));
        drop(stalled);
        assert_eq!(charged(&budget), (50, 0));
        assert_eq!(reader_told.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_asker_is_refused_when_it_is_the_longest_stalled() {
        let budget = OutputBudget::new(100);
        let (mut sluggard, sluggard_told) = charge(&budget);
        let (mut other, other_told) = charge(&budget);
        assert!(sluggard.settle(FREE_BYTES + 50));
        assert!(other.settle(FREE_BYTES + 50));
        assert!(
            !sluggard.settle_or_evict(FREE_BYTES + 51),
            "every other holder took output more recently"
        );
        assert_eq!(other_told.load(Ordering::Relaxed), 0);
        assert_eq!(charged(&budget), (100, 0));
        // A newly charged connection is as fresh as can be: the older ones go first.
        let (mut newcomer, _) = charge(&budget);
        assert!(newcomer.settle_or_evict(FREE_BYTES + 60));
        assert_eq!(sluggard_told.load(Ordering::Relaxed), 1);
        assert_eq!(other_told.load(Ordering::Relaxed), 1);
        assert_eq!(charged(&budget), (60, 100));
        let (mut another, _) = charge(&budget);
        assert!(
            !another.settle_or_evict(FREE_BYTES + 41),
            "a limit's worth is already set aside"
        );
        drop((sluggard, other, newcomer));
        assert_eq!(charged(&budget), (0, 0));
    }
}
