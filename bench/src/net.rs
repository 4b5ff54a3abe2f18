//! Connecting from several loopback source addresses, and the descriptor limit.
//!
//! One source address gives about 28,000 ephemeral ports towards one server port; spreading
//! connections over 127.0.0.1..=127.0.0.K multiplies that. Every target must be on the
//! loopback network: this tool sends no traffic anywhere else.

use crate::Fallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Instant;
use tokio::net::{TcpSocket, TcpStream};

/// Refuses any target outside 127.0.0.0/8 (or ::1).
pub fn check_loopback(addr: SocketAddr) -> Fallible<SocketAddr> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(format!(
            "{addr} is not a loopback address: tether-bench only drives servers on this machine"
        ))
    }
}

/// The source addresses 127.0.0.1 ..= 127.0.0.`count`.
pub fn sources(count: u8) -> Vec<Ipv4Addr> {
    sources_in(0, count)
}

/// The source addresses 127.0.`subnet`.1 ..= 127.0.`subnet`.`count`: `churn` uses its own
/// so that its TIME_WAIT sockets do not take the ports other scenarios bind.
pub fn sources_in(subnet: u8, count: u8) -> Vec<Ipv4Addr> {
    (1..=count.max(1))
        .map(|k| Ipv4Addr::new(127, 0, subnet, k))
        .collect()
}

/// Opens a TCP connection to `target` from `source` (port chosen by the kernel), with
/// Nagle's algorithm off.
pub async fn connect_from(
    source: Ipv4Addr,
    target: SocketAddr,
    reuse_address: bool,
) -> Fallible<TcpStream> {
    let socket = TcpSocket::new_v4().map_err(|err| format!("cannot create a socket: {err}"))?;
    if reuse_address {
        socket
            .set_reuseaddr(true)
            .map_err(|err| format!("cannot set SO_REUSEADDR: {err}"))?;
    }
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .map_err(|err| format!("cannot bind to {source}: {err}"))?;
    let stream = socket
        .connect(target)
        .await
        .map_err(|err| format!("cannot connect {source} -> {target}: {err}"))?;
    stream
        .set_nodelay(true)
        .map_err(|err| format!("cannot set TCP_NODELAY: {err}"))?;
    Ok(stream)
}

/// Prints `count` free ports on 127.0.0.1, space-separated (all bound at once, so they
/// differ, then released).
pub fn print_free_ports(count: usize) -> Fallible<()> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("cannot bind a free port: {err}"))?;
    let ports = listeners
        .iter()
        .map(|listener| listener.local_addr().map(|addr| addr.port().to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("cannot read a bound port: {err}"))?;
    println!("{}", ports.join(" "));
    Ok(())
}

/// Raises this process's open-file soft limit to its hard limit; returns the new limit.
pub fn raise_open_files() -> Fallible<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|err| format!("cannot read RLIMIT_NOFILE: {err}"))?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .map_err(|err| format!("cannot raise RLIMIT_NOFILE to {hard}: {err}"))?;
    Ok(hard)
}

/// Nanoseconds since the first call in this process: the clock that probes carry, so that
/// a receiver in the same process can compute a latency from a sender's timestamp.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The [`tokio::time::Instant`] at which [`now_ns`] reads `ns`.
pub fn instant_at(ns: u64) -> tokio::time::Instant {
    let now = now_ns();
    let now_instant = tokio::time::Instant::now();
    if ns >= now {
        now_instant + std::time::Duration::from_nanos(ns - now)
    } else {
        now_instant
            .checked_sub(std::time::Duration::from_nanos(now - ns))
            .unwrap_or(now_instant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(check_loopback("127.0.0.9:1".parse().unwrap()).is_ok());
        assert!(check_loopback("[::1]:1".parse().unwrap()).is_ok());
        assert!(check_loopback("10.0.0.1:1".parse().unwrap()).is_err());
    }

    #[test]
    fn sources_count_from_one() {
        assert_eq!(sources(3).last(), Some(&Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(sources(0).len(), 1);
    }
}
