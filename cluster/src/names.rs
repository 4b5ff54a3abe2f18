//! Redis key and channel names, and what travels on a user's channel. Every name starts
//! with the cluster's prefix and a colon; a user's name is written in hexadecimal, so any
//! name SPEC §5 allows makes a safe, distinct channel and key.

use std::sync::Arc;

/// The names one node uses.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// `cluster.prefix`.
    prefix: String,
    /// This node's name.
    pub node: String,
}

impl Names {
    pub(crate) fn new(prefix: &str, node: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            node: node.to_owned(),
        }
    }

    /// The channel of `user`'s events and invalidations: `{prefix}:user:{hex}`.
    pub(crate) fn user_channel(&self, user: &str) -> String {
        format!("{}:user:{}", self.prefix, hex(user))
    }

    /// A per-user name that carries the user's hash tag, `{prefix}:{kind}:{{hex}}`, so that
    /// every key and channel of one user lands on the same shard of a Redis Cluster.
    pub(crate) fn tagged(&self, kind: &str, user: &str) -> String {
        format!("{}:{kind}:{{{}}}", self.prefix, hex(user))
    }

    /// When `user` was last invalidated (Redis milliseconds): `{prefix}:invalidated:{hex}`.
    pub(crate) fn invalidated_key(&self, user: &str) -> String {
        format!("{}:invalidated:{}", self.prefix, hex(user))
    }

    /// The sorted set of live nodes, scored by their last heartbeat: `{prefix}:nodes`.
    pub(crate) fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// What precedes a node's name in the key of its connection counts.
    pub(crate) fn node_key_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }

    /// This node's connection counts, a hash of user name → count: `{prefix}:node:{node}`.
    pub(crate) fn own_node_key(&self) -> String {
        format!("{}{}", self.node_key_prefix(), self.node)
    }
}

/// `text`'s bytes in lowercase hexadecimal.
fn hex(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len() * 2);
    for byte in text.bytes() {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// The separator of a payload's fields: U+001F, which no node name (checked), user name
/// (SPEC §5) or event text (SPEC §3) holds.
const SEPARATOR: char = '\u{1f}';

/// An event on the wire: `E␟node␟user␟time␟text`.
pub(crate) fn event_payload(node: &str, user: &str, time: i64, text: &str) -> String {
    format!("E{SEPARATOR}{node}{SEPARATOR}{user}{SEPARATOR}{time}{SEPARATOR}{text}")
}

/// An invalidation on the wire: `I␟node␟user`.
pub(crate) fn invalidation_payload(node: &str, user: &str) -> String {
    format!("I{SEPARATOR}{node}{SEPARATOR}{user}")
}

/// What a node published on a user's channel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Payload {
    /// An event.
    Event {
        /// The publishing node.
        node: String,
        /// The user.
        user: Arc<str>,
        /// Its time as the publishing node wrote it.
        time: i64,
        /// Its text.
        text: Arc<str>,
    },
    /// An invalidation.
    Invalidation {
        /// The invalidating node.
        node: String,
        /// The user.
        user: Arc<str>,
    },
}

impl Payload {
    /// Reads a payload; `None` for anything else (which a node ignores).
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.splitn(5, SEPARATOR);
        match fields.next()? {
            "E" => {
                let node = fields.next()?.to_owned();
                let user = Arc::from(fields.next()?);
                let time = fields.next()?.parse().ok()?;
                let text = Arc::from(fields.next()?);
                Some(Self::Event {
                    node,
                    user,
                    time,
                    text,
                })
            }
            "I" => {
                let node = fields.next()?.to_owned();
                let user = Arc::from(fields.next()?);
                fields
                    .next()
                    .is_none()
                    .then_some(Self::Invalidation { node, user })
            }
            _ => None,
        }
    }

    /// The node that published it.
    pub(crate) fn node(&self) -> &str {
        match self {
            Self::Event { node, .. } | Self::Invalidation { node, .. } => node,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_carry_the_prefix_and_differ_for_names_that_look_alike() {
        let names = Names::new("t", "n1");
        assert_eq!(names.user_channel("al"), "t:user:616c");
        assert_ne!(names.user_channel("a:b"), names.user_channel("a"));
        assert_eq!(names.user_channel("ü *?[]"), "t:user:c3bc202a3f5b5d");
        assert_eq!(names.own_node_key(), "t:node:n1");
        assert_eq!(names.tagged("user", "al"), "t:user:{616c}");
    }

    #[test]
    fn payloads_read_back_and_anything_else_is_refused() {
        let event = event_payload("n1", "al ice", 17, "hi there");
        assert_eq!(
            Payload::parse(event.as_bytes()),
            Some(Payload::Event {
                node: "n1".into(),
                user: "al ice".into(),
                time: 17,
                text: "hi there".into()
            })
        );
        let empty_text = event_payload("n1", "bob", -5, "");
        assert!(matches!(
            Payload::parse(empty_text.as_bytes()),
            Some(Payload::Event { time: -5, .. })
        ));
        let invalidation = invalidation_payload("n2", "bob");
        assert_eq!(
            Payload::parse(invalidation.as_bytes()),
            Some(Payload::Invalidation {
                node: "n2".into(),
                user: "bob".into()
            })
        );
        for junk in ["", "E", "E\u{1f}n\u{1f}u\u{1f}x\u{1f}t", "X\u{1f}n\u{1f}u"] {
            assert_eq!(Payload::parse(junk.as_bytes()), None, "{junk:?}");
        }
        assert_eq!(Payload::parse(&[0xff, 0xfe]), None);
    }
}
