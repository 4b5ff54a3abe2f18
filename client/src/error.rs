//! What can go wrong talking to a server: the transport, the server breaking the protocol,
//! or a reply that does not fit the command.

use crate::message::Reply;
use std::fmt;
use std::sync::Arc;

/// Longest excerpt of an offending message kept in a [`ProtocolError`].
const EXCERPT_CHARS: usize = 80;

/// Why a command got no (fitting) reply, or why the connection ended.
#[derive(Debug, Clone)]
pub enum ClientError {
    /// Connecting, reading or writing failed. Shared, because every command waiting on the
    /// connection gets the same error.
    Io(Arc<std::io::Error>),
    /// The connection closed before the reply came (after `disconnect`, `timeout`,
    /// `shutdown`, `io_error`, or the server going away).
    Closed,
    /// The server sent something the protocol does not allow; the client closed the
    /// connection.
    Protocol(ProtocolError),
    /// The server answered a command with a reply that does not belong to it.
    UnexpectedReply {
        /// The command sent, such as `prolongate`.
        command: &'static str,
        /// What came back.
        reply: Reply,
    },
    /// An argument holds a separator byte (RS or US), so it cannot be sent as one part.
    InvalidArgument {
        /// Which argument, such as `password`.
        argument: &'static str,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(err) => write!(f, "connection error: {err}"),
            Self::Closed => f.write_str("the connection is closed"),
            Self::Protocol(err) => write!(f, "protocol violation by the server: {err}"),
            Self::UnexpectedReply { command, reply } => {
                write!(f, "the server answered `{command}` with `{reply}`")
            }
            Self::InvalidArgument { argument } => write!(
                f,
                "the {argument} holds a separator byte (RS or US) and cannot be sent"
            ),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(err) => Some(err.as_ref()),
            Self::Protocol(err) => Some(err),
            _ => None,
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(err: std::io::Error) -> Self {
        Self::Io(Arc::new(err))
    }
}

impl From<ProtocolError> for ClientError {
    fn from(err: ProtocolError) -> Self {
        Self::Protocol(err)
    }
}

/// How the server broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A message grew past the client's limit (terminator excluded, complete or not).
    MessageTooLong {
        /// The limit in force ([`crate::Options::max_message_bytes`]).
        limit: usize,
    },
    /// A message that is neither a reply nor a push.
    UnknownMessage {
        /// The message's start, separators shown as ␟, at most 80 characters.
        excerpt: String,
    },
    /// An `event` message whose parts are not `event␟<integer>␟<UTF-8 text>`.
    MalformedEvent {
        /// The message's start, separators shown as ␟, at most 80 characters.
        excerpt: String,
    },
    /// A reply arrived while no command was waiting for one.
    ReplyWithoutCommand {
        /// The reply.
        reply: Reply,
    },
}

impl ProtocolError {
    /// An [`ProtocolError::UnknownMessage`] for `message`.
    pub(crate) fn unknown_message(message: &[u8]) -> Self {
        Self::UnknownMessage {
            excerpt: excerpt(message),
        }
    }

    /// A [`ProtocolError::MalformedEvent`] for `message`.
    pub(crate) fn malformed_event(message: &[u8]) -> Self {
        Self::MalformedEvent {
            excerpt: excerpt(message),
        }
    }
}

impl From<tether_wire::DecodeError> for ProtocolError {
    fn from(err: tether_wire::DecodeError) -> Self {
        match err {
            tether_wire::DecodeError::MessageTooLong { limit } => Self::MessageTooLong { limit },
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MessageTooLong { limit } => write!(f, "a message longer than {limit} bytes"),
            Self::UnknownMessage { excerpt } => write!(f, "unknown message {excerpt:?}"),
            Self::MalformedEvent { excerpt } => write!(f, "malformed event {excerpt:?}"),
            Self::ReplyWithoutCommand { reply } => {
                write!(f, "reply `{reply}` while no command was waiting")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// The start of `message` as text, with the part separator spelled ␟.
fn excerpt(message: &[u8]) -> String {
    String::from_utf8_lossy(message)
        .chars()
        .take(EXCERPT_CHARS)
        .map(|c| {
            if c == char::from(tether_wire::US) {
                '␟'
            } else {
                c
            }
        })
        .collect()
}
