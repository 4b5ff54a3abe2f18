//! Admission after a restart (SPEC §5, "verifiers"): with `auth.verifier_key_file`, a user
//! who logged in once is admitted again — after a restart, on another node of a cluster —
//! without bcrypt; a changed password's old verifiers are useless; a wrong password still
//! pays bcrypt; an open or short key stops the start-up. bcrypt work is counted through
//! `/metrics` (`tether_password_check_seconds_count` against
//! `tether_password_checks_saved_total`), never timed.

use crate::common::cluster::Node;
use crate::common::redis::Redis;
use crate::common::{
    admin_addr, admin_call, cheap_hash, metric_in, run_to_exit, users_toml, wait_until, TestClient,
    TestConfig, TestServer,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// A folder that outlives the server processes started on it: the users file, the key
/// and the verifier file, all named by absolute paths in each start's configuration.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    /// A site with `users` (name, password) hashed at the test cost and a key made by
    /// `tether keygen`.
    fn new(users: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let site = Self { dir };
        site.write_users(users);
        let ran = run_to_exit(keygen(&site.key(), false), EXIT_TIMEOUT);
        assert!(ran.status.success(), "keygen: {ran:?}");
        site
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn key(&self) -> PathBuf {
        self.path("verifier.key")
    }

    fn verifier_file(&self) -> PathBuf {
        self.path("verifiers")
    }

    fn write_users(&self, users: &[(&str, &str)]) {
        let hashed: Vec<(String, String)> = users
            .iter()
            .map(|(name, password)| ((*name).to_owned(), cheap_hash(password)))
            .collect();
        let pairs: Vec<(&str, &str)> = hashed.iter().map(|(n, h)| (&**n, &**h)).collect();
        std::fs::write(self.path("users.toml"), users_toml(&pairs)).unwrap();
    }

    /// The configuration of a node on this site, its admin API on an ephemeral port.
    fn config(&self) -> TestConfig {
        self.shared(TestConfig::new().set("admin", "listen", "127.0.0.1:0"))
    }

    /// `config` with this site's users, key and verifier file.
    fn shared(&self, config: TestConfig) -> TestConfig {
        let text = |path: PathBuf| path.to_string_lossy().into_owned();
        config
            .auth("bcrypt_cost", 4)
            .auth("users_file", text(self.path("users.toml")))
            .auth("verifier_key_file", text(self.key()))
            .auth("verifier_file", text(self.verifier_file()))
    }

    /// Starts a server on `config` (in a folder of its own: everything shared is here).
    fn start(&self, config: &TestConfig) -> Running {
        let server = TestServer::start_with_hashes(config, &[]);
        server.wait_for_log("(admin API)", EXIT_TIMEOUT);
        let base = format!("http://{}", admin_addr(&server.stderr_text()));
        Running { server, base }
    }

    /// The verifier records in the saved file (0 when there is none).
    fn saved_verifiers(&self) -> usize {
        std::fs::read_to_string(self.verifier_file())
            .map(|text| text.lines().count().saturating_sub(1))
            .unwrap_or(0)
    }
}

/// `tether keygen PATH` (with `--force`).
fn keygen(path: &Path, force: bool) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    command.arg("keygen").arg(path).env_remove("RUST_LOG");
    if force {
        command.arg("--force");
    }
    command
}

/// A server and its admin API.
struct Running {
    server: TestServer,
    base: String,
}

impl Running {
    /// (bcrypt checks run, logins a verifier admitted) so far.
    fn checks(&self) -> (u64, u64) {
        bcrypt_and_saved(&self.base)
    }

    /// Stops the server with SIGTERM and waits for its exit 0.
    fn stop(mut self) {
        self.server.terminate();
        let status = self.server.wait_exit(EXIT_TIMEOUT);
        assert!(status.success(), "{status:?}");
    }
}

/// (bcrypt checks run, logins a verifier admitted) on the node whose admin API is `base`.
fn bcrypt_and_saved(base: &str) -> (u64, u64) {
    let (status, text) = admin_call(base, None, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let count = |series: &str| {
        metric_in(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}")) as u64
    };
    (
        count("tether_password_check_seconds_count"),
        count("tether_password_checks_saved_total"),
    )
}

/// Logs every (name, password) in at once — every login sent before any answer is read —
/// and answers the replies in order.
fn storm(addr: std::net::SocketAddr, logins: &[(String, String)]) -> Vec<String> {
    let mut clients: Vec<TestClient> = logins
        .iter()
        .map(|(name, password)| {
            let mut client = TestClient::connect(addr);
            client.send(&["login", name, password]);
            client
        })
        .collect();
    clients
        .iter_mut()
        .map(|client| client.recv().join(" "))
        .collect()
}

fn users(count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|n| (format!("user-{n}"), format!("pw-{n}")))
        .collect()
}

fn as_pairs(users: &[(String, String)]) -> Vec<(&str, &str)> {
    users.iter().map(|(n, p)| (&**n, &**p)).collect()
}

#[test]
fn a_restart_readmits_every_user_without_bcrypt_and_a_wrong_password_still_pays_it() {
    let everyone = users(24);
    let site = Site::new(&as_pairs(&everyone));
    let config = site.config();
    let first = site.start(&config);
    assert!(storm(first.server.addr(), &everyone)
        .iter()
        .all(|reply| reply == "login_valid"));
    assert_eq!(first.checks(), (24, 0));
    first.stop();
    let mode = std::fs::metadata(site.verifier_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the verifier file is private");
    assert_eq!(site.saved_verifiers(), 24);

    let second = site.start(&config);
    let replies = storm(second.server.addr(), &everyone);
    assert!(
        replies.iter().all(|reply| reply == "login_valid"),
        "{replies:?}"
    );
    assert_eq!(second.checks(), (0, 24), "no bcrypt after the restart");
    // A wrong password for a user with a verifier, and an unknown user: bcrypt both.
    assert_eq!(second.server.login_reply("user-3", "pw-4"), "login_invalid");
    assert_eq!(second.server.login_reply("nobody", "pw-3"), "login_invalid");
    assert_eq!(second.checks(), (2, 24));
    // The right password again: still no bcrypt (the wrong one left the verifier alone).
    assert_eq!(second.server.login_reply("user-3", "pw-3"), "login_valid");
    assert_eq!(second.checks(), (2, 25));
}

#[test]
fn the_old_password_is_refused_after_a_change_in_the_file_or_through_the_admin_api() {
    let site = Site::new(&[("alice", "old"), ("bob", "old")]);
    let running = site.start(&site.config());
    running.server.logged_in("alice", "old");
    running.server.logged_in("bob", "old");
    running.server.logged_in("alice", "old");
    assert_eq!(running.checks(), (2, 1), "verifiers kept");

    // alice: a new hash in the file (as `tether passwd` or an editor writes it).
    site.write_users(&[("alice", "new"), ("bob", "old")]);
    running
        .server
        .wait_for_log("changed: \"alice\"", EXIT_TIMEOUT);
    assert_eq!(running.server.login_reply("alice", "old"), "login_invalid");
    assert_eq!(running.checks(), (3, 1), "the old password paid bcrypt");
    assert_eq!(running.server.login_reply("alice", "new"), "login_valid");

    // bob: through the admin API.
    let (status, _) = admin_call(
        &running.base,
        None,
        "PUT",
        "/v1/users/bob/password",
        Some(r#"{"password": "new"}"#),
    );
    assert_eq!(status, 204);
    let (checks, saved) = running.checks();
    assert_eq!(running.server.login_reply("bob", "old"), "login_invalid");
    assert_eq!(running.checks(), (checks + 1, saved));
    assert_eq!(running.server.login_reply("bob", "new"), "login_valid");
    assert_eq!(running.server.login_reply("bob", "new"), "login_valid");
    assert_eq!(running.checks(), (checks + 2, saved + 1));
    running.stop();
    // Restarted on the changed users, the old passwords stay refused.
    let again = site.start(&site.config());
    assert_eq!(again.server.login_reply("alice", "old"), "login_invalid");
    assert_eq!(again.server.login_reply("bob", "old"), "login_invalid");
    assert_eq!(again.server.login_reply("alice", "new"), "login_valid");
    assert_eq!(again.checks(), (2, 1));
}

#[test]
fn a_returning_user_is_admitted_at_once_while_bcrypt_checks_queue() {
    let site = Site::new(&[]);
    let slow = bcrypt::hash("slow-pw", 10).unwrap();
    let alice = cheap_hash("pw");
    std::fs::write(
        site.path("users.toml"),
        users_toml(&[("alice", &alice), ("slow", &slow)]),
    )
    .unwrap();
    let running = site.start(&site.config().auth("password_threads", 1));
    running.server.logged_in("alice", "pw");
    // Three cost-10 checks (60 ms of a core each, more on a busy machine: the thread is
    // niced) hold the one thread.
    let mut waiting: Vec<TestClient> = (0..3)
        .map(|_| {
            let mut client = running.server.client();
            client.send(&["login", "slow", "wrong"]);
            client
        })
        .collect();
    assert_eq!(running.server.login_reply("alice", "pw"), "login_valid");
    assert!(
        !waiting.last_mut().unwrap().has_pending_input(),
        "alice was answered before the last of the bcrypt checks queued ahead of her"
    );
    for client in &mut waiting {
        assert_eq!(
            client.recv_within(Duration::from_secs(60)),
            ["login_invalid"]
        );
    }
    assert_eq!(running.checks(), (4, 1));
}

#[test]
fn a_password_changed_while_the_server_was_down_makes_its_verifier_useless() {
    let site = Site::new(&[("carol", "old")]);
    let first = site.start(&site.config());
    first.server.logged_in("carol", "old");
    first.stop();
    assert_eq!(site.saved_verifiers(), 1);
    // Nothing running sees this change: only the stored hash inside the verifier does.
    site.write_users(&[("carol", "new")]);
    let second = site.start(&site.config());
    assert_eq!(second.server.login_reply("carol", "old"), "login_invalid");
    assert_eq!(second.server.login_reply("carol", "new"), "login_valid");
    assert_eq!(second.checks(), (2, 0));
}

#[test]
fn a_crash_costs_one_bcrypt_for_each_login_the_last_save_missed() {
    let everyone = users(12);
    let (before, after) = everyone.split_at(8);
    let site = Site::new(&as_pairs(&everyone));
    let config = site.config();
    let first = site.start(&config);
    assert!(storm(first.server.addr(), before)
        .iter()
        .all(|reply| reply == "login_valid"));
    assert!(
        wait_until(Duration::from_secs(30), || site.saved_verifiers() == 8),
        "the verifiers are saved within a save interval"
    );
    assert!(storm(first.server.addr(), after)
        .iter()
        .all(|reply| reply == "login_valid"));
    let unsaved = 12 - site.saved_verifiers() as u64;
    let mut first = first;
    first.server.signal(nix::sys::signal::Signal::SIGKILL);
    first.server.wait_exit(EXIT_TIMEOUT);

    let second = site.start(&config);
    assert!(storm(second.server.addr(), &everyone)
        .iter()
        .all(|reply| reply == "login_valid"));
    assert_eq!(second.checks(), (unsaved, 12 - unsaved));
    // Paid once: the next round needs no bcrypt at all.
    assert!(storm(second.server.addr(), &everyone)
        .iter()
        .all(|reply| reply == "login_valid"));
    assert_eq!(second.checks(), (unsaved, 24 - unsaved));
}

#[test]
fn a_shorter_verifier_save_interval_brings_new_verifiers_to_the_file_sooner() {
    // The default 10 s would save nothing within the 5 s waited here; 1 s saves each new
    // verifier within about a second, while the server keeps running.
    let site = Site::new(&[("alice", "pw1"), ("bob", "pw2")]);
    let running = site.start(&site.config().auth("verifier_save_interval", "1s"));
    let _alice = running.server.logged_in("alice", "pw1");
    assert!(
        wait_until(Duration::from_secs(5), || site.saved_verifiers() == 1),
        "alice's verifier saved within 5 s"
    );
    let _bob = running.server.logged_in("bob", "pw2");
    assert!(
        wait_until(Duration::from_secs(5), || site.saved_verifiers() == 2),
        "and bob's at a later save"
    );
    running.stop();
}

#[test]
fn a_corrupt_verifier_file_is_logged_ignored_and_rewritten() {
    let site = Site::new(&[("alice", "pw")]);
    std::fs::write(
        site.verifier_file(),
        "tether-verifiers 1 nonsense\nnot a record\n",
    )
    .unwrap();
    let first = site.start(&site.config());
    first.server.wait_for_log("ignored", EXIT_TIMEOUT);
    first.server.logged_in("alice", "pw");
    assert_eq!(first.checks(), (1, 0));
    first.stop();
    assert_eq!(site.saved_verifiers(), 1);
    let second = site.start(&site.config());
    second.server.logged_in("alice", "pw");
    assert_eq!(second.checks(), (0, 1));
}

#[test]
fn without_a_key_file_nothing_is_kept() {
    let site = Site::new(&[("alice", "pw")]);
    let config = TestConfig::new()
        .set("admin", "listen", "127.0.0.1:0")
        .auth("bcrypt_cost", 4)
        .auth(
            "users_file",
            site.path("users.toml").to_string_lossy().as_ref(),
        )
        .auth(
            "verifier_file",
            site.verifier_file().to_string_lossy().as_ref(),
        );
    let running = site.start(&config);
    running.server.logged_in("alice", "pw");
    running.server.logged_in("alice", "pw");
    assert_eq!(running.checks(), (2, 0));
    running.stop();
    assert!(!site.verifier_file().exists());
}

/// Starts a server on `key` as its verifier key; answers its exit and stderr.
fn start_with_key(site: &Site, key: &Path) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = site
        .config()
        .auth("verifier_key_file", key.to_string_lossy().as_ref());
    let config_path = dir.path().join("server.toml");
    std::fs::write(&config_path, config.to_toml()).unwrap();
    let ran = run_to_exit(crate::common::tether_command(&config_path), EXIT_TIMEOUT);
    (ran.status.code(), ran.stderr)
}

#[test]
fn an_open_short_or_missing_key_stops_the_start_naming_the_file() {
    let site = Site::new(&[("alice", "pw")]);
    let key = site.key();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, stderr) = start_with_key(&site, &key);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&key.display().to_string()), "{stderr}");
    assert!(stderr.contains("group or others"), "{stderr}");

    let short = site.path("short.key");
    std::fs::write(&short, [7u8; 16]).unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, stderr) = start_with_key(&site, &short);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&short.display().to_string()), "{stderr}");
    assert!(stderr.contains("at least 32"), "{stderr}");

    // `tether check-config` reads the key as start-up does.
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("server.toml");
    let config = site
        .config()
        .auth("verifier_key_file", short.to_string_lossy().as_ref());
    std::fs::write(&config_path, config.to_toml()).unwrap();
    let mut command = crate::common::tether_command(&config_path);
    command.arg("check-config");
    let ran = run_to_exit(command, EXIT_TIMEOUT);
    assert_eq!(ran.status.code(), Some(2), "{ran:?}");
    assert!(ran.stderr.contains("at least 32"), "{ran:?}");

    let missing = site.path("no.key");
    let (code, stderr) = start_with_key(&site, &missing);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(!site.verifier_file().exists());
}

#[test]
fn keygen_writes_a_private_random_key_and_replaces_one_only_when_forced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let ran = run_to_exit(keygen(&path, false), EXIT_TIMEOUT);
    assert!(ran.status.success(), "{ran:?}");
    assert!(ran.stdout.contains("0600"), "{ran:?}");
    let first = std::fs::read_to_string(&path).unwrap();
    assert_eq!(first.len(), 65);
    assert!(first
        .trim_end()
        .bytes()
        .all(|byte| byte.is_ascii_hexdigit()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let ran = run_to_exit(keygen(&path, false), EXIT_TIMEOUT);
    assert_eq!(ran.status.code(), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("--force"), "{ran:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first);

    let ran = run_to_exit(keygen(&path, true), EXIT_TIMEOUT);
    assert!(ran.status.success(), "{ran:?}");
    assert_ne!(std::fs::read_to_string(&path).unwrap(), first);
}

#[test]
fn a_user_admitted_on_one_node_is_admitted_on_another_without_bcrypt() {
    let Some(redis) = Redis::start() else { return };
    let site = Site::new(&[("alice", "old"), ("bob", "pw")]);
    let configure = |config: TestConfig| site.shared(config);
    let a = Node::start(&redis, "adm", "a", &[], &configure);
    let b = Node::start(&redis, "adm", "b", &[], &configure);
    let (a_base, b_base) = (base_of(&a), base_of(&b));

    a.login("alice", "old");
    assert_eq!(bcrypt_and_saved(&a_base), (1, 0));
    let key = "adm:verifier:{616c696365}";
    assert_eq!(redis.cli(&["EXISTS", key]).trim(), "1");
    let ttl: u64 = redis.cli(&["TTL", key]).trim().parse().unwrap();
    assert!(ttl > 6 * 86_400, "the verifier keeps verifier_ttl: {ttl}");
    b.login("alice", "old");
    assert_eq!(
        bcrypt_and_saved(&b_base),
        (0, 1),
        "no bcrypt on the other node"
    );
    assert_eq!(b.server.login_reply("alice", "wrong"), "login_invalid");
    assert_eq!(bcrypt_and_saved(&b_base), (1, 1));

    // The shared users file changes alice's password: each node forgets her verifier.
    site.write_users(&[("alice", "new"), ("bob", "pw")]);
    b.server.wait_for_log("changed: \"alice\"", EXIT_TIMEOUT);
    a.server.wait_for_log("changed: \"alice\"", EXIT_TIMEOUT);
    wait_deleted(&redis, key);
    assert_eq!(a.server.login_reply("alice", "old"), "login_invalid");
    assert_eq!(bcrypt_and_saved(&a_base), (2, 0));
    b.login("alice", "new");
    a.login("alice", "new");
    assert_eq!(bcrypt_and_saved(&a_base), (2, 1));

    // Redis silent: a login never waits for it past a second, and pays bcrypt.
    b.login("bob", "pw");
    redis.pause();
    let (checks, saved) = bcrypt_and_saved(&a_base);
    assert_eq!(a.server.login_reply("bob", "pw"), "login_valid");
    assert_eq!(a.server.login_reply("bob", "nope"), "login_invalid");
    assert_eq!(bcrypt_and_saved(&a_base), (checks + 2, saved));
    redis.resume();
    assert!(
        !site.verifier_file().exists(),
        "a cluster keeps no verifier file"
    );
}

/// Waits (at most 5 s) until `key` is gone from `redis`.
fn wait_deleted(redis: &Redis, key: &str) {
    let gone = wait_until(Duration::from_secs(5), || {
        redis.cli(&["EXISTS", key]).trim() == "0"
    });
    assert!(gone, "{key} is still in Redis");
}

/// `http://ADDR` of a node's admin API.
fn base_of(node: &Node) -> String {
    format!("http://{}", admin_addr(&node.server.stderr_text()))
}

#[test]
fn a_password_changed_through_another_node_or_in_postgresql_ends_the_kept_verifier() {
    let Some(redis) = Redis::start() else { return };
    let Some(postgres) = crate::common::postgres::Postgres::start() else {
        return;
    };
    let site = Site::new(&[]);
    let configure = |config: TestConfig| {
        config
            .auth("database", postgres.url())
            .auth("bcrypt_cost", 4)
            .auth("verifier_key_file", site.key().to_string_lossy().as_ref())
    };
    let init = configure(TestConfig::new());
    let init_dir = tempfile::tempdir().unwrap();
    let init_path = init_dir.path().join("server.toml");
    std::fs::write(&init_path, init.to_toml()).unwrap();
    let mut command = crate::common::tether_command(&init_path);
    command.args(["db", "init"]);
    let ran = run_to_exit(command, EXIT_TIMEOUT);
    assert!(ran.status.success(), "db init: {ran:?}");
    let set_in_table = |password: &str| {
        postgres.psql(&format!(
            "INSERT INTO tether_users (name, password_hash) VALUES ('alice', '{}') \
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash",
            cheap_hash(password)
        ))
    };
    set_in_table("first");
    let a = Node::start(&redis, "pg", "a", &[], &configure);
    let b = Node::start(&redis, "pg", "b", &[], &configure);
    let (a_base, b_base) = (base_of(&a), base_of(&b));
    let key = "pg:verifier:{616c696365}";

    a.login("alice", "first");
    b.login("alice", "first");
    assert_eq!(bcrypt_and_saved(&a_base), (1, 0));
    assert_eq!(bcrypt_and_saved(&b_base), (0, 1));
    // Through B's admin API: B deletes the verifier, and A's is useless anyway.
    let (status, _) = b.call(
        "PUT",
        "/v1/users/alice/password",
        Some(&serde_json::json!({"password": "second"})),
    );
    assert_eq!(status, 204);
    wait_deleted(&redis, key);
    assert_eq!(a.server.login_reply("alice", "first"), "login_invalid");
    assert_eq!(bcrypt_and_saved(&a_base), (2, 0));

    // In the table, by psql: the nodes that know alice delete her verifier.
    a.login("alice", "second");
    b.login("alice", "second");
    assert_eq!(bcrypt_and_saved(&b_base), (0, 2));
    assert_eq!(redis.cli(&["EXISTS", key]).trim(), "1");
    set_in_table("third");
    wait_deleted(&redis, key);
    assert_eq!(a.server.login_reply("alice", "second"), "login_invalid");
    assert_eq!(b.server.login_reply("alice", "second"), "login_invalid");
    a.login("alice", "third");
    b.login("alice", "third");
    assert_eq!(bcrypt_and_saved(&b_base), (1, 3));
}
