//! Users in PostgreSQL (SPEC §9) against a real, private PostgreSQL server: `tether db
//! init`, logins against rows written by `psql`, changes reaching the connections of two
//! nodes, an outage and what changed during it, bad rows, the commands and admin routes
//! that write the table, and the time a failed login takes when rows have mixed costs.

use crate::common::postgres::Postgres;
use crate::common::{
    admin_addr, cheap_hash, run_to_exit, run_with_input, tether_command, wait_until, TestClient,
    TestConfig, TestServer,
};
use crate::hardening_logins::{median_failed_logins, metric};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a change may take to reach the connections: SPEC §9 says within a second; a
/// loaded 2-core machine (PostgreSQL, the server and the test share it) gets 4 s more.
/// A change whose notification is lost is never delivered (nothing polls), so any bound
/// catches that.
const CHANGE_DELIVERED: Duration = Duration::from_secs(5);
/// Long enough to see that nothing comes.
const QUIET: Duration = Duration::from_millis(500);
/// How long a command may run: a hang guard (a loaded machine runs `db import` of 10,000
/// rows for tens of seconds).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A configuration with users in `postgres`.
fn config(postgres: &Postgres) -> TestConfig {
    TestConfig::new()
        .auth("database", postgres.url())
        .auth("bcrypt_cost", 4)
}

/// Writes `config` into a new folder; answers the folder (kept while it lives).
fn config_file(config: &TestConfig) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("server.toml"), config.to_toml()).expect("write config");
    dir
}

/// Runs `tether ARGS --config DIR/server.toml`.
fn tether(dir: &Path, args: &[&str]) -> crate::common::Ran {
    let mut command = tether_command(&dir.join("server.toml"));
    command.args(args);
    run_to_exit(command, COMMAND_TIMEOUT)
}

/// Runs `tether db init` and asserts it succeeded.
fn db_init(postgres: &Postgres) {
    let dir = config_file(&config(postgres));
    let ran = tether(dir.path(), &["db", "init"]);
    assert!(ran.status.success(), "db init failed: {ran:?}");
}

/// Inserts a user with `password` by `psql`, as an application would.
fn insert(postgres: &Postgres, name: &str, password: &str) {
    postgres.psql(&format!(
        "INSERT INTO tether_users (name, password_hash) VALUES ('{name}', '{}')",
        cheap_hash(password)
    ));
}

fn assert_invalidated(client: &mut TestClient, within: Duration) {
    assert_eq!(client.recv_within(within), ["invalidated"]);
}

fn login_answer(server: &TestServer, name: &str, password: &str) -> Vec<String> {
    let mut client = server.client();
    client.send(&["login", name, password]);
    client.recv()
}

/// A fresh PostgreSQL with the table made by `db init` and the rows of alice (`pw-a`) and
/// bob (`pw-b`); `None` when PostgreSQL is not installed (the test is skipped).
fn with_alice_and_bob() -> Option<Postgres> {
    let postgres = Postgres::start()?;
    db_init(&postgres);
    insert(&postgres, "alice", "pw-a");
    insert(&postgres, "bob", "pw-b");
    Some(postgres)
}

#[test]
fn db_init_is_idempotent_prints_its_sql_and_a_server_needs_it() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let dir = config_file(&config(&postgres));

    let printed = tether(dir.path(), &["db", "init", "--print"]);
    assert!(printed.status.success(), "{printed:?}");
    assert!(printed
        .stdout
        .contains("CREATE TABLE IF NOT EXISTS tether_users"));
    assert!(printed.stdout.contains("pg_notify('tether_users'"));
    assert_eq!(
        postgres.psql("SELECT to_regclass('tether_users')").trim(),
        ""
    );

    let mut command = tether_command(&dir.path().join("server.toml"));
    command.current_dir(dir.path());
    let refused = run_to_exit(command, COMMAND_TIMEOUT);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("tether db init"),
        "{}",
        refused.stderr
    );

    for _ in 0..2 {
        let ran = tether(dir.path(), &["db", "init"]);
        assert!(ran.status.success(), "{ran:?}");
    }
    let columns = postgres.psql(
        "SELECT column_name FROM information_schema.columns \
         WHERE table_name = 'tether_users' ORDER BY column_name",
    );
    assert_eq!(
        columns.split_whitespace().collect::<Vec<_>>(),
        ["name", "password_hash"]
    );

    // A table without the hash column is refused the same way.
    postgres.psql("CREATE TABLE people (name text primary key)");
    let dir = config_file(&config(&postgres).auth("table", "people"));
    let mut command = tether_command(&dir.path().join("server.toml"));
    command.current_dir(dir.path());
    let refused = run_to_exit(command, COMMAND_TIMEOUT);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("password_hash"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("tether db init"),
        "{}",
        refused.stderr
    );
}

#[test]
fn rows_written_by_psql_log_in_and_their_changes_reach_two_nodes() {
    let Some(postgres) = with_alice_and_bob() else {
        return;
    };
    let one = TestServer::start(&config(&postgres), &[]);
    let two = TestServer::start(&config(&postgres), &[]);

    let mut alice_one = one.client();
    alice_one.login("alice", "pw-a");
    let mut alice_two = two.client();
    alice_two.login("alice", "pw-a");
    let mut bob_two = two.client();
    bob_two.login("bob", "pw-b");
    assert_eq!(login_answer(&one, "alice", "wrong"), ["login_invalid"]);
    assert_eq!(login_answer(&one, "nobody", "pw"), ["login_invalid"]);

    // A re-hash of the same password is a change too.
    postgres.psql(&format!(
        "UPDATE tether_users SET password_hash = '{}' WHERE name = 'alice'",
        cheap_hash("pw-a")
    ));
    assert_invalidated(&mut alice_one, CHANGE_DELIVERED);
    assert_invalidated(&mut alice_two, CHANGE_DELIVERED);
    bob_two.expect_nothing_for(QUIET);
    alice_one.login("alice", "pw-a");

    postgres.psql("DELETE FROM tether_users WHERE name = 'bob'");
    assert_invalidated(&mut bob_two, CHANGE_DELIVERED);
    assert_eq!(login_answer(&two, "bob", "pw-b"), ["login_invalid"]);
    alice_one.expect_nothing_for(QUIET);
}

#[test]
fn an_outage_is_answered_in_bounded_time_and_changes_made_during_it_are_enforced() {
    let Some(postgres) = with_alice_and_bob() else {
        return;
    };
    let server = TestServer::start(
        &config(&postgres).set("admin", "listen", "127.0.0.1:0"),
        &[],
    );
    server.wait_for_log("(admin API)", Duration::from_secs(10));
    let health = format!("http://{}/healthz", admin_addr(&server.stderr_text()));
    let users_health = || -> String {
        let text = ureq::get(&health)
            .call()
            .expect("healthz answers")
            .into_string()
            .expect("body");
        let body: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        body["users"].as_str().expect("users").to_string()
    };
    assert_eq!(users_health(), "ok");
    let mut alice = server.client();
    alice.login("alice", "pw-a");

    // Stopped and started again with nothing changed: nobody is invalidated.
    postgres.stop();
    server.wait_for_log("users database unreachable", Duration::from_secs(5));
    assert_eq!(users_health(), "unreachable");
    // Alice logged in during the last minute: her hash stands in for the database.
    let mut alice_again = server.client();
    alice_again.login("alice", "pw-a");
    // Bob did not: refused, within the bound, however often he tries.
    for _ in 0..3 {
        let asked = Instant::now();
        assert_eq!(login_answer(&server, "bob", "pw-b"), ["login_invalid"]);
        assert!(asked.elapsed() <= Duration::from_secs(5));
    }
    postgres.start_again();
    server.wait_for_log("users database reachable again", Duration::from_secs(10));
    assert_eq!(users_health(), "ok");
    alice.expect_nothing_for(QUIET);
    alice_again.expect_nothing_for(QUIET);
    let log = server.stderr_text();
    assert_eq!(
        log.matches("users database unreachable").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("reachable again").count(), 1, "{log}");

    // A change while the node cannot listen (its role locked out, its sessions cut) is
    // found by the reconcile after it reconnects.
    postgres.psql(
        "ALTER ROLE tether NOLOGIN; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'tether'",
    );
    server.wait_for_log("users database unreachable", Duration::from_secs(5));
    postgres.psql(&format!(
        "UPDATE tether_users SET password_hash = '{}' WHERE name = 'alice'",
        cheap_hash("new-a")
    ));
    postgres.psql("ALTER ROLE tether LOGIN");
    assert_invalidated(&mut alice, Duration::from_secs(5));
    // Told in the same round as the first connection; the bound is a hang guard.
    assert_invalidated(&mut alice_again, Duration::from_secs(5));
    server.client().login("alice", "new-a");
}

#[test]
fn logins_the_database_cannot_answer_are_refused_without_counting_as_failed_passwords() {
    let Some(postgres) = with_alice_and_bob() else {
        return;
    };
    const LIMIT: u32 = 3;
    let server = TestServer::start(
        &config(&postgres)
            .auth("login_failures_per_minute", LIMIT)
            .set("admin", "listen", "127.0.0.1:0"),
        &[],
    );
    server.wait_for_log("(admin API)", Duration::from_secs(10));
    let admin = admin_addr(&server.stderr_text());
    postgres.stop();
    server.wait_for_log("users database unreachable", Duration::from_secs(5));
    // Bob, never looked up here, with his right password, more often than the limit: each
    // refused, none counted against the pair (the password was never checked).
    for attempt in 0..LIMIT + 2 {
        assert_eq!(
            login_answer(&server, "bob", "pw-b"),
            ["login_invalid"],
            "attempt {attempt}"
        );
    }
    let unchecked = r#"tether_logins_total{result="unchecked"}"#;
    assert_eq!(metric(admin, unchecked), f64::from(LIMIT + 2));
    assert_eq!(
        metric(admin, r#"tether_logins_total{result="invalid"}"#),
        0.0
    );
    server.wait_for_log(
        "login as \"bob\" refused unchecked: the user store did not answer",
        Duration::from_secs(5),
    );
    postgres.start_again();
    server.wait_for_log("users database reachable again", Duration::from_secs(10));
    // Not throttled: the first login after the outage is checked, and admitted.
    assert_eq!(login_answer(&server, "bob", "pw-b"), ["login_valid"]);
    // Wrong passwords still count as they did: the limit, then throttled.
    for _ in 0..LIMIT {
        assert_eq!(login_answer(&server, "bob", "wrong"), ["login_invalid"]);
    }
    assert_eq!(login_answer(&server, "bob", "pw-b"), ["login_invalid"]);
    assert_eq!(
        metric(admin, r#"tether_logins_total{result="throttled"}"#),
        1.0
    );
}

#[test]
fn bad_rows_are_reported_by_name_and_refused_alone() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    db_init(&postgres);
    insert(&postgres, "alice", "pw-a");
    postgres.psql("INSERT INTO tether_users VALUES ('mallory', 'not a bcrypt hash')");
    let too_costly = cheap_hash("pw-c").replacen("$04$", "$17$", 1);
    postgres.psql(&format!(
        "INSERT INTO tether_users VALUES ('costly', '{too_costly}')"
    ));
    let long_name = "n".repeat(200);
    postgres.psql(&format!(
        "INSERT INTO tether_users VALUES ('{long_name}', '{}')",
        cheap_hash("pw")
    ));
    let server = TestServer::start(&config(&postgres), &[]);
    // Named in the background once the node listens, the long name cut short.
    server.wait_for_log("rows no login can use", Duration::from_secs(5));
    let log = server.stderr_text();
    let reported = log
        .lines()
        .find(|line| line.contains("rows no login can use"))
        .expect("the report");
    for name in ["\"costly\"", "\"mallory\"", "(200 bytes)"] {
        assert!(reported.contains(name), "{name} not in {reported}");
    }
    assert!(!reported.contains("alice"), "{reported}");

    assert_eq!(login_answer(&server, "mallory", "x"), ["login_invalid"]);
    server.wait_for_log(
        "\"mallory\" has an invalid password_hash",
        Duration::from_secs(5),
    );
    assert_eq!(login_answer(&server, "costly", "pw-c"), ["login_invalid"]);
    server.wait_for_log(
        "\"costly\" has an invalid password_hash",
        Duration::from_secs(5),
    );
    server.client().login("alice", "pw-a");
}

#[test]
fn commands_and_admin_routes_write_the_table() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    db_init(&postgres);
    let dir = config_file(&config(&postgres));

    // db import: 10,000 users, inserted then updated.
    let hash = cheap_hash("imported");
    let mut users_file = String::new();
    for n in 0..10_000 {
        users_file.push_str(&format!("[users.user{n}]\npassword_hash = \"{hash}\"\n"));
    }
    let file = dir.path().join("old-users.toml");
    std::fs::write(&file, users_file).expect("write users file");
    let file = file.to_str().expect("UTF-8 path");
    let ran = tether(dir.path(), &["db", "import", file]);
    assert!(ran.stdout.contains("10000 inserted, 0 updated"), "{ran:?}");
    let ran = tether(dir.path(), &["db", "import", file]);
    assert!(ran.stdout.contains("0 inserted, 10000 updated"), "{ran:?}");
    assert_eq!(
        postgres.psql("SELECT count(*) FROM tether_users").trim(),
        "10000"
    );

    // passwd and deluser write the table; a running server enforces them.
    let server = TestServer::start(
        &config(&postgres).set("admin", "listen", "127.0.0.1:0"),
        &[],
    );
    server.wait_for_log("(admin API)", Duration::from_secs(10));
    let mut passwd = tether_command(&dir.path().join("server.toml"));
    passwd.args(["passwd", "carol"]);
    let ran = run_with_input(passwd, b"pw-c\n", COMMAND_TIMEOUT);
    assert!(ran.status.success(), "{ran:?}");
    let mut carol = server.client();
    carol.login("carol", "pw-c");
    let ran = tether(dir.path(), &["deluser", "carol"]);
    assert!(ran.status.success(), "{ran:?}");
    assert_invalidated(&mut carol, CHANGE_DELIVERED);
    let ran = tether(dir.path(), &["deluser", "carol"]);
    assert_eq!(ran.status.code(), Some(1), "{ran:?}");

    // The admin routes: in force on this node when the answer comes.
    let base = format!("http://{}", admin_addr(&server.stderr_text()));
    let created = ureq::put(&format!("{base}/v1/users/dave/password"))
        .set("Content-Type", "application/json")
        .send_string(r#"{"password": "pw-d"}"#)
        .expect("PUT answers");
    assert_eq!(created.status(), 201);
    let mut dave = server.client();
    dave.login("dave", "pw-d");
    let changed = ureq::put(&format!("{base}/v1/users/dave/password"))
        .set("Content-Type", "application/json")
        .send_string(r#"{"password": "pw-d2"}"#)
        .expect("PUT answers");
    assert_eq!(changed.status(), 204);
    // In force when the answer came: the old password is refused at once.
    assert_eq!(login_answer(&server, "dave", "pw-d"), ["login_invalid"]);
    assert_invalidated(&mut dave, CHANGE_DELIVERED);
    dave.login("dave", "pw-d2");
    let listed = ureq::get(&format!("{base}/v1/users?after=user9997&limit=2"))
        .call()
        .expect("GET answers")
        .into_string()
        .expect("body");
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
    assert_eq!(listed["users"][0]["name"], "user9998");
    assert_eq!(listed["users"][1]["name"], "user9999");
    assert!(listed["next"].is_null(), "{listed}");
    let removed = ureq::delete(&format!("{base}/v1/users/dave"))
        .call()
        .expect("DELETE answers");
    assert_eq!(removed.status(), 204);
    assert_eq!(login_answer(&server, "dave", "pw-d2"), ["login_invalid"]);
    assert_invalidated(&mut dave, CHANGE_DELIVERED);
}

#[test]
fn a_database_that_stops_answering_delays_a_login_at_most_five_seconds() {
    let Some(postgres) = with_alice_and_bob() else {
        return;
    };
    let server = TestServer::start(&config(&postgres), &[]);
    server.client().login("alice", "pw-a");

    postgres.pause();
    let asked = Instant::now();
    let mut bob = server.client();
    bob.send(&["login", "bob", "pw-b"]);
    // Answered once the lookup gives up (4 s), not when the database comes back; the 3 s
    // over it are for a loaded machine.
    let bound = Duration::from_secs(4 + 3);
    assert_eq!(
        bob.recv_within(bound + Duration::from_secs(3)),
        ["login_invalid"]
    );
    assert!(asked.elapsed() <= bound, "{:?}", asked.elapsed());
    server.wait_for_log("users database unreachable", Duration::from_secs(5));
    // Known from a login in the last minute: answered without the database.
    server.client().login("alice", "pw-a");

    postgres.resume();
    server.wait_for_log("users database reachable again", Duration::from_secs(10));
    server.client().login("bob", "pw-b");
}

#[test]
fn an_unknown_name_costs_what_a_known_one_does_when_rows_have_mixed_costs() {
    // Three rows at cost 4 and one at cost 8, inserted by psql, while the server itself
    // hashes at 12: before the fix an unknown name was checked at 12, sixteen times slower
    // than any known user, so a failed login told whether the name exists.
    let Some(postgres) = Postgres::start() else {
        return;
    };
    db_init(&postgres);
    let cheap = bcrypt::hash("pw", 4).expect("hash");
    let dear = bcrypt::hash("pw", 8).expect("hash");
    for (name, hash) in [
        ("cheap1", &cheap),
        ("cheap2", &cheap),
        ("cheap3", &cheap),
        ("dear", &dear),
    ] {
        postgres.psql(&format!(
            "INSERT INTO tether_users (name, password_hash) VALUES ('{name}', '{hash}')"
        ));
    }
    let server = TestServer::start(
        &config(&postgres)
            .auth("bcrypt_cost", 12)
            .auth("login_failures_per_minute", 0),
        &[],
    );
    // The costs are counted in the background once the node listens; the timings below
    // tell whether they are used (without the count, every unknown name costs 12).
    wait_until(Duration::from_secs(10), || {
        server.stderr_text().contains("bcrypt costs of the rows")
    });
    let mut client = server.client();
    let mut names = vec!["cheap1".to_string(), "dear".to_string()];
    names.extend((0..12).map(|n| format!("nobody{n}")));
    let medians = median_failed_logins(&mut client, &names, 5);
    let (known_cheap, known_dear) = (medians[0], medians[1]);
    let unknown = &medians[2..];
    let slowest = unknown.iter().max().copied().unwrap_or_default();
    let fastest = unknown.iter().min().copied().unwrap_or_default();
    eprintln!(
        "login_invalid medians: known cost 4 {known_cheap:?}, known cost 8 {known_dear:?}; \
         unknown names {unknown:?}"
    );
    // Each unknown name behaves like a known user of cost 4 or 8, never like cost 12
    // (sixteen times cost 8).
    assert!(
        slowest < known_dear * 4,
        "an unknown name took {slowest:?}, a known user at most {known_dear:?}"
    );
    // Most rows have cost 4, so most unknown names answer as fast as they do (all twelve
    // drawing cost 8 has odds of 1 in 16 million).
    assert!(
        fastest < known_dear / 2,
        "no unknown name answered like the users of cost 4 ({known_cheap:?}): {unknown:?}"
    );
    let log = server.stderr_text();
    assert!(
        log.contains("bcrypt costs of the rows: 4 (3 row(s)), 8 (1 row(s))"),
        "{log}"
    );
}

#[test]
fn a_slow_scan_of_the_whole_table_delays_no_login() {
    // The background scans read every row; here one row's hash takes 10 s to compute, so
    // they take 10 s, as on a large table. Before the fix the scan for bad rows ran on the
    // connection that lookups and pings share: they queued behind it, logins waited, and
    // the ping's 3 s timeout made the node give the database up.
    let Some(postgres) = Postgres::start() else {
        return;
    };
    postgres.psql(
        "CREATE TABLE accounts (name text PRIMARY KEY, password_hash text NOT NULL); \
         CREATE FUNCTION slowly(hash text) RETURNS text LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(10); RETURN hash; END $$; \
         CREATE VIEW tether_users AS SELECT name, CASE WHEN name = 'slow' \
             THEN slowly(password_hash) ELSE password_hash END AS password_hash FROM accounts; \
         GRANT SELECT ON tether_users TO tether",
    );
    for (name, hash) in [
        ("alice", cheap_hash("pw-a")),
        ("slow", cheap_hash("pw-s")),
        ("mallory", "not a bcrypt hash".to_string()),
    ] {
        postgres.psql(&format!("INSERT INTO accounts VALUES ('{name}', '{hash}')"));
    }
    let server = TestServer::start(&config(&postgres), &[]);
    let started = Instant::now();
    // A login behind the scan would wait for most of its 10 s; one beside it, a cheap check
    // and a lookup: 4 s leaves a loaded machine room and still tells the two apart.
    while started.elapsed() < Duration::from_secs(11) {
        let mut alice = server.client();
        alice.send(&["login", "alice", "pw-a"]);
        assert_eq!(
            alice.recv_within(Duration::from_secs(4)),
            ["login_valid"],
            "{:?} after start-up",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The scan did run, and took its 10 s.
    server.wait_for_log("rows no login can use", Duration::from_secs(15));
    let log = server.stderr_text();
    assert!(!log.contains("unreachable"), "{log}");
}

#[test]
fn sighup_checks_the_users_logged_in_here_against_the_table_now() {
    let Some(postgres) = with_alice_and_bob() else {
        return;
    };
    let server = TestServer::start(&config(&postgres), &[]);
    let mut alice = server.client();
    alice.login("alice", "pw-a");
    let mut bob = server.client();
    bob.login("bob", "pw-b");

    // A change no notification tells of (the trigger off, as a restore or a replica's
    // promotion might do): nothing happens until SIGHUP.
    postgres.psql(&format!(
        "ALTER TABLE tether_users DISABLE TRIGGER tether_users_notify; \
         UPDATE tether_users SET password_hash = '{}' WHERE name = 'alice'; \
         ALTER TABLE tether_users ENABLE TRIGGER tether_users_notify",
        cheap_hash("new-a")
    ));
    alice.expect_nothing_for(QUIET);
    server.signal(nix::sys::signal::Signal::SIGHUP);
    assert_invalidated(&mut alice, CHANGE_DELIVERED);
    bob.expect_nothing_for(QUIET);
    server.wait_for_log(
        "SIGHUP received: checked the 2 user(s) known here against table tether_users: 1 \
         changed or gone",
        Duration::from_secs(5),
    );
    server.client().login("alice", "new-a");

    // While the database is unreachable SIGHUP says so and the server runs on; the check
    // is made after the reconnect anyway.
    postgres.stop();
    server.wait_for_log("users database unreachable", Duration::from_secs(5));
    server.signal(nix::sys::signal::Signal::SIGHUP);
    server.wait_for_log(
        "SIGHUP received: the users database is unreachable",
        Duration::from_secs(5),
    );
    postgres.start_again();
    server.wait_for_log("users database reachable again", Duration::from_secs(10));
    bob.expect_nothing_for(QUIET);
    server.client().login("bob", "pw-b");
    let log = server.stderr_text();
    assert_eq!(log.matches("SIGHUP received").count(), 2, "{log}");
}

/// docs/operating.md's example: an application's `accounts` table, the view tether reads, and
/// the trigger on the real table notifying the view's name.
const APPLICATION_VIEW: &str = "
CREATE TABLE accounts (
    id serial PRIMARY KEY,
    login text UNIQUE NOT NULL,
    bcrypt_hash text,
    active boolean NOT NULL DEFAULT true
);
CREATE VIEW tether_users AS
    SELECT login AS name, bcrypt_hash AS password_hash FROM accounts WHERE active;
CREATE OR REPLACE FUNCTION tether_users_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND octet_length(OLD.login) <= 128 THEN
        PERFORM pg_notify('tether_users', OLD.login);
    END IF;
    IF TG_OP <> 'DELETE' AND octet_length(NEW.login) <= 128 THEN
        PERFORM pg_notify('tether_users', NEW.login);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tether_users_notify AFTER INSERT OR UPDATE OR DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION tether_users_notify();
GRANT SELECT, INSERT, UPDATE, DELETE ON tether_users TO tether;
GRANT USAGE ON SEQUENCE accounts_id_seq TO tether;
";

#[test]
fn the_commands_and_admin_routes_write_through_a_view_of_an_applications_table() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    postgres.psql(APPLICATION_VIEW);
    let accounts = || postgres.psql("SELECT login FROM accounts ORDER BY login");
    let dir = config_file(&config(&postgres));
    let server = TestServer::start(
        &config(&postgres).set("admin", "listen", "127.0.0.1:0"),
        &[],
    );
    server.wait_for_log("(admin API)", Duration::from_secs(10));

    // passwd creates the row, then changes it; deluser removes it.
    for password in ["pw-c", "pw-c2"] {
        let mut passwd = tether_command(&dir.path().join("server.toml"));
        passwd.args(["passwd", "carol"]);
        let ran = run_with_input(passwd, format!("{password}\n").as_bytes(), COMMAND_TIMEOUT);
        assert!(ran.status.success(), "{ran:?}");
    }
    assert_eq!(accounts().trim(), "carol");
    let mut carol = server.client();
    carol.login("carol", "pw-c2");
    let ran = tether(dir.path(), &["deluser", "carol"]);
    assert!(ran.status.success(), "{ran:?}");
    assert_invalidated(&mut carol, CHANGE_DELIVERED);
    assert_eq!(accounts().trim(), "");

    // db import inserts, then updates.
    let file = dir.path().join("old-users.toml");
    let hash = cheap_hash("imported");
    std::fs::write(
        &file,
        format!(
            "[users.erin]\npassword_hash = \"{hash}\"\n[users.frank]\npassword_hash = \"{hash}\"\n"
        ),
    )
    .expect("write users file");
    let file = file.to_str().expect("UTF-8 path");
    let ran = tether(dir.path(), &["db", "import", file]);
    assert!(ran.stdout.contains("2 inserted, 0 updated"), "{ran:?}");
    let ran = tether(dir.path(), &["db", "import", file]);
    assert!(ran.stdout.contains("0 inserted, 2 updated"), "{ran:?}");
    server.client().login("frank", "imported");

    // The admin routes: 201 then 204, in force when the answer comes.
    let base = format!("http://{}", admin_addr(&server.stderr_text()));
    let put = |password: &str| {
        ureq::put(&format!("{base}/v1/users/dave/password"))
            .set("Content-Type", "application/json")
            .send_string(&format!(r#"{{"password": "{password}"}}"#))
            .expect("PUT answers")
            .status()
    };
    assert_eq!(put("pw-d"), 201);
    let mut dave = server.client();
    dave.login("dave", "pw-d");
    assert_eq!(put("pw-d2"), 204);
    // In force when the answer came: the old password is refused at once.
    assert_eq!(login_answer(&server, "dave", "pw-d"), ["login_invalid"]);
    assert_invalidated(&mut dave, CHANGE_DELIVERED);
    dave.login("dave", "pw-d2");
    let removed = ureq::delete(&format!("{base}/v1/users/dave"))
        .call()
        .expect("DELETE answers");
    assert_eq!(removed.status(), 204);
    assert_eq!(login_answer(&server, "dave", "pw-d2"), ["login_invalid"]);
    assert_invalidated(&mut dave, CHANGE_DELIVERED);
    assert_eq!(
        accounts().split_whitespace().collect::<Vec<_>>(),
        ["erin", "frank"]
    );

    // The application deactivating an account reaches the connections too.
    let mut erin = server.client();
    erin.login("erin", "imported");
    postgres.psql("UPDATE accounts SET active = false WHERE login = 'erin'");
    assert_invalidated(&mut erin, CHANGE_DELIVERED);
    assert_eq!(login_answer(&server, "erin", "imported"), ["login_invalid"]);
}

#[test]
fn with_a_ca_file_the_database_connections_are_tls_checked_against_it() {
    use crate::common::tls::{make_ca, make_signed, openssl_available};
    if !openssl_available() {
        return;
    }
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let certs = tempfile::tempdir().expect("temp dir");
    let ca = make_ca(certs.path(), "db");
    make_signed(certs.path(), "db", "server");
    postgres.enable_tls(
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
    );
    let tls_config = |ca: &Path| {
        config(&postgres)
            .auth("database", format!("{}?sslmode=require", postgres.url()))
            .auth("database_ca_file", ca.to_str().expect("UTF-8 path"))
    };

    // db init, logins, a change reaching the connection: every connection is TLS.
    let dir = config_file(&tls_config(&ca));
    let ran = tether(dir.path(), &["db", "init"]);
    assert!(ran.status.success(), "{ran:?}");
    insert(&postgres, "alice", "pw-a");
    let server = TestServer::start(&tls_config(&ca), &[]);
    let mut alice = server.client();
    alice.login("alice", "pw-a");
    let connections = postgres.psql(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.usename = 'tether'",
    );
    let connections: Vec<&str> = connections.split_whitespace().collect();
    assert!(!connections.is_empty(), "no connection of tether");
    assert!(connections.iter().all(|ssl| *ssl == "t"), "{connections:?}");
    postgres.psql(&format!(
        "UPDATE tether_users SET password_hash = '{}' WHERE name = 'alice'",
        cheap_hash("new-a")
    ));
    assert_invalidated(&mut alice, CHANGE_DELIVERED);
    server.client().login("alice", "new-a");

    // A server certificate the CA file did not sign: no connection, exit 1 saying why.
    let stranger = make_ca(certs.path(), "stranger");
    let dir = config_file(&tls_config(&stranger));
    let mut command = tether_command(&dir.path().join("server.toml"));
    command.current_dir(dir.path());
    let refused = run_to_exit(command, COMMAND_TIMEOUT);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("cannot reach the users database")
            && refused.stderr.contains("certificate"),
        "{}",
        refused.stderr
    );
    // Said as a sentence, by the server and by `tether db init` alike (issue 23).
    let by_command = tether(dir.path(), &["db", "init"]);
    assert_eq!(by_command.status.code(), Some(1), "{by_command:?}");
    for said in [&refused.stderr, &by_command.stderr] {
        assert!(
            said.contains("not signed by a CA of auth.database_ca_file"),
            "{said}"
        );
        assert!(!said.contains("UnknownIssuer"), "{said}");
    }

    // sslmode=require without a CA file is a configuration error.
    let dir = config_file(
        &config(&postgres).auth("database", format!("{}?sslmode=require", postgres.url())),
    );
    let ran = tether(dir.path(), &["check-config"]);
    assert_eq!(ran.status.code(), Some(2), "{ran:?}");
    assert!(ran.stderr.contains("auth.database_ca_file"), "{ran:?}");
}

#[test]
fn a_burst_of_notifications_for_names_nobody_holds_delays_no_login_nor_a_real_change() {
    // A bulk load with the trigger on: one transaction inserts 100,000 rows (a NOTIFY
    // each, all delivered at its commit) and changes the hash of alice, who is logged in.
    // Before the fix the node sent the bus one invalidation per name it did not know, in
    // order, and logins waited; alice's came after all of them.
    // The server reads the 100,000 notifications in well under a second, but this is a
    // debug build on a shared machine: alice's comes last, so it gets a few seconds. At a
    // load of 19 on 2 cores the reading alone took 2.5–3 s: 5 s is the floor.
    const CHANGE_BOUND: Duration = Duration::from_secs(5);
    let Some(postgres) = with_alice_and_bob() else {
        return;
    };
    let server = TestServer::start(&config(&postgres), &[]);
    let mut alice = server.client();
    alice.login("alice", "pw-a");
    // Alice's invalidation is awaited as it comes (looking for it between logins would
    // see it up to a login later), the hang guard past the loop's.
    let watcher = std::thread::spawn(move || {
        let got = alice.try_recv(Duration::from_secs(120));
        (got, Instant::now(), alice)
    });
    let postgres = std::sync::Arc::new(postgres);
    let mut loading = Some({
        let postgres = std::sync::Arc::clone(&postgres);
        let (bulk_hash, alice_hash) = (cheap_hash("pw-bulk"), cheap_hash("new-a"));
        std::thread::spawn(move || {
            postgres.psql(&format!(
                "INSERT INTO tether_users (name, password_hash) \
                     SELECT 'bulk' || i, '{bulk_hash}' FROM generate_series(1, 100000) i; \
                 UPDATE tether_users SET password_hash = '{alice_hash}' WHERE name = 'alice'"
            ));
            Instant::now()
        })
    });
    let mut committed = None;
    // The slowest login while the rows are inserted, and after their commit.
    let mut slowest = [Duration::ZERO; 2];
    let mut logins = 0;
    // Logins go on while the rows are inserted and for a while after their commit (until
    // alice's change came, on a slow machine: a hang guard of 60 s).
    while committed.is_none_or(|at: Instant| {
        at.elapsed() < CHANGE_BOUND
            || (!watcher.is_finished() && at.elapsed() < Duration::from_secs(60))
    }) {
        let started = Instant::now();
        assert_eq!(
            login_answer_within(&server, "bob", "pw-b", Duration::from_secs(10)),
            ["login_valid"],
            "login {logins}"
        );
        let phase = usize::from(committed.is_some());
        slowest[phase] = slowest[phase].max(started.elapsed());
        logins += 1;
        if let Some(load) = loading.take_if(|load| load.is_finished()) {
            committed = Some(load.join().expect("the load"));
        }
    }
    let committed = committed.expect("committed");
    // The notifications all arrive at the commit: logins after it must not wait for them.
    // Before the fix they waited over a second. The logins during the insert ran on the
    // same loaded machine without the notifications: a slow moment of the machine slows
    // both phases, so what the logins after the commit may take is measured against them.
    // After the commit the server also reads the 100,000 notifications, on a thread at
    // the event loops' priority: on a loaded 2-core machine that work takes seconds and
    // starves bob's nice-10 check beside it (not queued behind it): 2.5 times the slowest
    // login of the insert was seen at load 16, so 4 times is allowed.
    let allowed = Duration::from_secs(1).max(slowest[0] * 4);
    assert!(
        slowest[1] < allowed,
        "a login after the commit took {:?} (slowest during the insert {:?})",
        slowest[1],
        slowest[0]
    );
    let (got, invalidated, mut alice) = watcher.join().expect("alice's watcher");
    match got {
        Ok(message) => assert_eq!(message, ["invalidated"]),
        Err(why) => {
            panic!("alice was not invalidated ({why:?}; {logins} logins, slowest {slowest:?})")
        }
    }
    // Before the fix alice's change waited for the whole flood. A loaded machine slows
    // alice's change as it slows the logins during the insert: the bound grows with them.
    let change_bound = CHANGE_BOUND.max(slowest[0] * 5);
    eprintln!(
        "{logins} logins, slowest {slowest:?}; alice invalidated {:?} after the commit",
        invalidated.saturating_duration_since(committed)
    );
    assert!(
        invalidated.saturating_duration_since(committed) < change_bound,
        "alice invalidated {:?} after the commit (bound {change_bound:?})",
        invalidated.saturating_duration_since(committed)
    );
    alice.expect_nothing_for(QUIET);
    server.client().login("alice", "new-a");
    server.client().login("bulk99999", "pw-bulk");
}

fn login_answer_within(
    server: &TestServer,
    name: &str,
    password: &str,
    within: Duration,
) -> Vec<String> {
    let mut client = server.client();
    client.send(&["login", name, password]);
    client.recv_within(within)
}

/// Rows of the listing test: the issue's 1,000,000 (a full scan and sort of them took
/// ~70 ms a page), inserted by one `generate_series` in a few seconds.
const LISTED_ROWS: u32 = 1_000_000;
/// Admin clients paging through the users at once.
const LISTERS: usize = 40;

#[test]
fn admin_listings_of_a_large_table_do_not_make_the_database_unreachable_for_logins() {
    // Issue 23: 40 concurrent `GET /v1/users` pages over 1,000,000 rows, each a full scan
    // and sort (no index served the bytewise order), shared the lookups' connection with
    // its 1 s liveness ping; the ping timed out, the store was declared unreachable and
    // right-password logins got login_invalid.
    let Some(postgres) = with_alice_and_bob() else {
        return;
    };
    let hash = cheap_hash("pw-x");
    // Without the trigger (replica role): a million notifications are another test's
    // business.
    postgres.psql(&format!(
        "SET session_replication_role = replica; \
         INSERT INTO tether_users (name, password_hash) \
         SELECT 'user' || lpad(i::text, 7, '0'), '{hash}' FROM generate_series(1, {LISTED_ROWS}) i; \
         ANALYZE tether_users"
    ));
    // `db init` made the index that serves a page in the order it is listed.
    let plan = postgres.psql(
        "EXPLAIN SELECT name::text FROM tether_users WHERE name::text COLLATE \"C\" > \
         'user0500000' ORDER BY name::text COLLATE \"C\" LIMIT 1000",
    );
    eprintln!("{plan}");
    assert!(plan.contains("tether_users_name_bytewise"), "{plan}");
    let config = config(&postgres).set("admin", "listen", "127.0.0.1:0");
    let server = TestServer::start(&config, &[]);
    server.wait_for_log("(admin API)", Duration::from_secs(10));
    let admin = admin_addr(&server.stderr_text());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listers: Vec<_> = (0..LISTERS)
        .map(|index| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut pages = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Pages from all over the table, as operators paging at once.
                    let after = format!("user{:07}", (index * 24_989 + pages * 7) % 999_000);
                    let answer =
                        ureq::get(&format!("http://{admin}/v1/users?after={after}&limit=1000"))
                            .timeout(Duration::from_secs(30))
                            .call();
                    if let Ok(answer) = answer {
                        assert_eq!(answer.status(), 200);
                    }
                    pages += 1;
                }
                pages
            })
        })
        .collect();
    let started = Instant::now();
    let mut refused = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        let answer = login_answer_within(&server, "alice", "pw-a", Duration::from_secs(10));
        if answer != ["login_valid"] {
            refused.push((started.elapsed(), answer));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let pages: usize = listers
        .into_iter()
        .map(|lister| lister.join().expect("lister"))
        .sum();
    eprintln!("{pages} pages of 1000 listed by {LISTERS} clients in 10 s");
    let log = server.stderr_text();
    assert!(
        refused.is_empty(),
        "right-password logins refused during the listings: {refused:?}\n{log}"
    );
    assert!(!log.contains("unreachable"), "{log}");
    assert!(pages > 0, "no page was listed");
}
