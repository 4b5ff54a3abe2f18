//! `login-storm`: does bcrypt stall the event loops? `cmd` runs paced at half its measured
//! maximum, once alone and once while logins at bcrypt cost 10 arrive at a fixed rate that
//! keeps one core busy (calibrated by timing a verify at that cost here); the `prolongate`
//! p99 of the two runs is compared.
//!
//! `readmit`: users logging in again at once — after a restart, or on another node — with
//! and without verifiers (SPEC §5): how long until all are back, and how many bcrypt
//! checks it took (from the server's `/metrics`).

use crate::cmd::{check_outcome, run_load, LoadSpec};
use crate::net::{check_loopback, connect_from, instant_at, now_ns};
use crate::proto::{exchange, Proto};
use crate::report::{count, dec, Report};
use crate::stats::{new_histogram, Percentiles, Recorder, SharedHistogram};
use crate::Fallible;
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tether_client::framing::OnePart;

/// Arguments of `login-storm`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// tether's address (loopback).
    #[arg(long)]
    addr: SocketAddr,
    /// Connections of the `cmd` load.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Commands in flight per connection of the `cmd` load.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// The `cmd` maximum to halve; 0 = measure it first.
    #[arg(long, default_value_t = 0.0)]
    max_rate: f64,
    /// User the storm logs in as; its hash must be of cost `--storm-cost`.
    #[arg(long, default_value = "storm0")]
    storm_user: String,
    /// That user's password.
    #[arg(long, default_value = "bench")]
    storm_password: String,
    /// bcrypt cost used to calibrate the storm rate.
    #[arg(long, default_value_t = 10)]
    storm_cost: u32,
    /// Logins per second; 0 = one core's worth at `--storm-cost`.
    #[arg(long, default_value_t = 0.0)]
    storm_rate: f64,
    /// Connections the storm's logins are spread over.
    #[arg(long, default_value_t = 8)]
    storm_connections: usize,
    /// Spread the `cmd` connections over 127.0.0.1 ..= 127.0.0.K.
    #[arg(long, default_value_t = 4)]
    sources: u8,
}

/// Runs the three phases and reports.
pub async fn run(args: &Args, report: &mut Report) -> Fallible<()> {
    let addr = check_loopback(args.addr)?;
    let mut spec = LoadSpec {
        addr,
        proto: Proto::Tether,
        connections: args.connections,
        depth: args.depth,
        warmup: args.warmup,
        duration: args.duration,
        rate: None,
        sources: args.sources,
        tls: None,
    };
    let max_rate = if args.max_rate > 0.0 {
        args.max_rate
    } else {
        let max = run_load(&spec).await?;
        check_outcome(report, "login-storm", Proto::Tether, "max", &max);
        max.replies_per_s
    };
    spec.rate = Some(max_rate / 2.0);
    let baseline = run_load(&spec).await?;
    check_outcome(report, "login-storm", Proto::Tether, "baseline", &baseline);

    let storm_rate = if args.storm_rate > 0.0 {
        args.storm_rate
    } else {
        1.0 / verify_seconds(args.storm_cost, &args.storm_password)?
    };
    let storm = Storm {
        addr,
        user: args.storm_user.clone(),
        password: args.storm_password.clone(),
        rate: storm_rate,
        connections: args.storm_connections.max(1),
        seconds: args.warmup + args.duration + 0.5,
    };
    let histogram: SharedHistogram = Arc::new(Mutex::new(new_histogram()));
    let storm_tasks = storm.start(&histogram);
    let stormy = run_load(&spec).await?;
    let mut logins = 0;
    let mut failures = Vec::new();
    for task in storm_tasks {
        match task.await {
            Ok(Ok(done)) => logins += done,
            Ok(Err(err)) => failures.push(err),
            Err(err) => failures.push(format!("storm task failed: {err}")),
        }
    }
    check_outcome(report, "login-storm", Proto::Tether, "under storm", &stormy);
    let login_latency = Percentiles::of_shared(&histogram);
    let achieved = logins as f64 / storm.seconds;
    let ratio = stormy.latency.p99_us / baseline.latency.p99_us.max(f64::MIN_POSITIVE);
    report.emit(&json!({
        "scenario": "login-storm",
        "target": "tether",
        "connections": args.connections,
        "depth": args.depth,
        "max_rate": max_rate,
        "cmd_rate": max_rate / 2.0,
        "storm_rate": storm_rate,
        "logins_per_s": achieved,
        "login_p50_us": login_latency.p50_us,
        "login_p99_us": login_latency.p99_us,
        "baseline_p50_us": baseline.latency.p50_us,
        "baseline_p99_us": baseline.latency.p99_us,
        "storm_p50_us": stormy.latency.p50_us,
        "storm_p99_us": stormy.latency.p99_us,
        "storm_replies_per_s": stormy.replies_per_s,
        "p99_ratio": ratio,
        "lost": baseline.lost + stormy.lost + failures.len() as u64,
    }))?;
    report.table(
        &format!(
            "login-storm — tether at {addr}: cmd {}x{} paced at {}/s (half of {}), storm {:.1} logins/s",
            args.connections,
            args.depth,
            count(max_rate / 2.0),
            count(max_rate),
            storm_rate
        ),
        &["run", "replies/s", "p50 µs", "p99 µs", "logins/s", "login p99 ms"],
        &[
            vec![
                "alone".into(),
                count(baseline.replies_per_s),
                dec(baseline.latency.p50_us),
                dec(baseline.latency.p99_us),
                "-".into(),
                "-".into(),
            ],
            vec![
                "storm".into(),
                count(stormy.replies_per_s),
                dec(stormy.latency.p50_us),
                dec(stormy.latency.p99_us),
                dec(achieved),
                dec(login_latency.p99_us / 1000.0),
            ],
        ],
    );
    println!("  p99 under storm / alone = {ratio:.2} (target ≤ 2)\n");
    report.check(failures.is_empty(), || {
        format!(
            "login-storm: {} storm connections failed, first: {}",
            failures.len(),
            failures.first().map_or("", String::as_str)
        )
    });
    report.check(logins > 0, || {
        "login-storm: no storm login succeeded".into()
    });
    Ok(())
}

/// Seconds one bcrypt verify takes here at `cost` (the best of three).
fn verify_seconds(cost: u32, password: &str) -> Fallible<f64> {
    let hash = bcrypt::hash(password, cost).map_err(|err| format!("bcrypt failed: {err}"))?;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let began = Instant::now();
        bcrypt::verify(password, &hash).map_err(|err| format!("bcrypt failed: {err}"))?;
        best = best.min(began.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Paced logins over a few connections.
struct Storm {
    addr: SocketAddr,
    user: String,
    password: String,
    /// Total logins per second.
    rate: f64,
    connections: usize,
    /// How long the storm lasts.
    seconds: f64,
}

impl Storm {
    /// Starts one task per connection; each returns its successful logins.
    fn start(&self, histogram: &SharedHistogram) -> Vec<tokio::task::JoinHandle<Fallible<u64>>> {
        let interval = (1e9 * self.connections as f64 / self.rate) as u64;
        let start = now_ns() + 10_000_000;
        let end = now_ns() + (self.seconds * 1e9) as u64;
        (0..self.connections)
            .map(|index| {
                let login = crate::proto::login_message(&self.user, &self.password);
                let addr = self.addr;
                let mut recorder = Recorder::new(histogram);
                let mut due = start + interval * index as u64 / self.connections as u64;
                tokio::spawn(async move {
                    let mut stream = connect_from(Ipv4Addr::LOCALHOST, addr, false).await?;
                    let mut logins = 0;
                    while due < end {
                        tokio::time::sleep_until(instant_at(due)).await;
                        let attempt = exchange(&mut stream, &login, OnePart::LoginValid.message());
                        tokio::time::timeout(Duration::from_secs(30), attempt)
                            .await
                            .map_err(|_| "no login reply in 30 s".to_string())??;
                        recorder.record(now_ns().saturating_sub(due));
                        logins += 1;
                        due += interval;
                    }
                    Ok(logins)
                })
            })
            .collect()
    }
}

/// Arguments of `readmit`: a re-admission storm (SPEC §5, "Admission after a restart").
#[derive(Debug, clap::Args)]
pub struct ReadmitArgs {
    /// tether's client address (loopback).
    #[arg(long)]
    addr: SocketAddr,
    /// Its admin API, for the password-check counters.
    #[arg(long)]
    admin: SocketAddr,
    /// Its process id, for the CPU time it spends.
    #[arg(long)]
    pid: Option<u32>,
    /// Users PREFIX0 .. PREFIX(N-1) log in (as `make-users` writes them).
    #[arg(long, default_value_t = 1000)]
    users: u32,
    /// Their name prefix.
    #[arg(long, default_value = "u")]
    prefix: String,
    /// Their password.
    #[arg(long, default_value = "bench")]
    password: String,
    /// 0: every user logs in at once on a connection of its own (a storm); K > 0: one
    /// connection logs in K times in a row, cycling through the users (cost per login).
    #[arg(long, default_value_t = 0)]
    sequential: u32,
    /// What this run is, for the table and the JSON line.
    #[arg(long, default_value = "storm")]
    label: String,
    /// Seconds the storm may take before it is given up.
    #[arg(long, default_value_t = 1200.0)]
    timeout: f64,
}

/// (bcrypt checks run, logins admitted by a verifier) so far, from `/metrics`.
async fn password_counters(admin: SocketAddr) -> Fallible<(f64, f64)> {
    let response = crate::http::HttpClient::new(admin, None)
        .get("/metrics")
        .await?;
    let text = String::from_utf8_lossy(&response.body);
    let value = |series: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((
        value("tether_password_check_seconds_count"),
        value("tether_password_checks_saved_total"),
    ))
}

/// Runs one re-admission storm (or a sequence of logins) and reports it.
pub async fn readmit(args: &ReadmitArgs, report: &mut Report) -> Fallible<()> {
    let addr = check_loopback(args.addr)?;
    check_loopback(args.admin)?;
    crate::net::raise_open_files()?;
    let names: Vec<String> = (0..args.users.max(1))
        .map(|n| format!("{}{n}", args.prefix))
        .collect();
    let (checks_before, saved_before) = password_counters(args.admin).await?;
    let cpu_before = args.pid.map(crate::stats::cpu_times).transpose()?;
    let began = Instant::now();
    let logins = if args.sequential > 0 {
        let mut stream = connect_from(Ipv4Addr::LOCALHOST, addr, false).await?;
        for n in 0..args.sequential {
            let name = &names[n as usize % names.len()];
            let login = crate::proto::login_message(name, &args.password);
            exchange(&mut stream, &login, OnePart::LoginValid.message()).await?;
        }
        args.sequential as usize
    } else {
        // Every connection first, then every login at once.
        let mut streams = Vec::with_capacity(names.len());
        for _ in &names {
            streams.push(connect_from(Ipv4Addr::LOCALHOST, addr, false).await?);
        }
        let began = Instant::now();
        let tasks: Vec<_> = streams
            .into_iter()
            .zip(&names)
            .map(|(mut stream, name)| {
                let login = crate::proto::login_message(name, &args.password);
                tokio::spawn(async move {
                    exchange(&mut stream, &login, OnePart::LoginValid.message()).await?;
                    Ok::<_, String>(began.elapsed())
                })
            })
            .collect();
        let deadline = Duration::from_secs_f64(args.timeout);
        for task in tasks {
            tokio::time::timeout(deadline, task)
                .await
                .map_err(|_| format!("readmit: no answer within {:.0} s", args.timeout))?
                .map_err(|err| format!("readmit: a login task failed: {err}"))??;
        }
        names.len()
    };
    let seconds = began.elapsed().as_secs_f64();
    let cpu = match (args.pid, cpu_before) {
        (Some(pid), Some(before)) => {
            let used = crate::stats::cpu_times(pid)? - before;
            Some(used.user + used.system)
        }
        _ => None,
    };
    let (checks_after, saved_after) = password_counters(args.admin).await?;
    let checks = checks_after - checks_before;
    let saved = saved_after - saved_before;
    let per_login_us = seconds * 1e6 / logins as f64;
    report.emit(&json!({
        "scenario": "readmit",
        "target": "tether",
        "label": args.label,
        "logins": logins,
        "sequential": args.sequential > 0,
        "seconds": seconds,
        "logins_per_s": logins as f64 / seconds,
        "per_login_us": per_login_us,
        "bcrypt_checks": checks,
        "checks_saved": saved,
        "server_cpu_s": cpu,
        "server_cpu_per_login_us": cpu.map(|cpu| cpu * 1e6 / logins as f64),
    }))?;
    report.table(
        &format!("readmit — tether at {addr}: {}", args.label),
        &[
            "logins",
            "seconds",
            "logins/s",
            "µs/login",
            "bcrypt",
            "saved",
            "server CPU s",
        ],
        &[vec![
            count(logins as f64),
            format!("{seconds:.2}"),
            count(logins as f64 / seconds),
            dec(per_login_us),
            count(checks),
            count(saved),
            cpu.map_or_else(|| "-".into(), |cpu| format!("{cpu:.2}")),
        ]],
    );
    Ok(())
}
