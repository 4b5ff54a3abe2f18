//! The admin HTTP API of SPEC §6: how a backend publishes events, manages users and kicks
//! sessions. An actix-web server in the same System as the protocol server.

mod error;
mod routes;
mod token;

use crate::user_sync::UserSync;
use actix_web::{middleware, web, App, HttpServer};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tether_actors::TetherHandle;

pub use error::ApiError;

/// Largest request body accepted; more is answered `413`.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the routes need.
pub struct AdminState {
    /// Publishes events, invalidates users, counts connections.
    pub tether: TetherHandle,
    /// Applies users-file changes and invalidates the users they affect.
    pub users: UserSync,
    /// The users file the routes write.
    pub users_file: PathBuf,
    /// bcrypt cost of the hashes the routes write.
    pub bcrypt_cost: u32,
    /// When set, every route but `/healthz` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The metrics `/metrics` shows.
    pub metrics: Arc<Registry>,
}

/// Starts serving on `listener` (already bound) in the current actix System; returns the
/// running server (await it or stop it through its handle) and its address.
pub fn start(
    listener: std::net::TcpListener,
    state: AdminState,
) -> std::io::Result<(actix_web::dev::Server, SocketAddr)> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(MAX_BODY_BYTES)
                    .content_type_required(false)
                    .error_handler(|err, _| ApiError::from_json(err).into()),
            )
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|err, _| ApiError::from_query(err).into()),
            )
            .app_data(
                web::PathConfig::default().error_handler(|err, _| ApiError::from_path(err).into()),
            )
            .wrap(middleware::from_fn(token::require_token))
            .configure(routes::configure)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?;
    let bound = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("the admin listener has no address"))?;
    Ok((server.run(), bound))
}
