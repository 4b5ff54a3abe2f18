//! The admin HTTP API of SPEC §6: how a backend publishes events, manages users and kicks
//! sessions. An actix-web server in the same System as the protocol server.

mod body_deadline;
mod error;
mod events;
mod metrics_format;
mod routes;
mod token;

use crate::users::pg_store::PgUsers;
use crate::users::sync::UserSync;
use actix_web::{middleware, web, App, HttpServer};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tether_actors::TetherHandle;

pub use error::ApiError;

pub use body_deadline::BODY_TIMEOUT;

/// Largest request body accepted; more is answered `413`.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a client may take to send a request head, from the moment it connects (or,
/// on a kept-alive connection, from its previous answer); then `408` and the connection is
/// closed. The body has its own deadline, [`BODY_TIMEOUT`].
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may sit idle between requests before it is closed.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Connections the admin API serves at once. More wait in the listen queue and are served
/// as slots free up; a slot is held at most [`HEAD_TIMEOUT`] + [`BODY_TIMEOUT`] + the
/// handler's time by a client that stalls. A backend needs a handful; 256 cost at most
/// 256 × (64 KiB body + buffers) ≈ 20 MiB.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections the kernel may queue, completed but not accepted, beyond
/// [`MAX_CONNECTIONS`]; further ones are refused by the kernel.
pub const LISTEN_BACKLOG: i32 = 256;

/// Where the user routes read and write.
pub enum UserAdmin {
    /// Writes the users file, puts what it wrote in force and invalidates the users it
    /// affects.
    File(UserSync),
    /// Users in PostgreSQL.
    Database(PgUsers),
}

/// What the routes need.
pub struct AdminState {
    /// Publishes events, invalidates users, counts connections.
    pub tether: TetherHandle,
    /// Where the user routes write: the users file, or the users table.
    pub users: UserAdmin,
    /// bcrypt cost of the hashes the routes write.
    pub bcrypt_cost: u32,
    /// When set, every route but `/healthz` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The metrics `/metrics` shows.
    pub metrics: Arc<Registry>,
}

/// Starts serving on `listener` (already bound) in the current actix System; returns the
/// running server (await it or stop it through its handle) and its address. A graceful
/// stop lets requests in flight finish for `shutdown_grace` (whole seconds) at most, then
/// drops them.
pub fn start(
    listener: std::net::TcpListener,
    state: AdminState,
    shutdown_grace: Duration,
    tls: Option<tether_actors::rustls::ServerConfig>,
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
            .wrap(middleware::from_fn(body_deadline::limit_body_time))
            .configure(routes::configure)
    })
    .workers(1)
    .client_request_timeout(HEAD_TIMEOUT)
    .keep_alive(KEEP_ALIVE)
    .max_connections(MAX_CONNECTIONS)
    .shutdown_timeout(shutdown_grace.as_secs())
    .disable_signals();
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    };
    let bound = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("the admin listener has no address"))?;
    Ok((server.run(), bound))
}
