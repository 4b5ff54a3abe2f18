//! The server side of a WebSocket upgrade (SPEC §11): the HTTP/1.1 request head read
//! (bounded, 8 KiB), parsed with `httparse` and answered — `101` with the accept key
//! (tungstenite's `derive_accept_key`) and the subprotocol `tether.v1` when the client
//! offers it; `404` for another path, `426` for a request that asks for no upgrade, `403`
//! for an `Origin` not allowed, `400`/`431` for a request that is not one. Here too the
//! connection's client address is settled for a peer in `forwarded_from`: the last address
//! of its `X-Forwarded-For`.

use crate::protocol::proxy_header::ProxyTrust;
use crate::util::metrics::WsHandshakeFailure;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a client has from its connection (or the end of its PROXY header) to the end
/// of its upgrade, TLS handshake included for `wss` (SPEC §11).
pub(crate) const WS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request head read; a longer one gets `431`.
const MAX_HEAD: usize = 8 * 1024;
/// The most request headers parsed; more get `431`.
const MAX_HEADERS: usize = 64;
/// The subprotocol selected when the client offers it.
pub const SUBPROTOCOL: &str = "tether.v1";

/// What the WebSocket listener accepts (SPEC §4 `[server.websocket]`).
#[derive(Debug, Clone)]
pub struct WebSocketPolicy {
    /// The path upgrades are accepted on (`path`); the query string is not compared.
    pub path: String,
    /// Browser origins accepted (`scheme://host[:port]`, compared case-insensitively); a
    /// `"*"` accepts any. A request without `Origin` is always accepted.
    pub allowed_origins: Vec<String>,
    /// Peers (reverse proxies) whose `X-Forwarded-For` names the client (its last
    /// address); other peers' is ignored.
    pub forwarded_from: ProxyTrust,
}

impl Default for WebSocketPolicy {
    fn default() -> Self {
        Self {
            path: "/".to_string(),
            allowed_origins: Vec::new(),
            forwarded_from: ProxyTrust::default(),
        }
    }
}

impl WebSocketPolicy {
    /// Whether a request carrying `Origin: origin` is accepted.
    fn allows_origin(&self, origin: &str) -> bool {
        let origin = origin.trim();
        self.allowed_origins
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
    }
}

/// A finished upgrade.
pub(crate) struct Upgraded {
    /// The client's address: `X-Forwarded-For`'s last one from a trusted proxy, else the
    /// one known before (the peer's, or a PROXY header's).
    pub client: SocketAddr,
    /// What the client sent after its request head (its first frames), already read.
    pub early: Vec<u8>,
}

/// Why an upgrade failed, and what the log says of it.
pub(crate) struct Refused {
    /// The cause counted.
    pub cause: WsHandshakeFailure,
    /// What went wrong.
    pub why: String,
}

/// Reads the upgrade request on `stream` from `client` and answers it; the caller bounds
/// the time. The response to a refused request is written (best effort) before the
/// refusal is answered.
pub(crate) async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    client: SocketAddr,
    policy: &WebSocketPolicy,
) -> Result<Upgraded, Refused> {
    let mut head = Vec::with_capacity(1024);
    let closed = |why: String| Refused {
        cause: WsHandshakeFailure::Closed,
        why,
    };
    loop {
        if head.len() >= MAX_HEAD {
            return Err(refuse(stream, Answer::TooLarge, "request head over 8 KiB").await);
        }
        let mut chunk = [0u8; 1024];
        let want = chunk.len().min(MAX_HEAD - head.len());
        let read = stream
            .read(&mut chunk[..want])
            .await
            .map_err(|err| closed(err.to_string()))?;
        if read == 0 {
            return Err(closed("closed before the end of the request".to_string()));
        }
        head.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(length)) => {
                let verdict = judge(&request, client, policy);
                let early = head[length..].to_vec();
                return match verdict {
                    Ok((response, client)) => {
                        // Flushed: over TLS the records must leave before the socket moves
                        // to its worker.
                        let written = match stream.write_all(response.as_bytes()).await {
                            Ok(()) => stream.flush().await,
                            Err(err) => Err(err),
                        };
                        written.map_err(|err| closed(err.to_string()))?;
                        Ok(Upgraded { client, early })
                    }
                    Err((answer, why)) => Err(refuse(stream, answer, &why).await),
                };
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(refuse(stream, Answer::TooLarge, "too many headers").await)
            }
            Err(err) => {
                let why = format!("not an HTTP request: {err}");
                return Err(refuse(stream, Answer::BadRequest, &why).await);
            }
        }
    }
}

/// A refusal's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    BadRequest,
    Forbidden,
    NotFound,
    UpgradeRequired,
    TooLarge,
}

impl Answer {
    fn cause(self) -> WsHandshakeFailure {
        match self {
            Self::BadRequest | Self::TooLarge => WsHandshakeFailure::Malformed,
            Self::Forbidden => WsHandshakeFailure::Origin,
            Self::NotFound => WsHandshakeFailure::NotFound,
            Self::UpgradeRequired => WsHandshakeFailure::NotUpgrade,
        }
    }

    fn response(self) -> &'static str {
        match self {
            Self::BadRequest => {
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\
                 Connection: close\r\n\r\nbad request\n"
            }
            Self::Forbidden => {
                "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 19\r\n\
                 Connection: close\r\n\r\norigin not allowed\n"
            }
            Self::NotFound => {
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\
                 Connection: close\r\n\r\nnot found\n"
            }
            Self::UpgradeRequired => {
                "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nContent-Type: text/plain\r\nContent-Length: 35\r\n\
                 Connection: close\r\n\r\na WebSocket upgrade is needed here\n"
            }
            Self::TooLarge => {
                "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            }
        }
    }
}

/// Writes `answer` (best effort) and shuts the sending side; answers the refusal.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, answer: Answer, why: &str) -> Refused {
    let _ = stream.write_all(answer.response().as_bytes()).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    Refused {
        cause: answer.cause(),
        why: why.to_string(),
    }
}

/// The values of every header named `name`, in order.
fn values<'a>(
    request: &'a httparse::Request<'_, '_>,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    request
        .headers
        .iter()
        .filter(move |header| header.name.eq_ignore_ascii_case(name))
        .filter_map(|header| std::str::from_utf8(header.value).ok())
}

/// Whether a comma-separated header `name` holds `token` (case-insensitively).
fn has_token(request: &httparse::Request<'_, '_>, name: &str, token: &str) -> bool {
    values(request, name)
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// The `101` response and the client's address for an acceptable request, else the
/// refusal and why.
fn judge(
    request: &httparse::Request<'_, '_>,
    client: SocketAddr,
    policy: &WebSocketPolicy,
) -> Result<(String, SocketAddr), (Answer, String)> {
    let path = request.path.unwrap_or("");
    let path = path.split('?').next().unwrap_or(path);
    if path != policy.path {
        return Err((
            Answer::NotFound,
            format!("path {path:?} is not the WebSocket path"),
        ));
    }
    let upgrade =
        has_token(request, "upgrade", "websocket") && has_token(request, "connection", "upgrade");
    if request.method != Some("GET") || request.version != Some(1) || !upgrade {
        return Err((
            Answer::UpgradeRequired,
            "not a WebSocket upgrade request".to_string(),
        ));
    }
    if let Some(origin) = values(request, "origin").next() {
        if !policy.allows_origin(origin) {
            let origin = crate::util::excerpt::Excerpt(origin.as_bytes());
            return Err((Answer::Forbidden, format!("origin {origin} not allowed")));
        }
    }
    if !values(request, "sec-websocket-version").any(|version| version.trim() == "13") {
        return Err((
            Answer::UpgradeRequired,
            "not WebSocket version 13".to_string(),
        ));
    }
    let Some(key) = values(request, "sec-websocket-key").next().map(str::trim) else {
        return Err((Answer::BadRequest, "no Sec-WebSocket-Key".to_string()));
    };
    if key.is_empty() {
        return Err((Answer::BadRequest, "an empty Sec-WebSocket-Key".to_string()));
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let protocol = if has_token(request, "sec-websocket-protocol", SUBPROTOCOL) {
        "Sec-WebSocket-Protocol: tether.v1\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
    );
    Ok((
        response,
        forwarded_client(request, client, &policy.forwarded_from),
    ))
}

/// The client's address: from a trusted proxy, the last address of the last
/// `X-Forwarded-For` header (port 0: a proxy names no port), else `peer`.
fn forwarded_client(
    request: &httparse::Request<'_, '_>,
    peer: SocketAddr,
    trust: &ProxyTrust,
) -> SocketAddr {
    if !trust.trusts(peer.ip()) {
        return peer;
    }
    let last = values(request, "x-forwarded-for")
        .last()
        .and_then(|value| value.rsplit(',').next())
        .map(str::trim);
    match last.and_then(parse_forwarded) {
        Some(ip) => SocketAddr::new(ip.to_canonical(), 0),
        None => {
            if let Some(value) = last {
                log::debug!(
                    "{peer}: X-Forwarded-For {} is not an address; the proxy's stands",
                    crate::util::excerpt::Excerpt(value.as_bytes())
                );
            }
            peer
        }
    }
}

/// An address as proxies write it in `X-Forwarded-For`: bare, or with a port, IPv6 in
/// brackets.
fn parse_forwarded(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|address| address.ip()))
        .or_else(|| {
            text.strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inner| inner.parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(request: &str, policy: &WebSocketPolicy) -> Result<(String, SocketAddr), Answer> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(request.as_bytes()).unwrap().is_complete());
        let peer = "127.0.0.9:5000".parse().unwrap();
        judge(&parsed, peer, policy).map_err(|(answer, _)| answer)
    }

    const UPGRADE: &str = "GET /ws?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    fn policy() -> WebSocketPolicy {
        WebSocketPolicy {
            path: "/ws".into(),
            allowed_origins: vec!["https://App.example.com".into()],
            forwarded_from: ProxyTrust::new(vec!["127.0.0.9/32".parse().unwrap()]),
        }
    }

    #[test]
    fn an_upgrade_gets_the_accept_key_of_rfc_6455_and_the_subprotocol_when_offered() {
        let (response, _) = judged(&format!("{UPGRADE}\r\n"), &policy()).unwrap();
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!response.contains("Sec-WebSocket-Protocol"));
        let offered = format!("{UPGRADE}Sec-WebSocket-Protocol: chat, tether.v1\r\n\r\n");
        let (response, _) = judged(&offered, &policy()).unwrap();
        assert!(response.contains("Sec-WebSocket-Protocol: tether.v1\r\n"));
    }

    #[test]
    fn paths_upgrades_and_origins_are_refused_with_their_status() {
        let other = UPGRADE.replace("/ws?x=1", "/other");
        assert_eq!(
            judged(&format!("{other}\r\n"), &policy()).unwrap_err(),
            Answer::NotFound
        );
        let plain = "GET /ws HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(
            judged(plain, &policy()).unwrap_err(),
            Answer::UpgradeRequired
        );
        let evil = format!("{UPGRADE}Origin: https://evil.example.com\r\n\r\n");
        assert_eq!(judged(&evil, &policy()).unwrap_err(), Answer::Forbidden);
        let good = format!("{UPGRADE}Origin: https://app.EXAMPLE.com\r\n\r\n");
        assert!(judged(&good, &policy()).is_ok());
        let any = WebSocketPolicy {
            allowed_origins: vec!["*".into()],
            ..policy()
        };
        assert!(judged(&evil, &any).is_ok());
    }

    #[test]
    fn x_forwarded_for_names_the_client_only_from_a_trusted_peer() {
        let forwarded = format!("{UPGRADE}X-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n\r\n");
        let (_, client) = judged(&forwarded, &policy()).unwrap();
        assert_eq!(client, "192.0.2.7:0".parse().unwrap());
        let untrusted = WebSocketPolicy {
            forwarded_from: ProxyTrust::default(),
            ..policy()
        };
        let (_, client) = judged(&forwarded, &untrusted).unwrap();
        assert_eq!(client, "127.0.0.9:5000".parse().unwrap());
        assert_eq!(
            parse_forwarded("[2001:db8::1]:443"),
            "2001:db8::1".parse().ok()
        );
        assert_eq!(parse_forwarded("[2001:db8::1]"), "2001:db8::1".parse().ok());
        assert_eq!(parse_forwarded("unknown"), None);
    }
}
