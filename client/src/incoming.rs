//! Sorting what the server sends: each message becomes a reply to the oldest waiting
//! command or a push ([`classify`]), or breaks the protocol.

use crate::error::ProtocolError;
use crate::framing::{parts, OnePart, EVENT};
use crate::message::{EventTime, Push, Reply};

/// A message from the server, sorted into a reply or a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// The reply to the oldest command still waiting for one.
    Reply(Reply),
    /// A message the server sent on its own.
    Push(Push),
}

/// Reads one message (without its terminator) from the server.
pub(crate) fn classify(message: &[u8]) -> Result<Incoming, ProtocolError> {
    let mut fields = parts(message);
    let kind = fields.next().unwrap_or_default();
    let rest: Vec<&[u8]> = fields.collect();
    if rest.is_empty() {
        if let Some(reply) = Reply::from_wire(kind) {
            return Ok(Incoming::Reply(reply));
        }
        let push = match OnePart::from_name(kind) {
            Some(OnePart::Invalidated) => Push::Invalidated,
            Some(OnePart::Timeout) => Push::Timeout,
            Some(OnePart::IoError) => Push::IoError,
            Some(OnePart::Shutdown) => Push::Shutdown,
            _ => return Err(ProtocolError::unknown_message(message)),
        };
        return Ok(Incoming::Push(push));
    }
    match (kind, rest.as_slice()) {
        (word, [time, text]) if word == EVENT.as_bytes() => {
            let time = std::str::from_utf8(time)
                .ok()
                .and_then(|time| time.parse::<i64>().ok())
                .ok_or_else(|| ProtocolError::malformed_event(message))?;
            let text = std::str::from_utf8(text)
                .map_err(|_| ProtocolError::malformed_event(message))?
                .to_owned();
            Ok(Incoming::Push(Push::Event {
                time: EventTime::from_local_millis(time),
                text,
            }))
        }
        (word, _) if word == EVENT.as_bytes() => Err(ProtocolError::malformed_event(message)),
        _ => Err(ProtocolError::unknown_message(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reply_reads_back_from_its_wire_name() {
        for reply in Reply::ALL {
            assert_eq!(
                classify(reply.as_str().as_bytes()),
                Ok(Incoming::Reply(reply))
            );
        }
        assert_eq!(Reply::from_wire(b"LOGIN_VALID"), None);
    }

    #[test]
    fn notifications_and_events_are_pushes() {
        assert_eq!(
            classify(b"invalidated"),
            Ok(Incoming::Push(Push::Invalidated))
        );
        assert_eq!(classify(b"shutdown"), Ok(Incoming::Push(Push::Shutdown)));
        assert_eq!(
            classify("event\x1f1795743186123\x1fhello ü".as_bytes()),
            Ok(Incoming::Push(Push::Event {
                time: EventTime::from_local_millis(1_795_743_186_123),
                text: "hello ü".into()
            }))
        );
        assert_eq!(
            classify(b"event\x1f5\x1f"),
            Ok(Incoming::Push(Push::Event {
                time: EventTime::from_local_millis(5),
                text: String::new()
            }))
        );
    }

    #[test]
    fn anything_else_is_a_protocol_violation() {
        for message in [
            &b"hello"[..],
            b"",
            b"login_valid\x1fx",
            b"event\x1f12",
            b"event\x1fnoon\x1ftext",
            b"event\x1f1\x1f\xff",
            b"event\x1f1\x1fa\x1fb",
        ] {
            assert!(classify(message).is_err(), "{message:?}");
        }
    }
}
