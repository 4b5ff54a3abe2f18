//! The framing cost of tungstenite and fastwebsockets on the same frames, in memory (no
//! socket, no syscall), on the two paths tether's WebSocket connections take:
//!
//! - **encode** (server → client: replies and events): a batch of whole protocol messages
//!   becomes one unmasked text frame each, appended to one output buffer (what tether
//!   writes with one `send`). tungstenite: `FrameHeader::format` + the payload, as
//!   `WsStream::frame` does. fastwebsockets: `Frame::fmt_head` + the payload into the same
//!   kind of buffer; and its own per-frame path, `Frame::write` into its write buffer (what
//!   `WebSocket::write_frame` does before the one `write_all` it makes per frame, which is
//!   not counted here).
//! - **decode** (client → server: commands): masked binary frames, received 4 KiB per
//!   `recv`, each payload handed on into the input buffer. tungstenite as tether drives it
//!   (`WebSocketContext` with tether's config, fed from a 4 KiB staging buffer: its own read
//!   buffer 0 bytes as first shipped — it then reads 14 bytes at a time — and 256 bytes)
//!   and with its default config (its own 128 KiB read buffer);
//!   fastwebsockets `WebSocket::read_frame` polled with a no-op waker, its future on the
//!   stack, and boxed per read (what a poll-based driver holding it across wake-ups needs).
//!
//! Prints ns per frame for each, rounds alternating, and the medians.
//!   cargo run --release --manifest-path bench/ws-framing/Cargo.toml \
//!       --target-dir target/ws-framing -- [ROUNDS] [FRAMES]

use bytes::Bytes;
use std::future::Future;
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

/// One measured variant: its name and the function run (message or input, count, size).
type Side = (&'static str, fn(&[u8], usize, usize) -> f64);

/// Bytes a `recv` hands over at most (tether's read chunk).
const RECV: usize = 4096;

/// An event as tether pushes it (`event␟time␟text␞`, the bench's probe text).
const EVENT: &[u8] = b"event\x1f2026-12-07 14:52:01.123\x1f123456 1796655121123456789\x1e";
/// A reply to `prolongate`.
const ACK: &[u8] = b"prolongate_ack\x1e";
/// A command.
const PROLONGATE: &[u8] = b"prolongate\x1e";

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let frames: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    // (name, message, messages per write)
    let encodes: [(&str, &[u8], usize); 3] = [
        ("encode event, 1 per write (fanout)", EVENT, 1),
        ("encode event, 8 per write", EVENT, 8),
        ("encode ack, 16 per write (cmd 50x16)", ACK, 16),
    ];
    // (name, commands per frame)
    let decodes: [(&str, usize); 2] = [
        ("decode 1 command per frame", 1),
        ("decode 16 commands per frame (cmd 50x16)", 16),
    ];
    let mut results: Vec<(String, Vec<f64>)> = Vec::new();
    let mut record = |name: String, ns: f64| match results.iter_mut().find(|(n, _)| *n == name) {
        Some((_, all)) => all.push(ns),
        None => results.push((name, vec![ns])),
    };
    for round in 0..rounds {
        let flip = round % 2 == 1;
        for (name, message, batch) in encodes {
            let mut sides: Vec<Side> = vec![
                ("tungstenite FrameHeader::format", encode_tungstenite),
                ("fastwebsockets fmt_head", encode_fastwebsockets),
                (
                    "fastwebsockets Frame::write per frame",
                    encode_fastwebsockets_write,
                ),
            ];
            if flip {
                sides.reverse();
            }
            for (side, run) in sides {
                record(format!("{name} | {side}"), run(message, batch, frames));
            }
        }
        for (name, commands) in decodes {
            let payload = PROLONGATE.repeat(commands);
            let input = client_frames(&payload, frames / commands.max(1));
            let count = frames / commands.max(1);
            let mut sides: Vec<Side> = vec![
                (
                    "tungstenite, tether's first config (read buffer 0, payload kept)",
                    decode_tungstenite_tether,
                ),
                (
                    "tungstenite, tether's config (read buffer 256)",
                    decode_tungstenite_tether_256,
                ),
                ("tungstenite, default config", decode_tungstenite_default),
                (
                    "fastwebsockets, future on the stack",
                    decode_fastwebsockets_inline,
                ),
                (
                    "fastwebsockets, future boxed per read",
                    decode_fastwebsockets_boxed,
                ),
            ];
            if flip {
                sides.reverse();
            }
            for (side, run) in sides {
                record(
                    format!("{name} | {side}"),
                    run(&input, count, payload.len()),
                );
            }
        }
    }
    println!("ns per frame, {rounds} rounds (order reversed every other round), median first");
    for (name, mut all) in results {
        let rounds_text: Vec<String> = all.iter().map(|ns| format!("{ns:.1}")).collect();
        all.sort_by(f64::total_cmp);
        let median = all[all.len() / 2];
        println!("{name}: {median:.1}  [{}]", rounds_text.join(" "));
    }
}

/// `frames` masked binary client frames of `payload`, concatenated.
fn client_frames(payload: &[u8], frames: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut mask = 0x1234_5678u32;
    for _ in 0..frames {
        mask = mask.rotate_left(7) ^ 0x9e37_79b9;
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Binary),
            mask: Some(mask.to_ne_bytes()),
            ..FrameHeader::default()
        };
        Frame::from_payload(header, Bytes::copy_from_slice(payload))
            .format(&mut out)
            .unwrap();
    }
    out
}

/// Runs `frames` frames of `message` through `frame_one`, `batch` per output buffer: ns
/// per frame.
fn encode_with(
    message: &[u8],
    batch: usize,
    frames: usize,
    mut frame_one: impl FnMut(&[u8], &mut Vec<u8>),
) -> f64 {
    let mut out = Vec::with_capacity(16 * 1024);
    let writes = frames / batch;
    let started = Instant::now();
    for _ in 0..writes {
        out.clear();
        for _ in 0..batch {
            frame_one(black_box(message), &mut out);
        }
        black_box(&out);
    }
    started.elapsed().as_nanos() as f64 / (writes * batch) as f64
}

fn encode_tungstenite(message: &[u8], batch: usize, frames: usize) -> f64 {
    encode_with(message, batch, frames, |message, out| {
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        let _ = header.format(message.len() as u64, out);
        out.extend_from_slice(message);
    })
}

fn encode_fastwebsockets(message: &[u8], batch: usize, frames: usize) -> f64 {
    encode_with(message, batch, frames, |message, out| {
        let mut head = [0u8; 16];
        let mut frame = fastwebsockets::Frame::text(fastwebsockets::Payload::Borrowed(message));
        let length = frame.fmt_head(&mut head);
        out.extend_from_slice(&head[..length]);
        out.extend_from_slice(message);
    })
}

fn encode_fastwebsockets_write(message: &[u8], batch: usize, frames: usize) -> f64 {
    let mut write_buffer = Vec::with_capacity(2);
    encode_with(message, batch, frames, |message, _out| {
        let mut frame = fastwebsockets::Frame::text(fastwebsockets::Payload::Borrowed(message));
        // `write_frame` hands this slice to one `write_all`: one syscall per frame.
        black_box(frame.write(&mut write_buffer));
    })
}

/// The socket: hands out at most [`RECV`] bytes per read, then "would block" at the end.
struct Socket<'a> {
    data: &'a [u8],
    at: usize,
}

impl Socket<'_> {
    fn recv(&mut self, into: &mut [u8]) -> usize {
        let length = into.len().min(RECV).min(self.data.len() - self.at);
        into[..length].copy_from_slice(&self.data[self.at..self.at + length]);
        self.at += length;
        length
    }
}

/// tether's `Io`: tungstenite reads from a staging buffer refilled from the socket a
/// [`RECV`] at a time; writes (pongs, closes) go to a sink.
struct TetherIo<'a> {
    socket: Socket<'a>,
    raw: Vec<u8>,
    raw_at: usize,
}

impl Read for TetherIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.raw_at == self.raw.len() {
            self.raw.resize(RECV, 0);
            let got = self.socket.recv(&mut self.raw);
            self.raw.truncate(got);
            self.raw_at = 0;
            if got == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        let length = buf.len().min(self.raw.len() - self.raw_at);
        buf[..length].copy_from_slice(&self.raw[self.raw_at..self.raw_at + length]);
        self.raw_at += length;
        Ok(length)
    }
}

impl Write for TetherIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The plain socket as tungstenite's stream (default config: its own read buffer).
struct DirectIo<'a>(Socket<'a>);

impl Read for DirectIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.recv(buf) {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            got => Ok(got),
        }
    }
}

impl Write for DirectIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decodes `frames` frames; with `keep_previous`, each payload is held until the next frame
/// is read (as `WsStream` first did: its `unread` kept the handed-on `Bytes`, so tungstenite
/// could not reuse its buffer in place).
fn decode_tungstenite<S: Read + Write>(
    mut context: WebSocketContext,
    mut stream: S,
    frames: usize,
    payload: usize,
    keep_previous: bool,
) -> f64 {
    let mut input = Vec::with_capacity(RECV);
    let mut previous = Bytes::new();
    let started = Instant::now();
    for _ in 0..frames {
        match context.read(&mut stream) {
            Ok(Message::Binary(data)) => {
                input.extend_from_slice(&data);
                if keep_previous {
                    previous = data;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
        if input.len() >= RECV {
            black_box(&input);
            input.clear();
        }
    }
    let ns = started.elapsed().as_nanos() as f64 / frames as f64;
    black_box(previous);
    assert!(input.len() % payload == 0);
    ns
}

fn decode_tungstenite_tether(data: &[u8], frames: usize, payload: usize) -> f64 {
    decode_tungstenite_staged(data, frames, payload, 0, true)
}

fn decode_tungstenite_tether_256(data: &[u8], frames: usize, payload: usize) -> f64 {
    decode_tungstenite_staged(data, frames, payload, 256, false)
}

fn decode_tungstenite_staged(
    data: &[u8],
    frames: usize,
    payload: usize,
    read_buffer_size: usize,
    keep_previous: bool,
) -> f64 {
    // WsStream::new's configuration (before and after issue 25's benchmarks: its read
    // buffer 0, then 256 bytes).
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = read_buffer_size;
    config.write_buffer_size = 0;
    config.max_write_buffer_size = usize::MAX;
    config.max_frame_size = Some(64 * 1024);
    config.max_message_size = Some(64 * 1024);
    config.accept_unmasked_frames = false;
    let io = TetherIo {
        socket: Socket { data, at: 0 },
        raw: Vec::new(),
        raw_at: 0,
    };
    decode_tungstenite(
        WebSocketContext::new(Role::Server, Some(config)),
        io,
        frames,
        payload,
        keep_previous,
    )
}

fn decode_tungstenite_default(data: &[u8], frames: usize, payload: usize) -> f64 {
    let io = DirectIo(Socket { data, at: 0 });
    decode_tungstenite(
        WebSocketContext::new(Role::Server, None),
        io,
        frames,
        payload,
        false,
    )
}

/// The socket as fastwebsockets' stream.
struct AsyncSocket<'a>(Socket<'a>);

impl AsyncRead for AsyncSocket<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let length = buf.remaining().min(RECV).min(this.0.data.len() - this.0.at);
        if length == 0 {
            return Poll::Pending;
        }
        buf.put_slice(&this.0.data[this.0.at..this.0.at + length]);
        this.0.at += length;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for AsyncSocket<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn decode_fastwebsockets(data: &[u8], frames: usize, payload: usize, boxed: bool) -> f64 {
    let mut ws = fastwebsockets::WebSocket::after_handshake(
        AsyncSocket(Socket { data, at: 0 }),
        fastwebsockets::Role::Server,
    );
    ws.set_max_message_size(64 * 1024);
    let mut task = Context::from_waker(Waker::noop());
    let mut input = Vec::with_capacity(RECV);
    let started = Instant::now();
    for _ in 0..frames {
        let polled = if boxed {
            let mut read: Pin<Box<dyn Future<Output = _> + '_>> = Box::pin(ws.read_frame());
            match read.as_mut().poll(&mut task) {
                Poll::Ready(Ok(frame)) => {
                    input.extend_from_slice(&frame.payload);
                    true
                }
                _ => false,
            }
        } else {
            let mut read = std::pin::pin!(ws.read_frame());
            match read.as_mut().poll(&mut task) {
                Poll::Ready(Ok(frame)) => {
                    input.extend_from_slice(&frame.payload);
                    true
                }
                _ => false,
            }
        };
        assert!(polled, "a frame was not read at once");
        if input.len() >= RECV {
            black_box(&input);
            input.clear();
        }
    }
    let ns = started.elapsed().as_nanos() as f64 / frames as f64;
    assert!(input.len() % payload == 0);
    ns
}

fn decode_fastwebsockets_inline(data: &[u8], frames: usize, payload: usize) -> f64 {
    decode_fastwebsockets(data, frames, payload, false)
}

fn decode_fastwebsockets_boxed(data: &[u8], frames: usize, payload: usize) -> f64 {
    decode_fastwebsockets(data, frames, payload, true)
}
