//! [`Roster`]: the connections of each worker, so that a change of the hub's state (a
//! registry shard or the bus replaced, shutdown begun) reaches every connection as one
//! message in its mailbox. Each connection watching a channel instead cost a boxed future
//! per connection and a poll of it on every wake-up.
//!
//! A connection joins before it reads the hub's state, and the supervisor tells the roster
//! after it has changed the state, so every connection sees every change: either in the
//! state it read or in a message that follows it.

use crate::hub::state::{HubChanged, HubState};
use actix::{Actor, Context, Handler, WeakAddr};
use slab::Slab;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Per worker shard, the connections (actors of type `A`) running on it. Generic so that
/// the hub does not depend on the connection layer above it.
pub(crate) struct Roster<A: Actor> {
    /// Indexed like the workers; each connection is held weakly, under the key it got.
    shards: Box<[Mutex<Slab<WeakAddr<A>>>]>,
}

/// Whoever must hear of every change of the hub's state: the supervisor tells it.
pub(crate) trait HubListeners: Send + Sync {
    /// Sends `state` to every listener still running.
    fn tell(&self, state: &HubState);
}

impl<A> Roster<A>
where
    A: Actor<Context = Context<A>> + Handler<HubChanged>,
{
    /// No connection yet, on `shards` shards.
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
        }
    }

    /// Adds a connection of `shard`; returns its key for [`Self::leave`].
    pub(crate) fn join(&self, shard: usize, connection: WeakAddr<A>) -> usize {
        self.shards.get(shard).map_or(usize::MAX, |connections| {
            lock(connections).insert(connection)
        })
    }

    /// Removes the connection that joined `shard` under `key`.
    pub(crate) fn leave(&self, shard: usize, key: usize) {
        if let Some(connections) = self.shards.get(shard) {
            lock(connections).try_remove(key);
        }
    }
}

impl<A> HubListeners for Roster<A>
where
    A: Actor<Context = Context<A>> + Handler<HubChanged>,
{
    fn tell(&self, state: &HubState) {
        for connections in self.shards.iter() {
            for (_, connection) in lock(connections).iter() {
                if let Some(connection) = connection.upgrade() {
                    connection.do_send(HubChanged(state.clone()));
                }
            }
        }
    }
}

/// The slab stays whole even if a holder panicked: every update is one slab operation.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
