//! [`UserRegistryActor`]: which connections are bound to which user name, and fan-out of
//! what the bus hands it to exactly those connections.
//!
//! The registry is sharded: one actor per worker arbiter, holding the connections of that
//! worker, so binding and fan-out stay on the connection's own thread; the bus hands every
//! event to each shard once.
//!
//! The registry's map is a cache of what the connections know: each connection holds its
//! own binding and announces it again to a fresh registry after a restart. How full it is
//! shows in `tether_registry_bindings` (per worker); how many connections are bound is
//! `Presence`'s to say, not the registry's.

pub use crate::hub::messages::{Bind, Unbind};
use crate::hub::messages::{
    BindingId, DeathNotice, Deliver, DeliverBatch, Drain, EventInFlight, Push, Revoke, ShardEvent,
};
use crate::util::metrics::Metrics;
use actix::prelude::*;
use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// One connection bound to a user.
struct BoundConnection {
    /// Which login of that connection this entry is for.
    binding: BindingId,
    /// Where pushes for the connection go.
    connection: Recipient<Push>,
}

/// Maps user names to the connections bound to them.
pub struct UserRegistryActor {
    /// Bound connections per user; a user with none has no entry.
    by_user: HashMap<Arc<str>, Vec<BoundConnection>>,
    /// Counts deliveries.
    metrics: Metrics,
    /// The number of entries in `by_user`, as `tether_registry_bindings` shows it.
    bindings: Gauge,
    /// Tells the supervisor when this actor is gone, stopped or panicked.
    _death: DeathNotice,
}

impl UserRegistryActor {
    /// An empty registry that counts its entries in `bindings` (at zero) and reports its
    /// end through `death`.
    pub(crate) fn new(metrics: Metrics, bindings: Gauge, death: DeathNotice) -> Self {
        Self {
            by_user: HashMap::new(),
            metrics,
            bindings,
            _death: death,
        }
    }

    /// `removed` entries are gone from `by_user`.
    fn forget(&self, removed: usize) {
        if removed > 0 {
            self.bindings.dec_by(removed as i64);
        }
    }
}

impl Actor for UserRegistryActor {
    type Context = Context<Self>;
}

impl Handler<Bind> for UserRegistryActor {
    type Result = ();

    fn handle(&mut self, msg: Bind, _: &mut Context<Self>) {
        // Most users have one connection: room for exactly one (`Vec` would start at four).
        let entries = self
            .by_user
            .entry(msg.user)
            .or_insert_with(|| Vec::with_capacity(1));
        match entries
            .iter_mut()
            .find(|entry| entry.binding == msg.binding)
        {
            Some(entry) => entry.connection = msg.connection,
            None => {
                entries.push(BoundConnection {
                    binding: msg.binding,
                    connection: msg.connection,
                });
                self.bindings.inc();
            }
        }
    }
}

impl Handler<Unbind> for UserRegistryActor {
    type Result = ();

    fn handle(&mut self, msg: Unbind, _: &mut Context<Self>) {
        if let Some(entries) = self.by_user.get_mut(&*msg.user) {
            let before = entries.len();
            entries.retain(|entry| entry.binding != msg.binding);
            let removed = before - entries.len();
            if entries.is_empty() {
                self.by_user.remove(&*msg.user);
            }
            self.forget(removed);
        }
    }
}

impl Handler<Deliver> for UserRegistryActor {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) {
        let delivered = self.hand_out(&msg.user, msg.message, msg.in_flight, msg.accepted);
        self.metrics.events_delivered.inc_by(delivered as u64);
    }
}

impl Handler<DeliverBatch> for UserRegistryActor {
    type Result = ();

    fn handle(&mut self, msg: DeliverBatch, _: &mut Context<Self>) {
        let mut delivered = 0;
        for event in msg.events {
            if let Some(publish) = msg.batch.get(event.index) {
                delivered +=
                    self.hand_out(&publish.user, event.message, event.in_flight, msg.accepted);
            }
        }
        // Once per message: the counter is shared by every worker's thread.
        self.metrics.events_delivered.inc_by(delivered as u64);
    }
}

impl UserRegistryActor {
    /// Pushes one event to every connection bound to `user`; answers how many.
    fn hand_out(
        &mut self,
        user: &str,
        message: Bytes,
        in_flight: Arc<EventInFlight>,
        accepted: Instant,
    ) -> usize {
        if let Some(entries) = self.by_user.get_mut(user) {
            // A connection that died without unbinding is dropped here.
            let before = entries.len();
            entries.retain(|entry| entry.connection.connected());
            let dead = before - entries.len();
            let event = Arc::new(ShardEvent {
                message,
                accepted,
                _in_flight: in_flight,
            });
            for entry in entries.iter() {
                entry.connection.do_send(Push::Event {
                    binding: entry.binding,
                    event: Arc::clone(&event),
                });
            }
            let delivered = entries.len();
            if entries.is_empty() {
                self.by_user.remove(user);
            }
            self.forget(dead);
            return delivered;
        }
        0
    }
}

impl Handler<Drain> for UserRegistryActor {
    type Result = ();

    /// Nothing to do: answering shows that every message before it was handled.
    fn handle(&mut self, _: Drain, _: &mut Context<Self>) {}
}

impl Handler<Revoke> for UserRegistryActor {
    type Result = ();

    fn handle(&mut self, msg: Revoke, _: &mut Context<Self>) {
        let mut revoked = 0;
        if let Some(entries) = self.by_user.remove(&*msg.user) {
            let mut kept = Vec::new();
            for entry in entries {
                let spared = Some(entry.binding) == msg.except
                    || msg
                        .issued_before
                        .is_some_and(|before| entry.binding >= before);
                if spared {
                    kept.push(entry);
                } else {
                    entry.connection.do_send(Push::Invalidated {
                        binding: entry.binding,
                    });
                    revoked += 1;
                }
            }
            if !kept.is_empty() {
                self.by_user.insert(msg.user, kept);
            }
        }
        let _ = msg.revoked.send(revoked);
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<crate::hub::messages::InjectPanic> for UserRegistryActor {
    type Result = ();

    fn handle(&mut self, _: crate::hub::messages::InjectPanic, _: &mut Context<Self>) {
        panic!("fault injected into the user registry");
    }
}
