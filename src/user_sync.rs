//! Keeps the users in force in step with the users file (SPEC §5): a reload reads the file
//! off the event loop, puts it in force whole, and sends `invalidated` to every connection
//! of each user whose hash changed or who was removed. A bad file changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tether_actors::bus::InvalidationCause;
use tether_actors::users::{UserSet, UserTable};
use tether_actors::TetherHandle;

use crate::users_file::{self, UsersFileError};

/// Keeps the in-memory [`UserTable`] in step with the users file and invalidates affected
/// users. Clones share one table and one reload lock.
#[derive(Clone)]
pub struct UserSync {
    /// Shared by every clone: the watcher, SIGHUP and the admin API reload the same table.
    shared: Arc<Shared>,
}

/// What every clone of a [`UserSync`] shares.
struct Shared {
    /// The users file.
    path: PathBuf,
    /// The users in force, consulted at every login.
    table: Arc<UserTable>,
    /// Where invalidations are sent.
    tether: TetherHandle,
    /// Held across a whole reload (read, replace, invalidate), so an older read is never
    /// put in force after a newer one and a reload that finds nothing new returns only once
    /// the reload that applied the change has sent its invalidations.
    reloading: tokio::sync::Mutex<()>,
}

impl UserSync {
    /// Reloads of the file at `path` into `table`, invalidating through `tether`.
    pub fn new(path: PathBuf, table: Arc<UserTable>, tether: TetherHandle) -> Self {
        Self {
            shared: Arc::new(Shared {
                path,
                table,
                tether,
                reloading: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The users file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The users in force now.
    pub fn users(&self) -> Arc<UserSet> {
        self.shared.table.snapshot()
    }

    /// Reads the file (off the event loop, on tokio's blocking pool), puts it in force, sends
    /// `invalidated` to every connection of each user whose hash changed or who was removed
    /// (awaiting the [`TetherHandle::invalidate`] answers) and returns those names, sorted.
    ///
    /// A file that is missing, does not parse or holds an invalid entry: one log line (file,
    /// line, what is wrong), the last good set stays, nobody is logged out, `Err` returned.
    /// Reloads run one at a time. Logs one line when users were added, changed or removed
    /// (names only, never hashes).
    pub async fn reload(&self) -> Result<Vec<String>, UsersFileError> {
        let shared = &*self.shared;
        let _one_at_a_time = shared.reloading.lock().await;
        let path = shared.path.clone();
        let read = tokio::task::spawn_blocking(move || users_file::load_existing(&path))
            .await
            .unwrap_or_else(|failure| {
                Err(UsersFileError::io(
                    &shared.path,
                    format!("reading it failed: {failure}"),
                ))
            });
        let users = match read {
            Ok(users) => users,
            Err(error) => {
                log::error!("users file refused, the last good users stay in force: {error}");
                return Err(error);
            }
        };
        let before = shared.table.snapshot();
        let affected = shared.table.replace(users);
        let now = shared.table.snapshot();
        let (changed, removed): (Vec<&str>, Vec<&str>) = affected
            .iter()
            .map(String::as_str)
            .partition(|name| now.contains_key(*name));
        let mut added: Vec<&str> = now
            .keys()
            .filter(|name| !before.contains_key(*name))
            .map(String::as_str)
            .collect();
        added.sort_unstable();
        if added.is_empty() && affected.is_empty() {
            log::debug!("users file reloaded: {} user(s), none changed", now.len());
        } else {
            log::info!(
                "users file reloaded: {} user(s){}{}{}",
                now.len(),
                listed("added", &added),
                listed("changed", &changed),
                listed("removed", &removed),
            );
        }
        let causes = changed
            .iter()
            .map(|name| (name, InvalidationCause::PasswordChanged))
            .chain(
                removed
                    .iter()
                    .map(|name| (name, InvalidationCause::UserRemoved)),
            );
        for (name, cause) in causes {
            if let Err(error) = shared.tether.invalidate(*name, cause).await {
                log::error!("user {name:?}: cannot invalidate its connections ({cause}): {error}");
            }
        }
        Ok(affected)
    }
}

/// `; WHAT: "a", "b"` for a log line, or nothing when `names` is empty.
fn listed(what: &str, names: &[&str]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let names: Vec<String> = names.iter().map(|name| format!("{name:?}")).collect();
    format!("; {what}: {}", names.join(", "))
}
