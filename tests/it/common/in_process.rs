//! Runs a tether server inside the test process, on its own actix System thread, so tests
//! can publish events and inject faults through the library API while clients talk to it
//! over real TCP.

use super::{metric_in, wait_until, TestClient};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tether_actors::auth::user_store::{PasswordHash, UserSet, UserTable};
use tether_actors::hub::supervisor::FaultTarget;
use tether_actors::{Settings, Tether, TetherHandle};

/// Settings for tests: short limits where a test does not choose, bcrypt cost 4. The idle
/// timeout is the product's default: a test's steady connections say nothing while the test
/// works, which on a loaded machine (logins waiting for bcrypt threads at nice 10) can
/// take minutes.
pub fn test_settings() -> Settings {
    Settings {
        idle_timeout: Duration::from_secs(30 * 60),
        max_message_bytes: 4096,
        max_pending_bytes: 1 << 20,
        max_pending_total: 256 << 20,
        max_connections: 1000,
        shutdown_grace: Duration::from_secs(2),
        workers: 2,
        password_threads: 2,
        login_failures_per_minute: 100,
        bcrypt_cost: 4,
        time_zone: jiff::tz::TimeZone::UTC,
        verifiers: None,
    }
}

/// A server running on a thread of its own; stopped gracefully on drop.
pub struct InProcessServer {
    addr: SocketAddr,
    handle: TetherHandle,
    /// How many worker arbiters (and so registry shards) the server runs.
    workers: usize,
    users: Arc<UserTable>,
    /// The server's metrics, as `/metrics` would show them.
    metrics: Registry,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    runtime: tokio::runtime::Runtime,
}

impl InProcessServer {
    /// Starts a server with `settings` and users given as (name, password).
    pub fn start(settings: Settings, users: &[(&str, &str)]) -> Self {
        let table = Arc::new(UserTable::new(user_set(users, 4)));
        let users = Arc::clone(&table);
        let workers = settings.workers.max(1);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let listener =
                    std::net::TcpListener::bind("127.0.0.1:0").expect("binds a loopback port");
                let tether = Tether::start(listener, settings, table).expect("server starts");
                let mut metrics = Registry::with_prefix("tether");
                tether.metrics().register(&mut metrics);
                started_tx
                    .send((tether.local_addr(), tether.handle(), metrics))
                    .expect("test waits for the start");
                let _ = stopped.await;
                tether.shutdown().await;
            });
        });
        let (addr, handle, metrics) = started_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server started within 10 s");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("test runtime builds");
        Self {
            addr,
            handle,
            workers,
            users,
            metrics,
            stop: Some(stop),
            thread: Some(thread),
            runtime,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many registry shards (one per worker) the server runs.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The library handle of the running server.
    pub fn handle(&self) -> &TetherHandle {
        &self.handle
    }

    /// Starts a graceful shutdown, as SIGTERM would, without waiting for it to end.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Puts `users` (name, password; hashed at `cost`) in force, as a users-file reload
    /// would; answers the names whose hash changed or that are gone.
    pub fn replace_users(&self, users: &[(&str, &str)], cost: u32) -> Vec<String> {
        self.users.replace(user_set(users, cost))
    }

    /// The value of the metric `series` (as `/metrics` writes it, labels included); 0 when
    /// the series is not there yet.
    pub fn metric(&self, series: &str) -> f64 {
        let mut text = String::new();
        encode(&mut text, &self.metrics).expect("metrics encode");
        metric_in(&text, series).unwrap_or(0.0)
    }

    /// The bindings all registry shards hold together (`tether_registry_bindings`).
    pub fn registry_bindings(&self) -> f64 {
        (0..self.workers)
            .map(|worker| self.metric(&format!("tether_registry_bindings{{worker=\"{worker}\"}}")))
            .sum()
    }

    /// Makes every registry shard panic, then waits (at most 10 s, time for the longest
    /// restart delay, then 5 s) until the supervisor has replaced every shard
    /// (`tether_actor_restarts_total`) and the fresh shards hold
    /// every binding again, re-announced by the connections (`tether_registry_bindings`
    /// back at `tether_connections_bound`): from then on an event reaches every bound
    /// connection.
    pub fn replace_the_registry(&self) {
        const RESTARTS: &str = "tether_actor_restarts_total{actor=\"registry\"}";
        let restarts = self.metric(RESTARTS);
        self.handle.inject_panic(FaultTarget::Registry);
        let replaced = wait_until(Duration::from_secs(10), || {
            self.metric(RESTARTS) >= restarts + self.workers as f64
        });
        assert!(
            replaced,
            "{} of {} registry shards replaced",
            self.metric(RESTARTS) - restarts,
            self.workers
        );
        let mut held = 0.0;
        let rebuilt = wait_until(Duration::from_secs(5), || {
            held = self.registry_bindings();
            held == self.metric("tether_connections_bound")
        });
        assert!(
            rebuilt,
            "the fresh registry holds {held} binding(s); {} connection(s) are bound",
            self.metric("tether_connections_bound")
        );
    }

    /// Runs a future of the library API to completion, at most 10 s.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), future)
                .await
                .expect("library call answered within 10 s")
        })
    }

    /// `count` connections logged in as `name`, returned once the server counts them all.
    pub fn logged_in(&self, name: &str, password: &str, count: usize) -> Vec<TestClient> {
        let clients = (0..count)
            .map(|_| {
                let mut client = TestClient::connect(self.addr);
                client.login(name, password);
                client
            })
            .collect();
        self.wait_for_connections(name, count);
        clients
    }

    /// Waits (at most 30 s, a hang guard) until `user` has `expected` bound connections.
    pub fn wait_for_connections(&self, user: &str, expected: usize) {
        let mut count = 0;
        let reached = wait_until(Duration::from_secs(30), || {
            count = self.handle.connections(user);
            count == expected
        });
        assert!(
            reached,
            "{user} has {count} bound connection(s), expected {expected}"
        );
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Users given as (name, password), hashed at `cost`.
pub fn user_set(users: &[(&str, &str)], cost: u32) -> UserSet {
    users
        .iter()
        .map(|(name, password)| {
            let hash = bcrypt::hash(password, cost).expect("bcrypt hashes");
            (name.to_string(), PasswordHash::from(hash))
        })
        .collect()
}
