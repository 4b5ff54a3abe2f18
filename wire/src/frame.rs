//! Framing (SPEC §1): bytes ↔ messages of parts, bounded in length.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// Terminates every message (U+001E, RECORD SEPARATOR).
pub const RS: u8 = 0x1E;
/// Separates the parts of a message (U+001F, UNIT SEPARATOR).
pub const US: u8 = 0x1F;

/// Whether `bytes` may be sent as one part: it holds neither separator.
#[inline]
pub fn is_valid_part(bytes: &[u8]) -> bool {
    !bytes.iter().any(|&b| b == RS || b == US)
}

/// The parts of `message` (a message without its terminator), in order. An empty message
/// has one empty part.
#[inline]
pub fn parts(message: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    message.split(|&b| b == US)
}

/// Appends the message made of `parts` (joined by US, terminated by RS) to `dst`.
///
/// The parts must hold no separator; check them with [`is_valid_part`] first, or the
/// message will not read back as the same parts.
#[inline]
pub fn encode_message(parts: &[&[u8]], dst: &mut BytesMut) {
    dst.reserve(encoded_length(parts));
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            dst.put_u8(US);
        }
        dst.put_slice(part);
    }
    dst.put_u8(RS);
}

/// The length of the message made of `parts`: each part and its separator (the last
/// part's is the message's end). Inline, as [`encode_message`], which calls it.
#[inline]
pub fn encoded_length(parts: &[&[u8]]) -> usize {
    parts
        .iter()
        .map(|part| part.len() + 1)
        .sum::<usize>()
        .max(1)
}

/// The message made of `parts`, ready to be written as is (see [`encode_message`]).
pub fn encoded_message(parts: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::new();
    encode_message(parts, &mut out);
    out.freeze()
}

/// Whether `written`, the bytes sent so far, ends at a message boundary.
#[inline]
pub fn ends_at_boundary(written: &[u8]) -> bool {
    written.last().is_none_or(|&b| b == RS)
}

/// One message without its terminator; its parts are read with [`Frame::parts`].
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// The message's bytes, separators between parts included, terminator excluded.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The message's bytes, as [`Frame::as_bytes`], owned.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The parts of the message, in order. An empty message has one empty part.
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> + '_ {
        parts(&self.0)
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.parts().map(String::from_utf8_lossy))
            .finish()
    }
}

/// Why a byte stream could not be split into messages; the stream cannot be decoded any
/// further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A message grew past the limit (counted without its terminator, complete or not).
    MessageTooLong {
        /// The limit in force.
        limit: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MessageTooLong { limit } => write!(f, "message longer than {limit} bytes"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Splits a byte stream into messages, refusing any longer than a limit.
#[derive(Debug, Clone)]
pub struct MessageDecoder {
    /// Longest message accepted, terminator excluded.
    max_message_bytes: usize,
    /// How much of the buffer's head is known to hold no terminator, so a message arriving
    /// in many reads is scanned once.
    scanned: usize,
}

impl MessageDecoder {
    /// A decoder accepting messages up to `max_message_bytes` long (terminator excluded).
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            max_message_bytes,
            scanned: 0,
        }
    }

    /// The length (terminator excluded) of the whole message at the front of `buf`, if it
    /// holds one; the caller reads `buf[..length]` and then drops `length + 1` bytes, the
    /// way [`MessageDecoder::decode_frame`] does without copying or sharing the buffer.
    ///
    /// Fails as soon as the message at the front is longer than the limit, even before
    /// its terminator has arrived; the caller must then stop decoding this stream.
    #[inline]
    pub fn next_message(&mut self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        // Looking past limit + 1 bytes is never needed to decide.
        let horizon = buf.len().min(self.max_message_bytes.saturating_add(1));
        let start = self.scanned.min(horizon);
        match memchr::memchr(RS, &buf[start..horizon]) {
            Some(offset) => {
                self.scanned = 0;
                Ok(Some(start + offset))
            }
            None if horizon > self.max_message_bytes => Err(DecodeError::MessageTooLong {
                limit: self.max_message_bytes,
            }),
            None => {
                self.scanned = horizon;
                Ok(None)
            }
        }
    }

    /// Takes the next whole message (terminator dropped) off the front of `buf`, if it
    /// holds one. Fails like [`MessageDecoder::next_message`].
    pub fn decode_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        Ok(self.next_message(buf)?.map(|length| {
            let mut message = buf.split_to(length + 1);
            message.truncate(length);
            Frame(message.freeze())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut MessageDecoder, buf: &mut BytesMut) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        while let Some(frame) = decoder.decode_frame(buf).expect("decodes") {
            out.push(
                frame
                    .parts()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect(),
            );
        }
        out
    }

    #[test]
    fn splits_several_messages_in_one_buffer_into_parts() {
        let mut decoder = MessageDecoder::new(64);
        let mut buf =
            BytesMut::from(&b"login\x1falice\x1fsecret\x1eprolongate\x1e\x1e\x1fx\x1e"[..]);
        assert_eq!(
            decode_all(&mut decoder, &mut buf),
            vec![
                vec!["login", "alice", "secret"],
                vec!["prolongate"],
                vec![""],
                vec!["", "x"],
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn messages_split_anywhere_decode_to_their_parts() {
        let stream = "login_valid\x1eevent\x1f17\x1fhi ü\x1e\x1e".as_bytes();
        for cut in 0..stream.len() {
            let mut decoder = MessageDecoder::new(64);
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut messages = decode_all(&mut decoder, &mut buf);
            buf.extend_from_slice(&stream[cut..]);
            messages.extend(decode_all(&mut decoder, &mut buf));
            assert_eq!(
                messages,
                vec![vec!["login_valid"], vec!["event", "17", "hi ü"], vec![""]],
                "cut at {cut}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn a_message_fed_byte_by_byte_decodes_once_complete() {
        let mut decoder = MessageDecoder::new(64);
        let mut buf = BytesMut::new();
        let input = "login\x1fАлиса\x1fпароль\x1e".as_bytes();
        let mut frames = Vec::new();
        for byte in input {
            buf.extend_from_slice(&[*byte]);
            if let Some(frame) = decoder.decode_frame(&mut buf).expect("decodes") {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 1);
        let parts: Vec<&[u8]> = frames[0].parts().collect();
        assert_eq!(
            parts,
            vec![&b"login"[..], "Алиса".as_bytes(), "пароль".as_bytes()]
        );
    }

    #[test]
    fn a_message_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not() {
        let mut decoder = MessageDecoder::new(8);
        let mut buf = BytesMut::from(&b"12345678\x1e"[..]);
        assert_eq!(decode_all(&mut decoder, &mut buf), vec![vec!["12345678"]]);
        let mut buf = BytesMut::from(&b"123456789\x1e"[..]);
        assert_eq!(
            decoder.decode_frame(&mut buf),
            Err(DecodeError::MessageTooLong { limit: 8 })
        );
    }

    #[test]
    fn an_unterminated_message_over_the_limit_is_refused_before_its_end() {
        let mut decoder = MessageDecoder::new(8);
        let mut buf = BytesMut::from(&b"12345678"[..]);
        assert_eq!(decoder.decode_frame(&mut buf), Ok(None));
        buf.extend_from_slice(b"9");
        assert_eq!(
            decoder.decode_frame(&mut buf),
            Err(DecodeError::MessageTooLong { limit: 8 })
        );
    }

    #[test]
    fn the_largest_limit_does_not_overflow() {
        let mut decoder = MessageDecoder::new(usize::MAX);
        let mut buf = BytesMut::from(&b"x\x1e"[..]);
        assert_eq!(decode_all(&mut decoder, &mut buf), vec![vec!["x"]]);
    }

    #[test]
    fn encoding_joins_parts_with_us_and_ends_with_rs() {
        assert_eq!(
            &encoded_message(&[b"login", b"alice", b""])[..],
            b"login\x1falice\x1f\x1e"
        );
        assert_eq!(&encoded_message(&[b"timeout"])[..], b"timeout\x1e");
    }

    #[test]
    fn encode_then_decode_is_the_identity_for_valid_parts() {
        let parts: [&[u8]; 3] = [b"a", b"", "ü€".as_bytes()];
        let mut decoder = MessageDecoder::new(64);
        let mut buf = BytesMut::new();
        encode_message(&parts, &mut buf);
        let frame = decoder
            .decode_frame(&mut buf)
            .expect("decodes")
            .expect("whole");
        assert_eq!(frame.parts().collect::<Vec<_>>(), parts.to_vec());
        assert_eq!(&frame.clone().into_bytes()[..], frame.as_bytes());
        assert_eq!(format!("{frame:?}"), r#"["a", "", "ü€"]"#);
    }

    #[test]
    fn separators_make_a_part_invalid() {
        assert!(is_valid_part("ok ü".as_bytes()));
        assert!(is_valid_part(b""));
        assert!(!is_valid_part(b"a\x1eb"));
        assert!(!is_valid_part(b"a\x1fb"));
    }

    #[test]
    fn boundary_is_after_a_terminator_or_at_the_start() {
        assert!(ends_at_boundary(b""));
        assert!(ends_at_boundary(b"x\x1e"));
        assert!(!ends_at_boundary(b"x\x1fy"));
    }
}
