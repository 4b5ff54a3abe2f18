//! Password guessing at scale (issue 6): a spray of logins for many names from many
//! source addresses. The throttle refuses pairs past their limit without a check and
//! leaves other pairs alone; the password-check queue is bounded, and while it is full the
//! logins behind it wait, but no other command on any connection does, and the server's
//! memory stays flat. Against the real binary.

mod common;
mod hardening_support;

use common::{encode_all, TestClient, TestConfig, TestServer};
use hardening_support::{connect_with, loopback_source, rss_kib, SocketOptions};
use std::time::{Duration, Instant};

/// More connections than the check queue holds (1024), so it fills and logins wait.
const SPRAYERS: u32 = 1500;
/// Logins each sprayer pipelines; the throttle lets only the first few be checked.
const LOGINS_EACH: usize = 3;
/// Failures per (address, name) and minute before logins are refused unchecked.
const FAILURES_ALLOWED: u32 = 1;

#[test]
fn a_login_spray_neither_stalls_other_commands_nor_grows_memory() {
    // Unknown names are checked against the stand-in hash of this cost (~5 ms in a debug
    // build), slow enough that the spray fills the queue, fast enough to drain it soon.
    let config = TestConfig::new()
        .auth("watch", false)
        .auth("bcrypt_cost", 5)
        .auth("login_failures_per_minute", FAILURES_ALLOWED);
    let server = TestServer::start(&config, &[("alice", "pw")]);
    let pid = server.pid().as_raw();
    let addr = server.addr();
    let mut bystander = server.client();
    bystander.login("alice", "pw");
    let rss_before = rss_kib(pid);
    let started = Instant::now();

    // Each sprayer comes from its own loopback address and guesses one name, pipelining
    // its logins; it never reads. All connect first, then all send at once, so the checks
    // arrive faster than any pool drains them.
    let spray = std::thread::spawn(move || {
        let mut sprayers: Vec<TestClient> = (0..SPRAYERS)
            .map(|index| client_from(addr, loopback_source(index + 1000)))
            .collect();
        for (index, client) in sprayers.iter_mut().enumerate() {
            let name = format!("guess-{index}");
            let login = ["login", name.as_str(), "wrong"];
            let logins: Vec<&[&str]> = (0..LOGINS_EACH).map(|_| &login[..]).collect();
            client.send_raw(&encode_all(&logins));
        }
        sprayers
    });
    // Once the spray is in, a real login queues behind it: it waits, and succeeds.
    let late_login = std::thread::spawn(move || {
        while !spray.is_finished() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut late = client_from(addr, [127, 0, 0, 2].into());
        let sent = Instant::now();
        late.send(&["login", "alice", "pw"]);
        let reply = late.recv_within(Duration::from_secs(15));
        (spray.join().expect("spray thread"), reply, sent.elapsed())
    });

    // Meanwhile another connection's commands are answered at once.
    let mut slowest = Duration::ZERO;
    let mut peak_rss = rss_before;
    let mut prolongates = 0;
    while !late_login.is_finished() {
        let sent = Instant::now();
        bystander.send(&["prolongate"]);
        bystander.expect(&["prolongate_ack"]);
        slowest = slowest.max(sent.elapsed());
        prolongates += 1;
        peak_rss = peak_rss.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the spray took too long"
        );
    }
    let (mut sprayers, late_reply, late_wait) = late_login.join().expect("late login");
    let growth_kib = peak_rss.saturating_sub(rss_before);
    eprintln!(
        "login spray: {SPRAYERS} connections x {LOGINS_EACH} logins in {:?}; a login behind \
         them waited {late_wait:?}; slowest of {prolongates} prolongates {slowest:?}; RSS \
         {rss_before} KiB -> peak {peak_rss} KiB (+{growth_kib} KiB)",
        started.elapsed()
    );
    assert_eq!(
        late_reply,
        ["login_valid"],
        "a login behind a full queue waits, then succeeds"
    );
    assert!(
        late_wait > Duration::from_millis(300),
        "the check queue was never full: a login behind the spray waited only {late_wait:?}"
    );
    // A prolongate stuck behind the checks would wait about as long as the late login;
    // a busy machine alone delays it far less.
    assert!(
        slowest < Duration::from_secs(1) && slowest * 3 < late_wait,
        "a prolongate waited {slowest:?} during the login spray (the late login {late_wait:?})"
    );
    assert!(
        growth_kib < 48 * 1024,
        "RSS grew by {growth_kib} KiB under the spray"
    );

    // The throttle answered the logins past each pair's limit without a check, in order.
    server.wait_for_log(
        "refused unchecked: too many failures",
        Duration::from_secs(10),
    );
    for _ in 0..LOGINS_EACH {
        sprayers[0].expect(&["login_invalid"]);
    }
    drop(sprayers);

    // Other pairs are unaffected: alice logs in from the sprayers' addresses too.
    for source in [loopback_source(1000), loopback_source(1001)] {
        let mut client = client_from(addr, source);
        client.send(&["login", "alice", "pw"]);
        assert_eq!(
            client.recv_within(Duration::from_secs(10)),
            ["login_valid"],
            "from {source}"
        );
    }
    bystander.send(&["prolongate"]);
    bystander.expect(&["prolongate_ack"]);
}

/// A client connected to `addr` from the loopback address `source`.
fn client_from(addr: std::net::SocketAddr, source: std::net::Ipv4Addr) -> TestClient {
    let options = SocketOptions {
        source: Some(source),
        ..SocketOptions::default()
    };
    TestClient::from_stream(connect_with(addr, options).expect("connects"))
}
