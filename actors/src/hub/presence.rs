//! [`Presence`]: which registry shards hold connections bound to a user, so that the bus
//! hands an event (or an invalidation) only to those shards, and answers at once for a
//! user bound nowhere.
//!
//! The connections keep it, not the registry: a connection counts itself in right after it
//! sends its `Bind` to its shard, and out when its binding ends. So whoever sees the count
//! sends its message to that shard after the `Bind`, and the shard has the binding when the
//! message arrives. A registry restart changes nothing here: the bindings, and so the
//! counts, live on in the connections.
//!
//! It is also the one place this node's connections are counted: a publish answers its
//! count, and so does `TetherHandle::connections` (the admin API's `/connections`). In a
//! cluster it also tells the [`Broker`] of each connection bound and unbound, by name, so
//! that the broker follows the users this node has and counts them for the other nodes.
//!
//! Users are counted under a hash of their name (64 bits). Two names that share a hash
//! only make an event visit a shard where it finds nobody, and add up in each other's
//! counts; none is ever skipped. That hash is keyed (`RandomState`), so it is already as
//! good a spread as a map needs: the maps use it as their own hash rather than hashing it a
//! second time (a SipHash per shard looked at, per event).

use crate::hub::broker::Broker;
use nohash_hasher::IntMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::oneshot;

/// One shard's connections per user, under the user's name hash, which is the map's hash
/// too.
type Counts = IntMap<u64, u32>;

/// Per registry shard, how many connections are bound to each user (by name hash).
#[derive(Debug)]
pub(crate) struct Presence {
    /// Hashes user names, the same way for every shard.
    hasher: RandomState,
    /// Indexed like the registry shards; only bound users have an entry.
    shards: Box<[Mutex<Counts>]>,
    /// In a cluster, told of every change.
    broker: Option<Arc<dyn Broker>>,
}

impl Presence {
    /// Nobody bound, on `shards` shards.
    #[cfg(test)]
    pub(crate) fn new(shards: usize) -> Self {
        Self::with_broker(shards, None)
    }

    /// Nobody bound, on `shards` shards; every change is also told to `broker`.
    pub(crate) fn with_broker(shards: usize, broker: Option<Arc<dyn Broker>>) -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            broker,
        }
    }

    /// A connection of `shard` is now bound to `user`; call after its `Bind` was sent. In a
    /// cluster, answers what resolves once the broker follows the user's channel (SPEC §8:
    /// the connection is bound for the whole cluster only then).
    pub(crate) fn enter(&self, shard: usize, user: &str) -> Option<oneshot::Receiver<()>> {
        let key = self.hasher.hash_one(user);
        let counts = self.shards.get(shard)?;
        *lock(counts).entry(key).or_default() += 1;
        let broker = self.broker.as_ref()?;
        let (subscribed, confirmed) = oneshot::channel();
        broker.presence(user, 1, Some(subscribed));
        Some(confirmed)
    }

    /// A connection of `shard` is no longer bound to `user`.
    pub(crate) fn leave(&self, shard: usize, user: &str) {
        let key = self.hasher.hash_one(user);
        if let Some(counts) = self.shards.get(shard) {
            let mut counts = lock(counts);
            if let Some(count) = counts.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&key);
                }
                if let Some(broker) = &self.broker {
                    broker.presence(user, -1, None);
                }
            }
        }
    }

    /// How many connections of this node are bound to `user`.
    pub(crate) fn count(&self, user: &str) -> usize {
        self.holding(user).map(|(_, connections)| connections).sum()
    }

    /// The shards holding at least one connection bound to `user`, in shard order, each
    /// with how many it holds.
    pub(crate) fn holding(&self, user: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
        let key = self.hasher.hash_one(user);
        self.shards
            .iter()
            .enumerate()
            .filter_map(move |(shard, counts)| {
                let connections = *lock(counts).get(&key)?;
                Some((shard, connections as usize))
            })
    }

    /// Every shard's counts under one lock each, for many look-ups in a row (a slice of a
    /// batch): connections entering or leaving wait until it is dropped. Shards are locked
    /// in order, and nothing else holds two at once.
    pub(crate) fn lock_all(&self) -> PresenceView<'_> {
        PresenceView {
            hasher: &self.hasher,
            shards: self.shards.iter().map(lock).collect(),
        }
    }
}

/// Every shard's counts, locked for a run of look-ups (see [`Presence::lock_all`]).
pub(crate) struct PresenceView<'a> {
    /// Hashes user names as [`Presence`] does.
    hasher: &'a RandomState,
    /// The shards' counts, in shard order.
    shards: Vec<MutexGuard<'a, Counts>>,
}

impl PresenceView<'_> {
    /// As [`Presence::holding`].
    pub(crate) fn holding(&self, user: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
        let key = self.hasher.hash_one(user);
        self.shards
            .iter()
            .enumerate()
            .filter_map(move |(shard, counts)| {
                let connections = *counts.get(&key)?;
                Some((shard, connections as usize))
            })
    }
}

/// The counts stay whole even if a holder panicked: every update is one map operation.
fn lock(counts: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    counts.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_held_by_the_shards_of_its_bound_connections_until_the_last_leaves() {
        let presence = Presence::new(3);
        let held = |user| presence.holding(user).collect::<Vec<_>>();
        assert!(presence.holding("alice").next().is_none());
        presence.enter(2, "alice");
        presence.enter(0, "alice");
        presence.enter(2, "alice");
        presence.enter(1, "bob");
        assert_eq!(held("alice"), [(0, 1), (2, 2)]);
        assert_eq!(held("bob"), [(1, 1)]);
        presence.leave(2, "alice");
        assert_eq!(held("alice"), [(0, 1), (2, 1)], "one is left on 2");
        presence.leave(2, "alice");
        presence.leave(0, "alice");
        assert!(presence.holding("alice").next().is_none());
        assert_eq!(held("bob"), [(1, 1)]);
        let view = presence.lock_all();
        assert_eq!(view.holding("bob").collect::<Vec<_>>(), [(1, 1)]);
        assert!(view.holding("alice").next().is_none());
    }

    #[test]
    fn leaving_where_nobody_entered_changes_nothing() {
        let presence = Presence::new(1);
        presence.leave(0, "carol");
        presence.leave(5, "carol");
        presence.enter(5, "carol");
        assert!(presence.holding("carol").next().is_none());
    }
}
