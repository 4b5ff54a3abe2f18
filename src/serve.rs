//! Running the server as a process (SPEC §7): users loaded, listener bound, `listening on`
//! logged, and on SIGINT or SIGTERM a graceful shutdown.

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::user_sync::UserSync;
use crate::users_file::{self, Contents};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tether_actors::users::UserTable;
use tether_actors::{Settings, Tether};

/// How long past `shutdown_grace` the admin API may take to drop the requests it still
/// holds (it drops them at the grace, rounded down to whole seconds).
const ADMIN_STOP_SLACK: Duration = Duration::from_millis(500);

/// How a run ended, as the process's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped on a signal after a graceful shutdown.
    Stopped,
    /// The configuration or the users file is invalid.
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
    }
}

/// Loads the users file, serves until SIGINT or SIGTERM, then shuts down gracefully.
///
/// SIGHUP, SIGINT and SIGTERM are caught before anything slow (the users file, the stand-in
/// hash): one arriving during start-up is acted on once the server runs — a reload, or an
/// orderly stop — instead of killing the process.
pub fn run(config: Config) -> Outcome {
    let system = actix_rt::System::new();
    let caught = system.block_on(async {
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        Ok::<_, std::io::Error>((hangups, stop_signal()?))
    });
    let (hangups, stop_signal) = match caught {
        Ok(caught) => caught,
        Err(err) => {
            log::error!("cannot watch for signals: {err}");
            return Outcome::Failed;
        }
    };
    crate::limits::raise_open_files_limit(config.server.max_connections);
    let loaded = users_file::read_contents(&config.auth.users_file);
    let users = match loaded.users(&config.auth.users_file) {
        Ok(users) => {
            log::info!(
                "{} user(s) loaded from {}",
                users.len(),
                config.auth.users_file.display()
            );
            users
        }
        Err(_) if loaded == Contents::Missing => {
            log::warn!(
                "users file {} does not exist: nobody can log in until a user is added \
                 (an entry [users.NAME] with password_hash = \"<bcrypt hash>\"; see README)",
                config.auth.users_file.display()
            );
            Default::default()
        }
        Err(err) => {
            log::error!("{err}");
            eprintln!("tether: {err}");
            return Outcome::BadConfiguration;
        }
    };
    let users = Arc::new(UserTable::new(users));

    let listener = match std::net::TcpListener::bind(config.server.listen) {
        Ok(listener) => listener,
        Err(err) => {
            log::error!("cannot listen on {}: {err}", config.server.listen);
            return Outcome::Failed;
        }
    };

    system.block_on(async move {
        let tether = match Tether::start(listener, settings(&config), Arc::clone(&users) as _) {
            Ok(tether) => tether,
            Err(err) => {
                log::error!("{err}");
                return Outcome::Failed;
            }
        };
        log::info!(
            "password checks: {} thread(s) (bcrypt, nice {})",
            config.auth.password_threads,
            tether_actors::password::CHECKER_NICENESS
        );
        let user_sync = UserSync::new(
            config.auth.users_file.clone(),
            Arc::clone(&users),
            tether.handle(),
            loaded,
        );
        let _users_watch = crate::users_watch::start(user_sync.clone(), config.auth.watch, hangups);
        log::info!("listening on {} (clients)", tether.local_addr());
        let admin = match start_admin(&config, &tether, user_sync) {
            Ok(admin) => admin,
            Err(err) => {
                log::error!("{err}");
                tether.shutdown().await;
                return Outcome::Failed;
            }
        };
        stop_signal.await;
        // The admin API stops accepting at once, and its requests in flight get the same
        // grace as the clients, in parallel: clients hear `shutdown` at once whatever the
        // admin API is doing (a request trickling its body must not hold them).
        let admin_deadline = tokio::time::Instant::now() + config.server.shutdown_grace;
        let admin_stopped = admin.map(|admin| admin.stop(true));
        tether.shutdown().await;
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

/// Starts the admin API unless `admin.listen` is empty; answers its handle.
fn start_admin(
    config: &Config,
    tether: &Tether,
    users: UserSync,
) -> Result<Option<actix_web::dev::ServerHandle>, String> {
    let Some(listen) = config.admin.listen else {
        return Ok(None);
    };
    let mut registry = Registry::with_prefix("tether");
    tether.metrics().register(&mut registry);
    users.register_metrics(&mut registry);
    let state = AdminState {
        tether: tether.handle(),
        users,
        users_file: config.auth.users_file.clone(),
        bcrypt_cost: config.auth.bcrypt_cost,
        token: config.admin.token.clone(),
        metrics: Arc::new(registry),
    };
    let (server, bound) = admin::start(listen, state, config.server.shutdown_grace)
        .map_err(|err| format!("cannot listen on {listen} (admin API): {err}"))?;
    let handle = server.handle();
    actix_rt::spawn(server);
    log::info!("listening on {bound} (admin API)");
    Ok(Some(handle))
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
