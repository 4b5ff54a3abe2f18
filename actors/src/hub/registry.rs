//! [`UserRegistryActor`]: which connections are bound to which user name, and fan-out of
//! what the bus hands it to exactly those connections.
//!
//! The registry is sharded: one actor per worker arbiter, holding the connections of that
//! worker, so binding and fan-out stay on the connection's own thread; the bus hands every
//! event to each shard once.
//!
//! A shard hands out what its mailbox holds together: the events it takes are gathered
//! until its mailbox is empty, then each connection gets one push carrying all of its
//! user's, so a connection written to once per round costs one envelope, one mailbox push
//! and one wake-up per round, not per event.
//!
//! The registry's map is a cache of what the connections know: each connection holds its
//! own binding and announces it again to a fresh registry after a restart. How full it is
//! shows in `tether_registry_bindings` (per worker); how many connections are bound is
//! `Presence`'s to say, not the registry's.

pub use crate::hub::messages::{Bind, Unbind};
use crate::hub::messages::{
    BindingId, DeathNotice, Deliver, DeliverBatch, Drain, Push, Revoke, ShardEvent,
};
use crate::util::metrics::Metrics;
use actix::prelude::*;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::Arc;

/// Hands out the events gathered (sent to itself, so it is handled once the mailbox is
/// empty).
#[derive(Message)]
#[rtype(result = "()")]
struct HandOutGathered;

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
    /// Events taken but not yet handed out, in the order taken, each with its user (the
    /// key of its entry in `by_user`, shared); only users with entries when it came.
    gathered: Vec<(Arc<str>, ShardEvent)>,
    /// A [`HandOutGathered`] is on its way.
    hand_out_planned: bool,
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
            gathered: Vec::new(),
            hand_out_planned: false,
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
        // An event taken before goes to the connections bound before, as it would have
        // without gathering.
        self.hand_out_gathered();
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
        self.hand_out_gathered();
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

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        let event = ShardEvent {
            message: msg.message,
            accepted: msg.accepted,
            _in_flight: msg.in_flight,
        };
        if self.gather(&msg.user, event) {
            self.plan_hand_out(ctx);
        }
    }
}

impl Handler<DeliverBatch> for UserRegistryActor {
    type Result = ();

    fn handle(&mut self, msg: DeliverBatch, ctx: &mut Context<Self>) {
        let mut gathered_any = false;
        for event in msg.events {
            if let Some(publish) = msg.batch.get(event.index) {
                let event = ShardEvent {
                    message: event.message,
                    accepted: msg.accepted,
                    _in_flight: event.in_flight,
                };
                gathered_any |= self.gather(&publish.user, event);
            }
        }
        if gathered_any {
            self.plan_hand_out(ctx);
        }
    }
}

impl Handler<HandOutGathered> for UserRegistryActor {
    type Result = ();

    fn handle(&mut self, _: HandOutGathered, _: &mut Context<Self>) {
        self.hand_out_planned = false;
        self.hand_out_gathered();
    }
}

impl UserRegistryActor {
    /// Holds `event` for the connections bound to `user`, if any (`false`: none, the event
    /// is dropped).
    fn gather(&mut self, user: &str, event: ShardEvent) -> bool {
        match self.by_user.get_key_value(user) {
            Some((user, _)) => {
                self.gathered.push((Arc::clone(user), event));
                true
            }
            None => false,
        }
    }

    /// Plans the hand-out of the events gathered for when the mailbox is empty (actix
    /// handles what a context notifies itself after the messages queued).
    fn plan_hand_out(&mut self, ctx: &mut Context<Self>) {
        if !self.hand_out_planned {
            self.hand_out_planned = true;
            ctx.notify(HandOutGathered);
        }
    }

    /// Hands out every event gathered, one push per connection with all of its user's.
    fn hand_out_gathered(&mut self) {
        if self.gathered.is_empty() {
            return;
        }
        let mut gathered = std::mem::take(&mut self.gathered);
        // Each user's events side by side, in the order taken: a stable sort by the key
        // they share (cheaper than a map for the few events of one hand-out).
        gathered.sort_by_key(|(user, _)| Arc::as_ptr(user).cast::<u8>());
        let mut delivered = 0;
        let mut taken = gathered.drain(..).peekable();
        while let Some((user, first)) = taken.next() {
            let same_user = |(next, _): &(Arc<str>, ShardEvent)| Arc::ptr_eq(next, &user);
            let events: Arc<[ShardEvent]> = match taken.next_if(same_user) {
                None => Arc::new([first]),
                Some((_, second)) => {
                    let mut events = vec![first, second];
                    while let Some((_, event)) = taken.next_if(same_user) {
                        events.push(event);
                    }
                    events.into()
                }
            };
            delivered += events.len() * self.hand_out(&user, events);
        }
        drop(taken);
        // Its capacity is kept for the next hand-out.
        self.gathered = gathered;
        // Once per hand-out: the counter is shared by every worker's thread.
        self.metrics.events_delivered.inc_by(delivered as u64);
    }

    /// Pushes `events` to every connection bound to `user`; answers how many.
    fn hand_out(&mut self, user: &str, events: Arc<[ShardEvent]>) -> usize {
        if let Some(entries) = self.by_user.get_mut(user) {
            // A connection that died without unbinding is dropped here.
            let before = entries.len();
            entries.retain(|entry| entry.connection.connected());
            let dead = before - entries.len();
            for entry in entries.iter() {
                entry.connection.do_send(Push::Events {
                    binding: entry.binding,
                    events: Arc::clone(&events),
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

    /// Hands out what is gathered: answering shows that every event taken before it is in
    /// its connections' mailboxes.
    fn handle(&mut self, _: Drain, _: &mut Context<Self>) {
        self.hand_out_gathered();
    }
}

impl Handler<Revoke> for UserRegistryActor {
    type Result = ();

    fn handle(&mut self, msg: Revoke, _: &mut Context<Self>) {
        // An event taken before the invalidation is written before `invalidated`.
        self.hand_out_gathered();
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
