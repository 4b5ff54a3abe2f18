//! The users file as a [`Store`] (SPEC §5), the default: [`FileStore`] edits it for the
//! commands and loads it for the server, whose [`FileUsers`] holds it in memory, keeps it
//! in step through [`sync`](crate::users::sync) and [`watch`](crate::users::watch), and
//! writes it for the admin API.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prometheus_client::registry::Registry;
use serde_json::json;
use tether_actors::auth::user_store::{UserStore, UserTable};
use tether_actors::TetherHandle;
use tokio::signal::unix::Signal;

use crate::users::edit::{self, PasswordChange};
use crate::users::failure::Failure;
use crate::users::read::{self, Contents, UsersFileError};
use crate::users::store::{Answer, KeptInStep, Page, Running, Store, StoreError};
use crate::users::sync::UserSync;

/// The users file the configuration names (`auth.users_file`), and whether a running
/// server watches it (`auth.watch`).
pub struct FileStore {
    /// The users file.
    pub path: PathBuf,
    /// Whether the server reloads it when it changes (SIGHUP always does).
    pub watch: bool,
}

impl Store for FileStore {
    fn shown(&self) -> String {
        shown_path(&self.path)
    }

    fn check(&self) -> Result<String, Failure> {
        let shown = self.shown();
        let contents = read::read_contents(&self.path);
        match contents.users(&self.path) {
            Ok(users) => Ok(format!("{shown}: {} user(s)", users.len())),
            Err(_) if contents == Contents::Missing => Ok(format!(
                "{shown} does not exist: nobody can log in until `tether passwd NAME` adds a user"
            )),
            Err(error) => Err(Failure::invalid(error.to_string())),
        }
    }

    fn set_password_hash(&self, name: &str, hash: &str) -> Result<String, Failure> {
        let shown = self.shown();
        let new_file = !self.path.exists();
        let change = edit::set_password_hash(&self.path, name, hash)?.outcome;
        Ok(match change {
            PasswordChange::Created if new_file => {
                format!("user {name:?} created in {shown} (a new users file)")
            }
            PasswordChange::Created => format!("user {name:?} created in {shown}"),
            PasswordChange::Changed => format!("password of user {name:?} changed in {shown}"),
        })
    }

    fn remove_user(&self, name: &str) -> Result<String, Failure> {
        let shown = self.shown();
        if edit::remove_user(&self.path, name)?.outcome {
            Ok(format!("user {name:?} removed from {shown}"))
        } else {
            Err(Failure::failed(format!(
                "no user {name:?} in {shown}; nothing removed"
            )))
        }
    }

    /// Loads the file; a missing one means no users yet (a warning says so).
    fn start(&self) -> Result<Arc<dyn Running>, Failure> {
        let path = &self.path;
        let loaded = read::read_contents(path);
        let users = match loaded.users(path) {
            Ok(users) => {
                log::info!("{} user(s) loaded from {}", users.len(), path.display());
                users
            }
            Err(_) if loaded == Contents::Missing => {
                log::warn!(
                    "users file {} does not exist: nobody can log in until a user is added \
                     (`tether passwd NAME`, or PUT /v1/users/NAME/password on the admin API)",
                    path.display()
                );
                Default::default()
            }
            Err(err) => return Err(Failure::invalid(err.to_string())),
        };
        let table = Arc::new(UserTable::new(users));
        Ok(Arc::new(FileUsers {
            sync: UserSync::new(path.clone(), Arc::clone(&table), loaded),
            table,
            watch: self.watch,
        }))
    }
}

/// The users file held in memory by a running server.
pub struct FileUsers {
    /// The users in force, consulted at every login.
    table: Arc<UserTable>,
    /// Reloads and writes of the file, put in force in `table`.
    sync: UserSync,
    /// `auth.watch`: whether [`Running::keep_in_step`] starts a watcher.
    watch: bool,
}

/// Why the file could not be changed: the whole answer, `409` when the file holds
/// something invalid (a hand-edited entry, say) that must be fixed first, `500` when it
/// could not be read or written.
fn store_error(err: &UsersFileError) -> StoreError {
    if err.is_io() {
        StoreError::Failed(format!("cannot write the users file: {err}"))
    } else {
        StoreError::Invalid(format!(
            "the users file is invalid, nothing changed; fix it first: {err}"
        ))
    }
}

impl Running for FileUsers {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn logins(&self) -> Arc<dyn UserStore> {
        Arc::clone(&self.table) as _
    }

    fn keep_in_step(&self, tether: TetherHandle, hangups: Signal) -> KeptInStep {
        self.sync.invalidate_through(tether);
        let watching = crate::users::watch::start(self.sync.clone(), self.watch, hangups);
        KeptInStep(Some(Box::new(watching)))
    }

    fn register_metrics(&self, registry: &mut Registry) {
        self.sync.register_metrics(registry);
    }

    fn reachable(&self) -> Option<bool> {
        None
    }

    fn figures(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut figures = serde_json::Map::new();
        figures.insert("count".to_owned(), json!(self.sync.users().len()));
        figures.insert(
            "reloads_refused".to_owned(),
            json!(self.sync.reloads_refused()),
        );
        figures
    }

    fn per_node(&self) -> Option<&'static str> {
        Some(
            "this node is part of a cluster whose users come from each node's own users \
             file: change the files (tether passwd/deluser on every node), or keep the \
             users in PostgreSQL (auth.database)",
        )
    }

    fn set_hash<'a>(&'a self, name: &'a str, hash: &'a str) -> Answer<'a, PasswordChange> {
        let (user, hash) = (name.to_owned(), hash.to_owned());
        Box::pin(async move {
            self.sync
                .write(move |path| edit::set_password_hash(path, &user, &hash))
                .await
                .map_err(|err| store_error(&err))
        })
    }

    fn remove<'a>(&'a self, name: &'a str) -> Answer<'a, bool> {
        let user = name.to_owned();
        Box::pin(async move {
            self.sync
                .write(move |path| edit::remove_user(path, &user))
                .await
                .map_err(|err| store_error(&err))
        })
    }

    fn names(&self, page: Page) -> Answer<'_, Vec<String>> {
        let Page {
            after,
            limit,
            search,
        } = page;
        let users = self.sync.users();
        let mut names: Vec<&String> = users
            .keys()
            .filter(|name| after.as_ref().is_none_or(|after| *name > after))
            .filter(|name| {
                search
                    .as_deref()
                    .is_none_or(|search| contains_ascii_folded(name, search))
            })
            .collect();
        if names.len() > limit {
            names.select_nth_unstable(limit);
            names.truncate(limit);
        }
        names.sort_unstable();
        let names = names.into_iter().cloned().collect();
        Box::pin(std::future::ready(Ok(names)))
    }
}

/// `path` made absolute for messages, so that the person sees which file was meant.
fn shown_path(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Whether `name` contains `needle` (ASCII lowercase), ASCII letters compared without case.
fn contains_ascii_folded(name: &str, needle: &str) -> bool {
    name.as_bytes()
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}
