//! `hold`: N idle connections, each "logged in" (a tether login; the same bytes for
//! serve-raw; a `PING` for Redis), spread over several source addresses. The server's
//! resident memory is read at 0, at each checkpoint and at N, and again after the
//! connections have sat idle; the kernel's TCP socket memory is reported apart.

use crate::net::{check_loopback, raise_open_files, sources};
use crate::proto::{exchange, Proto};
use crate::report::{count, dec, Report};
use crate::stats::{rss_kib, sockstat, SockStat};
use crate::stream::{connect, BenchStream, TlsClient};
use crate::{Fallible, Target};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

/// Arguments of `hold`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server under test.
    #[command(flatten)]
    target: Target,
    /// The server's process id, for its RSS.
    #[arg(long)]
    pid: u32,
    /// Connections to hold at the end.
    #[arg(long, default_value_t = 19_000)]
    connections: usize,
    /// Intermediate counts at which memory is read.
    #[arg(long, default_value = "5000,10000", value_delimiter = ',')]
    checkpoints: Vec<usize>,
    /// Connection i logs in as PREFIX{i mod users}.
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// Distinct users to log in as.
    #[arg(long, default_value_t = 20_000)]
    users: usize,
    /// The bench users' password.
    #[arg(long, default_value = "bench")]
    password: String,
    /// Spread connections over 127.0.0.1 ..= 127.0.0.K.
    #[arg(long, default_value_t = 16)]
    sources: u8,
    /// Seconds to wait at each checkpoint before reading memory.
    #[arg(long, default_value_t = 2.0)]
    pause: f64,
    /// Seconds the connections sit idle before the last reading.
    #[arg(long, default_value_t = 15.0)]
    settle: f64,
}

/// Connections opened and logged in at once.
const CONCURRENCY: usize = 256;
/// Longest wait for one connection's connect and login.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// One memory reading.
struct Reading {
    connections: usize,
    phase: &'static str,
    rss_kib: u64,
    sock: SockStat,
}

/// Opens, holds and measures.
pub async fn run(args: &Args, report: &mut Report) -> Fallible<()> {
    let addr = check_loopback(args.target.addr)?;
    let limit = raise_open_files()?;
    if args.connections as u64 + 64 > limit {
        return Err(format!(
            "{} connections need more descriptors than this process may open ({limit})",
            args.connections
        ));
    }
    let mut targets: Vec<usize> = args
        .checkpoints
        .iter()
        .copied()
        .filter(|&n| n > 0 && n < args.connections)
        .collect();
    targets.push(args.connections);
    targets.sort_unstable();
    targets.dedup();

    let pause = Duration::from_secs_f64(args.pause);
    let read = |connections, phase| -> Fallible<Reading> {
        Ok(Reading {
            connections,
            phase,
            rss_kib: rss_kib(args.pid)?,
            sock: sockstat()?,
        })
    };
    let tls = args.target.tls()?;
    let mut readings = vec![read(0, "open")?];
    let mut streams: Vec<BenchStream> = Vec::with_capacity(args.connections);
    let started = std::time::Instant::now();
    for &target in &targets {
        open_more(args, addr, tls.as_ref(), &mut streams, target).await?;
        tokio::time::sleep(pause).await;
        readings.push(read(target, "open")?);
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    readings.push(read(args.connections, "settled")?);
    let lost = check_alive(args.target.proto, streams).await;

    let base = &readings[0];
    let per_conn = |reading: &Reading| {
        if reading.connections == 0 {
            0.0
        } else {
            (reading.rss_kib as f64 - base.rss_kib as f64) * 1024.0 / reading.connections as f64
        }
    };
    let mut rows = Vec::new();
    let mut previous: Option<&Reading> = None;
    for reading in &readings {
        let slope = previous
            .filter(|prev| reading.connections > prev.connections)
            .map(|prev| {
                (reading.rss_kib as f64 - prev.rss_kib as f64) * 1024.0
                    / (reading.connections - prev.connections) as f64
            });
        let sock_delta_kib = reading.sock.mem_kib as f64 - base.sock.mem_kib as f64;
        report.emit(&json!({
            "scenario": "hold",
            "target": args.target.proto.label(),
            "phase": reading.phase,
            "connections": reading.connections,
            "rss_kib": reading.rss_kib,
            "bytes_per_conn": per_conn(reading),
            "slope_bytes_per_conn": slope,
            "sock_mem_kib": reading.sock.mem_kib,
            "sock_inuse": reading.sock.inuse,
        }))?;
        rows.push(vec![
            reading.phase.to_string(),
            count(reading.connections as f64),
            dec(reading.rss_kib as f64 / 1024.0),
            count(per_conn(reading)),
            slope.map_or("-".into(), count),
            count(sock_delta_kib),
        ]);
        if reading.phase == "open" {
            previous = Some(reading);
        }
    }
    let at_n = &readings[readings.len() - 2];
    let settled = &readings[readings.len() - 1];
    let first_checkpoint = &readings[1];
    let slope_tail = if at_n.connections > first_checkpoint.connections {
        (at_n.rss_kib as f64 - first_checkpoint.rss_kib as f64) * 1024.0
            / (at_n.connections - first_checkpoint.connections) as f64
    } else {
        per_conn(at_n)
    };
    report.emit(&json!({
        "scenario": "hold",
        "target": args.target.proto.label(),
        "phase": "summary",
        "connections": args.connections,
        "base_rss_kib": base.rss_kib,
        "bytes_per_conn": per_conn(at_n),
        "settled_bytes_per_conn": per_conn(settled),
        "slope_bytes_per_conn": slope_tail,
        "sock_mem_bytes_per_conn": (at_n.sock.mem_kib as f64 - base.sock.mem_kib as f64) * 1024.0 / args.connections as f64,
        "open_per_s": args.connections as f64 / open_secs,
        "lost": lost,
    }))?;
    report.table(
        &format!(
            "hold — {} at {addr}, pid {} ({} connections opened in {open_secs:.1} s, {lost} lost)",
            args.target.proto.label(),
            args.pid,
            args.connections
        ),
        &[
            "phase",
            "conns",
            "RSS MiB",
            "B/conn",
            "slope B/conn",
            "Δ sock KiB",
        ],
        &rows,
    );
    report.check(lost == 0, || {
        format!(
            "hold {}: {lost} connections no longer answer",
            args.target.proto.label()
        )
    });
    Ok(())
}

/// Opens and logs in connections until `streams` holds `target`.
async fn open_more(
    args: &Args,
    addr: SocketAddr,
    tls: Option<&TlsClient>,
    streams: &mut Vec<BenchStream>,
    target: usize,
) -> Fallible<()> {
    let sources = sources(args.sources);
    while streams.len() < target {
        let first = streams.len();
        let batch = (target - first).min(CONCURRENCY);
        let mut tasks = Vec::with_capacity(batch);
        for i in first..first + batch {
            let source = sources[i % sources.len()];
            let (login, expected) = args.target.proto.login(
                &format!("{}{}", args.user_prefix, i % args.users.max(1)),
                &args.password,
            );
            let tls = tls.cloned();
            tasks.push(tokio::spawn(async move {
                let attempt = async {
                    let mut stream = connect(source, addr, false, tls.as_ref()).await?;
                    exchange(&mut stream, &login, expected).await?;
                    Ok::<_, String>(stream)
                };
                tokio::time::timeout(LOGIN_TIMEOUT, attempt)
                    .await
                    .map_err(|_| format!("connection {i}: no login reply in {LOGIN_TIMEOUT:?}"))?
                    .map_err(|err| format!("connection {i}: {err}"))
            }));
        }
        for task in tasks {
            streams.push(
                task.await
                    .map_err(|err| format!("connect task failed: {err}"))??,
            );
        }
    }
    Ok(())
}

/// Sends one command on every connection; returns how many did not answer it.
async fn check_alive(proto: Proto, streams: Vec<BenchStream>) -> u64 {
    let mut dead = 0;
    let mut streams = streams.into_iter().peekable();
    while streams.peek().is_some() {
        let tasks: Vec<_> = streams
            .by_ref()
            .take(CONCURRENCY)
            .map(|mut stream| {
                tokio::spawn(async move {
                    let check = exchange(&mut stream, proto.request(), proto.reply());
                    matches!(
                        tokio::time::timeout(Duration::from_secs(10), check).await,
                        Ok(Ok(()))
                    )
                })
            })
            .collect();
        for task in tasks {
            if !matches!(task.await, Ok(true)) {
                dead += 1;
            }
        }
    }
    dead
}
