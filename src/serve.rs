//! Running the server as a process (SPEC §7): users loaded, listener bound, `listening on`
//! logged, and on SIGINT or SIGTERM a graceful shutdown.

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::users::Running;
use prometheus_client::registry::Registry;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;
use tether_actors::protocol::proxy_header::ProxyTrust;
use tether_actors::rustls;
use tether_actors::{
    Listeners, Settings, Tether, TlsConfigSlot, WebSocketListener, WebSocketPolicy,
};

/// How long past `shutdown_grace` the admin API may take to drop the requests it still
/// holds (it drops them at the grace, rounded down to whole seconds).
const ADMIN_STOP_SLACK: Duration = Duration::from_millis(500);

/// How a run ended, as the process's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped on a signal after a graceful shutdown.
    Stopped,
    /// The configuration or the user store is invalid.
    BadConfiguration,
    /// Something needed at run time failed (such as binding the address).
    Failed,
}

impl Outcome {
    /// The process exit code: 0, 2 or 1.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Stopped => 0,
            Self::BadConfiguration => 2,
            Self::Failed => 1,
        }
    }
}

/// The protocol server's settings from the configuration.
pub fn settings(config: &Config) -> Settings {
    Settings {
        idle_timeout: config.server.idle_timeout,
        max_message_bytes: config.server.max_message_bytes,
        max_pending_bytes: config.server.max_pending_bytes,
        max_pending_total: config.server.max_pending_total,
        max_connections: u32::try_from(config.server.max_connections).unwrap_or(u32::MAX),
        shutdown_grace: config.server.shutdown_grace,
        workers: config.server.workers,
        password_threads: config.auth.password_threads,
        login_failures_per_minute: config.auth.login_failures_per_minute,
        bcrypt_cost: config.auth.bcrypt_cost,
        time_zone: config.events.time_zone.clone(),
        verifiers: None,
    }
}

/// Starts the user store, binds every listener, serves until SIGINT or SIGTERM, then shuts
/// down gracefully. Logs the version and the configuration file first; a reason not to run
/// reaches standard error whatever the log level.
///
/// SIGHUP, SIGINT and SIGTERM are caught before anything slow (the user store, the stand-in
/// hash): one arriving during start-up is acted on once the server runs — a reload, or an
/// orderly stop — instead of killing the process.
pub fn run(config: Config) -> Outcome {
    let system = actix_rt::System::new();
    let caught = system.block_on(async {
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        Ok::<_, std::io::Error>((hangups, stop_signal()?))
    });
    let tls_hangups = system
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) });
    let admin_tls_hangups = system
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) });
    let (hangups, stop_signal) = match caught {
        Ok(caught) => caught,
        Err(err) => {
            fatal(&format!("cannot watch for signals: {err}"));
            return Outcome::Failed;
        }
    };
    log::info!(
        "tether {}; configuration file: {}",
        env!("CARGO_PKG_VERSION"),
        config.source
    );
    crate::limits::raise_open_files_limit(config.server.max_connections);
    let users = match crate::users::open(&config).and_then(|store| store.start()) {
        Ok(users) => users,
        Err(failure) => {
            fatal(&failure.message);
            return match failure.exit_code {
                2 => Outcome::BadConfiguration,
                _ => Outcome::Failed,
            };
        }
    };
    let crate::tls::Certificates {
        tls: tls_config,
        redis_ca,
        admin_tls,
    } = match crate::tls::load_certificates(&config) {
        Ok(certificates) => certificates,
        Err(err) => {
            fatal(&err);
            return Outcome::BadConfiguration;
        }
    };
    let verifier_key = match crate::admission::load_key(&config) {
        Ok(key) => key,
        Err(err) => {
            fatal(&err);
            return Outcome::BadConfiguration;
        }
    };
    let (admin_tls, admin_certificate) = admin_tls.unzip();
    if let Some(address) = config.admin.listen {
        if admin_tls.is_none() && !address.ip().to_canonical().is_loopback() {
            log::warn!(
                "admin API on {address} without TLS: its token and requests cross the network \
                 in clear; set [admin.tls] (see SECURITY.md)"
            );
        }
    }

    // Every listener is bound before anything is logged as listening, so a busy address
    // stops start-up before any client is accepted.
    let listener = match config.server.listen {
        Some(address) => match bind(address, "clients") {
            Some(listener) => Some(listener),
            None => return Outcome::Failed,
        },
        None => None,
    };
    // One slot for the TLS listener and `wss`: a reload reaches both.
    let tls_slot = tls_config.map(TlsConfigSlot::new);
    let tls_listener = match (
        config.server.tls.as_ref().and_then(|tls| tls.listen),
        &tls_slot,
    ) {
        (Some(address), Some(slot)) => match bind(address, "clients, TLS") {
            Some(listener) => Some((listener, slot.clone())),
            None => return Outcome::Failed,
        },
        _ => None,
    };
    let ws_listener = match &config.server.websocket {
        Some(ws) => match bind(ws.listen, "clients, WebSocket") {
            Some(listener) => Some(WebSocketListener {
                listener,
                policy: WebSocketPolicy {
                    path: ws.path.clone(),
                    allowed_origins: ws.allowed_origins.clone(),
                    forwarded_from: ProxyTrust::new(ws.forwarded_from.clone()),
                },
                tls: if ws.tls { tls_slot.clone() } else { None },
            }),
            None => return Outcome::Failed,
        },
        None => None,
    };
    let admin_listener = match config.admin.listen {
        Some(address) => match bind(address, "admin API") {
            Some(listener) => Some(listener),
            None => return Outcome::Failed,
        },
        None => None,
    };
    if let Some(listener) = &admin_listener {
        // Bound here (so a busy port stops start-up before `listening on`), the listener
        // gets the admin API's accept queue from the socket itself.
        if let Err(err) = socket2::SockRef::from(listener).listen(admin::LISTEN_BACKLOG) {
            fatal(&format!("cannot listen on the admin API's address: {err}"));
            return Outcome::Failed;
        }
    }

    system.block_on(async move {
        // The port the clients' listener got (`:0` in the configuration picks one), for a
        // default node name.
        let bound_port = listener
            .as_ref()
            .or(tls_listener.as_ref().map(|(listener, _)| listener))
            .or(ws_listener.as_ref().map(|ws| &ws.listener))
            .and_then(|listener| listener.local_addr().ok())
            .map(|address| address.port());
        let listeners = Listeners {
            plain: listener,
            tls: tls_listener,
            websocket: ws_listener,
            proxy_trust: ProxyTrust::new(config.server.proxy_protocol_from.clone()),
        };
        let broker = match &config.cluster {
            Some(cluster) => match crate::broker::start(cluster, bound_port, redis_ca.clone()) {
                Ok(broker) => Some(broker),
                Err(err) => {
                    fatal(&err);
                    return Outcome::Failed;
                }
            },
            None => None,
        };
        let admission =
            verifier_key.and_then(|key| crate::admission::start(&config, key, broker.as_ref()));
        let mut settings = settings(&config);
        settings.verifiers = admission
            .as_ref()
            .map(|admission| admission.verifiers.clone());
        let verifier_file = admission.and_then(|admission| admission.file);
        let saving = verifier_file
            .clone()
            .map(|file| actix_rt::spawn(file.save_periodically()));
        let started = Tether::start_clustered(listeners, settings, users.logins(), broker);
        let tether = match started {
            Ok(tether) => tether,
            Err(err) => {
                fatal(&err.to_string());
                return Outcome::Failed;
            }
        };
        log::info!(
            "password checks: {} thread(s) (bcrypt, nice {})",
            config.auth.password_threads,
            tether_actors::auth::password::CHECKER_NICENESS
        );
        let _users_kept = users.keep_in_step(tether.handle(), hangups);
        let admin = match admin_listener {
            Some(listener) => match start_admin(listener, &config, &tether, users, admin_tls) {
                Ok(admin) => Some(admin),
                Err(err) => {
                    fatal(&err);
                    tether.shutdown().await;
                    return Outcome::Failed;
                }
            },
            None => None,
        };
        let _tls_reload = match (config.server.tls.clone(), tls_slot) {
            (Some(tls), Some(slot)) => {
                let hangups = tls_hangups
                    .map_err(|err| log::warn!("cannot watch SIGHUP for certificate reloads: {err}"))
                    .ok();
                Some(crate::tls::start_reloading(tls, slot, hangups))
            }
            _ => None,
        };
        let _admin_tls_reload = match (config.admin.tls.clone(), admin_certificate, &admin) {
            (Some(tls), Some(certificate), Some(_)) => {
                let hangups = admin_tls_hangups
                    .map_err(|err| log::warn!("cannot watch SIGHUP for certificate reloads: {err}"))
                    .ok();
                Some(crate::tls::start_reloading_admin(tls, certificate, hangups))
            }
            _ => None,
        };
        if config.server.listen.is_some() {
            log::info!("listening on {} (clients)", tether.local_addr());
        }
        if let Some(address) = tether.tls_local_addr() {
            log::info!("listening on {address} (clients, TLS)");
        }
        if let (Some(address), Some(ws)) = (tether.ws_local_addr(), &config.server.websocket) {
            log::info!("listening on {address} (clients, WebSocket)");
            let scheme = if ws.tls { "wss" } else { "ws" };
            let origins = match ws.allowed_origins.as_slice() {
                [] => "none (no browser page is accepted)".to_string(),
                origins => origins.join(", "),
            };
            log::info!(
                "WebSocket: {scheme}://{address}{}; browser origins allowed: {origins}",
                ws.path
            );
        }
        if let Some((_, bound)) = &admin {
            let scheme = if config.admin.tls.is_some() {
                "HTTPS"
            } else {
                "HTTP"
            };
            log::info!("listening on {bound} (admin API), {scheme}");
        }
        tell_service_manager(sd_notify::NotifyState::Ready);
        stop_signal.await;
        tell_service_manager(sd_notify::NotifyState::Stopping);
        // The admin API stops accepting at once, and its requests in flight get the same
        // grace as the clients, in parallel: clients hear `shutdown` at once whatever the
        // admin API is doing (a request trickling its body must not hold them).
        let admin_deadline = tokio::time::Instant::now() + config.server.shutdown_grace;
        let admin_stopped = admin.map(|(admin, _)| admin.stop(true));
        // The verifiers are saved at once (a successor started without waiting for this
        // process finds them), and again once the last logins are done.
        let early_save = verifier_file
            .clone()
            .map(|file| tokio::task::spawn_blocking(move || file.save()));
        tether.shutdown().await;
        if let (Some(saving), Some(file)) = (saving, verifier_file) {
            saving.abort();
            if let Some(early_save) = early_save {
                let _ = early_save.await;
            }
            let _ = tokio::task::spawn_blocking(move || file.save()).await;
        }
        if let Some(admin_stopped) = admin_stopped {
            let waited =
                tokio::time::timeout_at(admin_deadline + ADMIN_STOP_SLACK, admin_stopped).await;
            if waited.is_err() {
                log::warn!("admin API requests still open after the grace are dropped");
            }
        }
        log::info!("stopped");
        Outcome::Stopped
    })
}

/// Reports why the server cannot run: in the log, or on standard error when the log would
/// not show it (`log.level = "off"`, or `RUST_LOG` filtering it out).
fn fatal(message: &str) {
    if log::log_enabled!(log::Level::Error) {
        log::error!("{message}");
    } else {
        eprintln!("tether: {message}");
    }
}

/// Tells systemd (a `Type=notify` unit: `NOTIFY_SOCKET` is set) that the server is ready or
/// stopping; nothing without a service manager.
fn tell_service_manager(state: sd_notify::NotifyState<'_>) {
    if let Err(err) = sd_notify::notify(&[state]) {
        log::warn!("cannot notify the service manager: {err}");
    }
}

/// Binds `address` for `what`; `None` (the reason reported) when it cannot.
fn bind(address: SocketAddr, what: &str) -> Option<TcpListener> {
    TcpListener::bind(address)
        .map_err(|err| fatal(&format!("cannot listen on {address} ({what}): {err}")))
        .ok()
}

/// Starts the admin API on `listener`; answers its handle and its address.
fn start_admin(
    listener: TcpListener,
    config: &Config,
    tether: &Tether,
    users: Arc<dyn Running>,
    tls: Option<rustls::ServerConfig>,
) -> Result<(actix_web::dev::ServerHandle, SocketAddr), String> {
    let mut registry = Registry::with_prefix("tether");
    tether.metrics().register(&mut registry);
    tether.handle().register_broker_metrics(&mut registry);
    users.register_metrics(&mut registry);
    let state = AdminState {
        tether: tether.handle(),
        users,
        bcrypt_cost: config.auth.bcrypt_cost,
        token: config.admin.token.clone(),
        metrics: Arc::new(registry),
        console: config.admin.console,
        started: std::time::Instant::now(),
        node_name: config.cluster.as_ref().map(|cluster| cluster.node.clone()),
        history: admin::History::default(),
    };
    let (server, bound) = admin::start(listener, state, config.server.shutdown_grace, tls)
        .map_err(|err| format!("cannot start the admin API: {err}"))?;
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((handle, bound))
}

/// Catches SIGINT and SIGTERM from now on; the future resolves on the first of them.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        log::info!("{name} received");
    })
}
