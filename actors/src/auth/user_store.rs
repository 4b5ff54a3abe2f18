//! Where password hashes come from: the [`UserStore`] trait a host plugs in, and
//! [`UserTable`], an in-memory store that is replaced as a whole and says who changed.
//!
//! A login for a name with no user is checked against a stand-in hash, so that it takes as
//! long as a wrong password for a known user. [`UserTable`] keeps one stand-in per bcrypt
//! cost its users have and gives each unknown name the one picked by a keyed hash of the
//! name, weighted by how many users have each cost: an unknown name behaves like one
//! known user of some cost, the same one at every try. [`StandIns`] is that choice, for a
//! store that counts its costs otherwise (a database, with one aggregate query).

use crate::auth::password::{hash_cost, stand_in_hash};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock};

pub use crate::auth::password::{PasswordHash, StoreUnreachable};

/// The source of password hashes consulted at every login.
///
/// A login's hash is found by [`UserStore::lookup_for_login`], on a password-check thread
/// just before bcrypt runs, where it may block (a database query). Once the password
/// matched, [`UserStore::password_hash`] confirms on the event loop that the hash is still
/// in force, so it must answer from memory.
pub trait UserStore: Send + Sync + 'static {
    /// The bcrypt hash of `name` in force as far as this store knows without waiting, or
    /// `None` for an unknown user. A store that does not hold every user answers for those
    /// its lookups found, until a change replaces them.
    fn password_hash(&self, name: &str) -> Option<PasswordHash>;

    /// The stored hash of `name` for a login (`None`: no such user), looked up on a
    /// password-check thread (never an event loop), so it may wait for a database; it
    /// should answer within seconds. [`StoreUnreachable`] when the store could not say:
    /// the login is refused without counting as a wrong password. By default,
    /// [`UserStore::password_hash`].
    fn lookup_for_login(&self, name: &str) -> Result<Option<PasswordHash>, StoreUnreachable> {
        Ok(self.password_hash(name))
    }

    /// The hash to check a login for `name` against when it has no user (or the login is
    /// malformed), so that its `login_invalid` takes as long as a known user's. `None`
    /// leaves it to the server's stand-in at the configured cost.
    fn stand_in_hash(&self, name: &[u8]) -> Option<PasswordHash> {
        let _ = name;
        None
    }
}

/// Every user's name and password hash.
pub type UserSet = HashMap<String, PasswordHash>;

/// A [`UserStore`] held in memory and swapped whole, as when the users file is reloaded.
#[derive(Debug, Default)]
pub struct UserTable {
    /// The set in force and its stand-ins; readers clone the `Arc`s and never wait for a
    /// writer's work.
    users: RwLock<InForce>,
    /// Keys the hash that picks an unknown name's stand-in; fixed for the table's life so
    /// a name keeps its stand-in while the costs in the set stay the same.
    name_key: RandomState,
}

/// The users in force and the stand-ins made for their costs.
#[derive(Debug, Default)]
struct InForce {
    users: Arc<UserSet>,
    stand_ins: Arc<StandIns>,
}

/// One stand-in hash per bcrypt cost users have, with how many users have it; picks an
/// unknown name's stand-in with the odds of each cost among the users.
#[derive(Debug, Default)]
pub struct StandIns {
    /// (cost, users with that cost, stand-in of that cost), by cost.
    by_cost: Vec<(u32, u64, PasswordHash)>,
    /// Users counted in `by_cost`.
    users: u64,
}

impl StandIns {
    /// The stand-ins for `users`, reusing those of `previous` whose cost is still there.
    fn for_users(users: &UserSet, previous: &StandIns) -> Self {
        let mut counts: HashMap<u32, u64> = HashMap::new();
        for hash in users.values() {
            if let Some(cost) = hash_cost(hash) {
                *counts.entry(cost).or_default() += 1;
            }
        }
        Self::for_costs(counts, previous)
    }

    /// The stand-ins for users counted by cost (`(cost, users)`; a cost given twice adds
    /// up), reusing those of `previous` whose cost is still there. Costs no stand-in can
    /// be made for (outside 4–31) are left out, with a warning.
    pub fn for_costs(counts: impl IntoIterator<Item = (u32, u64)>, previous: &StandIns) -> Self {
        let mut summed: HashMap<u32, u64> = HashMap::new();
        for (cost, count) in counts {
            *summed.entry(cost).or_default() += count;
        }
        let counts = summed;
        let mut by_cost: Vec<(u32, u64, PasswordHash)> = counts
            .into_iter()
            .filter(|(_, count)| *count > 0)
            .filter_map(|(cost, count)| {
                let reused = previous
                    .by_cost
                    .iter()
                    .find(|(old, _, _)| *old == cost)
                    .map(|(_, _, hash)| Ok(hash.clone()));
                match reused.unwrap_or_else(|| stand_in_hash(cost)) {
                    Ok(hash) => Some((cost, count, hash)),
                    Err(err) => {
                        log::warn!("no stand-in hash for bcrypt cost {cost}: {err}");
                        None
                    }
                }
            })
            .collect();
        by_cost.sort_by_key(|(cost, _, _)| *cost);
        let users = by_cost.iter().map(|(_, count, _)| count).sum();
        Self { by_cost, users }
    }

    /// The costs and how many users have each, by cost.
    pub fn costs(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.by_cost.iter().map(|(cost, count, _)| (*cost, *count))
    }

    /// The stand-in for a name whose keyed hash is `point`: cost `c` for a share of the
    /// points equal to the share of users with cost `c`; `None` when no user was counted.
    pub fn pick(&self, point: u64) -> Option<PasswordHash> {
        let mut point = point.checked_rem(self.users)?;
        for (_, count, hash) in &self.by_cost {
            if point < *count {
                return Some(hash.clone());
            }
            point -= count;
        }
        None
    }
}

impl UserTable {
    /// A table holding `users`.
    pub fn new(users: UserSet) -> Self {
        let stand_ins = Arc::new(StandIns::for_users(&users, &StandIns::default()));
        Self {
            users: RwLock::new(InForce {
                users: Arc::new(users),
                stand_ins,
            }),
            name_key: RandomState::new(),
        }
    }

    /// The set in force now.
    pub fn snapshot(&self) -> Arc<UserSet> {
        match self.users.read() {
            Ok(guard) => Arc::clone(&guard.users),
            Err(poisoned) => Arc::clone(&poisoned.into_inner().users),
        }
    }

    fn stand_ins(&self) -> Arc<StandIns> {
        match self.users.read() {
            Ok(guard) => Arc::clone(&guard.stand_ins),
            Err(poisoned) => Arc::clone(&poisoned.into_inner().stand_ins),
        }
    }

    /// Puts `users` in force and returns, sorted, the names whose hash changed or that are
    /// gone: the users whose connections must be invalidated.
    pub fn replace(&self, users: UserSet) -> Vec<String> {
        // Made outside the lock: logins keep reading the old set meanwhile.
        let stand_ins = Arc::new(StandIns::for_users(&users, &self.stand_ins()));
        let users = Arc::new(users);
        let previous = {
            let mut guard = match self.users.write() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            guard.stand_ins = stand_ins;
            std::mem::replace(&mut guard.users, Arc::clone(&users))
        };
        let mut changed: Vec<String> = previous
            .iter()
            .filter(|(name, hash)| users.get(*name) != Some(*hash))
            .map(|(name, _)| name.clone())
            .collect();
        changed.sort();
        changed
    }
}

impl UserStore for UserTable {
    fn password_hash(&self, name: &str) -> Option<PasswordHash> {
        self.snapshot().get(name).cloned()
    }

    fn stand_in_hash(&self, name: &[u8]) -> Option<PasswordHash> {
        self.stand_ins().pick(self.name_key.hash_one(name))
    }
}

#[cfg(test)]
// Tests make and check hashes directly; they run on no event loop.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn set(entries: &[(&str, &str)]) -> UserSet {
        entries
            .iter()
            .map(|(name, hash)| (name.to_string(), PasswordHash::from(*hash)))
            .collect()
    }

    #[test]
    fn replace_reports_changed_and_removed_users_only() {
        let table = UserTable::new(set(&[("alice", "h1"), ("bob", "h2"), ("carol", "h3")]));
        let changed = table.replace(set(&[("alice", "h1"), ("bob", "h2b"), ("dave", "h4")]));
        assert_eq!(changed, vec!["bob".to_string(), "carol".to_string()]);
        assert_eq!(table.password_hash("dave").as_deref(), Some("h4"));
        assert_eq!(table.password_hash("carol"), None);
    }

    #[test]
    fn unknown_names_get_stand_ins_of_the_costs_in_the_set_weighted_by_users() {
        let hash_at = |cost: u32| PasswordHash::from(bcrypt::hash("pw", cost).expect("hashes"));
        let (four, five) = (hash_at(4), hash_at(5));
        let mut users = UserSet::new();
        for n in 0..3 {
            users.insert(format!("cheap{n}"), four.clone());
        }
        users.insert("dear".to_string(), five);
        let table = UserTable::new(users);
        let mut at_four = 0;
        for n in 0..4000u32 {
            let name = format!("nobody{n}");
            let stand_in = table.stand_in_hash(name.as_bytes()).expect("a stand-in");
            // The same name gets the same stand-in every time.
            assert_eq!(table.stand_in_hash(name.as_bytes()), Some(stand_in.clone()));
            match hash_cost(&stand_in) {
                Some(4) => at_four += 1,
                Some(5) => {}
                other => panic!("stand-in of cost {other:?}"),
            }
        }
        // Three users in four have cost 4.
        assert!(
            (2700..3300).contains(&at_four),
            "{at_four} of 4000 at cost 4"
        );

        table.replace(UserSet::from([("solo".to_string(), hash_at(6))]));
        let stand_in = table.stand_in_hash(b"nobody").expect("a stand-in");
        assert_eq!(hash_cost(&stand_in), Some(6));
        table.replace(UserSet::new());
        assert_eq!(table.stand_in_hash(b"nobody"), None);
    }
}
