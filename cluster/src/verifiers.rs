//! Verifiers kept in Redis (SPEC §5, "Admission after a restart"): in a cluster every node
//! finds the verifier another node left, so a user moved by a rolling deploy is admitted
//! without bcrypt wherever they reconnect.
//!
//! One key per user, `{prefix}:verifier:{<hex of the name>}` (the braces are a Redis
//! Cluster hash tag: the key lives on the user's shard; every command here names one key), holding the 32-byte HMAC with a
//! TTL of `auth.verifier_ttl`: `GETEX … EX ttl` checks one and refreshes it, `SET … EX`
//! keeps one, `DEL` forgets one. Requests go to the broker's thread like everything else;
//! a check waits for its answer on the password-check thread that asked (bounded), and
//! anything but a verifier that matches — Redis unreachable, slow, or a missing key — is
//! "not held": the login pays bcrypt, it is never admitted on a guess.

use crate::names::Names;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_actors::auth::verifiers::{Tag, VerifierStore};

/// How long a password-check thread waits for Redis's answer before it runs bcrypt.
const CHECK_WAIT: Duration = Duration::from_secs(1);

/// What the broker's thread does with a verifier.
pub(crate) enum Op {
    /// Reads `user`'s verifier and refreshes its TTL; the bytes (or nothing) go to `answer`.
    Check {
        user: Arc<str>,
        ttl: Duration,
        answer: std::sync::mpsc::SyncSender<Option<Vec<u8>>>,
    },
    /// Keeps `tag` as `user`'s verifier for `ttl`.
    Keep {
        user: Arc<str>,
        tag: Tag,
        ttl: Duration,
    },
    /// Forgets `user`'s verifier.
    Forget { user: Arc<str> },
}

/// Said once per process: Redis refused the verifiers' commands.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// Where a check's answer goes: the verifier's bytes, or nothing.
pub(crate) type Check = std::sync::mpsc::SyncSender<Option<Vec<u8>>>;

/// The command of `op`, with the key it names (for a Redis Cluster's routing) and, for a
/// check, where its answer goes.
pub(crate) fn command(op: Op, names: &Names) -> (String, redis::Cmd, Option<Check>) {
    match op {
        Op::Check { user, ttl, answer } => {
            let key = names.verifier_key(&user);
            let mut cmd = redis::cmd("GETEX");
            cmd.arg(&key).arg("EX").arg(ttl.as_secs().max(1));
            (key, cmd, Some(answer))
        }
        Op::Keep { user, tag, ttl } => {
            let key = names.verifier_key(&user);
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key)
                .arg(&tag.as_bytes()[..])
                .arg("EX")
                .arg(ttl.as_secs().max(1));
            (key, cmd, None)
        }
        Op::Forget { user } => {
            let key = names.verifier_key(&user);
            let mut cmd = redis::cmd("DEL");
            cmd.arg(&key);
            (key, cmd, None)
        }
    }
}

/// Sends `ops` as one pipeline on `commands` and hands each check its answer. When the
/// pipeline fails its checks are dropped unanswered (their threads run bcrypt), and the
/// first failure is logged. A worker that does not run them drops them: every check is
/// then answered "not held". (Over a Redis Cluster the broker's thread puts the commands
/// of [`command`] into its batches instead, one pipeline per master.)
pub(crate) async fn run(
    ops: Vec<Op>,
    names: &Names,
    commands: &mut impl redis::aio::ConnectionLike,
) {
    let mut pipe = redis::pipe();
    let mut checks = Vec::new();
    for op in ops {
        let (_, cmd, check) = command(op, names);
        match check {
            Some(check) => {
                pipe.add_command(cmd);
                checks.push(check);
            }
            None => {
                pipe.add_command(cmd).ignore();
            }
        }
    }
    match crate::answer::bounded(pipe.query_async::<Vec<Option<Vec<u8>>>>(commands)).await {
        Ok(found) => {
            for (answer, found) in checks.into_iter().zip(found) {
                let _ = answer.send(found);
            }
        }
        Err(err) => {
            if !REFUSED.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "verifiers: Redis did not answer GETEX/SET/DEL ({err}); those logins paid bcrypt \
                     (verifiers need Redis 6.2 or later)"
                );
            }
        }
    }
}

/// How a [`RedisVerifiers`] hands an operation to the broker's thread (the thread's
/// request queue, which this module does not know).
pub(crate) type SendOp = Box<dyn Fn(Op) -> bool + Send + Sync>;

/// The verifiers of a cluster, kept in its Redis (see the module's comment).
pub struct RedisVerifiers {
    /// Hands an operation to the broker's thread; `false` once that thread is gone.
    send_op: SendOp,
    /// Whether the broker's thread is connected to Redis now.
    connected: Arc<AtomicBool>,
    /// How long an unused verifier is kept.
    ttl: Duration,
}

impl RedisVerifiers {
    pub(crate) fn new(send_op: SendOp, connected: Arc<AtomicBool>, ttl: Duration) -> Self {
        Self {
            send_op,
            connected,
            ttl,
        }
    }

    fn send(&self, op: Op) -> bool {
        self.connected.load(Ordering::Relaxed) && (self.send_op)(op)
    }
}

impl std::fmt::Debug for RedisVerifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisVerifiers")
            .field("connected", &self.connected)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl VerifierStore for RedisVerifiers {
    fn holds(&self, user: &str, tag: &Tag) -> bool {
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        let op = Op::Check {
            user: Arc::from(user),
            ttl: self.ttl,
            answer,
        };
        if !self.send(op) {
            return false;
        }
        match answered.recv_timeout(CHECK_WAIT) {
            Ok(Some(kept)) => tag.matches(&kept),
            _ => false,
        }
    }

    fn keep(&self, user: &str, tag: Tag) {
        self.send(Op::Keep {
            user: Arc::from(user),
            tag,
            ttl: self.ttl,
        });
    }

    fn forget(&self, user: &str) {
        // Dropped while Redis is unreachable: the stored hash is part of the verifier, so
        // it is useless after the change anyway, and its TTL ends it.
        self.send(Op::Forget {
            user: Arc::from(user),
        });
    }
}
