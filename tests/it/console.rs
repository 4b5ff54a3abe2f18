//! The web console (SPEC §12) against the real binary: the page and its files served
//! without the token and locked down (CSP, nosniff, no inline script or style, nothing
//! from outside), `admin.console = false` giving `404`, every other route still needing
//! the token, `GET /v1/node` and the `search`/`online` parameters of `GET /v1/users` the
//! page relies on; then the page itself in Debian's headless Chromium
//! (`tests/browser/console.test.mjs`) and its logic's unit tests under `node --test`.

use crate::common::postgres::Postgres;
use crate::common::tls::{ca_and_server_pair, client_config, TlsClient};
use crate::common::{
    admin_addr, admin_call, cheap_hash, run_to_exit, skip_without, TestClient, TestConfig,
    TestServer,
};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "console-t0ken";
/// The Content-Security-Policy SPEC §12 asks for.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'";

/// The admin API on (token [`TOKEN`]), cheap hashes.
fn config() -> TestConfig {
    TestConfig::new()
        .set("admin", "listen", "127.0.0.1:0")
        .set("admin", "token", TOKEN)
        .auth("bcrypt_cost", 4)
}

/// A server with the admin API (token [`TOKEN`]) and users alice, bob and carol
/// (`pw-<name>`).
struct Console {
    server: TestServer,
    admin: SocketAddr,
    base: String,
}

impl Console {
    fn start() -> Self {
        Self::start_with(|config| config)
    }

    fn start_with(change: impl FnOnce(TestConfig) -> TestConfig) -> Self {
        let config = change(config());
        let server = TestServer::start(
            &config,
            &[
                ("alice", "pw-alice"),
                ("bob", "pw-bob"),
                ("carol", "pw-carol"),
            ],
        );
        Self::around(server)
    }

    /// A server whose users are `names` (password `pw`).
    fn start_with_users(names: &[&str]) -> Self {
        let users: Vec<(&str, &str)> = names.iter().map(|name| (*name, "pw")).collect();
        Self::around(TestServer::start(&config(), &users))
    }

    fn around(server: TestServer) -> Self {
        server.wait_for_log("(admin API)", Duration::from_secs(10));
        let admin = admin_addr(&server.stderr_text());
        Self {
            server,
            admin,
            base: format!("http://{admin}"),
        }
    }

    /// `GET path` with the token when `token`; no redirect followed.
    fn get(&self, path: &str, token: bool) -> Answer {
        get(&self.base, path, token.then_some(TOKEN))
    }

    /// `GET path` with the token, as JSON; asserts `200`.
    fn json(&self, path: &str) -> Value {
        let (status, body) = admin_call(&self.base, Some(TOKEN), "GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|err| panic!("{body:?}: {err}"))
    }

    /// The status and error of `GET path` with the token.
    fn status(&self, path: &str) -> (u16, String) {
        admin_call(&self.base, Some(TOKEN), "GET", path, None)
    }

    /// The names `GET path` (a `/v1/users` query) lists, and its `next`.
    fn names(&self, path: &str) -> (Vec<String>, Value) {
        let page = self.json(path);
        let names = page["users"]
            .as_array()
            .unwrap_or_else(|| panic!("no users in {page}"))
            .iter()
            .map(|user| user["name"].as_str().expect("a name").to_owned())
            .collect();
        (names, page["next"].clone())
    }
}

/// An HTTP answer: status, headers (names lowercase) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(found, _)| found == name)
            .map(|(_, value)| value.as_str())
    }

    /// Asserts the headers every console answer carries.
    fn assert_locked_down(&self, what: &str) {
        assert_eq!(
            self.header("content-security-policy"),
            Some(CSP),
            "{what}: CSP"
        );
        assert_eq!(
            self.header("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        assert_eq!(
            self.header("referrer-policy"),
            Some("no-referrer"),
            "{what}"
        );
    }
}

fn get(base: &str, path: &str, token: Option<&str>) -> Answer {
    let agent = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(10))
        .build();
    let mut request = agent.get(&format!("{base}{path}"));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let response = match request.call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(err) => panic!("GET {path}: {err}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .map(|name| {
            let value = response.header(&name).unwrap_or_default().to_owned();
            (name.to_ascii_lowercase(), value)
        })
        .collect();
    let body = response.into_string().expect("a text body");
    Answer {
        status,
        headers,
        body,
    }
}

/// Sends `GET target` as written (no client normalizes it) without a token; answers the
/// status line and the whole answer.
fn raw_get(admin: SocketAddr, target: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(admin).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    (status, answer)
}

// ---- a minimal HTML scanner: tags and their attributes ---------------------------------

/// A start tag: its name (lowercase), its attributes (names lowercase, values as written)
/// and, for `script` and `style`, the text up to its end tag.
#[derive(Debug)]
struct Tag {
    name: String,
    attributes: Vec<(String, Option<String>)>,
    content: String,
}

impl Tag {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(found, _)| found == name)
            .and_then(|(_, value)| value.as_deref())
    }
}

/// Every start tag of `html`, in order (comments and doctype skipped).
fn start_tags(html: &str) -> Vec<Tag> {
    let bytes = html.as_bytes();
    let mut tags = Vec::new();
    let mut at = 0;
    while let Some(offset) = html[at..].find('<') {
        at += offset;
        let rest = &html[at..];
        if rest.starts_with("<!--") {
            at += rest.find("-->").expect("a closed comment") + 3;
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("</") {
            at += rest.find('>').expect("a closed tag") + 1;
            continue;
        }
        at += 1;
        let name_end = at
            + html[at..]
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '-')
                .expect("a tag name ends");
        let name = html[at..name_end].to_ascii_lowercase();
        at = name_end;
        let mut attributes = Vec::new();
        loop {
            while bytes[at].is_ascii_whitespace() {
                at += 1;
            }
            if bytes[at] == b'>' {
                at += 1;
                break;
            }
            if html[at..].starts_with("/>") {
                at += 2;
                break;
            }
            let end = at
                + html[at..]
                    .find(|c: char| c.is_ascii_whitespace() || c == '=' || c == '>' || c == '/')
                    .expect("an attribute name ends");
            let attribute = html[at..end].to_ascii_lowercase();
            assert!(!attribute.is_empty(), "a malformed tag <{name} at {at}");
            at = end;
            let mut value = None;
            if bytes[at] == b'=' {
                at += 1;
                let quote = bytes[at];
                if quote == b'"' || quote == b'\'' {
                    let close =
                        at + 1 + html[at + 1..].find(quote as char).expect("a closed quote");
                    value = Some(html[at + 1..close].to_owned());
                    at = close + 1;
                } else {
                    let end = at
                        + html[at..]
                            .find(|c: char| c.is_ascii_whitespace() || c == '>')
                            .expect("a value ends");
                    value = Some(html[at..end].to_owned());
                    at = end;
                }
            }
            attributes.push((attribute, value));
        }
        let mut content = String::new();
        if name == "script" || name == "style" {
            let close = format!("</{name}");
            let end = at
                + html[at..]
                    .to_ascii_lowercase()
                    .find(&close)
                    .expect("a closed element");
            content = html[at..end].to_owned();
            at = end;
        }
        tags.push(Tag {
            name,
            attributes,
            content,
        });
    }
    tags
}

#[test]
fn the_html_scanner_finds_inline_script_style_and_handlers() {
    let tags = start_tags(
        "<!doctype html><!-- <script>x</script> --><p style='color:red' onclick=go>t</p>\
         <script>alert(1)</script><STYLE>p{}</STYLE><img src=\"a.png\"/>",
    );
    let names: Vec<&str> = tags.iter().map(|tag| tag.name.as_str()).collect();
    assert_eq!(names, ["p", "script", "style", "img"]);
    assert_eq!(tags[0].attribute("style"), Some("color:red"));
    assert_eq!(tags[0].attribute("onclick"), Some("go"));
    assert_eq!(tags[1].content, "alert(1)");
    assert_eq!(tags[2].content, "p{}");
    assert_eq!(tags[3].attribute("src"), Some("a.png"));
}

/// The ES modules a module imports (`from './x.mjs'`, `import('./x.mjs')`).
fn imports(module: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for marker in [
        "from '",
        "from \"",
        "import('",
        "import(\"",
        "import '",
        "import \"",
    ] {
        for (at, _) in module.match_indices(marker) {
            let rest = &module[at + marker.len()..];
            let quote = marker.chars().last().expect("a quote");
            if let Some(end) = rest.find(quote) {
                found.insert(rest[..end].to_owned());
            }
        }
    }
    found
}

// ---- served, and locked down ----------------------------------------------------------

#[test]
fn console_is_served_without_the_token_with_a_locking_content_security_policy() {
    let console = Console::start();
    let page = console.get("/console/", false);
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    page.assert_locked_down("/console/");
    assert!(
        page.body.contains("<form id=\"login-form\""),
        "{}",
        page.body
    );
    assert_eq!(console.get("/console/index.html", false).body, page.body);
    // The same with the token: the page holds no data, the token changes nothing.
    let with_token = console.get("/console/", true);
    assert_eq!(with_token.status, 200);
    assert_eq!(with_token.body, page.body);
}

#[test]
fn console_page_has_no_inline_script_or_style_and_nothing_from_outside() {
    let console = Console::start();
    let page = console.get("/console/", false);
    let tags = start_tags(&page.body);
    assert!(
        tags.iter().any(|tag| tag.name == "script"),
        "no script at all"
    );
    for tag in &tags {
        assert_ne!(tag.name, "style", "an inline <style>: {tag:?}");
        for (name, value) in &tag.attributes {
            assert_ne!(name, "style", "an inline style attribute: {tag:?}");
            assert!(!name.starts_with("on"), "an inline handler: {tag:?}");
            if name == "src" || name == "href" || name == "action" {
                let url = value.as_deref().unwrap_or_default();
                assert!(
                    !url.contains(':') && !url.starts_with("//"),
                    "{name}={url:?} leaves the console's own files"
                );
            }
        }
        if tag.name == "script" {
            assert_eq!(tag.attribute("type"), Some("module"), "{tag:?}");
            assert!(tag.attribute("src").is_some(), "an inline script: {tag:?}");
            assert!(
                tag.content.trim().is_empty(),
                "a script with inline text: {tag:?}"
            );
        }
    }
    // Every control is labelled: an <input> by a <label for=…> (or an aria-label, or by
    // being inside its label), checked in the browser test as well.
    let labelled: BTreeSet<&str> = tags
        .iter()
        .filter(|tag| tag.name == "label")
        .filter_map(|tag| tag.attribute("for"))
        .collect();
    for input in tags.iter().filter(|tag| tag.name == "input") {
        let id = input.attribute("id").unwrap_or_default();
        let nested = input.attribute("type") == Some("checkbox");
        assert!(
            labelled.contains(id) || input.attribute("aria-label").is_some() || nested,
            "an input without a label: {input:?}"
        );
    }
}

#[test]
fn console_files_are_served_with_their_types_and_the_same_headers() {
    let console = Console::start();
    let page = console.get("/console/", false);
    let mut files: Vec<(String, &str)> = Vec::new();
    for tag in start_tags(&page.body) {
        match (tag.name.as_str(), tag.attribute("rel")) {
            ("script", _) => {
                files.push((tag.attribute("src").expect("src").into(), "text/javascript"))
            }
            ("link", Some("stylesheet")) => {
                files.push((tag.attribute("href").expect("href").into(), "text/css"))
            }
            ("link", Some("icon")) => {
                files.push((tag.attribute("href").expect("href").into(), "image/svg+xml"))
            }
            _ => {}
        }
    }
    assert!(files.len() >= 3, "{files:?}");
    let mut seen = BTreeSet::new();
    while let Some((file, content_type)) = files.pop() {
        if !seen.insert(file.clone()) {
            continue;
        }
        let path = format!("/console/{}", file.trim_start_matches("./"));
        let answer = console.get(&path, false);
        assert_eq!(answer.status, 200, "{path}");
        let served_type = answer.header("content-type").unwrap_or_default();
        assert!(
            served_type.starts_with(content_type),
            "{path}: {served_type:?}, not {content_type}"
        );
        answer.assert_locked_down(&path);
        if content_type == "text/javascript" {
            let body = &answer.body;
            for import in imports(body) {
                assert!(
                    import.starts_with("./"),
                    "{path} imports {import} from outside"
                );
                files.push((import, "text/javascript"));
            }
            // The token stays in the tab's sessionStorage; names are shown as text.
            for banned in [
                "localStorage",
                "document.cookie",
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "http://",
                "https://",
            ] {
                assert!(!body.contains(banned), "{path} uses {banned}");
            }
        }
        if content_type == "text/css" {
            assert!(!answer.body.contains("@import"), "{path}");
            assert!(!answer.body.contains("url("), "{path}");
        }
    }
    // api.mjs and format.mjs were found through console.mjs's imports.
    assert!(seen.contains("./api.mjs"), "{seen:?}");
    assert!(seen.contains("./format.mjs"), "{seen:?}");
}

#[test]
fn console_without_its_slash_redirects_to_it() {
    let console = Console::start();
    let answer = console.get("/console", false);
    assert_eq!(answer.status, 308, "{}", answer.body);
    assert_eq!(answer.header("location"), Some("/console/"));
    answer.assert_locked_down("/console");
}

#[test]
fn console_off_answers_404_and_the_api_is_unchanged() {
    let console = Console::start_with(|config| config.set("admin", "console", false));
    for token in [false, true] {
        for path in ["/console/", "/console", "/console/console.mjs"] {
            let answer = console.get(path, token);
            assert_eq!(
                answer.status, 404,
                "{path} (token: {token}): {}",
                answer.body
            );
            assert!(!answer.body.contains("<html"), "{}", answer.body);
        }
    }
    assert_eq!(console.get("/v1/users", false).status, 401);
    assert_eq!(console.get("/v1/users", true).status, 200);
    assert_eq!(console.get("/healthz", false).status, 200);
}

#[test]
fn every_other_route_still_needs_the_token() {
    let console = Console::start();
    for path in [
        "/v1/users",
        "/v1/node",
        "/metrics",
        "/v1/users/alice/connections",
        "/console/nothing.js",
        "/console//",
        "/consoles",
    ] {
        let answer = console.get(path, false);
        assert_eq!(answer.status, 401, "{path}: {}", answer.body);
    }
    // Paths a browser would normalize, sent as written: no route outside the console's
    // files opens without the token.
    for target in [
        "/console/../v1/users",
        "/console/%2e%2e/v1/users",
        "/console/..%2fv1/users",
        "/console/./../metrics",
    ] {
        let (status, answer) = raw_get(console.admin, target);
        assert!(
            status == 401 || status == 404,
            "{target}: {status}\n{answer}"
        );
        assert!(!answer.contains("alice"), "{target} leaked data:\n{answer}");
        assert!(
            !answer.contains("tether_"),
            "{target} leaked metrics:\n{answer}"
        );
    }
    let answer = console.get("/console/", false);
    assert_eq!(answer.status, 200);
}

// ---- GET /v1/node ---------------------------------------------------------------------

#[test]
fn node_route_answers_the_node_and_its_live_figures() {
    let console = Console::start();
    let (status, _) = admin_call(&console.base, None, "GET", "/v1/node", None);
    assert_eq!(status, 401);
    let _alice = console.server.logged_in("alice", "pw-alice");
    let mut anonymous = console.server.client();
    anonymous.send(&["login", "bob", "wrong"]);
    anonymous.expect(&["login_invalid"]);
    let (status, body) = admin_call(
        &console.base,
        Some(TOKEN),
        "POST",
        "/v1/events",
        Some(r#"{"user":"alice","text":"x"}"#),
    );
    assert_eq!(status, 202, "{body}");
    let node = console.json("/v1/node");
    assert_eq!(node["status"], "ok", "{node}");
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"), "{node}");
    assert!(node["uptime_seconds"].is_u64(), "{node}");
    assert_eq!(
        node["users"],
        serde_json::json!({"store": "file", "state": "ok", "count": 3, "reloads_refused": 0}),
        "{node}"
    );
    assert!(node["cluster"].is_null(), "alone: {node}");
    assert_eq!(node["connections"]["open"], 2, "{node}");
    assert_eq!(node["connections"]["bound"], 1, "{node}");
    // Other transports (WebSocket) may be listed beside these, at 0.
    let transports = &node["connections"]["transports"];
    assert_eq!(
        (&transports["tcp"], &transports["tls"]),
        (&2.into(), &0.into()),
        "{node}"
    );
    assert_eq!(
        node["logins"],
        serde_json::json!({"valid": 1, "invalid": 1, "throttled": 0, "unchecked": 0}),
        "{node}"
    );
    assert_eq!(node["events"]["published"], 1, "{node}");
    assert!(node["events"]["delivered"].is_u64(), "{node}");
    assert_eq!(node["password_checks_waiting"], 0, "{node}");
    // The history: one sample now, one every 2 s, counters as rates.
    let mut node = node;
    let sampled = crate::common::wait_until(Duration::from_secs(10), || {
        node = console.json("/v1/node");
        node["history"]["connections"]
            .as_array()
            .and_then(|values| values.last())
            .is_some_and(|last| last == 2)
    });
    assert!(sampled, "{node}");
    let history = &node["history"];
    assert_eq!(history["interval_seconds"], 2, "{history}");
    let length = history["connections"].as_array().map(Vec::len);
    for key in [
        "logins_per_second",
        "events_per_second",
        "password_checks_waiting",
    ] {
        assert_eq!(
            history[key].as_array().map(Vec::len),
            length,
            "{key}: {history}"
        );
    }
    // Live: a connection that leaves is gone from the next answer.
    drop(anonymous);
    let gone = crate::common::wait_until(Duration::from_secs(5), || {
        console.json("/v1/node")["connections"]["open"] == 1
    });
    assert!(gone, "{}", console.json("/v1/node"));
}

#[test]
fn node_route_counts_tls_connections_apart() {
    let Some(certs) = ca_and_server_pair("console") else {
        return;
    };
    let dir = certs.path();
    let console = Console::start_with(|config| {
        config.set("server", "tls", {
            let mut tls = toml::Table::new();
            tls.insert("listen".into(), "127.0.0.1:0".into());
            tls.insert(
                "cert_file".into(),
                dir.join("server.pem").to_string_lossy().into_owned().into(),
            );
            tls.insert(
                "key_file".into(),
                dir.join("server.key").to_string_lossy().into_owned().into(),
            );
            toml::Value::Table(tls)
        })
    });
    console
        .server
        .wait_for_log("(clients, TLS)", Duration::from_secs(10));
    let tls_addr = tls_listen_addr(&console.server.stderr_text());
    let mut over_tls =
        TlsClient::connect(tls_addr, client_config(&dir.join("console-ca.pem"), None))
            .expect("handshake");
    over_tls.send(&["login", "alice", "pw-alice"]);
    assert_eq!(over_tls.try_recv().expect("answer"), ["login_valid"]);
    let _plain = TestClient::connect(console.server.addr());
    // The plaintext connection counts once the server has taken it from the kernel.
    let mut node = Value::Null;
    let counted = crate::common::wait_until(Duration::from_secs(10), || {
        node = console.json("/v1/node");
        node["connections"]["transports"]["tcp"] == 1
    });
    assert!(counted, "{node}");
    let transports = &node["connections"]["transports"];
    assert_eq!(transports["tls"], 1, "{node}");
    assert_eq!(node["connections"]["open"], 2, "{node}");
}

/// The TLS listener's address, from its `listening on ADDR (clients, TLS)` line.
fn tls_listen_addr(log: &str) -> SocketAddr {
    log.lines()
        .filter(|line| line.contains("listening on") && line.contains("(clients, TLS)"))
        .find_map(|line| {
            let rest = &line[line.find("listening on ")? + "listening on ".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no TLS listening line in:\n{log}"))
}

// ---- GET /v1/users?search=…&online=… ------------------------------------------------

#[test]
fn user_list_searches_names_with_ascii_letters_folded() {
    let console = Console::start_with_users(&["Alice", "alina", "bob", "MALIK", "Алиса", "zed"]);
    let (names, next) = console.names("/v1/users?search=ali");
    assert_eq!(names, ["Alice", "MALIK", "alina"]);
    assert!(next.is_null());
    let (names, next) = console.names("/v1/users?search=ALI&limit=2");
    assert_eq!(names, ["Alice", "MALIK"]);
    assert_eq!(next, "MALIK");
    let (names, next) = console.names("/v1/users?search=ALI&limit=2&after=MALIK");
    assert_eq!(names, ["alina"]);
    assert!(next.is_null());
    // Not ASCII: compared exactly (no Unicode case folding).
    assert_eq!(console.names("/v1/users?search=%D0%90%D0%BB").0, ["Алиса"]);
    assert!(console.names("/v1/users?search=%D0%B0%D0%BB").0.is_empty());
    assert_eq!(
        console.names("/v1/users?search=").0.len(),
        6,
        "empty: no filter"
    );
    assert!(console.names("/v1/users?search=nobody").0.is_empty());
    // What can be no part of a name is refused.
    for bad in ["%01", "%7F", &"x".repeat(129)] {
        let (status, body) = console.status(&format!("/v1/users?search={bad}"));
        assert_eq!(status, 400, "search={bad}: {body}");
        assert!(body.contains("search"), "{body}");
    }
}

#[test]
fn user_list_keeps_online_or_offline_users_and_pages_through_them() {
    let names = ["a1", "a2", "a3", "a4", "a5", "a6"];
    let console = Console::start_with_users(&names);
    let _a2 = console.server.logged_in("a2", "pw");
    let _a5 = [
        console.server.logged_in("a5", "pw"),
        console.server.logged_in("a5", "pw"),
    ];
    let _a6 = console.server.logged_in("a6", "pw");
    let page = console.json("/v1/users?online=true");
    assert_eq!(
        page,
        serde_json::json!({"next": null, "users": [
            {"name": "a2", "connections": 1},
            {"name": "a5", "connections": 2},
            {"name": "a6", "connections": 1},
        ]})
    );
    assert_eq!(
        console.names("/v1/users?online=true&limit=2"),
        (vec!["a2".to_owned(), "a5".to_owned()], Value::from("a5"))
    );
    let (names, next) = console.names("/v1/users?online=true&limit=2&after=a5");
    assert_eq!(names, ["a6"]);
    assert!(next.is_null(), "the last page: {next}");
    let (names, next) = console.names("/v1/users?online=false");
    assert_eq!(names, ["a1", "a3", "a4"]);
    assert!(next.is_null());
    let (names, next) = console.names("/v1/users?online=false&limit=1&after=a1");
    assert_eq!(names, ["a3"]);
    assert_eq!(next, "a3");
    let (names, _) = console.names("/v1/users?online=true&search=6");
    assert_eq!(names, ["a6"]);
    // A page that fills up on the very last name says so.
    let (names, next) = console.names("/v1/users?online=true&limit=1&after=a5");
    assert_eq!(names, ["a6"]);
    assert!(next.is_null(), "{next}");
    for bad in ["online=yes", "online=1", "online="] {
        let (status, body) = console.status(&format!("/v1/users?{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[test]
fn the_online_filter_examines_a_bounded_number_of_names_per_request() {
    // 10,001 users: the only one online sorts last, past what one request examines.
    let hash = cheap_hash("pw");
    let names: Vec<String> = (0..=10_000).map(|n| format!("u{n:05}")).collect();
    let users: Vec<(&str, &str)> = names
        .iter()
        .map(|name| (name.as_str(), hash.as_str()))
        .collect();
    let console = Console::around(TestServer::start_with_hashes(&config(), &users));
    let _last = console.server.logged_in("u10000", "pw");
    let (found, next) = console.names("/v1/users?online=true&limit=10");
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(next, "u09999", "where the next request goes on");
    let (found, next) = console.names("/v1/users?online=true&limit=10&after=u09999");
    assert_eq!(found, ["u10000"]);
    assert!(next.is_null());
}

#[test]
fn user_list_search_and_online_work_on_postgresql() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let config = TestConfig::new()
        .auth("database", postgres.url())
        .auth("bcrypt_cost", 4);
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("server.toml"), config.to_toml()).expect("config");
    let mut init = crate::common::tether_command(&dir.path().join("server.toml"));
    init.args(["db", "init"]);
    let ran = run_to_exit(init, Duration::from_secs(30));
    assert!(ran.status.success(), "{ran:?}");
    for name in ["Alice", "alina", "bob", "MALIK", "100%_x"] {
        postgres.psql(&format!(
            "INSERT INTO tether_users (name, password_hash) VALUES ('{name}', '{}')",
            cheap_hash("pw")
        ));
    }
    let console = Console::around(TestServer::start(
        &config
            .set("admin", "listen", "127.0.0.1:0")
            .set("admin", "token", TOKEN),
        &[],
    ));
    assert_eq!(
        console.names("/v1/users?search=ALI").0,
        ["Alice", "MALIK", "alina"]
    );
    let (names, next) = console.names("/v1/users?search=ali&limit=1&after=Alice");
    assert_eq!(names, ["MALIK"]);
    assert_eq!(next, "MALIK");
    // LIKE's wildcards are plain text here.
    assert_eq!(console.names("/v1/users?search=%25_").0, ["100%_x"]);
    assert!(console.names("/v1/users?search=_%25").0.is_empty());
    let _bob = console.server.logged_in("bob", "pw");
    assert_eq!(console.names("/v1/users?online=true").0, ["bob"]);
    assert_eq!(
        console.names("/v1/users?online=false&search=a").0,
        ["Alice", "MALIK", "alina"]
    );
    let node = console.json("/v1/node");
    assert_eq!(
        node["users"],
        serde_json::json!({"store": "postgresql", "state": "ok"}),
        "{node}"
    );
}

#[test]
fn in_a_cluster_the_node_names_itself_and_the_live_nodes_and_online_counts_every_node() {
    let Some(mut cluster) =
        crate::common::cluster::Cluster::start(2, &[("alice", "pw-a"), ("bob", "pw-b")])
    else {
        return;
    };
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let _alice = n2.login("alice", "pw-a");
    cluster.wait_connections("alice", 1);
    // The live nodes are those of n1's last heartbeat (every 2 s): n2 may have joined after.
    fn node_of_n1(cluster: &crate::common::cluster::Cluster) -> Value {
        let (status, node) = cluster.node(1).call("GET", "/v1/node", None);
        assert_eq!(status, 200, "{node}");
        node
    }
    let both = serde_json::json!({"node": "n1", "state": "connected", "nodes": ["n1", "n2"]});
    let listed = crate::common::wait_until(Duration::from_secs(10), || {
        node_of_n1(&cluster)["cluster"] == both
    });
    assert!(listed, "{}", node_of_n1(&cluster));
    assert_eq!(
        node_of_n1(&cluster)["connections"]["open"],
        0,
        "this node's own: {}",
        node_of_n1(&cluster)
    );
    let (status, page) = n1.call("GET", "/v1/users?online=true", None);
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page,
        serde_json::json!({"next": null, "users": [{"name": "alice", "connections": 1}]})
    );
    let (status, page) = n1.call("GET", "/v1/users?online=false", None);
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["users"],
        serde_json::json!([{"name": "bob", "connections": 0}])
    );
    // A node killed leaves the list once silent for 10 s (SPEC §8); 5 s more for a loaded
    // machine's timers and this poll.
    let killed = cluster.nodes.remove(1);
    killed.server.signal(nix::sys::signal::Signal::SIGKILL);
    let alone = serde_json::json!({"node": "n1", "state": "connected", "nodes": ["n1"]});
    let forgotten = crate::common::wait_until(Duration::from_secs(15), || {
        node_of_n1(&cluster)["cluster"] == alone
    });
    assert!(forgotten, "{}", node_of_n1(&cluster));
}

// ---- the page in a browser, and its logic -------------------------------------------

/// `tests/browser/`, the npm package of the browser test.
fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Whether `node` runs; skips (fails under CI) when it does not.
fn node_available() -> bool {
    let works = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !works {
        skip_without(
            "the web console's tests need Node.js (`node`)",
            "apt-get install nodejs npm",
        );
    }
    works
}

#[test]
fn console_page_logic_passes_its_unit_tests() {
    if !node_available() {
        return;
    }
    let mut command = Command::new("node");
    command
        .args(["--test", "format.test.mjs"])
        .current_dir(browser_dir());
    let ran = run_to_exit(command, Duration::from_secs(60));
    assert!(
        ran.status.success(),
        "node --test failed:\n{}\n{}",
        ran.stdout,
        ran.stderr
    );
    assert!(ran.stdout.contains("# fail 0"), "{}", ran.stdout);
}

#[test]
fn console_in_chromium_logs_in_sees_who_is_online_and_acts_on_a_user() {
    if !node_available() {
        return;
    }
    let browser_dir = browser_dir();
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        return skip_without(
            "the browser test needs playwright-core",
            "run `npm ci` in tests/browser (it downloads no browser)",
        );
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return skip_without(
            &format!("the browser test needs Chromium at {chromium}"),
            "apt-get install chromium (or set CHROMIUM)",
        );
    }
    let console = Console::start();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    let mut command = Command::new("node");
    command
        .arg("console.test.mjs")
        .current_dir(&browser_dir)
        .env("TETHER_ADMIN", &console.base)
        .env("TETHER_CLIENT", console.server.addr().to_string())
        .env("TETHER_TOKEN", TOKEN)
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", &chromium)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
    let ran = run_to_exit(command, Duration::from_secs(180));
    println!("{}", ran.stdout);
    assert!(
        ran.status.success(),
        "the browser test failed:\n{}\n{}\nserver log:\n{}",
        ran.stdout,
        ran.stderr,
        console.server.stderr_text()
    );
    assert!(
        shots.join("console.png").is_file(),
        "no screenshot in {shots:?}"
    );
}
