//! [`ConnectionActor`]: one client connection, in two halves joined here. The
//! `transport` is the byte side, generic over the stream (read buffer, framing, output
//! bounds, the deadline, the close); the `session` is the protocol state (commands,
//! login, binding, pushes) and needs no socket. The actor feeds the session the messages
//! the transport decodes and the pushes its mailbox receives, and does what the session
//! asks (an `Effects`): replies and events into the transport, `Bind`/`Unbind`/
//! `Invalidate` to the hub.
//!
//! One future, `DriveSocket`, does all of the socket's work for the connection's whole
//! life: on every wake-up it reads and handles input, writes everything queued (replies and
//! the pushes the mailbox delivered just before it, in one write), and keeps the one
//! deadline the connection has (the idle timeout, then the end of a close). Nothing else is
//! spawned per wake-up.

pub(crate) mod client_stream;
pub(crate) mod cluster_throttle;
pub(crate) mod session;
pub(crate) mod shared;
pub(crate) mod tls_handshake;
pub(crate) mod transport;
pub(crate) mod websocket;
pub(crate) mod ws_handshake;

use crate::hub::messages::{Bind, Invalidate, InvalidationCause, Unbind};
pub use crate::hub::messages::{Push, ShardEvent};
use crate::hub::state::{HubChanged, HubState};
use crate::protocol::command::Reply;
use crate::util::buffers::{self, Spare};
use crate::util::metrics::{CommandTally, IoErrorCause, TransportKind, WsViolationCode};
use crate::util::output_budget::{Evictee, OutputCharge};
use actix::prelude::*;
use actix::WeakAddr;
use bytes::{Buf, BytesMut};
pub(crate) use client_stream::ClientStream;
use session::{Binding, Effects, Session};
pub(crate) use shared::ConnectionShared;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::{watch, OwnedSemaphorePermit};
use transport::{Overflow, Phase, Transport};

/// Reads per wake-up before yielding, so one flooding client cannot hold an arbiter.
const READS_PER_WAKEUP: usize = 16;
/// How long a closing connection keeps reading (and discarding) so that unread input does
/// not turn the close into a reset that destroys the last message.
const LINGER: Duration = Duration::from_secs(1);

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
    /// The byte side: the socket, its buffers, the deadline, the close.
    transport: Transport<ClientStream, EvictConnection>,
    /// The protocol side: commands, login, binding.
    session: Session,
    /// The hub's addresses in force and the registry generations they belong to.
    hub: HubState,
    /// This connection's key in the [`Roster`](crate::hub::roster::Roster) of its shard.
    roster_key: usize,
    /// What it runs over, for logs and metrics.
    kind: TransportKind,
    /// This connection's place under `max_connections`; freed when the actor drops.
    _permit: OwnedSemaphorePermit,
}

/// Tells a connection its output was evicted from the server-wide budget; a weak address,
/// so the budget's ledger keeps no connection alive.
#[derive(Clone)]
pub(crate) struct EvictConnection(WeakAddr<ConnectionActor>);

impl Evictee for EvictConnection {
    fn evict(&self) {
        if let Some(connection) = self.0.upgrade() {
            connection.do_send(OutputEvicted);
        }
    }
}

/// What the session asks, done for the actor: replies and events go into the transport,
/// bindings and invalidations to the hub. A bound the output passes, and a `disconnect`,
/// are acted on once the session returns.
struct Outbox<'a> {
    transport: &'a mut Transport<ClientStream, EvictConnection>,
    hub: &'a HubState,
    shard: usize,
    ctx: &'a Context<ConnectionActor>,
    /// The first bound the output passed.
    overflow: Option<Overflow>,
    /// The client said `disconnect`.
    disconnect: bool,
}

impl Effects for Outbox<'_> {
    // Inline: once per command.
    #[inline]
    fn reply(&mut self, reply: Reply) {
        if self.overflow.is_none() {
            self.overflow = self.transport.queue_reply(reply).err();
        }
    }

    fn event(&mut self, event: &ShardEvent) {
        if self.overflow.is_none() {
            self.overflow = self
                .transport
                .queue_event(&event.message, event.accepted)
                .err();
        }
    }

    fn bind(&mut self, binding: &Binding) {
        self.hub.shards.registries[self.shard].do_send(Bind {
            user: Arc::clone(&binding.user),
            binding: binding.id,
            connection: self.ctx.address().recipient(),
        });
    }

    fn unbind(&mut self, binding: &Binding) {
        self.hub.shards.registries[self.shard].do_send(Unbind {
            user: Arc::clone(&binding.user),
            binding: binding.id,
        });
    }

    fn invalidate_others(&mut self, binding: &Binding) -> bool {
        if !self.hub.bus.connected() {
            return false;
        }
        self.hub.bus.do_send(Invalidate {
            user: binding.user.to_string(),
            except: Some(binding.id),
            cause: InvalidationCause::Client,
        });
        true
    }

    fn disconnect(&mut self) {
        self.disconnect = true;
    }
}

impl ConnectionActor {
    /// A connection on worker `shard`, created in `ctx`; it joins the shard's roster before
    /// it reads the hub's state from `hub`, so it misses no change.
    pub(crate) fn new(
        stream: ClientStream,
        peer: SocketAddr,
        shared: Arc<ConnectionShared>,
        hub: &watch::Receiver<HubState>,
        shard: usize,
        permit: OwnedSemaphorePermit,
        ctx: &mut Context<Self>,
    ) -> Self {
        let roster_key = shared.roster.join(shard, ctx.address().downgrade());
        let evict = EvictConnection(ctx.address().downgrade());
        let hub = hub.borrow().clone();
        shared.metrics.connections_open.inc();
        let kind = stream.transport();
        shared.metrics.transport_opened(kind);
        let transport = Transport::new(
            stream,
            shared.max_message_bytes,
            shared.max_pending_bytes,
            OutputCharge::new(Arc::clone(&shared.output_budget), evict),
            shared.delivery_seconds.get(shard).cloned(),
            shared.idle_timeout,
        );
        Self {
            transport,
            session: Session::new(peer, shard, shared),
            hub,
            roster_key,
            kind,
            _permit: permit,
        }
    }

    fn shared(&self) -> &ConnectionShared {
        self.session.shared()
    }

    fn peer(&self) -> SocketAddr {
        self.session.peer()
    }

    /// Runs `step` on the session with an [`Outbox`], then acts on a bound passed or a
    /// `disconnect`.
    fn with_session<T>(
        &mut self,
        ctx: &mut Context<Self>,
        step: impl FnOnce(&mut Session, &mut Outbox<'_>) -> T,
    ) -> T {
        let mut outbox = Outbox {
            transport: &mut self.transport,
            hub: &self.hub,
            shard: self.session.shard(),
            ctx,
            overflow: None,
            disconnect: false,
        };
        let result = step(&mut self.session, &mut outbox);
        let (overflow, disconnect) = (outbox.overflow, outbox.disconnect);
        if let Some(overflow) = overflow {
            self.overflowed(overflow, ctx);
        } else if disconnect {
            self.close(CloseReason::Disconnect, ctx);
        }
        result
    }

    /// Drops the binding, telling the registry.
    fn unbind(&mut self, ctx: &mut Context<Self>) {
        self.with_session(ctx, |session, outbox| {
            session.unbind(outbox);
        });
    }

    fn reply(&mut self, reply: Reply, ctx: &mut Context<Self>) {
        if let Err(overflow) = self.transport.queue_reply(reply) {
            self.overflowed(overflow, ctx);
        }
    }

    /// The output passed a bound: `io_error`.
    fn overflowed(&mut self, overflow: Overflow, ctx: &mut Context<Self>) {
        let detail = match overflow {
            Overflow::Connection => "unsent output over max_pending_bytes (client not reading)",
            Overflow::Server => {
                "unsent output over max_pending_total, the server-wide bound, and stalled \
                 longest (client not reading)"
            }
        };
        self.fail(IoErrorCause::SlowReader, detail, ctx);
    }

    /// Starts an orderly close: the last message (if any) is written, then the socket is
    /// shut down.
    fn close(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        if self.transport.phase != Phase::Open {
            return;
        }
        // A login that bound and waits for the cluster broker is answered as it stands.
        self.with_session(ctx, |session, outbox| session.answer_subscribing(outbox));
        if self.session.drop_login() {
            log::info!("{}: login unchecked: closing ({reason:?})", self.peer());
            self.reply(Reply::LoginInvalid, ctx);
        }
        self.transport
            .set_close_code(if reason == CloseReason::Shutdown {
                websocket::CLOSE_GOING_AWAY
            } else {
                websocket::CLOSE_NORMAL
            });
        match reason {
            CloseReason::Timeout => {
                log::info!("{}: idle timeout{}", self.peer(), self.session.who());
                self.shared().metrics.timeouts.inc();
                self.reply(Reply::Timeout, ctx);
            }
            CloseReason::Shutdown => self.reply(Reply::Shutdown, ctx),
            CloseReason::Disconnect => {
                log::debug!("{}: disconnect{}", self.peer(), self.session.who());
            }
            CloseReason::PeerClosed => {
                log::debug!("{}: peer closed{}", self.peer(), self.session.who());
            }
        }
        self.unbind(ctx);
        // Output may have been cut off by the last reply.
        if self.transport.phase != Phase::Open {
            return;
        }
        self.transport.phase = Phase::Flushing {
            linger: reason != CloseReason::Shutdown,
        };
        // The client gets as long to take its last messages as it had to send one.
        let flush_bound = Instant::now() + self.shared().idle_timeout;
        self.transport.move_deadline(flush_bound);
    }

    /// Closes after an I/O problem: `io_error` if it can be sent whole without waiting,
    /// then the socket is dropped.
    fn fail(&mut self, cause: IoErrorCause, detail: &str, ctx: &mut Context<Self>) {
        if matches!(self.transport.phase, Phase::Lingering) {
            ctx.stop();
            return;
        }
        log::info!("{}: io_error: {detail}{}", self.peer(), self.session.who());
        self.shared().metrics.io_error(cause);
        // Nobody will read the verdict: a check not yet started is dropped unrun.
        self.session.drop_login();
        self.unbind(ctx);
        self.transport.fail_output();
        self.transport.phase = Phase::Lingering;
        ctx.stop();
    }

    /// The client broke the WebSocket frame protocol: what was answered before goes out,
    /// then the close frame with the violation's code (set by the stream), and what still
    /// comes is read and dropped for the linger, so the close is not lost to a reset.
    fn refuse_frames(&mut self, violation: &websocket::WsViolation, ctx: &mut Context<Self>) {
        log::info!(
            "{}: closed ({}): {violation}{}",
            self.peer(),
            self.kind,
            self.session.who()
        );
        self.shared().metrics.ws_violation(match violation.code {
            1007 => WsViolationCode::InvalidUtf8,
            1009 => WsViolationCode::TooBig,
            _ => WsViolationCode::Protocol,
        });
        self.session.drop_login();
        self.unbind(ctx);
        self.transport.input = BytesMut::new();
        if self.transport.phase == Phase::Open {
            self.transport.phase = Phase::Flushing { linger: true };
            let flush_bound = Instant::now() + self.shared().idle_timeout.min(LINGER * 5);
            self.transport.move_deadline(flush_bound);
        }
    }

    /// The sending side is flushed: shut it down, then linger or stop.
    fn finish_close(
        &mut self,
        linger: bool,
        task: &mut std::task::Context<'_>,
        ctx: &mut Context<Self>,
    ) {
        self.transport.shutdown(task);
        if linger && !self.transport.input_closed {
            self.transport.phase = Phase::Lingering;
            self.transport.move_deadline(Instant::now() + LINGER);
        } else {
            ctx.stop();
        }
    }

    /// The deadline passed: close an idle connection (or look again later), give up a
    /// close whose last output the client does not take, or end the linger.
    fn deadline_passed(&mut self, ctx: &mut Context<Self>) {
        let timeout = self.shared().idle_timeout;
        match self.transport.phase {
            // A login queued for bcrypt is not idleness: look again a timeout later.
            Phase::Open if self.session.login_pending() => {
                self.transport.move_deadline(Instant::now() + timeout);
            }
            Phase::Open if self.transport.last_message.elapsed() >= timeout => {
                self.close(CloseReason::Timeout, ctx);
            }
            Phase::Open => {
                let at = self.transport.last_message + timeout;
                self.transport.move_deadline(at);
            }
            Phase::Flushing { .. } => {
                log::info!(
                    "{}: closed with {} byte(s) unsent: the client did not take them within {timeout:?}{}",
                    self.peer(),
                    self.transport.output.len(),
                    self.session.who()
                );
                ctx.stop();
            }
            Phase::Lingering => ctx.stop(),
        }
    }

    /// Writes the output until it is empty or the kernel takes no more; once it is empty
    /// on a closing connection, finishes the close.
    fn poll_output(&mut self, ctx: &mut Context<Self>, task: &mut std::task::Context<'_>) {
        match self.transport.poll_flush(task) {
            Poll::Pending => return,
            Poll::Ready(Err(err)) => {
                self.fail(IoErrorCause::Write, &format!("write error: {err}"), ctx);
                return;
            }
            Poll::Ready(Ok(())) => {}
        }
        if let Phase::Flushing { linger } = self.transport.phase {
            self.finish_close(linger, task, ctx);
        }
    }

    /// Reads, decodes and handles input until the socket has no more for now.
    fn poll_input(&mut self, ctx: &mut Context<Self>, task: &mut std::task::Context<'_>) {
        let mut tally = CommandTally::default();
        self.read_and_handle(&mut tally, ctx, task);
        tally.add_to(&self.shared().metrics);
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
            while self.transport.phase == Phase::Open {
                if self.session.login_pending() {
                    let verdict =
                        self.with_session(ctx, |session, outbox| session.poll_login(task, outbox));
                    if verdict.is_pending() {
                        // Meanwhile the socket is still read (up to one message ahead), so
                        // that a reset drops the login and its check before the check runs,
                        // while a client that only shut its sending side still gets the
                        // verdict.
                        if self.transport.input_closed
                            || self.transport.input.len() > self.shared().max_message_bytes
                        {
                            // Logins can queue for seconds: wait holding no empty buffer.
                            self.transport.release_idle_input();
                            return;
                        }
                        break;
                    }
                    continue;
                }
                match self.transport.next_message() {
                    Ok(Some(length)) => {
                        if !received_any {
                            self.transport.last_message = Instant::now();
                            received_any = true;
                        }
                        // Handled in place: taken out only so the handler may borrow it,
                        // with the messages after it that need no other step between them,
                        // then dropped from the input all at once.
                        let input = std::mem::take(&mut self.transport.input);
                        let mut handled = 0;
                        let mut length = length;
                        loop {
                            let message = &input[handled..handled + length];
                            self.with_session(ctx, |session, outbox| {
                                session.on_message(message, tally, outbox);
                            });
                            handled += length + 1;
                            if self.transport.phase != Phase::Open || self.session.login_pending() {
                                break;
                            }
                            // An incomplete message or an error is left to the loop above,
                            // which finds it again in the input put back.
                            match self.transport.next_message_in(&input[handled..]) {
                                Ok(Some(next)) => length = next,
                                Ok(None) | Err(_) => break,
                            }
                        }
                        self.transport.input = input;
                        self.transport.input.advance(handled);
                    }
                    Ok(None) => break,
                    Err(err) => {
                        self.fail(IoErrorCause::MessageTooLong, &err.to_string(), ctx);
                        return;
                    }
                }
            }
            if self.transport.phase != Phase::Open || self.transport.input.is_empty() {
                // No partial message: hold no read buffer while idle.
                self.transport.input.clear();
                buffers::release(&mut self.transport.input, Spare::Input);
            }
            if self.transport.input_closed {
                // The client shut its sending side while a login was checked; the verdict
                // and the commands sent before are answered: now close.
                self.transport.input = BytesMut::new();
                if self.transport.phase == Phase::Open {
                    self.close(CloseReason::PeerClosed, ctx);
                }
                return;
            }
            match self.transport.poll_read(task) {
                Poll::Pending => return,
                Poll::Ready(Ok(0)) => {
                    self.transport.input_closed = true;
                    if self.session.login_pending() && self.transport.phase == Phase::Open {
                        // Half-closed, not gone (SPEC §3): the login is still answered.
                        return;
                    }
                    self.transport.input = BytesMut::new();
                    match self.transport.phase {
                        Phase::Open => self.close(CloseReason::PeerClosed, ctx),
                        Phase::Lingering => ctx.stop(),
                        Phase::Flushing { .. } => {}
                    }
                    return;
                }
                Poll::Ready(Ok(_)) if self.transport.phase != Phase::Open => {
                    self.transport.input.clear();
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => {
                    if let Some(violation) = websocket::WsViolation::of(&err) {
                        let violation = violation.clone();
                        self.refuse_frames(&violation, ctx);
                    } else {
                        self.fail(IoErrorCause::Read, &format!("read error: {err}"), ctx);
                    }
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
        log::debug!("{}: connected ({})", self.peer(), self.kind);
        ctx.spawn(DriveSocket);
        if self.hub.shutting_down {
            self.close(CloseReason::Shutdown, ctx);
        }
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        self.unbind(ctx);
        log::debug!("{}: closed ({})", self.peer(), self.kind);
    }
}

impl Drop for ConnectionActor {
    fn drop(&mut self) {
        self.shared().metrics.connections_open.dec();
        self.shared().metrics.transport_closed(self.kind);
        self.shared()
            .roster
            .leave(self.session.shard(), self.roster_key);
        // Still bound only when the actor did not stop in order (a panic).
        self.session.take_binding();
    }
}

impl Handler<Push> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Context<Self>) {
        if self.transport.phase != Phase::Open {
            return;
        }
        self.with_session(ctx, |session, outbox| session.on_push(msg, outbox));
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

/// The client CA changed and no longer accepts this TLS connection's client certificate
/// (or it has none and one is now required): `io_error`, and the connection is closed. Not
/// `shutdown`: the server goes on, and a client must not take this for a restart to wait
/// out; its reconnection is refused in the handshake, which says why.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClientCertificateRevoked;

impl Handler<ClientCertificateRevoked> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, _: ClientCertificateRevoked, ctx: &mut Context<Self>) {
        self.fail(
            IoErrorCause::ClientCertificate,
            "client certificate no longer accepted (server.tls.client_ca_file changed)",
            ctx,
        );
    }
}

impl Handler<HubChanged> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, HubChanged(state): HubChanged, ctx: &mut Context<Self>) {
        let fresh_registry = state.shards.generations.get(self.session.shard())
            != self.hub.shards.generations.get(self.session.shard());
        self.hub = state;
        if self.hub.shutting_down {
            // This message queued behind every push sent before the shutdown began, so an
            // event acknowledged before it is written before `shutdown`.
            self.close(CloseReason::Shutdown, ctx);
            return;
        }
        self.with_session(ctx, |session, outbox| {
            session.hub_changed(fresh_registry, outbox);
        });
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
            if !act.transport.input_closed || act.session.login_pending() {
                act.poll_input(ctx, task);
            }
            act.poll_output(ctx, task);
            if ctx.state() != ActorState::Running {
                return Poll::Ready(());
            }
            if act.transport.deadline.as_mut().poll(task).is_pending() {
                return Poll::Pending;
            }
            // Moves the deadline or closes; either way, look at the socket again.
            act.deadline_passed(ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// What an idle connection holds inline (in its task) and how it is told to go: one weak
    /// address, no allocation until its output is first charged to the budget. Prints the
    /// sizes (`--nocapture`) for the `hold` figures in BENCHMARKS.md.
    #[test]
    fn an_idle_connection_holds_no_eviction_callback() {
        println!(
            "ConnectionActor {} B: Transport {} B (OutputCharge {} B), Session {} B, HubState {} B",
            size_of::<ConnectionActor>(),
            size_of::<Transport<ClientStream, EvictConnection>>(),
            size_of::<OutputCharge<EvictConnection>>(),
            size_of::<Session>(),
            size_of::<HubState>(),
        );
        assert_eq!(size_of::<EvictConnection>(), size_of::<usize>());
    }

    /// What a WebSocket connection adds (`--nocapture`), for the `hold` figures of
    /// BENCHMARKS.md: one boxed `WsStream` (tungstenite's context inside), whose buffers
    /// hold no memory while idle but the context's read buffer (the last frame's size).
    #[test]
    fn a_websocket_adds_one_boxed_stream() {
        println!(
            "WsStream {} B (tungstenite WebSocketContext {} B), ClientStream {} B",
            size_of::<websocket::WsStream>(),
            size_of::<tungstenite::protocol::WebSocketContext>(),
            size_of::<ClientStream>(),
        );
        assert!(size_of::<ClientStream>() <= 2 * size_of::<tokio::net::TcpStream>());
    }
}
