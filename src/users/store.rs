//! The seam every user store plugs into: [`Store`], the store as configured, which the
//! commands (`tether passwd`, `tether deluser`, `tether check-config`) use and which starts
//! the server's [`Running`] store; and [`Running`], what the server and its admin API
//! (`/healthz`, `/metrics`, `GET /v1/node`, the `/v1/users` routes) use while it runs.
//!
//! Logins read through `tether_actors::auth::user_store::UserStore`, which [`Running::logins`] answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tether_actors::auth::user_store::UserStore;
use tether_actors::TetherHandle;
use tokio::signal::unix::Signal;

use crate::users::edit::PasswordChange;
use crate::users::failure::Failure;

/// A user store as the configuration names it, not yet serving: opening it reads nothing
/// and connects nowhere (only files the configuration names for it, such as a CA file).
pub trait Store {
    /// How messages name the store: the users file's absolute path, `table NAME`.
    fn shown(&self) -> String;

    /// For `tether check-config`: what the store holds, as start-up would find it, without
    /// connecting anywhere (`path: 3 user(s)`); a failure when the server would refuse to
    /// start (exit code 2).
    fn check(&self) -> Result<String, Failure>;

    /// For `tether passwd`: sets `name`'s password hash, creating the user, and answers what
    /// was done naming the store. A running server picks the change up itself.
    fn set_password_hash(&self, name: &str, hash: &str) -> Result<String, Failure>;

    /// For `tether deluser`: removes `name` and answers what was done; an absent user is a
    /// failure (exit code 1) that changes nothing.
    fn remove_user(&self, name: &str) -> Result<String, Failure>;

    /// For the server: loads or connects to the store and logs where the users come from.
    /// The failure's exit code is 2 for a store that is invalid (a bad users file, a
    /// missing table), 1 for one that cannot be reached.
    fn start(&self) -> Result<Arc<dyn Running>, Failure>;
}

/// An answer of the store that may wait (a file written off the event loop, a query).
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + 'a>>;

/// A user store the server uses while it runs. Its writes are in force on this node
/// (the affected users' connections told) when they answer.
pub trait Running: Send + Sync + 'static {
    /// The store's kind as `GET /v1/node` names it: `file`, `postgresql`.
    fn kind(&self) -> &'static str;

    /// Where logins find their hashes.
    fn logins(&self) -> Arc<dyn UserStore>;

    /// Keeps the users in force in step with the store from now on, invalidating through
    /// `tether`: SIGHUP from `hangups` reloads or reconciles, and the store's own watch
    /// (a file watcher, a database's notifications) runs. Must be called inside the actix
    /// System; dropping the answer stops what it started that can be stopped.
    fn keep_in_step(&self, tether: TetherHandle, hangups: Signal) -> KeptInStep;

    /// Adds the store's metrics to `registry` (`/metrics`).
    fn register_metrics(&self, registry: &mut Registry);

    /// `Some(false)` while the store does not answer; `None` for a store that is always
    /// there (in memory). `/healthz` shows `"users"` only for `Some`.
    fn reachable(&self) -> Option<bool>;

    /// What `GET /v1/node` shows of the store besides its kind and state (such as how many
    /// users it holds).
    fn figures(&self) -> serde_json::Map<String, serde_json::Value>;

    /// `Some(why)` when each node keeps its own users (a users file): in a cluster, the
    /// admin API's user routes refuse to write them (`409`, saying why).
    fn per_node(&self) -> Option<&'static str>;

    /// Sets `name`'s password hash, creating the user.
    fn set_hash<'a>(&'a self, name: &'a str, hash: &'a str) -> Answer<'a, PasswordChange>;

    /// Removes `name`; `false` when there was no such user.
    fn remove<'a>(&'a self, name: &'a str) -> Answer<'a, bool>;

    /// One page of the names of the users in force, sorted bytewise (see [`Page`]).
    fn names(&self, page: Page) -> Answer<'_, Vec<String>>;
}

/// Which names [`Running::names`] answers.
#[derive(Debug, Clone)]
pub struct Page {
    /// Only the names that sort after this one (bytewise); from the start when `None`.
    pub after: Option<String>,
    /// At most this many names.
    pub limit: usize,
    /// Only the names containing this text, in ASCII lowercase (ASCII letters of the names
    /// compared without case).
    pub search: Option<String>,
}

/// What [`Running::keep_in_step`] started; dropping it stops what can be stopped (a
/// watcher thread).
pub struct KeptInStep(pub Option<Box<dyn Send>>);

/// Why a write or a read of a running store failed.
#[derive(Debug)]
pub enum StoreError {
    /// The store holds something invalid that must be fixed first; nothing changed. The
    /// text is the whole answer (`409`).
    Invalid(String),
    /// The store could not be read or written. The text is the whole answer (`500`).
    Failed(String),
    /// The store did not answer; the text says why (`503`, after what was asked).
    Unavailable(String),
}
