//! The client side of the protocols spoken: tether's (SPEC §1–§3), whose framing comes
//! from the `tether-client` crate, and the little of Redis that the anchors need (inline
//! `PING`, `SUBSCRIBE`, `PUBLISH`).
//!
//! The measuring loops write pipelined requests and match fixed replies byte by byte
//! instead of going through `tether_client::Client`, whose per-command channel and task
//! hops would become part of what is measured; the bytes they match are checked against
//! the crate's encoding in the tests below.

use crate::Fallible;
use clap::ValueEnum;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use tether_client::framing::OnePart;
pub use tether_client::framing::{parts, Verb, EVENT, RS};
/// Longest single reply waited for before it counts as garbage.
const MAX_REPLY: usize = 64 * 1024;

/// Which server a scenario talks to, and so which protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// tether: `login`, `prolongate`, events pushed after a login.
    Tether,
    /// `tether-bench serve-raw`: tether framing, every message answered `prolongate_ack`.
    Raw,
    /// redis-server: inline `PING`, pub/sub.
    Redis,
}

impl Proto {
    /// The name used in tables and JSON.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tether => "tether",
            Self::Raw => "serve-raw",
            Self::Redis => "redis",
        }
    }

    /// The cheapest command: `prolongate` or `PING`.
    pub fn request(self) -> &'static [u8] {
        match self {
            Self::Tether | Self::Raw => Verb::Prolongate.message(),
            Self::Redis => b"PING\r\n",
        }
    }

    /// The reply to [`Proto::request`], terminator included.
    pub fn reply(self) -> &'static [u8] {
        match self {
            Self::Tether | Self::Raw => OnePart::ProlongateAck.message(),
            Self::Redis => b"+PONG\r\n",
        }
    }

    /// What a connection sends to become "logged in", and the reply it must get:
    /// a real login for tether, the same bytes for serve-raw (answered like any message),
    /// a `PING` for Redis, which has no sessions.
    pub fn login(self, user: &str, password: &str) -> (Vec<u8>, &'static [u8]) {
        match self {
            Self::Tether => (login_message(user, password), OnePart::LoginValid.message()),
            Self::Raw => (
                login_message(user, password),
                OnePart::ProlongateAck.message(),
            ),
            Self::Redis => (b"PING\r\n".to_vec(), b"+PONG\r\n"),
        }
    }
}

/// `login␟user␟password␞`.
pub fn login_message(user: &str, password: &str) -> Vec<u8> {
    tether_client::framing::encoded_message(&[
        Verb::Login.word().as_bytes(),
        user.as_bytes(),
        password.as_bytes(),
    ])
    .to_vec()
}

/// Sends `request` and reads exactly `expected.len()` bytes, which must equal `expected`.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    expected: &[u8],
) -> Fallible<()> {
    stream
        .write_all(request)
        .await
        .map_err(|err| format!("write failed: {err}"))?;
    stream
        .flush()
        .await
        .map_err(|err| format!("write failed: {err}"))?;
    let mut reply = vec![0; expected.len()];
    stream
        .read_exact(&mut reply)
        .await
        .map_err(|err| format!("no reply ({err})"))?;
    if reply != expected {
        return Err(format!(
            "expected {:?}, got {:?}",
            printable(expected),
            printable(&reply)
        ));
    }
    Ok(())
}

/// Checks a stream of fixed replies as it arrives in arbitrary pieces and counts them.
#[derive(Debug)]
pub struct ReplyMatcher {
    /// The reply every message must be.
    pattern: &'static [u8],
    /// How many bytes of the current reply have arrived.
    position: usize,
}

impl ReplyMatcher {
    /// A matcher for a stream made only of `pattern`.
    pub fn new(pattern: &'static [u8]) -> Self {
        Self {
            pattern,
            position: 0,
        }
    }

    /// Consumes `bytes`; returns how many replies they completed.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Fallible<usize> {
        let mut complete = 0;
        if self.position > 0 {
            let take = (self.pattern.len() - self.position).min(bytes.len());
            self.check(&bytes[..take], self.position)?;
            self.position += take;
            bytes = &bytes[take..];
            if self.position == self.pattern.len() {
                self.position = 0;
                complete += 1;
            }
        }
        let mut whole = bytes.chunks_exact(self.pattern.len());
        for chunk in whole.by_ref() {
            self.check(chunk, 0)?;
            complete += 1;
        }
        let rest = whole.remainder();
        self.check(rest, 0)?;
        self.position += rest.len();
        Ok(complete)
    }

    fn check(&self, bytes: &[u8], from: usize) -> Fallible<()> {
        if bytes == &self.pattern[from..from + bytes.len()] {
            Ok(())
        } else {
            Err(format!(
                "unexpected reply bytes {:?} (expected only {:?})",
                printable(bytes),
                printable(self.pattern)
            ))
        }
    }
}

/// Splits a stream of messages (tether's, or Redis's lines), carrying partial ones across
/// reads.
#[derive(Debug)]
pub struct MessageSplitter {
    /// The byte that ends a message: RS, or `\n` for Redis.
    terminator: u8,
    /// Bytes of a message whose terminator has not arrived yet.
    partial: Vec<u8>,
}

impl MessageSplitter {
    /// A splitter of messages ending in `terminator`.
    pub fn new(terminator: u8) -> Self {
        Self {
            terminator,
            partial: Vec::new(),
        }
    }

    /// Calls `each` with every complete message in `bytes` (terminator excluded).
    pub fn feed(
        &mut self,
        bytes: &[u8],
        mut each: impl FnMut(&[u8]) -> Fallible<()>,
    ) -> Fallible<()> {
        let mut rest = bytes;
        while let Some(end) = memchr::memchr(self.terminator, rest) {
            if self.partial.is_empty() {
                each(&rest[..end])?;
            } else {
                self.partial.extend_from_slice(&rest[..end]);
                let message = std::mem::take(&mut self.partial);
                each(&message)?;
            }
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > MAX_REPLY {
            return Err(format!("a message longer than {MAX_REPLY} bytes arrived"));
        }
        Ok(())
    }
}

/// Parses the text of an event sent by the fan-out scenario: `"<seq> <intended ns>"`.
pub fn parse_probe(text: &[u8]) -> Fallible<(u64, u64)> {
    let text = std::str::from_utf8(text).map_err(|_| "event text is not UTF-8".to_string())?;
    let (seq, sent) = text
        .split_once(' ')
        .ok_or_else(|| format!("event text {text:?} is not \"<seq> <ns>\""))?;
    let seq = seq
        .parse()
        .map_err(|_| format!("bad sequence number in {text:?}"))?;
    let sent = sent
        .parse()
        .map_err(|_| format!("bad timestamp in {text:?}"))?;
    Ok((seq, sent))
}

/// Bytes shown with separators spelled out, for error messages.
pub fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace(char::from(RS), "␞")
        .replace(char::from(tether_client::framing::US), "␟")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_client::framing::encoded_message;
    use tether_client::Reply;

    /// A one-part message as the client crate encodes it.
    fn message(part: &str) -> Vec<u8> {
        encoded_message(&[part.as_bytes()]).to_vec()
    }

    #[test]
    fn fixed_tether_bytes_are_what_the_client_crate_encodes() {
        for proto in [Proto::Tether, Proto::Raw] {
            assert_eq!(proto.request(), message("prolongate"));
            assert_eq!(proto.reply(), message(Reply::ProlongateAck.as_str()));
        }
        assert_eq!(
            Proto::Tether.login("u", "p"),
            (
                b"login\x1fu\x1fp\x1e".to_vec(),
                &message(Reply::LoginValid.as_str())[..]
            )
        );
    }

    #[test]
    fn matcher_counts_replies_split_anywhere() {
        let stream = b"prolongate_ack\x1eprolongate_ack\x1eprolongate_ack\x1e";
        for cut in 0..stream.len() {
            let mut matcher = ReplyMatcher::new(Proto::Tether.reply());
            let first = matcher.feed(&stream[..cut]).unwrap();
            let second = matcher.feed(&stream[cut..]).unwrap();
            assert_eq!(first + second, 3, "cut at {cut}");
        }
    }

    #[test]
    fn matcher_rejects_other_replies() {
        let mut matcher = ReplyMatcher::new(Proto::Tether.reply());
        assert!(matcher.feed(b"timeout\x1e").is_err());
    }

    #[test]
    fn splitter_joins_partial_messages() {
        let mut splitter = MessageSplitter::new(RS);
        let mut seen = Vec::new();
        for piece in [&b"event\x1f1\x1f0 5\x1eev"[..], b"ent\x1f2\x1f1 6\x1e"] {
            splitter
                .feed(piece, |message| {
                    seen.push(message.to_vec());
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(
            seen,
            vec![b"event\x1f1\x1f0 5".to_vec(), b"event\x1f2\x1f1 6".to_vec()]
        );
    }

    #[test]
    fn probe_text_round_trips() {
        assert_eq!(parse_probe(b"17 123456").unwrap(), (17, 123456));
        assert!(parse_probe(b"17").is_err());
    }
}
