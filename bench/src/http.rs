//! A minimal HTTP/1.1 keep-alive client for the admin API: one request at a time on one
//! connection, bodies delimited by `Content-Length` (what a JSON API answers with).

use crate::Fallible;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Longest response body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// One keep-alive connection to an HTTP server; reconnects after `Connection: close`.
pub struct HttpClient {
    /// The server.
    addr: SocketAddr,
    /// Sent as `Authorization: Bearer …` when set.
    token: Option<String>,
    /// The open connection, if any.
    stream: Option<TcpStream>,
    /// Received bytes not yet consumed.
    input: Vec<u8>,
    /// The request being written, reused.
    request: Vec<u8>,
}

/// A response: status and body.
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body's bytes.
    pub body: Vec<u8>,
}

impl HttpClient {
    /// A client for `addr`; connects on the first request.
    pub fn new(addr: SocketAddr, token: Option<String>) -> Self {
        Self {
            addr,
            token,
            stream: None,
            input: Vec::with_capacity(4096),
            request: Vec::with_capacity(512),
        }
    }

    /// Sends `POST path` with a JSON body and reads the whole response.
    pub async fn post_json(&mut self, path: &str, body: &[u8]) -> Fallible<Response> {
        self.request("POST", path, Some(body)).await
    }

    /// Sends `GET path` and reads the whole response.
    pub async fn get(&mut self, path: &str) -> Fallible<Response> {
        self.request("GET", path, None).await
    }

    /// Sends one request (a JSON body if any) and reads the whole response.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Fallible<Response> {
        use std::io::Write;
        self.request.clear();
        // Writing to a Vec cannot fail.
        let _ = write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n",
            self.addr
        );
        if let Some(body) = body {
            let _ = write!(
                self.request,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        if let Some(token) = &self.token {
            let _ = write!(self.request, "Authorization: Bearer {token}\r\n");
        }
        self.request.extend_from_slice(b"\r\n");
        if let Some(body) = body {
            self.request.extend_from_slice(body);
        }
        let result = self.exchange().await;
        if result.is_err() {
            self.stream = None;
        }
        result.map_err(|err| format!("{method} http://{}{path}: {err}", self.addr))
    }

    async fn exchange(&mut self) -> Fallible<Response> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|err| format!("cannot connect: {err}"))?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
            self.input.clear();
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err("no connection".into());
        };
        stream
            .write_all(&self.request)
            .await
            .map_err(|err| format!("write failed: {err}"))?;
        let head_end = loop {
            if let Some(at) = memchr::memmem::find(&self.input, b"\r\n\r\n") {
                break at + 4;
            }
            if self.input.len() > MAX_HEAD {
                return Err(format!("response head longer than {MAX_HEAD} bytes"));
            }
            read_more(stream, &mut self.input).await?;
        };
        let head = std::str::from_utf8(&self.input[..head_end])
            .map_err(|_| "response head is not UTF-8".to_string())?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut length = 0;
        let mut close = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value
                    .parse()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(format!("Transfer-Encoding {value:?} is not supported"));
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        if length > MAX_BODY {
            return Err(format!("response body of {length} bytes is too long"));
        }
        while self.input.len() < head_end + length {
            read_more(stream, &mut self.input).await?;
        }
        let body = self.input[head_end..head_end + length].to_vec();
        self.input.drain(..head_end + length);
        if close {
            self.stream = None;
        }
        Ok(Response { status, body })
    }
}

async fn read_more(stream: &mut TcpStream, input: &mut Vec<u8>) -> Fallible<()> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) => Err("the server closed the connection".into()),
        Ok(read) => {
            input.extend_from_slice(&chunk[..read]);
            Ok(())
        }
        Err(err) => Err(format!("read failed: {err}")),
    }
}
