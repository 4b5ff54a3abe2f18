//! The typed messages between the hub's actors and the connections, in one place: what a
//! connection tells a registry shard (`Bind`, `Unbind`), what the bus hands the shards
//! (`Deliver`, `DeliverBatch`, `Revoke`, `Drain`), what a shard pushes to a connection
//! (`Push`), what publishers send the bus (`Publish`, `PublishBatch`, `Invalidate`), and
//! what a supervised child leaves behind (`DeathNotice`). The actors that handle them
//! import them from here, so no actor module imports another for its messages.

use crate::auth::credentials::CredentialError;
use actix::prelude::*;
use bytes::Bytes;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

pub use crate::util::metrics::InvalidationCause;
/// Most events one [`PublishBatch`] may hold.
pub const MAX_BATCH_EVENTS: usize = 1000;

/// Identifies one login of one connection; a stale invalidation names an old one.
/// Issued in increasing order, so a binding issued later compares greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BindingId(u64);

/// The next [`BindingId`] to issue.
static NEXT_BINDING: AtomicU64 = AtomicU64::new(1);

impl BindingId {
    pub(crate) fn next() -> Self {
        Self(NEXT_BINDING.fetch_add(1, Ordering::Relaxed))
    }

    /// The id the next binding will get: every binding issued so far compares less.
    pub fn watermark() -> Self {
        Self(NEXT_BINDING.load(Ordering::Relaxed))
    }
}

/// What the registry pushes to a connection.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum Push {
    /// An event for the binding `binding`, written if the connection still has it.
    Event {
        /// The binding the registry handed the event to.
        binding: BindingId,
        /// The event, shared by the pushes of one registry shard.
        event: Arc<ShardEvent>,
    },
    /// The binding `binding` is revoked: write `invalidated` and unbind.
    Invalidated {
        /// The binding revoked; a connection bound anew since then ignores it.
        binding: BindingId,
    },
}

/// One event as a registry shard hands it to its connections: the pushes of a shard share
/// this, so each costs one reference count on a line that stays on the shard's thread
/// (rather than three on lines every shard's thread touches).
#[derive(Debug)]
pub struct ShardEvent {
    /// The whole encoded message.
    pub(crate) message: Bytes,
    /// When the bus accepted the event, for `tether_event_delivery_seconds`.
    pub(crate) accepted: Instant,
    /// Held until every connection has taken the event.
    pub(crate) _in_flight: Arc<EventInFlight>,
}

/// A connection is bound to a user; repeating the same binding is harmless.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Bind {
    /// The user name.
    pub user: Arc<str>,
    /// The login this binding comes from.
    pub binding: BindingId,
    /// The bound connection.
    pub connection: Recipient<Push>,
}

/// A binding ended (logout, another login, close).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unbind {
    /// The user name the binding was for.
    pub user: Arc<str>,
    /// The binding that ended.
    pub binding: BindingId,
}

/// Hands an encoded event message to every connection bound to `user`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Deliver {
    /// The user the event is for.
    pub user: Arc<str>,
    /// The whole `event` message, encoded once for all connections.
    pub message: Bytes,
    /// Travels with every push of the event.
    pub in_flight: Arc<EventInFlight>,
    /// When the bus accepted the event.
    pub accepted: Instant,
}

/// One event of a [`DeliverBatch`].
#[derive(Debug)]
pub(crate) struct BatchedEvent {
    /// The event's place in the batch, whose entry names its user.
    pub index: usize,
    /// The whole `event` message, encoded once for all connections.
    pub message: Bytes,
    /// Travels with every push of the event.
    pub in_flight: Arc<EventInFlight>,
}

/// Several events of one batch, in publish order, each handed out as by [`Deliver`]: the
/// bus sends a slice of a batch to a shard in one message.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct DeliverBatch {
    /// The whole batch, shared by every shard's message (the events name their users in
    /// it: nothing is copied per event).
    pub batch: Arc<[Publish]>,
    /// The events of the slice for users this shard holds.
    pub events: Vec<BatchedEvent>,
    /// When the bus accepted them.
    pub accepted: Instant,
}

/// Revokes the bindings of `user`, except the one named in `except`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Revoke {
    /// Whose bindings end.
    pub user: Arc<str>,
    /// The binding that stays (the connection that asked for the invalidation).
    pub except: Option<BindingId>,
    /// When set, only bindings issued before it end (a late invalidation from another
    /// node spares the logins made after it).
    pub issued_before: Option<BindingId>,
    /// Receives how many connections were invalidated.
    pub revoked: oneshot::Sender<usize>,
}

/// Publishes an event for a user: every connection bound to that user gets
/// `event␟<time>␟<text>`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<PublishReceipt, PublishError>")]
pub struct Publish {
    /// The user the event is for.
    pub user: String,
    /// The event's text; it must not hold U+001E or U+001F.
    pub text: String,
    /// The event's id, 1 to 128 characters chosen by the publisher, or `None`: an event
    /// whose id was accepted in the last 5 minutes (on this node, or anywhere in the
    /// cluster) is not delivered again, and its receipt says
    /// [`duplicate`](PublishReceipt::duplicate) (SPEC §6).
    pub id: Option<String>,
}

impl Publish {
    /// An event for `user` without an id.
    pub fn new(user: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            text: text.into(),
            id: None,
        }
    }

    /// The same event with the id `id` (see [`Publish::id`]).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// What happened to a published event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishReceipt {
    /// The event's time as written on the wire (SPEC §3).
    pub time: i64,
    /// How many connections it was handed to (0 for a duplicate: none this time).
    pub connections: usize,
    /// The event's id was accepted in the last 5 minutes: it was not delivered again,
    /// and `time` is the time the first one was stamped with.
    pub duplicate: bool,
}

impl PublishReceipt {
    /// The receipt of a duplicate: the first event's time, handed to no connection.
    pub fn duplicate(time: i64) -> Self {
        Self {
            time,
            connections: 0,
            duplicate: true,
        }
    }
}

/// Why an event was not published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The user name breaks the rules of SPEC §5.
    InvalidUser(CredentialError),
    /// The text holds a message or part separator.
    TextHasSeparator,
    /// The text is longer than a connection may hold unsent (`max_pending_bytes`).
    TextTooLong {
        /// The longest text accepted, in bytes.
        limit: usize,
    },
    /// The bus or the registry stopped before answering.
    Unavailable,
    /// In a cluster, the broker cannot be reached: nothing was delivered (SPEC §8).
    ClusterUnreachable,
    /// In a cluster, the broker stopped answering after the event was sent to it: it may
    /// or may not be delivered (SPEC §6, `504`). Retry it with its id. For a batch: at
    /// least one entry's outcome is unknown, or some were delivered and others not sent.
    OutcomeUnknown,
    /// The event's id is not 1 to 128 characters.
    InvalidId,
    /// A batch with no event or more than [`MAX_BATCH_EVENTS`].
    BatchSize {
        /// How many events the batch held.
        events: usize,
    },
    /// One event of a batch is not valid; nothing of the batch was published.
    InBatch {
        /// The event's place in the batch, from 0.
        index: usize,
        /// What is wrong with it.
        error: Box<PublishError>,
    },
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUser(err) => write!(f, "invalid user: {err}"),
            Self::TextHasSeparator => f.write_str("the text contains U+001E or U+001F"),
            Self::TextTooLong { limit } => write!(f, "the text is longer than {limit} bytes"),
            Self::Unavailable => f.write_str("the event bus is restarting"),
            Self::ClusterUnreachable => {
                f.write_str("the cluster broker (Redis) is unreachable; nothing was delivered")
            }
            Self::OutcomeUnknown => f.write_str(
                "the cluster broker (Redis) stopped answering after the event was sent: it \
                 may or may not be delivered; retry it with its \"id\"",
            ),
            Self::InvalidId => f.write_str("\"id\" must be 1 to 128 characters"),
            Self::BatchSize { events } => write!(
                f,
                "a batch holds 1 to {MAX_BATCH_EVENTS} events, not {events}"
            ),
            Self::InBatch { index, error } => write!(f, "events[{index}]: {error}"),
        }
    }
}

impl std::error::Error for PublishError {}

/// Publishes several events in one go: each is published as by [`Publish`], in order. The
/// answer holds one receipt per event, in the same order. If any event is not valid, none
/// is published and the error names it ([`PublishError::InBatch`]).
///
/// Every event holds one of the [`EVENTS_IN_FLIGHT`](crate::hub::bus::EVENTS_IN_FLIGHT) permits, as a single publish does; the
/// bus hands a batch on in slices of up to half the permits, each slice in one message per
/// shard holding its users, and waits in place for permits between slices. A batch is
/// answered once its last slice is handed on.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<PublishReceipt>, PublishError>")]
pub struct PublishBatch {
    /// The events, 1 to [`MAX_BATCH_EVENTS`]; shared, so that a retry after a restart
    /// copies nothing.
    pub events: Arc<[Publish]>,
}

/// One published event on its way from the bus into the connections' output buffers: it
/// holds one of the bus's [`EVENTS_IN_FLIGHT`](crate::hub::bus::EVENTS_IN_FLIGHT) permits until the last connection has taken
/// the event (or dropped it), so publishers cannot run ahead of the fan-out and fill the
/// connections' mailboxes.
#[derive(Debug)]
pub struct EventInFlight {
    pub(crate) _permit: OwnedSemaphorePermit,
}

/// Sends `invalidated` to the connections bound to `user` (all but `except`) and unbinds
/// them. Answers with how many were invalidated.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<usize, PublishError>")]
pub struct Invalidate {
    /// Whose connections are invalidated.
    pub user: String,
    /// The binding that is spared: the connection that asked.
    pub except: Option<BindingId>,
    /// Why, for the log.
    pub cause: InvalidationCause,
}

/// An event another node published, handed in by the broker.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct RemoteEvent {
    /// The user it is for.
    pub user: Arc<str>,
    /// Its time as the publishing node stamped it.
    pub time: i64,
    /// Its text.
    pub text: Arc<str>,
}

/// Another node invalidated a user, handed in by the broker.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct RemoteInvalidate {
    /// Whose connections are invalidated.
    pub user: Arc<str>,
    /// Only bindings issued before this end, when set.
    pub issued_before: Option<BindingId>,
}

/// Answers once every registry shard has taken everything the bus handed it before this.
/// Shutdown waits for it before telling the connections to close, so that every event
/// acknowledged until then is queued in its connections' mailboxes ahead of `shutdown`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain;

/// The supervised children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Child {
    /// The registry shard of the worker with this index.
    Registry(usize),
    Bus,
}

/// Held by a supervised actor; dropping it (on stop, or while a panic unwinds) tells the
/// supervisor that the actor is gone.
pub(crate) struct DeathNotice {
    /// Who to tell.
    pub supervisor: Recipient<ChildGone>,
    /// Which child this is.
    pub child: Child,
}

impl Drop for DeathNotice {
    fn drop(&mut self) {
        self.supervisor.do_send(ChildGone(self.child));
    }
}

/// A child stopped or panicked.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ChildGone(pub Child);

/// Makes the receiving registry or bus panic, to test supervision.
#[cfg(feature = "fault-injection")]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// Which child [`InjectPanic`] goes to.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultTarget {
    /// Every shard of the user registry.
    Registry,
    /// The event bus.
    Bus,
}
