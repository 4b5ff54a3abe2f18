//! [`Session`]: the protocol state of one connection — the commands, the login being
//! checked, the binding, the pushes — with no socket and no actor. It turns each message and
//! each push into replies and requests to the hub, which it hands to an [`Effects`]: the
//! connection's actor does them, a test records them.

use crate::auth::credentials::{check_name_bytes, check_password};
use crate::auth::password::{Checked, HashLookup, Verdict};
use crate::auth::throttle::{Admission, Reservation, Turn};
use crate::auth::user_store::PasswordHash;
use crate::connection::shared::ConnectionShared;
use crate::hub::messages::{BindingId, Push, ShardEvent};
use crate::protocol::command::{parse_command, Command, CommandError, Reply};
use crate::util::excerpt::Excerpt;
use crate::util::metrics::{CommandKind, CommandTally, LoginResult};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::time::Sleep;

/// The user a connection is bound to, and which login bound it.
#[derive(Debug)]
pub(crate) struct Binding {
    /// The user name.
    pub user: Arc<str>,
    /// The login that bound it.
    pub id: BindingId,
}

/// A login held back by the throttle or being checked.
struct PendingLogin {
    /// Where it is.
    stage: LoginStage,
    /// The name as the client sent it, for the throttle and the log.
    name: Vec<u8>,
}

/// Where a pending login is.
enum LoginStage {
    /// Held back: checks of the same (address, name) in flight fill the throttle's limit.
    /// When one is decided, the login asks the throttle again.
    Waiting {
        /// Resolves when a check in flight of the pair is decided.
        turn: Turn,
        /// The password, kept until the check starts.
        password: Vec<u8>,
    },
    /// Its password is being checked.
    Checking {
        /// Whether the password matched; dropping it gives the check up if it has not
        /// started.
        verdict: Verdict,
        /// This check's place under the throttle's limit.
        reservation: Reservation,
        /// The user to bind if the lookup finds a hash and it matches; `None` when a match
        /// cannot log in (the name or the password breaks the rules).
        user: Option<Arc<str>>,
    },
    /// Its password matched; in a cluster, the broker is asked whether the cluster
    /// throttles the pair (failures through other nodes that this node has not heard of
    /// yet) before the login binds.
    Admitting {
        /// `true` admits, `false` refuses as throttled; dropped unanswered, admits.
        admitted: oneshot::Receiver<bool>,
        /// When the login is admitted without the cluster's answer.
        give_up: Pin<Box<Sleep>>,
        /// This check's place under the throttle's limit.
        reservation: Reservation,
        /// The user to bind.
        user: Arc<str>,
        /// The hash the password matched.
        hash: PasswordHash,
    },
}

/// How long a login waits for the cluster broker to follow its user's channel before it
/// is answered anyway (SPEC §8; the broker normally confirms within a Redis round trip).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(1);

/// A login that bound the connection in a cluster and waits, before `login_valid`, until
/// the broker follows the user's channel: until then an event published on another node
/// might not reach this node. Or, before `login_invalid`, until the cluster has counted
/// the failure: the pair is then throttled on every node by the time the client hears it.
struct Subscribing {
    /// What the login is answered once confirmed (or given up on).
    reply: Reply,
    /// Resolves (answered or dropped, alike) once the broker follows the channel or
    /// cannot.
    confirmed: oneshot::Receiver<()>,
    /// When the login is answered anyway.
    give_up: Pin<Box<Sleep>>,
    /// Pushes that came meanwhile, handled after `login_valid`.
    held: Vec<Push>,
}

/// What a session asks of its connection, in the order it asks.
pub(crate) trait Effects {
    /// Queues `reply` for the client.
    fn reply(&mut self, reply: Reply);
    /// Queues the encoded `event` for the client.
    fn event(&mut self, event: &ShardEvent);
    /// Tells the registry shard that `binding` is bound to this connection.
    fn bind(&mut self, binding: &Binding);
    /// Tells the registry shard that `binding` ended.
    fn unbind(&mut self, binding: &Binding);
    /// Asks the bus to invalidate the other connections of `binding`'s user; `false` when
    /// the bus is gone for the moment (the session asks again once it is replaced).
    fn invalidate_others(&mut self, binding: &Binding) -> bool;
    /// The client said `disconnect`: close once its reply is queued.
    fn disconnect(&mut self);
}

/// The protocol state of one connection.
pub(crate) struct Session {
    /// The client's address, for logs and throttling.
    peer: SocketAddr,
    /// The worker shard this connection runs on, for `Presence`.
    shard: usize,
    /// The services every connection shares.
    shared: Arc<ConnectionShared>,
    /// The user this connection is bound to.
    binding: Option<Binding>,
    /// A login being checked; no command is handled until its verdict.
    login: Option<PendingLogin>,
    /// A login that bound, waiting for the cluster broker before `login_valid` (never
    /// alone); no command is handled meanwhile.
    subscribing: Option<Box<Subscribing>>,
    /// An `invalidate` found the bus gone; it is asked again once the bus is replaced.
    invalidate_deferred: bool,
}

impl Session {
    /// A session, bound to nobody, of a connection from `peer` on worker `shard`.
    pub(crate) fn new(peer: SocketAddr, shard: usize, shared: Arc<ConnectionShared>) -> Self {
        Self {
            peer,
            shard,
            shared,
            binding: None,
            login: None,
            subscribing: None,
            invalidate_deferred: false,
        }
    }

    /// The client's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The registry shard of this connection's worker arbiter.
    pub(crate) fn shard(&self) -> usize {
        self.shard
    }

    /// The services every connection shares.
    pub(crate) fn shared(&self) -> &Arc<ConnectionShared> {
        &self.shared
    }

    /// The binding in force.
    #[cfg(test)]
    pub(crate) fn binding(&self) -> Option<&Binding> {
        self.binding.as_ref()
    }

    /// Whether a login is being checked (no command is handled meanwhile).
    pub(crate) fn login_pending(&self) -> bool {
        self.login.is_some() || self.subscribing.is_some()
    }

    /// Handles one complete message from the client; counts it in `tally`. Inline: the
    /// connection's read loop calls it once per message.
    #[inline]
    pub(crate) fn on_message(
        &mut self,
        message: &[u8],
        tally: &mut CommandTally,
        fx: &mut impl Effects,
    ) {
        let command = parse_command(message);
        tally.count(match &command {
            Ok(Command::Login { .. }) => CommandKind::Login,
            Ok(Command::Logout) => CommandKind::Logout,
            Ok(Command::Disconnect) => CommandKind::Disconnect,
            Ok(Command::Prolongate) => CommandKind::Prolongate,
            Ok(Command::Invalidate) => CommandKind::Invalidate,
            Err(CommandError::Unknown) => CommandKind::Unknown,
            Err(CommandError::InvalidArgsCount) => CommandKind::InvalidArgsCount,
        });
        match command {
            Err(err) => fx.reply(err.reply()),
            Ok(Command::Login { name, password }) => self.start_login(name, password, fx),
            Ok(Command::Logout) => {
                if let Some(binding) = self.unbind(fx) {
                    log::info!("{}: logged out of {:?}", self.peer, binding.user);
                }
                fx.reply(Reply::LogoutAck);
            }
            Ok(Command::Disconnect) => {
                fx.reply(Reply::DisconnectAck);
                fx.disconnect();
            }
            Ok(Command::Prolongate) => fx.reply(Reply::ProlongateAck),
            Ok(Command::Invalidate) => {
                self.invalidate_others(fx);
                fx.reply(Reply::InvalidateAck);
            }
        }
    }

    /// Polls the verdict of the login being checked: ready (and answered) when there is
    /// none or it is in; pending while the throttle holds it back behind checks of the same
    /// (address, name) in flight, while bcrypt still works on it, or while the cluster
    /// broker is not yet following the user it bound.
    pub(crate) fn poll_login(
        &mut self,
        task: &mut std::task::Context<'_>,
        fx: &mut impl Effects,
    ) -> Poll<()> {
        if let Some(subscribing) = &mut self.subscribing {
            if Pin::new(&mut subscribing.confirmed).poll(task).is_pending() {
                if subscribing.give_up.as_mut().poll(task).is_pending() {
                    return Poll::Pending;
                }
                log::warn!(
                    "{}: login answered before the cluster broker confirmed it \
                     (waited {SUBSCRIBE_WAIT:?}){}",
                    self.peer,
                    self.who()
                );
            }
            self.answer_subscribing(fx);
            return Poll::Ready(());
        }
        loop {
            let Some(login) = &mut self.login else {
                return Poll::Ready(());
            };
            match &mut login.stage {
                LoginStage::Waiting { turn, password } => {
                    if Pin::new(turn).poll(task).is_pending() {
                        return Poll::Pending;
                    }
                    let password = std::mem::take(password);
                    let Some(login) = self.login.take() else {
                        return Poll::Ready(());
                    };
                    self.start_login(&login.name, &password, fx);
                }
                LoginStage::Checking { verdict, .. } => {
                    let Poll::Ready(checked) = Pin::new(verdict).poll(task) else {
                        return Poll::Pending;
                    };
                    if let Some(login) = self.login.take() {
                        self.finish_login(login, checked, fx);
                    }
                    // Ready, or on to `Admitting`.
                    if self.login.is_none() {
                        return Poll::Ready(());
                    }
                }
                LoginStage::Admitting {
                    admitted, give_up, ..
                } => {
                    let admit = match Pin::new(admitted).poll(task) {
                        // Dropped: the broker lost Redis; the node's own throttle holds.
                        Poll::Ready(answer) => answer.unwrap_or(true),
                        Poll::Pending => {
                            if give_up.as_mut().poll(task).is_pending() {
                                return Poll::Pending;
                            }
                            log::warn!(
                                "{}: login admitted before the cluster broker said whether \
                                 the cluster throttles it (waited {SUBSCRIBE_WAIT:?})",
                                self.peer
                            );
                            true
                        }
                    };
                    let Some(PendingLogin {
                        stage:
                            LoginStage::Admitting {
                                reservation,
                                user,
                                hash,
                                ..
                            },
                        ..
                    }) = self.login.take()
                    else {
                        return Poll::Ready(());
                    };
                    if admit {
                        self.bind_checked(user, &hash, reservation, fx);
                    } else {
                        // A right password, refused as any login of a throttled pair is:
                        // unchecked, and not counted as a failure (its place is released).
                        drop(reservation);
                        self.refuse_throttled(user.as_bytes(), fx);
                    }
                    return Poll::Ready(());
                }
            }
        }
    }

    /// Gives up the login being checked, if any (its check is dropped if not yet started);
    /// returns whether there was one.
    pub(crate) fn drop_login(&mut self) -> bool {
        self.subscribing = None;
        self.login.take().is_some()
    }

    /// Answers now a login that waits for the cluster broker (the connection closes):
    /// `login_valid` (or `login_invalid`), then the pushes held meanwhile.
    pub(crate) fn answer_subscribing(&mut self, fx: &mut impl Effects) {
        let Some(subscribing) = self.subscribing.take() else {
            return;
        };
        fx.reply(subscribing.reply);
        for push in subscribing.held {
            self.on_push(push, fx);
        }
    }

    /// Handles what the registry pushed; a push for another binding than the one in force
    /// (an older login) is dropped.
    pub(crate) fn on_push(&mut self, push: Push, fx: &mut impl Effects) {
        if let Some(subscribing) = &mut self.subscribing {
            // After `login_valid`, as the client expects.
            subscribing.held.push(push);
            return;
        }
        match push {
            Push::Event { binding, event } => {
                if self.is_bound_as(binding) {
                    fx.event(&event);
                }
            }
            Push::Invalidated { binding } => {
                if self.is_bound_as(binding) {
                    if let Some(binding) = self.take_binding() {
                        log::info!("{}: invalidated, no longer {:?}", self.peer, binding.user);
                    }
                    fx.reply(Reply::Invalidated);
                }
            }
        }
    }

    /// The hub's actors changed: re-announces the binding to a fresh registry shard, and
    /// asks again an `invalidate` that found the bus gone.
    pub(crate) fn hub_changed(&mut self, fresh_registry: bool, fx: &mut impl Effects) {
        if fresh_registry {
            if let Some(binding) = &self.binding {
                fx.bind(binding);
            }
        }
        if self.invalidate_deferred {
            self.invalidate_others(fx);
        }
    }

    /// Drops the binding, telling the registry; returns what it was.
    pub(crate) fn unbind(&mut self, fx: &mut impl Effects) -> Option<Binding> {
        let binding = self.take_binding()?;
        fx.unbind(&binding);
        Some(binding)
    }

    /// Clears the binding without telling the registry (which already knows, or is gone).
    pub(crate) fn take_binding(&mut self) -> Option<Binding> {
        let binding = self.binding.take()?;
        self.shared.metrics.connections_bound.dec();
        self.shared.presence.leave(self.shard, &binding.user);
        Some(binding)
    }

    /// ` (user "name")` when bound, for log lines.
    pub(crate) fn who(&self) -> String {
        match &self.binding {
            Some(binding) => format!(" (user {:?})", binding.user),
            None => String::new(),
        }
    }

    fn is_bound_as(&self, id: BindingId) -> bool {
        self.binding
            .as_ref()
            .is_some_and(|current| current.id == id)
    }

    /// Asks the bus to invalidate the other connections of this one's user. If the bus
    /// has just failed, the request waits for its replacement.
    fn invalidate_others(&mut self, fx: &mut impl Effects) {
        let Some(binding) = &self.binding else { return };
        self.invalidate_deferred = !fx.invalidate_others(binding);
        if self.invalidate_deferred {
            log::warn!("{}: event bus restarting; invalidate deferred", self.peer);
        }
    }

    /// Starts checking a login off the event loop. The connection handles no further
    /// command until the verdict is in, so pipelined commands keep their order; pushes are
    /// still taken meanwhile.
    fn start_login(&mut self, name: &[u8], password: &[u8], fx: &mut impl Effects) {
        let now = Instant::now();
        // Throttled by the cluster (failures through any node), or here.
        let admission = if self.shared.cluster_throttle.throttled(self.peer.ip(), name) {
            Admission::Refused
        } else {
            self.shared.throttle.reserve(self.peer.ip(), name, now)
        };
        let reservation = match admission {
            Admission::Check(reservation) => reservation,
            Admission::Wait(turn) => {
                // Checks of this pair in flight fill the limit: wait for one of them.
                self.login = Some(PendingLogin {
                    stage: LoginStage::Waiting {
                        turn,
                        password: password.to_vec(),
                    },
                    name: name.to_vec(),
                });
                return;
            }
            Admission::Refused => {
                self.refuse_throttled(name, fx);
                return;
            }
        };
        // A known user's hash is checked even when the password is malformed (the verdict
        // is then no match): the time a login takes must not depend on whether the name
        // exists, whatever the password. The hash is looked up on the checker thread.
        let valid_name = check_name_bytes(name).ok().map(Arc::<str>::from);
        // A verifier the store holds in memory admits the login here, without a queue
        // (an HMAC and a look-up: microseconds); anything else goes to the checkers,
        // which run bcrypt unless their own look-up finds the verifier.
        if let Some(user) = valid_name
            .as_ref()
            .filter(|_| check_password(password).is_ok())
        {
            if let Some(hash) = self.shared.users.password_hash(user) {
                if self.shared.checker.admits_at_once(user, password, &hash) {
                    self.login_succeeded(Arc::clone(user), &hash, reservation, fx);
                    return;
                }
            }
        }
        let stand_in = self
            .shared
            .users
            .stand_in_hash(name)
            .unwrap_or_else(|| self.shared.stand_in_hash.clone());
        let verdict = match &valid_name {
            Some(user) => {
                let users = Arc::clone(&self.shared.users);
                let name = Arc::clone(user);
                let lookup: HashLookup = Box::new(move || users.lookup_for_login(&name));
                self.shared.checker.check_user(
                    self.peer.ip(),
                    Arc::clone(user),
                    password,
                    lookup,
                    stand_in,
                )
            }
            None => self
                .shared
                .checker
                .check(self.peer.ip(), password, stand_in),
        };
        self.login = Some(PendingLogin {
            stage: LoginStage::Checking {
                verdict,
                reservation,
                user: valid_name.filter(|_| check_password(password).is_ok()),
            },
            name: name.to_vec(),
        });
    }

    /// Refuses a login of `name` whose pair is throttled, here or by the cluster.
    fn refuse_throttled(&mut self, name: &[u8], fx: &mut impl Effects) {
        self.shared.metrics.login(LoginResult::Throttled);
        log::warn!(
            "{}: login as {} refused unchecked: too many failures",
            self.peer,
            Excerpt(name)
        );
        fx.reply(Reply::LoginInvalid);
    }

    /// Acts on the verdict of the login that was being checked.
    fn finish_login(&mut self, login: PendingLogin, checked: Checked, fx: &mut impl Effects) {
        let LoginStage::Checking {
            reservation, user, ..
        } = login.stage
        else {
            return;
        };
        if checked.store_unreachable {
            // The password was never checked: refused, not counted as a failure here or
            // in the cluster (the reservation is released as it is dropped).
            drop(reservation);
            self.shared.metrics.login(LoginResult::Unchecked);
            log::warn!(
                "{}: login as {} refused unchecked: the user store did not answer",
                self.peer,
                Excerpt(&login.name)
            );
            fx.reply(Reply::LoginInvalid);
            return;
        }
        match (checked.matches, user, checked.found) {
            (true, Some(user), Some(hash)) => {
                self.login_succeeded(user, &hash, reservation, fx);
            }
            _ => {
                reservation.failed(Instant::now());
                self.shared.metrics.login(LoginResult::Invalid);
                log::info!("{}: login as {} failed", self.peer, Excerpt(&login.name));
                // In a cluster, answered once the cluster counted the failure (bounded).
                match self
                    .shared
                    .cluster_throttle
                    .failed(self.peer.ip(), &login.name)
                {
                    Some(counted) => self.hold_answer(Reply::LoginInvalid, counted),
                    None => fx.reply(Reply::LoginInvalid),
                }
            }
        }
    }

    /// Holds the login's answer `reply` (and the pushes that come meanwhile) until
    /// `confirmed` resolves, at most [`SUBSCRIBE_WAIT`].
    fn hold_answer(&mut self, reply: Reply, confirmed: oneshot::Receiver<()>) {
        self.subscribing = Some(Box::new(Subscribing {
            reply,
            confirmed,
            give_up: Box::pin(tokio::time::sleep(SUBSCRIBE_WAIT)),
            held: Vec::new(),
        }));
    }

    /// The password of `user` matched `hash`: in a cluster, asks first whether the cluster
    /// throttles the pair (the login waits in [`LoginStage::Admitting`]); then binds.
    fn login_succeeded(
        &mut self,
        user: Arc<str>,
        hash: &PasswordHash,
        reservation: Reservation,
        fx: &mut impl Effects,
    ) {
        match self
            .shared
            .cluster_throttle
            .succeeded(self.peer.ip(), user.as_bytes())
        {
            Some(admitted) => {
                self.login = Some(PendingLogin {
                    name: user.as_bytes().to_vec(),
                    stage: LoginStage::Admitting {
                        admitted,
                        give_up: Box::pin(tokio::time::sleep(SUBSCRIBE_WAIT)),
                        reservation,
                        user,
                        hash: hash.clone(),
                    },
                });
            }
            None => self.bind_checked(user, hash, reservation, fx),
        }
    }

    /// Binds the connection to `user`, whose password matched `hash`, unless the hash was
    /// replaced while it was being checked: that change's invalidation may already have
    /// passed, so the login must not outlive it.
    fn bind_checked(
        &mut self,
        user: Arc<str>,
        hash: &PasswordHash,
        reservation: Reservation,
        fx: &mut impl Effects,
    ) {
        if self.shared.users.password_hash(&user).as_ref() != Some(hash) {
            log::info!(
                "{}: login as {user:?} refused: the password changed during the check",
                self.peer
            );
            self.shared.metrics.login(LoginResult::Invalid);
            fx.reply(Reply::LoginInvalid);
            return;
        }
        reservation.succeeded();
        self.shared.metrics.login(LoginResult::Valid);
        let same_user = self
            .binding
            .as_ref()
            .is_some_and(|binding| binding.user == user);
        if !same_user {
            self.unbind(fx);
            let binding = Binding {
                user,
                id: BindingId::next(),
            };
            fx.bind(&binding);
            // After the `Bind` is sent: whoever sees this count reaches the shard after it.
            let confirmed = self.shared.presence.enter(self.shard, &binding.user);
            log::info!("{}: logged in as {:?}", self.peer, binding.user);
            self.binding = Some(binding);
            self.shared.metrics.connections_bound.inc();
            if let Some(confirmed) = confirmed {
                // In a cluster: bound for every node once the broker follows the user.
                self.hold_answer(Reply::LoginValid, confirmed);
                return;
            }
        }
        fx.reply(Reply::LoginValid);
    }
}

#[cfg(test)]
// Tests make and check hashes directly; they run on no event loop.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::auth::password::{stand_in_hash, PasswordChecker};
    use crate::auth::throttle::LoginThrottle;
    use crate::auth::user_store::{UserSet, UserTable};
    use crate::hub::messages::EventInFlight;
    use crate::hub::presence::Presence;
    use crate::hub::roster::Roster;
    use crate::protocol::codec::{encoded_message, MessageCodec};
    use crate::util::metrics::Metrics;
    use crate::util::output_budget::OutputBudget;
    use bytes::Bytes;
    use std::time::Duration;
    use tokio::sync::Semaphore;

    /// What a session asked, in order.
    #[derive(Debug, PartialEq, Eq)]
    enum Effect {
        Reply(Reply),
        Event(Bytes),
        Bind(String),
        Unbind(String),
        InvalidateOthers(String),
        Disconnect,
    }

    /// Records what the session asks; `bus_up` is what `invalidate_others` answers.
    struct Recorder {
        effects: Vec<Effect>,
        bus_up: bool,
    }

    impl Recorder {
        fn new() -> Self {
            Self {
                effects: Vec::new(),
                bus_up: true,
            }
        }

        fn take(&mut self) -> Vec<Effect> {
            std::mem::take(&mut self.effects)
        }
    }

    impl Effects for Recorder {
        fn reply(&mut self, reply: Reply) {
            self.effects.push(Effect::Reply(reply));
        }
        fn event(&mut self, event: &ShardEvent) {
            self.effects.push(Effect::Event(event.message.clone()));
        }
        fn bind(&mut self, binding: &Binding) {
            self.effects.push(Effect::Bind(binding.user.to_string()));
        }
        fn unbind(&mut self, binding: &Binding) {
            self.effects.push(Effect::Unbind(binding.user.to_string()));
        }
        fn invalidate_others(&mut self, binding: &Binding) -> bool {
            if self.bus_up {
                let user = binding.user.to_string();
                self.effects.push(Effect::InvalidateOthers(user));
            }
            self.bus_up
        }
        fn disconnect(&mut self) {
            self.effects.push(Effect::Disconnect);
        }
    }

    /// A session of a server whose users are alice and bob, password `pw` (bcrypt cost 4).
    fn session() -> Session {
        let hash: PasswordHash = Arc::from(bcrypt::hash("pw", 4).expect("hashes").as_str());
        let users: UserSet = ["alice", "bob"]
            .into_iter()
            .map(|name| (name.to_owned(), hash.clone()))
            .collect();
        let metrics = Metrics::new();
        let shared = ConnectionShared {
            idle_timeout: Duration::from_secs(60),
            max_message_bytes: 1024,
            max_pending_bytes: 1 << 20,
            output_budget: OutputBudget::new(1 << 30),
            users: Arc::new(UserTable::new(users)),
            checker: PasswordChecker::start(1, metrics.clone()).expect("starts"),
            throttle: Arc::new(LoginThrottle::new(100)),
            cluster_throttle: crate::connection::cluster_throttle::ClusterThrottle::new(None, 100),
            stand_in_hash: stand_in_hash(4).expect("hashes"),
            delivery_seconds: metrics.event_delivery_seconds(1),
            metrics,
            presence: Arc::new(Presence::new(1)),
            roster: Arc::new(Roster::new(1)),
        };
        let peer = SocketAddr::from(([127, 0, 0, 1], 4000));
        Session::new(peer, 0, Arc::new(shared))
    }

    /// Hands the message made of `parts` to the session, as the connection does.
    fn send(session: &mut Session, parts: &[&[u8]], fx: &mut Recorder) {
        let encoded = encoded_message(parts);
        let length = MessageCodec::new(1024)
            .next_message(&encoded)
            .expect("decodes")
            .expect("whole");
        session.on_message(&encoded[..length], &mut CommandTally::default(), fx);
    }

    /// Waits for the verdict of the login being checked.
    async fn verdict(session: &mut Session, fx: &mut Recorder) {
        std::future::poll_fn(|task| session.poll_login(task, fx)).await;
    }

    async fn log_in(session: &mut Session, name: &str, fx: &mut Recorder) {
        send(session, &[b"login", name.as_bytes(), b"pw"], fx);
        verdict(session, fx).await;
    }

    /// How many connections `Presence` counts for `user`.
    fn present(session: &Session, user: &str) -> usize {
        session.shared.presence.holding(user).map(|(_, n)| n).sum()
    }

    fn bound_as(session: &Session) -> Option<BindingId> {
        session.binding().map(|binding| binding.id)
    }

    /// An event for `binding`, as a registry shard pushes it.
    fn event_push(binding: BindingId, text: &'static [u8]) -> Push {
        let permit = Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .expect("a permit");
        Push::Event {
            binding,
            event: Arc::new(ShardEvent {
                message: Bytes::from_static(text),
                accepted: Instant::now(),
                _in_flight: Arc::new(EventInFlight { _permit: permit }),
            }),
        }
    }

    #[test]
    fn pipelined_commands_are_answered_in_order() {
        let mut session = session();
        let mut fx = Recorder::new();
        send(&mut session, &[b"prolongate"], &mut fx);
        send(&mut session, &[b"bogus"], &mut fx);
        send(&mut session, &[b"logout", b"extra"], &mut fx);
        send(&mut session, &[b"logout"], &mut fx);
        send(&mut session, &[b"invalidate"], &mut fx);
        send(&mut session, &[b"disconnect"], &mut fx);
        assert_eq!(
            fx.take(),
            [
                Effect::Reply(Reply::ProlongateAck),
                Effect::Reply(Reply::UnknownCommand),
                Effect::Reply(Reply::InvalidArgsCount),
                Effect::Reply(Reply::LogoutAck),
                // Bound to nobody: nothing to invalidate.
                Effect::Reply(Reply::InvalidateAck),
                Effect::Reply(Reply::DisconnectAck),
                Effect::Disconnect,
            ]
        );
    }

    #[tokio::test]
    async fn a_login_binds_and_a_logout_unbinds() {
        let mut session = session();
        let mut fx = Recorder::new();
        send(&mut session, &[b"login", b"alice", b"pw"], &mut fx);
        assert!(session.login_pending());
        assert_eq!(fx.take(), [], "nothing is answered before the verdict");
        verdict(&mut session, &mut fx).await;
        assert!(!session.login_pending());
        assert_eq!(
            fx.take(),
            [
                Effect::Bind("alice".into()),
                Effect::Reply(Reply::LoginValid)
            ]
        );
        assert_eq!(present(&session, "alice"), 1);

        send(&mut session, &[b"logout"], &mut fx);
        assert_eq!(
            fx.take(),
            [
                Effect::Unbind("alice".into()),
                Effect::Reply(Reply::LogoutAck)
            ]
        );
        assert_eq!(present(&session, "alice"), 0);
        assert_eq!(bound_as(&session), None);
    }

    #[tokio::test]
    async fn a_wrong_password_or_an_unknown_user_binds_nobody() {
        let mut session = session();
        let mut fx = Recorder::new();
        send(&mut session, &[b"login", b"alice", b"wrong"], &mut fx);
        verdict(&mut session, &mut fx).await;
        send(&mut session, &[b"login", b"nobody", b"pw"], &mut fx);
        verdict(&mut session, &mut fx).await;
        assert_eq!(
            fx.take(),
            [
                Effect::Reply(Reply::LoginInvalid),
                Effect::Reply(Reply::LoginInvalid)
            ]
        );
        assert_eq!(bound_as(&session), None);
    }

    #[tokio::test]
    async fn logging_in_again_keeps_the_same_user_and_moves_to_another() {
        let mut session = session();
        let mut fx = Recorder::new();
        log_in(&mut session, "alice", &mut fx).await;
        let first = bound_as(&session);
        fx.take();

        log_in(&mut session, "alice", &mut fx).await;
        assert_eq!(fx.take(), [Effect::Reply(Reply::LoginValid)]);
        assert_eq!(bound_as(&session), first);

        log_in(&mut session, "bob", &mut fx).await;
        assert_eq!(
            fx.take(),
            [
                Effect::Unbind("alice".into()),
                Effect::Bind("bob".into()),
                Effect::Reply(Reply::LoginValid)
            ]
        );
        assert_eq!(present(&session, "alice"), 0);
        assert_eq!(present(&session, "bob"), 1);

        // A failed login leaves the binding in force.
        send(&mut session, &[b"login", b"alice", b"wrong"], &mut fx);
        verdict(&mut session, &mut fx).await;
        assert_eq!(fx.take(), [Effect::Reply(Reply::LoginInvalid)]);
        let user = session.binding().map(|binding| binding.user.to_string());
        assert_eq!(user.as_deref(), Some("bob"));
    }

    #[tokio::test]
    async fn invalidate_asks_the_bus_and_asks_again_when_it_was_gone() {
        let mut session = session();
        let mut fx = Recorder::new();
        log_in(&mut session, "alice", &mut fx).await;
        fx.take();

        send(&mut session, &[b"invalidate"], &mut fx);
        assert_eq!(
            fx.take(),
            [
                Effect::InvalidateOthers("alice".into()),
                Effect::Reply(Reply::InvalidateAck)
            ]
        );

        fx.bus_up = false;
        send(&mut session, &[b"invalidate"], &mut fx);
        assert_eq!(fx.take(), [Effect::Reply(Reply::InvalidateAck)]);
        fx.bus_up = true;
        session.hub_changed(false, &mut fx);
        assert_eq!(fx.take(), [Effect::InvalidateOthers("alice".into())]);
        // Asked once: a later change asks nothing.
        session.hub_changed(false, &mut fx);
        assert_eq!(fx.take(), []);
        // A fresh registry shard hears of the binding again.
        session.hub_changed(true, &mut fx);
        assert_eq!(fx.take(), [Effect::Bind("alice".into())]);
    }

    #[tokio::test]
    async fn pushes_for_a_stale_binding_are_dropped() {
        let mut session = session();
        let mut fx = Recorder::new();
        log_in(&mut session, "alice", &mut fx).await;
        let old = bound_as(&session).expect("bound");
        log_in(&mut session, "bob", &mut fx).await;
        let current = bound_as(&session).expect("bound");
        fx.take();

        session.on_push(event_push(old, b"stale"), &mut fx);
        session.on_push(Push::Invalidated { binding: old }, &mut fx);
        assert_eq!(
            fx.take(),
            [],
            "pushes for alice's binding must not reach bob's"
        );

        session.on_push(event_push(current, b"fresh"), &mut fx);
        session.on_push(Push::Invalidated { binding: current }, &mut fx);
        assert_eq!(
            fx.take(),
            [
                Effect::Event(Bytes::from_static(b"fresh")),
                // The registry already dropped the binding: no `Unbind`.
                Effect::Reply(Reply::Invalidated)
            ]
        );
        assert_eq!(bound_as(&session), None);
        assert_eq!(present(&session, "bob"), 0);
        session.on_push(event_push(current, b"late"), &mut fx);
        assert_eq!(fx.take(), []);
    }
}
