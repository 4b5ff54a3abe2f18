//! The wire format of SPEC §1: messages of parts, parts separated by US (0x1F), messages
//! terminated by RS (0x1E). The only module that knows the separator bytes.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// Terminates every message (U+001E, RECORD SEPARATOR).
const RS: u8 = 0x1E;
/// Separates the parts of a message (U+001F, UNIT SEPARATOR).
const US: u8 = 0x1F;

/// Whether `bytes` may be sent as one part: it holds neither separator.
pub fn is_valid_part(bytes: &[u8]) -> bool {
    !bytes.iter().any(|&b| b == RS || b == US)
}

/// One message without its terminator; its parts are read with [`Frame::parts`].
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// The message's bytes, separators between parts included, terminator excluded.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
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

/// The parts of `message` (a message without its terminator), in order. An empty message
/// has one empty part.
pub fn parts(message: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    message.split(|&b| b == US)
}

/// Why the input stream could not be decoded.
#[derive(Debug)]
pub enum DecodeError {
    /// A message grew past the limit (counted without its terminator, complete or not).
    MessageTooLong {
        /// The limit in force.
        limit: usize,
    },
    /// Reading from the transport failed.
    Io(std::io::Error),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MessageTooLong { limit } => write!(f, "message longer than {limit} bytes"),
            Self::Io(err) => write!(f, "read error: {err}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<std::io::Error> for DecodeError {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err)
    }
}

/// Splits a byte stream into [`Frame`]s and writes messages, bounding message length.
#[derive(Debug, Clone)]
pub struct MessageCodec {
    /// Longest message accepted, terminator excluded.
    max_message_bytes: usize,
    /// How much of the buffer's head is known to hold no terminator, so a message arriving
    /// in many reads is scanned once.
    scanned: usize,
}

impl MessageCodec {
    /// A codec accepting messages up to `max_message_bytes` long (terminator excluded).
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            max_message_bytes,
            scanned: 0,
        }
    }

    /// Takes the next whole message off the front of `buf`, if it holds one.
    ///
    /// Fails once the message at the front is longer than the limit, even before its
    /// terminator has arrived; the caller must then stop decoding this stream.
    pub fn decode_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        Ok(self.next_message(buf)?.map(|length| {
            let mut message = buf.split_to(length + 1);
            message.truncate(length);
            Frame(message.freeze())
        }))
    }

    /// The length (terminator excluded) of the whole message at the front of `buf`, if it
    /// holds one; the caller reads `buf[..length]` and then drops `length + 1` bytes, the
    /// way [`MessageCodec::decode_frame`] does without copying or sharing the buffer.
    ///
    /// Fails once the message at the front is longer than the limit, even before its
    /// terminator has arrived; the caller must then stop decoding this stream.
    pub fn next_message(&mut self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        // Looking past limit + 1 bytes is never needed to decide.
        let horizon = buf.len().min(self.max_message_bytes + 1);
        match memchr::memchr(RS, &buf[self.scanned.min(horizon)..horizon]) {
            Some(offset) => {
                let length = self.scanned + offset;
                self.scanned = 0;
                Ok(Some(length))
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
}

/// Appends one message made of `parts` to `dst`. The parts must hold no separator
/// (see [`is_valid_part`]).
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
/// part's is the message's end).
pub fn encoded_length(parts: &[&[u8]]) -> usize {
    parts
        .iter()
        .map(|part| part.len() + 1)
        .sum::<usize>()
        .max(1)
}

/// One message made of `parts`, ready to be written as is. The parts must hold no
/// separator (see [`is_valid_part`]).
pub fn encoded_message(parts: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::new();
    encode_message(parts, &mut out);
    out.freeze()
}

/// Whether `written`, the bytes sent so far, ends at a message boundary.
pub fn ends_at_boundary(written: &[u8]) -> bool {
    written.last().is_none_or(|&b| b == RS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut MessageCodec, buf: &mut BytesMut) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        while let Some(frame) = codec.decode_frame(buf).expect("decodes") {
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
        let mut codec = MessageCodec::new(64);
        let mut buf =
            BytesMut::from(&b"login\x1falice\x1fsecret\x1eprolongate\x1e\x1e\x1fx\x1e"[..]);
        assert_eq!(
            decode_all(&mut codec, &mut buf),
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
    fn a_message_fed_byte_by_byte_decodes_once_complete() {
        let mut codec = MessageCodec::new(64);
        let mut buf = BytesMut::new();
        let input = "login\x1fАлиса\x1fпароль\x1e".as_bytes();
        let mut frames = Vec::new();
        for byte in input {
            buf.extend_from_slice(&[*byte]);
            if let Some(frame) = codec.decode_frame(&mut buf).expect("decodes") {
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
    fn a_message_of_exactly_the_limit_is_accepted() {
        let mut codec = MessageCodec::new(8);
        let mut buf = BytesMut::from(&b"12345678\x1e"[..]);
        assert_eq!(decode_all(&mut codec, &mut buf), vec![vec!["12345678"]]);
    }

    #[test]
    fn a_complete_message_over_the_limit_is_refused() {
        let mut codec = MessageCodec::new(8);
        let mut buf = BytesMut::from(&b"123456789\x1e"[..]);
        assert!(matches!(
            codec.decode_frame(&mut buf),
            Err(DecodeError::MessageTooLong { limit: 8 })
        ));
    }

    #[test]
    fn an_unterminated_message_over_the_limit_is_refused_before_its_end() {
        let mut codec = MessageCodec::new(8);
        let mut buf = BytesMut::from(&b"12345678"[..]);
        assert!(codec.decode_frame(&mut buf).expect("fits").is_none());
        buf.extend_from_slice(b"9");
        assert!(codec.decode_frame(&mut buf).is_err());
    }

    #[test]
    fn encoding_joins_parts_and_terminates() {
        assert_eq!(
            &encoded_message(&[b"event", b"17", b""])[..],
            b"event\x1f17\x1f\x1e"
        );
        assert_eq!(&encoded_message(&[b"timeout"])[..], b"timeout\x1e");
    }

    #[test]
    fn encode_then_decode_is_the_identity_for_valid_parts() {
        let parts: [&[u8]; 3] = [b"a", b"", "ü€".as_bytes()];
        let mut codec = MessageCodec::new(64);
        let mut buf = BytesMut::new();
        encode_message(&parts, &mut buf);
        let frame = codec
            .decode_frame(&mut buf)
            .expect("decodes")
            .expect("whole");
        assert_eq!(frame.parts().collect::<Vec<_>>(), parts.to_vec());
    }

    #[test]
    fn parts_with_separators_are_not_valid() {
        assert!(!is_valid_part(b"a\x1eb"));
        assert!(!is_valid_part(b"a\x1fb"));
        assert!(is_valid_part("ok ü".as_bytes()));
    }

    #[test]
    fn boundary_is_after_a_terminator_or_at_the_start() {
        assert!(ends_at_boundary(b""));
        assert!(ends_at_boundary(b"x\x1e"));
        assert!(!ends_at_boundary(b"x\x1fy"));
    }
}
