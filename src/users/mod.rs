//! The users file (SPEC §5), one concept per module: [`read`] reads and checks it, [`edit`]
//! changes one entry keeping the rest as written, [`atomic_write`] replaces a file safely,
//! [`sync`] keeps the users in force in step with it, [`watch`] notices its changes and
//! SIGHUP, and [`cli`] is `tether passwd`, `tether deluser` and `tether check-config`.

pub mod atomic_write;
pub mod cli;
pub mod edit;
pub mod read;
pub mod sync;
pub mod watch;
