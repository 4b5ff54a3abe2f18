//! tether's protocol server as Actix actors, for the `tether` binary and for host programs
//! that embed it.
//!
//! Start a [`Tether`] inside a running actix System with a listener, [`Settings`] and a
//! [`users::UserStore`]; publish events and invalidate users through its [`TetherHandle`]
//! or by sending [`bus::Publish`], [`bus::PublishBatch`] and [`bus::Invalidate`] to the bus.

#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods)]

// Layers, bottom up: util → wire → auth → hub → connection → server. A module imports only
// from layers below it (inside `hub`, from the modules before it in `hub`'s own order);
// `scripts/module_graph.py` checks it (in CI). See ARCHITECTURE.md.
pub mod auth;
pub mod connection;
pub mod hub;
pub mod server;
pub mod util;
pub mod wire;

// The paths host programs and the tests used before the layers had folders.
pub use auth::{credentials, password, throttle, users, verifiers};
pub use hub::{bus, registry, supervisor};
pub use util::{buffers, clock, excerpt, metrics};
pub use wire::{codec, protocol, proxy_header};

pub use connection::ws_handshake::WebSocketPolicy;
pub use server::{
    Listeners, Settings, StartError, Tether, TetherHandle, TlsConfigSlot, WebSocketListener,
};
/// The rustls the TLS listener uses, for building its configuration.
pub use tokio_rustls::rustls;
