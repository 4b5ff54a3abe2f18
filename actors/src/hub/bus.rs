//! [`EventBusActor`]: where events and invalidations enter, from clients, the host program
//! or (later) a broker shared by several nodes. It stamps events with their time, encodes
//! them once and hands them to the registry shards that hold the user's connections (as
//! `Presence` counts them) for fan-out.
//!
//! In a cluster (a [`Broker`] given) an event goes to the broker first and is delivered
//! here only once the broker has taken it: the broker calls the delivery it was handed, in
//! publish order (a publish the broker cannot take is answered
//! [`PublishError::ClusterUnreachable`] and delivered nowhere). Events and invalidations
//! from other nodes come in as `RemoteEvent` and `RemoteInvalidate`.

use crate::auth::credentials::check_name;
use crate::hub::broker::{Broker, BrokerUnreachable, ClusterEvent, NotTaken, Taken};
use crate::hub::messages::{
    BatchedEvent, BindingId, DeathNotice, Deliver, DeliverBatch, Drain, EventInFlight, RemoteEvent,
    RemoteInvalidate, Revoke,
};
pub use crate::hub::messages::{
    Invalidate, InvalidationCause, Publish, PublishBatch, PublishError, PublishReceipt,
    MAX_BATCH_EVENTS,
};
use crate::hub::presence::Presence;
use crate::hub::recent_ids::{valid_id, RecentIds};
use crate::hub::registry::UserRegistryActor;
use crate::hub::shards::{Shards, ShardsInForce};
use crate::protocol::codec::{encode_message, encoded_length, encoded_message, is_valid_part};
use crate::util::clock::EventClock;
use crate::util::metrics::Metrics;
use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Events published but not yet taken by all their connections, at most; a publish past it
/// waits. Every event holds one permit, whether published alone or in a batch.
pub const EVENTS_IN_FLIGHT: usize = 64;

/// Events of a batch handed on together, in one message per shard: all the permits. Every
/// slice wakes each shard's worker and, once taken, the bus again; half the permits per
/// slice (tried first) made twice the thread switches per batch (65 against 38 per 1,000
/// deliveries with the server on one core), for an overlap that a core shared by the bus
/// and the workers does not have.
const BATCH_SLICE: usize = EVENTS_IN_FLIGHT;

/// In a cluster, the bus's mailbox holds this many messages before the broker's
/// `RemoteEvent`s are refused (and counted as dropped) rather than queued without bound.
const CLUSTER_MAILBOX: usize = 4096;

/// Routes events and invalidations to the registry shards.
pub struct EventBusActor {
    /// The registry shards in force, as last read from `shards_in_force`.
    shards: Shards,
    /// The hub's state, where the supervisor publishes the shards in force (a restarted
    /// shard replaces its predecessor there); read at every message.
    shards_in_force: Box<dyn ShardsInForce>,
    /// Stamps events with their registration time.
    clock: EventClock,
    /// Longest event text accepted: an event must fit in a connection's output limit.
    max_text_bytes: usize,
    /// Counts events and invalidations.
    metrics: Metrics,
    /// Which shards hold connections of which user.
    presence: Arc<Presence>,
    /// One permit per event not yet taken by all its connections.
    in_flight: Arc<Semaphore>,
    /// In a cluster, the broker every event and cross-node invalidation goes through.
    broker: Option<Arc<dyn Broker>>,
    /// Alone, the event ids accepted recently (in a cluster the broker keeps them).
    recent_ids: Arc<RecentIds>,
    /// Tells the supervisor when this actor is gone, stopped or panicked.
    _death: DeathNotice,
}

impl EventBusActor {
    pub(crate) fn new(
        mut shards_in_force: Box<dyn ShardsInForce>,
        limits: BusLimits,
        death: DeathNotice,
    ) -> Self {
        Self {
            shards: shards_in_force.current(),
            shards_in_force,
            clock: limits.clock,
            max_text_bytes: limits.max_text_bytes,
            metrics: limits.metrics,
            presence: limits.presence,
            in_flight: Arc::new(Semaphore::new(EVENTS_IN_FLIGHT)),
            broker: limits.broker,
            recent_ids: limits.recent_ids,
            _death: death,
        }
    }

    /// Reads the shards in force again if the supervisor changed them.
    fn refresh(&mut self) {
        if let Some(shards) = self.shards_in_force.changed() {
            self.shards = shards;
        }
    }

    /// The registry shards in force (as of the last [`Self::refresh`]).
    fn registries(&self) -> &[Addr<UserRegistryActor>] {
        &self.shards.registries
    }

    /// The shards holding connections of `user`: their current addresses, each with how
    /// many connections it holds.
    fn registries_holding<'a>(
        &'a self,
        user: &'a str,
    ) -> impl Iterator<Item = (&'a Addr<UserRegistryActor>, usize)> {
        self.presence
            .holding(user)
            .filter_map(|(shard, connections)| Some((self.registries().get(shard)?, connections)))
    }
}

/// What a bus is started with, the same for every restart.
#[derive(Debug, Clone)]
pub(crate) struct BusLimits {
    /// Stamps events.
    pub clock: EventClock,
    /// Longest event text accepted.
    pub max_text_bytes: usize,
    /// Counts events and invalidations.
    pub metrics: Metrics,
    /// Which shards hold connections of which user, kept by the connections.
    pub presence: Arc<Presence>,
    /// In a cluster, the broker to the other nodes; `None` alone.
    pub broker: Option<Arc<dyn Broker>>,
    /// Alone, the event ids accepted recently, shared by every bus started.
    pub recent_ids: Arc<RecentIds>,
}

/// An event the broker has taken, to deliver on this node: what the broker's answer runs.
struct DeliverHere {
    /// The user it is for.
    user: Arc<str>,
    /// The whole encoded message.
    message: Bytes,
    /// Its back-pressure permit.
    in_flight: Arc<EventInFlight>,
    /// Which shards hold the user's connections.
    presence: Arc<Presence>,
    /// The shards in force when the event was published.
    shards: Shards,
}

impl DeliverHere {
    /// Hands the event to the shards holding its user; answers how many connections
    /// [`Presence`] counts for it here.
    fn deliver(self) -> usize {
        let accepted = Instant::now();
        let mut connections = 0;
        for (shard, held) in self.presence.holding(&self.user) {
            if let Some(registry) = self.shards.registries.get(shard) {
                connections += held;
                registry.do_send(Deliver {
                    user: Arc::clone(&self.user),
                    message: self.message.clone(),
                    in_flight: Arc::clone(&self.in_flight),
                    accepted,
                });
            }
        }
        connections
    }
}

impl Actor for EventBusActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.broker.is_some() {
            ctx.set_mailbox_capacity(CLUSTER_MAILBOX);
        }
    }
}

impl Handler<Publish> for EventBusActor {
    type Result = ResponseFuture<Result<PublishReceipt, PublishError>>;

    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(err) = self.check(&msg) {
            return Box::pin(std::future::ready(Err(err)));
        }
        if self.broker.is_some() {
            let receipt = self.publish_clustered(msg, ctx);
            return Box::pin(async move { receipt.await.map_err(|_| PublishError::Unavailable)? });
        }
        if let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() {
            return Box::pin(std::future::ready(self.deliver(msg, permit)));
        }
        // Every permit is out: the bus handles nothing else until one comes back, so events
        // keep their order and every publisher waits.
        let (delivered, delivery) = oneshot::channel();
        let permit = Arc::clone(&self.in_flight).acquire_owned();
        ctx.wait(permit.into_actor(self).map(move |permit, act, _| {
            // The semaphore is never closed.
            if let Ok(permit) = permit {
                let _ = delivered.send(act.deliver(msg, permit));
            }
        }));
        Box::pin(async move { delivery.await.map_err(|_| PublishError::Unavailable)? })
    }
}

impl Handler<PublishBatch> for EventBusActor {
    type Result = ResponseFuture<Result<Vec<PublishReceipt>, PublishError>>;

    fn handle(&mut self, msg: PublishBatch, ctx: &mut Context<Self>) -> Self::Result {
        self.refresh();
        let events = msg.events.len();
        if !(1..=MAX_BATCH_EVENTS).contains(&events) {
            return Box::pin(std::future::ready(Err(PublishError::BatchSize { events })));
        }
        for (index, event) in msg.events.iter().enumerate() {
            if let Err(error) = self.check(event) {
                return Box::pin(std::future::ready(Err(PublishError::InBatch {
                    index,
                    error: Box::new(error),
                })));
            }
        }
        // A shard being replaced fails the batch whole, delivered nowhere (the handle
        // retries it once the shard is back).
        if self
            .registries()
            .iter()
            .any(|registry| !registry.connected())
        {
            return Box::pin(std::future::ready(Err(PublishError::Unavailable)));
        }
        if self.broker.is_some() {
            // Event by event through the broker, in order; the batch is answered when its
            // last event is.
            let (handed, all_handed) = oneshot::channel();
            self.batch_to_broker(msg.events, 0, Vec::with_capacity(events), handed, ctx);
            return Box::pin(async move {
                let receipts = all_handed.await.map_err(|_| PublishError::Unavailable)?;
                let mut answers = Vec::with_capacity(receipts.len());
                for receipt in receipts {
                    answers.push(receipt.await.unwrap_or(Err(PublishError::Unavailable)));
                }
                batch_outcome(answers)
            });
        }
        let (answer, answered) = oneshot::channel();
        self.hand_on_batch(msg.events, 0, Vec::with_capacity(events), answer, ctx);
        Box::pin(async move { answered.await.map_err(|_| PublishError::Unavailable)? })
    }
}

impl EventBusActor {
    /// Checks an event against SPEC §5 and the text rules.
    fn check(&self, msg: &Publish) -> Result<(), PublishError> {
        check_name(&msg.user).map_err(PublishError::InvalidUser)?;
        if !is_valid_part(msg.text.as_bytes()) {
            return Err(PublishError::TextHasSeparator);
        }
        if msg.text.len() > self.max_text_bytes {
            return Err(PublishError::TextTooLong {
                limit: self.max_text_bytes,
            });
        }
        if msg.id.as_deref().is_some_and(|id| !valid_id(id)) {
            return Err(PublishError::InvalidId);
        }
        Ok(())
    }

    /// Stamps, encodes and hands a checked event to the shards holding its user, and
    /// answers at once: the connections bound to the user right now (as [`Presence`] counts
    /// them) are the ones the shards will hand it to. Waiting for the shards' own counts
    /// would add a round trip through every worker to each publish, and publishers would
    /// wait on the fan-out instead of on the [`EVENTS_IN_FLIGHT`] bound. A shard that is
    /// restarting makes the publish fail whole, delivered nowhere.
    fn deliver(
        &mut self,
        msg: Publish,
        permit: OwnedSemaphorePermit,
    ) -> Result<PublishReceipt, PublishError> {
        self.refresh();
        let mut connections = 0;
        for (registry, held) in self.registries_holding(&msg.user) {
            if !registry.connected() {
                return Err(PublishError::Unavailable);
            }
            connections += held;
        }
        let time = self.clock.now();
        let accepted = Instant::now();
        if let Some(id) = &msg.id {
            if let Err(first) = self.recent_ids.accept(id, time, accepted) {
                return Ok(PublishReceipt::duplicate(first));
            }
        }
        self.metrics.events_published.inc();
        let message = event_message(&time.to_string(), &msg.text);
        let user: Arc<str> = Arc::from(msg.user);
        let in_flight = Arc::new(EventInFlight { _permit: permit });
        // Counted before sending: a connection bound in between gets the event anyway.
        for (registry, _) in self.registries_holding(&user) {
            registry.do_send(Deliver {
                user: Arc::clone(&user),
                message: message.clone(),
                in_flight: Arc::clone(&in_flight),
                accepted,
            });
        }
        Ok(PublishReceipt {
            time,
            connections,
            duplicate: false,
        })
    }

    /// Hands on what is left of a checked batch, [`BATCH_SLICE`] events at a time, each
    /// slice as soon as it has a permit per event; answers `answer` once the last slice is
    /// handed on. While it waits for permits the bus handles nothing else, so events keep
    /// their order.
    fn hand_on_batch(
        &mut self,
        batch: Arc<[Publish]>,
        mut next: usize,
        mut receipts: Vec<PublishReceipt>,
        answer: oneshot::Sender<Result<Vec<PublishReceipt>, PublishError>>,
        ctx: &mut Context<Self>,
    ) {
        loop {
            let slice = batch.len().saturating_sub(next).min(BATCH_SLICE);
            if slice == 0 {
                let _ = answer.send(Ok(receipts));
                return;
            }
            // A slice is at most `BATCH_SLICE` events.
            let wanted = slice as u32;
            match Arc::clone(&self.in_flight).try_acquire_many_owned(wanted) {
                Ok(permits) => self.hand_on_slice(&batch, &mut next, permits, &mut receipts),
                Err(_) => {
                    let permits = Arc::clone(&self.in_flight).acquire_many_owned(wanted);
                    ctx.wait(permits.into_actor(self).map(move |permits, act, ctx| {
                        // The semaphore is never closed.
                        if let Ok(permits) = permits {
                            act.hand_on_slice(&batch, &mut next, permits, &mut receipts);
                            act.hand_on_batch(batch, next, receipts, answer, ctx);
                        }
                    }));
                    return;
                }
            }
        }
    }

    /// Stamps and encodes as many events of `batch` from `next` on as `permits` holds, one
    /// permit each, and hands them to the shards holding their users: one message per
    /// shard. Moves `next` past them.
    fn hand_on_slice(
        &mut self,
        batch: &Arc<[Publish]>,
        next: &mut usize,
        mut permits: OwnedSemaphorePermit,
        receipts: &mut Vec<PublishReceipt>,
    ) {
        self.refresh();
        let first = *next;
        let end = (first + permits.num_permits()).min(batch.len());
        let in_flight = std::iter::from_fn(|| permits.split(1))
            .map(|permit| Arc::new(EventInFlight { _permit: permit }));
        let stamp = Stamp {
            time: self.clock.now(),
            accepted: Instant::now(),
        };
        let per_shard = sort_by_shard(
            &self.presence,
            &self.recent_ids,
            self.registries().len(),
            stamp,
            batch,
            (first..end).zip(in_flight),
            receipts,
        );
        *next = end;
        self.metrics.events_published.inc_by((end - first) as u64);
        for (registry, events) in self.registries().iter().zip(per_shard) {
            if !events.is_empty() {
                registry.do_send(DeliverBatch {
                    batch: Arc::clone(batch),
                    events,
                    accepted: stamp.accepted,
                });
            }
        }
    }
}

impl EventBusActor {
    /// In a cluster: stamps a checked event and hands it to the broker once it has a
    /// permit (waiting in place for one); the answer comes once it is delivered here.
    fn publish_clustered(
        &mut self,
        msg: Publish,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Result<PublishReceipt, PublishError>> {
        let (receipt, answered) = oneshot::channel();
        if let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() {
            self.hand_to_broker(msg, permit, receipt);
            return answered;
        }
        let permit = Arc::clone(&self.in_flight).acquire_owned();
        ctx.wait(permit.into_actor(self).map(move |permit, act, _| {
            // The semaphore is never closed.
            if let Ok(permit) = permit {
                act.refresh();
                act.hand_to_broker(msg, permit, receipt);
            }
        }));
        answered
    }

    /// In a cluster: hands the events of a checked batch from `next` on to the broker, in
    /// order, each once it has a permit (waiting in place for one at a time, so order is
    /// kept); sends `handed` the receivers of their receipts once the last is handed on.
    fn batch_to_broker(
        &mut self,
        events: Arc<[Publish]>,
        mut next: usize,
        mut receipts: Vec<oneshot::Receiver<Result<PublishReceipt, PublishError>>>,
        handed: oneshot::Sender<Vec<oneshot::Receiver<Result<PublishReceipt, PublishError>>>>,
        ctx: &mut Context<Self>,
    ) {
        while let Some(event) = events.get(next) {
            let (receipt, answered) = oneshot::channel();
            receipts.push(answered);
            next += 1;
            if let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() {
                self.hand_to_broker(event.clone(), permit, receipt);
                continue;
            }
            let event = event.clone();
            let permit = Arc::clone(&self.in_flight).acquire_owned();
            ctx.wait(permit.into_actor(self).map(move |permit, act, ctx| {
                // The semaphore is never closed.
                if let Ok(permit) = permit {
                    act.refresh();
                    act.hand_to_broker(event, permit, receipt);
                    act.batch_to_broker(events, next, receipts, handed, ctx);
                }
            }));
            return;
        }
        let _ = handed.send(receipts);
    }

    /// Stamps `msg` and hands it to the broker, with what delivers it here once the broker
    /// has taken it (called by the broker, in publish order, so the bus never waits for the
    /// broker while it holds permits).
    fn hand_to_broker(
        &mut self,
        msg: Publish,
        permit: OwnedSemaphorePermit,
        receipt: oneshot::Sender<Result<PublishReceipt, PublishError>>,
    ) {
        let Some(broker) = &self.broker else {
            return;
        };
        let time = self.clock.now();
        let user: Arc<str> = Arc::from(msg.user);
        let text: Arc<str> = Arc::from(msg.text);
        let message = event_message(&time.to_string(), &text);
        let here = DeliverHere {
            user: Arc::clone(&user),
            message,
            in_flight: Arc::new(EventInFlight { _permit: permit }),
            presence: Arc::clone(&self.presence),
            shards: self.shards.clone(),
        };
        let metrics = self.metrics.clone();
        let answered = Box::new(move |answer: Result<Taken, NotTaken>| {
            let result = match answer {
                Ok(Taken::Sent { others }) => {
                    metrics.events_published.inc();
                    Ok(PublishReceipt {
                        time,
                        connections: here.deliver() + others,
                        duplicate: false,
                    })
                }
                // Not delivered here either; its permit goes back with `here`.
                Ok(Taken::Duplicate { time }) => Ok(PublishReceipt::duplicate(time)),
                Err(NotTaken::Unreachable) => Err(PublishError::ClusterUnreachable),
                Err(NotTaken::Unknown) => Err(PublishError::OutcomeUnknown),
            };
            let _ = receipt.send(result);
        });
        let id = msg.id.map(Arc::from);
        broker.publish(
            ClusterEvent {
                user,
                time,
                text,
                id,
            },
            answered,
        );
    }

    /// Hands an encoded event to the shards holding `user`; answers how many connections
    /// [`Presence`] counts for it here.
    fn deliver_here(
        &self,
        user: &Arc<str>,
        message: Bytes,
        in_flight: Arc<EventInFlight>,
    ) -> usize {
        let accepted = Instant::now();
        let mut connections = 0;
        for (registry, held) in self.registries_holding(user) {
            connections += held;
            registry.do_send(Deliver {
                user: Arc::clone(user),
                message: message.clone(),
                in_flight: Arc::clone(&in_flight),
                accepted,
            });
        }
        connections
    }
}

/// The answer to a batch published through the broker, from its entries' answers: all
/// receipts when every entry was taken; [`PublishError::ClusterUnreachable`] (`503`) only
/// when none was sent; otherwise — an entry's outcome unknown, or some taken and others
/// not — [`PublishError::OutcomeUnknown`] (`504`: retry the batch with its ids).
fn batch_outcome(
    answers: Vec<Result<PublishReceipt, PublishError>>,
) -> Result<Vec<PublishReceipt>, PublishError> {
    let failed = answers.iter().filter(|answer| answer.is_err()).count();
    if failed == 0 {
        return Ok(answers.into_iter().flatten().collect());
    }
    let unknown = answers
        .iter()
        .any(|answer| matches!(answer, Err(PublishError::OutcomeUnknown)));
    if unknown || failed < answers.len() {
        return Err(PublishError::OutcomeUnknown);
    }
    // None was sent: the first entry says why (unreachable, or the bus restarting).
    answers
        .into_iter()
        .find_map(Result::err)
        .map_or(Err(PublishError::Unavailable), Err)
}

/// When the bus accepted a slice of events: on the wire and for the delivery histogram.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    /// The events' time as written on the wire (SPEC §3).
    time: i64,
    /// The moment the bus handed them on.
    accepted: Instant,
}

/// `event␟<time>␟<text>`, encoded once for every connection.
fn event_message(time: &str, text: &str) -> Bytes {
    encoded_message(&event_parts(time, text))
}

/// The parts of `event␟<time>␟<text>`.
fn event_parts<'a>(time: &'a str, text: &'a str) -> [&'a [u8]; 3] {
    [
        tether_wire::EVENT.as_bytes(),
        time.as_bytes(),
        text.as_bytes(),
    ]
}

/// An event of a shard's slice whose message is in the shard's buffer: its index in the
/// batch, its permit, and the message's length.
type Encoded = (usize, Arc<EventInFlight>, usize);

/// Sorts the events `slice` of `batch` (indexes, each with its permit) into one list per
/// shard (of `shards`) holding their users, in order, and adds a receipt per event to
/// `receipts`, counting the connections
/// [`Presence`] counts. Each shard's messages share one buffer of their own (so a buffer's
/// count is only ever touched by one worker's thread), and [`Presence`] is locked once for
/// the slice, not per event.
fn sort_by_shard(
    presence: &Presence,
    recent_ids: &RecentIds,
    shards: usize,
    stamp: Stamp,
    batch: &[Publish],
    slice: impl Iterator<Item = (usize, Arc<EventInFlight>)>,
    receipts: &mut Vec<PublishReceipt>,
) -> Vec<Vec<BatchedEvent>> {
    let time = stamp.time.to_string();
    // Per shard: its messages, one after the other, and each one's event, permit and length.
    let mut per_shard: Vec<(BytesMut, Vec<Encoded>)> =
        (0..shards).map(|_| (BytesMut::new(), Vec::new())).collect();
    let holders = presence.lock_all();
    for (index, in_flight) in slice {
        let Some(event) = batch.get(index) else { break };
        if let Some(id) = &event.id {
            if let Err(first) = recent_ids.accept(id, stamp.time, stamp.accepted) {
                receipts.push(PublishReceipt::duplicate(first));
                continue;
            }
        }
        let parts = event_parts(&time, &event.text);
        let mut connections = 0;
        for (shard, held) in holders.holding(&event.user) {
            if let Some((messages, events)) = per_shard.get_mut(shard) {
                connections += held;
                encode_message(&parts, messages);
                events.push((index, Arc::clone(&in_flight), encoded_length(&parts)));
            }
        }
        receipts.push(PublishReceipt {
            time: stamp.time,
            connections,
            duplicate: false,
        });
    }
    drop(holders);
    per_shard
        .into_iter()
        .map(|(messages, events)| {
            let mut messages = messages.freeze();
            events
                .into_iter()
                .map(|(index, in_flight, length)| BatchedEvent {
                    index,
                    message: messages.split_to(length),
                    in_flight,
                })
                .collect()
        })
        .collect()
}

impl Handler<Invalidate> for EventBusActor {
    type Result = ResponseFuture<Result<usize, PublishError>>;

    /// Alone, or for a password change or removal (which every node learns from its own
    /// store), the connections here. In a cluster, a client's `invalidate` acts here at
    /// once and reaches the other nodes through the broker as soon as it can; an
    /// operator's goes through the broker first and fails whole while it is unreachable.
    fn handle(&mut self, msg: Invalidate, ctx: &mut Context<Self>) -> Self::Result {
        self.refresh();
        let user: Arc<str> = Arc::from(msg.user);
        let cause = msg.cause;
        let broker = match (&self.broker, cause) {
            (Some(broker), InvalidationCause::Client | InvalidationCause::Operator) => {
                Arc::clone(broker)
            }
            _ => return Box::pin(self.revoke_here(user, msg.except, None, cause)),
        };
        if cause == InvalidationCause::Client {
            broker.invalidate_later(Arc::clone(&user));
            return Box::pin(self.revoke_here(user, msg.except, None, cause));
        }
        let (answer, answered) = oneshot::channel::<RevokeCount>();
        let others = broker.invalidate(Arc::clone(&user));
        ctx.spawn(others.into_actor(self).map(move |others, act, _| {
            match others.unwrap_or(Err(BrokerUnreachable)) {
                Ok(others) => {
                    let here = act.revoke_here(user, msg.except, None, cause);
                    let _ = answer.send(Box::pin(async move { Ok(here.await? + others) }));
                }
                Err(BrokerUnreachable) => {
                    let _ = answer.send(Box::pin(std::future::ready(Err(
                        PublishError::ClusterUnreachable,
                    ))));
                }
            }
        }));
        Box::pin(async move { answered.await.map_err(|_| PublishError::Unavailable)?.await })
    }
}

/// How many connections an invalidation revoked, once the shards have answered.
type RevokeCount =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, PublishError>> + Send>>;

impl EventBusActor {
    /// Revokes the bindings of `user` here (all but `except`; with `issued_before`, only
    /// those issued before it); the future answers how many were revoked.
    fn revoke_here(
        &self,
        user: Arc<str>,
        except: Option<BindingId>,
        issued_before: Option<BindingId>,
        cause: InvalidationCause,
    ) -> impl std::future::Future<Output = Result<usize, PublishError>> + Send + 'static {
        let counts: Vec<_> = self
            .registries_holding(&user)
            .map(|(registry, _)| {
                let (revoked, count) = oneshot::channel();
                registry.do_send(Revoke {
                    user: Arc::clone(&user),
                    except,
                    issued_before,
                    revoked,
                });
                count
            })
            .collect();
        let metrics = self.metrics.clone();
        async move {
            let invalidated = sum_counts(counts).await?;
            metrics.invalidated(cause, invalidated);
            if invalidated > 0 {
                log::info!("user {user:?}: {invalidated} connection(s) invalidated ({cause})");
            }
            Ok(invalidated)
        }
    }
}

impl Handler<RemoteEvent> for EventBusActor {
    type Result = ();

    /// Delivers an event another node published to the connections here; waits in place
    /// for a permit like a publish (the broker's sends are refused meanwhile, and counted
    /// as dropped).
    fn handle(&mut self, msg: RemoteEvent, ctx: &mut Context<Self>) {
        self.refresh();
        let message = event_message(&msg.time.to_string(), &msg.text);
        match Arc::clone(&self.in_flight).try_acquire_owned() {
            Ok(permit) => {
                self.deliver_here(
                    &msg.user,
                    message,
                    Arc::new(EventInFlight { _permit: permit }),
                );
            }
            Err(_) => {
                let permit = Arc::clone(&self.in_flight).acquire_owned();
                ctx.wait(permit.into_actor(self).map(move |permit, act, _| {
                    // The semaphore is never closed.
                    if let Ok(permit) = permit {
                        act.refresh();
                        let in_flight = Arc::new(EventInFlight { _permit: permit });
                        act.deliver_here(&msg.user, message, in_flight);
                    }
                }));
            }
        }
    }
}

impl Handler<RemoteInvalidate> for EventBusActor {
    type Result = ();

    fn handle(&mut self, msg: RemoteInvalidate, ctx: &mut Context<Self>) {
        self.refresh();
        let revoked = self.revoke_here(
            msg.user,
            None,
            msg.issued_before,
            InvalidationCause::Cluster,
        );
        ctx.spawn(
            async move {
                let _ = revoked.await;
            }
            .into_actor(self),
        );
    }
}

/// Adds up the shards' answers; a shard that died before answering makes it unknown.
async fn sum_counts(counts: Vec<oneshot::Receiver<usize>>) -> Result<usize, PublishError> {
    let mut total = 0;
    for count in counts {
        total += count.await.map_err(|_| PublishError::Unavailable)?;
    }
    Ok(total)
}

impl Handler<Drain> for EventBusActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        // In a cluster, events handed to the broker are delivered here once it has an
        // answer from Redis: wait for those first (each was handed on before this message
        // was taken, as the bus waits in place for permits).
        let flushed = self.broker.as_ref().map(|broker| broker.flush());
        // A shard's mailbox is first in, first out: it answers after the events before.
        self.refresh();
        let registries = self.registries().to_vec();
        Box::pin(async move {
            if let Some(flushed) = flushed {
                // Closed or answered alike: nothing handed on before is left unanswered.
                let _ = flushed.await;
            }
            let drained: Vec<_> = registries
                .iter()
                .map(|registry| registry.send(Drain))
                .collect();
            for shard in drained {
                // A shard that died has nothing left to hand on.
                let _ = shard.await;
            }
        })
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<crate::hub::messages::InjectPanic> for EventBusActor {
    type Result = ();

    fn handle(&mut self, _: crate::hub::messages::InjectPanic, _: &mut Context<Self>) {
        panic!("fault injected into the event bus");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::messages::{BindingId, Push};
    use crate::hub::registry::Bind;
    use crate::hub::roster::HubListeners;
    use crate::hub::state::HubState;
    use crate::hub::supervisor::HubSupervisor;
    use actix::ArbiterHandle;
    use std::time::Duration;

    /// The hub of these tests has no connection to tell of its changes.
    struct NoConnections;

    impl HubListeners for NoConnections {
        fn tell(&self, _: &HubState) {}
    }

    /// Stands in for a connection that receives its pushes but never lets them go.
    struct Hoarder(Vec<Push>);

    impl Actor for Hoarder {
        type Context = Context<Self>;
    }

    impl Handler<Push> for Hoarder {
        type Result = ();

        fn handle(&mut self, msg: Push, _: &mut Context<Self>) {
            self.0.push(msg);
        }
    }

    /// Drops every push held.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct LetGo;

    impl Handler<LetGo> for Hoarder {
        type Result = ();

        fn handle(&mut self, _: LetGo, _: &mut Context<Self>) {
            self.0.clear();
        }
    }

    /// How many pushes are held.
    #[derive(Message)]
    #[rtype(result = "usize")]
    struct Held;

    /// Hands over the texts of the events held, and lets them go.
    #[derive(Message)]
    #[rtype(result = "Vec<String>")]
    struct TakeAll;

    impl Handler<TakeAll> for Hoarder {
        type Result = Vec<String>;

        fn handle(&mut self, _: TakeAll, _: &mut Context<Self>) -> Vec<String> {
            self.0
                .drain(..)
                .filter_map(|push| match push {
                    Push::Event { event, .. } => {
                        let message = String::from_utf8_lossy(&event.message).into_owned();
                        message
                            .rsplit('\u{1f}')
                            .next()
                            .map(|text| text.trim_end_matches('\u{1e}').to_owned())
                    }
                    Push::Invalidated { .. } => None,
                })
                .collect()
        }
    }

    impl Handler<Held> for Hoarder {
        type Result = usize;

        fn handle(&mut self, _: Held, _: &mut Context<Self>) -> usize {
            self.0.len()
        }
    }

    fn test_limits(presence: &Arc<Presence>) -> BusLimits {
        BusLimits {
            clock: EventClock::new(jiff::tz::TimeZone::UTC),
            max_text_bytes: 1024,
            metrics: Metrics::new(),
            presence: Arc::clone(presence),
            broker: None,
            recent_ids: Arc::default(),
        }
    }

    /// Binds `connection` to "alice" on shard 0, as a connection does.
    async fn bind_alice(hub: &HubState, presence: &Presence, connection: &Addr<Hoarder>) {
        hub.shards.registries[0]
            .send(Bind {
                user: Arc::from("alice"),
                binding: BindingId::next(),
                connection: connection.clone().recipient(),
            })
            .await
            .expect("the registry answers");
        presence.enter(0, "alice");
    }

    /// A hub with one registry shard on `worker`, and a connection that keeps what it is
    /// sent bound to alice. The supervisor is returned to be kept alive.
    async fn hub_with_alice_hoarding(
        worker: ArbiterHandle,
        presence: &Arc<Presence>,
    ) -> (Addr<HubSupervisor>, HubState, Addr<Hoarder>) {
        let (supervisor, hub) = HubSupervisor::launch(
            Arbiter::current(),
            vec![worker],
            test_limits(presence),
            Arc::new(NoConnections),
        );
        let hub = hub.borrow().clone();
        let hoarder = Hoarder(Vec::new()).start();
        bind_alice(&hub, presence, &hoarder).await;
        (supervisor, hub, hoarder)
    }

    fn publish_to_alice(hub: &HubState) -> Request<EventBusActor, Publish> {
        hub.bus.send(Publish::new("alice", "e"))
    }

    #[actix_rt::test]
    async fn a_publish_is_answered_before_the_fan_out_and_a_drain_only_after_it() {
        let presence = Arc::new(Presence::new(1));
        let worker = Arbiter::new();
        let (_supervisor, hub, hoarder) = hub_with_alice_hoarding(worker.handle(), &presence).await;

        // The shard's thread is busy until the test lets it go: the event waits in its
        // mailbox. (A bounded wait, so a publish that waited for the fan-out fails the test
        // rather than hanging it.)
        let (blocked, worker_blocked) = oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        worker.spawn_fn(move || {
            let _ = blocked.send(());
            let _ = released.recv_timeout(Duration::from_secs(30));
        });
        worker_blocked.await.expect("the worker runs the blocker");
        let receipt = tokio::time::timeout(Duration::from_secs(10), publish_to_alice(&hub))
            .await
            .expect("answered while the shard is busy")
            .expect("the bus answers")
            .expect("published");
        assert_eq!(receipt.connections, 1);
        assert_eq!(
            hoarder.send(Held).await.expect("answers"),
            0,
            "not yet fanned out"
        );

        let _ = release.send(());
        hub.bus.send(Drain).await.expect("the bus answers");
        assert_eq!(
            hoarder.send(Held).await.expect("answers"),
            1,
            "the drain answered before the shard had handed the event on"
        );
        worker.stop();
    }

    #[actix_rt::test]
    async fn a_publish_waits_while_every_permit_is_held_by_events_not_yet_taken() {
        let presence = Arc::new(Presence::new(1));
        let (_supervisor, hub, hoarder) =
            hub_with_alice_hoarding(Arbiter::current(), &presence).await;
        let publish = || publish_to_alice(&hub);

        for _ in 0..EVENTS_IN_FLIGHT {
            let receipt = publish().await.expect("the bus answers");
            assert_eq!(receipt.expect("published").connections, 1);
        }
        let one_more = tokio::time::timeout(Duration::from_millis(300), publish()).await;
        assert!(one_more.is_err(), "answered past the bound: {one_more:?}");

        hoarder.send(LetGo).await.expect("the hoarder answers");
        let after = tokio::time::timeout(Duration::from_secs(5), publish())
            .await
            .expect("answered once the permits came back")
            .expect("the bus answers");
        assert_eq!(after.expect("published").connections, 1);
    }

    fn event(user: &str, text: &str) -> Publish {
        Publish::new(user, text)
    }

    #[test]
    fn a_slice_becomes_one_list_per_shard_holding_its_users_in_publish_order() {
        let presence = Presence::new(3);
        presence.enter(0, "alice");
        presence.enter(2, "alice");
        presence.enter(2, "alice");
        presence.enter(2, "bob");
        let batch = [
            event("alice", "a1"),
            event("bob", "b1"),
            event("carol", "c1"),
            event("alice", "a2"),
            event("bob", "not in the slice"),
        ];
        let stamp = Stamp {
            time: 17,
            accepted: Instant::now(),
        };
        let mut receipts = Vec::new();
        let permits = Arc::new(Semaphore::new(4));
        let slice = (0..4).map(|index| {
            let permit = Arc::clone(&permits).try_acquire_owned().expect("a permit");
            (index, Arc::new(EventInFlight { _permit: permit }))
        });
        let ids = RecentIds::default();
        let per_shard = sort_by_shard(&presence, &ids, 3, stamp, &batch, slice, &mut receipts);

        let texts = |shard: usize| -> Vec<(String, String)> {
            per_shard[shard]
                .iter()
                .map(|event| {
                    let message = String::from_utf8_lossy(&event.message);
                    (batch[event.index].user.clone(), message.into_owned())
                })
                .collect()
        };
        let wire = |user: &str, text: &str| (user.to_owned(), format!("event\x1f17\x1f{text}\x1e"));
        assert_eq!(per_shard.len(), 3, "one list per shard");
        assert_eq!(texts(0), [wire("alice", "a1"), wire("alice", "a2")]);
        assert!(texts(1).is_empty(), "nobody on shard 1");
        assert_eq!(
            texts(2),
            [wire("alice", "a1"), wire("bob", "b1"), wire("alice", "a2")]
        );
        let connections: Vec<_> = receipts.iter().map(|r| r.connections).collect();
        assert_eq!(connections, [3, 1, 0, 3]);
        assert!(receipts.iter().all(|receipt| receipt.time == 17));

        // Each event holds its own permit, shared by its shards: carol's is back already.
        assert_eq!(permits.available_permits(), 1);
        drop(per_shard);
        assert_eq!(permits.available_permits(), 4);
    }

    #[actix_rt::test]
    async fn a_batch_past_the_permits_is_handed_on_in_order_as_its_connections_take_it() {
        let presence = Arc::new(Presence::new(1));
        let (_supervisor, hub, hoarder) =
            hub_with_alice_hoarding(Arbiter::current(), &presence).await;
        let total = EVENTS_IN_FLIGHT * 2 + 5;
        let batch = PublishBatch {
            events: (0..total)
                .map(|i| event("alice", &i.to_string()))
                .collect::<Vec<_>>()
                .into(),
        };
        let mut answered = Box::pin(hub.bus.send(batch));

        let mut taken = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let receipts = loop {
            if let Ok(answer) = tokio::time::timeout(Duration::from_millis(20), &mut answered).await
            {
                break answer.expect("the bus answers").expect("published");
            }
            assert!(tokio::time::Instant::now() < deadline, "never answered");
            let held = hoarder.send(TakeAll).await.expect("the hoarder answers");
            assert!(
                held.len() <= EVENTS_IN_FLIGHT,
                "{} events held at once, past the permits",
                held.len()
            );
            taken.extend(held);
        };
        taken.extend(hoarder.send(TakeAll).await.expect("the hoarder answers"));
        assert_eq!(receipts.len(), total);
        assert!(receipts.iter().all(|receipt| receipt.connections == 1));
        let expected: Vec<String> = (0..total).map(|i| i.to_string()).collect();
        assert_eq!(taken, expected, "every event once, in order");
    }

    #[actix_rt::test]
    async fn a_batch_with_one_bad_event_names_it_and_publishes_nothing() {
        let presence = Arc::new(Presence::new(1));
        let (_supervisor, hub, hoarder) =
            hub_with_alice_hoarding(Arbiter::current(), &presence).await;
        let batch = |events: Vec<Publish>| {
            hub.bus.send(PublishBatch {
                events: events.into(),
            })
        };

        let bad = batch(vec![event("alice", "ok"), event("alice", "a\u{1e}b")]).await;
        assert_eq!(
            bad.expect("the bus answers"),
            Err(PublishError::InBatch {
                index: 1,
                error: Box::new(PublishError::TextHasSeparator)
            })
        );
        let empty = batch(Vec::new()).await.expect("the bus answers");
        assert_eq!(empty, Err(PublishError::BatchSize { events: 0 }));
        let too_many = vec![event("alice", "x"); MAX_BATCH_EVENTS + 1];
        let too_many = batch(too_many).await.expect("the bus answers");
        assert_eq!(
            too_many,
            Err(PublishError::BatchSize {
                events: MAX_BATCH_EVENTS + 1
            })
        );
        hub.bus.send(Drain).await.expect("the bus answers");
        assert_eq!(hoarder.send(Held).await.expect("answers"), 0);
    }

    #[test]
    fn a_batch_is_503_only_when_none_was_sent_and_504_when_any_outcome_is_unknown() {
        let taken = || {
            Ok(PublishReceipt {
                time: 1,
                connections: 1,
                duplicate: false,
            })
        };
        let unreachable = || Err(PublishError::ClusterUnreachable);
        let unknown = || Err(PublishError::OutcomeUnknown);
        assert_eq!(
            batch_outcome(vec![taken(), taken()]).map(|r| r.len()),
            Ok(2)
        );
        assert_eq!(
            batch_outcome(vec![unreachable(), unreachable()]),
            Err(PublishError::ClusterUnreachable)
        );
        for mixed in [
            vec![taken(), unknown()],
            vec![unknown(), unreachable()],
            vec![taken(), unreachable()],
            vec![unknown()],
        ] {
            assert_eq!(batch_outcome(mixed), Err(PublishError::OutcomeUnknown));
        }
    }
}
