//! tether's protocol server as Actix actors, for the `tether` binary and for host programs
//! that embed it.
//!
//! Start a [`Tether`] inside a running actix System with a listener, [`Settings`] and a
//! [`auth::user_store::UserStore`]; publish events and invalidate users through its
//! [`TetherHandle`] or by sending [`hub::bus::Publish`], [`hub::bus::PublishBatch`] and
//! [`hub::bus::Invalidate`] to the bus.

#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods)]

// Layers, bottom up: util → protocol → auth → hub → connection → server. A module imports only
// from layers below it (inside `hub`, from the modules before it in `hub`'s own order);
// `scripts/module_graph.py` checks it (in CI). See ARCHITECTURE.md.
pub mod auth;
pub mod connection;
pub mod hub;
pub mod protocol;
pub mod server;
pub mod util;

// The front door: what a host program needs to start and drive a server. Everything
// else is reached through its layer (`tether_actors::hub::bus`, `…::auth::user_store`).
pub use connection::ws_handshake::WebSocketPolicy;
pub use server::{
    Listeners, Settings, StartError, Tether, TetherHandle, TlsConfigSlot, WebSocketListener,
};
/// The rustls the TLS listener uses, for building its configuration.
pub use tokio_rustls::rustls;
