//! Password checks off the event loops: a fixed set of threads running bcrypt, fed from
//! one queue per client address served in turn, so a burst of logins never stalls an
//! arbiter and a flood from one address delays only that address's logins. New hashes
//! (the admin API's password changes) are made on the same threads, queued the same way.
//!
//! With [`Verifiers`] (SPEC §5, "Admission after a restart"), a login's check first
//! computes its verifier (an HMAC: microseconds) on the same thread, after the hash lookup
//! and in the same queue, so the fair order and the throttle are as before: a kept one
//! admits it without bcrypt; anything else runs bcrypt, and a match leaves a verifier.
//! When the hash is in memory and the store answers without waiting (a node alone), the
//! connection asks first, on its event loop ([`PasswordChecker::admits_at_once`]): a
//! returning user then waits behind no bcrypt check queued before them.
//!
//! A check whose login is gone (its connection closed or was reset before the check
//! started) is dropped unrun; a client that only shut its sending side keeps its login,
//! and the bound on what one address takes is the round-robin, not a guess at departures.

use crate::auth::verifiers::Verifiers;
use crate::util::metrics::Metrics;
use crate::util::priority;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread;
use std::time::Instant;
use tokio::sync::oneshot;

/// A bcrypt hash as stored, shared without copying.
pub type PasswordHash = Arc<str>;

/// The most of a password bcrypt looks at; later bytes change no verdict.
const BCRYPT_READS_BYTES: usize = 72;

/// Highest bcrypt cost accepted for a stored hash (and for `auth.bcrypt_cost`): one check
/// at 16 takes about 4 s of a core; each step up doubles it, and a single hash at 31 would
/// hold a bcrypt thread for days.
pub const MAX_STORED_COST: u32 = 16;

/// A login's lookup found no answer: the store (a database) did not answer in time. The
/// login is refused, and not counted by the throttle as a failed password: the password
/// was never checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUnreachable;

/// Finds a user's hash on a checker thread, where it may block (a database query does).
pub type HashLookup = Box<dyn FnOnce() -> Result<Option<PasswordHash>, StoreUnreachable> + Send>;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Whether the password matched the hash checked.
    pub matches: bool,
    /// The hash the check's lookup found, if it had one and found a user.
    pub found: Option<PasswordHash>,
    /// The lookup could not be answered (the store is unreachable): nothing was checked.
    pub store_unreachable: bool,
}

/// One password to compare with a hash, or to hash.
struct Check {
    /// The password as the client sent it.
    password: Vec<u8>,
    /// What bcrypt does with it.
    work: Work,
}

/// What a queued [`Check`] does with its password.
enum Work {
    /// Compares it with a hash.
    Verify {
        /// Finds the user's hash first, when the check has one; with the user's name,
        /// for its verifier.
        lookup: Option<(Arc<str>, HashLookup)>,
        /// The hash checked when there is no lookup or it finds no user: the stored hash,
        /// or the stand-in for an unknown user.
        hash: PasswordHash,
        /// Where the verdict goes; closed when the login is gone.
        verdict: oneshot::Sender<Checked>,
    },
    /// Makes a new hash of it.
    Hash {
        /// The bcrypt cost of the new hash.
        cost: u32,
        /// Where the hash goes; closed when its request is gone.
        made: oneshot::Sender<Result<String, bcrypt::BcryptError>>,
    },
}

impl Check {
    /// Whether nobody waits for the outcome any more.
    fn is_abandoned(&self) -> bool {
        match &self.work {
            Work::Verify { verdict, .. } => verdict.is_closed(),
            Work::Hash { made, .. } => made.is_closed(),
        }
    }
}

/// The checks waiting for a thread: a FIFO per client address, the addresses served in
/// turn, one check each.
#[derive(Default)]
struct FairQueue {
    /// Each address's waiting checks, oldest first; an address with none has no entry.
    by_client: HashMap<IpAddr, VecDeque<Check>>,
    /// The addresses with waiting checks, in the order they are served.
    turns: VecDeque<IpAddr>,
    /// Checks waiting, abandoned ones included.
    len: usize,
    /// No more checks will come: the threads end once the queue is empty.
    closed: bool,
}

impl FairQueue {
    fn push(&mut self, client: IpAddr, check: Check) {
        let queue = self.by_client.entry(client).or_default();
        if queue.is_empty() {
            self.turns.push_back(client);
        }
        queue.push_back(check);
        self.len += 1;
    }

    /// The oldest check of the address whose turn it is; that address goes to the back.
    fn pop(&mut self) -> Option<Check> {
        let client = self.turns.pop_front()?;
        let queue = self.by_client.get_mut(&client)?;
        let check = queue.pop_front();
        if queue.is_empty() {
            self.by_client.remove(&client);
        } else {
            self.turns.push_back(client);
        }
        self.len -= usize::from(check.is_some());
        check
    }

    /// Removes the checks whose login is gone; answers how many.
    fn remove_abandoned(&mut self) -> usize {
        let before = self.len;
        self.by_client.retain(|_, queue| {
            queue.retain(|check| !check.is_abandoned());
            !queue.is_empty()
        });
        let by_client = &self.by_client;
        self.turns.retain(|client| by_client.contains_key(client));
        self.len = self.by_client.values().map(VecDeque::len).sum();
        before - self.len
    }
}

/// What the checker threads and the handles share.
struct Pool {
    queue: Mutex<FairQueue>,
    /// Signalled when a check is queued or the pool closes.
    ready: Condvar,
    /// Logins given up since the last sweep of the queue (some may have run already):
    /// once they reach half the queue, it is swept, so abandoned checks never hold more
    /// than half of it.
    abandoned: AtomicUsize,
    /// Queue depth and check durations.
    metrics: Metrics,
    /// Admission without bcrypt, when `auth.verifier_key_file` is set.
    verifiers: Option<Verifiers>,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, FairQueue> {
        match self.queue.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Drops abandoned checks if they may be half the queue.
    fn sweep_if_due(&self, queue: &mut FairQueue) {
        let abandoned = self.abandoned.load(Ordering::Relaxed);
        if abandoned == 0 || abandoned * 2 < queue.len {
            return;
        }
        self.abandoned.store(0, Ordering::Relaxed);
        let removed = queue.remove_abandoned();
        self.metrics.password_queue_depth.dec_by(removed as i64);
        self.metrics.password_checks_dropped.inc_by(removed as u64);
    }
}

/// Closes the pool when the last [`PasswordChecker`] is dropped.
struct Closer(Arc<Pool>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_all();
    }
}

/// A bounded pool of threads that run bcrypt: checks of logins, and new hashes.
///
/// Cloning shares the pool; the threads end when the last clone is dropped.
#[derive(Clone)]
pub struct PasswordChecker {
    pool: Arc<Pool>,
    _closer: Arc<Closer>,
}

impl PasswordChecker {
    /// Starts `threads` checker threads.
    pub fn start(threads: usize, metrics: Metrics) -> std::io::Result<Self> {
        Self::start_with_verifiers(threads, metrics, None)
    }

    /// Starts `threads` checker threads that admit a login with a kept verifier without
    /// bcrypt and leave one after each successful bcrypt check (see the module's comment).
    pub fn start_with_verifiers(
        threads: usize,
        metrics: Metrics,
        verifiers: Option<Verifiers>,
    ) -> std::io::Result<Self> {
        let pool = Arc::new(Pool {
            queue: Mutex::new(FairQueue::default()),
            ready: Condvar::new(),
            abandoned: AtomicUsize::new(0),
            metrics,
            verifiers,
        });
        for index in 0..threads.max(1) {
            let pool = Arc::clone(&pool);
            thread::Builder::new()
                .name(format!("tether-bcrypt-{index}"))
                .spawn(move || run_checks(&pool))?;
        }
        Ok(Self {
            _closer: Arc::new(Closer(Arc::clone(&pool))),
            pool,
        })
    }

    /// Queues a check of `password` against `hash` for a login from `client`; the verdict
    /// says whether it matches. A malformed hash or a stopped pool counts as no match.
    /// Dropping the verdict before it is in gives the check up: it is not run.
    pub fn check(&self, client: IpAddr, password: &[u8], hash: PasswordHash) -> Verdict {
        self.verify(client, password, None, hash)
    }

    /// Queues a check for a login as `user` from `client` of `password` against the hash
    /// `lookup` finds, or `stand_in` when it finds none. The lookup runs on the checker
    /// thread, just before bcrypt, so a store that asks a database never blocks an event
    /// loop; the verdict's [`Checked::found`] is what it found. With verifiers, a kept one
    /// for (`user`, `password`, the hash found) answers instead of bcrypt.
    pub fn check_user(
        &self,
        client: IpAddr,
        user: Arc<str>,
        password: &[u8],
        lookup: HashLookup,
        stand_in: PasswordHash,
    ) -> Verdict {
        self.verify(client, password, Some((user, lookup)), stand_in)
    }

    /// Whether a verifier kept for `user` vouches for `password` against the stored `hash`,
    /// when the store can tell at once (a node alone's memory): then the login needs no
    /// queue at all. `false` when it cannot tell, or no verifiers are kept; the login is
    /// then queued as usual (and its verifier, if any, checked on a checker thread).
    pub fn admits_at_once(&self, user: &str, password: &[u8], hash: &str) -> bool {
        let Some(verifiers) = &self.pool.verifiers else {
            return false;
        };
        // The same bytes a queued check keys its verifier with.
        let password = &password[..password.len().min(BCRYPT_READS_BYTES)];
        let tag = verifiers.key().tag(user, password, hash);
        let admitted = verifiers.store().holds_now(user, &tag) == Some(true);
        if admitted {
            self.pool.metrics.password_checks_saved.inc();
        }
        admitted
    }

    /// Forgets `user`'s verifier, if verifiers are kept: its password changed or it was
    /// removed (the kept one is useless already, as the stored hash is part of it).
    pub fn forget_verifier(&self, user: &str) {
        if let Some(verifiers) = &self.pool.verifiers {
            verifiers.store().forget(user);
        }
    }

    /// Queues the making of a bcrypt hash of `password` at `cost`, asked for from `client`
    /// (served in turn with the logins of other addresses). Dropping the answer before it
    /// is in gives the hash up: it is not made.
    pub fn hash(&self, client: IpAddr, password: &[u8], cost: u32) -> NewHash {
        let (made, answer) = oneshot::channel();
        NewHash(self.queue(client, password, Work::Hash { cost, made }, answer))
    }

    fn verify(
        &self,
        client: IpAddr,
        password: &[u8],
        lookup: Option<(Arc<str>, HashLookup)>,
        hash: PasswordHash,
    ) -> Verdict {
        let (verdict, answer) = oneshot::channel();
        let work = Work::Verify {
            lookup,
            hash,
            verdict,
        };
        Verdict(self.queue(client, password, work, answer))
    }

    fn queue<T>(
        &self,
        client: IpAddr,
        password: &[u8],
        work: Work,
        answer: oneshot::Receiver<T>,
    ) -> Answer<T> {
        // bcrypt reads at most 72 bytes; more, held in the queue, would only take memory.
        let password = password[..password.len().min(BCRYPT_READS_BYTES)].to_vec();
        let check = Check { password, work };
        let mut queue = self.pool.lock();
        if !queue.closed {
            self.pool.sweep_if_due(&mut queue);
            queue.push(client, check);
            self.pool.metrics.password_queue_depth.inc();
            self.pool.ready.notify_one();
        }
        Answer {
            answer,
            pool: Arc::clone(&self.pool),
            taken: false,
        }
    }
}

/// What a checker thread answers for one queued check; `None` if the pool stopped first.
/// Dropped before it is in, it counts the check as given up.
struct Answer<T> {
    answer: oneshot::Receiver<T>,
    pool: Arc<Pool>,
    /// The answer was taken.
    taken: bool,
}

impl<T> Future for Answer<T> {
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<Option<T>> {
        let answer = Pin::new(&mut self.answer).poll(task);
        answer.map(|result| {
            self.taken = true;
            result.ok()
        })
    }
}

impl<T> Drop for Answer<T> {
    fn drop(&mut self) {
        if !self.taken {
            self.pool.abandoned.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The verdict of one queued check (see [`PasswordChecker::check`]).
pub struct Verdict(Answer<Checked>);

impl Future for Verdict {
    type Output = Checked;

    fn poll(mut self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<Checked> {
        Pin::new(&mut self.0).poll(task).map(|answer| {
            answer.unwrap_or(Checked {
                matches: false,
                found: None,
                store_unreachable: false,
            })
        })
    }
}

/// A hash being made (see [`PasswordChecker::hash`]).
pub struct NewHash(Answer<Result<String, bcrypt::BcryptError>>);

impl Future for NewHash {
    type Output = Result<String, HashError>;

    fn poll(mut self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(task).map(|answer| match answer {
            Some(made) => made.map_err(HashError::Bcrypt),
            None => Err(HashError::Stopped),
        })
    }
}

/// Why no hash was made.
#[derive(Debug)]
pub enum HashError {
    /// bcrypt refused (a cost out of its range).
    Bcrypt(bcrypt::BcryptError),
    /// The pool stopped (the server is shutting down).
    Stopped,
}

impl std::fmt::Display for HashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bcrypt(err) => write!(f, "cannot hash the password: {err}"),
            Self::Stopped => f.write_str("password hashing stopped"),
        }
    }
}

impl std::error::Error for HashError {}

/// Niceness of the checker threads: below the event loops, so that when bcrypt and the
/// event loops compete for a core, commands are answered first and logins wait.
pub const CHECKER_NICENESS: i32 = priority::BACKGROUND_NICENESS;

/// Runs checks until the pool closes.
fn run_checks(pool: &Pool) {
    priority::run_in_background("a password-check thread");
    let metrics = &pool.metrics;
    loop {
        let check = {
            let mut queue = pool.lock();
            loop {
                if let Some(check) = queue.pop() {
                    break check;
                }
                if queue.closed {
                    return;
                }
                queue = match pool.ready.wait(queue) {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
        };
        metrics.password_queue_depth.dec();
        if check.is_abandoned() {
            // The login (or request) is gone (its connection closed or was reset): nobody
            // would hear.
            metrics.password_checks_dropped.inc();
            continue;
        }
        match check.work {
            Work::Verify {
                lookup,
                hash,
                verdict,
            } => {
                let started = Instant::now();
                let (user, found) = match lookup {
                    Some((user, lookup)) => match lookup() {
                        Ok(found) => (Some(user), found),
                        Err(StoreUnreachable) => {
                            // Nothing to check against: answered at once, no bcrypt spent.
                            let _ = verdict.send(Checked {
                                matches: false,
                                found: None,
                                store_unreachable: true,
                            });
                            continue;
                        }
                    },
                    None => (None, None),
                };
                // A known user's verifier, when verifiers are kept: an HMAC, microseconds.
                let verifier = match (&pool.verifiers, &user, &found) {
                    (Some(verifiers), Some(user), Some(stored)) => {
                        let tag = verifiers.key().tag(user, &check.password, stored);
                        if verifiers.store().holds(user, &tag) {
                            metrics.password_checks_saved.inc();
                            let _ = verdict.send(Checked {
                                matches: true,
                                found: found.clone(),
                                store_unreachable: false,
                            });
                            continue;
                        }
                        Some((verifiers, user, tag))
                    }
                    _ => None,
                };
                let hash = found.as_ref().unwrap_or(&hash);
                // The one place a password is checked: on the checker's own threads.
                #[allow(clippy::disallowed_methods)]
                let matches = bcrypt::verify(&check.password, hash).unwrap_or(false);
                metrics
                    .password_check_seconds
                    .observe(started.elapsed().as_secs_f64());
                if let (true, Some((verifiers, user, tag))) = (matches, verifier) {
                    verifiers.store().keep(user, tag);
                }
                // The connection may have gone meanwhile; then nobody needs the verdict.
                let _ = verdict.send(Checked {
                    matches,
                    found,
                    store_unreachable: false,
                });
            }
            Work::Hash { cost, made } => {
                // The one place a password's hash is made in a server: on these threads.
                #[allow(clippy::disallowed_methods)]
                let hash = bcrypt::hash(&check.password, cost);
                // The request may have gone meanwhile; then nobody needs the hash.
                let _ = made.send(hash);
            }
        }
    }
}

/// The password of every stand-in hash: it holds separators, which no client's password
/// may, so no login ever matches it.
const STAND_IN_PASSWORD: &str = "\u{1e}tether stand-in\u{1f}";

/// A hash of the given cost that matches no password a client can send, checked for
/// unknown users so that they take as long as a wrong password at that cost.
///
/// Made cheaply: a cost-4 hash of a password no client can send, relabelled with `cost`.
/// bcrypt's work depends only on the cost field, so checking against it takes as long as
/// any hash of that cost; a password matching it would be a preimage of a random 184-bit
/// digest. So stand-ins for high costs cost no start-up or reload time.
pub fn stand_in_hash(cost: u32) -> Result<PasswordHash, bcrypt::BcryptError> {
    if !(4..=31).contains(&cost) {
        return Err(bcrypt::BcryptError::CostNotAllowed(cost));
    }
    // The one place a hash is made: cost 4, about a millisecond, at start-up and reload.
    #[allow(clippy::disallowed_methods)]
    let cheap = bcrypt::hash(STAND_IN_PASSWORD, 4)?;
    // `$2b$04$` then 53 characters of salt and digest.
    Ok(PasswordHash::from(format!("$2b${cost:02}${}", &cheap[7..])))
}

/// The cost of a bcrypt hash, if it is one.
pub fn hash_cost(hash: &str) -> Option<u32> {
    hash.parse::<bcrypt::HashParts>()
        .ok()
        .map(|parts| parts.get_cost())
}

#[cfg(test)]
// Tests make and check hashes directly; they run on no event loop.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const ELSEWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[actix_rt::test]
    async fn checks_match_only_the_right_password() {
        let checker = PasswordChecker::start(2, Metrics::new()).expect("threads start");
        let hash = PasswordHash::from(bcrypt::hash("secret", 4).expect("hashes"));
        assert!(checker.check(HOME, b"secret", hash.clone()).await.matches);
        assert!(!checker.check(HOME, b"wrong", hash).await.matches);
        assert!(
            !checker
                .check(HOME, b"x", PasswordHash::from("not a hash"))
                .await
                .matches
        );
    }

    #[actix_rt::test]
    async fn the_stand_in_hash_matches_no_valid_password() {
        let checker = PasswordChecker::start(1, Metrics::new()).expect("threads start");
        let hash = stand_in_hash(4).expect("hashes");
        assert!(!checker.check(HOME, b"tether stand-in", hash).await.matches);
    }

    #[actix_rt::test]
    async fn an_over_long_password_gets_the_verdict_bcrypt_itself_gives() {
        // Queued checks keep at most 72 bytes; bcrypt never reads further, so verdicts
        // are unchanged (the connection refuses over-long passwords before this anyway).
        let checker = PasswordChecker::start(1, Metrics::new()).expect("threads start");
        let long = vec![b'p'; 10_000];
        let hash = PasswordHash::from(bcrypt::hash(&long[..72], 4).expect("hashes"));
        let expected = bcrypt::verify(&long, &hash).expect("verifies");
        assert!(expected);
        assert_eq!(
            checker.check(HOME, &long, hash.clone()).await.matches,
            expected
        );
        assert!(!checker.check(HOME, &long[..71], hash).await.matches);
    }

    #[actix_rt::test]
    async fn a_stand_in_takes_the_time_of_its_cost_and_matches_nothing() {
        let hash = stand_in_hash(6).expect("hashes");
        assert_eq!(hash_cost(&hash), Some(6));
        assert!(!bcrypt::verify(STAND_IN_PASSWORD, &hash).expect("verifies"));
        assert!(stand_in_hash(32).is_err());
    }

    /// A check and the receiver of its verdict (dropping it gives the check up).
    fn check_with(password: &[u8]) -> (Check, oneshot::Receiver<Checked>) {
        let (verdict, answer) = oneshot::channel();
        let hash = PasswordHash::from("unused");
        let check = Check {
            password: password.to_vec(),
            work: Work::Verify {
                lookup: None,
                hash,
                verdict,
            },
        };
        (check, answer)
    }

    #[test]
    fn addresses_are_served_in_turn() {
        let mut queue = FairQueue::default();
        let mut answers = Vec::new();
        for password in [&b"home-1"[..], b"home-2", b"home-3"] {
            let (check, answer) = check_with(password);
            queue.push(HOME, check);
            answers.push(answer);
        }
        let (check, answer) = check_with(b"elsewhere");
        queue.push(ELSEWHERE, check);
        answers.push(answer);
        let order: Vec<Vec<u8>> = std::iter::from_fn(|| queue.pop())
            .map(|check| check.password)
            .collect();
        assert_eq!(
            order,
            [&b"home-1"[..], b"elsewhere", b"home-2", b"home-3"].map(<[u8]>::to_vec)
        );
        assert_eq!(queue.len, 0);
        assert!(queue.by_client.is_empty() && queue.turns.is_empty());
    }

    #[test]
    fn abandoned_checks_are_swept_out() {
        let mut queue = FairQueue::default();
        let (kept, _answer) = check_with(b"kept");
        queue.push(ELSEWHERE, kept);
        for _ in 0..10 {
            let (check, answer) = check_with(b"gone");
            queue.push(HOME, check);
            drop(answer);
        }
        assert_eq!(queue.remove_abandoned(), 10);
        assert_eq!(queue.len, 1);
        assert_eq!(queue.turns, [ELSEWHERE]);
    }

    #[actix_rt::test]
    async fn a_check_given_up_before_it_starts_is_not_run() {
        let metrics = Metrics::new();
        let checker = PasswordChecker::start(1, metrics.clone()).expect("threads start");
        // The one thread is busy with a slow check while the second is given up.
        let slow = PasswordHash::from(bcrypt::hash("pw", 10).expect("hashes"));
        let busy = checker.check(HOME, b"pw", slow.clone());
        drop(checker.check(ELSEWHERE, b"pw", slow));
        assert!(busy.await.matches);
        let quick = PasswordHash::from(bcrypt::hash("pw", 4).expect("hashes"));
        assert!(checker.check(HOME, b"pw", quick).await.matches);
        assert_eq!(metrics.password_checks_dropped.get(), 1);
    }

    #[actix_rt::test]
    async fn a_new_hash_is_made_at_its_cost_and_given_up_unmade_when_dropped() {
        let metrics = Metrics::new();
        let checker = PasswordChecker::start(1, metrics.clone()).expect("threads start");
        let made = checker.hash(HOME, b"new secret", 5).await.expect("hashes");
        assert_eq!(hash_cost(&made), Some(5));
        let made = PasswordHash::from(made);
        assert!(
            checker
                .check(HOME, b"new secret", made.clone())
                .await
                .matches
        );
        assert!(!checker.check(HOME, b"old secret", made).await.matches);
        assert!(matches!(
            checker.hash(HOME, b"pw", 3).await,
            Err(HashError::Bcrypt(_))
        ));
        // The one thread is busy with a slow check while a hash is given up.
        let slow = PasswordHash::from(bcrypt::hash("pw", 10).expect("hashes"));
        let busy = checker.check(HOME, b"pw", slow);
        drop(checker.hash(ELSEWHERE, b"pw", 4));
        assert!(busy.await.matches);
        let quick = PasswordHash::from(bcrypt::hash("pw", 4).expect("hashes"));
        assert!(checker.check(HOME, b"pw", quick).await.matches);
        assert_eq!(metrics.password_checks_dropped.get(), 1);
    }

    #[actix_rt::test]
    async fn a_kept_verifier_admits_without_bcrypt_and_a_wrong_password_pays_it() {
        use crate::auth::verifiers::{MemoryVerifiers, VerifierKey};
        let metrics = Metrics::new();
        let store = Arc::new(MemoryVerifiers::new(std::time::Duration::from_secs(60)));
        let key = Arc::new(VerifierKey::new(&[3; 32]).expect("long enough"));
        let verifiers = Verifiers::new(key, store.clone());
        let checker = PasswordChecker::start_with_verifiers(1, metrics.clone(), Some(verifiers))
            .expect("threads start");
        let hash = PasswordHash::from(bcrypt::hash("pw", 4).expect("hashes"));
        let stand_in = stand_in_hash(4).expect("hashes");
        let login = |password: &'static [u8], hash: PasswordHash| {
            let lookup: HashLookup = Box::new(move || Ok(Some(hash)));
            checker.check_user(HOME, Arc::from("u"), password, lookup, stand_in.clone())
        };
        let mut registry = prometheus_client::registry::Registry::with_prefix("tether");
        metrics.register(&mut registry);
        let bcrypts = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
            let line = text
                .lines()
                .find(|line| line.starts_with("tether_password_check_seconds_count "))
                .expect("the histogram is there");
            line.rsplit(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .expect("a count")
        };
        assert!(login(b"pw", hash.clone()).await.matches);
        assert_eq!((bcrypts(), metrics.password_checks_saved.get()), (1, 0));
        assert_eq!(store.len(), 1);
        assert!(login(b"pw", hash.clone()).await.matches);
        assert_eq!((bcrypts(), metrics.password_checks_saved.get()), (1, 1));
        assert!(!login(b"wrong", hash.clone()).await.matches);
        assert_eq!((bcrypts(), metrics.password_checks_saved.get()), (2, 1));
        // Another stored hash (a password change, even to the same password): bcrypt.
        let rehashed = PasswordHash::from(bcrypt::hash("pw", 4).expect("hashes"));
        assert!(login(b"pw", rehashed).await.matches);
        assert_eq!((bcrypts(), metrics.password_checks_saved.get()), (3, 1));
        checker.forget_verifier("u");
        assert!(store.is_empty());
    }

    #[actix_rt::test]
    async fn a_lookup_runs_on_the_checker_thread_and_its_hash_is_checked() {
        let checker = PasswordChecker::start(1, Metrics::new()).expect("threads start");
        let hash = PasswordHash::from(bcrypt::hash("pw", 4).expect("hashes"));
        let stand_in = stand_in_hash(4).expect("hashes");
        let found = hash.clone();
        // Finds the user only when run on a checker thread.
        let lookup: HashLookup = Box::new(move || {
            let on_checker = thread::current()
                .name()
                .is_some_and(|name| name.starts_with("tether-bcrypt"));
            Ok(on_checker.then_some(found))
        });
        let checked = checker
            .check_user(HOME, Arc::from("u"), b"pw", lookup, stand_in.clone())
            .await;
        assert_eq!(
            checked,
            Checked {
                matches: true,
                found: Some(hash),
                store_unreachable: false,
            }
        );
        let nobody = checker
            .check_user(
                HOME,
                Arc::from("u"),
                b"pw",
                Box::new(|| Ok(None)),
                stand_in.clone(),
            )
            .await;
        assert!(!nobody.matches && nobody.found.is_none() && !nobody.store_unreachable);
        let unanswered = checker
            .check_user(
                HOME,
                Arc::from("u"),
                b"pw",
                Box::new(|| Err(StoreUnreachable)),
                stand_in,
            )
            .await;
        assert!(!unanswered.matches && unanswered.store_unreachable);
    }
}
