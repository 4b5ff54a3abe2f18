//! HAProxy in front of a server under test: a real load balancer sending the PROXY
//! protocol header (v1 or v2) on free loopback ports.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether the `haproxy` command is there. Outside CI a missing one skips the test (one
/// line says so and how to install it); under `CI=true` it fails the test.
pub fn haproxy_available() -> bool {
    let found = Command::new("haproxy").arg("-v").output().is_ok();
    if !found {
        super::skip_without("no haproxy command", "apt-get install haproxy");
    }
    found
}

/// A running HAProxy forwarding one loopback port to a backend; killed on drop.
pub struct Haproxy {
    /// The process.
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
}

impl Haproxy {
    /// Starts HAProxy in TCP mode in `dir`, forwarding a free loopback port to `backend`
    /// with the server option `send_proxy` (`send-proxy` for v1, `send-proxy-v2`).
    pub fn start(dir: &Path, backend: SocketAddr, send_proxy: &str) -> Self {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|free| free.local_addr())
            .expect("a free port");
        let config = format!(
            "global\n    maxconn 1000\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
             frontend clients\n    bind {addr}\n    default_backend tether\n\
             backend tether\n    server tether {backend} {send_proxy}\n"
        );
        let path = dir.join(format!("haproxy-{send_proxy}.cfg"));
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let mut haproxy = Self { child, addr };
        let up = super::wait_until(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        if !up {
            let status = haproxy.child.try_wait();
            panic!("haproxy did not listen on {addr} ({status:?})");
        }
        haproxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
