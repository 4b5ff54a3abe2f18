//! The framing of SPEC §1 as the client sees it: messages of parts separated by US (0x1F)
//! and terminated by RS (0x1E), from the `tether-wire` crate the server uses too (it
//! pulls in neither actix nor tokio). [`MessageDecoder`] reports a message over the limit
//! as this crate's [`ProtocolError`].

use crate::error::ProtocolError;
use bytes::{Bytes, BytesMut};
/// The server's one-part messages with their words and encoded forms (the client's
/// [`Reply`](crate::Reply) sorts them into replies and pushes).
pub use tether_wire::Reply as OnePart;
pub use tether_wire::{encode_message, encoded_message, is_valid_part, parts, Verb, EVENT, RS, US};

/// Splits a byte stream into messages, refusing any longer than a limit.
#[derive(Debug, Clone)]
pub struct MessageDecoder(tether_wire::MessageDecoder);

impl MessageDecoder {
    /// A decoder accepting messages up to `max_message_bytes` long (terminator excluded).
    pub fn new(max_message_bytes: usize) -> Self {
        Self(tether_wire::MessageDecoder::new(max_message_bytes))
    }

    /// The length (terminator excluded) of the whole message at the front of `buf`, if it
    /// holds one; the caller reads `buf[..length]`, then drops `length + 1` bytes.
    ///
    /// Fails as soon as the message at the front is longer than the limit, even before
    /// its terminator has arrived; the stream cannot be decoded any further then.
    pub fn next_message(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        Ok(self.0.next_message(buf)?)
    }

    /// Takes the next whole message (terminator dropped) off the front of `buf`, if it
    /// holds one. Fails like [`MessageDecoder::next_message`].
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        Ok(self
            .0
            .decode_frame(buf)?
            .map(tether_wire::Frame::into_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_over_the_limit_is_the_clients_protocol_error() {
        let mut decoder = MessageDecoder::new(4);
        let mut buf = BytesMut::from(&b"1234\x1e12345"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Bytes::from_static(b"1234")))
        );
        assert_eq!(
            decoder.decode(&mut buf),
            Err(ProtocolError::MessageTooLong { limit: 4 })
        );
    }
}
