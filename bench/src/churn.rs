//! `churn`: workers that connect, log in, wait for the verdict and drop the connection, in
//! a loop for a fixed time: sustained connections/s, and the server's resident memory
//! before, right after, and after a pause (it should come back near its baseline).

use crate::net::{check_loopback, now_ns, raise_open_files, sources_in};
use crate::proto::exchange;
use crate::report::{count, dec, Report};
use crate::stats::{new_histogram, rss_kib, sockstat, Percentiles, Recorder, SharedHistogram};
use crate::stream::connect;
use crate::{Fallible, Target};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Arguments of `churn`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server under test.
    #[command(flatten)]
    target: Target,
    /// The server's process id, for its RSS.
    #[arg(long)]
    pid: u32,
    /// Seconds of churn.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Connect–login–drop loops running at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Users logged in as are PREFIX0 .. PREFIX{users-1}.
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// Distinct users to log in as.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// The bench users' password.
    #[arg(long, default_value = "bench")]
    password: String,
    /// Spread connections over 127.0.1.1 ..= 127.0.1.K (TIME_WAIT eats ports).
    #[arg(long, default_value_t = 32)]
    sources: u8,
    /// Seconds to wait after the churn before the last memory reading.
    #[arg(long, default_value_t = 5.0)]
    settle: f64,
}

/// Longest wait for one cycle.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Churns and reports.
pub async fn run(args: &Args, report: &mut Report) -> Fallible<()> {
    let addr = check_loopback(args.target.addr)?;
    raise_open_files()?;
    let rss_before = rss_kib(args.pid)?;
    let histogram: SharedHistogram = Arc::new(Mutex::new(new_histogram()));
    let end = now_ns() + (args.duration * 1e9) as u64;
    let sources = Arc::new(sources_in(1, args.sources));
    let tls = args.target.tls()?;
    let mut workers = Vec::with_capacity(args.concurrency);
    for worker in 0..args.concurrency {
        let sources = Arc::clone(&sources);
        let proto = args.target.proto;
        let users = args.users.max(1);
        let prefix = args.user_prefix.clone();
        let password = args.password.clone();
        let mut recorder = Recorder::new(&histogram);
        let tls = tls.clone();
        workers.push(tokio::spawn(async move {
            let mut cycles = 0u64;
            let mut failures = Vec::new();
            let mut i = worker;
            while now_ns() < end {
                let source = sources[i % sources.len()];
                let (login, expected) = proto.login(&format!("{prefix}{}", i % users), &password);
                let began = now_ns();
                let cycle = async {
                    let mut stream = connect(source, addr, true, tls.as_ref()).await?;
                    exchange(&mut stream, &login, expected).await
                };
                match tokio::time::timeout(CYCLE_TIMEOUT, cycle).await {
                    Ok(Ok(())) => {
                        cycles += 1;
                        recorder.record(now_ns() - began);
                    }
                    Ok(Err(err)) => failures.push(err),
                    Err(_) => failures.push(format!("no login reply in {CYCLE_TIMEOUT:?}")),
                }
                i += sources.len().max(1) * 7 + 1;
            }
            (cycles, failures)
        }));
    }
    let mut cycles = 0;
    let mut failures = Vec::new();
    for worker in workers {
        let (done, failed) = worker
            .await
            .map_err(|err| format!("churn worker failed: {err}"))?;
        cycles += done;
        failures.extend(failed);
    }
    let rss_after = rss_kib(args.pid)?;
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_settled = rss_kib(args.pid)?;
    let time_wait = sockstat()?.time_wait;
    let latency = Percentiles::of_shared(&histogram);
    let per_s = cycles as f64 / args.duration;
    report.emit(&json!({
        "scenario": "churn",
        "target": args.target.proto.label(),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "connections_per_s": per_s,
        "cycle_p50_us": latency.p50_us,
        "cycle_p99_us": latency.p99_us,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_settled_kib": rss_settled,
        "time_wait": time_wait,
        "lost": failures.len(),
    }))?;
    report.table(
        &format!(
            "churn — {} at {addr}, {} loops",
            args.target.proto.label(),
            args.concurrency
        ),
        &[
            "conns/s",
            "cycle p50 µs",
            "cycle p99 µs",
            "RSS before MiB",
            "after MiB",
            "settled MiB",
            "failed",
        ],
        &[vec![
            count(per_s),
            dec(latency.p50_us),
            dec(latency.p99_us),
            dec(rss_before as f64 / 1024.0),
            dec(rss_after as f64 / 1024.0),
            dec(rss_settled as f64 / 1024.0),
            failures.len().to_string(),
        ]],
    );
    report.check(failures.is_empty(), || {
        format!(
            "churn {}: {} cycles failed, first: {}",
            args.target.proto.label(),
            failures.len(),
            failures.first().map_or("", String::as_str)
        )
    });
    report.check(cycles > 0, || {
        format!("churn {}: no cycle completed", args.target.proto.label())
    });
    Ok(())
}
