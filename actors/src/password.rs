//! Password checks off the event loops: a fixed set of threads running bcrypt, fed through
//! a bounded queue, so a burst of logins never stalls an arbiter.

use crate::metrics::Metrics;
use crate::users::PasswordHash;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// The most of a password bcrypt looks at; later bytes change no verdict.
const BCRYPT_READS_BYTES: usize = 72;

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
    /// Queue depth and check durations.
    metrics: Metrics,
}

impl PasswordChecker {
    /// Starts `threads` checker threads behind a queue holding at most `queue_capacity`
    /// pending checks.
    pub fn start(threads: usize, queue_capacity: usize, metrics: Metrics) -> std::io::Result<Self> {
        let (queue, receiver) = mpsc::channel(queue_capacity.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads.max(1) {
            let receiver = Arc::clone(&receiver);
            let metrics = metrics.clone();
            thread::Builder::new()
                .name(format!("tether-bcrypt-{index}"))
                .spawn(move || run_checks(&receiver, &metrics))?;
        }
        Ok(Self { queue, metrics })
    }

    /// Whether `password` matches `hash`. Waits while the queue is full; a malformed hash
    /// or a stopped pool counts as no match.
    pub fn check(
        &self,
        password: Vec<u8>,
        hash: PasswordHash,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        // bcrypt reads at most 72 bytes; more, held in the queue, would only take memory.
        let mut password = password;
        password.truncate(BCRYPT_READS_BYTES);
        password.shrink_to_fit();
        let queue = self.queue.clone();
        let metrics = self.metrics.clone();
        async move {
            let (verdict, answer) = oneshot::channel();
            let check = Check {
                password,
                hash,
                verdict,
            };
            metrics.password_queue_depth.inc();
            if queue.send(check).await.is_err() {
                metrics.password_queue_depth.dec();
                return false;
            }
            answer.await.unwrap_or(false)
        }
    }
}

/// Niceness of the checker threads: below the event loops, so that when bcrypt and the
/// event loops compete for a core, commands are answered first and logins wait.
pub const CHECKER_NICENESS: i32 = 10;

/// Runs checks until every sender is gone.
fn run_checks(receiver: &Mutex<mpsc::Receiver<Check>>, metrics: &Metrics) {
    // On Linux the nice value is per thread: this lowers only the calling thread.
    if let Err(err) = rustix::process::setpriority_process(None, CHECKER_NICENESS) {
        log::debug!("cannot lower the priority of a password-check thread: {err}");
    }
    loop {
        let next = match receiver.lock() {
            Ok(mut receiver) => receiver.blocking_recv(),
            Err(_) => None,
        };
        let Some(check) = next else { return };
        metrics.password_queue_depth.dec();
        let started = Instant::now();
        let matches = bcrypt::verify(&check.password, &check.hash).unwrap_or(false);
        metrics
            .password_check_seconds
            .observe(started.elapsed().as_secs_f64());
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
        let checker = PasswordChecker::start(2, 4, Metrics::new()).expect("threads start");
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
        let checker = PasswordChecker::start(1, 1, Metrics::new()).expect("threads start");
        let hash = stand_in_hash(4).expect("hashes");
        assert!(!checker.check(b"tether stand-in".to_vec(), hash).await);
    }

    #[actix_rt::test]
    async fn an_over_long_password_gets_the_verdict_bcrypt_itself_gives() {
        // Queued checks keep at most 72 bytes; bcrypt never reads further, so verdicts
        // are unchanged (the connection refuses over-long passwords before this anyway).
        let checker = PasswordChecker::start(1, 1, Metrics::new()).expect("threads start");
        let long = vec![b'p'; 10_000];
        let hash = PasswordHash::from(bcrypt::hash(&long[..72], 4).expect("hashes"));
        let expected = bcrypt::verify(&long, &hash).expect("verifies");
        assert!(expected);
        assert_eq!(checker.check(long.clone(), hash.clone()).await, expected);
        assert!(!checker.check(long[..71].to_vec(), hash).await);
    }
}
