//! Where password hashes come from: the [`UserStore`] trait a host plugs in, and
//! [`UserTable`], an in-memory store that is replaced as a whole and says who changed.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A bcrypt hash as stored, shared without copying.
pub type PasswordHash = Arc<str>;

/// The source of password hashes consulted at every login.
///
/// Lookups run on the event loops, so an implementation must answer from memory.
pub trait UserStore: Send + Sync + 'static {
    /// The stored bcrypt hash of `name`, or `None` for an unknown user.
    fn password_hash(&self, name: &str) -> Option<PasswordHash>;
}

/// Every user's name and password hash.
pub type UserSet = HashMap<String, PasswordHash>;

/// A [`UserStore`] held in memory and swapped whole, as when the users file is reloaded.
#[derive(Debug, Default)]
pub struct UserTable {
    /// The set in force; readers clone the `Arc` and never wait for a writer's work.
    users: RwLock<Arc<UserSet>>,
}

impl UserTable {
    /// A table holding `users`.
    pub fn new(users: UserSet) -> Self {
        Self {
            users: RwLock::new(Arc::new(users)),
        }
    }

    /// The set in force now.
    pub fn snapshot(&self) -> Arc<UserSet> {
        match self.users.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts `users` in force and returns, sorted, the names whose hash changed or that are
    /// gone: the users whose connections must be invalidated.
    pub fn replace(&self, users: UserSet) -> Vec<String> {
        let users = Arc::new(users);
        let previous = {
            let mut guard = match self.users.write() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            std::mem::replace(&mut *guard, Arc::clone(&users))
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
}

#[cfg(test)]
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
}
