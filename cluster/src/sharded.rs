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
//! Commands go through the `redis` crate's cluster connection (one multiplexed connection
//! per node; it routes by slot and follows `MOVED`/`ASK`), without a push sender: its
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
//! - one pipeline per user per batch (a pipeline goes to one slot), so a user's events
//!   keep their order.

use crate::history::BindingHistory;
use crate::metrics::ClusterMetrics;
use crate::names::{event_payload, invalidation_payload, throttle_payload, Names, Payload};
use crate::throttle::Throttled;
use crate::worker::{
    bounded, claim_token, count_of, invalidated_times, is_dead_run_of_this_host, is_duplicate,
    log_name_taken, now_ms, script_head, script_id_and_invalidated, Ended, Joined, Pending,
    Request, ANSWER_TIMEOUT, BACKOFF_MAX, BACKOFF_MIN, BATCH, CONNECT_TIMEOUT, HEARTBEAT,
    MARK_INTERVAL, MAX_LATER, MAX_MARKS, OWNER_TTL,
};
use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{PushInfo, PushKind, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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

/// The heartbeat: `KEYS[1]` = the set of live nodes; `ARGV[1]` = this node's field.
/// Renews it, forgets nodes silent for a minute, answers Redis's time (ms), the nodes
/// heard from within 10 s, and 1 if this node was in the set (0: new, or forgotten).
const HEARTBEAT_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - 10000, '+inf')
if known then return {now, live, 1} end
return {now, live, 0}
";

/// The claim on this node's name, on the owner key's own slot: `KEYS[1]` = the owner key;
/// `ARGV` = mode, this run's token, a stale token it may replace, the claim's TTL (ms).
/// Mode `h`: claims the name unless another token holds it — answers the holder's token,
/// or `''` when this run holds it; `w`: gives the name up if this run holds it.
const OWNER_SCRIPT: &str = r"
local owner = redis.call('GET', KEYS[1])
if ARGV[1] == 'w' then
  if owner == ARGV[2] then redis.call('DEL', KEYS[1]) end
  return ''
end
if owner and owner ~= ARGV[2] and owner ~= ARGV[3] then return owner end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
return ''
";

/// An answer awaited: its pipeline, and what waits for it there (in order).
type Answering = (usize, Pending);

/// A [`Request::CountMany`]: the users and where their counts go.
type Many = (
    Vec<Arc<str>>,
    oneshot::Sender<Result<Vec<usize>, BrokerUnreachable>>,
);

/// The connections to the cluster while connected.
struct Link {
    /// Routes commands to the masters.
    connection: ClusterConnection,
    /// Per master address, the connection of its sharded subscriptions (RESP3).
    subscriptions: HashMap<String, MultiplexedConnection>,
    /// Slot ranges and the address of the master serving each, from `CLUSTER SLOTS`.
    slots: Vec<(u16, u16, String)>,
    /// The SHA1 of [`USER_SCRIPT`] and of [`HEARTBEAT_SCRIPT`], loaded on every master.
    user_script: String,
    heartbeat_script: String,
    /// The SHA1 of [`OWNER_SCRIPT`].
    owner_script: String,
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
    upstream: Arc<Mutex<Option<String>>>,
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
    clock_offset: i64,
    marks: Vec<(i64, BindingId)>,
    was_connected: bool,
    told_unreachable: bool,
    jitter: RandomState,
    draws: u64,
}

impl Worker {
    /// `cluster`: the seed nodes' URLs and the CA certificates (PEM) trusted for TLS.
    pub(crate) fn new(
        cluster: (Vec<String>, Option<Vec<u8>>),
        names: Names,
        requests: mpsc::UnboundedReceiver<Request>,
        status: (Arc<AtomicBool>, Arc<Mutex<Option<String>>>),
        metrics: ClusterMetrics,
        joined: std::sync::mpsc::SyncSender<Joined>,
        throttled: Arc<Throttled>,
    ) -> Self {
        let (connected, upstream) = status;
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
            upstream,
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
        if let Ok(mut upstream) = self.upstream.lock() {
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
        if let Ok(mut upstream) = self.upstream.lock() {
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
        }
        self.was_connected = true;
        self.metrics.set_masters(&link.masters);
        let masters = link.masters.join(",");
        if let Ok(mut upstream) = self.upstream.lock() {
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
                    Some(request) => self.handle_requests(&mut link, request).await,
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
                let reads = chunk.iter().map(|(user, _)| {
                    let mut connection = link.connection.clone();
                    let key = self.names.tagged("invalidated", user);
                    async move {
                        bounded(
                            redis::cmd("GET")
                                .arg(key)
                                .query_async::<Option<String>>(&mut connection),
                        )
                        .await
                    }
                });
                let times = join_all(reads).await;
                for ((user, _), time) in chunk.iter().zip(times) {
                    let Some((sent, made)) = time?.as_deref().and_then(invalidated_times) else {
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
            let sends = self.later.iter().take(take).map(|(user, made)| {
                let mut pipe = redis::pipe();
                self.invalidation(&mut pipe, &link.user_script, user, made + self.clock_offset);
                let mut connection = link.connection.clone();
                async move { bounded(pipe.query_async::<Vec<Value>>(&mut connection)).await }
            });
            for result in join_all(sends).await {
                result?;
            }
            self.later.drain(..take);
        }
        Ok(())
    }

    /// Writes every count changed since the last write, one pipeline per user.
    async fn write_counts(&mut self, link: &mut Link) -> Result<(), String> {
        let users: Vec<Arc<str>> = self.dirty.iter().cloned().collect();
        for chunk in users.chunks(BATCH) {
            let writes = chunk.iter().map(|user| {
                let mut pipe = redis::pipe();
                self.count_write(&mut pipe, user);
                let mut connection = link.connection.clone();
                async move { bounded(pipe.query_async::<()>(&mut connection)).await }
            });
            for result in join_all(writes).await {
                result?;
            }
            for user in chunk {
                self.dirty.remove(user);
            }
        }
        Ok(())
    }

    /// Adds the write of `user`'s count here to `pipe`.
    fn count_write(&self, pipe: &mut redis::Pipeline, user: &Arc<str>) {
        let key = self.names.tagged("presence", user);
        match self.local.get(user) {
            Some(count) => pipe.hset(key, &self.member, *count).ignore(),
            None => pipe.hdel(key, &self.member).ignore(),
        };
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
    /// that is gone is taken over), then renews the node; a node found forgotten writes
    /// all its presence again; one whose name another live node holds ends.
    async fn beat(&mut self, link: &mut Link) -> Result<(), Ended> {
        let mut owner = self.claim(link, "").await.map_err(Ended::Lost)?;
        if let Some(held) = owner.clone().filter(|held| is_dead_run_of_this_host(held)) {
            log::info!(
                "cluster: node name {:?} was held by an earlier run on this host that is \
                 gone; taking it over",
                self.names.node
            );
            owner = self.claim(link, &held).await.map_err(Ended::Lost)?;
        }
        if let Some(owner) = owner {
            return Err(Ended::NameTaken(owner));
        }
        let known = self.heartbeat(link).await.map_err(Ended::Lost)?;
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

    /// One run of [`OWNER_SCRIPT`] claiming the name (replacing `stale` if it holds it);
    /// answers the token of another run that holds it.
    async fn claim(&mut self, link: &mut Link, stale: &str) -> Result<Option<String>, String> {
        let owner: String = bounded(
            redis::cmd("EVALSHA")
                .arg(&link.owner_script)
                .arg(1)
                .arg(self.names.owner_key())
                .arg("h")
                .arg(&self.token)
                .arg(stale)
                .arg(OWNER_TTL.as_millis().to_string())
                .query_async(&mut link.connection),
        )
        .await?;
        Ok(Some(owner).filter(|owner| !owner.is_empty()))
    }

    /// Renews this node's liveness, reads the live nodes and probes every master; answers
    /// whether this node was in the set of live nodes.
    async fn heartbeat(&mut self, link: &mut Link) -> Result<bool, String> {
        let answer: (i64, Vec<String>, i64) = bounded(
            redis::cmd("EVALSHA")
                .arg(&link.heartbeat_script)
                .arg(1)
                .arg(self.names.nodes_key())
                .arg(&self.member)
                .query_async(&mut link.connection),
        )
        .await?;
        let (now, live, known) = answer;
        bounded(link.connection.route_command(
            redis::cmd("PING"),
            RoutingInfo::MultiNode((
                MultipleNodeRoutingInfo::AllMasters,
                Some(ResponsePolicy::AllSucceeded),
            )),
        ))
        .await?;

        self.others = live.into_iter().filter(|n| *n != self.member).collect();
        self.seen_before = self.last_seen;
        self.last_seen = Some(now);
        self.clock_offset = now - now_ms();
        Ok(known == 1)
    }

    /// Adds one `EVALSHA` of [`USER_SCRIPT`] for `user` to `pipe`: `id` an event's id,
    /// `extra` the event's time or the invalidation's made time.
    fn user_script(
        &self,
        pipe: &mut redis::Pipeline,
        (sha, mode): (&str, char),
        user: &str,
        payload: &str,
        id: Option<&str>,
        extra: &str,
    ) {
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(sha)
            .arg(if id.is_some() { 3 } else { 2 })
            .arg(self.names.tagged("presence", user))
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
    }

    /// Adds the invalidation of `user`, made at `made` (Redis's ms as this node reckons
    /// it), to `pipe`.
    fn invalidation(&self, pipe: &mut redis::Pipeline, sha: &str, user: &str, made: i64) {
        let payload = invalidation_payload(&self.names.node, user, made);
        self.user_script(pipe, (sha, 'i'), user, &payload, None, &made.to_string());
    }

    /// Takes `first` and whatever else is queued (up to [`BATCH`]); follows the users this
    /// node gained or lost; sends each user's requests and count as one pipeline (a failed
    /// login's count as one of its own, on the name's slot), all at once; answers in the
    /// order of the requests. A publish is answered [`NotTaken::Unreachable`] when nothing
    /// was sent, [`NotTaken::Unknown`] when its pipeline was sent and not answered.
    async fn handle_requests(&mut self, link: &mut Link, first: Request) -> Result<(), Ended> {
        // Per user, the pipeline (failed logins: one each, not in `by_user`).
        let mut pipes: Vec<redis::Pipeline> = Vec::new();
        let mut by_user: HashMap<Arc<str>, usize> = HashMap::new();
        let mut answers: Vec<Answering> = Vec::new();
        let mut changed: Vec<Arc<str>> = Vec::new();
        let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
        let mut flushes = Vec::new();
        let mut many: Vec<Many> = Vec::new();
        let mut verifier_ops = Vec::new();
        let mut stop = None;
        let mut next = Some(first);
        let sha = link.user_script.clone();
        while let Some(request) = next.take() {
            match request {
                Request::Attach(inbox) => self.inbox = Some(inbox),
                Request::Publish { event, answer } => {
                    let payload =
                        event_payload(&self.names.node, &event.user, event.time, &event.text);
                    let index = pipe_of(&mut pipes, &mut by_user, &event.user);
                    self.user_script(
                        &mut pipes[index],
                        (&sha, 'e'),
                        &event.user,
                        &payload,
                        event.id.as_deref(),
                        &event.time.to_string(),
                    );
                    answers.push((index, Pending::Publish(answer)));
                }
                Request::Invalidate { user, answer, made } => {
                    let index = pipe_of(&mut pipes, &mut by_user, &user);
                    self.invalidation(&mut pipes[index], &sha, &user, made + self.clock_offset);
                    answers.push((index, Pending::Other(answer)));
                }
                Request::Count { user, answer } => {
                    let index = pipe_of(&mut pipes, &mut by_user, &user);
                    self.user_script(&mut pipes[index], (&sha, 'c'), &user, "", None, "");
                    answers.push((index, Pending::Other(Some(answer))));
                }
                Request::CountMany { users, answer } => many.push((users, answer)),
                Request::LoginFailed {
                    client,
                    name,
                    limit,
                    counted,
                } => {
                    self.failures += 1;
                    let mut pipe = redis::pipe();
                    pipe.cmd("EVALSHA")
                        .arg(&sha)
                        .arg(1)
                        .arg(self.names.throttle_key(client, &name))
                        .arg("t")
                        .arg(limit)
                        .arg(format!("{}:{}", self.member, self.failures));
                    pipes.push(pipe);
                    answers.push((
                        pipes.len() - 1,
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
                    let mut pipe = redis::pipe();
                    pipe.cmd("EVALSHA")
                        .arg(&sha)
                        .arg(1)
                        .arg(self.names.throttle_key(client, &name))
                        .arg("s")
                        .arg(limit);
                    pipes.push(pipe);
                    answers.push((
                        pipes.len() - 1,
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
                Request::Verifier(op) => verifier_ops.push(op),
            }
            if answers.len() < BATCH {
                next = self.requests.try_recv().ok();
            }
        }
        if let Err(err) = self.follow(link, changed).await {
            // Nothing of these pipelines was sent.
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
        // Counts go with the user's pipeline when it has one, else in one of their own.
        let dirty: Vec<Arc<str>> = self.dirty.drain().collect();
        for user in &dirty {
            let index = pipe_of(&mut pipes, &mut by_user, user);
            self.count_write(&mut pipes[index], user);
        }
        let sent = pipes.into_iter().map(|pipe| {
            let mut connection = link.connection.clone();
            async move { bounded(pipe.query_async::<Vec<Value>>(&mut connection)).await }
        });
        let results = join_all(sent).await;
        let failed = results
            .iter()
            .find_map(|result| result.as_ref().err())
            .cloned();
        if failed.is_some() {
            self.dirty.extend(dirty);
        }
        // Each pipeline's replies in order; the place of each answer is its rank among
        // the answered requests of its pipeline (counts' writes are ignored).
        let mut places: Vec<usize> = vec![0; results.len()];
        let mut counted = Vec::new();
        let mut told = Vec::new();
        for (index, pending) in answers {
            let replies = match results.get(index) {
                Some(Ok(replies)) => replies,
                // Sent, and not answered: Redis may have run any of it.
                _ => {
                    pending.fail(NotTaken::Unknown);
                    continue;
                }
            };
            let place = places[index];
            places[index] += 1;
            let reply = replies.get(place).cloned().unwrap_or(Value::Nil);
            match pending {
                Pending::Failure {
                    client,
                    name,
                    counted: done,
                } => {
                    let remaining = count_of(&reply) as u64;
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
                    let _ = admitted.send(self.throttled.admits(client, &name, count_of(&reply)));
                }
                pending => {
                    if matches!(pending, Pending::Publish(_)) && !is_duplicate(&reply) {
                        self.metrics.sent().inc();
                    }
                    pending.answer(&reply);
                }
            }
        }
        if let Some(err) = failed {
            for (_, answer) in many {
                let _ = answer.send(Err(BrokerUnreachable));
            }
            return Err(Ended::Lost(err));
        }
        // Pairs at the limit: every node is told on the throttle channel, then the logins
        // that failed are answered.
        for payload in told {
            if let Err(err) = bounded(
                redis::cmd("SPUBLISH")
                    .arg(self.names.throttle_channel())
                    .arg(payload)
                    .query_async::<()>(&mut link.connection),
            )
            .await
            {
                return Err(Ended::Lost(err));
            }
        }
        for done in counted {
            let _ = done.send(());
        }
        for done in flushes {
            let _ = done.send(());
        }
        for (users, answer) in many {
            let reads = users.iter().map(|user| {
                let mut pipe = redis::pipe();
                self.user_script(&mut pipe, (&sha, 'c'), user, "", None, "");
                let mut connection = link.connection.clone();
                async move { bounded(pipe.query_async::<Vec<Value>>(&mut connection)).await }
            });
            let counts: Result<Vec<usize>, String> = join_all(reads)
                .await
                .into_iter()
                .map(|counts| counts.map(|counts| counts.first().map_or(0, count_of)))
                .collect();
            match counts {
                Ok(counts) => {
                    let _ = answer.send(Ok(counts));
                }
                Err(err) => {
                    let _ = answer.send(Err(BrokerUnreachable));
                    return Err(Ended::Lost(err));
                }
            }
        }
        // Each verifier's key is on its user's slot: one pipeline per operation.
        for op in verifier_ops {
            let mut connection = link.connection.clone();
            crate::verifiers::run(vec![op], &self.names, &mut connection).await;
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
        let users: Vec<Arc<str>> = self.local.keys().cloned().collect();
        let removals = users.iter().map(|user| {
            let mut connection = link.connection.clone();
            let key = self.names.tagged("presence", user);
            let member = self.member.clone();
            async move {
                bounded(
                    redis::cmd("HDEL")
                        .arg(key)
                        .arg(member)
                        .query_async::<()>(&mut connection),
                )
                .await
            }
        });
        let mut failed = join_all(removals).await.into_iter().find_map(Result::err);
        if let Err(err) = bounded(
            redis::cmd("ZREM")
                .arg(self.names.nodes_key())
                .arg(&self.member)
                .query_async::<()>(&mut link.connection),
        )
        .await
        {
            failed = Some(err);
        }
        if let Err(err) = bounded(
            redis::cmd("EVALSHA")
                .arg(&link.owner_script)
                .arg(1)
                .arg(self.names.owner_key())
                .arg("w")
                .arg(&self.token)
                .query_async::<()>(&mut link.connection),
        )
        .await
        {
            failed = Some(err);
        }
        if let Some(err) = failed {
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

/// The index of `user`'s pipeline in `pipes`, added if it has none yet.
fn pipe_of(
    pipes: &mut Vec<redis::Pipeline>,
    by_user: &mut HashMap<Arc<str>, usize>,
    user: &Arc<str>,
) -> usize {
    *by_user.entry(Arc::clone(user)).or_insert_with(|| {
        pipes.push(redis::pipe());
        pipes.len() - 1
    })
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
        subscriptions: HashMap::new(),
        slots: Vec::new(),
        user_script: String::new(),
        heartbeat_script: String::new(),
        owner_script: String::new(),
        masters: Vec::new(),
        ca,
    };
    link.refresh_slots().await?;
    link.user_script = link.load(USER_SCRIPT).await?;
    link.heartbeat_script = link.load(HEARTBEAT_SCRIPT).await?;
    link.owner_script = link.load(OWNER_SCRIPT).await?;
    for master in link.masters.clone() {
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
        let slot = slot_of(name.as_bytes());
        self.slots
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, master)| master)
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
        let url = with_host(template, master);
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
/// speaking RESP3 (sharded messages arrive as pushes).
fn with_host(template: &str, address: &str) -> String {
    let Some(scheme_end) = template.find("://").map(|at| at + 3) else {
        return template.to_owned();
    };
    let rest = &template[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let userinfo = rest[..authority_end]
        .rfind('@')
        .map_or("", |at| &rest[..=at]);
    let protocol = if rest[authority_end..].contains('?') {
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
            with_host("redis://u:p@a:1/0", "127.0.0.1:7000"),
            "redis://u:p@127.0.0.1:7000/0?protocol=resp3"
        );
        assert_eq!(
            with_host("rediss://b:2/0", "h:3"),
            "rediss://h:3/0?protocol=resp3"
        );
    }
}
