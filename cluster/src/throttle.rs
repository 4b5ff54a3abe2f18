//! The cluster's login throttle as one node sees it (SPEC §8): the (address, name) pairs
//! that some node found at the limit, each until its failures age out. A node learns them
//! from its own failures (the script answers how long the pair is throttled) and from the
//! other nodes (the throttle channel), and answers [`Throttled::is_throttled`] at once,
//! without a round trip to Redis per login.
//!
//! Bounded: at most [`MAX_PAIRS`] pairs; when full, expired ones are swept out, and a pair
//! that still finds no room is not mirrored (the local throttle and Redis's count still
//! apply to it; logged once).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most pairs mirrored at once.
const MAX_PAIRS: usize = 65_536;

/// Pairs throttled cluster-wide, each until when.
#[derive(Debug, Default)]
pub(crate) struct Throttled {
    pairs: Mutex<Pairs>,
}

#[derive(Debug, Default)]
struct Pairs {
    until: HashMap<(IpAddr, Box<[u8]>), Instant>,
    /// Whether the log said the mirror is full since it last had room.
    told_full: bool,
}

impl Throttled {
    /// The pair is throttled for `remaining` from now.
    pub(crate) fn throttle(&self, client: IpAddr, name: &[u8], remaining: Duration) {
        let now = Instant::now();
        let until = now + remaining;
        let mut pairs = self.lock();
        let key = (client, Box::from(name));
        if !pairs.until.contains_key(&key) && pairs.until.len() >= MAX_PAIRS {
            pairs.until.retain(|_, until| *until > now);
            if pairs.until.len() >= MAX_PAIRS {
                if !pairs.told_full {
                    pairs.told_full = true;
                    log::warn!(
                        "cluster: {MAX_PAIRS} (address, name) pairs are throttled cluster-wide; \
                         further ones are throttled by each node's own count only"
                    );
                }
                return;
            }
            pairs.told_full = false;
        }
        let held = pairs.until.entry(key).or_insert(until);
        *held = (*held).max(until);
    }

    /// The pair's failures were forgotten (a login of it succeeded).
    pub(crate) fn forget(&self, client: IpAddr, name: &[u8]) {
        self.lock().until.remove(&(client, Box::from(name)));
    }

    /// Acts on the cluster's answer to a login of the pair whose password matched
    /// (`remaining_ms` the pair stays throttled, 0 when it is not): answers whether the
    /// login is admitted; a pair throttled is mirrored here, one admitted forgotten.
    pub(crate) fn admits(&self, client: IpAddr, name: &[u8], remaining_ms: usize) -> bool {
        if remaining_ms == 0 {
            self.forget(client, name);
            return true;
        }
        let remaining = Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(u64::MAX));
        self.throttle(client, name, remaining);
        false
    }

    /// Whether the pair is throttled now.
    pub(crate) fn is_throttled(&self, client: IpAddr, name: &[u8]) -> bool {
        let mut pairs = self.lock();
        let key = (client, Box::from(name));
        match pairs.until.get(&key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                pairs.until.remove(&key);
                false
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pairs> {
        match self.pairs.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_throttled_until_its_time_and_forgotten_on_success() {
        let throttled = Throttled::default();
        let client: IpAddr = [10, 0, 0, 1].into();
        assert!(!throttled.is_throttled(client, b"alice"));
        throttled.throttle(client, b"alice", Duration::from_secs(60));
        assert!(throttled.is_throttled(client, b"alice"));
        assert!(!throttled.is_throttled(client, b"bob"));
        assert!(!throttled.is_throttled([10, 0, 0, 2].into(), b"alice"));
        throttled.forget(client, b"alice");
        assert!(!throttled.is_throttled(client, b"alice"));
        throttled.throttle(client, b"bob", Duration::ZERO);
        assert!(!throttled.is_throttled(client, b"bob"));
    }

    #[test]
    fn the_clusters_answer_to_a_right_password_is_mirrored() {
        let throttled = Throttled::default();
        let client: IpAddr = [10, 0, 0, 1].into();
        // Throttled in Redis by failures through other nodes: refused, and known here.
        assert!(!throttled.admits(client, b"alice", 30_000));
        assert!(throttled.is_throttled(client, b"alice"));
        // Not throttled: admitted, and whatever was mirrored is forgotten.
        assert!(throttled.admits(client, b"alice", 0));
        assert!(!throttled.is_throttled(client, b"alice"));
    }
}
