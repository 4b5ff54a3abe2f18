//! [`Session`]: the protocol state of one connection — the commands, the login being
//! checked, the binding, the pushes — with no socket and no actor. It turns each message and
//! each push into replies and requests to the hub, which it hands to an [`Effects`]: the
//! connection's actor does them, a test records them.

use crate::auth::credentials::{check_name_bytes, check_password};
use crate::auth::password::Verdict;
use crate::auth::throttle::Reservation;
use crate::auth::users::PasswordHash;
use crate::connection::shared::ConnectionShared;
use crate::hub::messages::{BindingId, Push, ShardEvent};
use crate::util::excerpt::Excerpt;
use crate::util::metrics::{CommandKind, CommandTally, LoginResult};
use crate::wire::protocol::{parse_command, Command, CommandError, Reply};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

/// The user a connection is bound to, and which login bound it.
#[derive(Debug)]
pub(crate) struct Binding {
    /// The user name.
    pub user: Arc<str>,
    /// The login that bound it.
    pub id: BindingId,
}

/// A login whose password is being checked.
struct PendingLogin {
    /// Whether the password matched; dropping it gives the check up if it has not started.
    verdict: Verdict,
    /// This check's place under the throttle's limit.
    reservation: Reservation,
    /// The user and the hash checked; `None` when a match cannot log in (a stand-in hash
    /// was checked, or the password breaks the rules).
    user: Option<(Arc<str>, PasswordHash)>,
    /// The name as the client sent it, for the throttle and the log.
    name: Vec<u8>,
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
            invalidate_deferred: false,
        }
    }

    /// The client's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
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
        self.login.is_some()
    }

    /// Handles one complete message from the client; counts it in `tally`.
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
    /// none or it is in; pending while bcrypt still works on it.
    pub(crate) fn poll_login(
        &mut self,
        task: &mut std::task::Context<'_>,
        fx: &mut impl Effects,
    ) -> Poll<()> {
        let Some(login) = &mut self.login else {
            return Poll::Ready(());
        };
        let Poll::Ready(matches) = Pin::new(&mut login.verdict).poll(task) else {
            return Poll::Pending;
        };
        if let Some(login) = self.login.take() {
            self.finish_login(login, matches, fx);
        }
        Poll::Ready(())
    }

    /// Gives up the login being checked, if any (its check is dropped if not yet started);
    /// returns whether there was one.
    pub(crate) fn drop_login(&mut self) -> bool {
        self.login.take().is_some()
    }

    /// Handles what the registry pushed; a push for another binding than the one in force
    /// (an older login) is dropped.
    pub(crate) fn on_push(&mut self, push: Push, fx: &mut impl Effects) {
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
        let Some(reservation) = self.shared.throttle.reserve(self.peer.ip(), name, now) else {
            self.shared.metrics.login(LoginResult::Throttled);
            log::warn!(
                "{}: login as {} refused unchecked: too many failures",
                self.peer,
                Excerpt(name)
            );
            fx.reply(Reply::LoginInvalid);
            return;
        };
        // A known user's hash is checked even when the password is malformed (the verdict
        // is then no match): the time a login takes must not depend on whether the name
        // exists, whatever the password.
        let known = check_name_bytes(name).ok().and_then(|name| {
            let hash = self.shared.users.password_hash(name)?;
            Some((Arc::<str>::from(name), hash))
        });
        let hash = match &known {
            Some((_, hash)) => hash.clone(),
            None => self
                .shared
                .users
                .stand_in_hash(name)
                .unwrap_or_else(|| self.shared.stand_in_hash.clone()),
        };
        let user = known.filter(|_| check_password(password).is_ok());
        self.login = Some(PendingLogin {
            verdict: self.shared.checker.check(self.peer.ip(), password, hash),
            reservation,
            user,
            name: name.to_vec(),
        });
    }

    /// Acts on the verdict of the login that was being checked.
    fn finish_login(&mut self, login: PendingLogin, matches: bool, fx: &mut impl Effects) {
        match (matches, login.user) {
            (true, Some((user, hash))) => {
                self.login_succeeded(user, &hash, login.reservation, fx);
            }
            _ => {
                login.reservation.failed(Instant::now());
                self.shared.metrics.login(LoginResult::Invalid);
                log::info!("{}: login as {} failed", self.peer, Excerpt(&login.name));
                fx.reply(Reply::LoginInvalid);
            }
        }
    }

    /// Binds the connection to `user`, whose password matched `hash`, unless the hash was
    /// replaced while it was being checked: that change's invalidation may already have
    /// passed, so the login must not outlive it.
    fn login_succeeded(
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
            self.shared.presence.enter(self.shard, &binding.user);
            log::info!("{}: logged in as {:?}", self.peer, binding.user);
            self.binding = Some(binding);
            self.shared.metrics.connections_bound.inc();
        }
        fx.reply(Reply::LoginValid);
    }
}
