//! The users file (SPEC §5), one concept per module: [`read`] reads and checks it, [`edit`]
//! changes one entry keeping the rest as written, [`atomic_write`] replaces a file safely,
//! [`sync`] keeps the users in force in step with it, [`watch`] notices its changes and
//! SIGHUP, and [`cli`] is `tether passwd`, `tether deluser` and `tether check-config`.
//!
//! Users in PostgreSQL (SPEC §9): [`pg_schema`] is the table and its trigger, [`pg_store`]
//! the store that looks logins up and listens for changes, and [`db_cli`] the commands
//! that write the table (`tether db init`, `tether db import`, and `passwd` / `deluser`
//! when `auth.database` is set).

pub mod atomic_write;
pub mod cli;
pub mod db_cli;
pub mod edit;
pub mod failure;
pub mod pg_schema;
pub mod pg_store;
pub mod read;
pub mod sync;
pub mod watch;
