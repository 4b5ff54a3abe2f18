//! The JavaScript client (`client-js/`, npm package `tether-client`) against the binary
//! these tests use: runs its `node --test` suites with `TETHER_BIN` set to it, and fails
//! when they fail. Node ≥ 20, `npm ci` in `client-js` and (for the browser test) Debian's
//! `chromium` are needed; without them the tests are skipped, and fail under `CI=true`.

use crate::common::{run_to_exit, skip_without};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long one suite may run: each test starts its own servers, the reconnect tests wait
/// out backoff, the browser test starts Chromium.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);
/// Where the browser test looks for Chromium unless `CHROMIUM_BIN` says otherwise.
const CHROMIUM: &str = "/usr/bin/chromium";
/// How to get what the suites need.
const ADVICE: &str = "apt-get install nodejs npm chromium, then `npm ci` in client-js";

/// The package's folder.
fn client_js() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("client-js")
}

/// Whether node ≥ 20 and the package's dev dependencies are there; says why not if not.
fn node_ready() -> bool {
    let version = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    let major = version
        .as_deref()
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse::<u32>().ok());
    if major.is_none_or(|major| major < 20) {
        skip_without(&format!("no node ≥ 20 (found {version:?})"), ADVICE);
        return false;
    }
    for package in ["ws", "playwright-core"] {
        if !client_js().join("node_modules").join(package).is_dir() {
            skip_without(
                &format!("client-js/node_modules/{package} is missing"),
                ADVICE,
            );
            return false;
        }
    }
    true
}

/// Runs `node --test FILES` in client-js against the binary under test; panics with the
/// suite's report when a test fails.
fn node_test(files: &[&str]) {
    let mut command = Command::new("node");
    command
        .arg("--test")
        .arg("--test-reporter=spec")
        .args(files)
        .current_dir(client_js())
        .env("TETHER_BIN", env!("CARGO_BIN_EXE_tether"))
        .env_remove("RUST_LOG");
    let ran = run_to_exit(command, SUITE_TIMEOUT);
    assert!(
        ran.status.success(),
        "node --test {files:?} failed ({}):\n{}\n{}",
        ran.status,
        ran.stdout,
        ran.stderr
    );
    // A suite that ran nothing passes too: make sure it ran and failed nothing.
    let count = |what: &str| {
        ran.stdout
            .lines()
            .find_map(|line| line.strip_prefix(&format!("ℹ {what} ")))
            .and_then(|n| n.trim().parse::<u32>().ok())
    };
    assert!(
        count("pass").is_some_and(|n| n > 0) && count("fail") == Some(0),
        "node --test {files:?} ran no test, or its summary is not there:\n{}",
        ran.stdout
    );
}

#[test]
fn node_suites_pass_against_the_binary() {
    if !node_ready() {
        return;
    }
    node_test(&["test/unit.test.js", "test/tether.test.js"]);
}

#[test]
fn the_example_page_works_in_headless_chromium() {
    if !node_ready() {
        return;
    }
    let chromium =
        std::env::var_os("CHROMIUM_BIN").map_or_else(|| PathBuf::from(CHROMIUM), PathBuf::from);
    if !chromium.is_file() {
        skip_without(&format!("no Chromium at {}", chromium.display()), ADVICE);
        return;
    }
    node_test(&["test/browser.test.js"]);
}
