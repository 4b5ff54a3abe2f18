//! Login throttling (SPEC §2): failed logins are counted per (client address, name) over
//! a sliding minute; a pair at its limit is refused without a password check.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back failures count.
const WINDOW: Duration = Duration::from_secs(60);

/// Failure counts shared by every connection of the server.
#[derive(Debug)]
pub struct LoginThrottle {
    /// Failures allowed per pair in the window; 0 turns throttling off.
    limit: usize,
    /// The pairs with recent failures.
    state: Mutex<Failures>,
}

#[derive(Debug, Default)]
struct Failures {
    /// The instants of each pair's recent failures, oldest first, at most `limit` each.
    by_pair: HashMap<(IpAddr, Box<[u8]>), VecDeque<Instant>>,
    /// Table size past which expired pairs are swept out, keeping the sweep amortized O(1).
    sweep_at: usize,
}

impl LoginThrottle {
    /// A throttle allowing `limit` failures per pair and minute; 0 means no limit.
    pub fn new(limit: u32) -> Self {
        Self {
            limit: limit as usize,
            state: Mutex::new(Failures {
                by_pair: HashMap::new(),
                sweep_at: 1024,
            }),
        }
    }

    /// Whether logins for this pair are refused at once right now.
    pub fn is_throttled(&self, client: IpAddr, name: &[u8], now: Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        let mut state = self.lock();
        let key = (client, Box::from(name));
        match state.by_pair.get_mut(&key) {
            Some(failures) => {
                expire(failures, now);
                failures.len() >= self.limit
            }
            None => false,
        }
    }

    /// Counts a failed, checked login.
    pub fn record_failure(&self, client: IpAddr, name: &[u8], now: Instant) {
        if self.limit == 0 {
            return;
        }
        let mut state = self.lock();
        if state.by_pair.len() >= state.sweep_at {
            state.by_pair.retain(|_, failures| {
                expire(failures, now);
                !failures.is_empty()
            });
            state.sweep_at = (state.by_pair.len() * 2).max(1024);
        }
        let failures = state.by_pair.entry((client, Box::from(name))).or_default();
        expire(failures, now);
        if failures.len() == self.limit {
            failures.pop_front();
        }
        failures.push_back(now);
    }

    /// Forgets the pair's failures after a successful login.
    pub fn record_success(&self, client: IpAddr, name: &[u8]) {
        if self.limit == 0 {
            return;
        }
        self.lock().by_pair.remove(&(client, Box::from(name)));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Failures> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
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

    #[test]
    fn a_pair_is_throttled_at_its_limit_and_released_after_a_minute() {
        let throttle = LoginThrottle::new(3);
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
        let throttle = LoginThrottle::new(1);
        let now = Instant::now();
        throttle.record_failure(HOME, b"alice", now);
        assert!(throttle.is_throttled(HOME, b"alice", now));
        throttle.record_success(HOME, b"alice");
        assert!(!throttle.is_throttled(HOME, b"alice", now));

        let unlimited = LoginThrottle::new(0);
        for _ in 0..100 {
            unlimited.record_failure(HOME, b"alice", now);
        }
        assert!(!unlimited.is_throttled(HOME, b"alice", now));
    }

    #[test]
    fn expired_pairs_are_swept_so_memory_stays_bounded() {
        let throttle = LoginThrottle::new(5);
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
}
