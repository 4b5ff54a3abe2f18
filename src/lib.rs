//! The tether application: its configuration, its users file, and the wiring that runs the
//! protocol server of `tether-actors` as a process.

#![forbid(unsafe_code)]

pub mod admin;
pub mod broker;
pub mod client;
pub mod config;
pub mod limits;
pub mod serve;
pub mod tls;
pub mod toml_error;
pub mod users;
