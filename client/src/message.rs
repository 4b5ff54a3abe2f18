//! What the server sends (SPEC §2–§3): one-part replies to commands, and the messages it
//! pushes on its own — events and notifications.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use std::fmt;
use tether_wire::Reply as OnePart;

/// The reply to a command: a one-part message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reply {
    /// `login_valid`: the connection is bound to the name.
    LoginValid,
    /// `login_invalid`: no such user, a wrong password, a throttled or malformed login.
    LoginInvalid,
    /// `logout_ack`: the connection is bound to no name.
    LogoutAck,
    /// `disconnect_ack`: the server closes the connection after this reply.
    DisconnectAck,
    /// `prolongate_ack`: the inactivity timer was reset.
    ProlongateAck,
    /// `invalidate_ack`: the other connections bound to the same name were invalidated.
    InvalidateAck,
    /// `unknown_command`: the first part named no command.
    UnknownCommand,
    /// `invalid_args_count`: a known command with the wrong number of arguments.
    InvalidArgsCount,
}

impl Reply {
    /// Every reply, for look-ups by name.
    pub(crate) const ALL: [Reply; 8] = [
        Reply::LoginValid,
        Reply::LoginInvalid,
        Reply::LogoutAck,
        Reply::DisconnectAck,
        Reply::ProlongateAck,
        Reply::InvalidateAck,
        Reply::UnknownCommand,
        Reply::InvalidArgsCount,
    ];

    /// The reply as it is sent on the wire, such as `login_valid`.
    pub fn as_str(self) -> &'static str {
        self.on_wire().name()
    }

    /// The same reply among all the server's one-part messages.
    fn on_wire(self) -> OnePart {
        match self {
            Self::LoginValid => OnePart::LoginValid,
            Self::LoginInvalid => OnePart::LoginInvalid,
            Self::LogoutAck => OnePart::LogoutAck,
            Self::DisconnectAck => OnePart::DisconnectAck,
            Self::ProlongateAck => OnePart::ProlongateAck,
            Self::InvalidateAck => OnePart::InvalidateAck,
            Self::UnknownCommand => OnePart::UnknownCommand,
            Self::InvalidArgsCount => OnePart::InvalidArgsCount,
        }
    }

    /// The reply whose wire form is `bytes`, if there is one (exact, case-sensitive).
    pub fn from_wire(bytes: &[u8]) -> Option<Reply> {
        Self::ALL
            .into_iter()
            .find(|reply| reply.as_str().as_bytes() == bytes)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message the server sends on its own, not as a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// `event␟<time>␟<text>`: an event published for the user this connection is bound to.
    Event {
        /// When the server registered the event.
        time: EventTime,
        /// The event's text.
        text: String,
    },
    /// `invalidated`: the connection's binding was revoked; it stays open, bound to no name.
    Invalidated,
    /// `timeout`: the inactivity timeout expired; the server closes the connection.
    Timeout,
    /// `io_error`: the server hit an error on this connection; it closes the connection.
    IoError,
    /// `shutdown`: the server is stopping; it closes the connection.
    Shutdown,
}

impl fmt::Display for Push {
    /// The push as one line: the notification's wire name, or `event <time> <text>` with
    /// the time as the server sent it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let notification = match self {
            Self::Event { time, text } => return write!(f, "event {} {text}", time.local_millis()),
            Self::Invalidated => OnePart::Invalidated,
            Self::Timeout => OnePart::Timeout,
            Self::IoError => OnePart::IoError,
            Self::Shutdown => OnePart::Shutdown,
        };
        f.write_str(notification.name())
    }
}

/// The time of an event as the server writes it (SPEC §3): milliseconds since
/// 1970-01-01T00:00:00 of the wall clock in the server's `events.time_zone`, read as if
/// that wall clock were UTC. Turning it into an instant needs that zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime {
    /// The number as sent.
    local_millis: i64,
}

impl EventTime {
    /// The event time the server writes as `local_millis`.
    pub fn from_local_millis(local_millis: i64) -> Self {
        Self { local_millis }
    }

    /// The number as the server sent it.
    pub fn local_millis(self) -> i64 {
        self.local_millis
    }

    /// The wall-clock date and time in the server's zone, as the number encodes it.
    ///
    /// Fails only for numbers outside the range of dates jiff supports.
    pub fn local_datetime(self) -> Result<DateTime, jiff::Error> {
        let as_if_utc = Timestamp::from_millisecond(self.local_millis)?;
        Ok(TimeZone::UTC.to_datetime(as_if_utc))
    }

    /// The instant of the event, given `server_zone`, the server's `events.time_zone`.
    ///
    /// In the hour that repeats when the zone's clocks go back, a wall-clock time names
    /// two instants; this gives the earlier one.
    pub fn to_timestamp(self, server_zone: &TimeZone) -> Result<Timestamp, jiff::Error> {
        server_zone
            .to_ambiguous_timestamp(self.local_datetime()?)
            .compatible()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_turns_into_its_utc_instant_given_the_zone() {
        let time = EventTime::from_local_millis(1_795_743_186_123);
        let moscow = TimeZone::get("Europe/Moscow").expect("zone known");
        let expected: Timestamp = "2026-11-26T22:33:06.123Z".parse().expect("valid");
        assert_eq!(time.to_timestamp(&moscow).expect("in range"), expected);
        assert_eq!(
            time.local_datetime().expect("in range").to_string(),
            "2026-11-27T01:33:06.123"
        );
        let utc = EventTime::from_local_millis(1_795_732_386_123);
        assert_eq!(
            utc.to_timestamp(&TimeZone::UTC).expect("in range"),
            expected
        );
    }
}
