//! The integration tests, one crate: the real `tether` binary (or the library, in process)
//! driven over real TCP, HTTP, files and signals. `common` is the harness every module
//! shares; each other module is one area of the behaviour.

mod common;

mod admin;
mod client_cli;
mod client_library;
mod codec_properties;
mod events;
mod hardening_admin;
mod hardening_churn;
mod hardening_clients;
mod hardening_faults;
mod hardening_limits;
mod hardening_logins;
mod hardening_reloads;
mod hardening_shutdown;
mod logins;
mod operator;
mod process;
mod protocol;
mod supervision;
mod users;
mod users_postgres;
