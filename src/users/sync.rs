//! Keeps the users in force in step with the users file (SPEC §5): a reload reads the file
//! off the event loop, puts it in force whole, and sends `invalidated` to every connection
//! of each user whose hash changed or who was removed. A bad file changes nothing.
//!
//! Two kinds of reload: an explicit one (SIGHUP) always reads and applies the file; one asked
//! for by the watcher applies it only when its bytes differ from what was last read, and
//! never lets a blank file remove every user. A write of its own (the admin API) is put in
//! force from the users it wrote, with no reload: the watcher then finds the file as it was
//! last read and leaves it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tether_actors::auth::user_store::{UserSet, UserTable};
use tether_actors::hub::bus::InvalidationCause;
use tether_actors::TetherHandle;

use crate::users::edit::Edited;
use crate::users::read::{self, Contents, UsersFileError};

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
    /// Where invalidations are sent, once the server runs (see [`UserSync::invalidate_through`]).
    tether: OnceLock<TetherHandle>,
    /// What the file held when last read (applied, refused or set aside), held across a
    /// whole reload (read, replace, invalidate), so an older read is never put in force
    /// after a newer one and a reload that finds nothing new returns only once the reload
    /// that applied the change has sent its invalidations.
    last_read: tokio::sync::Mutex<Contents>,
    /// Reloads that put the file in force.
    applied: Counter,
    /// Reloads that found the file missing, unreadable or invalid.
    refused: Counter,
    /// `users_reloads_total` by result, for `/metrics`.
    reloads: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl UserSync {
    /// Reloads of the file at `path` into `table`; `loaded` is what the file held when
    /// `table` was filled from it. Nobody is invalidated until
    /// [`UserSync::invalidate_through`] says where.
    pub fn new(path: PathBuf, table: Arc<UserTable>, loaded: Contents) -> Self {
        let reloads = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        let applied = reloads.get_or_create_owned(&vec![("result", "applied")]);
        let refused = reloads.get_or_create_owned(&vec![("result", "refused")]);
        Self {
            shared: Arc::new(Shared {
                path,
                table,
                tether: OnceLock::new(),
                last_read: tokio::sync::Mutex::new(loaded),
                applied,
                refused,
                reloads,
            }),
        }
    }

    /// From now on, the users a reload or a write changes are invalidated through `tether`
    /// (the first call counts).
    pub fn invalidate_through(&self, tether: TetherHandle) {
        let _ = self.shared.tether.set(tether);
    }

    /// The users file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Registers `users_reloads_total{result="applied"|"refused"}` in `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "users_reloads",
            "Reloads of the users file, by whether it was put in force",
            self.shared.reloads.clone(),
        );
    }

    /// Reloads that found the file missing, unreadable or invalid, since the start.
    pub fn reloads_refused(&self) -> u64 {
        self.shared.refused.get()
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
    /// A blank file is applied too (a warning says so): this is the explicit reload.
    /// Reloads run one at a time. Logs one line when users were added, changed or removed
    /// (names only, never hashes).
    pub async fn reload(&self) -> Result<Vec<String>, UsersFileError> {
        let mut last_read = self.shared.last_read.lock().await;
        let contents = self.read().await;
        *last_read = contents.clone();
        if contents.is_blank() {
            let before = self.shared.table.snapshot().len();
            if before > 0 {
                log::warn!(
                    "users file {}: it is empty; applying it as asked removes all {before} \
                     user(s)",
                    self.path().display()
                );
            }
        }
        self.apply(&contents).await
    }

    /// Makes `change` to the users file (on tokio's blocking pool, with the file's path) and
    /// puts what it wrote in force at once, from the users the edit checked before writing:
    /// the file is not read again. The reload lock is held throughout and the bytes written
    /// become what was last read, so the watcher does not apply the write a second time.
    /// Answers the edit's outcome once every connection of the users whose hash changed or
    /// who were removed has been sent `invalidated`.
    pub async fn write<T: Send + 'static>(
        &self,
        change: impl FnOnce(&Path) -> Result<Edited<T>, UsersFileError> + Send + 'static,
    ) -> Result<T, UsersFileError> {
        let mut last_read = self.shared.last_read.lock().await;
        let path = self.shared.path.clone();
        let edited = tokio::task::spawn_blocking(move || change(&path))
            .await
            .unwrap_or_else(|failure| {
                Err(UsersFileError::io(
                    self.path(),
                    format!("the write stopped: {failure}"),
                ))
            })?;
        if let Some(written) = edited.written {
            *last_read = Contents::Bytes(written.bytes);
            self.put_in_force(written.users).await;
        }
        Ok(edited.outcome)
    }

    /// Applies the file if it still holds `settled` (what the watcher saw stay the same for
    /// its quiet period) and that differs from what was last read. A blank file is set
    /// aside with a warning while users are in force: only SIGHUP applies it.
    pub async fn reload_settled(&self, settled: Contents) {
        let path = self.path().display();
        let mut last_read = self.shared.last_read.lock().await;
        let contents = self.read().await;
        if contents != settled {
            log::debug!("users file {path}: changed again since it settled; waiting");
            return;
        }
        if contents == *last_read {
            log::debug!("users file {path}: unchanged since it was last read");
            return;
        }
        *last_read = contents.clone();
        let users_in_force = self.shared.table.snapshot().len();
        if contents.is_blank() && users_in_force > 0 {
            log::warn!(
                "users file {path}: it is empty; the {users_in_force} user(s) in force stay \
                 (a blank file is taken for a write in progress): send SIGHUP to apply it"
            );
            return;
        }
        log::debug!("users file {path}: changed, reloading");
        // The reload logs what it did or why the file was refused.
        let _ = self.apply(&contents).await;
    }

    /// The file's contents now, read on tokio's blocking pool.
    async fn read(&self) -> Contents {
        let path = self.shared.path.clone();
        tokio::task::spawn_blocking(move || read::read_contents(&path))
            .await
            .unwrap_or_else(|failure| Contents::Unreadable(format!("reading it failed: {failure}")))
    }

    /// Puts `contents` in force (see [`Self::reload`]); the caller holds the reload lock.
    async fn apply(&self, contents: &Contents) -> Result<Vec<String>, UsersFileError> {
        match contents.users(&self.shared.path) {
            Ok(users) => Ok(self.put_in_force(users).await),
            Err(error) => {
                self.shared.refused.inc();
                log::error!("users file refused, the last good users stay in force: {error}");
                Err(error)
            }
        }
    }

    /// Puts `users` in force, logs who was added, changed or removed, and invalidates the
    /// changed and removed users; answers their names. The caller holds the reload lock.
    async fn put_in_force(&self, users: UserSet) -> Vec<String> {
        let shared = &*self.shared;
        shared.applied.inc();
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
        let Some(tether) = shared.tether.get() else {
            return affected;
        };
        for (name, cause) in causes {
            if let Err(error) = tether.invalidate(*name, cause).await {
                log::error!("user {name:?}: cannot invalidate its connections ({cause}): {error}");
            }
        }
        affected
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
