//! nginx's stream module in front of a server under test: a second real load balancer
//! sending the PROXY protocol header (`proxy_protocol on`, v1) on a free loopback port.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where Debian's `libnginx-mod-stream` puts the stream module.
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// Whether `nginx` and its stream module are there. Outside CI a missing one skips the test
/// (one line says so and how to install them); under `CI=true` it fails the test.
pub fn nginx_available() -> bool {
    let found =
        Command::new("nginx").arg("-v").output().is_ok() && Path::new(STREAM_MODULE).exists();
    if !found {
        super::skip_without(
            "no nginx command or stream module",
            "apt-get install nginx libnginx-mod-stream",
        );
    }
    found
}

/// A running nginx (one process, in the foreground) forwarding one loopback port to a
/// backend with `proxy_protocol on`; killed on drop.
pub struct Nginx {
    /// The process.
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
}

impl Nginx {
    /// Starts nginx with its files in `dir`, forwarding a free loopback port to `backend`.
    pub fn start(dir: &Path, backend: SocketAddr) -> Self {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|free| free.local_addr())
            .expect("a free port");
        let shown = dir.display();
        let config = format!(
            "load_module {STREAM_MODULE};\n\
             daemon off;\nmaster_process off;\nworker_processes 1;\n\
             pid {shown}/nginx.pid;\nerror_log {shown}/nginx-error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             stream {{\n    server {{\n        listen {addr};\n        proxy_pass {backend};\n\
                     proxy_protocol on;\n    }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config).expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Self { child, addr };
        let up = super::wait_until(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        if !up {
            let status = nginx.child.try_wait();
            let log = std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default();
            panic!("nginx did not listen on {addr} ({status:?}):\n{log}");
        }
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
