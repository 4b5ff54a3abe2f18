//! The integration tests, one crate: the real `tether` binary (or the library, in process)
//! driven over real TCP, HTTP, files and signals. `common` is the harness every module
//! shares; each other module is one area of the behaviour.

// A test that cannot get what it needs should stop right there, saying why: the harness and
// the tests may unwrap and expect (the crate's lints deny both outside tests).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod admin;
mod admission;
mod brokers_cluster;
mod brokers_faults;
mod brokers_sentinel;
mod brokers_tls;
mod client_cli;
mod client_library;
mod cluster;
mod cluster_faults;
mod cluster_internals;
mod cluster_reliability;
mod cluster_tls;
mod codec_properties;
mod console;
mod events;
mod hardening_admin;
mod hardening_churn;
mod hardening_clients;
mod hardening_faults;
mod hardening_limits;
mod hardening_logins;
mod hardening_reloads;
mod hardening_shutdown;
mod js_client;
mod logins;
mod operator;
mod process;
mod protocol;
mod proxy_protocol;
mod supervision;
mod tls;
mod users;
mod users_postgres;
mod websocket;
