//! Which bindings existed when: every second the broker's thread notes this machine's time
//! and the next binding id ([`BindingId::watermark`]), for the last hour. An invalidation
//! from another node that carries the time it was made (it may have waited for Redis while
//! its node was cut off) then ends only the bindings issued before that time, sparing the
//! logins made after it (issue 23 item 6).

use std::collections::VecDeque;
use tether_actors::hub::messages::BindingId;

/// Marks kept (one a second: an hour).
const KEPT: usize = 3600;

/// (this machine's time in ms, the next binding id then), oldest first.
#[derive(Debug, Default)]
pub(crate) struct BindingHistory {
    marks: VecDeque<(i64, BindingId)>,
}

impl BindingHistory {
    /// Notes that at `now` (ms) the next binding id is `next`.
    pub(crate) fn note(&mut self, now: i64, next: BindingId) {
        if self.marks.len() >= KEPT {
            self.marks.pop_front();
        }
        self.marks.push_back((now, next));
    }

    /// The bindings an invalidation made at `made` (this machine's ms) ends: those issued
    /// before the first mark at or after `made` (so a binding made within a second after
    /// it may end too — never one made before it survives); `None` (all of them) when no
    /// mark is that late yet, i.e. the invalidation is fresh.
    pub(crate) fn issued_before(&self, made: i64) -> Option<BindingId> {
        self.marks
            .iter()
            .find(|(time, _)| *time >= made)
            .map(|(_, next)| *next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_invalidation_ends_the_bindings_before_the_next_mark_and_a_fresh_one_all() {
        let mut history = BindingHistory::default();
        let first = BindingId::watermark();
        history.note(1_000, first);
        history.note(2_000, first);
        assert_eq!(history.issued_before(500), Some(first));
        assert_eq!(history.issued_before(1_500), Some(first));
        assert_eq!(history.issued_before(2_000), Some(first));
        assert_eq!(history.issued_before(2_001), None);
        for second in 0..(KEPT as i64 + 10) {
            history.note(3_000 + second * 1000, first);
        }
        assert_eq!(history.marks.len(), KEPT);
    }
}
