//! Login throttling (SPEC §2): failed logins are counted per (client address, name) over
//! a sliding minute; a pair at its limit is refused without a password check.
//!
//! Checks in flight hold logins back, but only counted failures refuse one: a login takes
//! a [`Reservation`] before its check starts; a pair whose recent failures reach the limit
//! is refused; a pair whose failures plus reservations reach it makes the login wait
//! ([`Admission::Wait`]) until one of its checks in flight is decided, and then asks
//! again. So guesses sent at once on many connections get no more checks than guesses sent
//! one after another (they wait, and are refused once the failures are in), while right
//! passwords sent at once (a gateway reconnecting its users) all get in, some a little
//! later (issue 23). A failed check turns its reservation into a failure; a success clears
//! the pair's failures; a check that never gave its verdict to the client (the connection
//! left first) releases it.
//!
//! Memory is bounded however many addresses and names a client sprays: a pair keeps at
//! most `limit` instants, its name is kept to [`KEY_NAME_BYTES`], pairs whose failures
//! have expired are swept out, and the table never holds more than [`MAX_PAIRS`]. At that
//! cap, failures of pairs not yet in the table are not counted until room frees up (the
//! pairs already counted stay throttled); see SECURITY.md for why.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How far back failures count.
const WINDOW: Duration = Duration::from_secs(60);
/// Most (address, name) pairs tracked at once.
pub const MAX_PAIRS: usize = 65_536;
/// Bytes of a name kept in the table: one more than a valid name can have, so every valid
/// name stays apart, while over-long (always invalid) names cost no more memory.
pub const KEY_NAME_BYTES: usize = crate::auth::credentials::MAX_NAME_BYTES + 1;
/// Least time between two sweeps of a full table, so a full table costs no more than
/// one pass over it per second.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Failure counts shared by every connection of the server.
#[derive(Debug)]
pub struct LoginThrottle {
    /// Failures allowed per pair in the window; 0 turns throttling off.
    limit: usize,
    /// The pairs with recent failures.
    state: Mutex<Failures>,
}

/// What the throttle knows of one (address, name) pair.
#[derive(Debug, Default)]
struct Pair {
    /// The instants of recent failures, oldest first, at most `limit`.
    failures: VecDeque<Instant>,
    /// Checks started and not yet decided.
    in_flight: usize,
    /// Logins held back behind the checks in flight, woken when one is decided.
    waiting: Vec<oneshot::Sender<()>>,
}

impl Pair {
    /// Failures and checks in flight, each counting against the limit.
    fn counted(&self) -> usize {
        self.failures.len() + self.in_flight
    }

    /// Wakes every login held back: a check was decided, so each may ask again.
    fn wake_waiting(&mut self) {
        for waiter in self.waiting.drain(..) {
            // A login whose connection left meanwhile no longer listens.
            let _ = waiter.send(());
        }
    }

    /// Whether nothing of the pair is left to remember.
    fn is_idle(&self) -> bool {
        self.counted() == 0 && self.waiting.is_empty()
    }
}

/// What [`LoginThrottle::reserve`] allows a login.
#[derive(Debug)]
pub enum Admission {
    /// Check the password; the outcome is reported through the reservation.
    Check(Reservation),
    /// Wait: checks in flight fill the pair's limit. When the [`Turn`] resolves, one of
    /// them was decided; ask again.
    Wait(Turn),
    /// Refuse unchecked: the pair has failed `limit` times in the last minute.
    Refused,
}

/// Resolves when a check in flight of the pair a login waits for is decided (see
/// [`Admission::Wait`]).
#[derive(Debug)]
pub struct Turn(oneshot::Receiver<()>);

impl std::future::Future for Turn {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        task: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        // Resolved or dropped alike: either way, time to ask again.
        std::pin::Pin::new(&mut self.0).poll(task).map(|_| ())
    }
}

/// The key of a pair: the client's address and the name, cut to [`KEY_NAME_BYTES`].
type PairKey = (IpAddr, Box<[u8]>);

#[derive(Debug)]
struct Failures {
    /// The pairs with recent failures or checks in flight.
    by_pair: HashMap<PairKey, Pair>,
    /// Table size past which expired pairs are swept out, keeping the sweep amortized O(1).
    sweep_at: usize,
    /// Most pairs held; [`MAX_PAIRS`] but for tests.
    max_pairs: usize,
    /// Set while the table is full: until then new pairs are not counted and no sweep
    /// runs.
    full_until: Option<Instant>,
}

impl LoginThrottle {
    /// A throttle allowing `limit` failures per pair and minute; 0 means no limit.
    pub fn new(limit: u32) -> Self {
        Self::with_max_pairs(limit, MAX_PAIRS)
    }

    fn with_max_pairs(limit: u32, max_pairs: usize) -> Self {
        Self {
            limit: limit as usize,
            state: Mutex::new(Failures {
                by_pair: HashMap::new(),
                sweep_at: 1024.min(max_pairs),
                max_pairs,
                full_until: None,
            }),
        }
    }

    /// Takes a place for one password check of this pair ([`Admission::Check`]); or, when
    /// the pair has failed `limit` times in the window, refuses the login unchecked
    /// ([`Admission::Refused`]); or, when the pair's failures plus its checks in flight
    /// reach the limit, holds it back until one of them is decided ([`Admission::Wait`]).
    /// Checks in flight never refuse a login: they may all be right passwords.
    pub fn reserve(self: &Arc<Self>, client: IpAddr, name: &[u8], now: Instant) -> Admission {
        let key = (client, key_name(name));
        if self.limit == 0 {
            return Admission::Check(Reservation::untracked(self, key));
        }
        let mut state = self.lock();
        if !state.by_pair.contains_key(&key) && !state.make_room(now) {
            // The table is full: this pair is not counted (see the module comment).
            return Admission::Check(Reservation::untracked(self, key));
        }
        let pair = state.by_pair.entry(key.clone()).or_default();
        expire(&mut pair.failures, now);
        if pair.failures.len() >= self.limit {
            return Admission::Refused;
        }
        if pair.counted() >= self.limit {
            let (waiter, turn) = oneshot::channel();
            pair.waiting.retain(|waiter| !waiter.is_closed());
            pair.waiting.push(waiter);
            return Admission::Wait(Turn(turn));
        }
        pair.in_flight += 1;
        Admission::Check(Reservation {
            throttle: Arc::clone(self),
            key,
            tracked: true,
        })
    }

    /// Whether logins for this pair are refused at once right now.
    #[cfg(test)]
    fn is_throttled(&self, client: IpAddr, name: &[u8], now: Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        let mut state = self.lock();
        match state.by_pair.get_mut(&(client, key_name(name))) {
            Some(pair) => {
                expire(&mut pair.failures, now);
                pair.failures.len() >= self.limit
            }
            None => false,
        }
    }

    /// Counts a failed, checked login without a reservation.
    #[cfg(test)]
    fn record_failure(self: &Arc<Self>, client: IpAddr, name: &[u8], now: Instant) {
        if let Admission::Check(reservation) = self.reserve(client, name, now) {
            reservation.failed(now);
        } else {
            let mut state = self.lock();
            if let Some(pair) = state.by_pair.get_mut(&(client, key_name(name))) {
                push_failure(&mut pair.failures, self.limit, now);
            }
        }
    }

    /// Ends a reservation: `failed_at` counts a failure, `None` releases the place.
    fn settle(&self, key: &PairKey, failed_at: Option<Instant>) {
        let mut state = self.lock();
        let Some(pair) = state.by_pair.get_mut(key) else {
            return;
        };
        pair.in_flight = pair.in_flight.saturating_sub(1);
        if let Some(now) = failed_at {
            expire(&mut pair.failures, now);
            push_failure(&mut pair.failures, self.limit, now);
        }
        pair.wake_waiting();
        if pair.is_idle() {
            state.by_pair.remove(key);
        }
    }

    /// Forgets the pair's failures after a successful login (and the login's own place if
    /// it had one); the pair's other checks in flight still count.
    fn clear_failures(&self, key: &PairKey, had_place: bool) {
        let mut state = self.lock();
        let Some(pair) = state.by_pair.get_mut(key) else {
            return;
        };
        if had_place {
            pair.in_flight = pair.in_flight.saturating_sub(1);
        }
        pair.failures.clear();
        pair.wake_waiting();
        if pair.is_idle() {
            state.by_pair.remove(key);
        }
    }

    /// How many (address, name) pairs are tracked now.
    pub fn tracked_pairs(&self) -> usize {
        self.lock().by_pair.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Failures> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl Failures {
    /// Whether a new pair may be added, sweeping out expired pairs when the table is large
    /// or full. A sweep runs once the table has doubled since the last one (amortized
    /// O(1) per failure), and at the cap at most once per [`FULL_SWEEP_INTERVAL`].
    fn make_room(&mut self, now: Instant) -> bool {
        let len = self.by_pair.len();
        if len < self.sweep_at && len < self.max_pairs {
            return true;
        }
        if self.full_until.is_some_and(|until| now < until) {
            return false;
        }
        let mut next_expiry: Option<Instant> = None;
        self.by_pair.retain(|_, pair| {
            expire(&mut pair.failures, now);
            if let Some(&newest) = pair.failures.back() {
                let expiry = newest + WINDOW;
                next_expiry = Some(next_expiry.map_or(expiry, |at| at.min(expiry)));
            }
            // A pair with a check in flight stays: its reservation is settled later (and
            // wakes the logins waiting for it).
            !pair.is_idle()
        });
        let len = self.by_pair.len();
        self.sweep_at = (len * 2).clamp(1024.min(self.max_pairs), self.max_pairs);
        if len < self.max_pairs {
            if self.full_until.take().is_some() {
                log::info!("login throttle has room again ({len} pairs tracked)");
            }
            return true;
        }
        if self.full_until.is_none() {
            log::warn!(
                "login throttle full ({len} (address, name) pairs failed in the last \
                 minute): failures of further pairs are not counted until some expire"
            );
        }
        let retry = now + FULL_SWEEP_INTERVAL;
        self.full_until = Some(next_expiry.map_or(retry, |at| at.max(retry)));
        false
    }
}

/// A place taken by one password check in flight (see [`LoginThrottle::reserve`]).
/// Dropped without a verdict (the connection left before hearing it), it is released.
#[derive(Debug)]
pub struct Reservation {
    /// The throttle holding the place.
    throttle: Arc<LoginThrottle>,
    /// The pair it belongs to.
    key: PairKey,
    /// Whether the place is counted (not when throttling is off or the table was full).
    tracked: bool,
}

impl Reservation {
    /// A reservation that counts nothing until its verdict.
    fn untracked(throttle: &Arc<LoginThrottle>, key: PairKey) -> Self {
        Self {
            throttle: Arc::clone(throttle),
            key,
            tracked: false,
        }
    }

    /// The check failed: the place becomes a failure counted for a minute.
    pub fn failed(mut self, now: Instant) {
        if self.throttle.limit == 0 {
            self.tracked = false;
            return;
        }
        if !std::mem::take(&mut self.tracked) {
            // Not counted when it started: count it now if the table has room.
            let mut state = self.throttle.lock();
            if !state.by_pair.contains_key(&self.key) && !state.make_room(now) {
                return;
            }
            let pair = state.by_pair.entry(self.key.clone()).or_default();
            expire(&mut pair.failures, now);
            push_failure(&mut pair.failures, self.throttle.limit, now);
            return;
        }
        self.throttle.settle(&self.key, Some(now));
    }

    /// The check succeeded: the pair's failures are forgotten.
    pub fn succeeded(mut self) {
        let had_place = std::mem::take(&mut self.tracked);
        if self.throttle.limit != 0 {
            self.throttle.clear_failures(&self.key, had_place);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.tracked {
            self.throttle.settle(&self.key, None);
        }
    }
}

/// Appends a failure, keeping at most `limit` (older ones would not change a verdict).
fn push_failure(failures: &mut VecDeque<Instant>, limit: usize, now: Instant) {
    if failures.len() >= limit {
        failures.pop_front();
    }
    failures.push_back(now);
}

/// The part of a name the table keeps (see [`KEY_NAME_BYTES`]).
fn key_name(name: &[u8]) -> Box<[u8]> {
    Box::from(&name[..name.len().min(KEY_NAME_BYTES)])
}

/// Drops failures older than the window.
fn expire(failures: &mut VecDeque<Instant>, now: Instant) {
    while failures
        .front()
        .is_some_and(|&at| now.duration_since(at) >= WINDOW)
    {
        failures.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const ELSEWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    impl Admission {
        fn check(self) -> Option<Reservation> {
            match self {
                Self::Check(reservation) => Some(reservation),
                _ => None,
            }
        }
        fn waits(&self) -> bool {
            matches!(self, Self::Wait(_))
        }
        fn refused(&self) -> bool {
            matches!(self, Self::Refused)
        }
    }

    #[test]
    fn a_pair_is_throttled_at_its_limit_and_released_after_a_minute() {
        let throttle = Arc::new(LoginThrottle::new(3));
        let start = Instant::now();
        for second in 0..3 {
            assert!(!throttle.is_throttled(HOME, b"alice", start));
            throttle.record_failure(HOME, b"alice", start + Duration::from_secs(second));
        }
        assert!(throttle.is_throttled(HOME, b"alice", start + Duration::from_secs(3)));
        assert!(!throttle.is_throttled(HOME, b"bob", start));
        assert!(!throttle.is_throttled(ELSEWHERE, b"alice", start));
        assert!(!throttle.is_throttled(HOME, b"alice", start + Duration::from_secs(61)));
    }

    #[test]
    fn success_clears_the_pair_and_zero_disables() {
        let throttle = Arc::new(LoginThrottle::new(2));
        let now = Instant::now();
        throttle.record_failure(HOME, b"alice", now);
        let right = throttle.reserve(HOME, b"alice", now).check().expect("room");
        assert!(throttle.reserve(HOME, b"alice", now).waits());
        right.succeeded();
        assert!(!throttle.is_throttled(HOME, b"alice", now));
        assert_eq!(throttle.tracked_pairs(), 0);

        let unlimited = Arc::new(LoginThrottle::new(0));
        for _ in 0..100 {
            unlimited.record_failure(HOME, b"alice", now);
        }
        assert!(!unlimited.is_throttled(HOME, b"alice", now));
    }

    #[test]
    fn expired_pairs_are_swept_so_memory_stays_bounded() {
        let throttle = Arc::new(LoginThrottle::new(5));
        let start = Instant::now();
        for n in 0..5000u32 {
            throttle.record_failure(HOME, &n.to_be_bytes(), start);
        }
        let later = start + Duration::from_secs(120);
        for n in 0..5000u32 {
            throttle.record_failure(ELSEWHERE, &n.to_be_bytes(), later);
        }
        assert!(throttle.lock().by_pair.len() <= 5000 + 1024);
    }

    /// 127.0.0.x / 127.0.y.x: a spray from many source addresses.
    fn address(n: u32) -> IpAddr {
        let [_, _, high, low] = n.to_be_bytes();
        IpAddr::V4(std::net::Ipv4Addr::new(127, 1, high, low))
    }

    #[test]
    fn a_spray_of_names_from_many_addresses_never_passes_the_cap() {
        let throttle = Arc::new(LoginThrottle::with_max_pairs(3, 2000));
        let start = Instant::now();
        throttle.record_failure(HOME, b"alice", start);
        throttle.record_failure(HOME, b"alice", start);
        throttle.record_failure(HOME, b"alice", start);
        for n in 0..10_000u32 {
            let at = start + Duration::from_millis(u64::from(n));
            throttle.record_failure(address(n % 300), format!("user{n}").as_bytes(), at);
            assert!(throttle.tracked_pairs() <= 2000);
        }
        // Counted before the table filled: still throttled; other pairs are not.
        let now = start + Duration::from_secs(10);
        assert!(throttle.is_throttled(HOME, b"alice", now));
        assert!(!throttle.is_throttled(HOME, b"bob", now));
        assert!(!throttle.is_throttled(ELSEWHERE, b"alice", now));
    }

    #[test]
    fn at_the_cap_new_pairs_are_not_counted_until_entries_expire() {
        let throttle = Arc::new(LoginThrottle::with_max_pairs(1, 1024));
        let start = Instant::now();
        for n in 0..1024u32 {
            throttle.record_failure(address(n), b"spray", start);
        }
        assert_eq!(throttle.tracked_pairs(), 1024);
        throttle.record_failure(HOME, b"alice", start + Duration::from_secs(1));
        assert!(!throttle.is_throttled(HOME, b"alice", start + Duration::from_secs(1)));
        assert!(throttle.is_throttled(address(7), b"spray", start + Duration::from_secs(1)));

        let later = start + WINDOW + Duration::from_secs(1);
        throttle.record_failure(HOME, b"alice", later);
        assert!(throttle.is_throttled(HOME, b"alice", later));
        assert_eq!(throttle.tracked_pairs(), 1);
    }

    #[test]
    fn a_full_table_is_swept_at_most_once_a_second() {
        let throttle = Arc::new(LoginThrottle::with_max_pairs(1, 1024));
        let start = Instant::now();
        for n in 0..1024u32 {
            let at = start + Duration::from_millis(u64::from(n));
            throttle.record_failure(address(n), b"spray", at);
        }
        // The oldest pair expires 60 s after start; a sweep before then frees nothing.
        throttle.record_failure(HOME, b"x", start + Duration::from_secs(2));
        let until = throttle.lock().full_until.expect("full");
        assert!(until >= start + WINDOW);
        // Once the oldest expired, the next new pair takes its place.
        throttle.record_failure(HOME, b"y", start + WINDOW + Duration::from_millis(1));
        assert!(throttle.is_throttled(HOME, b"y", start + WINDOW + Duration::from_millis(1)));
        assert!(throttle.tracked_pairs() <= 1024);
    }

    #[test]
    fn over_long_names_are_kept_short_and_valid_names_stay_apart() {
        let throttle = Arc::new(LoginThrottle::new(1));
        let now = Instant::now();
        let long = vec![b'a'; 60_000];
        throttle.record_failure(HOME, &long, now);
        let state = throttle.lock();
        let (key, _) = state.by_pair.iter().next().expect("one pair");
        assert_eq!(key.1.len(), KEY_NAME_BYTES);
        drop(state);
        // A valid name of the maximum length is a different pair.
        assert!(!throttle.is_throttled(HOME, &long[..KEY_NAME_BYTES - 1], now));
        assert!(throttle.is_throttled(HOME, &long[..KEY_NAME_BYTES + 5], now));
    }

    #[test]
    fn checks_in_flight_count_against_the_limit() {
        let throttle = Arc::new(LoginThrottle::new(3));
        let now = Instant::now();
        let held: Vec<Reservation> = (0..3)
            .map(|_| throttle.reserve(HOME, b"alice", now).check().expect("room"))
            .collect();
        // Held back, not refused: the checks in flight may all be right.
        assert!(throttle.reserve(HOME, b"alice", now).waits());
        assert!(throttle.reserve(ELSEWHERE, b"alice", now).check().is_some());
        // Failures take the places of the reservations: now the pair is refused.
        for reservation in held {
            reservation.failed(now);
        }
        assert!(throttle.reserve(HOME, b"alice", now).refused());
        assert!(throttle
            .reserve(HOME, b"alice", now + WINDOW)
            .check()
            .is_some());
    }

    #[test]
    fn a_reservation_dropped_unsettled_frees_its_place_and_a_success_clears_failures() {
        let throttle = Arc::new(LoginThrottle::new(2));
        let now = Instant::now();
        throttle
            .reserve(HOME, b"alice", now)
            .check()
            .expect("room")
            .failed(now);
        let pending = throttle.reserve(HOME, b"alice", now).check().expect("room");
        assert!(throttle.reserve(HOME, b"alice", now).waits());
        drop(pending);
        let right = throttle
            .reserve(HOME, b"alice", now)
            .check()
            .expect("room again");
        let other = throttle.reserve(HOME, b"alice", now);
        assert!(other.waits(), "one failure and one check in flight fill it");
        right.succeeded();
        assert!(!throttle.is_throttled(HOME, b"alice", now));
        assert_eq!(throttle.tracked_pairs(), 0);
    }

    #[test]
    fn a_full_table_does_not_sweep_out_pairs_with_checks_in_flight() {
        let throttle = Arc::new(LoginThrottle::with_max_pairs(1, 1024));
        let start = Instant::now();
        let held = throttle
            .reserve(HOME, b"alice", start)
            .check()
            .expect("room");
        for n in 0..1023u32 {
            throttle.record_failure(address(n), b"spray", start);
        }
        // Everything else expires; the check in flight keeps its pair.
        let later = start + WINDOW + Duration::from_secs(2);
        throttle.record_failure(ELSEWHERE, b"x", later);
        assert!(throttle.reserve(HOME, b"alice", later).waits());
        held.failed(later);
        assert!(throttle.is_throttled(HOME, b"alice", later));
    }

    #[test]
    fn a_success_keeps_the_places_of_other_checks_in_flight() {
        let throttle = Arc::new(LoginThrottle::new(2));
        let now = Instant::now();
        let other = throttle.reserve(HOME, b"alice", now).check().expect("room");
        throttle
            .reserve(HOME, b"alice", now)
            .check()
            .expect("room")
            .succeeded();
        let again = throttle.reserve(HOME, b"alice", now).check().expect("room");
        assert!(throttle.reserve(HOME, b"alice", now).waits());
        other.failed(now);
        assert!(throttle.reserve(HOME, b"alice", now).waits());
        again.failed(now);
        assert!(throttle.is_throttled(HOME, b"alice", now));
    }

    #[actix_rt::test]
    async fn right_passwords_at_once_wait_their_turn_and_all_get_in() {
        let throttle = Arc::new(LoginThrottle::new(2));
        let now = Instant::now();
        let first = throttle.reserve(HOME, b"alice", now).check().expect("room");
        let second = throttle.reserve(HOME, b"alice", now).check().expect("room");
        let Admission::Wait(turn) = throttle.reserve(HOME, b"alice", now) else {
            panic!("a third check in flight must wait, not be refused");
        };
        first.succeeded();
        tokio::time::timeout(Duration::from_secs(5), turn)
            .await
            .expect("a decided check wakes the logins held back");
        let third = throttle.reserve(HOME, b"alice", now).check().expect("room");
        second.succeeded();
        third.succeeded();
        assert_eq!(throttle.tracked_pairs(), 0);
    }

    #[actix_rt::test]
    async fn guesses_held_back_are_refused_once_the_failures_are_in() {
        let throttle = Arc::new(LoginThrottle::new(2));
        let now = Instant::now();
        let guesses: Vec<Reservation> = (0..2)
            .map(|_| throttle.reserve(HOME, b"alice", now).check().expect("room"))
            .collect();
        let Admission::Wait(turn) = throttle.reserve(HOME, b"alice", now) else {
            panic!("held back while the guesses are checked");
        };
        for guess in guesses {
            guess.failed(now);
        }
        turn.await;
        assert!(throttle.reserve(HOME, b"alice", now).refused());
    }
}
