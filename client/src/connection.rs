//! One connection to a server: a [`Client`] handle that sends commands and awaits their
//! replies, and a [`Pushes`] channel of what the server sends on its own.
//!
//! Two tasks own the stream. The writer takes commands from a queue in order, records
//! each one's waiting caller at the back of a FIFO, then writes it, batching whatever is
//! queued into one write. The reader splits the incoming bytes into messages: a reply
//! completes the caller at the front of the FIFO (the server answers in order, SPEC §2),
//! anything else goes to [`Pushes`]. So any number of commands may be in flight at once,
//! from any number of clones of the handle.

use crate::error::{ClientError, ProtocolError};
use crate::framing::{encode_message, is_valid_part, MessageDecoder, Verb};
use crate::incoming::{classify, Incoming};
use crate::message::{Push, Reply};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, Notify};

/// How much room the reader makes for each read, at least half of it free.
const READ_CHUNK_BYTES: usize = 8 * 1024;
/// How much the writer gathers from the queue into one write, at most.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Settings of a connection; [`Options::default`] suits most uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// Longest message accepted from the server (terminator excluded).
    max_message_bytes: usize,
    /// Send `prolongate` after this long without any command, if set.
    keep_alive: Option<Duration>,
    /// Commands queued for the writer before senders wait.
    queue: usize,
}

impl Default for Options {
    /// Messages up to 64 KiB, no keep-alive, 1024 commands queued.
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            keep_alive: None,
            queue: 1024,
        }
    }
}

impl Options {
    /// The longest message accepted from the server, terminator excluded; a longer one
    /// ends the connection with [`ProtocolError::MessageTooLong`]. Events carry their text,
    /// so this bounds the longest event text too.
    pub fn max_message_bytes(mut self, limit: usize) -> Self {
        self.max_message_bytes = limit;
        self
    }

    /// Sends `prolongate` whenever no command was sent for `interval`, so the server's
    /// inactivity timeout (`server.idle_timeout`, 30 minutes by default) never expires
    /// while the connection is open. Choose an interval well below that timeout. The
    /// replies to these commands are consumed by the client and not shown.
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.keep_alive = Some(interval);
        self
    }

    /// How many commands may wait for the writer before senders wait too (at least 1).
    pub fn queue(mut self, commands: usize) -> Self {
        self.queue = commands.max(1);
        self
    }
}

/// The result of a `login`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    /// `login_valid`: the connection is now bound to the name.
    Valid,
    /// `login_invalid`: the binding is unchanged.
    Invalid,
}

/// A command waiting for its reply.
enum Waiting {
    /// A caller awaiting the reply.
    Caller(oneshot::Sender<Result<Reply, ClientError>>),
    /// A keep-alive `prolongate`, whose reply nobody awaits.
    KeepAlive,
}

/// A command on its way to the writer.
struct Request {
    /// The whole message, terminator included.
    message: Bytes,
    /// Who gets the reply.
    waiting: Waiting,
}

/// State shared by the handle, the writer and the reader.
#[derive(Default)]
struct Shared {
    /// The commands written and not yet answered, oldest first.
    waiting: VecDeque<Waiting>,
    /// Why the connection ended, once it has; commands sent later fail with it.
    ended: Option<ClientError>,
}

/// Locks `shared`; a panic elsewhere while holding the lock cannot leave it inconsistent
/// (every critical section is a single push, pop or assignment), so poisoning is ignored.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends commands on one connection and awaits their replies. Cheap to clone; clones
/// share the connection, and their commands are answered in the order they were sent.
///
/// When the last clone is dropped, the client closes its sending side; the server answers
/// what it already got, then closes, and [`Pushes`] ends.
///
/// A command is sent whole once queued, even if the future awaiting its reply is dropped
/// (its reply is then discarded), so cancelling a call never corrupts the stream.
#[derive(Clone)]
pub struct Client {
    /// The writer's queue.
    requests: mpsc::Sender<Request>,
    /// Shared with the tasks, for the reason the connection ended.
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("ended", &lock(&self.shared).ended)
            .finish_non_exhaustive()
    }
}

/// What the server sends on its own, in the order it arrived: a channel that ends when
/// the connection does. If the connection ended because of an error (I/O, or the server
/// breaking the protocol), its last item is that error.
///
/// Pushes are kept until read (the channel is unbounded, so a slow reader of pushes never
/// holds up replies); drop it to discard them.
#[derive(Debug)]
pub struct Pushes {
    /// Fed by the reader task.
    receiver: mpsc::UnboundedReceiver<Result<Push, ClientError>>,
}

impl Pushes {
    /// The next push, waiting for it; `None` once the connection has ended and every push
    /// has been read.
    pub async fn recv(&mut self) -> Option<Result<Push, ClientError>> {
        self.receiver.recv().await
    }

    /// The next push if one has arrived, without waiting; `None` also after the end.
    pub fn try_recv(&mut self) -> Option<Result<Push, ClientError>> {
        self.receiver.try_recv().ok()
    }
}

impl Client {
    /// Connects over TCP to `addr` with [`Options::default`].
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<(Client, Pushes), ClientError> {
        Self::connect_with(addr, Options::default()).await
    }

    /// Connects over TCP to `addr` (Nagle's algorithm off, as commands are small).
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        options: Options,
    ) -> Result<(Client, Pushes), ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self::from_stream(stream, options))
    }

    /// Speaks the protocol over an already open `stream`, such as a TLS stream.
    ///
    /// Spawns the reader and writer tasks, so it must be called within a tokio runtime.
    pub fn from_stream<S>(stream: S, options: Options) -> (Client, Pushes)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(stream);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (requests, queue) = mpsc::channel(options.queue);
        let (pushes, receiver) = mpsc::unbounded_channel();
        let reader_ended = Arc::new(Notify::new());
        tokio::spawn(write_loop(
            write_half,
            queue,
            Arc::clone(&shared),
            options.keep_alive,
            Arc::clone(&reader_ended),
        ));
        tokio::spawn(read_loop(
            read_half,
            Arc::clone(&shared),
            pushes,
            options.max_message_bytes,
            reader_ended,
        ));
        (Client { requests, shared }, Pushes { receiver })
    }

    /// Sends a command made of `parts` (its type, then its arguments) and returns the
    /// reply, whatever it is. The typed methods below are built on this.
    pub async fn command(&self, parts: &[&[u8]]) -> Result<Reply, ClientError> {
        if !parts.iter().all(|part| is_valid_part(part)) {
            return Err(ClientError::InvalidArgument {
                argument: "command",
            });
        }
        self.send(parts).await
    }

    /// `login`: checks `password` and, if it is right, binds the connection to `name`.
    pub async fn login(&self, name: &str, password: &str) -> Result<LoginOutcome, ClientError> {
        if !is_valid_part(name.as_bytes()) {
            return Err(ClientError::InvalidArgument { argument: "name" });
        }
        if !is_valid_part(password.as_bytes()) {
            return Err(ClientError::InvalidArgument {
                argument: "password",
            });
        }
        match self
            .send(&[
                Verb::Login.word().as_bytes(),
                name.as_bytes(),
                password.as_bytes(),
            ])
            .await?
        {
            Reply::LoginValid => Ok(LoginOutcome::Valid),
            Reply::LoginInvalid => Ok(LoginOutcome::Invalid),
            reply => Err(ClientError::UnexpectedReply {
                command: Verb::Login.word(),
                reply,
            }),
        }
    }

    /// `logout`: binds the connection to no name.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.expect(Verb::Logout, Reply::LogoutAck).await
    }

    /// `prolongate`: resets the server's inactivity timer.
    pub async fn prolongate(&self) -> Result<(), ClientError> {
        self.expect(Verb::Prolongate, Reply::ProlongateAck).await
    }

    /// `invalidate`: every other connection bound to the same name gets `invalidated`.
    pub async fn invalidate(&self) -> Result<(), ClientError> {
        self.expect(Verb::Invalidate, Reply::InvalidateAck).await
    }

    /// `disconnect`: the server answers, then closes the connection; commands sent after
    /// it fail with [`ClientError::Closed`].
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.expect(Verb::Disconnect, Reply::DisconnectAck).await
    }

    /// Sends the argument-less `command` and checks that its reply is `expected`.
    async fn expect(&self, verb: Verb, expected: Reply) -> Result<(), ClientError> {
        match self.send(&[verb.word().as_bytes()]).await? {
            reply if reply == expected => Ok(()),
            reply => Err(ClientError::UnexpectedReply {
                command: verb.word(),
                reply,
            }),
        }
    }

    /// Queues the message made of `parts` (already checked) and awaits its reply.
    async fn send(&self, parts: &[&[u8]]) -> Result<Reply, ClientError> {
        let mut message = BytesMut::new();
        encode_message(parts, &mut message);
        let (caller, reply) = oneshot::channel();
        let request = Request {
            message: message.freeze(),
            waiting: Waiting::Caller(caller),
        };
        if self.requests.send(request).await.is_err() {
            return Err(self.end_reason());
        }
        reply.await.unwrap_or_else(|_| Err(self.end_reason()))
    }

    /// Why the connection ended ([`ClientError::Closed`] if it is not known).
    fn end_reason(&self) -> ClientError {
        lock(&self.shared)
            .ended
            .clone()
            .unwrap_or(ClientError::Closed)
    }
}

/// The writer task: takes commands in order, records their callers, writes them; sends a
/// keep-alive `prolongate` after `keep_alive` without commands. When every [`Client`] is
/// gone it closes the sending side; when the reader has ended it drops its half, which
/// closes the connection.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::Receiver<Request>,
    shared: Arc<Mutex<Shared>>,
    keep_alive: Option<Duration>,
    reader_ended: Arc<Notify>,
) {
    let mut batch = BytesMut::new();
    loop {
        let next = tokio::select! {
            biased;
            () = reader_ended.notified() => return,
            next = next_request(&mut queue, keep_alive) => next,
        };
        let Some(first) = next else { break };
        {
            let mut state = lock(&shared);
            admit(&mut state, first, &mut batch);
            while batch.len() < WRITE_BATCH_BYTES {
                match queue.try_recv() {
                    Ok(request) => admit(&mut state, request, &mut batch),
                    Err(_) => break,
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        if let Err(err) = writer.write_all(&batch).await {
            end(&shared, Some(ClientError::from(err)));
            return;
        }
        batch.clear();
    }
    let _ = writer.shutdown().await;
}

/// The next command from the queue, or a keep-alive `prolongate` if `keep_alive` passes
/// first; `None` once every [`Client`] is gone.
async fn next_request(
    queue: &mut mpsc::Receiver<Request>,
    keep_alive: Option<Duration>,
) -> Option<Request> {
    let Some(interval) = keep_alive else {
        return queue.recv().await;
    };
    match tokio::time::timeout(interval, queue.recv()).await {
        Ok(next) => next,
        Err(_) => Some(Request {
            message: Bytes::from_static(Verb::Prolongate.message()),
            waiting: Waiting::KeepAlive,
        }),
    }
}

/// Adds `request` to the batch and its caller to the FIFO, or fails the caller at once if
/// the connection has ended.
fn admit(state: &mut Shared, request: Request, batch: &mut BytesMut) {
    if let Some(reason) = &state.ended {
        if let Waiting::Caller(caller) = request.waiting {
            let _ = caller.send(Err(reason.clone()));
        }
        return;
    }
    state.waiting.push_back(request.waiting);
    batch.extend_from_slice(&request.message);
}

/// The reader task: splits the input into messages and hands each to its caller or to
/// the pushes, until the connection ends or the server breaks the protocol.
async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: R,
    shared: Arc<Mutex<Shared>>,
    pushes: mpsc::UnboundedSender<Result<Push, ClientError>>,
    max_message_bytes: usize,
    reader_ended: Arc<Notify>,
) {
    let mut decoder = MessageDecoder::new(max_message_bytes);
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let error = loop {
        if let Err(err) = dispatch_all(&mut decoder, &mut buf, &shared, &pushes) {
            break Some(ClientError::from(err));
        }
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 2 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => break None,
            Ok(_) => {}
            Err(err) => break Some(ClientError::from(err)),
        }
    };
    if let Some(err) = &error {
        let _ = pushes.send(Err(err.clone()));
    }
    end(&shared, error);
    reader_ended.notify_one();
}

/// Hands every whole message in `buf` to its caller or to the pushes.
fn dispatch_all(
    decoder: &mut MessageDecoder,
    buf: &mut BytesMut,
    shared: &Mutex<Shared>,
    pushes: &mpsc::UnboundedSender<Result<Push, ClientError>>,
) -> Result<(), ProtocolError> {
    while let Some(message) = decoder.decode(buf)? {
        match classify(&message)? {
            Incoming::Reply(reply) => match lock(shared).waiting.pop_front() {
                Some(Waiting::Caller(caller)) => {
                    let _ = caller.send(Ok(reply));
                }
                Some(Waiting::KeepAlive) => {}
                None => return Err(ProtocolError::ReplyWithoutCommand { reply }),
            },
            Incoming::Push(push) => {
                let _ = pushes.send(Ok(push));
            }
        }
    }
    Ok(())
}

/// Records that the connection ended (for `error`, or closed if `None`) and fails every
/// command still waiting.
fn end(shared: &Mutex<Shared>, error: Option<ClientError>) {
    let reason = error.unwrap_or(ClientError::Closed);
    let waiting = {
        let mut state = lock(shared);
        state.ended.get_or_insert(reason.clone());
        std::mem::take(&mut state.waiting)
    };
    for entry in waiting {
        if let Waiting::Caller(caller) = entry {
            let _ = caller.send(Err(reason.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::EventTime;
    use tokio::io::DuplexStream;

    /// The server's end of an in-memory connection.
    struct FakeServer {
        /// The stream the client's bytes arrive on.
        stream: DuplexStream,
        /// Bytes read and not yet split into messages.
        buf: BytesMut,
    }

    impl FakeServer {
        /// The next command the client sent, as text with US shown as `|`; `None` at the
        /// end of the client's sending side.
        async fn command(&mut self) -> Option<String> {
            let mut decoder = MessageDecoder::new(1024);
            loop {
                if let Some(message) = decoder.decode(&mut self.buf).expect("bounded") {
                    return Some(String::from_utf8_lossy(&message).replace('\u{1f}', "|"));
                }
                if self.stream.read_buf(&mut self.buf).await.expect("reads") == 0 {
                    return None;
                }
            }
        }

        /// Writes `bytes` to the client.
        async fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).await.expect("writes");
        }
    }

    fn connected(options: Options) -> (Client, Pushes, FakeServer) {
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let (client, pushes) = Client::from_stream(client_end, options);
        let server = FakeServer {
            stream: server_end,
            buf: BytesMut::new(),
        };
        (client, pushes, server)
    }

    #[tokio::test]
    async fn pipelined_commands_get_their_own_replies_and_pushes_go_aside() {
        let (client, mut pushes, mut server) = connected(Options::default());
        let server_side = tokio::spawn(async move {
            let mut commands = Vec::new();
            for _ in 0..3 {
                commands.push(server.command().await.expect("a command"));
            }
            server
                .send(b"invalidated\x1elogin_valid\x1eevent\x1f7\x1fhi\x1eprolongate_ack\x1e")
                .await;
            server.send(b"timeout\x1einvalidate_ack\x1e").await;
            (commands, server)
        });
        let (login, prolongate, invalidate) = tokio::join!(
            client.login("alice", "secret"),
            client.prolongate(),
            client.invalidate()
        );
        assert_eq!(login.expect("answered"), LoginOutcome::Valid);
        prolongate.expect("answered");
        invalidate.expect("answered");
        let (commands, _server) = server_side.await.expect("fake server ran");
        assert_eq!(commands, ["login|alice|secret", "prolongate", "invalidate"]);
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(pushes.recv().await.expect("a push").expect("no error"));
        }
        assert_eq!(
            seen,
            [
                Push::Invalidated,
                Push::Event {
                    time: EventTime::from_local_millis(7),
                    text: "hi".into()
                },
                Push::Timeout
            ]
        );
    }

    #[tokio::test]
    async fn a_reply_that_does_not_fit_its_command_is_an_unexpected_reply() {
        let (client, _pushes, mut server) = connected(Options::default());
        let server_side = tokio::spawn(async move {
            server.command().await;
            server.send(b"unknown_command\x1e").await;
            server
        });
        let outcome = client.logout().await;
        assert!(matches!(
            outcome,
            Err(ClientError::UnexpectedReply {
                command: "logout",
                reply: Reply::UnknownCommand
            })
        ));
        drop(server_side.await);
    }

    #[tokio::test]
    async fn a_reply_without_a_command_ends_the_connection_with_a_protocol_error() {
        let (client, mut pushes, mut server) = connected(Options::default());
        server.send(b"prolongate_ack\x1e").await;
        assert!(matches!(
            pushes.recv().await,
            Some(Err(ClientError::Protocol(
                ProtocolError::ReplyWithoutCommand {
                    reply: Reply::ProlongateAck
                }
            )))
        ));
        assert!(pushes.recv().await.is_none());
        assert!(matches!(
            client.prolongate().await,
            Err(ClientError::Protocol(_))
        ));
        // The client dropped its end: the server reads the end of the stream.
        assert_eq!(server.command().await, None);
    }

    #[tokio::test]
    async fn an_unknown_message_fails_the_waiting_command() {
        let (client, mut pushes, mut server) = connected(Options::default());
        let server_side = tokio::spawn(async move {
            server.command().await;
            server.send(b"hello\x1fworld\x1e").await;
            server
        });
        assert!(matches!(
            client.prolongate().await,
            Err(ClientError::Protocol(ProtocolError::UnknownMessage { excerpt }))
                if excerpt == "hello␟world"
        ));
        assert!(matches!(pushes.recv().await, Some(Err(_))));
        drop(server_side.await);
    }

    #[tokio::test]
    async fn a_message_over_the_limit_ends_the_connection_before_its_end_arrives() {
        let (_client, mut pushes, mut server) = connected(Options::default().max_message_bytes(16));
        server.send(b"event\x1f1\x1f0123456789").await;
        assert!(matches!(
            pushes.recv().await,
            Some(Err(ClientError::Protocol(ProtocolError::MessageTooLong {
                limit: 16
            })))
        ));
    }

    #[tokio::test]
    async fn the_end_of_the_stream_fails_waiting_commands_as_closed_and_ends_pushes() {
        let (client, mut pushes, mut server) = connected(Options::default());
        let server_side = tokio::spawn(async move {
            server.command().await;
            server.send(b"shutdown\x1e").await;
        });
        assert!(matches!(
            client.prolongate().await,
            Err(ClientError::Closed)
        ));
        server_side.await.expect("fake server ran");
        assert_eq!(
            pushes.recv().await.map(Result::ok),
            Some(Some(Push::Shutdown))
        );
        assert!(pushes.recv().await.is_none());
        assert!(matches!(
            client.invalidate().await,
            Err(ClientError::Closed)
        ));
    }

    #[tokio::test]
    async fn arguments_holding_separators_are_refused_before_sending() {
        let (client, _pushes, mut server) = connected(Options::default());
        assert!(matches!(
            client.login("al\x1fice", "pw").await,
            Err(ClientError::InvalidArgument { argument: "name" })
        ));
        assert!(matches!(
            client.login("alice", "p\x1ew").await,
            Err(ClientError::InvalidArgument {
                argument: "password"
            })
        ));
        drop(client);
        assert_eq!(server.command().await, None, "nothing was sent");
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_prolongates_a_quiet_connection_and_consumes_the_reply() {
        let (client, _pushes, mut server) =
            connected(Options::default().keep_alive(Duration::from_secs(60)));
        let started = tokio::time::Instant::now();
        assert_eq!(server.command().await.as_deref(), Some("prolongate"));
        assert!(started.elapsed() >= Duration::from_secs(60));
        server.send(b"prolongate_ack\x1e").await;
        let server_side = tokio::spawn(async move {
            assert_eq!(server.command().await.as_deref(), Some("logout"));
            server.send(b"logout_ack\x1e").await;
            server
        });
        client
            .logout()
            .await
            .expect("its own reply, not the keep-alive's");
        drop(server_side.await);
    }

    #[tokio::test]
    async fn dropping_every_client_closes_the_sending_side() {
        let (client, mut pushes, mut server) = connected(Options::default());
        let second = client.clone();
        drop(client);
        drop(second);
        assert_eq!(server.command().await, None);
        drop(server);
        assert!(pushes.recv().await.is_none());
    }
}
