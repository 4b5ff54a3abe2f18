//! [`WsStream`]: the protocol's byte stream inside RFC 6455 WebSocket frames (SPEC §11),
//! behind the same [`Stream`] the transport reads and writes for TCP and TLS, so the
//! session and the transport — the protocol, its limits and output bounds — are the ones
//! every connection has. Only the bytes differ:
//!
//! - **In:** the payloads of the client's text and binary frames, in order, are the input
//!   stream. The frame rules (masking, control frames, fragments, UTF-8 of text, sizes)
//!   are tungstenite's `WebSocketContext`; a frame or message whose header claims more than
//!   `max_message_bytes` and its terminator is refused from the header (close `1009`),
//!   invalid UTF-8 gets `1007`, any other violation `1002`. Pings are answered with pongs
//!   (in the order they come, between the server's frames) and are no input; a close frame
//!   from the client ends the input as a TCP FIN does.
//! - **Out:** the transport hands over whole messages (its output only ever holds whole
//!   ones); each becomes one text frame. Framed bytes not yet taken by the socket are held
//!   here (`frames`); messages are framed only once that is empty, and at most
//!   [`FRAME_CHUNK`] at a time, so the unsent output stays in the transport, counted
//!   against `max_pending_bytes` and `max_pending_total` as on TCP. Pongs wait in `frames`
//!   too: while it holds more than [`FRAME_CHUNK`] no more input is read, so a ping flood
//!   is answered at the pace the client reads.
//! - **Close:** the connection closes its sending side through `poll_shutdown`, which
//!   sends the close frame first — code 1000, or what [`Stream::set_close_code`] set
//!   (1001 at shutdown), or the violation's code.

use super::client_stream::ClientStream;
use super::transport::Stream;
use crate::util::buffers::{self, Spare};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tether_wire::RS;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, FrameHeader, Utf8Bytes};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 4096;
/// tungstenite's own read buffer, and the most it copies from `raw` per read: a frame of
/// 16 commands fits (`cmd` 50×16).
const CONTEXT_READ_BUFFER: usize = 256;
/// Framed output held beyond which no more messages are framed and no more input is read.
pub(crate) const FRAME_CHUNK: usize = 16 * 1024;

/// Close code: normal closure.
pub(crate) const CLOSE_NORMAL: u16 = 1000;
/// Close code: the server is going away (shutdown).
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;

/// A client broke the WebSocket protocol: the close code it gets, and why.
#[derive(Debug, Clone)]
pub struct WsViolation {
    /// 1002 (protocol error), 1007 (invalid UTF-8) or 1009 (too big).
    pub code: u16,
    /// What was wrong, for the log.
    pub detail: String,
}

impl fmt::Display for WsViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WebSocket protocol violation ({}): {}",
            self.code, self.detail
        )
    }
}

impl std::error::Error for WsViolation {}

impl WsViolation {
    /// The violation `err` carries, if it is one.
    pub(crate) fn of(err: &io::Error) -> Option<&Self> {
        err.get_ref()
            .and_then(|inner| inner.downcast_ref::<WsViolation>())
    }
}

/// Where the read side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadSide {
    /// Frames are decoded.
    Open,
    /// The client sent a close frame: the input has ended (reads answer end of input).
    PeerClosed,
    /// The client broke the protocol or the input ended: what still comes is read raw and
    /// discarded (a closing connection's linger).
    Raw,
}

/// The protocol over WebSocket frames on a plain or TLS stream.
pub struct WsStream {
    /// The socket (plain TCP or TLS).
    inner: ClientStream,
    /// tungstenite's frame protocol state (its reads go through [`Io`]).
    context: WebSocketContext,
    /// Bytes read from the socket that tungstenite has not taken yet; holds no memory
    /// while empty.
    raw: BytesMut,
    /// Data payload not yet handed to the transport.
    unread: Bytes,
    /// Framed output (data, pongs, close) not yet taken by the socket; whole frames only.
    frames: BytesMut,
    /// Where the read side is.
    read_side: ReadSide,
    /// The close frame's code.
    close_code: u16,
    /// The close frame is queued: nothing more is framed.
    close_sent: bool,
    /// The client broke the protocol: the close code is the violation's.
    violated: bool,
    /// A violation found after data was handed on, answered by the next read.
    deferred: Option<WsViolation>,
    /// The last read took every byte the socket had (it answered "would block"): until the
    /// socket is readable again there is nothing to decode, so a wake-up for output costs
    /// no `recv`.
    drained: bool,
}

impl WsStream {
    /// A WebSocket over `inner` whose upgrade is done; `early` holds bytes the client sent
    /// after its request, already read. Frames and messages longer than `max_payload`
    /// are refused from their header.
    pub(crate) fn new(inner: ClientStream, early: &[u8], max_payload: usize) -> Self {
        let mut config = WebSocketConfig::default();
        // The context's read buffer: small, as every connection holds it while idle, and
        // what it asks of `Io` per read (with 0 it asked 14 bytes at a time, a copy and a
        // call per 14 bytes of payload: 2.5× the cost per 16-command frame, BENCHMARKS.md).
        // It grows to the frame being read and no more. Its writes go straight to `frames`
        // (see `Io`).
        config.read_buffer_size = CONTEXT_READ_BUFFER;
        config.write_buffer_size = 0;
        config.max_write_buffer_size = usize::MAX;
        config.max_frame_size = Some(max_payload);
        config.max_message_size = Some(max_payload);
        config.accept_unmasked_frames = false;
        let mut raw = BytesMut::new();
        if !early.is_empty() {
            buffers::reserve(&mut raw, early.len(), Spare::Input);
            raw.extend_from_slice(early);
        }
        Self {
            inner,
            context: WebSocketContext::new(Role::Server, Some(config)),
            raw,
            unread: Bytes::new(),
            frames: BytesMut::new(),
            read_side: ReadSide::Open,
            close_code: CLOSE_NORMAL,
            close_sent: false,
            violated: false,
            deferred: None,
            drained: false,
        }
    }

    /// Whether the frames travel inside TLS (`wss`).
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.inner, ClientStream::Tls(_))
    }

    /// The adapter tungstenite reads and writes through, for `task`.
    fn io<'a, 'b>(
        &'a mut self,
        task: &'a mut Context<'b>,
    ) -> (&'a mut WebSocketContext, Io<'a, 'b>) {
        let io = Io {
            inner: &mut self.inner,
            raw: &mut self.raw,
            frames: &mut self.frames,
            discard: self.close_sent,
            task,
        };
        (&mut self.context, io)
    }

    /// Writes `frames` until it is empty (ready) or the socket takes no more (pending).
    fn poll_write_frames(&mut self, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.frames.is_empty() {
            match Pin::new(&mut self.inner).poll_write(task, &self.frames) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(written)) if written < self.frames.len() => {
                    self.frames.advance(written);
                }
                Poll::Ready(Ok(_)) => {
                    self.frames.clear();
                    buffers::release(&mut self.frames, Spare::Frames);
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Frames the whole messages at the start of `buf` (up to [`FRAME_CHUNK`]) once the
    /// frames before them are written, and writes what the socket takes: the bytes of
    /// `buf` framed.
    fn write_messages(&mut self, task: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.close_sent {
            // After the close frame nothing may follow: what the transport still writes
            // (a best-effort `io_error`) is dropped.
            return Poll::Ready(Ok(buf.len()));
        }
        std::task::ready!(self.poll_write_frames(task))?;
        let mut taken = 0;
        while taken < buf.len() && self.frames.len() < FRAME_CHUNK {
            let rest = &buf[taken..];
            let end = memchr::memchr(RS, rest).map_or(rest.len(), |at| at + 1);
            self.frame(OpCode::Data(Data::Text), &rest[..end]);
            taken += end;
        }
        // What the socket does not take now goes with the next write or flush, which
        // registers the waker.
        if let Poll::Ready(Err(err)) = self.poll_write_frames(task) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(taken))
    }

    /// Appends one unmasked, final frame of `payload` to `frames`.
    fn frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        let length = payload.len() as u64;
        buffers::reserve(
            &mut self.frames,
            header.len(length) + payload.len(),
            Spare::Frames,
        );
        // Writing into memory cannot fail.
        let _ = header.format(length, &mut (&mut self.frames).writer());
        self.frames.extend_from_slice(payload);
    }

    /// Queues the close frame (once): tungstenite's, so its state knows it was sent (or
    /// the echo of the client's, when the client closed first).
    fn queue_close(&mut self, task: &mut Context<'_>) {
        if self.close_sent {
            return;
        }
        let code = CloseCode::from(self.close_code);
        let (context, mut io) = self.io(task);
        let _ = context.close(
            &mut io,
            Some(CloseFrame {
                code,
                reason: Utf8Bytes::default(),
            }),
        );
        self.close_sent = true;
    }

    /// Refuses the input for the protocol error `err`: the read side goes raw and the close
    /// frame will carry its code (1009 too big, 1007 not UTF-8, 1002 anything else).
    fn violated(&mut self, err: WsError) -> WsViolation {
        let (code, detail) = match err {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => (
                1009,
                format!("frame or message of {size} bytes, over {max_size}"),
            ),
            WsError::Capacity(err) => (1009, err.to_string()),
            WsError::Utf8(err) => (1007, format!("text frame not UTF-8: {err}")),
            err => (1002, err.to_string()),
        };
        self.read_side = ReadSide::Raw;
        self.drop_input();
        self.close_code = code;
        self.violated = true;
        WsViolation { code, detail }
    }

    /// Forgets the input not yet handed on.
    fn drop_input(&mut self) {
        self.unread = Bytes::new();
        self.raw.clear();
        buffers::release(&mut self.raw, Spare::Input);
    }

    /// Hands `unread` on into `buf`, as much as fits.
    fn hand_on(&mut self, buf: &mut ReadBuf<'_>) {
        let length = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread[..length]);
        self.unread.advance(length);
        if self.unread.is_empty() {
            // Let go of the payload's memory, which is tungstenite's read buffer: held, it
            // would make tungstenite allocate a new buffer for the next frame.
            self.unread = Bytes::new();
        }
    }

    /// Reads frames into `buf` until it is full or no frame is complete: ready once some
    /// data is in `buf` (or the input ended), pending when none came. What ends the input
    /// after some data (a close frame, a violation) is answered by the next read.
    fn poll_frames(
        &mut self,
        task: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.drained = false;
        let mut got_data = false;
        loop {
            if let Some(violation) = self.deferred.take() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, violation)));
            }
            if got_data && (buf.remaining() == 0 || self.read_side != ReadSide::Open) {
                return Poll::Ready(Ok(()));
            }
            if self.frames.len() > FRAME_CHUNK {
                // Pongs (and output) the client has not taken: read on at its pace.
                match self.poll_write_frames(task) {
                    Poll::Ready(Ok(())) => {}
                    _ if got_data => return Poll::Ready(Ok(())),
                    other => return other,
                }
            }
            let (context, mut io) = self.io(task);
            let payload: Bytes = match context.read(&mut io) {
                Ok(Message::Text(text)) => text.into(),
                Ok(Message::Binary(data)) => data,
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(_)) => {
                    // Like a FIN: the replies to what came before still go out, then the
                    // close frame (the echo tungstenite holds).
                    self.read_side = ReadSide::PeerClosed;
                    self.drop_input();
                    return Poll::Ready(Ok(()));
                }
                Err(WsError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.drained = self.raw.is_empty();
                    // A pong queued meanwhile goes out now if the socket takes it.
                    if let Poll::Ready(Err(err)) = self.poll_write_frames(task) {
                        return Poll::Ready(Err(err));
                    }
                    return if got_data {
                        Poll::Ready(Ok(()))
                    } else {
                        Poll::Pending
                    };
                }
                Err(WsError::Io(err)) => return Poll::Ready(Err(err)),
                Err(
                    WsError::ConnectionClosed
                    | WsError::AlreadyClosed
                    | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                ) => {
                    // The TCP connection ended without a close frame: the client left.
                    self.read_side = ReadSide::Raw;
                    self.drop_input();
                    return Poll::Ready(Ok(()));
                }
                Err(err) => {
                    let violation = self.violated(err);
                    if got_data {
                        self.deferred = Some(violation);
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, violation)));
                }
            };
            if payload.is_empty() {
                continue;
            }
            got_data = true;
            self.unread = payload;
            self.hand_on(buf);
            if !self.unread.is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// What tungstenite reads from and writes to: reads come from `raw`, refilled from the
/// socket a chunk at a time (tungstenite asks for a header's 14 bytes at a time); writes
/// (pongs, the close frame) are appended whole to `frames`, which the stream writes
/// between its own frames.
struct Io<'a, 'b> {
    inner: &'a mut ClientStream,
    raw: &'a mut BytesMut,
    frames: &'a mut BytesMut,
    /// The close frame was sent: nothing more is written.
    discard: bool,
    task: &'a mut Context<'b>,
}

impl Read for Io<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.raw.is_empty() {
            buffers::reserve(self.raw, READ_CHUNK, Spare::Input);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *self.inner), self.task, self.raw) {
                Poll::Pending => {
                    buffers::release(self.raw, Spare::Input);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Poll::Ready(Ok(0)) => {
                    buffers::release(self.raw, Spare::Input);
                    return Ok(0);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => {
                    self.raw.clear();
                    buffers::release(self.raw, Spare::Input);
                    return Err(err);
                }
            }
        }
        let length = buf.len().min(self.raw.len());
        buf[..length].copy_from_slice(&self.raw[..length]);
        if length == self.raw.len() {
            self.raw.clear();
            buffers::release(self.raw, Spare::Input);
        } else {
            self.raw.advance(length);
        }
        Ok(length)
    }
}

impl Write for Io<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.discard {
            buffers::reserve(self.frames, buf.len(), Spare::Frames);
            self.frames.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for WsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        task: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            this.hand_on(buf);
            return Poll::Ready(Ok(()));
        }
        match this.read_side {
            _ if this.deferred.is_some() => this.poll_frames(task, buf),
            ReadSide::Open => this.poll_frames(task, buf),
            ReadSide::PeerClosed => Poll::Ready(Ok(())),
            // Discarded by the closing transport.
            ReadSide::Raw => Pin::new(&mut this.inner).poll_read(task, buf),
        }
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        task: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_messages(task, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_write_frames(task))?;
        Pin::new(&mut this.inner).poll_flush(task)
    }

    fn poll_shutdown(self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.queue_close(task);
        std::task::ready!(this.poll_write_frames(task))?;
        Pin::new(&mut this.inner).poll_shutdown(task)
    }
}

impl Stream for WsStream {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut task = Context::from_waker(Waker::noop());
        match self.write_messages(&mut task, buf) {
            Poll::Ready(Ok(0)) if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn poll_read_ready(&self, task: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.drained
            && self.unread.is_empty()
            && self.deferred.is_none()
            && self.read_side == ReadSide::Open
        {
            // Everything read was decoded: only the socket can bring more.
            self.inner.poll_read_ready(task)
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn set_close_code(&mut self, code: u16) {
        if !self.violated {
            self.close_code = code;
        }
    }

    fn close_now(&mut self) {
        let mut task = Context::from_waker(Waker::noop());
        self.queue_close(&mut task);
        let _ = self.poll_write_frames(&mut task);
    }
}
