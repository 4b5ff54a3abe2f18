//! The PROXY protocol (SPEC §10): HAProxy in front of the server sending v1 and v2, and
//! nginx's stream module sending v1, the carried address keying the login throttle;
//! missing, malformed and slow headers from a trusted peer; headers from other peers as
//! protocol input.

use crate::common::haproxy::{haproxy_available, Haproxy};
use crate::common::hardening::{connect_with, SocketOptions};
use crate::common::nginx::{nginx_available, Nginx};
use crate::common::tls::{ca_and_server_pair, client_config, TlsClient};
use crate::common::{encode, TestClient, TestConfig, TestServer};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// A client of `addr` connecting from the loopback address `source`.
fn client_from(addr: SocketAddr, source: Ipv4Addr) -> TestClient {
    let options = SocketOptions {
        source: Some(source),
        ..SocketOptions::default()
    };
    TestClient::from_stream(connect_with(addr, options).expect("connect"))
}

/// Ten failed logins as alice from `source` through `balancer`, then the right password:
/// answers whether it was accepted (a throttled pair gets `login_invalid` without a check).
fn throttled_after_ten_failures(balancer: SocketAddr, source: Ipv4Addr) {
    let mut guesser = client_from(balancer, source);
    for _ in 0..10 {
        guesser.send(&["login", "alice", "wrong"]);
        guesser.expect(&["login_invalid"]);
    }
    guesser.send(&["login", "alice", "secret"]);
    guesser.expect(&["login_invalid"]);
}

/// A balancer started by a test in front of the server: where clients connect, and what
/// keeps it running until dropped.
type Balancer = (SocketAddr, Box<dyn std::any::Any>);

/// Behind the balancer `start_balancer` starts (given the server's folder and address),
/// ten failures from one client address throttle that address only, and the logs name it.
fn throttle_is_keyed_by_the_carried_address(
    start_balancer: impl FnOnce(&std::path::Path, SocketAddr) -> Balancer,
) {
    let config = TestConfig::new().server("proxy_protocol_from", vec!["127.0.0.1/32"]);
    let server = TestServer::start(&config, &[("alice", "secret")]);
    let (balancer, _running) = start_balancer(server.dir(), server.addr());
    throttled_after_ten_failures(balancer, Ipv4Addr::new(127, 0, 0, 2));
    // Another client behind the same balancer is a different address: not throttled.
    let mut other = client_from(balancer, Ipv4Addr::new(127, 0, 0, 3));
    other.send(&["login", "alice", "secret"]);
    other.expect(&["login_valid"]);
    // The logs name the carried address, not the balancer's.
    server.wait_for_log("127.0.0.2:", Duration::from_secs(5));
}

/// HAProxy in front, with the server option `send_proxy`.
fn haproxy(send_proxy: &'static str) -> impl FnOnce(&std::path::Path, SocketAddr) -> Balancer {
    move |dir, backend| {
        let haproxy = Haproxy::start(dir, backend, send_proxy);
        (haproxy.addr, Box::new(haproxy))
    }
}

#[test]
fn haproxy_v1_carries_the_client_address_into_the_throttle() {
    if haproxy_available() {
        throttle_is_keyed_by_the_carried_address(haproxy("send-proxy"));
    }
}

#[test]
fn haproxy_v2_carries_the_client_address_into_the_throttle() {
    if haproxy_available() {
        throttle_is_keyed_by_the_carried_address(haproxy("send-proxy-v2"));
    }
}

#[test]
fn nginx_stream_proxy_protocol_carries_the_client_address_into_the_throttle() {
    if nginx_available() {
        throttle_is_keyed_by_the_carried_address(|dir, backend| {
            let nginx = Nginx::start(dir, backend);
            (nginx.addr, Box::new(nginx))
        });
    }
}

#[test]
fn haproxy_v2_in_front_of_the_tls_listener() {
    if !haproxy_available() {
        return;
    }
    let Some(dir) = ca_and_server_pair("test") else {
        return;
    };
    let mut tls = toml::Table::new();
    tls.insert("listen".into(), "127.0.0.1:0".into());
    tls.insert("cert_file".into(), "server.pem".into());
    tls.insert("key_file".into(), "server.key".into());
    let config = TestConfig::new()
        .server("listen", "")
        .server("tls", tls)
        .server("proxy_protocol_from", vec!["127.0.0.1"]);
    std::fs::write(dir.path().join("server.toml"), config.to_toml()).expect("write config");
    let users = crate::common::users_toml(&[("alice", &crate::common::cheap_hash("secret"))]);
    std::fs::write(dir.path().join("users.toml"), users).expect("write users");
    let cwd = dir.path().to_owned();
    let server = TestServer::start_in(dir, &cwd);
    let balancer = Haproxy::start(server.dir(), server.addr(), "send-proxy-v2");
    let trust = client_config(&server.dir().join("test-ca.pem"), None);
    let mut client = TlsClient::connect(balancer.addr, trust).expect("handshake through haproxy");
    client.send(&["login", "alice", "secret"]);
    client.expect(&["login_valid"]);
}

/// A server trusting PROXY headers from 127.0.0.2, with the admin API on; answers it and
/// the admin API's address.
fn start_trusting_127_0_0_2() -> (TestServer, SocketAddr) {
    let config = TestConfig::new()
        .server("proxy_protocol_from", vec!["127.0.0.2"])
        .set("admin", "listen", "127.0.0.1:0");
    let server = TestServer::start(&config, &[("alice", "secret")]);
    server.wait_for_log("(admin API)", Duration::from_secs(5));
    let admin = crate::common::admin_addr(&server.stderr_text());
    (server, admin)
}

/// The value of `tether_proxy_header_failures_total{cause="CAUSE"}` on `admin`.
fn header_failures(admin: SocketAddr, cause: &str) -> f64 {
    let text = ureq::get(&format!("http://{admin}/metrics"))
        .call()
        .expect("GET /metrics")
        .into_string()
        .expect("metrics text");
    let series = format!(r#"tether_proxy_header_failures_total{{cause="{cause}"}}"#);
    crate::common::metric_in(&text, &series).unwrap_or(0.0)
}

#[test]
fn a_trusted_peer_without_a_valid_header_is_closed_without_a_reply() {
    let (server, admin) = start_trusting_127_0_0_2();
    let trusted = Ipv4Addr::new(127, 0, 0, 2);

    let mut no_header = client_from(server.addr(), trusted);
    no_header.send(&["login", "alice", "secret"]);
    no_header.expect_closed_within(Duration::from_secs(5));

    let mut malformed = client_from(server.addr(), trusted);
    malformed.send_raw(b"PROXY TCP4 300.0.0.1 127.0.0.1 1 2\r\n");
    malformed.send(&["prolongate"]);
    malformed.expect_closed_within(Duration::from_secs(5));

    let mut silent = client_from(server.addr(), trusted);
    silent.send_raw(b"PROXY TCP4 ");
    silent.expect_nothing_for(Duration::from_secs(3));
    silent.expect_closed_within(Duration::from_secs(4));
    let counted = crate::common::wait_until(Duration::from_secs(2), || {
        header_failures(admin, "malformed") == 2.0 && header_failures(admin, "timeout") == 1.0
    });
    assert!(
        counted,
        "the missing, malformed and slow headers were not counted"
    );
    server.wait_for_log(
        "closed: no valid PROXY protocol header",
        Duration::from_secs(1),
    );

    // A valid header from the trusted peer: the connection is served.
    let mut proxied = client_from(server.addr(), trusted);
    proxied.send_raw(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 7700\r\n");
    proxied.send(&["login", "alice", "secret"]);
    proxied.expect(&["login_valid"]);
}

/// Immediate failure lines and the failures summed up in summary lines, in `log`.
#[test]
fn headerless_connections_are_counted_by_cause_and_logged_once_per_interval() {
    const FAILED: usize = 30;
    let (server, admin) = start_trusting_127_0_0_2();
    for _ in 0..FAILED {
        let mut client = client_from(server.addr(), Ipv4Addr::new(127, 0, 0, 2));
        client.send(&["login", "alice", "secret"]);
        client.expect_closed_within(Duration::from_secs(5));
    }
    let counted = crate::common::wait_until(Duration::from_secs(5), || {
        header_failures(admin, "malformed") == FAILED as f64
    });
    assert!(
        counted,
        "the headerless connections were not counted by cause"
    );
    crate::common::assert_failures_logged_once_then_summed(
        &server,
        FAILED as u64,
        &crate::common::FailureLogLines {
            immediate: "closed: no valid PROXY protocol header",
            summed: " more connection(s) closed without a valid PROXY",
            summary: "connection(s) closed without a valid PROXY protocol header in the last 10s (",
        },
    );
}

#[test]
fn a_header_from_an_untrusted_peer_is_protocol_input() {
    let config = TestConfig::new().server("proxy_protocol_from", vec!["127.0.0.2"]);
    let server = TestServer::start(&config, &[("alice", "secret")]);
    let mut client = client_from(server.addr(), Ipv4Addr::new(127, 0, 0, 1));
    let mut bytes = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 7700\r\n".to_vec();
    bytes.extend(encode(&["prolongate"]));
    client.send_raw(&bytes);
    client.expect(&["unknown_command"]);
    client.send(&["prolongate"]);
    client.expect(&["prolongate_ack"]);
}
