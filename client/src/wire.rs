//! The framing of SPEC §1 as the client sees it: messages of parts separated by US (0x1F)
//! and terminated by RS (0x1E). The only module of this crate that knows the separator
//! bytes.
//!
//! The server's codec lives in `tether-actors`, which depends on actix; this one is the
//! client side's own, small and bounded, so that the client pulls in only tokio.

use crate::error::ProtocolError;
use bytes::{BufMut, Bytes, BytesMut};

/// Terminates every message (U+001E, RECORD SEPARATOR).
pub const RS: u8 = 0x1E;
/// Separates the parts of a message (U+001F, UNIT SEPARATOR).
pub const US: u8 = 0x1F;

/// Whether `bytes` may be sent as one part: it holds neither separator.
pub fn is_valid_part(bytes: &[u8]) -> bool {
    !bytes.iter().any(|&b| b == RS || b == US)
}

/// Appends the message made of `parts` (joined by US, terminated by RS) to `dst`.
///
/// The parts must hold no separator; check them with [`is_valid_part`] first, or the
/// message will not read back as the same parts.
pub fn encode_message(parts: &[&[u8]], dst: &mut BytesMut) {
    let length: usize = parts.iter().map(|part| part.len() + 1).sum();
    dst.reserve(length.max(1));
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            dst.put_u8(US);
        }
        dst.put_slice(part);
    }
    dst.put_u8(RS);
}

/// The message made of `parts`, ready to be written as is (see [`encode_message`]).
pub fn encoded_message(parts: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::new();
    encode_message(parts, &mut out);
    out.freeze()
}

/// The parts of `message` (a message without its terminator), in order. An empty message
/// has one empty part.
pub fn parts(message: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    message.split(|&b| b == US)
}

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
    /// holds one; the caller reads `buf[..length]`, then drops `length + 1` bytes.
    ///
    /// Fails as soon as the message at the front is longer than the limit, even before
    /// its terminator has arrived; the stream cannot be decoded any further then.
    pub fn next_message(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        // Looking past limit + 1 bytes is never needed to decide.
        let horizon = buf.len().min(self.max_message_bytes.saturating_add(1));
        match memchr::memchr(RS, &buf[self.scanned.min(horizon)..horizon]) {
            Some(offset) => {
                let length = self.scanned.min(horizon) + offset;
                self.scanned = 0;
                Ok(Some(length))
            }
            None if horizon > self.max_message_bytes => Err(ProtocolError::MessageTooLong {
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
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        Ok(self.next_message(buf)?.map(|length| {
            let mut message = buf.split_to(length + 1);
            message.truncate(length);
            message.freeze()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut MessageDecoder, buf: &mut BytesMut) -> Vec<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while let Some(message) = decoder.decode(buf).expect("decodes") {
            out.push(parts(&message).map(<[u8]>::to_vec).collect());
        }
        out
    }

    #[test]
    fn encoding_joins_parts_with_us_and_ends_with_rs() {
        assert_eq!(
            &encoded_message(&[b"login", b"alice", b""])[..],
            b"login\x1falice\x1f\x1e"
        );
        assert_eq!(&encoded_message(&[b"prolongate"])[..], b"prolongate\x1e");
    }

    #[test]
    fn messages_split_anywhere_decode_to_their_parts() {
        let stream = b"login_valid\x1eevent\x1f17\x1fhi \xc3\xbc\x1e\x1e";
        for cut in 0..stream.len() {
            let mut decoder = MessageDecoder::new(64);
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut messages = decode_all(&mut decoder, &mut buf);
            buf.extend_from_slice(&stream[cut..]);
            messages.extend(decode_all(&mut decoder, &mut buf));
            assert_eq!(
                messages,
                vec![
                    vec![b"login_valid".to_vec()],
                    vec![
                        b"event".to_vec(),
                        b"17".to_vec(),
                        "hi ü".as_bytes().to_vec()
                    ],
                    vec![Vec::new()],
                ],
                "cut at {cut}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn a_message_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not() {
        let mut decoder = MessageDecoder::new(4);
        let mut buf = BytesMut::from(&b"1234\x1e"[..]);
        assert_eq!(
            decode_all(&mut decoder, &mut buf),
            vec![vec![b"1234".to_vec()]]
        );
        let mut buf = BytesMut::from(&b"1234"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"5");
        assert_eq!(
            decoder.decode(&mut buf),
            Err(ProtocolError::MessageTooLong { limit: 4 })
        );
    }

    #[test]
    fn separators_make_a_part_invalid() {
        assert!(is_valid_part("ok ü".as_bytes()));
        assert!(is_valid_part(b""));
        assert!(!is_valid_part(b"a\x1eb"));
        assert!(!is_valid_part(b"a\x1fb"));
    }
}
