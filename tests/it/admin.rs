//! The admin HTTP API (SPEC §6) through a real HTTP client against the real binary: each
//! route's answers, the token rules, and what the routes do to connections and the users
//! file.

use crate::common::{
    admin_addr, admin_call as call, metric_in, utc_millis_now, wait_until, TestClient, TestConfig,
    TestServer,
};
use serde_json::Value;
use std::ops::RangeInclusive;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(300);
const TOKEN: &str = "s3cret-token";

/// A running server with the admin API on an ephemeral port.
struct Admin {
    server: TestServer,
    base: String,
    token: Option<&'static str>,
}

impl Admin {
    fn start(token: Option<&'static str>) -> Self {
        let mut config = TestConfig::new()
            .set("admin", "listen", "127.0.0.1:0")
            .set("events", "time_zone", "UTC")
            .set("auth", "bcrypt_cost", 4);
        if let Some(token) = token {
            config = config.set("admin", "token", token);
        }
        let server = TestServer::start(&config, &[("alice", "pw-a"), ("bob", "pw-b")]);
        server.wait_for_log("(admin API)", Duration::from_secs(10));
        let addr = admin_addr(&server.stderr_text());
        Self {
            server,
            base: format!("http://{addr}"),
            token,
        }
    }

    fn client(&self) -> TestClient {
        self.server.client()
    }

    /// A connection logged in as `name` (alice or bob).
    fn logged_in(&self, name: &str) -> TestClient {
        let password = match name {
            "alice" => "pw-a",
            "bob" => "pw-b",
            other => panic!("no password for {other:?}"),
        };
        self.server.logged_in(name, password)
    }

    /// Publishes `body`; answers the status, the answer, and the event times possible
    /// (the UTC milliseconds from just before the request to just after its answer).
    fn publish_timed(&self, body: &str) -> (u16, Value, RangeInclusive<i64>) {
        let before = utc_millis_now();
        let (status, answer) = self.json("POST", "/v1/events", Some(body));
        (status, answer, before..=utc_millis_now())
    }

    /// Sends a request with the configured token; answers status and body.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        call(&self.base, self.token, method, path, body)
    }

    /// Like [`Admin::call`], with the body parsed as JSON.
    fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = self.call(method, path, body);
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{method} {path}: body {text:?} is not JSON: {err}"));
        (status, value)
    }

    fn users_file(&self) -> String {
        std::fs::read_to_string(self.server.dir().join("users.toml")).expect("users file")
    }
}

fn assert_error(status: u16, body: &Value, expected_status: u16, mentions: &str) {
    assert_eq!(status, expected_status, "body {body}");
    let reason = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error reason in {body}"));
    assert!(
        reason.contains(mentions),
        "error {reason:?} should mention {mentions:?}"
    );
}

#[test]
fn healthz_answers_ok() {
    let admin = Admin::start(None);
    let (status, body) = admin.json("GET", "/healthz", None);
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"status": "ok"}));
}

#[test]
fn with_a_token_every_route_but_healthz_needs_it() {
    let admin = Admin::start(Some(TOKEN));
    let anonymous = |method, path, body| call(&admin.base, None, method, path, body);
    let wrong = |method, path, body| call(&admin.base, Some("wrong"), method, path, body);

    assert_eq!(anonymous("GET", "/healthz", None).0, 200);
    for (method, path, body) in [
        ("GET", "/metrics", None),
        ("POST", "/v1/events", Some(r#"{"user":"alice","text":"x"}"#)),
        (
            "PUT",
            "/v1/users/carol/password",
            Some(r#"{"password":"p"}"#),
        ),
        ("DELETE", "/v1/users/bob", None),
        ("POST", "/v1/users/alice/invalidate", None),
        ("GET", "/v1/users/alice/connections", None),
    ] {
        for (status, text) in [anonymous(method, path, body), wrong(method, path, body)] {
            assert_eq!(status, 401, "{method} {path}: {text}");
            let body: Value = serde_json::from_str(&text).expect("JSON error");
            assert!(body["error"].as_str().is_some(), "{body}");
        }
    }
    assert!(
        !admin.users_file().contains("carol"),
        "a refused request changed nothing"
    );
    assert!(admin.users_file().contains("bob"));
    assert_eq!(admin.call("GET", "/metrics", None).0, 200);
    let (status, body) = admin.json("GET", "/v1/users/alice/connections", None);
    assert_eq!((status, &body["connections"]), (200, &serde_json::json!(0)));
}

#[test]
fn published_events_reach_exactly_the_bound_connections_with_their_time() {
    let admin = Admin::start(None);
    let [mut alice_1, mut alice_2, mut bob] = ["alice", "alice", "bob"].map(|u| admin.logged_in(u));
    let mut anonymous = admin.client();

    let (status, body, possible) = admin.publish_timed(r#"{"user":"alice","text":"hello, Алиса"}"#);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["user"], "alice");
    assert_eq!(body["connections"], 2);
    let time = body["time"].as_i64().expect("time is a number");
    assert!(possible.contains(&time), "{time} not in {possible:?}");
    for client in [&mut alice_1, &mut alice_2] {
        client.expect(&["event", &time.to_string(), "hello, Алиса"]);
    }
    crate::common::expect_all_silent(&mut [&mut bob, &mut anonymous], QUIET);

    let (status, body) = admin.json(
        "POST",
        "/v1/events",
        Some(r#"{"user":"nobody","text":"x"}"#),
    );
    assert_eq!((status, &body["connections"]), (202, &serde_json::json!(0)));
}

#[test]
fn bad_event_requests_are_refused_and_deliver_nothing() {
    let admin = Admin::start(None);
    let mut alice = admin.logged_in("alice");
    let oversized = format!(r#"{{"user":"alice","text":"{}"}}"#, "x".repeat(70_000));
    for (body, status, mentions) in [
        (r#"{"user":"alice","text":"a\u001eb"}"#, 400, "U+001E"),
        (r#"{"user":"alice","text":"a\u001fb"}"#, 400, "U+001F"),
        (r#"{"user":"","text":"x"}"#, 400, "user name"),
        (r#"{"user":"a\nb","text":"x"}"#, 400, "control character"),
        (r#"{"user":"alice"}"#, 400, "text"),
        (r#"{"text":"x"}"#, 400, "user"),
        (r#"{"user":"alice","text":"x","extra":1}"#, 400, "extra"),
        (r#"{"user":"alice","text":5}"#, 400, "invalid type"),
        ("not json", 400, "JSON"),
        ("", 400, "JSON"),
        (oversized.as_str(), 413, "larger than"),
    ] {
        let (got, text) = admin.call("POST", "/v1/events", Some(body));
        let parsed: Value = serde_json::from_str(&text).expect("JSON error body");
        assert_error(got, &parsed, status, mentions);
    }
    alice.expect_nothing_for(QUIET);
}

/// A batch body of `(user, text)` entries.
fn batch_body(events: &[(&str, &str)]) -> String {
    let events: Vec<Value> = events
        .iter()
        .map(|(user, text)| serde_json::json!({"user": user, "text": text}))
        .collect();
    serde_json::json!({ "events": events }).to_string()
}

#[test]
fn a_batch_is_published_in_order_with_one_answer_per_event() {
    let admin = Admin::start(None);
    let [mut alice_1, mut alice_2, mut bob] = ["alice", "alice", "bob"].map(|u| admin.logged_in(u));

    let body = batch_body(&[
        ("alice", "a1"),
        ("bob", "b1"),
        ("nobody", "n1"),
        ("alice", "a2"),
    ]);
    let (status, answer, possible) = admin.publish_timed(&body);
    assert_eq!(status, 202, "{answer}");
    let answers = answer["events"].as_array().expect("an events array");
    let summary: Vec<(&str, i64)> = answers
        .iter()
        .map(|one| {
            let user = one["user"].as_str().expect("user");
            (user, one["connections"].as_i64().expect("connections"))
        })
        .collect();
    assert_eq!(
        summary,
        [("alice", 2), ("bob", 1), ("nobody", 0), ("alice", 2)]
    );
    let times: Vec<i64> = answers
        .iter()
        .map(|one| one["time"].as_i64().expect("time"))
        .collect();
    assert!(
        times.iter().all(|time| possible.contains(time)),
        "{times:?} not in {possible:?}"
    );
    for client in [&mut alice_1, &mut alice_2] {
        client.expect(&["event", &times[0].to_string(), "a1"]);
        client.expect(&["event", &times[3].to_string(), "a2"]);
    }
    bob.expect(&["event", &times[1].to_string(), "b1"]);
    crate::common::expect_all_silent(&mut [&mut alice_1, &mut alice_2, &mut bob], QUIET);
}

#[test]
fn a_batch_of_the_largest_size_reaches_its_connection_whole_and_in_order() {
    let admin = Admin::start(None);
    let mut alice = admin.logged_in("alice");
    let texts: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    let entries: Vec<(&str, &str)> = texts.iter().map(|text| ("alice", text.as_str())).collect();
    let (status, answer) = admin.json("POST", "/v1/events", Some(&batch_body(&entries)));
    assert_eq!(status, 202, "{answer}");
    let answers = answer["events"].as_array().expect("an events array");
    assert_eq!(answers.len(), 1000);
    assert!(answers.iter().all(|one| one["connections"] == 1));
    for text in &texts {
        let message = alice.recv();
        assert_eq!((message[0].as_str(), &message[2]), ("event", text));
    }
}

#[test]
fn a_batch_with_one_bad_entry_is_refused_whole_naming_its_index() {
    let admin = Admin::start(None);
    let mut alice = admin.logged_in("alice");
    let many = batch_body(&vec![("alice", "x"); 1001]);
    for (body, mentions) in [
        (
            batch_body(&[("alice", "ok"), ("alice", "ok"), ("alice", "a\u{1e}b")]),
            "events[2]: the text contains U+001E",
        ),
        (
            batch_body(&[("alice", "ok"), ("", "x")]),
            "events[1]: invalid user",
        ),
        (
            r#"{"events":[{"user":"alice","text":"ok"},{"user":"alice"}]}"#.to_owned(),
            "events[1]: missing field `text`",
        ),
        (
            r#"{"events":[{"user":"alice","text":"ok","extra":1}]}"#.to_owned(),
            "events[0]: unknown field `extra`",
        ),
        (r#"{"events":[]}"#.to_owned(), "1 to 1000 events, not 0"),
        (many, "1 to 1000 events, not 1001"),
        (r#"{"events":{"user":"alice"}}"#.to_owned(), "invalid type"),
        (
            r#"{"events":[{"user":"alice","text":"ok"}],"user":"alice"}"#.to_owned(),
            "either \"user\" and \"text\", or \"events\"",
        ),
    ] {
        let (status, answer) = admin.json("POST", "/v1/events", Some(&body));
        assert_error(status, &answer, 400, mentions);
    }
    alice.expect_nothing_for(QUIET);
}

#[test]
fn the_delivery_histogram_counts_every_event_written_to_a_connection() {
    let admin = Admin::start(None);
    let deliveries_counted = || {
        let (status, text) = admin.call("GET", "/metrics", None);
        assert_eq!(status, 200);
        let workers: Vec<f64> = text
            .lines()
            .filter_map(|line| line.strip_prefix("tether_event_delivery_seconds_count{worker="))
            .filter_map(|rest| rest.split_whitespace().nth(1)?.parse().ok())
            .collect();
        assert!(!workers.is_empty(), "no delivery histogram in\n{text}");
        assert!(
            text.contains("tether_event_delivery_seconds_bucket{le=\"0.00001\""),
            "no 10 µs bucket in\n{text}"
        );
        workers.iter().sum::<f64>()
    };
    let before = deliveries_counted();
    let [mut alice_1, mut alice_2] = ["alice", "alice"].map(|u| admin.logged_in(u));
    let batch = batch_body(&[("alice", "1"), ("alice", "2"), ("nobody", "-")]);
    assert_eq!(admin.call("POST", "/v1/events", Some(&batch)).0, 202);
    let single = r#"{"user":"alice","text":"3"}"#;
    assert_eq!(admin.call("POST", "/v1/events", Some(single)).0, 202);
    for client in [&mut alice_1, &mut alice_2] {
        for text in ["1", "2", "3"] {
            assert_eq!(client.recv()[2], text);
        }
    }
    // Observed just after the write returns, so it may trail the client's read a little.
    let mut counted = 0.0;
    wait_until(Duration::from_secs(5), || {
        counted = deliveries_counted() - before;
        counted >= 6.0
    });
    assert_eq!(counted, 6.0);
}

#[test]
fn setting_a_password_creates_or_changes_the_user_and_invalidates_its_connections() {
    let admin = Admin::start(None);
    let [mut alice_1, mut alice_2, mut bob] = ["alice", "alice", "bob"].map(|u| admin.logged_in(u));

    let (status, _) = admin.call(
        "PUT",
        "/v1/users/carol/password",
        Some(r#"{"password":"pw-c"}"#),
    );
    assert_eq!(status, 201);
    admin.client().login("carol", "pw-c");

    let (status, _) = admin.call(
        "PUT",
        "/v1/users/alice/password",
        Some(r#"{"password":"new-pw"}"#),
    );
    assert_eq!(status, 204);
    // In force when the answer comes: the notices are already on their way.
    alice_1.expect(&["invalidated"]);
    alice_2.expect(&["invalidated"]);
    bob.expect_nothing_for(QUIET);
    let mut again = admin.client();
    again.send(&["login", "alice", "pw-a"]);
    again.expect(&["login_invalid"]);
    again.login("alice", "new-pw");

    let file = admin.users_file();
    assert!(!file.contains("new-pw") && !file.contains("pw-c"), "{file}");
}

#[test]
fn bad_password_requests_are_refused_and_change_nothing() {
    let admin = Admin::start(None);
    let before = admin.users_file();
    let long = format!(r#"{{"password":"{}"}}"#, "p".repeat(73));
    for (path, body, mentions) in [
        ("/v1/users/alice/password", r#"{"password":""}"#, "empty"),
        ("/v1/users/alice/password", long.as_str(), "72 bytes"),
        (
            "/v1/users/alice/password",
            r#"{"password":"a\u001eb"}"#,
            "U+001E",
        ),
        ("/v1/users/alice/password", r#"{"pass":"x"}"#, "password"),
        ("/v1/users/alice/password", "[]", "JSON"),
        (
            "/v1/users/a%0Ab/password",
            r#"{"password":"x"}"#,
            "control character",
        ),
    ] {
        let (status, body) = admin.json("PUT", path, Some(body));
        assert_error(status, &body, 400, mentions);
    }
    assert_eq!(admin.users_file(), before);
}

#[test]
fn deleting_a_user_invalidates_its_connections_and_absent_users_are_404() {
    let admin = Admin::start(None);
    let [mut alice, mut bob] = ["alice", "bob"].map(|u| admin.logged_in(u));

    assert_eq!(admin.call("DELETE", "/v1/users/alice", None).0, 204);
    alice.expect(&["invalidated"]);
    bob.expect_nothing_for(QUIET);
    alice.send(&["login", "alice", "pw-a"]);
    alice.expect(&["login_invalid"]);
    assert!(!admin.users_file().contains("alice"));

    let (status, body) = admin.json("DELETE", "/v1/users/alice", None);
    assert_error(status, &body, 404, "alice");
}

#[test]
fn operator_invalidation_kicks_every_connection_of_the_user() {
    let admin = Admin::start(None);
    let [mut alice_1, mut alice_2, mut bob] = ["alice", "alice", "bob"].map(|u| admin.logged_in(u));

    let (status, body) = admin.json("POST", "/v1/users/alice/invalidate", None);
    assert_eq!((status, body), (200, serde_json::json!({"invalidated": 2})));
    alice_1.expect(&["invalidated"]);
    alice_2.expect(&["invalidated"]);
    bob.expect_nothing_for(QUIET);
    let (_, body) = admin.json("POST", "/v1/users/alice/invalidate", None);
    assert_eq!(body, serde_json::json!({"invalidated": 0}));
}

#[test]
fn connection_counts_follow_logins_and_logouts() {
    let admin = Admin::start(None);
    let count = |user: &str| {
        let (status, body) = admin.json("GET", &format!("/v1/users/{user}/connections"), None);
        assert_eq!(status, 200);
        assert_eq!(body["user"], user);
        body["connections"].as_u64().expect("count")
    };
    assert_eq!(count("alice"), 0);
    let [mut alice_1, alice_2] = ["alice", "alice"].map(|u| admin.logged_in(u));
    assert_eq!(count("alice"), 2);
    alice_1.send(&["logout"]);
    alice_1.expect(&["logout_ack"]);
    assert_eq!(count("alice"), 1);
    drop(alice_2);
    assert!(
        wait_until(Duration::from_secs(5), || count("alice") == 0),
        "closed connection still counted"
    );
}

#[test]
fn percent_encoded_names_in_paths_are_decoded() {
    let admin = Admin::start(None);
    let (status, _) = admin.call(
        "PUT",
        "/v1/users/%D0%90%D0%BB%D0%B8%D1%81%D0%B0%20%2F%201/password",
        Some(r#"{"password":"pw"}"#),
    );
    assert_eq!(status, 201);
    let mut client = admin.client();
    client.login("Алиса / 1", "pw");
    let (_, body) = admin.json(
        "GET",
        "/v1/users/%D0%90%D0%BB%D0%B8%D1%81%D0%B0%20%2F%201/connections",
        None,
    );
    assert_eq!(
        body,
        serde_json::json!({"user": "Алиса / 1", "connections": 1})
    );
}

#[test]
fn unknown_routes_and_methods_get_json_errors() {
    let admin = Admin::start(None);
    let (status, body) = admin.json("GET", "/v2/nothing", None);
    assert_error(status, &body, 404, "no such route");
    let (status, body) = admin.json("GET", "/v1/events", None);
    assert_error(status, &body, 405, "method");
}

/// The value of the first metric line starting with `series`.
fn metric(text: &str, series: &str) -> f64 {
    metric_in(text, series).unwrap_or_else(|| panic!("no series {series:?} in\n{text}"))
}

#[test]
fn metrics_show_every_family_and_move_when_things_happen() {
    let admin = Admin::start(None);
    let (status, before) = admin.call("GET", "/metrics", None);
    assert_eq!(status, 200);
    for family in [
        "tether_connections_open",
        "tether_connections_bound",
        "tether_logins_total{result=\"valid\"}",
        "tether_logins_total{result=\"invalid\"}",
        "tether_logins_total{result=\"throttled\"}",
        "tether_commands_total{type=\"prolongate\"}",
        "tether_events_published_total",
        "tether_events_delivered_total",
        "tether_invalidations_total{cause=\"client\"}",
        "tether_invalidations_total{cause=\"operator\"}",
        "tether_timeouts_total",
        "tether_io_errors_total{cause=\"message_too_long\"}",
        "tether_password_check_queue_depth",
        "tether_password_check_seconds_count",
    ] {
        metric(&before, family);
    }

    let mut alice = admin.logged_in("alice");
    alice.send(&["login", "alice", "wrong"]);
    alice.expect(&["login_invalid"]);
    alice.send(&["prolongate"]);
    alice.expect(&["prolongate_ack"]);
    let (status, _) = admin.call("POST", "/v1/events", Some(r#"{"user":"alice","text":"m"}"#));
    assert_eq!(status, 202);
    alice.recv();
    admin.call("POST", "/v1/users/alice/invalidate", None);
    alice.expect(&["invalidated"]);

    let (_, after) = admin.call("GET", "/metrics", None);
    let moved = |series: &str| metric(&after, series) - metric(&before, series);
    assert_eq!(moved("tether_connections_open"), 1.0);
    assert_eq!(moved("tether_logins_total{result=\"valid\"}"), 1.0);
    assert_eq!(moved("tether_logins_total{result=\"invalid\"}"), 1.0);
    assert_eq!(moved("tether_commands_total{type=\"login\"}"), 2.0);
    assert_eq!(moved("tether_commands_total{type=\"prolongate\"}"), 1.0);
    assert_eq!(moved("tether_events_published_total"), 1.0);
    assert_eq!(moved("tether_events_delivered_total"), 1.0);
    assert_eq!(moved("tether_invalidations_total{cause=\"operator\"}"), 1.0);
    assert_eq!(moved("tether_password_check_seconds_count"), 2.0);
    assert_eq!(metric(&after, "tether_connections_bound"), 0.0);
}

#[test]
fn an_empty_admin_listen_turns_the_api_off() {
    use crate::common::hardening::listening_ports;
    // The harness's baseline sets `listen = ""` already: say it here, so the test does not
    // hang on the baseline.
    let config = TestConfig::new().set("admin", "listen", "");
    let server = TestServer::start(&config, &[("alice", "pw-a")]);
    server.client().login("alice", "pw-a");
    // Nothing listens but the client protocol: no admin port on any address.
    let pid = server.pid().as_raw();
    assert_eq!(listening_ports(pid), [server.addr().port()]);
    assert!(!server.stderr_text().contains("(admin API)"));
    // The same look sees an admin API that is on.
    let on = TestServer::start(
        &TestConfig::new().set("admin", "listen", "127.0.0.1:0"),
        &[],
    );
    on.wait_for_log("(admin API)", Duration::from_secs(10));
    let admin = crate::common::admin_addr(&on.stderr_text()).port();
    let mut expected = [on.addr().port(), admin];
    expected.sort_unstable();
    assert_eq!(listening_ports(on.pid().as_raw()), expected);
}

#[test]
fn users_are_listed_by_name_in_pages_with_their_connection_counts() {
    let admin = Admin::start(None);
    for name in ["carol", "dave", "Zed"] {
        let path = format!("/v1/users/{name}/password");
        let (status, _) = admin.call("PUT", &path, Some(r#"{"password":"pw"}"#));
        assert_eq!(status, 201, "PUT {path}");
    }
    let _alice = admin.logged_in("alice");
    let page = |query: &str| {
        let (status, body) = admin.json("GET", &format!("/v1/users{query}"), None);
        assert_eq!(status, 200, "GET /v1/users{query}: {body}");
        body
    };
    let entry = |name: &str, connections: u64| serde_json::json!({ "name": name, "connections": connections });
    // Bytewise order: upper case before lower case.
    assert_eq!(
        page("?limit=2"),
        serde_json::json!({ "users": [entry("Zed", 0), entry("alice", 1)], "next": "alice" })
    );
    assert_eq!(
        page("?after=alice&limit=2"),
        serde_json::json!({ "users": [entry("bob", 0), entry("carol", 0)], "next": "carol" })
    );
    assert_eq!(
        page("?after=carol&limit=2"),
        serde_json::json!({ "users": [entry("dave", 0)], "next": null })
    );
    assert_eq!(page("?after=dave")["users"], serde_json::json!([]));
    let all = page("");
    assert_eq!(all["users"].as_array().map(Vec::len), Some(5), "{all}");
    assert_eq!(all["next"], Value::Null);
}

#[test]
fn bad_user_list_parameters_are_400() {
    let admin = Admin::start(None);
    for (query, mentions) in [
        ("?limit=0", "limit must be from 1 to 1000"),
        ("?limit=1001", "limit must be from 1 to 1000"),
        ("?limit=many", "bad query"),
        ("?limit=-1", "bad query"),
        ("?before=bob", "bad query"),
    ] {
        let (status, body) = admin.json("GET", &format!("/v1/users{query}"), None);
        assert_error(status, &body, 400, mentions);
    }
    let (status, _) = admin.call("GET", "/v1/users?limit=1000", None);
    assert_eq!(status, 200);
}

#[test]
fn a_hand_added_bad_entry_makes_user_changes_409_naming_it() {
    let admin = Admin::start(None);
    let path = admin.server.users_path();
    let mut text = admin.users_file();
    text.push_str("\n[users.mallory]\npassword_hash = \"plain-text\"\n");
    std::fs::write(&path, &text).expect("write users file");
    let (status, body) = admin.json(
        "PUT",
        "/v1/users/carol/password",
        Some(r#"{"password":"pw"}"#),
    );
    assert_error(status, &body, 409, "\"mallory\"");
    let (status, body) = admin.json("DELETE", "/v1/users/alice", None);
    assert_error(status, &body, 409, "\"mallory\"");
    assert_eq!(admin.users_file(), text, "nothing written");
}

#[test]
fn a_long_path_without_the_token_is_cut_short_in_the_log() {
    let admin = Admin::start(Some(TOKEN));
    let path = format!("/v1/users/{}/connections", "x".repeat(6000));
    let (status, _) = call(&admin.base, None, "GET", &path, None);
    assert_eq!(status, 401);
    admin
        .server
        .wait_for_log("missing or wrong token", Duration::from_secs(5));
    let log = admin.server.stderr_text();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1000, "a log line of {longest} bytes");
    assert!(log.contains(&format!("({} bytes)", path.len())), "{log}");
}

/// `GET /metrics` with `Accept: accept`; answers the content type and the body.
fn scrape(admin: &Admin, accept: Option<&str>) -> (String, String) {
    let mut request = ureq::get(&format!("{}/metrics", admin.base));
    if let Some(accept) = accept {
        request = request.set("Accept", accept);
    }
    let response = request.call().expect("GET /metrics");
    let content_type = response.header("Content-Type").unwrap_or("").to_owned();
    (content_type, response.into_string().expect("metrics text"))
}

/// What `promtool check metrics` says of `text`: `Ok` when it finds nothing, else its
/// complaints; `None` when promtool is not installed.
fn promtool_check(text: &str) -> Option<Result<(), String>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => panic!("cannot run promtool: {err}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(if output.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    })
}

#[test]
fn metrics_are_negotiated_by_accept_and_pass_promtool() {
    // Issue 23: promtool found 13 counters without help text, and OpenMetrics was served
    // even to a scraper asking for text/plain 0.0.4.
    let admin = Admin::start(None);
    // Something in every kind of family: a login (counter, histogram), a connection (gauge).
    let _alice = admin.logged_in("alice");
    for accept in [
        None,
        Some("text/plain;version=0.0.4"),
        Some("text/plain; version=0.0.4; charset=utf-8, */*;q=0.1"),
        Some("*/*"),
        Some("application/openmetrics-text;version=1.0.0;q=0.1,text/plain;version=0.0.4"),
    ] {
        let (content_type, text) = scrape(&admin, accept);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "Accept {accept:?} got {content_type:?}"
        );
        assert!(
            !text.contains("# EOF"),
            "Accept {accept:?}: OpenMetrics text"
        );
        metric(&text, "tether_logins_total{result=\"valid\"}");
        metric(&text, "tether_connections_open");
        match promtool_check(&text) {
            None => {
                crate::common::skip_without(
                    "promtool (checks /metrics in Prometheus's own parser)",
                    "install Debian's prometheus package",
                );
                return;
            }
            Some(Ok(())) => {}
            Some(Err(said)) => panic!("promtool check metrics (Accept {accept:?}):\n{said}"),
        }
    }
    // What Prometheus itself sends: OpenMetrics first.
    let (content_type, text) = scrape(
        &admin,
        Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
             version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        ),
    );
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type:?}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    metric(&text, "tether_logins_total{result=\"valid\"}");
}

#[test]
fn head_of_the_get_routes_is_answered_without_a_body() {
    let admin = Admin::start(None);
    for path in ["/metrics", "/healthz", "/v1/users/alice/connections"] {
        let response = ureq::head(&format!("{}{path}", admin.base))
            .call()
            .unwrap_or_else(|err| panic!("HEAD {path}: {err}"));
        assert_eq!(response.status(), 200, "HEAD {path}");
        assert_eq!(response.into_string().expect("body"), "", "HEAD {path}");
    }
}
