//! Password checks off the event loops: a fixed set of threads running bcrypt, fed through
//! a bounded queue, so a burst of logins never stalls an arbiter.

use crate::users::PasswordHash;
use std::sync::{Arc, Mutex};
use std::thread;
use tokio::sync::{mpsc, oneshot};

/// One password to compare with one hash.
struct Check {
    /// The password as the client sent it.
    password: Vec<u8>,
    /// The stored bcrypt hash (or the stand-in for an unknown user).
    hash: PasswordHash,
    /// Where the verdict goes.
    verdict: oneshot::Sender<bool>,
}

/// A bounded pool of threads that run bcrypt.
///
/// Cloning shares the pool; the threads end when the last clone is dropped.
#[derive(Clone)]
pub struct PasswordChecker {
    /// The queue of pending checks; its capacity bounds the memory a login burst can take.
    queue: mpsc::Sender<Check>,
}

impl PasswordChecker {
    /// Starts `threads` checker threads behind a queue holding at most `queue_capacity`
    /// pending checks.
    pub fn start(threads: usize, queue_capacity: usize) -> std::io::Result<Self> {
        let (queue, receiver) = mpsc::channel(queue_capacity.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads.max(1) {
            let receiver = Arc::clone(&receiver);
            thread::Builder::new()
                .name(format!("tether-bcrypt-{index}"))
                .spawn(move || run_checks(&receiver))?;
        }
        Ok(Self { queue })
    }

    /// Whether `password` matches `hash`. Waits while the queue is full; a malformed hash
    /// or a stopped pool counts as no match.
    pub fn check(
        &self,
        password: Vec<u8>,
        hash: PasswordHash,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let queue = self.queue.clone();
        async move {
            let (verdict, answer) = oneshot::channel();
            let check = Check {
                password,
                hash,
                verdict,
            };
            if queue.send(check).await.is_err() {
                return false;
            }
            answer.await.unwrap_or(false)
        }
    }
}

/// Runs checks until every sender is gone.
fn run_checks(receiver: &Mutex<mpsc::Receiver<Check>>) {
    loop {
        let next = match receiver.lock() {
            Ok(mut receiver) => receiver.blocking_recv(),
            Err(_) => None,
        };
        let Some(check) = next else { return };
        let matches = bcrypt::verify(&check.password, &check.hash).unwrap_or(false);
        // The connection may be gone; then nobody needs the verdict.
        let _ = check.verdict.send(matches);
    }
}

/// A hash of the given cost that matches no password a client can send (it holds a
/// separator), checked for unknown users so that they take as long as a wrong password.
pub fn stand_in_hash(cost: u32) -> Result<PasswordHash, bcrypt::BcryptError> {
    Ok(PasswordHash::from(bcrypt::hash(
        "\u{1e}tether stand-in\u{1f}",
        cost,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn checks_match_only_the_right_password() {
        let checker = PasswordChecker::start(2, 4).expect("threads start");
        let hash = PasswordHash::from(bcrypt::hash("secret", 4).expect("hashes"));
        assert!(checker.check(b"secret".to_vec(), hash.clone()).await);
        assert!(!checker.check(b"wrong".to_vec(), hash).await);
        assert!(
            !checker
                .check(b"x".to_vec(), PasswordHash::from("not a hash"))
                .await
        );
    }

    #[actix_rt::test]
    async fn the_stand_in_hash_matches_no_valid_password() {
        let checker = PasswordChecker::start(1, 1).expect("threads start");
        let hash = stand_in_hash(4).expect("hashes");
        assert!(!checker.check(b"tether stand-in".to_vec(), hash).await);
    }
}
