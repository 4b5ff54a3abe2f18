//! Where the users come from: the user stores, behind one seam.
//!
//! **The seam.** [`open`] is the one place that chooses the store from the configuration
//! and answers it as a [`Store`]: the commands use it as it is (`tether passwd`, `tether
//! deluser`, `tether check-config`), and the server starts it into a [`Running`] store,
//! which answers the logins (`tether_actors::auth::user_store::UserStore`), keeps them in step
//! (SIGHUP, a watcher, notifications), writes and lists users for the admin API, and says
//! what `/metrics`, `/healthz` and `GET /v1/node` show of it. Outside this folder, only
//! the configuration (its keys) and `tether db` (the PostgreSQL store's own commands)
//! name a store.
//!
//! **Adding a store** is a module here implementing [`Store`] and [`Running`], and one
//! line in [`open`] (with its keys in the configuration's `[auth]` table). Its writes must
//! be in force on this node when they answer (the affected users' connections told
//! through the `TetherHandle` given to [`Running::keep_in_step`]); a store each node keeps
//! for itself says so in [`Running::per_node`], and the admin API then refuses to write
//! it in a cluster.
//!
//! **The users file** (SPEC §5), the default: [`file_store`] is the store, [`read`] reads
//! and checks the file, [`edit`] changes one entry keeping the rest as written,
//! [`atomic_write`] replaces a file safely, [`sync`] keeps the users in force in step with
//! it and [`watch`] notices its changes and SIGHUP.
//!
//! **Users in PostgreSQL** (SPEC §9, `auth.database`): [`pg_schema`] is the table and its
//! trigger, [`db_cli`] the store as the commands see it (`tether db init`, `tether db
//! import`), and [`pg_store`] the running store that looks logins up and listens for
//! changes.
//!
//! [`cli`] is `tether passwd` and `tether deluser` on whichever store; [`failure`] is why
//! a command failed, with its exit code.

pub mod atomic_write;
pub mod cli;
pub mod db_cli;
pub mod edit;
pub mod failure;
pub mod file_store;
pub mod pg_schema;
pub mod pg_store;
pub mod read;
pub mod store;
pub mod sync;
pub mod watch;

pub use store::{Answer, KeptInStep, Page, Running, Store, StoreError};

use crate::config::Config;
use failure::Failure;

/// The user store the configuration chooses: the users table when `auth.database` is set,
/// the users file otherwise. Reads and connects to nothing; fails (exit code 2) only on
/// a setting that cannot be used, such as an unreadable CA file.
pub fn open(config: &Config) -> Result<Box<dyn Store>, Failure> {
    let auth = &config.auth;
    if let Some(url) = &auth.database {
        let ca_file = auth.database_ca_file.as_deref();
        return Ok(Box::new(db_cli::PgStore::new(url, ca_file, &auth.table)?));
    }
    Ok(Box::new(file_store::FileStore {
        path: auth.users_file.clone(),
        watch: auth.watch,
    }))
}
