//! The users file as a careless operator and a busy cluster treat it (issue 11, items 3,
//! 4, 7 and 8), against the real binary: one change is one reload and an idle server stays
//! idle; a file caught truncated or half-written logs nobody out; a file behind symlinks
//! (a Kubernetes ConfigMap, a plain link) or in a folder that is swapped stays watched, and
//! writes land on the link's target; SIGHUP and SIGTERM during start-up are a reload and
//! an orderly stop.

use crate::common::hardening::cpu_ticks;
use crate::common::{
    admin_addr, cheap_hash, metric_in, tether_command, users_toml, wait_until, TestClient,
    TestConfig, TestServer,
};
use nix::sys::signal::Signal;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How soon a settled change must be in force (the watcher waits twice 250 ms).
const APPLIED_WITHIN: Duration = Duration::from_secs(2);
/// How long to watch for reloads or messages that must not come: longer than several
/// settle periods of the watcher and than its one-second re-check of the folders.
const SETTLED: Duration = Duration::from_millis(2500);
/// How long the server may take to log something it is expected to log.
const LOG_WITHIN: Duration = Duration::from_secs(5);
/// How long to wait for a lost watch to be noticed (re-checked every second).
const REWATCHED_WITHIN: Duration = Duration::from_secs(4);

/// The test configuration: cheap hashes, the admin API on (for `/metrics` and writes).
fn config() -> TestConfig {
    TestConfig::new()
        .auth("bcrypt_cost", 4)
        .set("admin", "listen", "127.0.0.1:0")
}

/// A server on `config()` and `users` (name, hash) in `users.toml` beside its config,
/// once its watcher runs.
fn watched_server(users: &[(&str, &str)]) -> TestServer {
    let server = TestServer::start_with_hashes(&config(), users);
    server.wait_for_log("watching it for changes", LOG_WITHIN);
    server.wait_for_log("(admin API)", LOG_WITHIN);
    server
}

/// A server on `config()` whose `auth.users_file` is `users_file` (relative to its
/// folder), after `prepare` has laid out that folder.
fn server_with_layout(users_file: &str, prepare: impl FnOnce(&Path)) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config().auth("users_file", users_file);
    std::fs::write(dir.path().join("server.toml"), config.to_toml()).expect("config");
    prepare(dir.path());
    let cwd = dir.path().to_owned();
    let server = TestServer::start_in(dir, &cwd);
    server.wait_for_log("watching it for changes", LOG_WITHIN);
    server.wait_for_log("(admin API)", LOG_WITHIN);
    server
}

/// The admin API's base URL, from the server's log.
fn admin_base(server: &TestServer) -> String {
    format!("http://{}", admin_addr(&server.stderr_text()))
}

/// `PUT /v1/users/NAME/password`; answers the status.
fn admin_set_password(server: &TestServer, name: &str, password: &str) -> u16 {
    let url = format!("{}/v1/users/{name}/password", admin_base(server));
    match ureq::put(&url)
        .set("Content-Type", "application/json")
        .send_string(&format!("{{\"password\":\"{password}\"}}"))
    {
        Ok(response) => response.status(),
        Err(ureq::Error::Status(status, _)) => status,
        Err(error) => panic!("PUT {url}: {error}"),
    }
}

/// `tether_users_reloads_total{result=RESULT}` from `/metrics`.
fn reloads(server: &TestServer, result: &str) -> u64 {
    let url = format!("{}/metrics", admin_base(server));
    let text = ureq::get(&url)
        .call()
        .expect("GET /metrics")
        .into_string()
        .expect("metrics text");
    let series = format!("tether_users_reloads_total{{result=\"{result}\"}}");
    let count =
        metric_in(&text, &series).unwrap_or_else(|| panic!("no {series:?} in /metrics:\n{text}"));
    count as u64
}

/// Rewrites the file at `path` in place (truncate, write).
fn write_in_place(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the users file in place");
}

/// How many times the server has logged `needle` so far.
fn logged_times(server: &TestServer, needle: &str) -> usize {
    server.stderr_text().matches(needle).count()
}

// ---------------------------------------------------------------------------------------
// Item 3: one change, one reload
// ---------------------------------------------------------------------------------------

/// An admin PUT writes and applies the file itself: the watcher, seeing the bytes it
/// applied, adds no reload — and the server then stays idle.
#[test]
fn one_admin_put_is_one_reload_and_the_server_then_idles() {
    let server = watched_server(&[("alice", &cheap_hash("a1"))]);
    assert_eq!(admin_set_password(&server, "carol", "c1"), 201);
    std::thread::sleep(SETTLED);
    assert_eq!(reloads(&server, "applied"), 1);

    let pid = server.pid().as_raw();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - before;
    assert!(used <= 10, "{used} ticks of CPU in 2 s at rest");
    assert_eq!(reloads(&server, "applied"), 1);
    assert_eq!(server.login_reply("carol", "c1"), "login_valid");
}

/// One edit is one reload, touching the file none, and a burst of 50 edits one or a few,
/// ending with the last edit in force.
#[test]
fn one_edit_is_one_reload_and_a_burst_of_fifty_a_few() {
    let server = watched_server(&[("alice", &cheap_hash("a0"))]);
    let path = server.users_path();

    write_in_place(&path, &users_toml(&[("alice", &cheap_hash("a1"))]));
    let changed_at = Instant::now();
    server.wait_for_log("changed: \"alice\"", LOG_WITHIN);
    assert!(
        changed_at.elapsed() < APPLIED_WITHIN,
        "{:?}",
        changed_at.elapsed()
    );
    std::thread::sleep(SETTLED);
    assert_eq!(reloads(&server, "applied"), 1);

    let file = std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open the users file");
    file.set_modified(std::time::SystemTime::now())
        .expect("touch the users file");
    drop(file);
    std::thread::sleep(SETTLED);
    assert_eq!(reloads(&server, "applied"), 1, "a touch reloaded the file");

    let hashes: Vec<String> = (0..50).map(|i| cheap_hash(&format!("b{i}"))).collect();
    // A pause between two edits longer than the watcher's quiet period (250 ms) ends one
    // burst and starts another: a loaded machine may stall this loop that long. Counted,
    // each such stall allows one more reload.
    let mut stalls = 0;
    let mut last_edit: Option<Instant> = None;
    for hash in &hashes {
        write_in_place(&path, &users_toml(&[("alice", hash)]));
        if last_edit.is_some_and(|at| at.elapsed() >= Duration::from_millis(250)) {
            stalls += 1;
        }
        last_edit = Some(Instant::now());
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(SETTLED);
    let after_burst = reloads(&server, "applied");
    // One reload per edit would be 50; a burst is one, or a few where an edit lands while
    // the previous reload is read.
    assert!(
        (2..=4 + stalls).contains(&after_burst),
        "{} reloads for a burst of 50 edits ({stalls} pause(s) over 250 ms between edits)",
        after_burst - 1
    );
    assert_eq!(server.login_reply("alice", "b49"), "login_valid");
    std::thread::sleep(SETTLED);
    assert_eq!(reloads(&server, "applied"), after_burst);
}

/// An invalid file is reported once, not once per re-read.
#[test]
fn an_invalid_file_is_reported_once_per_change() {
    let server = watched_server(&[("alice", &cheap_hash("a1"))]);
    let path = server.users_path();
    write_in_place(&path, "[users.alice]\npassword_hash = \"unterminated\n");
    server.wait_for_log("users file refused", LOG_WITHIN);
    std::thread::sleep(SETTLED);
    assert_eq!(logged_times(&server, "users file refused"), 1);
    assert_eq!(reloads(&server, "refused"), 1);

    write_in_place(
        &path,
        "[users.alice]\npassword_hash = \"still unterminated\n",
    );
    std::thread::sleep(SETTLED);
    assert_eq!(logged_times(&server, "users file refused"), 2);
    assert_eq!(reloads(&server, "applied"), 0);
    assert_eq!(server.login_reply("alice", "a1"), "login_valid");
}

// ---------------------------------------------------------------------------------------
// Item 4: a file caught mid-write logs nobody out
// ---------------------------------------------------------------------------------------

/// `: > users.toml; sleep; cat good > users.toml`: the blank file is set aside with a
/// warning, whatever the pause, and the same users come back without anyone logged out.
#[test]
fn truncating_then_rewriting_the_file_logs_nobody_out() {
    let users = [("alice", cheap_hash("a1")), ("bob", cheap_hash("b1"))];
    let pairs: Vec<(&str, &str)> = users.iter().map(|(n, h)| (*n, h.as_str())).collect();
    let server = watched_server(&pairs);
    let path = server.users_path();
    let mut alice = server.logged_in("alice", "a1");
    let mut bob = server.logged_in("bob", "b1");

    for pause in [Duration::from_millis(50), Duration::from_millis(1000)] {
        std::fs::File::create(&path).expect("truncate the users file");
        std::thread::sleep(pause);
        write_in_place(&path, &users_toml(&pairs));
        crate::common::expect_all_silent(&mut [&mut alice, &mut bob], SETTLED);
    }
    assert!(server
        .stderr_text()
        .contains("it is empty; the 2 user(s) in force stay"));
    assert_eq!(server.login_reply("bob", "b1"), "login_valid");
}

/// Only SIGHUP applies a blank file over users in force, with a warning.
#[test]
fn sighup_applies_an_empty_file() {
    let server = watched_server(&[("alice", &cheap_hash("a1"))]);
    let mut alice = server.logged_in("alice", "a1");
    std::fs::File::create(server.users_path()).expect("truncate the users file");
    server.wait_for_log("send SIGHUP to apply it", LOG_WITHIN);
    alice.expect_nothing_for(Duration::from_millis(500));

    server.signal(Signal::SIGHUP);
    assert_eq!(alice.recv_within(APPLIED_WITHIN), ["invalidated"]);
    server.wait_for_log("applying it as asked removes all 1 user(s)", LOG_WITHIN);
}

/// Slow in-place rewrites (half, a pause, the rest) and 300 fast rewrites of the same
/// content: nobody is logged out, nothing is reloaded; a real change still applies.
#[test]
fn half_written_and_rewritten_files_log_nobody_out() {
    let names: Vec<String> = (0..20).map(|i| format!("user-{i:02}")).collect();
    let hash = cheap_hash("pw");
    let pairs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), hash.as_str())).collect();
    let server = watched_server(&pairs);
    let path = server.users_path();
    let mut clients: Vec<TestClient> = names
        .iter()
        .map(|name| server.logged_in(name, "pw"))
        .collect();
    let text = users_toml(&pairs);

    for _ in 0..5 {
        let mut file = std::fs::File::create(&path).expect("open in place");
        let (first, rest) = text.split_at(text.len() / 2);
        file.write_all(first.as_bytes()).expect("write half");
        file.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(100));
        file.write_all(rest.as_bytes()).expect("write the rest");
    }
    for _ in 0..300 {
        write_in_place(&path, &text);
    }
    let mut all: Vec<&mut TestClient> = clients.iter_mut().collect();
    crate::common::expect_all_silent(&mut all, SETTLED);
    assert_eq!(reloads(&server, "applied"), 0);
    assert_eq!(reloads(&server, "refused"), 0);

    let changed = users_toml(&pairs[1..]);
    write_in_place(&path, &changed);
    assert_eq!(clients[0].recv_within(APPLIED_WITHIN), ["invalidated"]);
}

// ---------------------------------------------------------------------------------------
// Item 7: symlinks and folder swaps
// ---------------------------------------------------------------------------------------

/// Makes `root/NAME/users.toml` holding `users` and points `root/..data` at it by renaming
/// a new symlink over the old one, as the kubelet updates a ConfigMap volume.
fn configmap_version(root: &Path, name: &str, users: &[(&str, &str)]) {
    let folder = root.join(name);
    std::fs::create_dir(&folder).expect("version folder");
    std::fs::write(folder.join("users.toml"), users_toml(users)).expect("users");
    symlink(name, root.join("..data_tmp")).expect("new ..data symlink");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap ..data");
}

#[test]
fn a_configmap_layout_is_followed_through_its_swaps() {
    let (alice, bob) = (cheap_hash("a1"), cheap_hash("b1"));
    let server = server_with_layout("cfg/users.toml", |dir| {
        let root = dir.join("cfg");
        std::fs::create_dir(&root).expect("cfg");
        configmap_version(&root, "..2026_01", &[("alice", &alice), ("bob", &bob)]);
        symlink("..data/users.toml", root.join("users.toml")).expect("users.toml symlink");
    });
    let root = server.dir().join("cfg");
    let mut alice_1 = server.logged_in("alice", "a1");
    let mut bob_1 = server.logged_in("bob", "b1");

    configmap_version(&root, "..2026_02", &[("alice", &alice)]);
    std::fs::remove_dir_all(root.join("..2026_01")).expect("remove the old version");
    assert_eq!(bob_1.recv_within(APPLIED_WITHIN), ["invalidated"]);
    alice_1.expect_nothing_for(Duration::from_millis(300));
    assert_eq!(server.login_reply("bob", "b1"), "login_invalid");

    // The watch followed: the next swap is seen too.
    let carol = cheap_hash("c1");
    configmap_version(&root, "..2026_03", &[("carol", &carol)]);
    std::fs::remove_dir_all(root.join("..2026_02")).expect("remove the old version");
    assert_eq!(alice_1.recv_within(APPLIED_WITHIN), ["invalidated"]);
    assert_eq!(server.login_reply("carol", "c1"), "login_valid");
}

#[test]
fn a_symlinked_file_is_watched_and_written_through() {
    let (alice, bob) = (cheap_hash("a1"), cheap_hash("b1"));
    let server = server_with_layout("users.toml", |dir| {
        std::fs::create_dir(dir.join("elsewhere")).expect("elsewhere");
        let target = dir.join("elsewhere/real.toml");
        std::fs::write(&target, users_toml(&[("alice", &alice), ("bob", &bob)])).expect("users");
        symlink("elsewhere/real.toml", dir.join("users.toml")).expect("symlink");
    });
    let link = server.dir().join("users.toml");
    let target = server.dir().join("elsewhere/real.toml");
    let mut bob_1 = server.logged_in("bob", "b1");

    // The target edited in place.
    write_in_place(&target, &users_toml(&[("alice", &alice)]));
    assert_eq!(bob_1.recv_within(APPLIED_WITHIN), ["invalidated"]);

    // The admin API and `tether passwd` write through the symlink.
    assert_eq!(admin_set_password(&server, "carol", "c1"), 201);
    let mut passwd = tether_command(&server.config_path());
    passwd.args(["passwd", "dave"]);
    let ran = crate::common::run_with_input(passwd, b"d1\n", Duration::from_secs(20));
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    assert!(std::fs::symlink_metadata(&link)
        .expect("the link")
        .is_symlink());
    let text = std::fs::read_to_string(&target).expect("the target");
    assert!(
        text.contains("[users.carol]") && text.contains("[users.dave]"),
        "{text}"
    );
    server.wait_for_log("added: \"dave\"", LOG_WITHIN);
    assert_eq!(server.login_reply("dave", "d1"), "login_valid");
    assert!(server.dir().join("elsewhere/real.toml.lock").exists());
}

/// The users file's folder renamed away and made again: the lost watch is noticed, logged
/// and re-established, and the file in the new folder is applied.
#[test]
fn a_swapped_folder_is_watched_again() {
    let (alice, bob) = (cheap_hash("a1"), cheap_hash("b1"));
    let server = server_with_layout("conf/users.toml", |dir| {
        std::fs::create_dir(dir.join("conf")).expect("conf");
        std::fs::write(
            dir.join("conf/users.toml"),
            users_toml(&[("alice", &alice), ("bob", &bob)]),
        )
        .expect("users");
    });
    let conf = server.dir().join("conf");
    let mut alice_1 = server.logged_in("alice", "a1");
    let mut bob_1 = server.logged_in("bob", "b1");

    std::fs::rename(&conf, server.dir().join("conf.old")).expect("rename the folder away");
    std::fs::create_dir(&conf).expect("make it again");
    std::fs::write(conf.join("users.toml"), users_toml(&[("alice", &alice)])).expect("users");
    assert_eq!(bob_1.recv_within(REWATCHED_WITHIN), ["invalidated"]);
    server.wait_for_log("its watch is lost", LOG_WITHIN);

    // Watched again: an edit in the new folder is applied, one in the old one is not.
    write_in_place(&server.dir().join("conf.old/users.toml"), &users_toml(&[]));
    alice_1.expect_nothing_for(SETTLED);
    write_in_place(&conf.join("users.toml"), &users_toml(&[("bob", &bob)]));
    assert_eq!(alice_1.recv_within(APPLIED_WITHIN), ["invalidated"]);
    assert_eq!(server.login_reply("bob", "b1"), "login_valid");
}

// ---------------------------------------------------------------------------------------
// Item 8: signals during start-up
// ---------------------------------------------------------------------------------------

/// A server process held in the middle of its start-up, with its log collected: its users
/// file is a named pipe, so the first read of it waits until the test writes the users. The
/// signal handlers are in place by then; the listeners are not bound yet.
struct PausedStart {
    child: Child,
    log: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
    /// The pipe's writing end, open once the server is reading it.
    gate: Option<File>,
}

impl PausedStart {
    /// Starts a server and returns once it is reading its users file.
    fn spawn() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = TestConfig::new().auth("bcrypt_cost", 4);
        std::fs::write(dir.path().join("server.toml"), config.to_toml()).expect("config");
        let pipe = dir.path().join("users.toml");
        let made = Command::new("mkfifo").arg(&pipe).status().expect("mkfifo");
        assert!(made.success(), "mkfifo {}: {made}", pipe.display());
        let mut child = tether_command(&dir.path().join("server.toml"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tether");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut text = sink.lock().expect("log lock");
                text.push_str(&line);
                text.push('\n');
            }
        });
        // Opening a pipe for writing waits for its reader: the server reading its users.
        let (opened_tx, opened) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = opened_tx.send(OpenOptions::new().write(true).open(&pipe));
        });
        let gate = opened
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the server never read its users file"))
            .expect("open the pipe for writing");
        Self {
            child,
            log,
            dir,
            gate: Some(gate),
        }
    }

    fn text(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    fn wait_for_log(&self, needle: &str) {
        assert!(
            wait_until(Duration::from_secs(30), || self.text().contains(needle)),
            "no {needle:?} in:\n{}",
            self.text()
        );
    }

    fn signal(&self, signal: Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, signal).expect("send signal");
    }

    /// Lets the start-up go on: the server reads `loaded` as its users, and the file it
    /// finds on the path from then on (a regular one) holds `on_disk`.
    fn release(&mut self, loaded: &str, on_disk: &str) {
        assert!(
            !self.text().contains("listening on"),
            "start-up was not held:\n{}",
            self.text()
        );
        let path = self.users_path();
        let replacement = self.dir.path().join("users.toml.new");
        std::fs::write(&replacement, on_disk).expect("write the users file");
        // The server holds the pipe open: the rename does not disturb its read.
        std::fs::rename(&replacement, &path).expect("replace the pipe");
        let mut gate = self.gate.take().expect("not released yet");
        gate.write_all(loaded.as_bytes()).expect("write the users");
    }

    fn users_path(&self) -> PathBuf {
        self.dir.path().join("users.toml")
    }
}

impl Drop for PausedStart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigterm_during_start_up_is_an_orderly_stop() {
    let mut server = PausedStart::spawn();
    server.signal(Signal::SIGTERM);
    let users = users_toml(&[("alice", &cheap_hash("a1"))]);
    server.release(&users, &users);
    let mut status = None;
    let exited = wait_until(Duration::from_secs(30), || {
        status = server.child.try_wait().expect("wait");
        status.is_some()
    });
    assert!(exited, "no exit:\n{}", server.text());
    let status = status.expect("exited");
    assert_eq!(status.code(), Some(0), "{status}; log:\n{}", server.text());
    server.wait_for_log("SIGTERM received");
}

/// SIGHUP during start-up is a reload request, carried out once the server runs.
#[test]
fn sighup_during_start_up_is_a_reload_request() {
    let mut server = PausedStart::spawn();
    server.signal(Signal::SIGHUP);
    let users = users_toml(&[("alice", &cheap_hash("a1"))]);
    server.release(&users, &users);
    server.wait_for_log("listening on");
    server.wait_for_log("SIGHUP received: reloading users file");
    assert!(
        server.child.try_wait().expect("wait").is_none(),
        "{}",
        server.text()
    );
}

/// An edit made after the file was first loaded but before the watcher ran is applied
/// once it runs.
#[test]
fn an_edit_during_start_up_is_applied() {
    let mut server = PausedStart::spawn();
    let alice = users_toml(&[("alice", &cheap_hash("a1"))]);
    let alice_and_bob = users_toml(&[("alice", &cheap_hash("a1")), ("bob", &cheap_hash("b1"))]);
    server.release(&alice, &alice_and_bob);
    server.wait_for_log("added: \"bob\"");
}
