//! [`ConnectionActor`]: one client socket. It reads and decodes commands, answers them in
//! order, writes what the registry pushes, enforces the idle timeout and the output limit,
//! and knows its own binding. The only module that touches a socket.
//!
//! One future, [`DriveSocket`], does all of the socket's work for the connection's whole
//! life: on every wake-up it reads and handles input, writes everything queued (replies and
//! the pushes the mailbox delivered just before it, in one write), and keeps the one
//! deadline the connection has (the idle timeout, then the end of a close). Nothing else is
//! spawned per wake-up.

use crate::auth::credentials::{check_name_bytes, check_password};
use crate::auth::password::{PasswordChecker, Verdict};
use crate::auth::throttle::{LoginThrottle, Reservation};
use crate::auth::users::{PasswordHash, UserStore};
use crate::hub::messages::{Bind, BindingId, Invalidate, InvalidationCause, Unbind};
pub use crate::hub::messages::{Push, ShardEvent};
use crate::hub::presence::Presence;
use crate::hub::roster::Roster;
use crate::hub::state::{HubChanged, HubState};
use crate::util::buffers::{self, Spare};
use crate::util::excerpt::Excerpt;
use crate::util::metrics::{CommandKind, CommandTally, IoErrorCause, LoginResult, Metrics};
use crate::util::output_budget::{Evict, OutputBudget, OutputCharge, FREE_BYTES};
use crate::wire::codec::{encode_message, ends_at_boundary, MessageCodec};
use crate::wire::protocol::{parse_command, Command, CommandError, Reply};
use actix::prelude::*;
use bytes::{Buf, BytesMut};
use prometheus_client::metrics::histogram::Histogram;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Sleep;

/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 4096;
/// Reads per wake-up before yielding, so one flooding client cannot hold an arbiter.
const READS_PER_WAKEUP: usize = 16;
/// How long a closing connection keeps reading (and discarding) so that unread input does
/// not turn the close into a reset that destroys the last message.
const LINGER: Duration = Duration::from_secs(1);

/// Limits and services every connection of a server shares.
pub(crate) struct ConnectionShared {
    /// Inactivity allowed before `timeout`.
    pub idle_timeout: Duration,
    /// Longest message accepted.
    pub max_message_bytes: usize,
    /// Unsent output allowed before `io_error`.
    pub max_pending_bytes: usize,
    /// Bounds the unsent output of all connections together.
    pub output_budget: Arc<OutputBudget>,
    /// Where password hashes come from.
    pub users: Arc<dyn UserStore>,
    /// Runs bcrypt off the event loops.
    pub checker: PasswordChecker,
    /// Counts failed logins and checks in flight per client address and name.
    pub throttle: Arc<LoginThrottle>,
    /// Checked for unknown users when the user store has no stand-in of its own, so they
    /// cost as much as a wrong password.
    pub stand_in_hash: PasswordHash,
    /// What the server counts.
    pub metrics: Metrics,
    /// Which shards hold connections of which user; each connection counts itself.
    pub presence: Arc<Presence>,
    /// The connections of each worker, told when the hub's state changes.
    pub roster: Arc<Roster<ConnectionActor>>,
    /// Per worker, how long events took from the bus to a connection's socket.
    pub delivery_seconds: Box<[Histogram]>,
}

/// The user a connection is bound to, and which login bound it.
struct Binding {
    user: Arc<str>,
    id: BindingId,
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

/// The events in a connection's output not yet written: each is counted in
/// `tether_event_delivery_seconds` when the write that empties the output completes, with
/// the age of the oldest (an upper bound for the others, exact for one).
#[derive(Debug, Clone, Copy)]
struct UnwrittenEvents {
    /// When the bus accepted the oldest of them.
    oldest: Instant,
    /// How many.
    count: u32,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading commands and writing replies and pushes.
    Open,
    /// Writing what is left, then shutting down the sending side.
    Flushing { linger: bool },
    /// Sending side shut; discarding input until the peer closes or the linger ends.
    Lingering,
}

/// Why a connection closes, for the last message and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseReason {
    Disconnect,
    PeerClosed,
    Timeout,
    Shutdown,
}

/// One client connection.
pub struct ConnectionActor {
    /// The socket; reads and writes happen in place, without a split.
    stream: TcpStream,
    /// The client's address, for logs and throttling.
    peer: SocketAddr,
    /// Splits the input into messages and bounds their length.
    codec: MessageCodec,
    /// Received bytes not yet decoded; holds no memory while no message is partial.
    input: BytesMut,
    /// Encoded output the kernel has not taken yet; [`DriveSocket`] writes it.
    output: BytesMut,
    /// The last byte handed to the kernel ended a message (or none was sent yet).
    output_at_boundary: bool,
    /// The events in `output`, for the delivery histogram once they are written.
    unwritten_events: Option<UnwrittenEvents>,
    /// What `output` has charged to the server-wide budget; given back on drop.
    output_charge: OutputCharge,
    /// The user this connection is bound to.
    binding: Option<Binding>,
    /// A login being checked; no command is read until its verdict.
    login: Option<PendingLogin>,
    /// The hub's addresses in force and the registry generations they belong to.
    hub: HubState,
    /// The registry shard of this connection's worker arbiter.
    shard: usize,
    /// When the last complete message arrived (or the connection opened).
    last_message: Instant,
    /// When to look again at idleness (open), give up the last output (flushing), or stop
    /// lingering; moved lazily, not per message.
    deadline: Pin<Box<Sleep>>,
    /// Where the connection is in its life.
    phase: Phase,
    /// The client shut its sending side (or the read side failed): nothing to linger for.
    input_closed: bool,
    /// What every connection shares.
    shared: Arc<ConnectionShared>,
    /// This connection's key in the [`Roster`] of its shard.
    roster_key: usize,
    /// An `invalidate` found the bus gone; it is sent again once the bus is replaced.
    invalidate_deferred: bool,
    /// This connection's place under `max_connections`; freed when the actor drops.
    _permit: OwnedSemaphorePermit,
}

impl ConnectionActor {
    /// A connection on worker `shard`, created in `ctx`; it joins the shard's roster before
    /// it reads the hub's state from `hub`, so it misses no change.
    pub(crate) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        shared: Arc<ConnectionShared>,
        hub: &watch::Receiver<HubState>,
        shard: usize,
        permit: OwnedSemaphorePermit,
        ctx: &mut Context<Self>,
    ) -> Self {
        let roster_key = shared.roster.join(shard, ctx.address().downgrade());
        let address = ctx.address().downgrade();
        let evict: Evict = Arc::new(move || {
            if let Some(connection) = address.upgrade() {
                connection.do_send(OutputEvicted);
            }
        });
        let hub = hub.borrow().clone();
        shared.metrics.connections_open.inc();
        let deadline = Box::pin(tokio::time::sleep(shared.idle_timeout));
        Self {
            stream,
            peer,
            codec: MessageCodec::new(shared.max_message_bytes),
            input: BytesMut::new(),
            output: BytesMut::new(),
            output_at_boundary: true,
            unwritten_events: None,
            output_charge: OutputCharge::new(Arc::clone(&shared.output_budget), evict),
            binding: None,
            login: None,
            hub,
            shard,
            last_message: Instant::now(),
            deadline,
            phase: Phase::Open,
            input_closed: false,
            shared,
            roster_key,
            invalidate_deferred: false,
            _permit: permit,
        }
    }

    /// Handles one complete message from the client.
    fn on_message(&mut self, message: &[u8], tally: &mut CommandTally, ctx: &mut Context<Self>) {
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
            Err(err) => self.reply(err.reply(), ctx),
            Ok(Command::Login { name, password }) => self.start_login(name, password, ctx),
            Ok(Command::Logout) => {
                if let Some(binding) = self.unbind() {
                    log::info!("{}: logged out of {:?}", self.peer, binding.user);
                }
                self.reply(Reply::LogoutAck, ctx);
            }
            Ok(Command::Disconnect) => {
                self.reply(Reply::DisconnectAck, ctx);
                self.close(CloseReason::Disconnect, ctx);
            }
            Ok(Command::Prolongate) => self.reply(Reply::ProlongateAck, ctx),
            Ok(Command::Invalidate) => {
                self.invalidate_others();
                self.reply(Reply::InvalidateAck, ctx);
            }
        }
    }

    /// Asks the bus to invalidate the other connections of this one's user. If the bus
    /// has just failed, the request waits for its replacement.
    fn invalidate_others(&mut self) {
        let Some(binding) = &self.binding else { return };
        let bus = self.hub.bus.clone();
        if !bus.connected() {
            log::warn!("{}: event bus restarting; invalidate deferred", self.peer);
            self.invalidate_deferred = true;
            return;
        }
        self.invalidate_deferred = false;
        bus.do_send(Invalidate {
            user: binding.user.to_string(),
            except: Some(binding.id),
            cause: InvalidationCause::Client,
        });
    }

    /// Starts checking a login off the event loop. The connection reads no further command
    /// until the verdict is in, so pipelined commands keep their order; pushes are still
    /// taken meanwhile.
    fn start_login(&mut self, name: &[u8], password: &[u8], ctx: &mut Context<Self>) {
        let now = Instant::now();
        let Some(reservation) = self.shared.throttle.reserve(self.peer.ip(), name, now) else {
            self.shared.metrics.login(LoginResult::Throttled);
            log::warn!(
                "{}: login as {} refused unchecked: too many failures",
                self.peer,
                Excerpt(name)
            );
            self.reply(Reply::LoginInvalid, ctx);
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
    fn finish_login(&mut self, login: PendingLogin, matches: bool, ctx: &mut Context<Self>) {
        match (matches, login.user) {
            (true, Some((user, hash))) => {
                self.login_succeeded(user, &hash, login.reservation, ctx);
            }
            _ => self.login_failed(&login.name, login.reservation, ctx),
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
        ctx: &mut Context<Self>,
    ) {
        if self.shared.users.password_hash(&user).as_ref() != Some(hash) {
            log::info!(
                "{}: login as {user:?} refused: the password changed during the check",
                self.peer
            );
            self.shared.metrics.login(LoginResult::Invalid);
            self.reply(Reply::LoginInvalid, ctx);
            return;
        }
        reservation.succeeded();
        self.shared.metrics.login(LoginResult::Valid);
        let same_user = self
            .binding
            .as_ref()
            .is_some_and(|binding| binding.user == user);
        if !same_user {
            self.unbind();
            let binding = Binding {
                user,
                id: BindingId::next(),
            };
            self.announce(&binding, ctx);
            // After the `Bind` is sent: whoever sees this count reaches the shard after it.
            self.shared.presence.enter(self.shard, &binding.user);
            log::info!("{}: logged in as {:?}", self.peer, binding.user);
            self.binding = Some(binding);
            self.shared.metrics.connections_bound.inc();
        }
        self.reply(Reply::LoginValid, ctx);
    }

    fn login_failed(&mut self, name: &[u8], reservation: Reservation, ctx: &mut Context<Self>) {
        reservation.failed(Instant::now());
        self.shared.metrics.login(LoginResult::Invalid);
        log::info!("{}: login as {} failed", self.peer, Excerpt(name));
        self.reply(Reply::LoginInvalid, ctx);
    }

    /// Tells the registry about `binding`.
    fn announce(&self, binding: &Binding, ctx: &mut Context<Self>) {
        self.hub.registries[self.shard].do_send(Bind {
            user: Arc::clone(&binding.user),
            binding: binding.id,
            connection: ctx.address().recipient(),
        });
    }

    /// Clears the binding without telling the registry (which already knows).
    fn take_binding(&mut self) -> Option<Binding> {
        let binding = self.binding.take()?;
        self.shared.metrics.connections_bound.dec();
        self.shared.presence.leave(self.shard, &binding.user);
        Some(binding)
    }

    /// Drops the binding, telling the registry; returns what it was.
    fn unbind(&mut self) -> Option<Binding> {
        let binding = self.take_binding()?;
        self.hub.registries[self.shard].do_send(Unbind {
            user: Arc::clone(&binding.user),
            binding: binding.id,
        });
        Some(binding)
    }

    fn reply(&mut self, reply: Reply, ctx: &mut Context<Self>) {
        let name = reply.name().as_bytes();
        buffers::reserve(&mut self.output, name.len() + 1, Spare::Output);
        encode_message(&[name], &mut self.output);
        self.output_grew(ctx);
    }

    fn write_message(&mut self, message: &[u8], ctx: &mut Context<Self>) {
        buffers::reserve(&mut self.output, message.len(), Spare::Output);
        self.output.extend_from_slice(message);
        self.output_grew(ctx);
    }

    /// Enforces `max_pending_bytes` and the server-wide `max_pending_total` (where the
    /// budget is spent, the connections stalled longer than this one are told to go
    /// first; see [`crate::util::output_budget`]). The output itself is written by [`DriveSocket`], which is polled after every handler that can
    /// add to it (mailbox handlers run before the context's futures on each wake-up).
    fn output_grew(&mut self, ctx: &mut Context<Self>) {
        if self.output.len() > self.shared.max_pending_bytes {
            // What the kernel takes right now is not pending.
            if self.write_now().is_err() || self.output.len() > self.shared.max_pending_bytes {
                self.fail(
                    IoErrorCause::SlowReader,
                    "unsent output over max_pending_bytes (client not reading)",
                    ctx,
                );
                return;
            }
        }
        if self.output.len() > FREE_BYTES && !self.output_charge.settle(self.output.len()) {
            // `write_now` settles the charge for what the kernel takes.
            if self.write_now().is_err() || !self.output_charge.settle_or_evict(self.output.len()) {
                self.fail(
                    IoErrorCause::SlowReader,
                    "unsent output over max_pending_total, the server-wide bound, and \
                     stalled longest (client not reading)",
                    ctx,
                );
            }
        }
    }

    /// Hands the kernel what it takes without waiting.
    fn write_now(&mut self) -> std::io::Result<()> {
        while !self.output.is_empty() {
            match self.stream.try_write(&self.output) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(written) => self.consume_output(written),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    fn consume_output(&mut self, written: usize) {
        self.output_at_boundary = ends_at_boundary(&self.output[..written]);
        if written < self.output.len() {
            self.output.advance(written);
        } else {
            // `clear`, not `advance`: the buffer keeps its whole capacity for the spare
            // (advanced to its end, it would report none and be freed).
            self.output.clear();
            buffers::release(&mut self.output, Spare::Output);
            self.observe_delivered();
        }
        if self.output_charge.is_charged() {
            self.output_charge.taken(self.output.len());
        }
    }

    /// An event accepted by the bus at `accepted` goes into the output.
    fn note_event(&mut self, accepted: Instant) {
        match &mut self.unwritten_events {
            Some(events) => events.count += 1,
            None => {
                self.unwritten_events = Some(UnwrittenEvents {
                    oldest: accepted,
                    count: 1,
                });
            }
        }
    }

    /// The output is written: its events reached the socket now.
    fn observe_delivered(&mut self) {
        if let Some(events) = self.unwritten_events.take() {
            self.observe(events.oldest, events.count);
        }
    }

    /// Counts `count` events, accepted at `accepted` or later, as delivered now.
    fn observe(&self, accepted: Instant, count: u32) {
        if let Some(histogram) = self.shared.delivery_seconds.get(self.shard) {
            let seconds = accepted.elapsed().as_secs_f64();
            for _ in 0..count {
                histogram.observe(seconds);
            }
        }
    }

    /// Starts an orderly close: the last message (if any) is written, then the socket is
    /// shut down.
    fn close(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        if self.phase != Phase::Open {
            return;
        }
        if self.login.take().is_some() {
            log::info!("{}: login unchecked: closing ({reason:?})", self.peer);
            self.reply(Reply::LoginInvalid, ctx);
        }
        match reason {
            CloseReason::Timeout => {
                log::info!("{}: idle timeout{}", self.peer, self.who());
                self.shared.metrics.timeouts.inc();
                self.reply(Reply::Timeout, ctx);
            }
            CloseReason::Shutdown => self.reply(Reply::Shutdown, ctx),
            CloseReason::Disconnect => log::debug!("{}: disconnect{}", self.peer, self.who()),
            CloseReason::PeerClosed => log::debug!("{}: peer closed{}", self.peer, self.who()),
        }
        self.unbind();
        // Output may have been cut off by the last reply.
        if self.phase != Phase::Open {
            return;
        }
        self.phase = Phase::Flushing {
            linger: reason != CloseReason::Shutdown,
        };
        // The client gets as long to take its last messages as it had to send one.
        self.move_deadline(Instant::now() + self.shared.idle_timeout);
    }

    /// Closes after an I/O problem: `io_error` if it can be sent whole without waiting,
    /// then the socket is dropped.
    fn fail(&mut self, cause: IoErrorCause, detail: &str, ctx: &mut Context<Self>) {
        if matches!(self.phase, Phase::Lingering) {
            ctx.stop();
            return;
        }
        log::info!("{}: io_error: {detail}{}", self.peer, self.who());
        self.shared.metrics.io_error(cause);
        // Nobody will read the verdict: a check not yet started is dropped unrun.
        self.login = None;
        self.unbind();
        self.output.clear();
        self.unwritten_events = None;
        if self.output_at_boundary {
            encode_message(&[Reply::IoError.name().as_bytes()], &mut self.output);
            // Best effort: whatever the kernel takes now.
            let _ = self.write_now();
        }
        self.phase = Phase::Lingering;
        ctx.stop();
    }

    /// The sending side is flushed: shut it down, then linger or stop.
    fn finish_close(
        &mut self,
        linger: bool,
        task: &mut std::task::Context<'_>,
        ctx: &mut Context<Self>,
    ) {
        // For TCP the shutdown completes at once; an error means the peer is gone anyway.
        let _ = Pin::new(&mut self.stream).poll_shutdown(task);
        if linger && !self.input_closed {
            self.phase = Phase::Lingering;
            self.move_deadline(Instant::now() + LINGER);
        } else {
            ctx.stop();
        }
    }

    fn who(&self) -> String {
        match &self.binding {
            Some(binding) => format!(" (user {:?})", binding.user),
            None => String::new(),
        }
    }

    fn move_deadline(&mut self, at: Instant) {
        self.deadline.as_mut().reset(at.into());
    }

    /// The deadline passed: close an idle connection (or look again later), give up a
    /// close whose last output the client does not take, or end the linger.
    fn deadline_passed(&mut self, ctx: &mut Context<Self>) {
        let timeout = self.shared.idle_timeout;
        match self.phase {
            // A login queued for bcrypt is not idleness: look again a timeout later.
            Phase::Open if self.login.is_some() => self.move_deadline(Instant::now() + timeout),
            Phase::Open if self.last_message.elapsed() >= timeout => {
                self.close(CloseReason::Timeout, ctx);
            }
            Phase::Open => self.move_deadline(self.last_message + timeout),
            Phase::Flushing { .. } => {
                log::info!(
                    "{}: closed with {} byte(s) unsent: the client did not take them within {timeout:?}{}",
                    self.peer,
                    self.output.len(),
                    self.who()
                );
                ctx.stop();
            }
            Phase::Lingering => ctx.stop(),
        }
    }

    /// Writes the output until it is empty or the kernel takes no more; once it is empty
    /// on a closing connection, finishes the close.
    fn poll_output(&mut self, ctx: &mut Context<Self>, task: &mut std::task::Context<'_>) {
        // Through `AsyncWrite` rather than `try_write`: a short write clears the readiness
        // at once, so waiting for room costs no `EAGAIN`.
        while !self.output.is_empty() {
            match Pin::new(&mut self.stream).poll_write(task, &self.output) {
                Poll::Pending => return,
                Poll::Ready(Ok(written)) if written > 0 => self.consume_output(written),
                Poll::Ready(result) => {
                    let err = result
                        .err()
                        .unwrap_or_else(|| std::io::ErrorKind::WriteZero.into());
                    self.fail(IoErrorCause::Write, &format!("write error: {err}"), ctx);
                    return;
                }
            }
        }
        if let Phase::Flushing { linger } = self.phase {
            self.finish_close(linger, task, ctx);
        }
    }

    /// Reads, decodes and handles input until the socket has no more for now.
    fn poll_input(&mut self, ctx: &mut Context<Self>, task: &mut std::task::Context<'_>) {
        let mut tally = CommandTally::default();
        self.read_and_handle(&mut tally, ctx, task);
        tally.add_to(&self.shared.metrics);
    }

    /// The body of [`Self::poll_input`]; commands are counted in `tally`.
    fn read_and_handle(
        &mut self,
        tally: &mut CommandTally,
        ctx: &mut Context<Self>,
        task: &mut std::task::Context<'_>,
    ) {
        // Messages that arrive in one wake-up arrive at one moment: read the clock once.
        let mut received_any = false;
        for _ in 0..READS_PER_WAKEUP {
            while self.phase == Phase::Open {
                if let Some(login) = &mut self.login {
                    let Poll::Ready(matches) = Pin::new(&mut login.verdict).poll(task) else {
                        // Meanwhile the socket is still read (up to one message ahead), so
                        // that a reset drops the login and its check before the check runs,
                        // while a client that only shut its sending side still gets the
                        // verdict.
                        if self.input_closed || self.input.len() > self.shared.max_message_bytes {
                            // Logins can queue for seconds: wait holding no empty buffer.
                            if self.input.is_empty() {
                                buffers::release(&mut self.input, Spare::Input);
                            }
                            return;
                        }
                        break;
                    };
                    if let Some(login) = self.login.take() {
                        self.finish_login(login, matches, ctx);
                    }
                    continue;
                }
                match self.codec.next_message(&self.input) {
                    Ok(Some(length)) => {
                        if !received_any {
                            self.last_message = Instant::now();
                            received_any = true;
                        }
                        // Handled in place: taken out only so the handler may borrow it.
                        let input = std::mem::take(&mut self.input);
                        self.on_message(&input[..length], tally, ctx);
                        self.input = input;
                        self.input.advance(length + 1);
                    }
                    Ok(None) => break,
                    Err(err) => {
                        self.fail(IoErrorCause::MessageTooLong, &err.to_string(), ctx);
                        return;
                    }
                }
            }
            if self.phase != Phase::Open || self.input.is_empty() {
                // No partial message: hold no read buffer while idle.
                self.input.clear();
                buffers::release(&mut self.input, Spare::Input);
            }
            if self.input_closed {
                // The client shut its sending side while a login was checked; the verdict
                // and the commands sent before are answered: now close.
                self.input = BytesMut::new();
                if self.phase == Phase::Open {
                    self.close(CloseReason::PeerClosed, ctx);
                }
                return;
            }
            match self.stream.poll_read_ready(task) {
                Poll::Pending => return,
                Poll::Ready(Err(err)) => {
                    self.fail(IoErrorCause::Read, &format!("read error: {err}"), ctx);
                    return;
                }
                Poll::Ready(Ok(())) => {}
            }
            buffers::reserve(&mut self.input, READ_CHUNK, Spare::Input);
            // Through `AsyncRead` rather than `try_read`: a read that leaves part of the
            // buffer empty has drained the socket, and tokio then clears the readiness, so
            // the next loop does not spend a `recv` to learn it (`EAGAIN`).
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), task, &mut self.input) {
                Poll::Pending => {
                    if self.input.is_empty() {
                        buffers::release(&mut self.input, Spare::Input);
                    }
                    return;
                }
                Poll::Ready(Ok(0)) => {
                    self.input_closed = true;
                    if self.login.is_some() && self.phase == Phase::Open {
                        // Half-closed, not gone (SPEC §3): the login is still answered.
                        return;
                    }
                    self.input = BytesMut::new();
                    match self.phase {
                        Phase::Open => self.close(CloseReason::PeerClosed, ctx),
                        Phase::Lingering => ctx.stop(),
                        Phase::Flushing { .. } => {}
                    }
                    return;
                }
                Poll::Ready(Ok(_)) if self.phase != Phase::Open => self.input.clear(),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => {
                    self.fail(IoErrorCause::Read, &format!("read error: {err}"), ctx);
                    return;
                }
            }
        }
        // More may be waiting: come back after the others on this loop had their turn.
        task.waker().wake_by_ref();
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        log::debug!("{}: connected", self.peer);
        ctx.spawn(DriveSocket);
        if self.hub.shutting_down {
            self.close(CloseReason::Shutdown, ctx);
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.unbind();
        log::debug!("{}: closed", self.peer);
    }
}

impl Drop for ConnectionActor {
    fn drop(&mut self) {
        self.shared.metrics.connections_open.dec();
        self.shared.roster.leave(self.shard, self.roster_key);
        // Still bound only when the actor did not stop in order (a panic).
        self.take_binding();
    }
}

impl Handler<Push> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Context<Self>) {
        if self.phase != Phase::Open {
            return;
        }
        match msg {
            Push::Event { binding, event } => {
                if self
                    .binding
                    .as_ref()
                    .is_some_and(|current| current.id == binding)
                {
                    // Noted first: writing may complete at once (past the output limit).
                    self.note_event(event.accepted);
                    self.write_message(&event.message, ctx);
                }
            }
            Push::Invalidated { binding } => {
                if self
                    .binding
                    .as_ref()
                    .is_some_and(|current| current.id == binding)
                {
                    if let Some(binding) = self.take_binding() {
                        log::info!("{}: invalidated, no longer {:?}", self.peer, binding.user);
                    }
                    self.reply(Reply::Invalidated, ctx);
                }
            }
        }
    }
}

/// The server-wide output budget is spent and this connection has gone longest without
/// the kernel taking any of its output: it is cut off to make room for one that has not.
#[derive(Message)]
#[rtype(result = "()")]
struct OutputEvicted;

impl Handler<OutputEvicted> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, _: OutputEvicted, ctx: &mut Context<Self>) {
        self.fail(
            IoErrorCause::SlowReader,
            "unsent output over max_pending_total, the server-wide bound, and stalled \
             longest: cut off for a connection making progress (client not reading)",
            ctx,
        );
    }
}

impl Handler<HubChanged> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, HubChanged(state): HubChanged, ctx: &mut Context<Self>) {
        let fresh_registry = state.registry_generations.get(self.shard)
            != self.hub.registry_generations.get(self.shard);
        self.hub = state;
        if self.hub.shutting_down {
            // This message queued behind every push sent before the shutdown began, so an
            // event acknowledged before it is written before `shutdown`.
            self.close(CloseReason::Shutdown, ctx);
            return;
        }
        if fresh_registry {
            if let Some(binding) = &self.binding {
                self.announce(binding, ctx);
            }
        }
        if self.invalidate_deferred {
            self.invalidate_others();
        }
    }
}

/// Does the socket's work for the connection's whole life: input, output and the deadline.
struct DriveSocket;

impl ActorFuture<ConnectionActor> for DriveSocket {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut ConnectionActor,
        ctx: &mut Context<ConnectionActor>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        loop {
            if !act.input_closed || act.login.is_some() {
                act.poll_input(ctx, task);
            }
            act.poll_output(ctx, task);
            if ctx.state() != ActorState::Running {
                return Poll::Ready(());
            }
            if act.deadline.as_mut().poll(task).is_pending() {
                return Poll::Pending;
            }
            // Moves the deadline or closes; either way, look at the socket again.
            act.deadline_passed(ctx);
        }
    }
}
