//! Redis key and channel names, and what travels on a user's channel. Every name starts
//! with the cluster's prefix and a colon; a user's name is written in hexadecimal, so any
//! name SPEC §5 allows makes a safe, distinct channel and key.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

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

    /// The part of every per-user key and channel that names the user (its hexadecimal
    /// name): one place, so a Redis Cluster hash tag added here tags them all.
    pub(crate) fn user_part(&self, user: &str) -> String {
        self.name_part(user.as_bytes())
    }

    /// [`Names::user_part`] of a name as a client sent it (any bytes): the same for a
    /// valid name.
    pub(crate) fn name_part(&self, name: &[u8]) -> String {
        hex_bytes(name)
    }

    /// An event id accepted for `user` in the last 5 minutes (SPEC §6), holding the time
    /// of the event first published with it: `{prefix}:id:{<user>}:{hex id}` — the user's
    /// part in braces, a Redis Cluster hash tag (harmless elsewhere), so the key lives on
    /// the user's shard.
    pub(crate) fn id_key(&self, user: &str, id: &str) -> String {
        format!(
            "{}:id:{{{}}}:{}",
            self.prefix,
            self.user_part(user),
            hex(id)
        )
    }

    /// The failed logins of `name` from `client` in the last minute (a sorted set of
    /// Redis ms): `{prefix}:throttle:{<name>}:{client}`, tagged with the name's part like
    /// the id keys.
    pub(crate) fn throttle_key(&self, client: IpAddr, name: &[u8]) -> String {
        format!(
            "{}:throttle:{{{}}}:{client}",
            self.prefix,
            self.name_part(name)
        )
    }

    /// The channel every node follows for the pairs the cluster throttles:
    /// `{prefix}:throttle`.
    pub(crate) fn throttle_channel(&self) -> String {
        format!("{}:throttle", self.prefix)
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

    /// Which run of a node holds this node's name (a token), for 10 s after its last
    /// heartbeat: `{prefix}:owner:{node}`.
    pub(crate) fn owner_key(&self) -> String {
        format!("{}:owner:{}", self.prefix, self.node)
    }

    /// The `SCAN` pattern of every user's presence hash over a Redis Cluster
    /// ([`Names::tagged`] `presence`), the prefix's glob characters escaped.
    pub(crate) fn presence_pattern(&self) -> String {
        let mut pattern = String::new();
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern + ":presence:{*"
    }

    /// [`Names::owner_key`] over a Redis Cluster: on the slot of [`Names::nodes_key`] (its
    /// name as a hash tag), so that one script claims the name and renews the node:
    /// `{{prefix}:nodes}:owner:{node}`.
    pub(crate) fn nodes_owner_key(&self) -> String {
        format!("{{{}}}:owner:{}", self.nodes_key(), self.node)
    }

    /// This node's connection counts, a hash of user name → count: `{prefix}:node:{node}`.
    pub(crate) fn own_node_key(&self) -> String {
        format!("{}{}", self.node_key_prefix(), self.node)
    }

    /// `user`'s verifier (SPEC §5): `{prefix}:verifier:{{hex}}`, the braces a Redis Cluster
    /// hash tag putting it on the user's shard.
    pub(crate) fn verifier_key(&self, user: &str) -> String {
        format!("{}:verifier:{{{}}}", self.prefix, hex(user))
    }
}

/// `text`'s bytes in lowercase hexadecimal.
fn hex(text: &str) -> String {
    hex_bytes(text.as_bytes())
}

/// `bytes` in lowercase hexadecimal.
fn hex_bytes(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// `hex`'s bytes back, `None` for anything that is not lowercase hexadecimal pairs.
fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect()
}

/// The separator of a payload's fields: U+001F, which no node name (checked), user name
/// (SPEC §5) or event text (SPEC §3) holds.
pub(crate) const SEPARATOR: char = tether_actors::protocol::codec::US as char;

/// An event on the wire: `E␟node␟user␟time␟text`.
pub(crate) fn event_payload(node: &str, user: &str, time: i64, text: &str) -> String {
    format!("E{SEPARATOR}{node}{SEPARATOR}{user}{SEPARATOR}{time}{SEPARATOR}{text}")
}

/// An invalidation on the wire: `I␟node␟user␟made` (Redis ms when it was made).
pub(crate) fn invalidation_payload(node: &str, user: &str, made: i64) -> String {
    format!("I{SEPARATOR}{node}{SEPARATOR}{user}{SEPARATOR}{made}")
}

/// A pair the cluster throttles, on the throttle channel: `T␟node␟client␟hex name␟ms`.
pub(crate) fn throttle_payload(node: &str, client: IpAddr, name: &[u8], for_: Duration) -> String {
    format!(
        "T{SEPARATOR}{node}{SEPARATOR}{client}{SEPARATOR}{}{SEPARATOR}{}",
        hex_bytes(name),
        for_.as_millis()
    )
}

/// What a node published on a user's channel (or the throttle channel).
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
    /// A pair throttled cluster-wide.
    Throttle {
        /// The node that found it at the limit.
        node: String,
        /// The client's address.
        client: IpAddr,
        /// The name as the client sent it.
        name: Vec<u8>,
        /// How long it stays throttled.
        remaining: Duration,
    },
    /// An invalidation.
    Invalidation {
        /// The invalidating node.
        node: String,
        /// The user.
        user: Arc<str>,
        /// When it was made (Redis ms), if it says (`None` from a node of an earlier
        /// version: then it ends every binding).
        made: Option<i64>,
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
            "T" => {
                let node = fields.next()?.to_owned();
                let client = fields.next()?.parse().ok()?;
                let name = from_hex(fields.next()?)?;
                let remaining = Duration::from_millis(fields.next()?.parse().ok()?);
                fields.next().is_none().then_some(Self::Throttle {
                    node,
                    client,
                    name,
                    remaining,
                })
            }
            "I" => {
                let node = fields.next()?.to_owned();
                let user = Arc::from(fields.next()?);
                let made = match fields.next() {
                    None => None,
                    Some(made) => Some(made.parse().ok()?),
                };
                fields
                    .next()
                    .is_none()
                    .then_some(Self::Invalidation { node, user, made })
            }
            _ => None,
        }
    }

    /// The node that published it.
    pub(crate) fn node(&self) -> &str {
        match self {
            Self::Event { node, .. }
            | Self::Invalidation { node, .. }
            | Self::Throttle { node, .. } => node,
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
        assert_eq!(names.id_key("al", "x"), "t:id:{616c}:78");
        assert_eq!(
            names.throttle_key([10, 0, 0, 1].into(), b"al"),
            "t:throttle:{616c}:10.0.0.1"
        );
        assert_eq!(names.owner_key(), "t:owner:n1");
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
        let invalidation = invalidation_payload("n2", "bob", 42);
        assert_eq!(
            Payload::parse(invalidation.as_bytes()),
            Some(Payload::Invalidation {
                node: "n2".into(),
                user: "bob".into(),
                made: Some(42)
            })
        );
        assert_eq!(
            Payload::parse("I\u{1f}n2\u{1f}bob".as_bytes()),
            Some(Payload::Invalidation {
                node: "n2".into(),
                user: "bob".into(),
                made: None
            })
        );
        for junk in [
            "",
            "E",
            "E\u{1f}n\u{1f}u\u{1f}x\u{1f}t",
            "X\u{1f}n\u{1f}u",
            "I\u{1f}n\u{1f}u\u{1f}soon",
            "I\u{1f}n\u{1f}u\u{1f}1\u{1f}2",
        ] {
            assert_eq!(Payload::parse(junk.as_bytes()), None, "{junk:?}");
        }
        assert_eq!(Payload::parse(&[0xff, 0xfe]), None);
        let throttle = throttle_payload(
            "n3",
            "::1".parse().expect("an address"),
            b"a\x1fb",
            Duration::from_millis(1500),
        );
        assert_eq!(
            Payload::parse(throttle.as_bytes()),
            Some(Payload::Throttle {
                node: "n3".into(),
                client: "::1".parse().expect("an address"),
                name: b"a\x1fb".to_vec(),
                remaining: Duration::from_millis(1500)
            })
        );
        for junk in [
            "T\u{1f}n\u{1f}nope\u{1f}61\u{1f}5",
            "T\u{1f}n\u{1f}::1\u{1f}6\u{1f}5",
        ] {
            assert_eq!(Payload::parse(junk.as_bytes()), None, "{junk:?}");
        }
    }
}
