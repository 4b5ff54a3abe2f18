//! The broker seam: what joins several nodes into one service (SPEC §8).
//!
//! Alone (no broker, the default) the bus delivers every event and invalidation in place,
//! as it always has. With a [`Broker`] (the Redis one lives in the `tether-cluster` crate,
//! so this crate knows no Redis) the bus hands each event and cross-node invalidation to
//! the broker first, and delivers on this node only once the broker has taken it; what
//! other nodes publish comes back through the node's [`Inbox`]. `Presence` tells the
//! broker how many connections this node has per user, so that it subscribes to a user
//! while the node has one and answers counts over all nodes.

use crate::auth::verifiers::VerifierStore;
use crate::hub::messages::BindingId;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::oneshot;

/// The broker cannot be reached (or lost its connection before it answered): nothing was
/// delivered anywhere, and the caller may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerUnreachable;

impl fmt::Display for BrokerUnreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the cluster broker is unreachable")
    }
}

impl std::error::Error for BrokerUnreachable {}

/// The answer to a request handed to a broker: the user's connections on the *other*
/// live nodes.
pub type OtherNodes = oneshot::Receiver<Result<usize, BrokerUnreachable>>;

/// The answer to [`Broker::count_many`]: each user's connections on the other live nodes,
/// in the order asked.
pub type OtherNodesMany = oneshot::Receiver<Result<Vec<usize>, BrokerUnreachable>>;

/// What a broker did with a publish it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Published: `others` is the user's connections on the other live nodes.
    Sent {
        /// The user's connections on the other live nodes.
        others: usize,
    },
    /// Not published: the event's id was accepted in the last 5 minutes, for an event
    /// stamped `time` (SPEC §6). It must not be delivered here either.
    Duplicate {
        /// The time of the event first accepted with the id.
        time: i64,
    },
}

/// Why a broker did not take a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotTaken {
    /// Nothing was sent: nothing will be delivered anywhere (`503`).
    Unreachable,
    /// It was sent, and the broker stopped answering before it said what it did: the
    /// event may or may not be delivered on other nodes (`504`).
    Unknown,
}

/// Called once with the answer to a publish, on the broker's thread, in the order of the
/// publishes: it delivers the event on this node (or answers the publisher `503`/`504`).
pub type Answered = Box<dyn FnOnce(Result<Taken, NotTaken>) + Send>;

/// An event for the other nodes, stamped and checked by the bus.
#[derive(Debug, Clone)]
pub struct ClusterEvent {
    /// The user it is for.
    pub user: Arc<str>,
    /// Its time as written on the wire (SPEC §3).
    pub time: i64,
    /// Its text.
    pub text: Arc<str>,
    /// Its id (SPEC §6): the broker publishes it only if the id was not accepted in the
    /// last 5 minutes anywhere in the cluster, and remembers it, in one step.
    pub id: Option<Arc<str>>,
}

/// Connects this node to the others. Every method hands its work to the broker's own
/// thread and returns at once: the bus calls them from its event loop.
///
/// Requests that carry an answer ([`Broker::publish`], [`Broker::invalidate`],
/// [`Broker::count`]) are answered in the order they were made, each with the user's
/// connections on the other live nodes, or [`BrokerUnreachable`]. A publish's answer is a
/// function the broker calls (on its own thread): it delivers the event here, so delivery
/// on this node keeps publish order without the bus waiting for the broker.
pub trait Broker: fmt::Debug + Send + Sync + 'static {
    /// Once, when the server starts: where events and invalidations from the other nodes
    /// go.
    fn attach(&self, inbox: Arc<dyn Inbox>);

    /// Publishes `event` to the other nodes holding its user, then calls `answered`.
    /// Events published by one node reach every other node in the order of these calls,
    /// and the `answered` functions are called in that order too.
    fn publish(&self, event: ClusterEvent, answered: Answered);

    /// Invalidates `user` on the other nodes (an operator's invalidation: it fails while
    /// the broker is unreachable).
    fn invalidate(&self, user: Arc<str>) -> OtherNodes;

    /// Invalidates `user` on the other nodes as soon as it can (a client's `invalidate`):
    /// kept while the broker is unreachable and sent when it is back.
    fn invalidate_later(&self, user: Arc<str>);

    /// How many connections the other live nodes have bound to `user`.
    fn count(&self, user: Arc<str>) -> OtherNodes;

    /// How many connections the other live nodes have bound to each of `users` (a page of
    /// the admin API's user list), in one request rather than one per user.
    fn count_many(&self, users: Vec<Arc<str>>) -> OtherNodesMany;

    /// This node's connections bound to `user` changed by `delta` (+1 bound, -1 unbound):
    /// the broker follows the user's channel while the sum is above zero. `subscribed`
    /// (given with a bind) is answered, or dropped, once the broker follows the channel —
    /// Redis confirmed the subscription, at once when it already did — or cannot (the
    /// broker is unreachable): the login that bound waits for it before `login_valid`.
    fn presence(&self, user: &str, delta: i32, subscribed: Option<oneshot::Sender<()>>);

    /// Resolves (with `Ok` or a closed channel, alike) once every publish made before this
    /// call has been answered — its `answered` function called, delivering it here or
    /// refusing it. Shutdown waits for it, so that an accepted event reaches this node's
    /// connections before their `shutdown`.
    fn flush(&self) -> oneshot::Receiver<()>;

    /// Whether the broker is connected now (for `/healthz` and a quick `503`).
    fn connected(&self) -> bool;

    /// The server is stopping: withdraw this node's presence from the cluster.
    fn stop(&self);

    /// At start, waits (at most `within`; blocks the calling thread) for the broker's first
    /// attempt to join: `Err` with the reason when the node must not start — another live
    /// node holds its name (SPEC §8). `Ok` when it joined, could not reach the cluster yet
    /// (it keeps trying), or `within` passed.
    fn wait_joined(&self, within: std::time::Duration) -> Result<(), String> {
        let _ = within;
        Ok(())
    }

    /// Whether the cluster throttles logins of `name` from `client` now: `limit` failures
    /// (of [`Broker::login_failed`]) through any node in the last minute (SPEC §8). Answered
    /// at once, from what the broker has learnt; a broker that counts nothing says `false`.
    fn login_throttled(&self, client: IpAddr, name: &[u8]) -> bool {
        let _ = (client, name);
        false
    }

    /// A checked login of `name` from `client` failed here; `limit` failures a minute
    /// throttle the pair. Counted cluster-wide as soon as the broker can (not while it is
    /// unreachable: then the node's own throttle alone holds). Answers what resolves (or
    /// is dropped) once it is counted and, at the limit, every node told — the session
    /// holds its `login_invalid` until then — or `None` when nothing will be counted.
    fn login_failed(
        &self,
        client: IpAddr,
        name: &[u8],
        limit: u32,
    ) -> Option<oneshot::Receiver<()>> {
        let _ = (client, name, limit);
        None
    }

    /// A checked login of `name` from `client` succeeded here and is about to be admitted;
    /// `limit` failures a minute throttle the pair. The cluster may throttle the pair
    /// already while this node has not heard so (the other node's announcement is still
    /// on its way), so the broker asks where the failures are counted: answers what
    /// resolves with `true` to admit the login — the cluster then forgets the pair's
    /// failures, as the node's own throttle does — or `false` to refuse it unchecked as
    /// throttled. A sender dropped unanswered admits (the broker lost its connection: the
    /// node's own throttle holds then). `None` admits at once (nothing is counted, or the
    /// broker is unreachable).
    fn login_succeeded(
        &self,
        client: IpAddr,
        name: &[u8],
        limit: u32,
    ) -> Option<oneshot::Receiver<bool>> {
        let _ = (client, name, limit);
        None
    }

    /// Where the cluster keeps its verifiers (SPEC §5, "Admission after a restart"), each
    /// forgotten once unused for `ttl`, so that every node finds the one another node
    /// left; `None` when this broker keeps none (every login then pays bcrypt).
    fn verifiers(&self, ttl: std::time::Duration) -> Option<Arc<dyn VerifierStore>> {
        let _ = ttl;
        None
    }

    /// What the broker is connected to now, for `/healthz` and logs (a Redis broker: the
    /// master's address, or the masters of a Redis Cluster); `None` while it is connected
    /// to nothing, or when it has nothing to say.
    fn upstream(&self) -> Option<String> {
        None
    }

    /// The names of the cluster's live nodes, this one included, sorted, as the broker
    /// last saw them (a Redis broker: at its last heartbeat); `None` while it is connected
    /// to nothing, or when it has nothing to say.
    fn live_nodes(&self) -> Option<Vec<String>> {
        None
    }

    /// Adds the broker's metrics to `registry` (the server gives it a `tether` prefix).
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let _ = registry;
    }
}

/// Where a broker hands what the other nodes publish. Never blocks: a node that cannot
/// keep up refuses, and the broker counts the drop.
pub trait Inbox: Send + Sync + 'static {
    /// An event another node published for `user`; `false` when this node is too busy to
    /// take it now (it is dropped).
    fn event(&self, user: Arc<str>, time: i64, text: Arc<str>) -> bool;

    /// Another node invalidated `user`: every connection of the user here whose binding
    /// was issued before `issued_before` (all of them, with `None`) gets `invalidated`.
    fn invalidate(&self, user: Arc<str>, issued_before: Option<BindingId>);
}
