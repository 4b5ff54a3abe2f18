//! The tether application: its configuration, its users file, and the wiring that runs the
//! protocol server of `tether-actors` as a process.

#![forbid(unsafe_code)]

pub mod config;
pub mod serve;
pub mod users_file;
