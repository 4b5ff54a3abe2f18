//! The broker's thread over a Redis Cluster (`redis+cluster://`): sharded pub/sub on the
//! shard that owns each user.
//!
//! Every name of one user carries the user's hash tag (`{p}:user:{hex}` the channel,
//! `{p}:presence:{hex}` a hash of node → connections, `{p}:invalidated:{hex}`), so an
//! event is one `EVALSHA` on one master: `SPUBLISH` on the user's channel and the count of
//! the user's connections on the other live nodes, read from the user's presence hash for
//! the live nodes this node saw at its last heartbeat (passed as arguments: no cross-slot
//! script). The live nodes are a sorted set `{p}:nodes` (on whichever shard owns it),
//! renewed and read by each node's heartbeat. A node's field in the presence hashes is its
//! name and the time it started (`node#ms`), so a node that restarts is not counted for
//! the users its previous run had.
//!
//! A batch of requests (events, counts, failed logins, verifiers…) goes out as one
//! pipeline per master, on a connection of this module's own to each master: every
//! command to the master of its slot in the slot map read by `CLUSTER SLOTS`. Sending
//! each user's pipeline through the `redis` crate's cluster connection instead (it routes
//! one pipeline to one slot) cost the nodes a future and a pipeline per user, and its
//! retry of a pipeline that met a redirect sends the whole pipeline again (commands
//! already run included). The crate's connection (one multiplexed connection per node;
//! it routes by slot and follows `MOVED`/`ASK`) serves what goes to every master
//! (`SCRIPT LOAD`, the probe) and the commands a master answered with a redirect — each
//! sent again alone, in order per slot, then the slot map is read again. It has no push
//! sender: its
//! subscription support does not serve sharded channels of many slots — it resubscribes a
//! node with one `SSUBSCRIBE` listing every channel the node owns, which Redis refuses
//! (`CROSSSLOT`), and a `sunsubscribe` Redis sends on its own when a slot moves is taken
//! for the answer to whatever command is in flight. So this module keeps, per master, one
//! RESP3 connection of its own for sharded subscriptions (one `SSUBSCRIBE` per user, sent
//! to the master that owns the user's slot after `CLUSTER SLOTS`, its confirmation read
//! from the pushes rather than waited for as an answer), and adds:
//! - a sharded subscription that Redis drops because its slot moved (a `sunsubscribe`
//!   push) is made again at once on the slot's new owner;
//! - a node that loses any master (a `Disconnection` push, a probe unanswered) counts as
//!   unreachable as a whole, as with one Redis, and reconnects, resubscribes and
//!   reconciles;
//! - one pipeline per master per batch, in the order of the requests, so a user's events
//!   keep their order (a redirected one is sent again before any later one of its slot).

use crate::history::BindingHistory;
use crate::metrics::ClusterMetrics;
use crate::names::{event_payload, invalidation_payload, throttle_payload, Names, Payload};
use crate::throttle::Throttled;
use crate::verifiers::Check;
use crate::worker::{
    bounded, claim_token, count_of, invalidated_times, is_dead_run_of_this_host, is_duplicate,
    log_name_taken, now_ms, script_head, script_id_and_invalidated, Ended, Joined, Pending,
    Request, Status, Wiring, ANSWER_TIMEOUT, BACKOFF_MAX, BACKOFF_MIN, BATCH, CONNECT_TIMEOUT,
    HEARTBEAT, LATE_HEARTBEAT, MARK_INTERVAL, MAX_LATER, MAX_MARKS, OWNER_TTL,
};
use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{PushInfo, PushKind, ServerErrorKind, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_actors::hub::broker::{BrokerUnreachable, Inbox, NotTaken};
use tether_actors::hub::messages::BindingId;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The per-user script: `KEYS` = the user's presence hash, its `invalidated` key, and for
/// an event with an id its id key (all on the user's hash tag); `ARGV` = mode, the user's
/// channel, the payload, the event's time or the invalidation's made time (else empty),
/// then the other live nodes' fields. Modes: `e` publish an event — unless its id key
/// exists, then answer `{time}` of the first event with that id and publish nothing; else
/// set the id key (5 minutes) in the same step (SPEC §6) — `i` publish an invalidation
/// (and note when it reached Redis and when the latest was made, `sent:made`), `c` count
/// only — each answers the user's connections on the given nodes; `t` a failed login
/// (`KEYS[1]` = the pair's failures, on the name's hash tag, `ARGV[2]` = the limit,
/// `ARGV[3]` = a member naming this failure): answers how many ms the pair stays
/// throttled (0: not throttled), as `worker.rs`'s script does.
const USER_SCRIPT: &str = concat!(
    script_head!(),
    r"
local id_key, invalidated_key, extra = KEYS[3], KEYS[2], ARGV[4]
",
    script_id_and_invalidated!(),
    r"
if mode ~= 'c' then redis.call('SPUBLISH', ARGV[2], ARGV[3]) end
local total = 0
if #ARGV >= 5 then
  for _, c in ipairs(redis.call('HMGET', KEYS[1], unpack(ARGV, 5))) do
    if c then total = total + tonumber(c) end
  end
end
return total
"
);

/// The heartbeat, which also claims the node's name: `KEYS[1]` = the set of live nodes,
/// `KEYS[2]` = the node's owner key (on the same slot: `Names::nodes_owner_key`); `ARGV` =
/// mode, this run's field, this run's token, a stale token it may replace, the claim's TTL
/// (ms). Mode `h`: unless another token holds the name (then answers `{now, {}, 2,
/// holder}` and writes nothing), claims it, renews this node, forgets nodes silent for a
/// minute, and answers Redis's time (ms), the nodes heard from within 10 s, 0 if this node
/// was in the set (1: new, or forgotten) and `''`. Mode `w`: this run leaves the set and
/// gives the name up if it holds it.
const HEARTBEAT_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local owner = redis.call('GET', KEYS[2])
if ARGV[1] == 'w' then
  if owner == ARGV[3] then redis.call('DEL', KEYS[2]) end
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if owner and owner ~= ARGV[3] and owner ~= ARGV[4] then return {now, {}, 2, owner} end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5])
local known = redis.call('ZSCORE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - 10000, '+inf')
if known then return {now, live, 0, ''} end
return {now, live, 1, ''}
";

/// What a heartbeat found.
enum Beat {
    /// This run holds the name and was renewed; `known`: it was in the set of live nodes.
    Renewed { known: bool },
    /// Another run holds the name (its token).
    Taken(String),
}

/// An answer awaited: its command's place in the batch, and what waits for it.
type Answering = (usize, Pending);

/// A [`Request::CountMany`]: its commands' places in the batch and where the counts go.
type Many = (
    std::ops::Range<usize>,
    oneshot::Sender<Result<Vec<usize>, BrokerUnreachable>>,
);

/// Commands to send at once, each with the slot it goes to ([`Link::run`]).
type Batch = Vec<(u16, redis::Cmd)>;

/// `cmd` with the slot of `key`, the key it names.
fn keyed(key: &str, cmd: redis::Cmd) -> (u16, redis::Cmd) {
    (slot_of(key.as_bytes()), cmd)
}

/// The replies to a [`Batch`], in its order.
struct Sent {
    /// Per command its reply (an error reply included), or `None` when it was not
    /// answered.
    replies: Vec<Option<Value>>,
    /// Why some were not answered (a connection lost, an answer late).
    failed: Option<String>,
}

impl Sent {
    /// The reply to the command at `index`, unless it was an error or none came.
    fn reply(&self, index: usize) -> Option<&Value> {
        self.replies
            .get(index)
            .and_then(Option::as_ref)
            .filter(|reply| !matches!(reply, Value::ServerError(_)))
    }

    /// Why the batch did not fully succeed: a command not answered, or answered with an
    /// error.
    fn failure(&self) -> Option<String> {
        self.failed.clone().or_else(|| {
            self.replies.iter().find_map(|reply| match reply {
                Some(Value::ServerError(err)) => Some(err.to_string()),
                _ => None,
            })
        })
    }
}

/// Whether `reply` says the command went to the wrong master, or not yet to the right
/// one, and was not run (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`).
fn is_redirect(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(err) if matches!(
        err.kind(),
        Some(ServerErrorKind::Moved | ServerErrorKind::Ask | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown)
    ))
}

/// The connections to the cluster while connected.
struct Link {
    /// The crate's cluster connection: routes by slot and follows `MOVED`/`ASK`; used for
    /// what goes to every master, and for the commands a master redirected.
    connection: ClusterConnection,
    /// Per master address, the connection its batches' pipelines go to (one per batch).
    commands: HashMap<String, MultiplexedConnection>,
    /// A seed's URL (with the credentials), for the connections to each master.
    template: String,
    /// Per master address, the connection of its sharded subscriptions (RESP3).
    subscriptions: HashMap<String, MultiplexedConnection>,
    /// Slot ranges and the address of the master serving each, from `CLUSTER SLOTS`.
    slots: Vec<(u16, u16, String)>,
    /// The SHA1 of [`USER_SCRIPT`] and of [`HEARTBEAT_SCRIPT`], loaded on every master.
    user_script: String,
    heartbeat_script: String,
    /// The masters' addresses.
    masters: Vec<String>,
    /// The CA certificates (PEM) trusted for TLS, if given.
    ca: Option<Vec<u8>>,
}

/// The state of the broker's thread over a Redis Cluster.
pub(crate) struct Worker {
    seeds: Vec<String>,
    ca: Option<Vec<u8>>,
    names: Names,
    /// This run's field in presence hashes and in the set of live nodes: `node#start-ms`.
    member: String,
    /// This run's claim on the node's name (`worker::claim_token`).
    token: String,
    requests: mpsc::UnboundedReceiver<Request>,
    connected: Arc<AtomicBool>,
    /// The masters connected to now and the live nodes, for `/healthz` and `GET /v1/node`.
    status: Status,
    metrics: ClusterMetrics,
    inbox: Option<Arc<dyn Inbox>>,
    /// Pushes from every node: messages, (un)subscriptions, disconnections.
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    push_sender: mpsc::UnboundedSender<PushInfo>,
    /// This node's connections per user (only users with some).
    local: HashMap<Arc<str>, u32>,
    /// Users whose count changed since it was last written to Redis.
    dirty: HashSet<Arc<str>>,
    /// Users whose channel this node follows.
    subscribed: HashSet<Arc<str>>,
    /// Users whose subscription Redis dropped (their slot moved), to subscribe again.
    moved: Vec<Arc<str>>,
    /// Client invalidations to send once Redis is reachable, once per user, each with when
    /// the latest of the user's was made (this machine's ms).
    later: VecDeque<(Arc<str>, i64)>,
    /// Which bindings existed when, for invalidations received late.
    history: BindingHistory,
    /// Told how the first attempt to join went, then `None`.
    joined: Option<std::sync::mpsc::SyncSender<Joined>>,
    /// The pairs the cluster throttles, shared with the broker's handle.
    throttled: Arc<Throttled>,
    /// Counts this run's failed logins, so each is a distinct member of its pair's set.
    failures: u64,
    /// Whether Redis dropped the throttle channel's subscription (its slot moved).
    throttle_moved: bool,
    /// The other live nodes' fields, as the last heartbeat saw them.
    others: Vec<String>,
    /// Redis's time (ms) at the last heartbeat answered.
    last_seen: Option<i64>,
    /// Redis's time (ms) at the heartbeat before that one: what a restore reconciles from
    /// (see `serve`).
    seen_before: Option<i64>,
    /// When the last heartbeat was sent.
    last_beat: Instant,
    clock_offset: i64,
    marks: Vec<(i64, BindingId)>,
    was_connected: bool,
    told_unreachable: bool,
    jitter: RandomState,
    draws: u64,
}

impl Worker {
    /// `cluster`: the seed nodes' URLs and the CA certificates (PEM) trusted for TLS.
    pub(crate) fn new(cluster: (Vec<String>, Option<Vec<u8>>), wiring: Wiring) -> Self {
        let Wiring {
            names,
            requests,
            status,
            metrics,
            joined,
            throttled,
        } = wiring;
        let connected = Arc::clone(&status.connected);
        let (seeds, ca) = cluster;
        let (push_sender, pushes) = mpsc::unbounded_channel();
        Self {
            seeds,
            ca,
            member: format!("{}#{}", names.node, now_ms()),
            token: claim_token(&RandomState::new()),
            names,
            requests,
            connected,
            status,
            metrics,
            inbox: None,
            pushes,
            push_sender,
            local: HashMap::new(),
            dirty: HashSet::new(),
            subscribed: HashSet::new(),
            moved: Vec::new(),
            later: VecDeque::new(),
            history: BindingHistory::default(),
            joined: Some(joined),
            throttled,
            failures: 0,
            throttle_moved: false,
            others: Vec::new(),
            last_seen: None,
            seen_before: None,
            last_beat: Instant::now(),
            clock_offset: 0,
            marks: Vec::new(),
            was_connected: false,
            told_unreachable: false,
            jitter: RandomState::new(),
            draws: 0,
        }
    }

    /// Connects, serves, and reconnects after every loss, until the node stops.
    pub(crate) async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.connect_while_serving().await {
                Some(Ok(link)) => match self.serve(link).await {
                    Ended::Stopping => return,
                    Ended::NameTaken(owner) => return self.retire(&owner).await,
                    Ended::Lost(reason) => {
                        if self.connected.load(Ordering::Relaxed) {
                            backoff = BACKOFF_MIN;
                        }
                        self.tell_joined(Joined::Unreachable(reason.clone()));
                        self.lost(&reason);
                    }
                },
                Some(Err(reason)) => {
                    self.tell_joined(Joined::Unreachable(reason.clone()));
                    self.lost(&reason);
                }
                None => return,
            }
            self.draws += 1;
            let draw = self.jitter.hash_one(self.draws) % 1000;
            let pause = backoff - backoff / 2 * u32::try_from(draw).unwrap_or(0) / 1000;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if self.wait_while_unreachable(pause).await.is_err() {
                return;
            }
        }
    }

    /// Says how the first attempt to join went (once).
    fn tell_joined(&mut self, joined: Joined) {
        if let Some(tell) = self.joined.take() {
            let _ = tell.try_send(joined);
        }
    }

    /// Another live node holds this node's name: this node stops serving the cluster side
    /// for good (publishes `503`), as `worker.rs`'s does, and serves its own clients.
    async fn retire(&mut self, owner: &str) {
        self.connected.store(false, Ordering::Relaxed);
        self.metrics.connected.set(0);
        self.metrics.set_masters(&[]);
        if let Ok(mut upstream) = self.status.upstream.lock() {
            *upstream = None;
        }
        self.subscribed.clear();
        self.metrics.subscribed_users.set(0);
        log_name_taken(&self.names.node, owner, self.joined.is_some());
        self.tell_joined(Joined::NameTaken);
        loop {
            tokio::select! {
                request = self.requests.recv() => match request {
                    Some(request) => if self.unreachable(request) { return },
                    None => return,
                },
                _ = self.pushes.recv() => {}
            }
        }
    }

    /// Marks the node unreachable, with one log line per change of state.
    fn lost(&mut self, reason: &str) {
        let was_connected = self.connected.swap(false, Ordering::Relaxed);
        self.metrics.connected.set(0);
        self.metrics.set_masters(&[]);
        if let Ok(mut upstream) = self.status.upstream.lock() {
            *upstream = None;
        }
        self.subscribed.clear();
        self.moved.clear();
        self.metrics.subscribed_users.set(0);
        // Every count is written again once back: a pipeline cut short may have lost some.
        self.dirty.extend(self.local.keys().cloned());
        if was_connected {
            self.marks.clear();
            self.mark();
        }
        if was_connected || !self.told_unreachable {
            self.told_unreachable = true;
            log::warn!(
                "cluster: Redis Cluster unreachable ({reason}); node {:?} keeps serving its own \
                 clients, refuses publishes (503) and reconnects",
                self.names.node
            );
        }
    }

    fn mark(&mut self) {
        let (now, next) = (now_ms(), BindingId::watermark());
        if self.marks.len() < MAX_MARKS {
            self.marks.push((now, next));
        }
        self.history.note(now, next);
    }

    /// Waits `pause` while serving requests as unreachable; `Err` when the node stops.
    async fn wait_while_unreachable(&mut self, pause: std::time::Duration) -> Result<(), ()> {
        let until = Instant::now() + pause;
        let mut marks = tokio::time::interval(MARK_INTERVAL);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return Ok(()),
                _ = marks.tick() => self.mark(),
                request = self.requests.recv() => match request {
                    Some(request) => if self.unreachable(request) { return Err(()) },
                    None => return Err(()),
                },
                // Pushes of a connection given up: nothing to take from them.
                _ = self.pushes.recv() => {}
            }
        }
    }

    /// Handles a request while unreachable; `true` when the node stops.
    fn unreachable(&mut self, request: Request) -> bool {
        match request {
            Request::Attach(inbox) => self.inbox = Some(inbox),
            Request::Invalidate {
                user,
                answer: None,
                made,
            } => self.keep_for_later(user, made),
            Request::Presence { user, delta, .. } => self.count(&user, delta),
            // Not counted cluster-wide: the node's own throttle holds meanwhile; a verifier
            // check dropped unanswered pays bcrypt.
            Request::LoginFailed { .. } | Request::LoginSucceeded { .. } | Request::Verifier(_) => {
            }
            Request::Flush(done) => {
                let _ = done.send(());
            }
            Request::Stop(done) => {
                let _ = done.send(());
                return true;
            }
            request => request.refuse(),
        }
        false
    }

    fn keep_for_later(&mut self, user: Arc<str>, made: i64) {
        if let Some((_, kept)) = self.later.iter_mut().find(|(kept, _)| *kept == user) {
            *kept = (*kept).max(made);
            return;
        }
        if self.later.len() >= MAX_LATER {
            self.metrics.invalidations_dropped.inc();
            return;
        }
        self.later.push_back((user, made));
    }

    /// Applies a presence change to this node's counts.
    fn count(&mut self, user: &Arc<str>, delta: i32) {
        let count = self.local.entry(Arc::clone(user)).or_default();
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            self.local.remove(user);
        }
        self.dirty.insert(Arc::clone(user));
    }

    /// Tries to connect while answering requests as unreachable; `None` when the node stops.
    async fn connect_while_serving(&mut self) -> Option<Result<Link, String>> {
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            connect(
                self.seeds.clone(),
                self.ca.clone(),
                self.push_sender.clone(),
            ),
        );
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                done = &mut attempt => {
                    return Some(done.unwrap_or_else(|_| Err("connecting timed out".to_owned())));
                }
                request = self.requests.recv() => match request {
                    Some(request) => if self.unreachable(request) { return None },
                    None => return None,
                },
                _ = self.pushes.recv() => {}
            }
        }
    }

    /// Serves a fresh link until it is lost or the node stops.
    async fn serve(&mut self, mut link: Link) -> Ended {
        // Reconciled from the heartbeat before the last, as `worker.rs`'s `serve` says why.
        let (last_seen, seen_before) = (self.last_seen, self.seen_before);
        // The name first: nothing is written under a name another live node holds.
        if let Err(ended) = self.beat(&mut link).await {
            (self.last_seen, self.seen_before) = (last_seen, seen_before);
            return ended;
        }
        if let Err(err) = self.restore(&mut link, seen_before.or(last_seen)).await {
            (self.last_seen, self.seen_before) = (last_seen, seen_before);
            return Ended::Lost(err);
        }
        self.tell_joined(Joined::Connected);
        self.connected.store(true, Ordering::Relaxed);
        self.told_unreachable = false;
        self.metrics.connected.set(1);
        if self.was_connected {
            self.metrics.reconnects.inc();
        } else {
            // This run's first connection: what its crashed predecessors left goes.
            tokio::spawn(sweep_earlier_runs(
                link.commands.values().cloned().collect(),
                self.names.presence_pattern(),
                self.names.node.clone(),
                self.member.clone(),
            ));
        }
        self.was_connected = true;
        self.metrics.set_masters(&link.masters);
        let masters = link.masters.join(",");
        if let Ok(mut upstream) = self.status.upstream.lock() {
            *upstream = Some(masters.clone());
        }
        log::info!(
            "cluster: connected to the Redis Cluster (masters {masters}) as node {:?} ({} user(s) here)",
            self.names.node,
            self.local.len()
        );
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let mut marks = tokio::time::interval(MARK_INTERVAL);
        marks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                request = self.requests.recv() => match request {
                    Some(request) => {
                        // Back from a pause, or starved: first renew this node (and find out
                        // whether it was forgotten or replaced meanwhile).
                        if self.last_beat.elapsed() > LATE_HEARTBEAT {
                            if let Err(ended) = self.beat(&mut link).await {
                                return ended;
                            }
                        }
                        self.handle_requests(&mut link, request).await
                    }
                    None => return Ended::Stopping,
                },
                push = self.pushes.recv() => match push {
                    Some(push) => self.handle_push(push).map_err(Ended::Lost),
                    None => Err(Ended::Lost("the push channel closed".to_owned())),
                },
                _ = heartbeat.tick() => self.beat(&mut link).await,
                _ = marks.tick() => {
                    self.history.note(now_ms(), BindingId::watermark());
                    Ok(())
                }
            };
            if let Err(ended) = step {
                return ended;
            }
            if let Err(err) = self.follow_moved(&mut link).await {
                return Ended::Lost(err);
            }
        }
    }

    /// A push from a node: a message (handed on), a subscription Redis dropped because
    /// its slot moved (noted in `moved`, made again by [`Worker::follow_moved`]), a lost
    /// connection (`Err`); confirmations outside [`Worker::subscribe_confirmed`] are
    /// ignored.
    fn handle_push(&mut self, push: PushInfo) -> Result<(), String> {
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                if let Some(Value::BulkString(payload)) = push.data.get(1) {
                    self.received(payload);
                }
            }
            PushKind::SUnsubscribe => {
                let Some(Value::BulkString(channel)) = push.data.first() else {
                    return Ok(());
                };
                if self.names.throttle_channel().as_bytes() == channel.as_slice() {
                    self.throttle_moved = true;
                    return Ok(());
                }
                if let Some(user) = self
                    .subscribed
                    .iter()
                    .find(|user| self.names.tagged("user", user).as_bytes() == channel.as_slice())
                    .cloned()
                {
                    log::info!(
                        "cluster: Redis dropped the subscription of user {user:?} (its slot \
                         moved); subscribing on its new shard"
                    );
                    self.moved.push(user);
                }
            }
            PushKind::Disconnection => {
                return Err("a connection to a Redis Cluster master was lost".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// Subscribes again, on their slots' new owners, to the users whose subscriptions
    /// Redis dropped.
    async fn follow_moved(&mut self, link: &mut Link) -> Result<(), String> {
        if self.throttle_moved {
            self.throttle_moved = false;
            link.refresh_slots().await?;
            self.subscribe_confirmed(link, vec![self.names.throttle_channel()])
                .await?;
        }
        while !self.moved.is_empty() {
            let users = std::mem::take(&mut self.moved);
            let channels = users
                .iter()
                .filter(|user| self.subscribed.contains(*user))
                .map(|user| self.names.tagged("user", user))
                .collect();
            link.refresh_slots().await?;
            self.subscribe_confirmed(link, channels).await?;
        }
        Ok(())
    }

    /// Sends one `SSUBSCRIBE` per channel to the master serving it and waits for every
    /// confirmation among the pushes (handling the others meanwhile); what is not
    /// confirmed in time (a slot that moved: the `MOVED` answer is not waited for) is sent
    /// again after the slots are read again.
    async fn subscribe_confirmed(
        &mut self,
        link: &mut Link,
        channels: Vec<String>,
    ) -> Result<(), String> {
        let mut waiting: HashSet<String> = channels.into_iter().collect();
        for attempt in 0..3 {
            if waiting.is_empty() {
                return Ok(());
            }
            if attempt > 0 {
                link.refresh_slots().await?;
            }
            link.send(
                &self.seeds[0],
                &self.push_sender,
                waiting.iter().cloned().collect(),
                "SSUBSCRIBE",
            )
            .await?;
            let deadline = Instant::now() + ANSWER_TIMEOUT;
            while !waiting.is_empty() {
                let push = match tokio::time::timeout_at(deadline, self.pushes.recv()).await {
                    Ok(Some(push)) => push,
                    Ok(None) => return Err("the push channel closed".into()),
                    Err(_) => break,
                };
                if push.kind == PushKind::SSubscribe {
                    if let Some(Value::BulkString(channel)) = push.data.first() {
                        waiting.remove(String::from_utf8_lossy(channel).as_ref());
                    }
                } else {
                    self.handle_push(push)?;
                }
            }
        }
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} sharded subscription(s) not confirmed within {ANSWER_TIMEOUT:?}, three times",
                waiting.len()
            ))
        }
    }

    /// After connecting: the live nodes read, this node's counts written again, its users
    /// resubscribed, the invalidations missed applied, the ones kept sent.
    async fn restore(&mut self, link: &mut Link, last_seen: Option<i64>) -> Result<(), String> {
        // What the other nodes throttle (a sharded channel on its own slot).
        self.subscribe_confirmed(link, vec![self.names.throttle_channel()])
            .await?;
        let users: Vec<(Arc<str>, u32)> = self
            .local
            .iter()
            .map(|(user, count)| (Arc::clone(user), *count))
            .collect();
        for chunk in users.chunks(BATCH) {
            let channels = chunk
                .iter()
                .map(|(user, _)| self.names.tagged("user", user))
                .collect();
            self.subscribe_confirmed(link, channels).await?;
            self.subscribed
                .extend(chunk.iter().map(|(user, _)| Arc::clone(user)));
        }
        self.metrics
            .subscribed_users
            .set(self.subscribed.len() as i64);
        self.write_counts(link).await?;
        if let Some(since) = last_seen {
            for chunk in users.chunks(BATCH) {
                let reads = chunk
                    .iter()
                    .map(|(user, _)| {
                        let key = self.names.tagged("invalidated", user);
                        let mut cmd = redis::cmd("GET");
                        cmd.arg(&key);
                        keyed(&key, cmd)
                    })
                    .collect();
                let times = link.run(reads).await;
                if let Some(err) = times.failure() {
                    return Err(err);
                }
                for (index, (user, _)) in chunk.iter().enumerate() {
                    let time = match times.reply(index) {
                        Some(Value::BulkString(time)) => String::from_utf8_lossy(time),
                        _ => continue,
                    };
                    let Some((sent, made)) = invalidated_times(&time) else {
                        continue;
                    };
                    if sent > since {
                        // When it was made, not when it reached Redis.
                        let issued_before = self.issued_before(made - self.clock_offset);
                        log::info!(
                            "cluster: user {user:?} was invalidated while Redis was unreachable"
                        );
                        if let Some(inbox) = &self.inbox {
                            inbox.invalidate(Arc::clone(user), Some(issued_before));
                        }
                    }
                }
            }
        }
        self.marks.clear();
        while !self.later.is_empty() {
            let take = self.later.len().min(BATCH);
            let sends = self
                .later
                .iter()
                .take(take)
                .map(|(user, made)| {
                    self.invalidation(&link.user_script, user, made + self.clock_offset)
                })
                .collect();
            if let Some(err) = link.run(sends).await.failure() {
                return Err(err);
            }
            self.later.drain(..take);
        }
        Ok(())
    }

    /// Writes every count changed since the last write, one pipeline per master.
    async fn write_counts(&mut self, link: &mut Link) -> Result<(), String> {
        let users: Vec<Arc<str>> = self.dirty.iter().cloned().collect();
        for chunk in users.chunks(BATCH) {
            let writes = chunk.iter().map(|user| self.count_write(user)).collect();
            if let Some(err) = link.run(writes).await.failure() {
                return Err(err);
            }
            for user in chunk {
                self.dirty.remove(user);
            }
        }
        Ok(())
    }

    /// The write of `user`'s count here.
    fn count_write(&self, user: &Arc<str>) -> (u16, redis::Cmd) {
        let key = self.names.tagged("presence", user);
        let cmd = match self.local.get(user) {
            Some(count) => redis::Cmd::hset(&key, &self.member, *count),
            None => redis::Cmd::hdel(&key, &self.member),
        };
        keyed(&key, cmd)
    }

    fn issued_before(&self, at: i64) -> BindingId {
        self.marks
            .iter()
            .take_while(|(time, _)| *time <= at)
            .last()
            .or(self.marks.first())
            .map_or_else(BindingId::watermark, |(_, binding)| *binding)
    }

    /// A heartbeat: claims the name (one whose holder is a run of this node on this host
    /// that is gone is taken over) and renews the node in one script run, while every
    /// master is probed; a node found forgotten writes all its presence again; one whose
    /// name another live node holds ends.
    async fn beat(&mut self, link: &mut Link) -> Result<(), Ended> {
        let mut beat = self.heartbeat(link, "").await.map_err(Ended::Lost)?;
        if let Beat::Taken(held) = &beat {
            if is_dead_run_of_this_host(held) {
                log::info!(
                    "cluster: node name {:?} was held by an earlier run on this host that is \
                     gone; taking it over",
                    self.names.node
                );
                let stale = held.clone();
                beat = self.heartbeat(link, &stale).await.map_err(Ended::Lost)?;
            }
        }
        let known = match beat {
            Beat::Taken(owner) => return Err(Ended::NameTaken(owner)),
            Beat::Renewed { known } => known,
        };
        if !known && self.connected.load(Ordering::Relaxed) {
            log::warn!(
                "cluster: node {:?} had been forgotten by the others (paused or cut off for a \
                 minute or more); writing its {} user(s)' presence again",
                self.names.node,
                self.local.len()
            );
            self.dirty.extend(self.local.keys().cloned());
            self.write_counts(link).await.map_err(Ended::Lost)?;
        }
        Ok(())
    }

    /// The run of [`HEARTBEAT_SCRIPT`] in `mode`, replacing the claim `stale`.
    fn heartbeat_command(&self, sha: &str, mode: char, stale: &str) -> (u16, redis::Cmd) {
        let key = self.names.nodes_key();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha)
            .arg(2)
            .arg(&key)
            .arg(self.names.nodes_owner_key())
            .arg(mode.to_string())
            .arg(&self.member)
            .arg(&self.token)
            .arg(stale)
            .arg(OWNER_TTL.as_millis().to_string());
        keyed(&key, cmd)
    }

    /// One heartbeat (claiming the name, replacing `stale` if it holds it) and, at the same
    /// time, a `PING` to every master on its command connection.
    async fn heartbeat(&mut self, link: &mut Link, stale: &str) -> Result<Beat, String> {
        self.last_beat = Instant::now();
        let script = self.heartbeat_command(&link.heartbeat_script, 'h', stale);
        let connections: Vec<MultiplexedConnection> = link.commands.values().cloned().collect();
        let probes = connections.into_iter().map(|mut connection| async move {
            bounded(redis::cmd("PING").query_async::<()>(&mut connection)).await
        });
        let (sent, probed) = tokio::join!(link.run(vec![script]), join_all(probes));
        if let Some(err) = sent.failure() {
            return Err(err);
        }
        if let Some(err) = probed.into_iter().find_map(Result::err) {
            return Err(err);
        }
        let reply = sent.reply(0).cloned().unwrap_or(Value::Nil);
        let (now, live, verdict, owner): (i64, Vec<String>, i64, String) =
            redis::from_redis_value(reply).map_err(|err| format!("heartbeat: {err}"))?;
        if verdict == 2 {
            return Ok(Beat::Taken(owner));
        }
        // A member is `node#start-ms`: the node's name is all before the last `#`.
        self.status.set_live_nodes(live.iter().map(|member| {
            member
                .rsplit_once('#')
                .map_or(member.as_str(), |(node, _)| node)
        }));
        self.others = live.into_iter().filter(|n| *n != self.member).collect();
        self.seen_before = self.last_seen;
        self.last_seen = Some(now);
        self.clock_offset = now - now_ms();
        Ok(Beat::Renewed {
            known: verdict == 0,
        })
    }

    /// One `EVALSHA` of [`USER_SCRIPT`] for `user`, on the user's slot: `id` an event's
    /// id, `extra` the event's time or the invalidation's made time.
    fn user_script(
        &self,
        (sha, mode): (&str, char),
        user: &str,
        payload: &str,
        id: Option<&str>,
        extra: &str,
    ) -> (u16, redis::Cmd) {
        let presence = self.names.tagged("presence", user);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha)
            .arg(if id.is_some() { 3 } else { 2 })
            .arg(&presence)
            .arg(self.names.tagged("invalidated", user));
        if let Some(id) = id {
            cmd.arg(self.names.id_key(user, id));
        }
        cmd.arg(mode.to_string())
            .arg(self.names.tagged("user", user))
            .arg(payload)
            .arg(extra);
        for other in &self.others {
            cmd.arg(other);
        }
        keyed(&presence, cmd)
    }

    /// The invalidation of `user`, made at `made` (Redis's ms as this node reckons it).
    fn invalidation(&self, sha: &str, user: &str, made: i64) -> (u16, redis::Cmd) {
        let payload = invalidation_payload(&self.names.node, user, made);
        self.user_script((sha, 'i'), user, &payload, None, &made.to_string())
    }

    /// Takes `first` and whatever else is queued (up to [`BATCH`]); follows the users this
    /// node gained or lost; sends every request, count and verifier operation as one
    /// batch — one pipeline per master, a user's commands in the order of the requests —
    /// and answers in the order of the requests. A publish is answered
    /// [`NotTaken::Unreachable`] when nothing was sent, [`NotTaken::Unknown`] when its
    /// pipeline was sent and not answered.
    async fn handle_requests(&mut self, link: &mut Link, first: Request) -> Result<(), Ended> {
        let mut batch: Batch = Vec::new();
        let mut answers: Vec<Answering> = Vec::new();
        let mut changed: Vec<Arc<str>> = Vec::new();
        let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
        let mut flushes = Vec::new();
        let mut many: Vec<Many> = Vec::new();
        let mut checks: Vec<(usize, Check)> = Vec::new();
        let mut stop = None;
        let mut next = Some(first);
        let sha = link.user_script.clone();
        while let Some(request) = next.take() {
            match request {
                Request::Attach(inbox) => self.inbox = Some(inbox),
                Request::Publish { event, answer } => {
                    let payload =
                        event_payload(&self.names.node, &event.user, event.time, &event.text);
                    batch.push(self.user_script(
                        (&sha, 'e'),
                        &event.user,
                        &payload,
                        event.id.as_deref(),
                        &event.time.to_string(),
                    ));
                    answers.push((batch.len() - 1, Pending::Publish(answer)));
                }
                Request::Invalidate { user, answer, made } => {
                    batch.push(self.invalidation(&sha, &user, made + self.clock_offset));
                    answers.push((batch.len() - 1, Pending::Other(answer)));
                }
                Request::Count { user, answer } => {
                    batch.push(self.user_script((&sha, 'c'), &user, "", None, ""));
                    answers.push((batch.len() - 1, Pending::Other(Some(answer))));
                }
                Request::CountMany { users, answer } => {
                    let start = batch.len();
                    for user in &users {
                        batch.push(self.user_script((&sha, 'c'), user, "", None, ""));
                    }
                    many.push((start..batch.len(), answer));
                }
                Request::LoginFailed {
                    client,
                    name,
                    limit,
                    counted,
                } => {
                    self.failures += 1;
                    let key = self.names.throttle_key(client, &name);
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(&sha)
                        .arg(1)
                        .arg(&key)
                        .arg("t")
                        .arg(limit)
                        .arg(format!("{}:{}", self.member, self.failures));
                    batch.push(keyed(&key, cmd));
                    answers.push((
                        batch.len() - 1,
                        Pending::Failure {
                            client,
                            name,
                            counted,
                        },
                    ));
                }
                Request::LoginSucceeded {
                    client,
                    name,
                    limit,
                    admitted,
                } => {
                    let key = self.names.throttle_key(client, &name);
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(&sha).arg(1).arg(&key).arg("s").arg(limit);
                    batch.push(keyed(&key, cmd));
                    answers.push((
                        batch.len() - 1,
                        Pending::Success {
                            client,
                            name,
                            admitted,
                        },
                    ));
                }
                Request::Flush(done) => flushes.push(done),
                Request::Presence {
                    user,
                    delta,
                    subscribed,
                } => {
                    self.count(&user, delta);
                    changed.push(user);
                    waiting.extend(subscribed);
                }
                Request::Stop(done) => {
                    stop = Some(done);
                    break;
                }
                Request::Verifier(op) => {
                    let (key, cmd, check) = crate::verifiers::command(op, &self.names);
                    batch.push(keyed(&key, cmd));
                    if let Some(check) = check {
                        checks.push((batch.len() - 1, check));
                    }
                }
            }
            if answers.len() < BATCH {
                next = self.requests.try_recv().ok();
            }
        }
        if let Err(err) = self.follow(link, changed).await {
            // Nothing of this batch was sent (its verifier checks, dropped, pay bcrypt).
            for (_, pending) in answers {
                pending.fail(NotTaken::Unreachable);
            }
            for (_, answer) in many {
                let _ = answer.send(Err(BrokerUnreachable));
            }
            return Err(Ended::Lost(err));
        }
        for subscribed in waiting {
            let _ = subscribed.send(());
        }
        let dirty: Vec<Arc<str>> = self.dirty.drain().collect();
        for user in &dirty {
            batch.push(self.count_write(user));
        }
        let sent = link.run(batch).await;
        let failed = sent.failure();
        if failed.is_some() {
            self.dirty.extend(dirty);
        }
        let mut counted = Vec::new();
        let mut told = Vec::new();
        for (index, pending) in answers {
            let Some(reply) = sent.reply(index) else {
                // Sent, and not answered: Redis may have run it.
                pending.fail(NotTaken::Unknown);
                continue;
            };
            match pending {
                Pending::Failure {
                    client,
                    name,
                    counted: done,
                } => {
                    let remaining = count_of(reply) as u64;
                    if remaining > 0 {
                        let remaining = Duration::from_millis(remaining);
                        self.throttled.throttle(client, &name, remaining);
                        told.push(throttle_payload(&self.names.node, client, &name, remaining));
                    }
                    counted.push(done);
                }
                Pending::Success {
                    client,
                    name,
                    admitted,
                } => {
                    let _ = admitted.send(self.throttled.admits(client, &name, count_of(reply)));
                }
                pending => {
                    if matches!(pending, Pending::Publish(_)) && !is_duplicate(reply) {
                        self.metrics.sent().inc();
                    }
                    pending.answer(reply);
                }
            }
        }
        for (index, check) in checks {
            if let Some(reply) = sent.reply(index) {
                let _ = check.send(match reply {
                    Value::BulkString(kept) => Some(kept.clone()),
                    _ => None,
                });
            }
        }
        for (range, answer) in many {
            let counts: Option<Vec<usize>> =
                range.map(|index| sent.reply(index).map(count_of)).collect();
            let _ = answer.send(counts.ok_or(BrokerUnreachable));
        }
        if let Some(err) = failed {
            return Err(Ended::Lost(err));
        }
        // Pairs at the limit: every node is told on the throttle channel (one pipeline,
        // the channel's master), then the logins that failed are answered.
        if !told.is_empty() {
            let channel = self.names.throttle_channel();
            let publishes = told
                .into_iter()
                .map(|payload| {
                    let mut cmd = redis::cmd("SPUBLISH");
                    cmd.arg(&channel).arg(payload);
                    keyed(&channel, cmd)
                })
                .collect();
            if let Some(err) = link.run(publishes).await.failure() {
                return Err(Ended::Lost(err));
            }
        }
        for done in counted {
            let _ = done.send(());
        }
        for done in flushes {
            let _ = done.send(());
        }
        if let Some(done) = stop {
            self.withdraw(link).await;
            let _ = done.send(());
            return Err(Ended::Stopping);
        }
        Ok(())
    }

    /// Subscribes to the users of `changed` this node now has, unsubscribes from those it
    /// no longer has — one command per user, on the user's shard.
    async fn follow(&mut self, link: &mut Link, changed: Vec<Arc<str>>) -> Result<(), String> {
        let mut gained = Vec::new();
        let mut lost = Vec::new();
        for user in changed {
            let present = self.local.contains_key(&user);
            if present && !self.subscribed.contains(&user) {
                self.subscribed.insert(Arc::clone(&user));
                gained.push(self.names.tagged("user", &user));
            } else if !present && self.subscribed.remove(&user) {
                lost.push(self.names.tagged("user", &user));
            }
        }
        self.subscribe_confirmed(link, gained).await?;
        link.send(&self.seeds[0], &self.push_sender, lost, "SUNSUBSCRIBE")
            .await?;
        self.metrics
            .subscribed_users
            .set(self.subscribed.len() as i64);
        Ok(())
    }

    /// The node stops: its counts and entry leave Redis at once.
    async fn withdraw(&mut self, link: &mut Link) {
        let mut removals: Batch = self
            .local
            .keys()
            .map(|user| {
                let key = self.names.tagged("presence", user);
                keyed(&key, redis::Cmd::hdel(&key, &self.member))
            })
            .collect();
        removals.push(self.heartbeat_command(&link.heartbeat_script, 'w', ""));
        if let Some(err) = link.run(removals).await.failure() {
            log::warn!("cluster: cannot withdraw this node from Redis: {err}");
        }
    }

    /// A message from a user's channel: handed to the node unless this node published it.
    fn received(&mut self, payload: &[u8]) {
        let Some(payload) = Payload::parse(payload) else {
            return;
        };
        if payload.node() == self.names.node {
            return;
        }
        let Some(inbox) = &self.inbox else {
            return;
        };
        match payload {
            Payload::Event {
                user, time, text, ..
            } => {
                if inbox.event(user, time, text) {
                    self.metrics.received().inc();
                } else {
                    self.metrics.dropped_slow_node().inc();
                }
            }
            Payload::Throttle {
                client,
                name,
                remaining,
                ..
            } => self.throttled.throttle(client, &name, remaining),
            Payload::Invalidation { user, made, .. } => {
                self.metrics.received().inc();
                // Made long ago (it waited for Redis on a node cut off): the logins made
                // here since are spared.
                let issued_before =
                    made.and_then(|made| self.history.issued_before(made - self.clock_offset));
                inbox.invalidate(user, issued_before);
            }
        }
    }
}

/// Deletes, from every user's presence hash on every master, the fields of this node's
/// earlier runs (`node#start-ms` other than `member`, this run's): a run that was killed
/// or lost the name left them (one that stops withdraws its own), and nothing else would
/// ever delete them. Runs once per run, beside the node's work: on each master `SCAN` of
/// the presence hashes, then `HKEYS` and `HDEL` pipelined per 500 keys. (Fields of runs
/// of other names are left to those nodes' next start: deleting them here could race
/// with a node coming back from a long pause and writing them again.)
async fn sweep_earlier_runs(
    masters: Vec<MultiplexedConnection>,
    pattern: String,
    node: String,
    member: String,
) {
    let earlier = |field: &String| {
        *field != member
            && field
                .rsplit_once('#')
                .is_some_and(|(name, ms)| name == node && ms.parse::<i64>().is_ok())
    };
    let mut removed = 0;
    for mut connection in masters {
        let mut cursor = 0u64;
        loop {
            let step = bounded(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(BATCH)
                    .query_async::<(u64, Vec<String>)>(&mut connection),
            )
            .await;
            let (next, keys) = match step {
                Ok(step) => step,
                Err(err) => {
                    log::warn!("cluster: cannot remove the presence of earlier runs: {err}");
                    return;
                }
            };
            if keys.is_empty() {
                if next == 0 {
                    break;
                }
                cursor = next;
                continue;
            }
            let mut reads = redis::pipe();
            for key in &keys {
                reads.hkeys(key);
            }
            let fields = match bounded(connection.send_packed_commands(&reads, 0, keys.len())).await
            {
                Ok(fields) => fields,
                Err(err) => {
                    log::warn!("cluster: cannot remove the presence of earlier runs: {err}");
                    return;
                }
            };
            let mut deletes = redis::pipe();
            for (key, fields) in keys.iter().zip(fields) {
                // An error (the key's slot moving) leaves it to the next start.
                let Ok(fields) = redis::from_redis_value::<Vec<String>>(fields) else {
                    continue;
                };
                let stale: Vec<String> = fields.into_iter().filter(earlier).collect();
                if !stale.is_empty() {
                    removed += stale.len();
                    deletes.hdel(key, stale);
                }
            }
            if !deletes.is_empty() {
                if let Err(err) =
                    bounded(connection.send_packed_commands(&deletes, 0, deletes.len())).await
                {
                    log::warn!("cluster: cannot remove the presence of earlier runs: {err}");
                    return;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    if removed > 0 {
        log::info!(
            "cluster: removed {removed} presence field(s) left by earlier runs of node {node:?}"
        );
    }
}

/// How long a seed may take to answer `PING` before a connection attempt leaves it out.
const SEED_PROBE: Duration = Duration::from_secs(1);

/// The seeds that answer `PING` within [`SEED_PROBE`], all asked at once; every seed when
/// none does (the attempt then fails with the crate's own reason). The crate connects to
/// all its seeds before it asks one for the slots, so a seed that accepts connections and
/// answers nothing — a master paused or hung, whose replica has taken over — would hold
/// every attempt until it times out, and the node would stay unreachable for as long as
/// that server hangs.
async fn answering_seeds(seeds: Vec<String>, ca: Option<&[u8]>) -> Vec<String> {
    let probes = seeds.iter().map(|seed| async move {
        let client = crate::client(seed, ca).ok()?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(SEED_PROBE))
            .set_response_timeout(Some(SEED_PROBE));
        let probe = async {
            let mut connection = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .ok()?;
            redis::cmd("PING")
                .query_async::<()>(&mut connection)
                .await
                .ok()
        };
        tokio::time::timeout(SEED_PROBE * 2, probe)
            .await
            .ok()
            .flatten()
    });
    let answered = join_all(probes).await;
    let alive: Vec<String> = seeds
        .iter()
        .zip(answered)
        .filter(|(_, answered)| answered.is_some())
        .map(|(seed, _)| seed.clone())
        .collect();
    if alive.is_empty() {
        seeds
    } else {
        alive
    }
}

/// Connects to the cluster, checks every slot is served, loads the scripts on every master
/// and opens each master's subscription connection.
async fn connect(
    seeds: Vec<String>,
    ca: Option<Vec<u8>>,
    pushes: mpsc::UnboundedSender<PushInfo>,
) -> Result<Link, String> {
    let template = seeds.first().cloned().unwrap_or_default();
    let seeds = answering_seeds(seeds, ca.as_deref()).await;
    let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(ANSWER_TIMEOUT)
        .retries(4)
        .max_retry_wait(500)
        .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    if let Some(pem) = &ca {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        });
    }
    let client = builder.build().map_err(|err| err.to_string())?;
    let connection = bounded(client.get_async_connection()).await?;
    let mut link = Link {
        connection,
        commands: HashMap::new(),
        template: template.clone(),
        subscriptions: HashMap::new(),
        slots: Vec::new(),
        user_script: String::new(),
        heartbeat_script: String::new(),
        masters: Vec::new(),
        ca,
    };
    link.refresh_slots().await?;
    link.user_script = link.load(USER_SCRIPT).await?;
    link.heartbeat_script = link.load(HEARTBEAT_SCRIPT).await?;
    for master in link.masters.clone() {
        link.command_connection(&master).await?;
        link.subscription_connection(&template, &pushes, &master)
            .await?;
    }
    Ok(link)
}

impl Link {
    /// Loads `script` on every master; answers its SHA1.
    async fn load(&mut self, script: &str) -> Result<String, String> {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(script);
        let sha = bounded(self.connection.route_command(
            cmd,
            RoutingInfo::MultiNode((
                MultipleNodeRoutingInfo::AllMasters,
                Some(ResponsePolicy::AllSucceeded),
            )),
        ))
        .await?;
        sha_of(sha)
    }

    /// Reads which master serves which slots (`CLUSTER SLOTS`); `Err` unless all 16384 are.
    async fn refresh_slots(&mut self) -> Result<(), String> {
        let ranges: Vec<Value> = bounded(
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut self.connection),
        )
        .await?;
        let mut slots = Vec::new();
        let mut covered = 0u32;
        for range in &ranges {
            let Value::Array(fields) = range else {
                continue;
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            let host = match master.first() {
                Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
                Some(Value::SimpleString(host)) => host.clone(),
                _ => continue,
            };
            let (Some(Value::Int(port)), Ok(start), Ok(end)) =
                (master.get(1), u16::try_from(*start), u16::try_from(*end))
            else {
                continue;
            };
            covered += u32::from(end.saturating_sub(start)) + 1;
            slots.push((start, end, format!("{host}:{port}")));
        }
        if covered < 16384 {
            return Err(format!("the Redis Cluster serves {covered} of 16384 slots"));
        }
        let mut masters: Vec<String> = slots.iter().map(|(_, _, master)| master.clone()).collect();
        masters.sort();
        masters.dedup();
        self.slots = slots;
        self.masters = masters;
        Ok(())
    }

    /// The master serving `name`'s slot.
    fn owner(&self, name: &str) -> Option<&String> {
        self.master_of(slot_of(name.as_bytes()))
    }

    /// The master serving `slot`, as the slot map last read says.
    fn master_of(&self, slot: u16) -> Option<&String> {
        self.slots
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, master)| master)
    }

    /// The command connection of `master`, opened if there is none yet.
    async fn command_connection(&mut self, master: &str) -> Result<MultiplexedConnection, String> {
        if let Some(connection) = self.commands.get(master) {
            return Ok(connection.clone());
        }
        let url = with_host(&self.template, master, false);
        let client = crate::client(&url, self.ca.as_deref()).map_err(|err| err.to_string())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(ANSWER_TIMEOUT));
        let connection = bounded(client.get_multiplexed_async_connection_with_config(&config))
            .await
            .map_err(|err| format!("{master}: {err}"))?;
        self.commands.insert(master.to_owned(), connection.clone());
        Ok(connection)
    }

    /// Sends `batch`: one pipeline per master (each command to the master of its slot in
    /// the slot map, in the batch's order), all at once. A command answered `MOVED`,
    /// `ASK`, `TRYAGAIN` or `CLUSTERDOWN` was not run: it is sent again through the
    /// crate's cluster connection, which follows the redirect — one at a time per slot,
    /// in the batch's order (a user's commands keep theirs) — and after a `MOVED` the
    /// slot map is read again. Answers every command's reply in the batch's order.
    async fn run(&mut self, batch: Batch) -> Sent {
        let mut replies: Vec<Option<Value>> = vec![None; batch.len()];
        let mut failed = None;
        // Per master: its pipeline and the batch's places of its commands.
        let mut groups: Vec<(String, redis::Pipeline, Vec<usize>)> = Vec::new();
        let mut commands: Vec<Option<redis::Cmd>> = Vec::with_capacity(batch.len());
        let mut redirected: Vec<(u16, usize)> = Vec::new();
        let slots: Vec<u16> = batch.iter().map(|(slot, _)| *slot).collect();
        for (index, (slot, cmd)) in batch.into_iter().enumerate() {
            let Some(master) = self.master_of(slot) else {
                redirected.push((slot, index));
                commands.push(Some(cmd));
                continue;
            };
            let group = match groups.iter().position(|(name, _, _)| name == master) {
                Some(group) => group,
                None => {
                    groups.push((master.clone(), redis::pipe(), Vec::new()));
                    groups.len() - 1
                }
            };
            groups[group].1.add_command(cmd);
            groups[group].2.push(index);
            commands.push(None);
        }
        let mut connections = Vec::with_capacity(groups.len());
        for (master, _, _) in &groups {
            match self.command_connection(master).await {
                Ok(connection) => connections.push(Some(connection)),
                Err(err) => {
                    failed = Some(err);
                    connections.push(None);
                }
            }
        }
        let sends = groups
            .iter()
            .zip(connections)
            .map(|((_, pipe, _), connection)| async move {
                let mut connection = connection?;
                Some(bounded(connection.send_packed_commands(pipe, 0, pipe.len())).await)
            });
        let answered = join_all(sends).await;
        let mut moved = false;
        for ((_, pipe, places), answer) in groups.iter().zip(answered) {
            match answer {
                Some(Ok(values)) => {
                    for ((&index, value), cmd) in places.iter().zip(values).zip(pipe.cmd_iter()) {
                        if is_redirect(&value) {
                            moved |= matches!(&value, Value::ServerError(err)
                                if err.kind() == Some(ServerErrorKind::Moved));
                            redirected.push((slots[index], index));
                            commands[index] = Some(cmd.clone());
                        } else {
                            replies[index] = Some(value);
                        }
                    }
                }
                Some(Err(err)) => failed = Some(err),
                None => {}
            }
        }
        if !redirected.is_empty() {
            redirected.sort_unstable();
            let mut by_slot: Vec<Vec<(usize, redis::Cmd)>> = Vec::new();
            let mut last = None;
            for (slot, index) in redirected {
                let Some(cmd) = commands[index].take() else {
                    continue;
                };
                if last != Some(slot) {
                    by_slot.push(Vec::new());
                    last = Some(slot);
                }
                if let Some(slot_commands) = by_slot.last_mut() {
                    slot_commands.push((index, cmd));
                }
            }
            let retries = by_slot.into_iter().map(|slot_commands| {
                let mut connection = self.connection.clone();
                async move {
                    let mut answered = Vec::new();
                    for (index, cmd) in slot_commands {
                        let reply = bounded(cmd.query_async::<Value>(&mut connection)).await;
                        let lost = reply.is_err();
                        answered.push((index, reply));
                        if lost {
                            // The slot's later commands stay unsent: they keep their order.
                            break;
                        }
                    }
                    answered
                }
            });
            for (index, reply) in join_all(retries).await.into_iter().flatten() {
                match reply {
                    Ok(value) => replies[index] = Some(value),
                    Err(err) => failed = Some(err),
                }
            }
            if moved {
                if let Err(err) = self.refresh_slots().await {
                    failed = Some(err);
                }
            }
        }
        Sent { replies, failed }
    }

    /// The subscription connection of `master`, opened (RESP3, pushes to `pushes`) if
    /// there is none yet.
    async fn subscription_connection(
        &mut self,
        template: &str,
        pushes: &mpsc::UnboundedSender<PushInfo>,
        master: &str,
    ) -> Result<MultiplexedConnection, String> {
        if let Some(connection) = self.subscriptions.get(master) {
            return Ok(connection.clone());
        }
        let url = with_host(template, master, true);
        let client = crate::client(&url, self.ca.as_deref()).map_err(|err| err.to_string())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(ANSWER_TIMEOUT))
            .set_push_sender(pushes.clone());
        let connection = bounded(client.get_multiplexed_async_connection_with_config(&config))
            .await
            .map_err(|err| format!("{master}: {err}"))?;
        self.subscriptions
            .insert(master.to_owned(), connection.clone());
        Ok(connection)
    }

    /// Sends `command` (`SSUBSCRIBE` or `SUNSUBSCRIBE`) for each of `channels`, one per
    /// channel, to the master serving it, without waiting for the answers: they are read
    /// from the pushes ([`Worker::subscribe_confirmed`]). (The connection pairs answers
    /// with requests in order, and takes a `sunsubscribe` Redis sends on its own, when a
    /// slot moves, for the answer to the oldest request in flight: nothing may wait on
    /// it.)
    async fn send(
        &mut self,
        template: &str,
        pushes: &mpsc::UnboundedSender<PushInfo>,
        channels: Vec<String>,
        command: &'static str,
    ) -> Result<(), String> {
        for channel in channels {
            let master = self
                .owner(&channel)
                .cloned()
                .ok_or_else(|| "no master serves a channel's slot".to_owned())?;
            let mut connection = self
                .subscription_connection(template, pushes, &master)
                .await?;
            let mut cmd = redis::cmd(command);
            cmd.arg(channel);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(ANSWER_TIMEOUT, connection.send_packed_command(&cmd))
                    .await;
            });
        }
        Ok(())
    }
}

/// `template` (a seed's URL, with the credentials) with `address` as its host and port,
/// speaking RESP3 if `resp3` (sharded messages arrive as pushes).
fn with_host(template: &str, address: &str, resp3: bool) -> String {
    let Some(scheme_end) = template.find("://").map(|at| at + 3) else {
        return template.to_owned();
    };
    let rest = &template[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let userinfo = rest[..authority_end]
        .rfind('@')
        .map_or("", |at| &rest[..=at]);
    let protocol = if !resp3 {
        ""
    } else if rest[authority_end..].contains('?') {
        "&protocol=resp3"
    } else {
        "?protocol=resp3"
    };
    format!(
        "{}{userinfo}{address}{}{protocol}",
        &template[..scheme_end],
        &rest[authority_end..]
    )
}

/// The Redis Cluster slot of `name`: CRC16 (XMODEM) of its hash tag (the text between
/// the first `{` and the next `}`, when not empty), else of the whole name, modulo 16384.
fn slot_of(name: &[u8]) -> u16 {
    let tag = name
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            name[open + 1..]
                .iter()
                .position(|&b| b == b'}')
                .filter(|&len| len > 0)
                .map(|len| &name[open + 1..open + 1 + len])
        })
        .unwrap_or(name);
    let mut crc: u16 = 0;
    for &byte in tag {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// The SHA1 a `SCRIPT LOAD` answered.
fn sha_of(value: Value) -> Result<String, String> {
    match value {
        Value::BulkString(sha) => String::from_utf8(sha).map_err(|err| err.to_string()),
        Value::SimpleString(sha) => Ok(sha),
        Value::VerbatimString { text, .. } => Ok(text),
        other => Err(format!("SCRIPT LOAD answered {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis_cluster_hash_tags_and_urls_keep_credentials() {
        // As `CLUSTER KEYSLOT` answers.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        assert_eq!(slot_of(b"t:user:{foo}"), 12182);
        assert_eq!(slot_of(b"{foo}"), 12182);
        assert_ne!(slot_of(b"{}foo"), slot_of(b"foo"));
        assert_eq!(
            with_host("redis://u:p@a:1/0", "127.0.0.1:7000", true),
            "redis://u:p@127.0.0.1:7000/0?protocol=resp3"
        );
        assert_eq!(
            with_host("rediss://b:2/0", "h:3", true),
            "rediss://h:3/0?protocol=resp3"
        );
        assert_eq!(
            with_host("redis://u:p@a:1/0", "h:3", false),
            "redis://u:p@h:3/0"
        );
    }
}
