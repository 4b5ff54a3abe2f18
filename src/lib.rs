//! The tether application: its configuration, its user stores, and the wiring that runs the
//! protocol server of `tether-actors` as a process.

#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod broker;
pub mod check_config;
pub mod cli;
pub mod config;
pub mod limits;
pub mod pem;
pub mod serve;
pub mod stdout;
pub mod tls;
pub mod tls_client;
pub mod toml_error;
pub mod users;
