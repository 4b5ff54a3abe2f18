//! The admin HTTP API of SPEC §6: how a backend publishes events, manages users and kicks
//! sessions. An actix-web server in the same System as the protocol server.

mod body_deadline;
mod console;
mod error;
mod events;
mod head_gate;
mod metrics_format;
mod node;
mod routes;
mod token;

use crate::users::Running;
use actix_web::dev::{fn_factory, fn_service, Service, ServiceFactory};
use actix_web::{middleware, web, App};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_actors::TetherHandle;

pub use error::ApiError;
pub use node::History;

pub use body_deadline::BODY_TIMEOUT;

/// Largest request body accepted; more is answered `413`.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a client may take to send a request head, from the moment it connects (or,
/// on a kept-alive connection, from its previous answer); then `408` and the connection is
/// closed. The body has its own deadline, [`BODY_TIMEOUT`].
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may sit idle between requests before it is closed.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Connections the admin API serves at once, once they have sent their first bytes
/// (before, they wait at the head gate, at most `head_gate::WAITING_MAX` of them). More
/// wait in the listen queue and are served as slots free up; a slot is held at most
/// [`HEAD_TIMEOUT`] + [`BODY_TIMEOUT`] + the handler's time by a client that stalls. A
/// backend needs a handful; 256 cost at most 256 × (64 KiB body + buffers) ≈ 20 MiB.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections the kernel may queue, completed but not accepted, beyond
/// [`MAX_CONNECTIONS`]; further ones are refused by the kernel.
pub const LISTEN_BACKLOG: i32 = 256;

/// What the routes need.
pub struct AdminState {
    /// Publishes events, invalidates users, counts connections.
    pub tether: TetherHandle,
    /// The user store the user routes read and write, and `/healthz` and `/v1/node`
    /// describe.
    pub users: Arc<dyn Running>,
    /// bcrypt cost of the hashes the routes write.
    pub bcrypt_cost: u32,
    /// When set, every route but `/healthz` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The metrics `/metrics` shows (and `/v1/node` reads).
    pub metrics: Arc<Registry>,
    /// Whether the web console is served at `/console/` (`admin.console`).
    pub console: bool,
    /// When the server started, for the uptime `/v1/node` shows.
    pub started: Instant,
    /// In a cluster, this node's name (`cluster.node`), which `/v1/node` shows.
    pub node_name: Option<String>,
    /// The figures of the last minutes `/v1/node` shows, sampled while the API runs.
    pub history: node::History,
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
    let console = state.console;
    let state = web::Data::new(state);
    node::keep_history(Arc::downgrade(&state.clone().into_inner()));
    let app = move || {
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
            .configure(|config| {
                if console {
                    console::configure(config);
                }
            })
            .configure(routes::configure)
    };
    let bound = listener.local_addr()?;
    // The same HTTP service over TCP or TLS (a macro: they differ in type).
    macro_rules! http {
        () => {
            actix_http::HttpService::build()
                .client_request_timeout(HEAD_TIMEOUT)
                .keep_alive(KEEP_ALIVE)
                .local_addr(bound)
                .finish(actix_service::map_config(app(), |()| {
                    actix_web::dev::AppConfig::default()
                }))
        };
    }
    // The HTTP server's own bound: the connections served plus those waiting for their
    // first bytes (each waits at most HEAD_TIMEOUT, and the oldest makes room).
    let builder = actix_web::dev::Server::build()
        .workers(1)
        .backlog(LISTEN_BACKLOG.unsigned_abs())
        .max_concurrent_connections(MAX_CONNECTIONS + head_gate::WAITING_MAX)
        .shutdown_timeout(shutdown_grace.as_secs())
        .disable_signals();
    let builder = match tls {
        Some(config) => builder.listen("tether-admin", listener, move || {
            gated(http!().rustls_0_23(config.clone()))
        })?,
        None => builder.listen("tether-admin", listener, move || gated(http!().tcp()))?,
    };
    Ok((builder.run(), bound))
}

/// `http`, served to a connection once its first bytes arrive (see `head_gate`), at most
/// [`MAX_CONNECTIONS`] at once.
fn gated<F>(
    http: F,
) -> impl ServiceFactory<tokio::net::TcpStream, Config = (), Response = (), Error = (), InitError = ()>
where
    F: ServiceFactory<tokio::net::TcpStream, Config = (), Response = ()> + 'static,
    F::Service: 'static,
{
    let http = std::rc::Rc::new(http);
    fn_factory(move || {
        let http = std::rc::Rc::clone(&http);
        async move {
            let service = std::rc::Rc::new(http.new_service(()).await.map_err(|_| ())?);
            let gate = head_gate::Gate::default();
            let served = std::rc::Rc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
            Ok(fn_service(move |stream: tokio::net::TcpStream| {
                let (service, gate, served) = (
                    std::rc::Rc::clone(&service),
                    std::rc::Rc::clone(&gate),
                    std::rc::Rc::clone(&served),
                );
                async move {
                    let accepted = tokio::time::Instant::now();
                    if !head_gate::first_bytes(&gate, &stream, HEAD_TIMEOUT).await {
                        return Ok(());
                    }
                    // A slot, within the head's deadline from accept: a connection that sent
                    // a byte and waits here holds a descriptor, nothing more, and not for
                    // longer than a silent one.
                    let slot =
                        tokio::time::timeout_at(accepted + HEAD_TIMEOUT, served.acquire()).await;
                    let Ok(Ok(_slot)) = slot else {
                        return Ok(());
                    };
                    // The HTTP service answers and closes on its own; its error (a broken
                    // connection, a timed-out head) needs no more than that.
                    let _ = service.call(stream).await;
                    Ok::<(), ()>(())
                }
            }))
        }
    })
}
