//! The broker's thread: one command connection (multiplexed, for publishes, counts,
//! presence and heartbeats) and one subscriber connection to Redis, and what it does while
//! they are lost.
//!
//! - **Connected**: requests are taken in batches and sent as one pipeline (each publish is
//!   one `EVALSHA` of [`SCRIPT`], which publishes and counts the user's connections on the
//!   other live nodes at once), answered in order; messages from the subscriber connection
//!   are handed to the node's [`Inbox`] without waiting; every [`HEARTBEAT`] the node's
//!   entry in the set of live nodes is renewed and both connections are probed, each
//!   answer bounded by [`ANSWER_TIMEOUT`], so a dead, paused or cut Redis is noticed within
//!   [`HEARTBEAT`] + [`ANSWER_TIMEOUT`].
//! - **Unreachable**: requests that need Redis are answered [`BrokerUnreachable`] at once;
//!   a client's invalidation is kept (once per user, at most [`MAX_LATER`]); presence
//!   changes are kept in the node's counts. Reconnection waits a capped exponential
//!   backoff with jitter between attempts. Once connected again the node rewrites its
//!   counts, resubscribes in batches of [`BATCH`], applies the invalidations it missed
//!   (from each user's `invalidated` key) and sends the ones it kept.

pub(crate) use crate::answer::{bounded, ANSWER_TIMEOUT};
use crate::history::BindingHistory;
use crate::metrics::ClusterMetrics;
use crate::names::{
    event_payload, invalidation_payload, throttle_payload, Names, Payload, SEPARATOR,
};
use crate::throttle::Throttled;
use crate::topology::Source;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether_actors::hub::broker::{
    Answered, BrokerUnreachable, ClusterEvent, Inbox, NotTaken, Taken,
};
use tether_actors::hub::messages::BindingId;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How often the node renews its liveness and probes its connections.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a connection attempt may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// First pause before reconnecting, and the longest.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Requests sent as one pipeline at most, and channels per `SUBSCRIBE` when resubscribing.
pub(crate) const BATCH: usize = 500;
/// Client invalidations kept while Redis is unreachable, at most (one per user).
pub(crate) const MAX_LATER: usize = 10_000;
/// While Redis is unreachable, how often the node notes which bindings it has issued, so
/// that an invalidation it missed spares the logins made after it.
pub(crate) const MARK_INTERVAL: Duration = Duration::from_secs(1);
/// Marks kept at most (an hour's worth); later logins are then spared from the last one.
pub(crate) const MAX_MARKS: usize = 3600;
/// How long a node's claim on its name lasts without a heartbeat: another node may take
/// the name once it has lapsed (a live node renews it every [`HEARTBEAT`]).
pub(crate) const OWNER_TTL: Duration = Duration::from_secs(10);
/// A heartbeat this late (the node was paused, or its thread starved) is sent before
/// anything else, so that a node forgotten or replaced meanwhile finds out first.
pub(crate) const LATE_HEARTBEAT: Duration = Duration::from_secs(6);

/// The start of both scripts (this one and `sharded.rs`'s): Redis's time as `now`, the
/// mode, and mode `t`, a failed login (`KEYS[1]` = the pair's failures, `ARGV[2]` = the
/// limit, `ARGV[3]` = a member naming this failure), which answers how many ms the pair
/// stays throttled (0: not throttled); mode `s`, a login whose password matched (same
/// `KEYS[1]` and `ARGV[2]`): a pair with `limit` failures in the last minute stays
/// throttled (the login is refused: answers how many ms more), any other has its
/// failures forgotten (answers 0).
macro_rules! script_head {
    () => {
        r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]
if mode == 't' then
  local limit = tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(limit + 1))
  redis.call('PEXPIRE', KEYS[1], 60000)
  if redis.call('ZCARD', KEYS[1]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return tonumber(oldest[2]) + 60000 - now
  end
  return 0
end
if mode == 's' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return math.max(tonumber(oldest[2]) + 60000 - now, 1)
  end
  redis.call('DEL', KEYS[1])
  return 0
end
"
    };
}
pub(crate) use script_head;

/// Modes `e` and `i` of both scripts, given the Lua locals `id_key` (an event's id key, or
/// nil), `invalidated_key` and `extra` (the event's time, or the invalidation's made
/// time): an event whose id was accepted answers `{time}` of the first; an invalidation
/// notes `sent:made` in the user's `invalidated` key.
macro_rules! script_id_and_invalidated {
    () => {
        r"
if mode == 'e' and id_key then
  local first = redis.call('GET', id_key)
  if first then return {tonumber(first)} end
  redis.call('SET', id_key, extra, 'PX', 300000)
end
if mode == 'i' then
  local made = tonumber(extra) or now
  local old = redis.call('GET', invalidated_key)
  if old then
    local before = tonumber(string.match(old, ':(%-?%d+)$') or old)
    if before and before > made then made = before end
  end
  redis.call('SET', invalidated_key, now .. ':' .. made, 'PX', 86400000)
end
"
    };
}
pub(crate) use script_id_and_invalidated;

/// One script for every scripted command, so each is one round trip and one command:
/// `KEYS` = the set of live nodes, the user's channel, the user's `invalidated` key, and
/// for an event with an id its id key; `ARGV` = mode, this node, the user, the payload,
/// the prefix of node keys, and for an event with an id the event's time.
/// Modes: `e` publish an event — unless its id key exists, then answer `{time}` of the
/// first event with that id and publish nothing; else set the id key (5 minutes) in the
/// same step (SPEC §6) — `i` publish an invalidation (and note its time), `c`
/// count only — each answers the user's connections on the other live nodes (heartbeat
/// within 10 s); `h` heartbeat (`KEYS[2]` = this node's owner key, `ARGV[3]` = this
/// node's token, `ARGV[4]` = a stale token it may replace): claims the node's name for
/// [`OWNER_TTL`] unless another live node holds it, renews this node, forgets nodes silent
/// for a minute — answers `{Redis's time in ms, verdict, owner}`, verdict 0 = renewed,
/// 1 = this node was not in the set of live nodes (new, or forgotten: it must write its
/// presence again), 2 = the name is held by `owner`, nothing done; `w` withdraw (same
/// keys): this node's entry, counts and owner key deleted, if it still owns the name;
/// `t` a failed login (`KEYS[1]` = the pair's failures, `ARGV[2]` = the limit, `ARGV[3]` =
/// a member naming this failure): counts it over the last minute and answers how many
/// ms the pair stays throttled (0: not throttled); `m` count many (only `KEYS[1]`; the users are
/// `ARGV[6..]`) — answers each user's connections on the other live nodes, with one
/// `HMGET` per live node.
const SCRIPT: &str = concat!(
    script_head!(),
    r"
if mode == 'h' then
  local owner = redis.call('GET', KEYS[2])
  if owner and owner ~= ARGV[3] and owner ~= ARGV[4] then return {now, 2, owner, {}} end
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[6])
  local known = redis.call('ZSCORE', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[1], now, ARGV[2])
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 60000)) do
    redis.call('DEL', ARGV[5] .. n)
    redis.call('ZREM', KEYS[1], n)
  end
  local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - 10000, '+inf')
  if known then return {now, 0, '', live} end
  return {now, 1, '', live}
end
if mode == 'w' then
  if redis.call('GET', KEYS[2]) == ARGV[3] then
    redis.call('DEL', KEYS[2], ARGV[5] .. ARGV[2])
    redis.call('ZREM', KEYS[1], ARGV[2])
  end
  return 0
end
if mode == 'm' then
  local totals = {}
  for i = 6, #ARGV do totals[i - 5] = 0 end
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - 10000, '+inf')) do
    if n ~= ARGV[2] then
      local counts = redis.call('HMGET', ARGV[5] .. n, unpack(ARGV, 6))
      for i, c in ipairs(counts) do
        if c then totals[i] = totals[i] + tonumber(c) end
      end
    end
  end
  return totals
end
local id_key, invalidated_key, extra = KEYS[4], KEYS[3], ARGV[6]
",
    script_id_and_invalidated!(),
    r"
if mode ~= 'c' then redis.call('PUBLISH', KEYS[2], ARGV[4]) end
local total = 0
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - 10000, '+inf')) do
  if n ~= ARGV[2] then
    local c = redis.call('HGET', ARGV[5] .. n, ARGV[3])
    if c then total = total + tonumber(c) end
  end
end
return total
"
);

/// Where the answer to a request goes: the other nodes' count, or unreachable.
pub(crate) enum Answer {
    /// To a waiting caller.
    Channel(oneshot::Sender<Result<usize, BrokerUnreachable>>),
}

impl Answer {
    /// Hands over `result`.
    pub(crate) fn send(self, result: Result<usize, BrokerUnreachable>) {
        match self {
            Self::Channel(sender) => {
                let _ = sender.send(result);
            }
        }
    }
}

/// What the node asks of the broker's thread.
pub(crate) enum Request {
    /// Where messages from other nodes go.
    Attach(Arc<dyn Inbox>),
    /// Publish an event; `answer` delivers it here, or answers why not.
    Publish {
        event: ClusterEvent,
        answer: Answered,
    },
    /// Invalidate a user on the other nodes: now (an operator's) or, without an answer,
    /// as soon as Redis is reachable (a client's).
    Invalidate {
        user: Arc<str>,
        answer: Option<Answer>,
        /// When it was made, this machine's ms: a client's may wait for Redis, and the
        /// other nodes spare the logins made after it.
        made: i64,
    },
    /// Count the user's connections on the other nodes.
    Count { user: Arc<str>, answer: Answer },
    /// Count each user's connections on the other nodes (one script run for all).
    CountMany {
        users: Vec<Arc<str>>,
        answer: oneshot::Sender<Result<Vec<usize>, BrokerUnreachable>>,
    },
    /// This node's connections of `user` changed by `delta`; `subscribed` is answered once
    /// the node follows the user's channel (dropped while Redis is unreachable).
    Presence {
        user: Arc<str>,
        delta: i32,
        subscribed: Option<oneshot::Sender<()>>,
    },
    /// A checked login of `name` from `client` failed on this node; `limit` a minute.
    /// `counted` is answered once it is counted (and every node told when it reached the
    /// limit), or dropped.
    LoginFailed {
        client: IpAddr,
        name: Box<[u8]>,
        limit: u32,
        counted: oneshot::Sender<()>,
    },
    /// A checked login of `name` from `client` succeeded on this node; `limit` a minute.
    /// `admitted` is answered `false` when the cluster throttles the pair (the login is
    /// refused), `true` when it does not (its failures are forgotten); dropped, it admits.
    LoginSucceeded {
        client: IpAddr,
        name: Box<[u8]>,
        limit: u32,
        admitted: oneshot::Sender<bool>,
    },
    /// Say so on the channel once the requests before have been answered.
    Flush(oneshot::Sender<()>),
    /// Withdraw this node from the cluster and end; says so on the channel.
    Stop(std::sync::mpsc::Sender<()>),
    /// Check, keep or forget a verifier (`verifiers.rs`); dropped while unreachable.
    Verifier(crate::verifiers::Op),
}

impl Request {
    /// Answers a request that cannot reach Redis: unreachable (a client's invalidation is
    /// lost then — the thread is gone).
    pub(crate) fn refuse(self) {
        match self {
            Self::Publish { answer, .. } => answer(Err(NotTaken::Unreachable)),
            Self::Count { answer, .. }
            | Self::Invalidate {
                answer: Some(answer),
                ..
            } => answer.send(Err(BrokerUnreachable)),
            Self::CountMany { answer, .. } => {
                let _ = answer.send(Err(BrokerUnreachable));
            }
            _ => {}
        }
    }
}

/// Why the connected phase ended.
pub(crate) enum Ended {
    /// A connection was lost or an answer did not come.
    Lost(String),
    /// The node stops.
    Stopping,
    /// Another live node holds this node's name (its token is given).
    NameTaken(String),
}

/// What a heartbeat found.
enum Beat {
    /// This node was renewed.
    Renewed,
    /// This node was not in the set of live nodes: new, or forgotten by the others while
    /// it was paused or cut off — its counts may be gone.
    Forgotten,
    /// Another live node holds this node's name (its token is given).
    Taken(String),
}

/// How the first attempt to join the cluster went, for the broker's `wait_joined`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Joined {
    /// Connected, the name claimed.
    Connected,
    /// Redis could not be reached (the node starts and keeps trying).
    Unreachable(String),
    /// Another live node holds the name.
    NameTaken,
}

/// The two connections to Redis while connected.
struct Link {
    /// Commands, pipelined.
    commands: MultiplexedConnection,
    /// Subscriptions.
    sink: PubSubSink,
    /// What the subscriptions bring.
    messages: PubSubStream,
    /// The SHA1 of [`SCRIPT`], loaded on this connection's Redis.
    script: String,
    /// The Redis's `host:port`.
    address: String,
}

/// What the broker's thread shares with its handle, for `/healthz` and `GET /v1/node`.
pub(crate) struct Status {
    /// Whether the thread is connected to Redis now.
    pub(crate) connected: Arc<AtomicBool>,
    /// The address(es) of the Redis master(s) connected to now.
    pub(crate) upstream: Arc<std::sync::Mutex<Option<String>>>,
    /// The live nodes' names, sorted, as the last heartbeat read them.
    pub(crate) live_nodes: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Status {
    /// Keeps `names` as the live nodes' names, sorted, without repeats.
    pub(crate) fn set_live_nodes<'a>(&self, names: impl Iterator<Item = &'a str>) {
        let mut names: Vec<String> = names.map(str::to_owned).collect();
        names.sort_unstable();
        names.dedup();
        if let Ok(mut nodes) = self.live_nodes.lock() {
            *nodes = names;
        }
    }
}

/// What either worker (this one or `sharded.rs`'s) takes from the broker's handle.
pub(crate) struct Wiring {
    pub(crate) names: Names,
    pub(crate) requests: mpsc::UnboundedReceiver<Request>,
    pub(crate) status: Status,
    pub(crate) metrics: ClusterMetrics,
    pub(crate) joined: std::sync::mpsc::SyncSender<Joined>,
    pub(crate) throttled: Arc<Throttled>,
}

/// The state of the broker's thread.
pub(crate) struct Worker {
    /// Where Redis is (one, or the master that sentinels name).
    source: Source,
    /// The address of the Redis connected to now and the live nodes, for `/healthz` and
    /// `GET /v1/node`.
    status: Status,
    /// The address of the last Redis connected to, to log a change of master.
    last_address: Option<String>,
    names: Names,
    requests: mpsc::UnboundedReceiver<Request>,
    connected: Arc<AtomicBool>,
    metrics: ClusterMetrics,
    /// Where messages from other nodes go, once attached.
    inbox: Option<Arc<dyn Inbox>>,
    /// This node's connections per user (only users with some).
    local: HashMap<Arc<str>, u32>,
    /// Users whose count changed since it was last written to Redis.
    dirty: HashSet<Arc<str>>,
    /// Users whose channel the current subscriber connection follows.
    subscribed: HashSet<Arc<str>>,
    /// Client invalidations to send once Redis is reachable, in order, once per user, each
    /// with when the latest of the user's was made (this machine's ms).
    later: VecDeque<(Arc<str>, i64)>,
    /// Which bindings existed when, for invalidations received late.
    history: BindingHistory,
    /// Redis's time (ms) at the last heartbeat answered.
    last_seen: Option<i64>,
    /// Redis's time (ms) at the heartbeat before that one: what a restore reconciles from
    /// (see `serve`).
    seen_before: Option<i64>,
    /// Redis's clock minus this machine's, in ms, at the last heartbeat.
    clock_offset: i64,
    /// While unreachable: (this machine's time in ms, the next binding id) now and then.
    marks: Vec<(i64, BindingId)>,
    /// Set once the first connection was made: later ones count as reconnects.
    was_connected: bool,
    /// Whether the log says Redis is unreachable since the last change of state.
    told_unreachable: bool,
    /// Draws the jitter of the backoff.
    jitter: RandomState,
    /// Counts draws, so each jitter differs.
    draws: u64,
    /// This run's claim on the node's name: host, process id and a nonce.
    token: String,
    /// Told how the first attempt to join went, then `None`.
    joined: Option<std::sync::mpsc::SyncSender<Joined>>,
    /// When the last heartbeat was answered.
    last_beat: Instant,
    /// The pairs the cluster throttles, shared with the broker's handle.
    throttled: Arc<Throttled>,
    /// Counts this node's failed logins, so each is a distinct member of its pair's set.
    failures: u64,
}

impl Worker {
    pub(crate) fn new(source: Source, wiring: Wiring) -> Self {
        let Wiring {
            names,
            requests,
            status,
            metrics,
            joined,
            throttled,
        } = wiring;
        let connected = Arc::clone(&status.connected);
        let jitter = RandomState::new();
        let token = claim_token(&jitter);
        Self {
            source,
            status,
            last_address: None,
            names,
            requests,
            connected,
            metrics,
            inbox: None,
            local: HashMap::new(),
            dirty: HashSet::new(),
            subscribed: HashSet::new(),
            later: VecDeque::new(),
            history: BindingHistory::default(),
            last_seen: None,
            seen_before: None,
            clock_offset: 0,
            marks: Vec::new(),
            was_connected: false,
            told_unreachable: false,
            jitter,
            draws: 0,
            token,
            joined: Some(joined),
            last_beat: Instant::now(),
            throttled,
            failures: 0,
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
                        // It served: the next attempt starts from the shortest pause.
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
            let pause = self.jittered(backoff);
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
    /// for good (publishes `503`, one log line) rather than share the name, and serves its
    /// own clients until it stops. It writes nothing more to Redis: the keys under its name
    /// are the other node's now.
    async fn retire(&mut self, owner: &str) {
        self.connected.store(false, Ordering::Relaxed);
        self.metrics.connected.set(0);
        self.subscribed.clear();
        self.metrics.subscribed_users.set(0);
        log_name_taken(&self.names.node, owner, self.joined.is_some());
        self.tell_joined(Joined::NameTaken);
        while let Some(request) = self.requests.recv().await {
            if self.unreachable(request) {
                return;
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
        self.metrics.subscribed_users.set(0);
        if was_connected {
            self.marks.clear();
            self.mark();
        }
        if was_connected || !self.told_unreachable {
            self.told_unreachable = true;
            log::warn!(
                "cluster: Redis unreachable ({reason}); node {:?} keeps serving its own \
                 clients, refuses publishes (503), throttles logins by its own count of \
                 failures only, and reconnects",
                self.names.node
            );
        }
    }

    /// Notes this machine's time and the next binding id (at most [`MAX_MARKS`] while
    /// unreachable; the last hour in `history` always).
    fn mark(&mut self) {
        let (now, next) = (now_ms(), BindingId::watermark());
        if self.marks.len() < MAX_MARKS {
            self.marks.push((now, next));
        }
        self.history.note(now, next);
    }

    /// `pause` less up to half of it, drawn at random, so nodes do not reconnect in step.
    fn jittered(&mut self, pause: Duration) -> Duration {
        self.draws += 1;
        let draw = self.jitter.hash_one(self.draws) % 1000;
        pause - pause / 2 * u32::try_from(draw).unwrap_or(0) / 1000
    }

    /// Waits `pause` while serving requests as unreachable; `Err` when the node stops.
    async fn wait_while_unreachable(&mut self, pause: Duration) -> Result<(), ()> {
        let until = Instant::now() + pause;
        let mut marks = tokio::time::interval(MARK_INTERVAL);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return Ok(()),
                // The sentinels announced a new master: try it now.
                () = self.source.switched() => return Ok(()),
                _ = marks.tick() => self.mark(),
                request = self.requests.recv() => match request {
                    Some(request) => {
                        if self.unreachable(request) {
                            return Err(());
                        }
                    }
                    None => return Err(()),
                },
            }
        }
    }

    /// Handles a request while Redis is unreachable; `true` when the node stops.
    fn unreachable(&mut self, request: Request) -> bool {
        match request {
            Request::Attach(inbox) => self.inbox = Some(inbox),
            Request::Publish { answer, .. } => answer(Err(NotTaken::Unreachable)),
            Request::Count { answer, .. }
            | Request::Invalidate {
                answer: Some(answer),
                ..
            } => {
                answer.send(Err(BrokerUnreachable));
            }
            request @ Request::CountMany { .. } => request.refuse(),
            Request::Flush(done) => {
                let _ = done.send(());
            }
            // Not counted cluster-wide: the node's own throttle holds meanwhile.
            Request::LoginFailed { .. } | Request::LoginSucceeded { .. } => {}
            Request::Invalidate {
                user,
                answer: None,
                made,
            } => self.keep_for_later(user, made),
            // `subscribed` is dropped: the login is answered now, not after the outage.
            Request::Presence { user, delta, .. } => {
                self.count(&user, delta);
            }
            Request::Stop(done) => {
                let _ = done.send(());
                return true;
            }
            // A check dropped unanswered pays bcrypt; a keep or forget is lost (see
            // `verifiers.rs`).
            Request::Verifier(_) => {}
        }
        false
    }

    /// Keeps a client's invalidation until Redis is back (once per user, bounded).
    fn keep_for_later(&mut self, user: Arc<str>, made: i64) {
        if let Some((_, kept)) = self.later.iter_mut().find(|(kept, _)| *kept == user) {
            *kept = (*kept).max(made);
            return;
        }
        if self.later.len() >= MAX_LATER {
            self.metrics.invalidations_dropped.inc();
            if self.metrics.invalidations_dropped.get() == 1 {
                log::warn!(
                    "cluster: {MAX_LATER} client invalidations wait for Redis already; \
                     further ones reach only this node (counted in \
                     tether_cluster_invalidations_dropped_total)"
                );
            }
            return;
        }
        self.later.push_back((user, made));
    }

    /// Applies a presence change to this node's counts; answers whether the user now has
    /// connections here.
    fn count(&mut self, user: &Arc<str>, delta: i32) -> bool {
        let count = self.local.entry(Arc::clone(user)).or_default();
        *count = count.saturating_add_signed(delta);
        let present = *count > 0;
        if !present {
            self.local.remove(user);
        }
        self.dirty.insert(Arc::clone(user));
        present
    }

    /// Tries to connect while answering requests as unreachable; `None` when the node
    /// stops meanwhile.
    async fn connect_while_serving(&mut self) -> Option<Result<Link, String>> {
        let source = self.source.clone();
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT * 2, connect(source));
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                done = &mut attempt => {
                    return Some(match done {
                        Ok(result) => result,
                        Err(_) => Err("connecting timed out".to_owned()),
                    });
                }
                request = self.requests.recv() => match request {
                    Some(request) => {
                        if self.unreachable(request) {
                            return None;
                        }
                    }
                    None => return None,
                },
            }
        }
    }

    /// Serves a fresh link: restores this node's state in Redis, then serves until the
    /// link is lost or the node stops.
    async fn serve(&mut self, mut link: Link) -> Ended {
        // Redis's time when this node last heard from it: kept until a restore completes,
        // so that one cut short does not skip the invalidations missed. Reconciled from the
        // heartbeat before the last: the last may have been answered after the
        // subscription was cut (a node resumed after a pause runs its overdue heartbeat
        // before it reads that Redis closed its subscription, as one cut off as a slow
        // subscriber while paused does); applying again an invalidation already received
        // changes nothing (it spares the logins made after it).
        let (last_seen, seen_before) = (self.last_seen, self.seen_before);
        if let Err(ended) = self.restore(&mut link, seen_before.or(last_seen)).await {
            (self.last_seen, self.seen_before) = (last_seen, seen_before);
            return ended;
        }
        self.tell_joined(Joined::Connected);
        self.connected.store(true, Ordering::Relaxed);
        self.told_unreachable = false;
        self.metrics.connected.set(1);
        if self.was_connected {
            self.metrics.reconnects.inc();
        }
        self.was_connected = true;
        self.metrics
            .set_masters(std::slice::from_ref(&link.address));
        if let Ok(mut upstream) = self.status.upstream.lock() {
            *upstream = Some(link.address.clone());
        }
        let master = match self.source.master_name() {
            Some(name) => format!("master {name:?} at {}", link.address),
            None => link.address.clone(),
        };
        match self.last_address.replace(link.address.clone()) {
            Some(old) if old != link.address => log::warn!(
                "cluster: connected to Redis {master} (was {old}) as node {:?} ({} user(s) here)",
                self.names.node,
                self.local.len()
            ),
            _ => log::info!(
                "cluster: connected to Redis {master} as node {:?} ({} user(s) here)",
                self.names.node,
                self.local.len()
            ),
        }
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let mut marks = tokio::time::interval(MARK_INTERVAL);
        marks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                request = self.requests.recv() => match request {
                    Some(request) => {
                        // Back from a pause: first find out whether this node was forgotten
                        // or replaced meanwhile.
                        if self.last_beat.elapsed() > LATE_HEARTBEAT {
                            if let Err(ended) = self.beat(&mut link).await {
                                return ended;
                            }
                        }
                        self.handle_requests(&mut link, request).await
                    }
                    None => return Ended::Stopping,
                },
                message = link.messages.next() => match message {
                    Some(message) => {
                        self.received(message.get_payload_bytes());
                        Ok(())
                    }
                    None => Err(Ended::Lost("the subscriber connection was closed".to_owned())),
                },
                _ = heartbeat.tick() => self.beat(&mut link).await,
                _ = marks.tick() => {
                    let (now, next) = (now_ms(), BindingId::watermark());
                    self.history.note(now, next);
                    Ok(())
                }
                () = self.source.switched() => self.source.check_master(&link.address).await.map_err(Ended::Lost),
            };
            if let Err(ended) = step {
                return ended;
            }
        }
    }

    /// After connecting: this node's entry and counts rewritten, its users resubscribed,
    /// the invalidations made since `last_seen` (Redis's time) applied, the ones it kept
    /// sent.
    async fn restore(&mut self, link: &mut Link, last_seen: Option<i64>) -> Result<(), Ended> {
        // The name first: nothing is written under a name another live node holds.
        match self.heartbeat(link).await.map_err(Ended::Lost)? {
            Beat::Taken(owner) => return Err(Ended::NameTaken(owner)),
            Beat::Renewed | Beat::Forgotten => {}
        }
        self.rewrite_counts(link).await.map_err(Ended::Lost)?;
        self.restore_rest(link, last_seen)
            .await
            .map_err(Ended::Lost)
    }

    /// This node's counts, the whole map, replacing whatever a previous run, link or
    /// forgetting left.
    async fn rewrite_counts(&mut self, link: &mut Link) -> Result<(), String> {
        let names = &self.names;
        let users: Vec<(Arc<str>, u32)> = self
            .local
            .iter()
            .map(|(user, count)| (Arc::clone(user), *count))
            .collect();
        let mut pipe = redis::pipe();
        pipe.atomic().del(names.own_node_key()).ignore();
        for chunk in users.chunks(BATCH) {
            let fields: Vec<(&str, u32)> = chunk.iter().map(|(u, c)| (&**u, *c)).collect();
            pipe.hset_multiple(names.own_node_key(), &fields).ignore();
        }
        bounded(pipe.query_async::<()>(&mut link.commands)).await?;
        self.dirty.clear();
        Ok(())
    }

    /// After the counts: subscriptions, missed invalidations, kept invalidations.
    async fn restore_rest(
        &mut self,
        link: &mut Link,
        last_seen: Option<i64>,
    ) -> Result<(), String> {
        let names = self.names.clone();
        let users: Vec<(Arc<str>, u32)> = self
            .local
            .iter()
            .map(|(user, count)| (Arc::clone(user), *count))
            .collect();
        // What the other nodes throttle, then the users' channels in batches.
        bounded(link.sink.subscribe(names.throttle_channel())).await?;
        for chunk in users.chunks(BATCH) {
            let channels: Vec<String> = chunk.iter().map(|(u, _)| names.user_channel(u)).collect();
            bounded(link.sink.subscribe(channels)).await?;
            self.subscribed
                .extend(chunk.iter().map(|(u, _)| Arc::clone(u)));
        }
        self.metrics
            .subscribed_users
            .set(self.subscribed.len() as i64);
        // Invalidations missed while unreachable.
        if let Some(since) = last_seen {
            for chunk in users.chunks(BATCH) {
                let keys: Vec<String> = chunk
                    .iter()
                    .map(|(u, _)| names.invalidated_key(u))
                    .collect();
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.get(key);
                }
                let times: Vec<Option<String>> =
                    bounded(pipe.query_async(&mut link.commands)).await?;
                for ((user, _), time) in chunk.iter().zip(times) {
                    let Some((sent, made)) = time.as_deref().and_then(invalidated_times) else {
                        continue;
                    };
                    if sent > since {
                        // When it was made, not when it reached Redis: a client's may have
                        // waited for Redis on a node cut off.
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
        // Client invalidations kept meanwhile.
        while !self.later.is_empty() {
            let take = self.later.len().min(BATCH);
            let mut pipe = redis::pipe();
            for (user, made) in self.later.iter().take(take) {
                let made = made + self.clock_offset;
                invalidation_script(&mut pipe, &link.script, &names, user, made);
                pipe.ignore();
            }
            bounded(pipe.query_async::<()>(&mut link.commands)).await?;
            self.later.drain(..take);
        }
        Ok(())
    }

    /// The first binding id issued after this machine's time `at` (ms), from the marks
    /// taken while unreachable: bindings before it existed when the invalidation was made.
    fn issued_before(&self, at: i64) -> BindingId {
        self.marks
            .iter()
            .take_while(|(time, _)| *time <= at)
            .last()
            .or(self.marks.first())
            .map_or_else(BindingId::watermark, |(_, binding)| *binding)
    }

    /// A heartbeat while connected: a node found forgotten writes all its presence again
    /// at once (SPEC §8: counted again within 10 s); one whose name was taken ends.
    async fn beat(&mut self, link: &mut Link) -> Result<(), Ended> {
        match self.heartbeat(link).await.map_err(Ended::Lost)? {
            Beat::Renewed => Ok(()),
            Beat::Taken(owner) => Err(Ended::NameTaken(owner)),
            Beat::Forgotten => {
                log::warn!(
                    "cluster: node {:?} had been forgotten by the others (paused or cut off \
                     for a minute or more); writing its {} user(s)' presence again",
                    self.names.node,
                    self.local.len()
                );
                self.rewrite_counts(link).await.map_err(Ended::Lost)
            }
        }
    }

    /// Claims this node's name, renews its liveness and probes both connections. A name
    /// held by a run of this node on this host that is gone (a crash, restarted at once) is
    /// taken over.
    async fn heartbeat(&mut self, link: &mut Link) -> Result<Beat, String> {
        let mut beat = self.heartbeat_once(link, "").await?;
        if let Beat::Taken(owner) = &beat {
            if is_dead_run_of_this_host(owner) {
                log::info!(
                    "cluster: node name {:?} was held by an earlier run on this host that is \
                     gone; taking it over",
                    self.names.node
                );
                let stale = owner.clone();
                beat = self.heartbeat_once(link, &stale).await?;
            }
        }
        bounded(link.sink.ping::<redis::Value>()).await?;
        self.last_beat = Instant::now();
        Ok(beat)
    }

    /// One heartbeat script run, replacing the claim `stale` if it holds the name.
    async fn heartbeat_once(&mut self, link: &mut Link, stale: &str) -> Result<Beat, String> {
        let (now, verdict, owner, live): (i64, i64, String, Vec<String>) = bounded(
            owner_script(&link.script, &self.names, 'h', &self.token, stale)
                .query_async(&mut link.commands),
        )
        .await?;
        if verdict == 2 {
            return Ok(Beat::Taken(owner));
        }
        self.status.set_live_nodes(live.iter().map(String::as_str));
        self.seen_before = self.last_seen;
        self.last_seen = Some(now);
        self.clock_offset = now - now_ms();
        Ok(if verdict == 1 {
            Beat::Forgotten
        } else {
            Beat::Renewed
        })
    }

    /// Takes `first` and whatever else is queued (up to [`BATCH`]); subscribes to the users
    /// this node gained and unsubscribes from those it lost; then sends the requests and
    /// this node's counts as one pipeline.
    async fn handle_requests(&mut self, link: &mut Link, first: Request) -> Result<(), Ended> {
        let mut pipe = redis::pipe();
        let mut answers: Vec<Pending> = Vec::new();
        let mut changed: Vec<Arc<str>> = Vec::new();
        let mut stop = None;
        let mut many = Vec::new();
        // Answered once the pipeline's answers are (dropped with them if it fails).
        let mut flushes = Vec::new();
        // Logins waiting for their user's channel: answered once `follow` subscribed (or
        // dropped, unanswered, if it fails).
        let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
        let mut writes = false;
        let mut verifier_ops = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Attach(inbox) => self.inbox = Some(inbox),
                Request::Publish { event, answer } => {
                    publish_script(&mut pipe, &link.script, &self.names, &event);
                    answers.push(Pending::Publish(answer));
                }
                Request::Invalidate { user, answer, made } => {
                    let made = made + self.clock_offset;
                    invalidation_script(&mut pipe, &link.script, &self.names, &user, made);
                    answers.push(Pending::Other(answer));
                }
                Request::Count { user, answer } => {
                    script(&mut pipe, &link.script, &self.names, 'c', &user, "");
                    answers.push(Pending::Other(Some(answer)));
                }
                Request::CountMany { users, answer } => many.push((users, answer)),
                Request::LoginFailed {
                    client,
                    name,
                    limit,
                    counted,
                } => {
                    self.failures += 1;
                    let member = format!("{}:{}", self.token, self.failures);
                    pipe.cmd("EVALSHA")
                        .arg(&link.script)
                        .arg(1)
                        .arg(self.names.throttle_key(client, &name))
                        .arg("t")
                        .arg(limit)
                        .arg(member);
                    answers.push(Pending::Failure {
                        client,
                        name,
                        counted,
                    });
                }
                Request::LoginSucceeded {
                    client,
                    name,
                    limit,
                    admitted,
                } => {
                    pipe.cmd("EVALSHA")
                        .arg(&link.script)
                        .arg(1)
                        .arg(self.names.throttle_key(client, &name))
                        .arg("s")
                        .arg(limit);
                    answers.push(Pending::Success {
                        client,
                        name,
                        admitted,
                    });
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
        // Subscribed before this node's counts say it holds the users: a node counted as
        // holding a user's connections receives that user's events.
        if let Err(err) = self.follow(link, changed).await {
            // Nothing of this pipeline was sent.
            for pending in answers {
                pending.fail(NotTaken::Unreachable);
            }
            for (_, answer) in many {
                let _ = answer.send(Err(BrokerUnreachable));
            }
            return Err(Ended::Lost(err));
        }
        // This node's counts go in the same round trip, after the requests; the logins
        // waiting are answered once they are written, so a publish anywhere right after a
        // `login_valid` counts that login.
        for user in self.dirty.drain() {
            writes = true;
            match self.local.get(&user) {
                Some(count) => pipe
                    .hset(self.names.own_node_key(), &*user, *count)
                    .ignore(),
                None => pipe.hdel(self.names.own_node_key(), &*user).ignore(),
            };
        }
        if !answers.is_empty() || writes {
            match bounded(pipe.query_async::<Vec<redis::Value>>(&mut link.commands)).await {
                Ok(replies) => {
                    let mut replies = replies.into_iter();
                    let mut throttle = redis::pipe();
                    let mut told = 0;
                    let mut counted = Vec::new();
                    for pending in answers {
                        let reply = replies.next().unwrap_or(redis::Value::Nil);
                        let pending = match pending {
                            Pending::Success {
                                client,
                                name,
                                admitted,
                            } => {
                                let admit = self.throttled.admits(client, &name, count_of(&reply));
                                let _ = admitted.send(admit);
                                continue;
                            }
                            pending => pending,
                        };
                        let Pending::Failure {
                            client,
                            name,
                            counted: waiting,
                        } = pending
                        else {
                            if matches!(pending, Pending::Publish(_)) && !is_duplicate(&reply) {
                                self.metrics.sent().inc();
                            }
                            pending.answer(&reply);
                            continue;
                        };
                        // At the limit: throttled here, and every node is told.
                        let remaining = count_of(&reply) as u64;
                        if remaining > 0 {
                            let remaining = Duration::from_millis(remaining);
                            self.throttled.throttle(client, &name, remaining);
                            let payload =
                                throttle_payload(&self.names.node, client, &name, remaining);
                            throttle
                                .publish(self.names.throttle_channel(), payload)
                                .ignore();
                            told += 1;
                        }
                        counted.push(waiting);
                    }
                    if told > 0 {
                        if let Err(err) =
                            bounded(throttle.query_async::<()>(&mut link.commands)).await
                        {
                            return Err(Ended::Lost(err));
                        }
                    }
                    // The logins that failed are answered now: every node throttles them.
                    for waiting in counted {
                        let _ = waiting.send(());
                    }
                }
                Err(err) => {
                    // The pipeline was sent: Redis may have run any of it.
                    for pending in answers {
                        pending.fail(NotTaken::Unknown);
                    }
                    return Err(Ended::Lost(err));
                }
            }
        }
        for subscribed in waiting {
            let _ = subscribed.send(());
        }
        for done in flushes {
            let _ = done.send(());
        }
        let mut lost = None;
        for (users, answer) in many {
            if lost.is_some() {
                let _ = answer.send(Err(BrokerUnreachable));
                continue;
            }
            match bounded(
                count_many(&link.script, &self.names, &users)
                    .query_async::<Vec<i64>>(&mut link.commands),
            )
            .await
            {
                Ok(counts) => {
                    let counts = counts
                        .into_iter()
                        .map(|count| usize::try_from(count).unwrap_or(0))
                        .collect();
                    let _ = answer.send(Ok(counts));
                }
                Err(err) => {
                    let _ = answer.send(Err(BrokerUnreachable));
                    lost = Some(err);
                }
            }
        }
        if let Some(err) = lost {
            return Err(Ended::Lost(err));
        }
        if !verifier_ops.is_empty() {
            // A failure here (an error reply, such as a Redis older than 6.2 refusing
            // GETEX) costs the logins a bcrypt check; a lost connection is noticed by the
            // next request or heartbeat.
            crate::verifiers::run(verifier_ops, &self.names, &mut link.commands).await;
        }
        if let Some(done) = stop {
            self.withdraw(link).await;
            let _ = done.send(());
            return Err(Ended::Stopping);
        }
        Ok(())
    }

    /// Subscribes to the users of `changed` this node now has and is not subscribed to,
    /// and unsubscribes from those it no longer has.
    async fn follow(&mut self, link: &mut Link, changed: Vec<Arc<str>>) -> Result<(), String> {
        let mut gained = Vec::new();
        let mut lost = Vec::new();
        for user in changed {
            let present = self.local.contains_key(&user);
            if present && !self.subscribed.contains(&user) {
                self.subscribed.insert(Arc::clone(&user));
                gained.push(self.names.user_channel(&user));
            } else if !present && self.subscribed.remove(&user) {
                lost.push(self.names.user_channel(&user));
            }
        }
        for chunk in gained.chunks(BATCH) {
            bounded(link.sink.subscribe(chunk)).await?;
        }
        for chunk in lost.chunks(BATCH) {
            bounded(link.sink.unsubscribe(chunk)).await?;
        }
        self.metrics
            .subscribed_users
            .set(self.subscribed.len() as i64);
        Ok(())
    }

    /// The node stops: its entry and counts leave Redis at once (others stop counting its
    /// connections now rather than after 10 s).
    async fn withdraw(&mut self, link: &mut Link) {
        let withdraw = owner_script(&link.script, &self.names, 'w', &self.token, "");
        if let Err(err) = bounded(withdraw.query_async::<()>(&mut link.commands)).await {
            log::warn!("cluster: cannot withdraw this node from Redis: {err}");
        }
    }

    /// A message from a user's channel: handed to the node unless this node published it.
    fn received(&mut self, payload: &[u8]) {
        let Some(payload) = Payload::parse(payload) else {
            log::debug!("cluster: ignored a message that is not tether's");
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

/// Finds the Redis (asking the sentinels, with Sentinel), opens both connections, checks
/// that it takes writes (a master) and loads the script.
async fn connect(source: Source) -> Result<Link, String> {
    let (client, address) = source.locate().await?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(ANSWER_TIMEOUT));
    let mut commands = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|err| format!("{address}: {err}"))?;
    if source.master_name().is_some() {
        let role: Vec<redis::Value> =
            bounded(redis::cmd("ROLE").query_async(&mut commands)).await?;
        match role.first() {
            Some(redis::Value::BulkString(role)) if role == b"master" => {}
            _ => {
                return Err(format!(
                    "{address}, named by the sentinels, is not a master (stale answer)"
                ))
            }
        }
    }
    let script: String = bounded(
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query_async(&mut commands),
    )
    .await?;
    let pubsub = bounded(client.get_async_pubsub()).await?;
    let (sink, messages) = pubsub.split();
    Ok(Link {
        commands,
        sink,
        messages,
        script,
        address,
    })
}

/// A request of a pipeline waiting for its reply.
pub(crate) enum Pending {
    /// A publish.
    Publish(Answered),
    /// A count or an invalidation (answered with the other nodes' count), or a client's
    /// invalidation (no answer).
    Other(Option<Answer>),
    /// A failed login counted: the reply is how long its pair is throttled; `counted` is
    /// answered once that is known everywhere.
    Failure {
        client: IpAddr,
        name: Box<[u8]>,
        counted: oneshot::Sender<()>,
    },
    /// A login whose password matched, asking whether the cluster throttles its pair: the
    /// reply is how long the pair stays throttled (0: admitted, its failures forgotten).
    Success {
        client: IpAddr,
        name: Box<[u8]>,
        admitted: oneshot::Sender<bool>,
    },
}

impl Pending {
    /// Answers with the script's `reply`.
    pub(crate) fn answer(self, reply: &redis::Value) {
        match self {
            Self::Publish(answered) => answered(Ok(match duplicate_time(reply) {
                Some(time) => Taken::Duplicate { time },
                None => Taken::Sent {
                    others: count_of(reply),
                },
            })),
            Self::Other(Some(answer)) => answer.send(Ok(count_of(reply))),
            // Its reply is read where the pipeline's replies are.
            Self::Other(None) | Self::Failure { .. } | Self::Success { .. } => {}
        }
    }

    /// Answers that the pipeline failed: a publish `why`, anything else unreachable.
    pub(crate) fn fail(self, why: NotTaken) {
        match self {
            Self::Publish(answered) => answered(Err(why)),
            Self::Other(Some(answer)) => answer.send(Err(BrokerUnreachable)),
            // A success dropped unanswered is admitted: the node's own throttle holds.
            Self::Other(None) | Self::Failure { .. } | Self::Success { .. } => {}
        }
    }
}

/// A count the script answered (0 for anything else).
pub(crate) fn count_of(reply: &redis::Value) -> usize {
    match reply {
        redis::Value::Int(count) => usize::try_from(*count).unwrap_or(0),
        _ => 0,
    }
}

/// The time the script answered for a duplicate event (`{time}`), if it did.
fn duplicate_time(reply: &redis::Value) -> Option<i64> {
    match reply {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(time)) => Some(*time),
            _ => Some(0),
        },
        _ => None,
    }
}

/// Whether the script answered that an event is a duplicate.
pub(crate) fn is_duplicate(reply: &redis::Value) -> bool {
    duplicate_time(reply).is_some()
}

/// Adds the `EVALSHA` of [`SCRIPT`] publishing `event` to `pipe` (mode `e`, with its id
/// key and time when it has an id).
fn publish_script(pipe: &mut redis::Pipeline, sha: &str, names: &Names, event: &ClusterEvent) {
    let payload = event_payload(&names.node, &event.user, event.time, &event.text);
    let keys = if event.id.is_some() { 4 } else { 3 };
    let cmd = pipe
        .cmd("EVALSHA")
        .arg(sha)
        .arg(keys)
        .arg(names.nodes_key())
        .arg(names.user_channel(&event.user))
        .arg(names.invalidated_key(&event.user));
    if let Some(id) = &event.id {
        cmd.arg(names.id_key(&event.user, id));
    }
    cmd.arg("e")
        .arg(&names.node)
        .arg(&*event.user)
        .arg(payload)
        .arg(names.node_key_prefix());
    if event.id.is_some() {
        cmd.arg(event.time);
    }
}

/// A user's `invalidated` key: `sent:made` (Redis ms when the last invalidation reached
/// Redis, and when the latest was made), or `sent` alone as written before.
pub(crate) fn invalidated_times(value: &str) -> Option<(i64, i64)> {
    match value.split_once(':') {
        Some((sent, made)) => Some((sent.parse().ok()?, made.parse().ok()?)),
        None => {
            let sent = value.parse().ok()?;
            Some((sent, sent))
        }
    }
}

/// Adds the `EVALSHA` of [`SCRIPT`] invalidating `user` on the other nodes to `pipe`: an
/// invalidation made at `made` (Redis's ms, as this node reckons it).
fn invalidation_script(
    pipe: &mut redis::Pipeline,
    sha: &str,
    names: &Names,
    user: &str,
    made: i64,
) {
    let payload = invalidation_payload(&names.node, user, made);
    script(pipe, sha, names, 'i', user, &payload).arg(made);
}

/// Adds one `EVALSHA` of [`SCRIPT`] in `mode` for `user` to `pipe`; answers `pipe`, whose
/// `arg` adds more arguments to it.
fn script<'a>(
    pipe: &'a mut redis::Pipeline,
    sha: &str,
    names: &Names,
    mode: char,
    user: &str,
    payload: &str,
) -> &'a mut redis::Pipeline {
    pipe.cmd("EVALSHA")
        .arg(sha)
        .arg(3)
        .arg(names.nodes_key())
        .arg(names.user_channel(user))
        .arg(names.invalidated_key(user))
        .arg(mode.to_string())
        .arg(&names.node)
        .arg(user)
        .arg(payload)
        .arg(names.node_key_prefix())
}

/// One `EVALSHA` of [`SCRIPT`] in mode `h` (heartbeat) or `w` (withdraw) for this node,
/// whose claim on its name is `token`; `stale` is a claim it may replace.
fn owner_script(sha: &str, names: &Names, mode: char, token: &str, stale: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha)
        .arg(2)
        .arg(names.nodes_key())
        .arg(names.owner_key())
        .arg(mode.to_string())
        .arg(&names.node)
        .arg(token)
        .arg(stale)
        .arg(names.node_key_prefix())
        .arg(OWNER_TTL.as_millis().to_string());
    cmd
}

/// This run's claim on the node's name: host, process id and a nonce drawn from `jitter`.
pub(crate) fn claim_token(jitter: &RandomState) -> String {
    format!(
        "{}{SEPARATOR}{}{SEPARATOR}{:016x}",
        this_host(),
        std::process::id(),
        jitter.hash_one(now_ms())
    )
}

/// Logs that another live node holds `node`'s name (the claim `owner`): at the first
/// attempt to join (`first`), or taken over later.
pub(crate) fn log_name_taken(node: &str, owner: &str, first: bool) {
    let holder = owner.split([SEPARATOR, '/']).next().unwrap_or_default();
    if first {
        log::error!(
            "cluster: node name {node:?} is held by another live node of this cluster (on \
             host {holder:?}); another node holds it — give this node a unique cluster.node"
        );
    } else {
        log::error!(
            "cluster: node name {node:?} was taken over by another node (on host {holder:?}) \
             while this one was paused or cut off; this node stops serving the cluster side \
             (publishes answer 503) — restart it with a unique cluster.node"
        );
    }
}

/// This machine as a claim names it: its host name and, when it has one, its machine id
/// (`/etc/machine-id`), so that two machines both called `localhost` differ.
fn this_host() -> String {
    let machine = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|path| {
            let id = std::fs::read_to_string(path).ok()?;
            let id = id.trim();
            (!id.is_empty()).then(|| id.to_owned())
        })
        .unwrap_or_default();
    format!("{}/{machine}", crate::host_name())
}

/// Whether the claim `owner` (host␟pid␟nonce) was made by a process of this host that is
/// gone: a run of this node that crashed and was restarted before its claim lapsed.
pub(crate) fn is_dead_run_of_this_host(owner: &str) -> bool {
    let mut fields = owner.split(SEPARATOR);
    let (Some(host), Some(pid)) = (fields.next(), fields.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    host == this_host()
        && pid != std::process::id()
        && std::path::Path::new("/proc/self").exists()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// One `EVALSHA` of [`SCRIPT`] counting each of `users` on the other live nodes.
fn count_many(sha: &str, names: &Names, users: &[Arc<str>]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha)
        .arg(1)
        .arg(names.nodes_key())
        .arg("m")
        .arg(&names.node)
        .arg("")
        .arg("")
        .arg(names.node_key_prefix());
    for user in users {
        cmd.arg(&**user);
    }
    cmd
}

/// This machine's wall-clock time in ms since 1970.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
