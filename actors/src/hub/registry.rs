//! [`UserRegistryActor`]: which connections are bound to which user name, and fan-out of
//! what the bus hands it to exactly those connections.
//!
//! The registry is sharded: one actor per worker arbiter, holding the connections of that
//! worker, so binding and fan-out stay on the connection's own thread; the bus hands every
//! event to each shard once.
//!
//! A shard that handed events out less than [`GATHER_FOR`] ago gathers the next ones for
//! the rest of that while and hands them out together: one push per connection carrying
//! them all, so each connection writes them in one system call. After a quiet spell an
//! event goes out at once; a shard that is behind hands out everything it has taken as soon
//! as its mailbox is empty, as without gathering. See [`Pace`].
//!
//! The registry's map is a cache of what the connections know: each connection holds its
//! own binding and announces it again to a fresh registry after a restart. How full it is
//! shows in `tether_registry_bindings` (per worker); how many connections are bound is
//! `Presence`'s to say, not the registry's.

use crate::hub::bus::EVENTS_IN_FLIGHT;
pub use crate::hub::messages::{Bind, Unbind};
use crate::hub::messages::{
    BindingId, DeathNotice, Deliver, DeliverBatch, Drain, Push, Revoke, ShardEvent,
};
use crate::util::metrics::Metrics;
use actix::prelude::*;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after a hand-out a shard gathers the events that come, rather than handing
/// each out alone. At a high rate a connection then writes several events per system call
/// (the loopback send costs more than the rest of a delivery), so the shard's thread is not
/// kept busy by the writes, which is what makes events queue. Tokio's timers round it up to
/// their millisecond.
pub(crate) const GATHER_FOR: Duration = Duration::from_millis(1);

/// Most events a shard holds back; with more, it hands them out as soon as its mailbox is
/// empty. Gathered events keep their [`EVENTS_IN_FLIGHT`] permits, so this keeps most of
/// them free for the bus: gathering never makes a publisher wait.
const GATHER_MOST: usize = EVENTS_IN_FLIGHT / 8;

/// When a shard hands out the events it gathered: the rule, apart from the actor.
#[derive(Debug, Default)]
struct Pace {
    /// When the shard last handed events out.
    last_hand_out: Option<Instant>,
    /// The hand-out planned for the events gathered, if one is.
    planned: Option<HandOut>,
}

/// When to hand out the events gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandOut {
    /// Once the shard has taken every message its mailbox holds now.
    Soon,
    /// At this moment: the shard handed events out lately, more are likely to come.
    At(Instant),
}

impl Pace {
    /// `gathered` events are held, the last of them taken at `now`: the hand-out to plan,
    /// unless the one planned stands.
    fn plan(&mut self, gathered: usize, now: Instant) -> Option<HandOut> {
        let wanted = match self.last_hand_out {
            Some(last) if gathered < GATHER_MOST && now < last + GATHER_FOR => {
                HandOut::At(last + GATHER_FOR)
            }
            _ => HandOut::Soon,
        };
        match self.planned {
            Some(HandOut::Soon) => return None,
            Some(HandOut::At(_)) if wanted != HandOut::Soon => return None,
            _ => {}
        }
        self.planned = Some(wanted);
        Some(wanted)
    }

    /// The shard handed out what it gathered, at `now`.
    fn handed_out(&mut self, now: Instant) {
        self.last_hand_out = Some(now);
        self.planned = None;
    }
}

/// Hands out the events gathered, if this is still the hand-out planned for them (one
/// planned at a time; a later plan or an early hand-out makes older ones stale).
#[derive(Message)]
#[rtype(result = "()")]
struct HandOutGathered {
    /// The hand-out this was planned for.
    round: u64,
}

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
    /// When to hand them out.
    pace: Pace,
    /// Counts hand-outs, so that a planned one that came early is not done twice.
    round: u64,
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
            pace: Pace::default(),
            round: 0,
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

    fn handle(&mut self, msg: HandOutGathered, _: &mut Context<Self>) {
        if msg.round == self.round {
            self.hand_out_gathered();
        }
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

    /// Plans the hand-out of the events gathered, as [`Pace`] says.
    fn plan_hand_out(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let round = self.round;
        match self.pace.plan(self.gathered.len(), now) {
            None => {}
            // Handled once the mailbox is empty: what it holds goes out together.
            Some(HandOut::Soon) => ctx.notify(HandOutGathered { round }),
            Some(HandOut::At(at)) => {
                ctx.notify_later(HandOutGathered { round }, at.saturating_duration_since(now));
            }
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
        // Its capacity is kept for the next round.
        self.gathered = gathered;
        self.round += 1;
        self.pace.handed_out(Instant::now());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_event_and_one_after_a_quiet_spell_go_out_once_the_mailbox_is_empty() {
        let mut pace = Pace::default();
        let start = Instant::now();
        assert_eq!(pace.plan(1, start), Some(HandOut::Soon));
        assert_eq!(pace.plan(2, start), None, "the hand-out planned stands");
        pace.handed_out(start);
        let later = start + GATHER_FOR;
        assert_eq!(pace.plan(1, later), Some(HandOut::Soon));
    }

    #[test]
    fn events_soon_after_a_hand_out_are_gathered_until_the_while_is_over() {
        let mut pace = Pace::default();
        let start = Instant::now();
        pace.handed_out(start);
        let soon = start + GATHER_FOR / 4;
        let due = start + GATHER_FOR;
        assert_eq!(pace.plan(1, soon), Some(HandOut::At(due)));
        assert_eq!(pace.plan(2, soon + GATHER_FOR / 4), None);
        pace.handed_out(due);
        assert_eq!(
            pace.plan(1, due + GATHER_FOR / 2),
            Some(HandOut::At(due + GATHER_FOR))
        );
    }

    #[test]
    fn past_the_most_a_shard_holds_back_the_events_go_out_without_waiting() {
        let mut pace = Pace::default();
        let start = Instant::now();
        pace.handed_out(start);
        let soon = start + GATHER_FOR / 4;
        assert_eq!(pace.plan(1, soon), Some(HandOut::At(start + GATHER_FOR)));
        assert_eq!(pace.plan(GATHER_MOST - 1, soon), None);
        assert_eq!(pace.plan(GATHER_MOST, soon), Some(HandOut::Soon));
        assert_eq!(pace.plan(GATHER_MOST + 1, soon), None);
        // A batch slice that brings more than the most at once is not held at all.
        pace.handed_out(soon);
        assert_eq!(pace.plan(GATHER_MOST * 2, soon), Some(HandOut::Soon));
    }
}
