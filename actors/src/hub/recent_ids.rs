//! Idempotent publishing on a node alone (SPEC §6): the event ids accepted in the last
//! [`ID_LIFETIME`], each with the time its event was stamped with, so that a retry with
//! the same id is answered as a duplicate instead of being delivered again.
//!
//! In a cluster, Redis keeps the ids instead (in the script that publishes), so that they
//! hold cluster-wide; this set is the no-Redis path only. It is shared by every bus a
//! supervisor starts (a retry after a bus restart is still recognized) and bounded: past
//! [`MAX_IDS`] the oldest id is forgotten early (counted, and logged once).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an accepted id is remembered.
pub const ID_LIFETIME: Duration = Duration::from_secs(300);
/// Most ids remembered at once (about 100 MB with 128-character ids; far less with UUIDs).
pub const MAX_IDS: usize = 500_000;
/// Longest id accepted, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// Whether `id` is a valid event id: 1 to [`MAX_ID_CHARS`] characters.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().nth(MAX_ID_CHARS).is_none()
}

/// The ids accepted recently.
#[derive(Debug)]
pub(crate) struct RecentIds {
    /// The ids, each with its event's time (as on the wire) and when it was accepted.
    state: Mutex<Ids>,
    /// Most ids held ([`MAX_IDS`] but for tests).
    max_ids: usize,
}

#[derive(Debug, Default)]
struct Ids {
    /// id → (its event's time, its place in `order`).
    by_id: HashMap<Box<str>, (i64, u64)>,
    /// The ids in the order accepted, each with when and its place (counting from 0 since
    /// the start), for expiry; an entry whose id is no longer held at that place is stale.
    order: VecDeque<(Instant, u64, Box<str>)>,
    /// The place of the next id accepted.
    next: u64,
    /// Ids forgotten before their lifetime because the set was full.
    evicted: u64,
}

impl Default for RecentIds {
    fn default() -> Self {
        Self::with_max(MAX_IDS)
    }
}

impl RecentIds {
    fn with_max(max_ids: usize) -> Self {
        Self {
            state: Mutex::new(Ids::default()),
            max_ids,
        }
    }

    /// Accepts `id` for an event stamped `time`, or answers the time of the event that
    /// was accepted with it in the last [`ID_LIFETIME`] (a duplicate).
    pub(crate) fn accept(&self, id: &str, time: i64, now: Instant) -> Result<(), i64> {
        let mut ids = self.lock();
        ids.expire(now);
        if let Some(&(first, _)) = ids.by_id.get(id) {
            return Err(first);
        }
        if ids.by_id.len() >= self.max_ids && ids.pop_oldest().is_some() {
            ids.evicted += 1;
            if ids.evicted == 1 {
                log::warn!(
                    "{} event ids were accepted in the last {}s: the oldest are forgotten \
                     early, so a late retry of theirs would be delivered again",
                    self.max_ids,
                    ID_LIFETIME.as_secs()
                );
            }
        }
        let id: Box<str> = Box::from(id);
        let place = ids.next;
        ids.next += 1;
        ids.order.push_back((now, place, id.clone()));
        ids.by_id.insert(id, (time, place));
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ids> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl Ids {
    /// Drops the ids older than [`ID_LIFETIME`].
    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _, _)| now.duration_since(*at) >= ID_LIFETIME)
        {
            self.pop_oldest();
        }
    }

    /// Drops the oldest entry of `order` that is still held, and the stale ones before
    /// it; answers the id dropped.
    fn pop_oldest(&mut self) -> Option<Box<str>> {
        while let Some((_, place, id)) = self.order.pop_front() {
            if self.by_id.get(&id).is_some_and(|(_, held)| *held == place) {
                self.by_id.remove(&id);
                return Some(id);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_a_duplicate_for_its_lifetime_then_new_again() {
        let ids = RecentIds::default();
        let start = Instant::now();
        assert_eq!(ids.accept("a", 10, start), Ok(()));
        assert_eq!(ids.accept("a", 20, start + Duration::from_secs(1)), Err(10));
        assert_eq!(ids.accept("b", 30, start), Ok(()));
        let later = start + ID_LIFETIME + Duration::from_millis(1);
        assert_eq!(ids.accept("a", 40, later), Ok(()));
        assert_eq!(ids.accept("a", 50, later), Err(40));
    }

    #[test]
    fn a_full_set_drops_the_oldest() {
        let ids = RecentIds::with_max(2);
        let now = Instant::now();
        assert_eq!(ids.accept("a", 2, now), Ok(()));
        assert_eq!(ids.accept("b", 3, now), Ok(()));
        assert_eq!(ids.accept("c", 4, now), Ok(()));
        assert_eq!(ids.lock().by_id.len(), 2);
        assert_eq!(ids.accept("c", 5, now), Err(4));
    }

    #[test]
    fn ids_are_one_to_128_characters() {
        assert!(!valid_id(""));
        assert!(valid_id("x"));
        assert!(valid_id(&"é".repeat(128)));
        assert!(!valid_id(&"é".repeat(129)));
    }
}
