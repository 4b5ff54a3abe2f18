//! tether's protocol server as Actix actors, for the `tether` binary and for host programs
//! that embed it.
//!
//! Start a [`Tether`] inside a running actix System with a listener, [`Settings`] and a
//! [`users::UserStore`]; publish events and invalidate users through its [`TetherHandle`]
//! or by sending [`bus::Publish`], [`bus::PublishBatch`] and [`bus::Invalidate`] to the bus.

#![forbid(unsafe_code)]

pub mod buffers;
pub mod bus;
pub mod clock;
pub mod codec;
pub mod connection;
pub mod credentials;
pub mod excerpt;
pub mod metrics;
mod output_budget;
pub mod password;
mod presence;
pub mod protocol;
pub mod registry;
mod roster;
pub mod server;
pub mod supervisor;
pub mod throttle;
pub mod users;

pub use server::{Settings, StartError, Tether, TetherHandle};
