//! Users in PostgreSQL (SPEC §9): a [`UserStore`] that looks each login's user up in the
//! table, and the task that keeps two connections to the database — one LISTENs to the
//! table's channel, the other serves lookups and writes — and invalidates the connections
//! of users whose row changed. A notification is acted on in memory as it is read: a name
//! nobody here holds or is looking up costs nothing more, so a bulk load with the trigger
//! on delays no login.
//!
//! Nothing is loaded at start-up. A lookup runs on a password-check thread (see
//! [`UserStore::lookup_for_login`]) and waits at most [`LOOKUP_TIMEOUT`] for the database,
//! on the lookups' own runtime thread; the hashes found are remembered (as `known`) so that
//! the event loop can confirm a login without waiting, so that a change missed during an
//! outage can be found again after it (the reconcile), and so that a user who logged in
//! during the last minute can still log in while the database is unreachable. An entry is
//! forgotten when a notification names its user, and a minute after its lookup once its
//! user has no connection on this node: memory follows the users logging in, not the rows.
//!
//! Admin reads (`GET /v1/users`) use a connection of their own, at most
//! [`ADMIN_READS_AT_ONCE`] at a time, so a burst of them queues behind itself, never in
//! front of a login's lookup or the liveness ping (issue 23: 40 pages at once over a
//! million rows made a healthy database "unreachable"); and the lookups' connection is
//! given up only when it answered nothing for its wait (the ping's 3 s, a lookup's 4 s),
//! not because one query was slow while others were answered.
//!
//! An unknown name is checked against a stand-in hash of a cost the rows use, picked per
//! name with the odds of each cost among the rows (as the users file does), so a failed
//! login takes as long whether the name exists or not. The costs are counted by one
//! aggregate query on a connection of its own, in the background: after each (re)connect,
//! on SIGHUP, and at most once a minute while notifications say rows change. The count is
//! a handful of numbers whatever the number of rows.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tether_actors::auth::password::MAX_STORED_COST;
use tether_actors::auth::user_store::{PasswordHash, StandIns, StoreUnreachable, UserStore};
use tether_actors::hub::bus::InvalidationCause;
use tether_actors::TetherHandle;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client};

use crate::users::edit::PasswordChange;
use crate::users::pg_schema::{self, Database, TableError};
use crate::users::read::check_bcrypt_hash;
use crate::users::store::{Answer, KeptInStep, Page, Running, StoreError};

/// Longest a login waits for the database before it is answered from what is known.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(4);
/// How often a login's lookup reads the row again when notified of a change meanwhile.
const LOOKUP_ATTEMPTS: usize = 3;
/// How long a hash found by a login may stand in for the database while it is unreachable.
pub const KNOWN_FOR: Duration = Duration::from_secs(60);
/// How often the listening connection is tested with a query (a paused or unplugged
/// server sends nothing, so silence alone proves nothing).
const PING_EVERY: Duration = Duration::from_secs(1);
/// Longest a ping or a reconcile may take before the connection is given up.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// First wait before reconnecting; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Shortest time between two counts of the rows' costs caused by notified changes.
const COUNT_COSTS_EVERY: Duration = Duration::from_secs(60);
/// Longest a count of the rows' costs may take (it reads the whole table).
const COUNT_COSTS_TIMEOUT: Duration = Duration::from_secs(120);
/// Most notified names of users known here that wait to be checked against the table;
/// past it they are dropped and every known user is checked instead (a reconcile).
const MAX_PENDING_CHECKS: usize = 10_000;

/// Admin reads that may query at once, on their own connection; more wait their turn.
pub const ADMIN_READS_AT_ONCE: usize = 2;

/// A hash found by a lookup.
struct Known {
    hash: PasswordHash,
    looked_up: Instant,
}

/// The names being looked up now, and whether a notification named them meanwhile (then
/// what the lookup found may already be old, and it is not remembered).
#[derive(Default)]
struct InFlight {
    lookups: usize,
    changed: bool,
}

/// What notifications (and lookups) left for the listening task to check.
#[derive(Default)]
struct Pending {
    /// Notified names with a hash known here: each is read again and, if its hash
    /// differs or its row is gone, forgotten and invalidated. At most
    /// [`MAX_PENDING_CHECKS`].
    check: HashSet<String>,
    /// Every known user is to be checked (a truncate, or more names than `check` holds).
    everyone: bool,
    /// Names whose known hash a lookup replaced or dropped because the row had changed:
    /// connections bound with the old hash are invalidated whatever the row holds now.
    replaced: HashSet<String>,
}

/// What the store and its connection task share.
struct Inner {
    /// `auth.database` (and `auth.database_ca_file`).
    database: Database,
    /// `auth.table`, also the channel its trigger notifies.
    table: String,
    /// Runs lookups and writes, on a thread of their own (`tether-pg-login`).
    runtime: tokio::runtime::Handle,
    /// Runs the listening connection, its reader and the background scans, on another
    /// thread (`tether-postgres`), so that a burst of notifications delays no lookup.
    listening_runtime: tokio::runtime::Handle,
    /// The connection in use; `None` while the database is unreachable.
    client: Mutex<Option<Arc<Client>>>,
    /// Hashes found by lookups, by name.
    known: Mutex<HashMap<String, Known>>,
    /// Lookups under way, by name.
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// Whether the database answers; the log line is written on each change.
    reachable: AtomicBool,
    /// 1 while the database answers, 0 while it does not (`users_database_up`).
    up: Gauge,
    /// Woken when a lookup finds the connection broken.
    lost: Notify,
    /// Where writes made through this store invalidate, once it listens.
    tether: Mutex<Option<TetherHandle>>,
    /// Whether the table was scanned for bad rows (once per process).
    scanned: AtomicBool,
    /// Stand-ins for unknown names, one per cost the rows use, weighted by rows.
    stand_ins: Mutex<Arc<StandIns>>,
    /// Keys the hash that picks an unknown name's stand-in (fixed for the process).
    name_key: RandomState,
    /// Set when a notification says rows changed since the costs were last counted.
    costs_changed: AtomicBool,
    /// Woken to count the costs now (after a (re)connect, on SIGHUP).
    count_costs: Notify,
    /// Woken by SIGHUP to check every known hash against the table now.
    reconcile_requested: Notify,
    /// Whether the costs were counted once (the first count is always logged).
    costs_counted: AtomicBool,
    /// Names left to check by the connection's reader; see [`Inner::notified`].
    pending: Mutex<Pending>,
    /// Woken when `pending` has something.
    pending_ready: Notify,
    /// The admin reads' own connection, opened when first needed and again after a loss.
    admin_reads: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// Admin reads under way; at most [`ADMIN_READS_AT_ONCE`].
    admin_reads_at_once: tokio::sync::Semaphore,
    /// When a query on the lookups' connection last answered: a ping that waits behind a
    /// slow query on a connection that answers is no sign the database is gone.
    lookups_answered: Mutex<Instant>,
}

/// Users from a PostgreSQL table. Clones share one connection and one set of known hashes.
#[derive(Clone)]
pub struct PgUsers {
    inner: Arc<Inner>,
}

/// Locks `mutex`, taking over a poisoned one (its data is a cache, always consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PgUsers {
    /// Starts the store's runtime thread, connects to `url` and checks `table`. A missing
    /// table or column is [`StartError::NotReady`]; an unreachable database,
    /// [`StartError::Unreachable`].
    pub fn connect(database: Database, table: &str) -> Result<Self, StartError> {
        let start = |name: &str| {
            start_runtime(name).map_err(|err| {
                StartError::Unreachable(format!("cannot start the database thread: {err}"))
            })
        };
        let runtime = start("tether-pg-login")?;
        let listening_runtime = start("tether-postgres")?;
        let inner = Arc::new(Inner {
            database: database.clone(),
            table: table.to_string(),
            runtime: runtime.clone(),
            listening_runtime,
            client: Mutex::new(None),
            known: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            reachable: AtomicBool::new(true),
            up: Gauge::default(),
            lost: Notify::new(),
            tether: Mutex::new(None),
            scanned: AtomicBool::new(false),
            stand_ins: Mutex::new(Arc::new(StandIns::default())),
            name_key: RandomState::new(),
            costs_changed: AtomicBool::new(false),
            count_costs: Notify::new(),
            reconcile_requested: Notify::new(),
            costs_counted: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
            pending_ready: Notify::new(),
            admin_reads: tokio::sync::Mutex::new(None),
            admin_reads_at_once: tokio::sync::Semaphore::new(ADMIN_READS_AT_ONCE),
            lookups_answered: Mutex::new(Instant::now()),
        });
        let client = runtime.block_on(async {
            let client = pg_schema::connect(&database)
                .await
                .map_err(|err| StartError::Unreachable(describe(&err)))?;
            match pg_schema::check_table(&client, table).await {
                Ok(()) => Ok(client),
                Err(TableError::NotReady(why)) => Err(StartError::NotReady(why)),
                Err(TableError::Unreachable(err)) => Err(StartError::Unreachable(describe(&err))),
            }
        })?;
        // Lookups use it until the listening connection takes over.
        *lock(&inner.client) = Some(Arc::new(client));
        inner.up.set(1);
        Ok(Self { inner })
    }

    /// Starts listening for the table's notifications and invalidating through `tether`;
    /// reconnects after a loss, then reconciles.
    pub fn listen(&self, tether: TetherHandle) {
        *lock(&self.inner.tether) = Some(tether.clone());
        let inner = Arc::clone(&self.inner);
        self.inner
            .listening_runtime
            .spawn(keep_listening(inner, tether));
        let inner = Arc::clone(&self.inner);
        self.inner
            .listening_runtime
            .spawn(keep_costs_counted(inner));
    }

    /// Checks every hash this node knows (its users' connections) against the table now,
    /// invalidating those changed or gone, and counts the rows' costs again; logs one line
    /// when done. While the database is unreachable, logs that the check is made when it
    /// is back (every reconnect checks them anyway). For SIGHUP.
    pub fn reconcile_now(&self) {
        if lock(&self.inner.client).is_none() {
            log::warn!(
                "SIGHUP received: the users database is unreachable; the users logged in                  here are checked against table {} once it is back",
                self.inner.table
            );
            return;
        }
        self.inner.reconcile_requested.notify_one();
    }

    /// Whether the database answers now.
    pub fn reachable(&self) -> bool {
        self.inner.reachable.load(Ordering::Relaxed)
    }

    /// Adds `users_database_up` to `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "users_database_up",
            "Whether the users database answers (1) or not (0)",
            self.inner.up.clone(),
        );
    }
}

/// Why the store could not start.
#[derive(Debug)]
pub enum StartError {
    /// The table is missing or lacks a column (a configuration error, exit 2).
    NotReady(String),
    /// The database could not be reached.
    Unreachable(String),
}

/// A one-line description of a client error, with the server's message when it sent one,
/// and a TLS failure said as a sentence (not rustls's debug text).
pub fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                // rustls's error comes wrapped in an io::Error (whose source skips it).
                let tls = cause
                    .downcast_ref::<tokio_rustls::rustls::Error>()
                    .or_else(|| {
                        cause
                            .downcast_ref::<std::io::Error>()
                            .and_then(std::io::Error::get_ref)
                            .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
                    });
                if let Some(tls) = tls {
                    let said = crate::tls_client::describe_rustls(
                        tls,
                        "the database host",
                        "auth.database_ca_file",
                    );
                    return format!("{text}: {said}");
                }
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        }
    }
}

/// A current-thread runtime on a thread of its own named `name`, for the database's I/O;
/// it lives as long as the process.
fn start_runtime(name: &str) -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

impl Inner {
    /// Records whether the database answers, logging only a change.
    fn set_reachable(&self, reachable: bool, why: &str) {
        if self.reachable.swap(reachable, Ordering::Relaxed) != reachable {
            self.up.set(i64::from(reachable));
            if reachable {
                log::info!("users database reachable again");
            } else {
                log::error!(
                    "users database unreachable ({why}): logins are answered from hashes \
                     found during the last minute, others get login_invalid"
                );
            }
        }
    }

    /// The hash of `name` if a lookup found it during the last minute.
    fn recently_known(&self, name: &str) -> Option<PasswordHash> {
        lock(&self.known)
            .get(name)
            .filter(|known| known.looked_up.elapsed() < KNOWN_FOR)
            .map(|known| known.hash.clone())
    }

    /// Asks the database for `name`'s row: `Ok(None)` when there is none or it is invalid
    /// (reported in the log), `Err` when the database did not answer in time.
    fn query_hash(&self, client: &Client, name: &str) -> Result<Option<PasswordHash>, String> {
        let query = format!(
            "SELECT password_hash::text FROM {} WHERE name = $1",
            self.table
        );
        let answer = self.runtime.block_on(async {
            tokio::time::timeout(LOOKUP_TIMEOUT, client.query_opt(&query, &[&name])).await
        });
        if matches!(answer, Ok(Ok(_))) {
            self.answered();
        }
        match answer {
            Ok(Ok(row)) => Ok(
                row.and_then(|row| match row.try_get::<_, Option<String>>(0) {
                    Ok(Some(hash)) => valid_hash(&self.table, name, hash),
                    Ok(None) => {
                        log::warn!("users table: user {name:?} has no password_hash; refused");
                        None
                    }
                    Err(err) => {
                        log::warn!("users table: user {name:?}: {err}; refused");
                        None
                    }
                }),
            ),
            Ok(Err(err)) if err.as_db_error().is_some() => {
                log::error!("users table: looking up {name:?}: {}", describe(&err));
                Ok(None)
            }
            Ok(Err(err)) => Err(describe(&err)),
            Err(_) => Err(format!("no answer in {LOOKUP_TIMEOUT:?}")),
        }
    }

    /// Notes that the lookups' connection answered a query now.
    fn answered(&self) {
        *lock(&self.lookups_answered) = Instant::now();
    }

    /// Whether the lookups' connection answered a query during the last `period`.
    fn answered_within(&self, period: Duration) -> bool {
        lock(&self.lookups_answered).elapsed() < period
    }

    /// Gives up `client` after a lookup got no answer, if it is still the one in use and
    /// answered nothing else meanwhile (a slow query on a connection that answers is not a
    /// lost one): the listening task reconnects.
    fn connection_failed(&self, client: &Arc<Client>, why: &str) {
        if self.answered_within(LOOKUP_TIMEOUT) {
            log::warn!("users database: a lookup got no answer ({why}) while others did");
            return;
        }
        let was_current = {
            let mut current = lock(&self.client);
            let same = current.as_ref().is_some_and(|c| Arc::ptr_eq(c, client));
            if same {
                current.take();
            }
            same
        };
        if was_current {
            self.set_reachable(false, why);
            self.lost.notify_one();
        }
    }

    /// Acts on a notification naming `name` (`""` for a truncate), on the connection's
    /// reader, in memory only, so that a burst of them is read as fast as it arrives: a
    /// lookup of `name` under way reads again; a name with a hash known here is left to
    /// the listening task to check. Any other name needs nothing: no connection here is
    /// bound to it (a login binds only with a hash known here) and no lookup is under way.
    /// Both maps are read under the in-flight lock, as a lookup holds it when it
    /// remembers what it found: the lookup is either seen here or done and known.
    fn notified(&self, name: &str) {
        self.costs_changed.store(true, Ordering::Relaxed);
        let known_here = name.is_empty() || {
            let mut in_flight = lock(&self.in_flight);
            if let Some(lookup) = in_flight.get_mut(name) {
                lookup.changed = true;
            }
            let known = lock(&self.known).contains_key(name);
            drop(in_flight);
            known
        };
        if !known_here {
            return;
        }
        {
            let mut pending = lock(&self.pending);
            if name.is_empty() || pending.check.len() >= MAX_PENDING_CHECKS {
                pending.everyone = true;
                pending.check = HashSet::new();
            } else if !pending.everyone {
                pending.check.insert(name.to_string());
            }
        }
        self.pending_ready.notify_one();
    }

    /// Leaves `name` for the listening task to invalidate: a lookup replaced or dropped
    /// its known hash, and connections may be bound with the old one.
    fn replaced(&self, name: &str) {
        lock(&self.pending).replaced.insert(name.to_string());
        self.pending_ready.notify_one();
    }

    /// Forgets what was known of `name` (its row changed); a lookup under way looks again.
    fn forget(&self, name: &str) {
        let mut in_flight = lock(&self.in_flight);
        if let Some(lookup) = in_flight.get_mut(name) {
            lookup.changed = true;
        }
        lock(&self.known).remove(name);
        drop(in_flight);
    }
}

/// `hash` if it is a bcrypt hash tether accepts; otherwise `None`, reported by user name.
fn valid_hash(table: &str, name: &str, hash: String) -> Option<PasswordHash> {
    match check_bcrypt_hash(&hash) {
        Ok(()) => Some(PasswordHash::from(hash)),
        Err(why) => {
            log::warn!("users table {table}: user {name:?} has an invalid password_hash ({why}); refused for login");
            None
        }
    }
}

impl UserStore for PgUsers {
    fn password_hash(&self, name: &str) -> Option<PasswordHash> {
        lock(&self.inner.known)
            .get(name)
            .map(|known| known.hash.clone())
    }

    fn stand_in_hash(&self, name: &[u8]) -> Option<PasswordHash> {
        let stand_ins = Arc::clone(&lock(&self.inner.stand_ins));
        stand_ins.pick(self.inner.name_key.hash_one(name))
    }

    fn lookup_for_login(&self, name: &str) -> Result<Option<PasswordHash>, StoreUnreachable> {
        let inner = &self.inner;
        let client = lock(&inner.client).clone();
        let Some(client) = client else {
            return inner.recently_known(name).map(Some).ok_or(StoreUnreachable);
        };
        for _ in 0..LOOKUP_ATTEMPTS {
            lock(&inner.in_flight)
                .entry(name.to_string())
                .or_default()
                .lookups += 1;
            let answer = inner.query_hash(&client, name);
            // Under the in-flight lock, as `forget` and `notified` take it: a notification
            // is either seen here or comes after the hash found is remembered, and then
            // finds it known and has it checked.
            let mut in_flight = lock(&inner.in_flight);
            let changed = in_flight.get(name).is_some_and(|lookup| lookup.changed);
            if let Some(lookup) = in_flight.get_mut(name) {
                lookup.lookups -= 1;
                if lookup.lookups == 0 {
                    in_flight.remove(name);
                }
            }
            let found = match answer {
                Ok(found) => found,
                Err(why) => {
                    drop(in_flight);
                    inner.connection_failed(&client, &why);
                    return inner.recently_known(name).map(Some).ok_or(StoreUnreachable);
                }
            };
            let mut known = lock(&inner.known);
            // A hash known here that the row no longer holds: its notification may not
            // have been read yet, and once this is remembered it would find the row as
            // known; so connections bound with the old hash are invalidated from here.
            let old = match found {
                // Notified during the lookup: what was found may be old already, so look
                // again (the next read sees at least that change).
                Some(_) if changed => continue,
                Some(ref hash) => known.insert(
                    name.to_string(),
                    Known {
                        hash: hash.clone(),
                        looked_up: Instant::now(),
                    },
                ),
                None => known.remove(name),
            };
            drop(known);
            drop(in_flight);
            if old.is_some_and(|old| Some(&old.hash) != found.as_ref()) {
                inner.replaced(name);
            }
            return Ok(found);
        }
        // Changed at every look: the hash found is not remembered, so the event loop's
        // confirmation refuses the login.
        log::info!("user {name:?} kept changing while looked up; login refused");
        Ok(None)
    }
}

/// Keeps a listening connection for as long as the process runs: connects (with capped
/// backoff), LISTENs, reconciles, then handles notifications and pings until it is lost.
async fn keep_listening(inner: Arc<Inner>, tether: TetherHandle) {
    let mut backoff = FIRST_BACKOFF;
    let mut sweep = tokio::time::interval(KNOWN_FOR / 2);
    loop {
        let why = match listen_once(&inner, &tether, &mut sweep, &mut backoff).await {
            Ok(()) => "the connection ended".to_string(),
            Err(why) => why,
        };
        lock(&inner.client).take();
        inner.set_reachable(false, &why);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One pair of connections' life — the listening one and the one lookups and writes use,
/// so that they never wait while the server sends the listening one a burst of
/// notifications: `Err` says why they could not be made or one was lost.
async fn listen_once(
    inner: &Arc<Inner>,
    tether: &TetherHandle,
    sweep: &mut tokio::time::Interval,
    backoff: &mut Duration,
) -> Result<(), String> {
    let (client, mut connection) = tokio::time::timeout(PING_TIMEOUT, inner.database.open())
        .await
        .map_err(|_| format!("no answer in {PING_TIMEOUT:?}"))?
        .map_err(|err| describe(&err))?;
    // Opened and driven on the lookups' thread.
    let opening = {
        let database = inner.database.clone();
        inner.runtime.spawn(async move {
            let (lookups, connection) = tokio::time::timeout(PING_TIMEOUT, database.open())
                .await
                .map_err(|_| format!("no answer in {PING_TIMEOUT:?}"))?
                .map_err(|err| describe(&err))?;
            let driver = tokio::spawn(async move {
                match connection.await {
                    Ok(()) => "the lookups' connection closed".to_string(),
                    Err(err) => describe(&err),
                }
            });
            Ok::<_, String>((lookups, driver))
        })
    };
    let (lookups, lookup_driver) = opening
        .await
        .map_err(|err| format!("the lookups' thread stopped: {err}"))??;
    // The reader: drives the connection and acts on each notification at once, in
    // memory (`Inner::notified`), so nothing queues between the socket and it.
    let reader = Arc::clone(inner);
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |task| connection.poll_message(task));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(note)) => reader.notified(note.payload()),
                Ok(_) => {}
                Err(err) => return describe(&err),
            }
        }
        "the connection closed".to_string()
    });
    let connections = Connections {
        listening: Arc::new(client),
        lookups: Arc::new(lookups),
        reader: driver,
        lookup_driver,
    };
    serve_connection(inner, tether, connections, sweep, backoff).await
}

/// The listening connection and the lookups' one, with the tasks that drive them (both
/// stopped when this is dropped).
struct Connections {
    /// LISTENs; pings, reconciles and checks of notified names use it too.
    listening: Arc<Client>,
    /// Lookups and writes use it (as `Inner::client`).
    lookups: Arc<Client>,
    /// Drives `listening` and acts on its notifications; ends with why it was lost.
    reader: tokio::task::JoinHandle<String>,
    /// Drives `lookups`; ends with why it was lost.
    lookup_driver: tokio::task::JoinHandle<String>,
}

impl Drop for Connections {
    fn drop(&mut self) {
        self.reader.abort();
        self.lookup_driver.abort();
    }
}

/// LISTENs, reconciles, then checks notified names, pings and sweeps.
async fn serve_connection(
    inner: &Arc<Inner>,
    tether: &TetherHandle,
    mut connections: Connections,
    sweep: &mut tokio::time::Interval,
    backoff: &mut Duration,
) -> Result<(), String> {
    let client = &Arc::clone(&connections.listening);
    let lookups = &Arc::clone(&connections.lookups);
    let listen = format!("LISTEN {}", inner.table);
    tokio::time::timeout(PING_TIMEOUT, client.batch_execute(&listen))
        .await
        .map_err(|_| format!("no answer in {PING_TIMEOUT:?}"))?
        .map_err(|err| describe(&err))?;
    // Listening from here on: a change after the reconcile's query is notified, and
    // lookups may use the connection (what they find is current) before the reconcile
    // invalidates anyone, so a user it logs out can log in again at once.
    *lock(&inner.client) = Some(Arc::clone(lookups));
    inner.set_reachable(true, "");
    *backoff = FIRST_BACKOFF;
    let (_, stale) = reconcile(inner, tether, client).await?;
    if stale > 0 {
        log::info!(
            "users table: {stale} user(s) changed while not listening; their connections \
             were invalidated"
        );
    }
    // Rows may have changed while not listening.
    inner.count_costs.notify_one();
    if !inner.scanned.swap(true, Ordering::Relaxed) {
        tokio::spawn(report_bad_rows(Arc::clone(inner)));
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            ended = &mut connections.reader => {
                return Err(ended.unwrap_or_else(|err| format!("the reader stopped: {err}")));
            }
            ended = &mut connections.lookup_driver => {
                return Err(ended.unwrap_or_else(|err| format!("the lookups' driver stopped: {err}")));
            }
            _ = inner.pending_ready.notified() => check_pending(inner, tether, client).await?,
            _ = inner.reconcile_requested.notified() => {
                let (checked, stale) = reconcile(inner, tether, client).await?;
                inner.count_costs.notify_one();
                log::info!(
                    "SIGHUP received: checked the {checked} user(s) known here against table \
                     {}: {stale} changed or gone, their connections invalidated",
                    inner.table
                );
            }
            _ = ping.tick() => {
                let pinged = Instant::now();
                let (listening, looking_up) = futures_util::future::join(
                    tokio::time::timeout(PING_TIMEOUT, client.simple_query("")),
                    tokio::time::timeout(PING_TIMEOUT, lookups.simple_query("")),
                )
                .await;
                listening
                    .map_err(|_| format!("no answer in {PING_TIMEOUT:?}"))?
                    .map_err(|err| describe(&err))?;
                match looking_up {
                    Ok(answer) => {
                        answer.map_err(|err| describe(&err))?;
                        inner.answered();
                    }
                    // Queued behind slow queries on a connection that answers them.
                    Err(_) if inner.answered_within(pinged.elapsed()) => {}
                    Err(_) => return Err(format!("no answer in {PING_TIMEOUT:?}")),
                }
            }
            _ = inner.lost.notified() => {
                // A permit left by a lookup on an earlier connection is not about this one.
                if !is_current(inner, lookups) {
                    return Err("a lookup got no answer".to_string());
                }
            }
            _ = sweep.tick() => forget_idle(inner, tether).await,
        }
    }
}

/// The admin reads' connection: the one open, or a new one (driven on the current
/// runtime). Its loss affects admin reads only, never whether logins see the database.
async fn admin_reads_client(inner: &Inner) -> Result<Arc<Client>, String> {
    let mut slot = inner.admin_reads.lock().await;
    if let Some(client) = slot.as_ref().filter(|client| !client.is_closed()) {
        return Ok(Arc::clone(client));
    }
    let (client, connection) = tokio::time::timeout(PING_TIMEOUT, inner.database.open())
        .await
        .map_err(|_| format!("no answer in {PING_TIMEOUT:?}"))?
        .map_err(|err| describe(&err))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            log::debug!(
                "users database: the admin reads' connection ended: {}",
                describe(&err)
            );
        }
    });
    let client = Arc::new(client);
    *slot = Some(Arc::clone(&client));
    Ok(client)
}

/// Most bad rows named in the log by [`report_bad_rows`].
const BAD_ROWS_REPORTED: i64 = 20;

/// Names in the log the rows no login can use — a name that breaks the name rules, or a
/// hash that is not bcrypt with cost 4 to 16 — once, in the background. It reads the whole
/// table, so it runs on a connection of its own: on the shared one, lookups and pings
/// would queue behind it (a scan of 1,000,000 rows outlasting the ping's timeout made the
/// node give the database up). Lookups refuse such rows in any case.
async fn report_bad_rows(inner: Arc<Inner>) {
    let table = &inner.table;
    let client = match pg_schema::connect(&inner.database).await {
        Ok(client) => client,
        Err(err) => {
            log::warn!(
                "users table {table}: cannot scan for bad rows: {}",
                describe(&err)
            );
            return;
        }
    };
    let query = format!(
        "SELECT name::text FROM {table} \
         WHERE octet_length(name::text) NOT BETWEEN 1 AND 128 \
            OR name::text ~ '[\\x01-\\x1f\\x7f]' \
            OR password_hash IS NULL \
            OR password_hash::text !~ '^\\$2[abxy]\\$(0[4-9]|1[0-6])\\$[./A-Za-z0-9]{{53}}$' \
         ORDER BY name::text LIMIT {BAD_ROWS_REPORTED}"
    );
    match client.query(&query, &[]).await {
        Ok(rows) if rows.is_empty() => {}
        Ok(rows) => {
            let names: Vec<String> = rows
                .iter()
                .filter_map(|row| row.try_get::<_, String>(0).ok())
                .map(|name| tether_actors::util::excerpt::Excerpt(name.as_bytes()).to_string())
                .collect();
            log::warn!(
                "users table {table}: rows no login can use (an invalid name, or a \
                 password_hash that is not bcrypt with cost 4 to 16){}: {}",
                if rows.len() as i64 >= BAD_ROWS_REPORTED {
                    ", the first ones"
                } else {
                    ""
                },
                names.join(", ")
            );
        }
        Err(err) => log::warn!(
            "users table {table}: cannot scan for bad rows: {}",
            describe(&err)
        ),
    }
}

/// Whether `client` is the connection lookups use now.
fn is_current(inner: &Inner, client: &Arc<Client>) -> bool {
    lock(&inner.client)
        .as_ref()
        .is_some_and(|current| Arc::ptr_eq(current, client))
}

/// Checks what notifications and lookups left in `pending`: invalidates the users whose
/// known hash a lookup replaced, then reads the rows of the notified names known here (or,
/// after a truncate or an overflow, of every known user) in one query; those whose hash
/// differs or whose row is gone are forgotten and invalidated. A notification of a change
/// this node has already seen (its own write, or a row found after the change) thus
/// changes nothing: a login just made is not logged out by it.
async fn check_pending(
    inner: &Inner,
    tether: &TetherHandle,
    client: &Client,
) -> Result<(), String> {
    let pending = std::mem::take(&mut *lock(&inner.pending));
    for name in &pending.replaced {
        invalidate(tether, name).await;
    }
    if pending.everyone {
        let (checked, stale) = reconcile(inner, tether, client).await?;
        log::info!(
            "users table {}: a truncate, or over {MAX_PENDING_CHECKS} notified users known              here at once: checked the {checked} user(s) known here against the table,              {stale} changed or gone",
            inner.table
        );
    } else if !pending.check.is_empty() {
        check_known(inner, tether, client, pending.check.into_iter().collect()).await?;
    }
    Ok(())
}

/// Invalidates the connections of `name` on this node.
async fn invalidate(tether: &TetherHandle, name: &str) {
    if let Err(err) = tether
        .invalidate(name, InvalidationCause::PasswordChanged)
        .await
    {
        log::error!("user {name:?}: cannot invalidate its connections: {err}");
    }
}

/// Checks every known hash against the table: a user whose hash changed or whose row is
/// gone (while no notification could arrive) is forgotten and invalidated. Answers how
/// many users were checked and how many of them were invalidated.
async fn reconcile(
    inner: &Inner,
    tether: &TetherHandle,
    client: &Client,
) -> Result<(usize, usize), String> {
    let names: Vec<String> = lock(&inner.known).keys().cloned().collect();
    check_known(inner, tether, client, names).await
}

/// Reads the rows of `names` in one query: those known here whose hash differs or whose
/// row is gone are forgotten and invalidated. Answers how many names were checked and how
/// many of them were invalidated.
async fn check_known(
    inner: &Inner,
    tether: &TetherHandle,
    client: &Client,
    names: Vec<String>,
) -> Result<(usize, usize), String> {
    if names.is_empty() {
        return Ok((0, 0));
    }
    let checked = names.len();
    let query = format!(
        "SELECT name::text, password_hash::text FROM {} WHERE name = ANY($1)",
        inner.table
    );
    let rows = tokio::time::timeout(PING_TIMEOUT, client.query(&query, &[&names]))
        .await
        .map_err(|_| format!("no answer in {PING_TIMEOUT:?}"))?
        .map_err(|err| describe(&err))?;
    let mut current: HashMap<String, Option<String>> = HashMap::new();
    for row in rows {
        if let Ok(name) = row.try_get::<_, String>(0) {
            current.insert(name, row.try_get::<_, Option<String>>(1).ok().flatten());
        }
    }
    let stale: Vec<String> = {
        let known = lock(&inner.known);
        names
            .into_iter()
            .filter(|name| match known.get(name) {
                Some(known) => current.get(name).and_then(Option::as_deref) != Some(&*known.hash),
                // Forgotten meanwhile (by another change, or an idle user): nothing to do.
                None => false,
            })
            .collect()
    };
    for name in &stale {
        inner.forget(name);
        invalidate(tether, name).await;
    }
    Ok((checked, stale.len()))
}

/// Forgets hashes looked up over a minute ago whose user has no connection on this node.
async fn forget_idle(inner: &Inner, tether: &TetherHandle) {
    let old: Vec<String> = lock(&inner.known)
        .iter()
        .filter(|(_, known)| known.looked_up.elapsed() >= KNOWN_FOR)
        .map(|(name, _)| name.clone())
        .collect();
    for name in old {
        if tether.connections(&name) == 0 {
            let mut known = lock(&inner.known);
            if known
                .get(&name)
                .is_some_and(|known| known.looked_up.elapsed() >= KNOWN_FOR)
            {
                known.remove(&name);
            }
        }
    }
}

/// Counts the rows' costs after each (re)connect and SIGHUP, and at most once every
/// [`COUNT_COSTS_EVERY`] while notifications say rows changed; for as long as the process
/// runs. A count that fails keeps the stand-ins in force.
async fn keep_costs_counted(inner: Arc<Inner>) {
    let mut due = tokio::time::interval(COUNT_COSTS_EVERY);
    due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.count_costs.notified() => {}
            _ = due.tick() => {
                if !inner.costs_changed.load(Ordering::Relaxed) {
                    continue;
                }
            }
        }
        inner.costs_changed.store(false, Ordering::Relaxed);
        match tokio::time::timeout(COUNT_COSTS_TIMEOUT, count_costs(&inner)).await {
            Ok(Ok(counts)) => use_costs(&inner, counts),
            Ok(Err(why)) => log::warn!(
                "users table {}: cannot count the bcrypt costs of the rows ({why}); unknown \
                 names keep the stand-ins in force",
                inner.table
            ),
            Err(_) => log::warn!(
                "users table {}: counting the bcrypt costs of the rows took over \
                 {COUNT_COSTS_TIMEOUT:?}; unknown names keep the stand-ins in force",
                inner.table
            ),
        }
    }
}

/// How many valid rows have each bcrypt cost (4 to [`MAX_STORED_COST`]): one aggregate
/// query, on a connection of its own so that the scan delays no lookup or notification.
async fn count_costs(inner: &Inner) -> Result<Vec<(u32, u64)>, String> {
    let client = pg_schema::connect(&inner.database)
        .await
        .map_err(|err| describe(&err))?;
    // `$2b$10$…`: the cost is the two digits after the third character.
    let query = format!(
        "SELECT substring(password_hash::text from 5 for 2), count(*) FROM {} \
         WHERE password_hash::text LIKE '$2_$__$%' GROUP BY 1",
        inner.table
    );
    let rows = client
        .query(&query, &[])
        .await
        .map_err(|err| describe(&err))?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let cost = row.try_get::<_, String>(0).ok()?.parse::<u32>().ok()?;
            let count = u64::try_from(row.try_get::<_, i64>(1).ok()?).ok()?;
            (4..=MAX_STORED_COST)
                .contains(&cost)
                .then_some((cost, count))
        })
        .collect())
}

/// Puts stand-ins for `counts` in force; logs the costs when they are not those in force.
fn use_costs(inner: &Inner, counts: Vec<(u32, u64)>) {
    let previous = Arc::clone(&lock(&inner.stand_ins));
    let stand_ins = StandIns::for_costs(counts, &previous);
    let costs = |stand_ins: &StandIns| stand_ins.costs().map(|(cost, _)| cost).collect::<Vec<_>>();
    if costs(&stand_ins) != costs(&previous) || !inner.costs_counted.swap(true, Ordering::Relaxed) {
        let listed: Vec<String> = stand_ins
            .costs()
            .map(|(cost, rows)| format!("{cost} ({rows} row(s))"))
            .collect();
        if listed.is_empty() {
            log::info!(
                "users table {}: no valid rows; unknown names are checked at auth.bcrypt_cost",
                inner.table
            );
        } else {
            log::info!(
                "users table {}: bcrypt costs of the rows: {}; unknown names are checked at \
                 these, weighted by rows",
                inner.table,
                listed.join(", ")
            );
        }
    }
    *lock(&inner.stand_ins) = Arc::new(stand_ins);
}

/// How a write to the table went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A row was inserted.
    Created,
    /// An existing row was changed (or removed).
    Changed,
    /// There was no row to remove.
    Missing,
}

impl PgUsers {
    /// Runs `work` with the connection in use, on the store's thread; an error when the
    /// database is unreachable or fails.
    async fn with_client<T, F>(
        &self,
        work: impl FnOnce(Arc<Client>, String) -> F + Send + 'static,
    ) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let client = lock(&self.inner.client)
            .clone()
            .ok_or_else(|| "the users database is unreachable".to_string())?;
        let table = self.inner.table.clone();
        let task = self
            .inner
            .runtime
            .spawn(async move { tokio::time::timeout(LOOKUP_TIMEOUT, work(client, table)).await });
        match task.await {
            Ok(Ok(Ok(value))) => {
                self.inner.answered();
                Ok(value)
            }
            Ok(Ok(Err(err))) => Err(describe(&err)),
            Ok(Err(_)) => Err(format!(
                "the users database gave no answer in {LOOKUP_TIMEOUT:?}"
            )),
            Err(err) => Err(format!("the database task stopped: {err}")),
        }
    }

    /// Sets `name`'s hash, creating the row if needed; in force on this node (its
    /// connections invalidated) when it returns, on others when they are notified.
    pub async fn set_hash(&self, name: &str, hash: &str) -> Result<Written, String> {
        let (user, hash) = (name.to_string(), hash.to_string());
        let inserted = self
            .with_client(move |client, table| async move {
                pg_schema::write_hash(&client, &table, &user, &hash).await
            })
            .await?;
        self.changed_here(name).await;
        Ok(if inserted {
            Written::Created
        } else {
            Written::Changed
        })
    }

    /// Removes `name`'s row; in force on this node when it returns.
    pub async fn remove(&self, name: &str) -> Result<Written, String> {
        let user = name.to_string();
        let removed = self
            .with_client(move |client, table| async move {
                let query = format!("DELETE FROM {table} WHERE name = $1");
                client.execute(&query, &[&user]).await
            })
            .await?;
        if removed == 0 {
            return Ok(Written::Missing);
        }
        self.changed_here(name).await;
        Ok(Written::Changed)
    }

    /// Up to `limit` names after `after` (all from the start when `None`), sorted bytewise;
    /// only those containing `search` (ASCII lowercase; ASCII letters of the names are
    /// compared without case) when it is given. On the admin reads' own connection (see
    /// the module comment), in the order the index `db init` makes serves, so a page reads
    /// its own rows only (a search reads on along the index until its page is full).
    pub async fn names(
        &self,
        after: Option<String>,
        limit: usize,
        search: Option<String>,
    ) -> Result<Vec<String>, String> {
        if lock(&self.inner.client).is_none() {
            return Err("the users database is unreachable".to_string());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let inner = Arc::clone(&self.inner);
        let read = async move {
            let _turn = inner
                .admin_reads_at_once
                .acquire()
                .await
                .map_err(|_| "the users database is closing".to_string())?;
            let client = admin_reads_client(&inner).await?;
            let table = &inner.table;
            let order = "ORDER BY name::text COLLATE \"C\" LIMIT";
            let rows = match (&after, &search) {
                (None, None) => {
                    let query = format!("SELECT name::text FROM {table} {order} $1");
                    client.query(&query, &[&limit]).await
                }
                (Some(after), None) => {
                    let query = format!(
                        "SELECT name::text FROM {table} WHERE name::text COLLATE \"C\" > $1 \
                         {order} $2"
                    );
                    client.query(&query, &[after, &limit]).await
                }
                (_, Some(search)) => {
                    // translate(), not lower(): it folds ASCII letters only, whatever the
                    // database's locale, as the users file's listing does.
                    let query = format!(
                        "SELECT name::text FROM {table} \
                         WHERE ($1::text IS NULL OR name::text COLLATE \"C\" > $1) \
                         AND strpos(translate(name::text, \
                         'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'), $3) > 0 \
                         {order} $2"
                    );
                    client.query(&query, &[&after, &limit, search]).await
                }
            };
            let rows = rows.map_err(|err| {
                if err.is_closed() {
                    // Opened again by the next read.
                    if let Ok(mut slot) = inner.admin_reads.try_lock() {
                        slot.take();
                    }
                }
                describe(&err)
            })?;
            rows.iter()
                .map(|row| row.try_get::<_, String>(0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| describe(&err))
        };
        let task = self
            .inner
            .listening_runtime
            .spawn(async move { tokio::time::timeout(LOOKUP_TIMEOUT, read).await });
        match task.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(format!(
                "the users database gave no answer in {LOOKUP_TIMEOUT:?}"
            )),
            Err(err) => Err(format!("the database task stopped: {err}")),
        }
    }

    /// Puts a write of this node in force here at once: `name`'s known hash is forgotten
    /// and its connections invalidated (other nodes act on the notification).
    async fn changed_here(&self, name: &str) {
        self.inner.costs_changed.store(true, Ordering::Relaxed);
        self.inner.forget(name);
        let tether = lock(&self.inner.tether).clone();
        if let Some(tether) = tether {
            invalidate(&tether, name).await;
        }
    }
}

/// With users in PostgreSQL, each SIGHUP checks the users known on this node against the
/// table now (as after a reconnect) instead of reloading a file.
async fn reconcile_on_hangup(database: PgUsers, mut hangups: tokio::signal::unix::Signal) {
    while hangups.recv().await.is_some() {
        database.reconcile_now();
    }
}

impl Running for PgUsers {
    fn kind(&self) -> &'static str {
        "postgresql"
    }

    fn logins(&self) -> Arc<dyn UserStore> {
        Arc::new(self.clone())
    }

    fn keep_in_step(
        &self,
        tether: TetherHandle,
        hangups: tokio::signal::unix::Signal,
    ) -> KeptInStep {
        self.listen(tether);
        actix_rt::spawn(reconcile_on_hangup(self.clone(), hangups));
        KeptInStep(None)
    }

    fn register_metrics(&self, registry: &mut Registry) {
        PgUsers::register_metrics(self, registry);
    }

    fn reachable(&self) -> Option<bool> {
        Some(PgUsers::reachable(self))
    }

    fn figures(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }

    fn per_node(&self) -> Option<&'static str> {
        None
    }

    fn set_hash<'a>(&'a self, name: &'a str, hash: &'a str) -> Answer<'a, PasswordChange> {
        Box::pin(async move {
            match PgUsers::set_hash(self, name, hash).await {
                Ok(Written::Created) => Ok(PasswordChange::Created),
                Ok(_) => Ok(PasswordChange::Changed),
                Err(err) => Err(StoreError::Unavailable(err)),
            }
        })
    }

    fn remove<'a>(&'a self, name: &'a str) -> Answer<'a, bool> {
        Box::pin(async move {
            PgUsers::remove(self, name)
                .await
                .map(|written| written != Written::Missing)
                .map_err(StoreError::Unavailable)
        })
    }

    fn names(&self, page: Page) -> Answer<'_, Vec<String>> {
        Box::pin(async move {
            PgUsers::names(self, page.after, page.limit, page.search)
                .await
                .map_err(StoreError::Unavailable)
        })
    }
}
