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

use crate::metrics::ClusterMetrics;
use crate::names::{event_payload, invalidation_payload, Names, Payload};
use crate::topology::Source;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether_actors::hub::broker::{Answered, BrokerUnreachable, ClusterEvent, Inbox};
use tether_actors::hub::messages::BindingId;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How often the node renews its liveness and probes its connections.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long any answer from Redis may take before the connection counts as lost.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
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

/// One script for every scripted command, so each is one round trip and one command:
/// `KEYS` = the set of live nodes, the user's channel, the user's `invalidated` key;
/// `ARGV` = mode, this node, the user, the payload, the prefix of node keys.
/// Modes: `e` publish an event, `i` publish an invalidation (and note its time), `c`
/// count only — each answers the user's connections on the other live nodes (heartbeat
/// within 10 s); `h` heartbeat (renews this node, forgets nodes silent for a minute) —
/// answers Redis's time in milliseconds; `m` count many (only `KEYS[1]`; the users are
/// `ARGV[6..]`) — answers each user's connections on the other live nodes, with one
/// `HMGET` per live node.
const SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]
if mode == 'h' then
  redis.call('ZADD', KEYS[1], now, ARGV[2])
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 60000)) do
    redis.call('DEL', ARGV[5] .. n)
    redis.call('ZREM', KEYS[1], n)
  end
  return now
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
if mode == 'i' then redis.call('SET', KEYS[3], now, 'PX', 86400000) end
if mode ~= 'c' then redis.call('PUBLISH', KEYS[2], ARGV[4]) end
local total = 0
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - 10000, '+inf')) do
  if n ~= ARGV[2] then
    local c = redis.call('HGET', ARGV[5] .. n, ARGV[3])
    if c then total = total + tonumber(c) end
  end
end
return total
";

/// Where the answer to a request goes: the other nodes' count, or unreachable.
pub(crate) enum Answer {
    /// To a waiting caller.
    Channel(oneshot::Sender<Result<usize, BrokerUnreachable>>),
    /// To a function the node gave (a publish's delivery on this node), called on this
    /// thread in the order of the requests.
    Call(Answered),
}

impl Answer {
    /// Hands over `result`.
    pub(crate) fn send(self, result: Result<usize, BrokerUnreachable>) {
        match self {
            Self::Channel(sender) => {
                let _ = sender.send(result);
            }
            Self::Call(answered) => answered(result),
        }
    }
}

/// What the node asks of the broker's thread.
pub(crate) enum Request {
    /// Where messages from other nodes go.
    Attach(Arc<dyn Inbox>),
    /// Publish an event.
    Publish { event: ClusterEvent, answer: Answer },
    /// Invalidate a user on the other nodes: now (an operator's) or, without an answer,
    /// as soon as Redis is reachable (a client's).
    Invalidate {
        user: Arc<str>,
        answer: Option<Answer>,
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
    /// Say so on the channel once the requests before have been answered.
    Flush(oneshot::Sender<()>),
    /// Withdraw this node from the cluster and end; says so on the channel.
    Stop(std::sync::mpsc::Sender<()>),
}

impl Request {
    /// Answers a request that cannot reach Redis: unreachable (a client's invalidation is
    /// lost then — the thread is gone).
    pub(crate) fn refuse(self) {
        match self {
            Self::Publish { answer, .. }
            | Self::Count { answer, .. }
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

/// The state of the broker's thread.
pub(crate) struct Worker {
    /// Where Redis is (one, or the master that sentinels name).
    source: Source,
    /// The address of the Redis connected to now, for `/healthz`.
    upstream: Arc<std::sync::Mutex<Option<String>>>,
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
    /// Client invalidations to send once Redis is reachable, in order, once per user.
    later: VecDeque<Arc<str>>,
    /// Redis's time (ms) at the last heartbeat answered.
    last_seen: Option<i64>,
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
}

impl Worker {
    pub(crate) fn new(
        source: Source,
        names: Names,
        requests: mpsc::UnboundedReceiver<Request>,
        status: (Arc<AtomicBool>, Arc<std::sync::Mutex<Option<String>>>),
        metrics: ClusterMetrics,
    ) -> Self {
        let (connected, upstream) = status;
        Self {
            source,
            upstream,
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
            last_seen: None,
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
                    Ended::Lost(reason) => {
                        // It served: the next attempt starts from the shortest pause.
                        if self.connected.load(Ordering::Relaxed) {
                            backoff = BACKOFF_MIN;
                        }
                        self.lost(&reason);
                    }
                },
                Some(Err(reason)) => self.lost(&reason),
                None => return,
            }
            let pause = self.jittered(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if self.wait_while_unreachable(pause).await.is_err() {
                return;
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
        self.metrics.subscribed_users.set(0);
        if was_connected {
            self.marks.clear();
            self.mark();
        }
        if was_connected || !self.told_unreachable {
            self.told_unreachable = true;
            log::warn!(
                "cluster: Redis unreachable ({reason}); node {:?} keeps serving its own \
                 clients, refuses publishes (503) and reconnects",
                self.names.node
            );
        }
    }

    /// Notes this machine's time and the next binding id (at most [`MAX_MARKS`]).
    fn mark(&mut self) {
        if self.marks.len() < MAX_MARKS {
            self.marks.push((now_ms(), BindingId::watermark()));
        }
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
            Request::Publish { answer, .. }
            | Request::Count { answer, .. }
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
            Request::Invalidate { user, answer: None } => self.keep_for_later(user),
            // `subscribed` is dropped: the login is answered now, not after the outage.
            Request::Presence { user, delta, .. } => {
                self.count(&user, delta);
            }
            Request::Stop(done) => {
                let _ = done.send(());
                return true;
            }
        }
        false
    }

    /// Keeps a client's invalidation until Redis is back (once per user, bounded).
    fn keep_for_later(&mut self, user: Arc<str>) {
        if self.later.iter().any(|kept| *kept == user) {
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
        self.later.push_back(user);
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
        // so that one cut short does not skip the invalidations missed.
        let last_seen = self.last_seen;
        if let Err(err) = self.restore(&mut link, last_seen).await {
            self.last_seen = last_seen;
            return Ended::Lost(err);
        }
        self.connected.store(true, Ordering::Relaxed);
        self.told_unreachable = false;
        self.metrics.connected.set(1);
        if self.was_connected {
            self.metrics.reconnects.inc();
        }
        self.was_connected = true;
        self.metrics
            .set_masters(std::slice::from_ref(&link.address));
        if let Ok(mut upstream) = self.upstream.lock() {
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
        loop {
            let step = tokio::select! {
                request = self.requests.recv() => match request {
                    Some(request) => self.handle_requests(&mut link, request).await,
                    None => return Ended::Stopping,
                },
                message = link.messages.next() => match message {
                    Some(message) => {
                        self.received(message.get_payload_bytes());
                        Ok(())
                    }
                    None => Err(Ended::Lost("the subscriber connection was closed".to_owned())),
                },
                _ = heartbeat.tick() => self.heartbeat(&mut link).await.map_err(Ended::Lost),
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
    async fn restore(&mut self, link: &mut Link, last_seen: Option<i64>) -> Result<(), String> {
        let names = self.names.clone();
        // Counts: the whole map, replacing whatever a previous run or link left.
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
        self.heartbeat(link).await?;
        // Subscriptions, in batches.
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
                let times: Vec<Option<i64>> = bounded(pipe.query_async(&mut link.commands)).await?;
                for ((user, _), time) in chunk.iter().zip(times) {
                    if let Some(time) = time.filter(|time| *time > since) {
                        let issued_before = self.issued_before(time - self.clock_offset);
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
            for user in self.later.iter().take(take) {
                script(
                    &mut pipe,
                    &link.script,
                    &names,
                    'i',
                    user,
                    &invalidation_payload(&names.node, user),
                );
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

    /// Renews this node's liveness and probes both connections.
    async fn heartbeat(&mut self, link: &mut Link) -> Result<(), String> {
        let mut pipe = redis::pipe();
        script(&mut pipe, &link.script, &self.names, 'h', "", "");
        let answered: Vec<i64> = bounded(pipe.query_async(&mut link.commands)).await?;
        let now = answered.first().copied().unwrap_or_else(now_ms);
        bounded(link.sink.ping::<redis::Value>()).await?;
        self.last_seen = Some(now);
        self.clock_offset = now - now_ms();
        Ok(())
    }

    /// Takes `first` and whatever else is queued (up to [`BATCH`]); subscribes to the users
    /// this node gained and unsubscribes from those it lost; then sends the requests and
    /// this node's counts as one pipeline.
    async fn handle_requests(&mut self, link: &mut Link, first: Request) -> Result<(), Ended> {
        let mut pipe = redis::pipe();
        let mut answers: Vec<(Option<Answer>, bool)> = Vec::new();
        let mut changed: Vec<Arc<str>> = Vec::new();
        let mut stop = None;
        let mut many = Vec::new();
        // Answered once the pipeline's answers are (dropped with them if it fails).
        let mut flushes = Vec::new();
        // Logins waiting for their user's channel: answered once `follow` subscribed (or
        // dropped, unanswered, if it fails).
        let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
        let mut writes = false;
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Attach(inbox) => self.inbox = Some(inbox),
                Request::Publish { event, answer } => {
                    let payload =
                        event_payload(&self.names.node, &event.user, event.time, &event.text);
                    script(
                        &mut pipe,
                        &link.script,
                        &self.names,
                        'e',
                        &event.user,
                        &payload,
                    );
                    answers.push((Some(answer), true));
                }
                Request::Invalidate { user, answer } => {
                    let payload = invalidation_payload(&self.names.node, &user);
                    script(&mut pipe, &link.script, &self.names, 'i', &user, &payload);
                    answers.push((answer, false));
                }
                Request::Count { user, answer } => {
                    script(&mut pipe, &link.script, &self.names, 'c', &user, "");
                    answers.push((Some(answer), false));
                }
                Request::CountMany { users, answer } => many.push((users, answer)),
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
            }
            if answers.len() < BATCH {
                next = self.requests.try_recv().ok();
            }
        }
        // Subscribed before this node's counts say it holds the users: a node counted as
        // holding a user's connections receives that user's events.
        if let Err(err) = self.follow(link, changed).await {
            for (answer, _) in answers {
                if let Some(answer) = answer {
                    answer.send(Err(BrokerUnreachable));
                }
            }
            for (_, answer) in many {
                let _ = answer.send(Err(BrokerUnreachable));
            }
            return Err(Ended::Lost(err));
        }
        for subscribed in waiting {
            let _ = subscribed.send(());
        }
        // This node's counts go in the same round trip, after the requests.
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
            match bounded(pipe.query_async::<Vec<i64>>(&mut link.commands)).await {
                Ok(counts) => {
                    for ((answer, event), count) in answers.into_iter().zip(counts) {
                        if event {
                            self.metrics.sent().inc();
                        }
                        if let Some(answer) = answer {
                            answer.send(Ok(usize::try_from(count).unwrap_or(0)));
                        }
                    }
                }
                Err(err) => {
                    for (answer, _) in answers {
                        if let Some(answer) = answer {
                            answer.send(Err(BrokerUnreachable));
                        }
                    }
                    return Err(Ended::Lost(err));
                }
            }
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
        let mut pipe = redis::pipe();
        pipe.del(self.names.own_node_key())
            .ignore()
            .zrem(self.names.nodes_key(), &self.names.node)
            .ignore();
        if let Err(err) = bounded(pipe.query_async::<()>(&mut link.commands)).await {
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
            Payload::Invalidation { user, .. } => {
                self.metrics.received().inc();
                inbox.invalidate(user, None);
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

/// Adds one `EVALSHA` of [`SCRIPT`] in `mode` for `user` to `pipe`.
fn script(
    pipe: &mut redis::Pipeline,
    sha: &str,
    names: &Names,
    mode: char,
    user: &str,
    payload: &str,
) {
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
        .arg(names.node_key_prefix());
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

/// `request`, failing after [`ANSWER_TIMEOUT`].
pub(crate) async fn bounded<T>(
    request: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(ANSWER_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {ANSWER_TIMEOUT:?}")),
    }
}

/// This machine's wall-clock time in ms since 1970.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
