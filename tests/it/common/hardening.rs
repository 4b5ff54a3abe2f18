//! What the hardening tests need besides the protocol harness: a look at the server
//! process through `/proc` (memory, descriptors, CPU time), sockets with options a plain
//! `TcpStream` cannot set before connecting, and a seeded byte generator.

use socket2::{Domain, SockAddr, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

/// Open sockets of process `pid`: its listeners and its connections, nothing else (other
/// descriptors come and go with threads and file watchers).
pub fn open_sockets(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .filter_map(Result::ok)
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

/// The TCP ports process `pid` listens on (its sockets in state LISTEN, IPv4 and IPv6,
/// from `/proc/PID/net/tcp*` matched to its descriptors by inode), sorted.
pub fn listening_ports(pid: i32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let target = std::fs::read_link(entry.path()).ok()?;
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports: Vec<u16> = ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let listening = *fields.get(3)? == "0A";
                    let port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
                    (listening && inodes.contains(*fields.get(9)?)).then_some(port)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    ports.sort_unstable();
    ports
}

/// How many connections wait in the accept queue of the socket listening on `port`, as
/// `/proc/PID/net/tcp*` of process `pid` shows it (a listener's `rx_queue` is its accept
/// backlog): handshakes the kernel completed that the server has not accepted. `None`
/// when nothing listens on `port`.
pub fn accept_queue(pid: i32, port: u16) -> Option<u32> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .find_map(|text| {
            text.lines().skip(1).find_map(|line| {
                // sl local_address rem_address st tx_queue:rx_queue ...
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port =
                    u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
                if *fields.get(3)? != "0A" || local_port != port {
                    return None;
                }
                u32::from_str_radix(fields.get(4)?.split(':').nth(1)?, 16).ok()
            })
        })
}

/// Raises this process's soft open-file limit to at least `needed` (up to the hard limit),
/// so a test holding many sockets fails for what it tests, not with EMFILE; panics when the
/// hard limit is lower, saying so.
pub fn allow_open_files(needed: u64) {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
    if soft >= needed {
        return;
    }
    assert!(
        hard >= needed,
        "this test holds {needed} descriptors; the hard open-file limit is {hard} (raise it: ulimit -Hn)"
    );
    rlimit::setrlimit(rlimit::Resource::NOFILE, needed, hard).expect("raise the open-file limit");
}

/// CPU time (user + system) process `pid` has used, in clock ticks (1/100 s on Linux).
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    parse_stat(&stat).expect("a stat line").cpu_ticks
}

/// One thread of a process, as `/proc/PID/task/TID/stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadStat {
    /// The thread's id.
    pub tid: u32,
    /// Its name (`comm`).
    pub name: String,
    /// Its nice value.
    pub nice: i64,
    /// CPU time (user + system) it has used, in clock ticks (1/100 s on Linux).
    pub cpu_ticks: u64,
}

/// The threads of process `pid` (one that ends while they are read is left out).
pub fn threads(pid: i32) -> Vec<ThreadStat> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
        .filter_map(|stat| parse_stat(&stat))
        .collect()
}

/// A `stat` line of proc(5): `ID (NAME) STATE ...`.
fn parse_stat(stat: &str) -> Option<ThreadStat> {
    let (tid, rest) = stat.split_once(" (")?;
    // The name may hold spaces and parentheses: it ends at the last `) `.
    let (name, after_name) = rest.rsplit_once(") ")?;
    // Fields 14, 15 and 19 of stat(5) are utime, stime and nice; `after_name` starts at
    // field 3.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ThreadStat {
        tid: tid.parse().ok()?,
        name: name.to_owned(),
        nice: fields.get(16)?.parse().ok()?,
        cpu_ticks: utime + stime,
    })
}

/// The loopback address `127.0.x.y` for `index` (x, y from 1), so many clients come from
/// many source addresses without leaving the machine.
pub fn loopback_source(index: u32) -> Ipv4Addr {
    let x = 1 + (index / 250) % 250;
    let y = 1 + index % 250;
    Ipv4Addr::new(127, 0, x as u8, y as u8)
}

/// Options for [`connect_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketOptions {
    /// Bind to this local address first (any port).
    pub source: Option<Ipv4Addr>,
    /// `SO_RCVBUF` before connecting, so the kernel takes little of what the server sends.
    pub receive_buffer: Option<usize>,
}

/// Connects to `addr` with `options`; the stream is blocking, with `TCP_NODELAY`.
pub fn connect_with(addr: SocketAddr, options: SocketOptions) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if let Some(size) = options.receive_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(source) = options.source {
        socket.bind(&SockAddr::from(SocketAddr::from((source, 0))))?;
    }
    socket.connect_timeout(&SockAddr::from(addr), Duration::from_secs(5))?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}

/// Closes `stream` with a reset (`SO_LINGER` 0) instead of an orderly FIN.
pub fn reset(stream: TcpStream) {
    let socket = Socket::from(stream);
    socket
        .set_linger(Some(Duration::ZERO))
        .expect("set SO_LINGER 0");
    drop(socket);
}

/// A small seeded generator (xorshift64*), so failures are reproducible without a crate.
pub struct Bytes64(u64);

impl Bytes64 {
    /// A generator seeded with `seed` (0 is replaced).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next pseudo-random 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}
