//! Users changed from outside while the server runs (SPEC §5): edits of the users file
//! (watched, or applied on SIGHUP), and the `passwd` / `deluser` commands that write it.

use crate::common::{
    cheap_hash, run_with_input, tether_command, users_toml, Ran, TestClient, TestConfig, TestServer,
};
use nix::sys::signal::Signal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How soon an edit of the users file must reach the connections.
const APPLIED_WITHIN: Duration = Duration::from_secs(2);
/// How long a connection is watched to show that nothing reaches it.
const QUIET: Duration = Duration::from_millis(600);
/// How long a `passwd` / `deluser` run may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server may take to log what it did.
const LOG_WITHIN: Duration = Duration::from_secs(5);

/// The test baseline with cheap bcrypt hashes for what `passwd` writes.
fn config() -> TestConfig {
    TestConfig::new().auth("bcrypt_cost", 4)
}

/// A server on `users` (name, bcrypt hash) whose users file is watched.
fn watched_server(users: &[(&str, &str)]) -> TestServer {
    let server = TestServer::start_with_hashes(&config(), users);
    server.wait_for_log("watching it for changes", LOG_WITHIN);
    server
}

/// Replaces the file at `path` by writing a sibling and renaming it over, as editors and
/// configuration management do.
fn rename_replace(path: &Path, text: &str) {
    let sibling = path.with_file_name(".users.toml.new");
    std::fs::write(&sibling, text).expect("write the new version");
    std::fs::rename(&sibling, path).expect("rename it over the users file");
}

/// Rewrites the file at `path` in place (truncate, write).
fn write_in_place(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the users file in place");
}

fn assert_invalidated(client: &mut TestClient) {
    assert_eq!(client.recv_within(APPLIED_WITHIN), ["invalidated"]);
}

/// A changed hash reaches every connection of that user and no other, and logins follow
/// the new hash.
fn changed_hash_invalidates_only_that_user(edit: fn(&Path, &str)) {
    let (alice_old, alice_new, bob) = (cheap_hash("a1"), cheap_hash("a2"), cheap_hash("b1"));
    let server = watched_server(&[("alice", &alice_old), ("bob", &bob)]);
    let mut alice_1 = server.logged_in("alice", "a1");
    let mut alice_2 = server.logged_in("alice", "a1");
    let mut bob_1 = server.logged_in("bob", "b1");

    edit(
        &server.users_path(),
        &users_toml(&[("alice", &alice_new), ("bob", &bob)]),
    );
    assert_invalidated(&mut alice_1);
    assert_invalidated(&mut alice_2);
    bob_1.expect_nothing_for(QUIET);
    server.wait_for_log("changed: \"alice\"", LOG_WITHIN);
    assert_eq!(server.login_reply("alice", "a1"), "login_invalid");
    assert_eq!(server.login_reply("alice", "a2"), "login_valid");
    assert_eq!(server.login_reply("bob", "b1"), "login_valid");
    assert!(
        !server.stderr_text().contains(&alice_new[7..]),
        "a hash was logged"
    );
}

#[test]
fn hash_changed_by_rename_replace_invalidates_only_that_user() {
    changed_hash_invalidates_only_that_user(rename_replace);
}

#[test]
fn hash_changed_by_in_place_write_invalidates_only_that_user() {
    changed_hash_invalidates_only_that_user(write_in_place);
}

#[test]
fn removed_user_is_invalidated_and_can_no_longer_log_in() {
    let (alice, bob) = (cheap_hash("a1"), cheap_hash("b1"));
    let server = watched_server(&[("alice", &alice), ("bob", &bob)]);
    let mut alice_1 = server.logged_in("alice", "a1");
    let mut bob_1 = server.logged_in("bob", "b1");
    let mut bob_2 = server.logged_in("bob", "b1");

    rename_replace(&server.users_path(), &users_toml(&[("alice", &alice)]));
    assert_invalidated(&mut bob_1);
    assert_invalidated(&mut bob_2);
    alice_1.expect_nothing_for(QUIET);
    server.wait_for_log(
        "users file reloaded: 1 user(s); removed: \"bob\"",
        LOG_WITHIN,
    );
    assert_eq!(server.login_reply("bob", "b1"), "login_invalid");
}

#[test]
fn malformed_edit_changes_nothing_and_the_next_valid_edit_applies() {
    let (alice, bob) = (cheap_hash("a1"), cheap_hash("b1"));
    let server = watched_server(&[("alice", &alice), ("bob", &bob)]);
    let path = server.users_path();
    let mut alice_1 = server.logged_in("alice", "a1");
    let mut bob_1 = server.logged_in("bob", "b1");

    // Not TOML: the parser's complaint, with the line.
    write_in_place(&path, "[users.alice]\npassword_hash = \"unterminated\n");
    server.wait_for_log("users.toml: line 2: ", LOG_WITHIN);
    // An entry that is not a bcrypt hash: named, without the value.
    rename_replace(
        &path,
        &format!(
            "{}[users.carol]\npassword_hash = \"hunter2\"\n",
            users_toml(&[])
        ),
    );
    server.wait_for_log(
        "user \"carol\": password_hash is not a bcrypt hash",
        LOG_WITHIN,
    );
    // No file at all.
    std::fs::remove_file(&path).expect("remove the users file");
    server.wait_for_log("users.toml: it does not exist", LOG_WITHIN);
    assert!(
        !server.stderr_text().contains("hunter2"),
        "a password was logged"
    );

    crate::common::expect_all_silent(&mut [&mut alice_1, &mut bob_1], QUIET);
    assert_eq!(server.login_reply("alice", "a1"), "login_valid");
    assert_eq!(server.login_reply("carol", "hunter2"), "login_invalid");

    rename_replace(&path, &users_toml(&[("alice", &alice)]));
    assert_invalidated(&mut bob_1);
    alice_1.expect_nothing_for(QUIET);
}

#[test]
fn with_watch_off_an_edit_waits_for_sighup() {
    let (alice_old, alice_new) = (cheap_hash("a1"), cheap_hash("a2"));
    let server =
        TestServer::start_with_hashes(&config().auth("watch", false), &[("alice", &alice_old)]);
    server.wait_for_log("not watched (auth.watch = false)", LOG_WITHIN);
    let mut alice_1 = server.logged_in("alice", "a1");

    rename_replace(&server.users_path(), &users_toml(&[("alice", &alice_new)]));
    alice_1.expect_nothing_for(Duration::from_secs(1));
    assert_eq!(server.login_reply("alice", "a1"), "login_valid");

    server.signal(Signal::SIGHUP);
    assert_invalidated(&mut alice_1);
    assert_eq!(server.login_reply("alice", "a2"), "login_valid");
    server.wait_for_log("SIGHUP received", LOG_WITHIN);
}

// ---------------------------------------------------------------------------------------
// passwd and deluser
// ---------------------------------------------------------------------------------------

/// A folder with a `server.toml` (cheap hashes) and, when given, a `users.toml`.
struct UsersFolder {
    /// Removed on drop.
    dir: tempfile::TempDir,
}

impl UsersFolder {
    fn new(users: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("server.toml"), config().to_toml()).expect("config");
        if let Some(users) = users {
            std::fs::write(dir.path().join("users.toml"), users).expect("users");
        }
        Self { dir }
    }

    fn users_path(&self) -> PathBuf {
        self.dir.path().join("users.toml")
    }

    fn users_text(&self) -> String {
        std::fs::read_to_string(self.users_path()).expect("read the users file")
    }

    fn passwd(&self, name: &str, input: &[u8]) -> Ran {
        passwd(&self.dir.path().join("server.toml"), name, input)
    }

    fn deluser(&self, name: &str) -> Ran {
        deluser(&self.dir.path().join("server.toml"), name)
    }
}

fn passwd(config: &Path, name: &str, input: &[u8]) -> Ran {
    let mut command = tether_command(config);
    command.args(["passwd", name]);
    run_with_input(command, input, COMMAND_TIMEOUT)
}

fn deluser(config: &Path, name: &str) -> Ran {
    let mut command = tether_command(config);
    command.args(["deluser", name]);
    run_with_input(command, b"", COMMAND_TIMEOUT)
}

fn assert_exit(ran: &Ran, code: i32, stderr_says: &str) {
    assert_eq!(ran.status.code(), Some(code), "{ran:?}");
    assert!(
        ran.stderr.contains(stderr_says),
        "stderr should say {stderr_says:?}: {ran:?}"
    );
}

/// The hash stored for `name` in the users file `text`.
fn stored_hash(text: &str, name: &str) -> String {
    let file: toml::Table = text.parse().expect("the users file parses");
    file["users"][name]["password_hash"]
        .as_str()
        .expect("a password_hash string")
        .to_string()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn passwd_creates_the_first_user_in_a_new_0600_file() {
    let folder = UsersFolder::new(None);
    let ran = folder.passwd("alice", b"s3cret pass\n");
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    assert!(ran.stdout.contains("user \"alice\" created in"), "{ran:?}");

    let text = folder.users_text();
    let hash = stored_hash(&text, "alice");
    assert!(
        hash.starts_with("$2b$04$"),
        "cost from auth.bcrypt_cost: {hash}"
    );
    assert!(bcrypt::verify("s3cret pass", &hash).expect("a bcrypt hash"));
    assert!(!text.contains("s3cret"), "plaintext in the file:\n{text}");
    assert_eq!(mode(&folder.users_path()), 0o600);
}

#[test]
fn passwd_changes_an_existing_user_keeping_the_rest_of_the_file() {
    let (alice, bob) = (cheap_hash("a1"), cheap_hash("b1"));
    let original = format!(
        "# Users of the staging box.\n\n# Alice runs the night shift.\n[users.alice]\n\
         password_hash = \"{alice}\"   # set by hand\n\n[users.bob]     # on leave\n\
         password_hash='{bob}'\n"
    );
    let folder = UsersFolder::new(Some(&original));
    std::fs::set_permissions(folder.users_path(), PermissionsExt::from_mode(0o640)).expect("chmod");

    let ran = folder.passwd("alice", b"n3w\r\n");
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    assert!(
        ran.stdout.contains("password of user \"alice\" changed in"),
        "{ran:?}"
    );

    let text = folder.users_text();
    let new_hash = stored_hash(&text, "alice");
    assert!(
        bcrypt::verify("n3w", &new_hash).expect("a bcrypt hash"),
        "CR LF stripped"
    );
    assert_eq!(text, original.replace(&alice, &new_hash));
    assert_eq!(mode(&folder.users_path()), 0o640);
    assert!(!text.contains("n3w"), "plaintext in the file:\n{text}");
}

#[test]
fn passwd_refuses_bad_names_and_passwords_leaving_the_file_untouched() {
    let original = users_toml(&[("alice", &cheap_hash("a1"))]);
    let folder = UsersFolder::new(Some(&original));
    let long_name = "n".repeat(129);
    let long_password = [b'p'; 73];
    let cases: [(&str, &[u8], &str); 7] = [
        ("", b"pw\n", "the user name is empty"),
        ("a\tb", b"pw\n", "control character"),
        (&long_name, b"pw\n", "longer than 128 bytes"),
        ("bob", b"\n", "the password is empty"),
        ("bob", &long_password, "longer than 72 bytes"),
        ("bob", b"a\x1eb\n", "U+001E or U+001F"),
        ("bob", b"", "no password on standard input"),
    ];
    for (name, input, says) in cases {
        let ran = folder.passwd(name, input);
        assert_exit(&ran, 2, says);
        assert_eq!(
            folder.users_text(),
            original,
            "passwd {name:?} touched the file"
        );
    }
    // A 72-byte password and a 128-byte name are still fine.
    let ran = folder.passwd(&"n".repeat(128), &[b'p'; 72]);
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
}

#[test]
fn passwd_refuses_to_write_over_a_users_file_that_does_not_parse() {
    let broken = "[users.alice\n";
    let folder = UsersFolder::new(Some(broken));
    let ran = folder.passwd("bob", b"pw\n");
    assert_exit(&ran, 2, "users.toml: line 1: ");
    assert_eq!(folder.users_text(), broken);
}

#[test]
fn passwd_that_cannot_write_exits_1_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("server.toml");
    let config = config().auth("users_file", "missing-folder/users.toml");
    std::fs::write(&config_path, config.to_toml()).expect("config");
    let ran = passwd(&config_path, "alice", b"pw\n");
    assert_exit(&ran, 1, "missing-folder/users.toml");
}

#[test]
fn deluser_removes_a_present_user_and_fails_for_an_absent_one() {
    let (alice, bob) = (cheap_hash("a1"), cheap_hash("b1"));
    let folder = UsersFolder::new(Some(&users_toml(&[("alice", &alice), ("bob", &bob)])));

    let ran = folder.deluser("bob");
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    assert!(ran.stdout.contains("user \"bob\" removed from"), "{ran:?}");
    let left = folder.users_text();
    assert_eq!(left, users_toml(&[("alice", &alice)]));

    assert_exit(&folder.deluser("bob"), 1, "no user \"bob\"");
    assert_exit(&folder.deluser("a\u{7f}"), 2, "control character");
    assert_eq!(folder.users_text(), left);
}

#[test]
fn twenty_concurrent_passwd_runs_all_land_in_the_file() {
    let folder = UsersFolder::new(Some(&users_toml(&[("alice", &cheap_hash("a1"))])));
    let config_path = folder.dir.path().join("server.toml");
    let names: Vec<String> = (0..20).map(|i| format!("user-{i:02}")).collect();
    let children: Vec<_> = names
        .iter()
        .map(|name| {
            let mut command = tether_command(&config_path);
            command
                .args(["passwd", name])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut child = command.spawn().expect("spawn passwd");
            let mut stdin = child.stdin.take().expect("stdin");
            std::io::Write::write_all(&mut stdin, format!("pw-{name}\n").as_bytes())
                .expect("write the password");
            child
        })
        .collect();
    for (name, child) in names.iter().zip(children) {
        let output = child.wait_with_output().expect("wait for passwd");
        assert!(
            output.status.success(),
            "passwd {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = folder.users_text();
    for name in &names {
        let hash = stored_hash(&text, name);
        assert!(
            bcrypt::verify(format!("pw-{name}"), &hash).expect("bcrypt"),
            "{name}"
        );
    }
    assert!(bcrypt::verify("a1", &stored_hash(&text, "alice")).expect("bcrypt"));
}

#[test]
fn running_server_applies_what_passwd_and_deluser_write() {
    let server = watched_server(&[("alice", &cheap_hash("a1"))]);
    let config_path = server.config_path();
    let mut alice_1 = server.logged_in("alice", "a1");

    let ran = passwd(&config_path, "carol", b"c1\n");
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    server.wait_for_log("added: \"carol\"", LOG_WITHIN);
    let mut carol_1 = server.logged_in("carol", "c1");
    alice_1.expect_nothing_for(Duration::from_millis(100));

    let ran = passwd(&config_path, "alice", b"a2\n");
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    assert_invalidated(&mut alice_1);
    assert_eq!(server.login_reply("alice", "a2"), "login_valid");

    let ran = deluser(&config_path, "carol");
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    assert_invalidated(&mut carol_1);
    assert_eq!(server.login_reply("carol", "c1"), "login_invalid");
}

/// `tether passwd` is found under `--config` given after the command name too.
#[test]
fn config_may_follow_the_command_name() {
    let folder = UsersFolder::new(None);
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    command
        .args(["passwd", "alice", "--config"])
        .arg(folder.dir.path().join("server.toml"))
        .env_remove("RUST_LOG");
    let ran = run_with_input(command, b"pw\n", COMMAND_TIMEOUT);
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    assert!(folder.users_text().contains("[users.alice]"));
}
