//! `tls`: TLS against plaintext on one tether (issue 15), each comparison run A and B
//! alternately over several rounds, so that a neighbour's load on a shared machine lands on
//! both sides; the ratio of each round is reported, and their median.
//!
//! 1. `cmd` (default 50×16, closed loop) over `server.listen` and over `server.tls.listen`:
//!    replies/s of TLS over plaintext.
//! 2. Handshakes/s: new TLS connections as fast as `--storm-concurrency` loops make them
//!    (connect, full handshake, one `prolongate` answered, close); then the same with
//!    clients that keep the server's session tickets, so that their handshakes resume
//!    (the share that did is reported). `--handshakes-only` runs this part alone.
//! 3. Handshake storm: `cmd` over TLS (default 50×1) paced at half its measured maximum, as
//!    `login-storm` does, once quiet and once while the handshake loops run (as fast as
//!    they can, or at `--storm-rate`): the `prolongate` p99 of the storm run over the quiet
//!    one. The loops run on a thread of their own, so that the client's share of the
//!    handshakes' work does not delay the reading of the `cmd` replies it times; on one
//!    machine they still take CPU from the server and the timed load, unless
//!    `--storm-nice` lowers that thread's priority (to tell their share of the delay from
//!    the server's). `--skip-cmd` leaves out part 1.

use crate::cmd::{check_outcome, run_load, LoadOutcome, LoadSpec};
use crate::net::{check_loopback, instant_at, now_ns, raise_open_files, sources_in};
use crate::proto::{exchange, Proto};
use crate::report::{count, dec, Report};
use crate::stream::{connect, TlsClient};
use crate::Fallible;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `tls`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// tether's plaintext address (`server.listen`, loopback).
    #[arg(long)]
    addr: SocketAddr,
    /// The same tether's TLS address (`server.tls.listen`).
    #[arg(long)]
    tls_addr: SocketAddr,
    /// PEM file of the CA that signed the server's certificate.
    #[arg(long)]
    tls_ca: PathBuf,
    /// The name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    tls_name: String,
    /// Rounds of each comparison (A and B alternate, the order swapped each round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The `cmd` shape compared TLS against plaintext, as CxD.
    #[arg(long, default_value = "50x16")]
    shape: String,
    /// The `cmd` shape paced during the storm comparison, as CxD.
    #[arg(long, default_value = "50x1")]
    storm_shape: String,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Handshake loops running at once (in the handshakes/s run and the storm).
    #[arg(long, default_value_t = 16)]
    storm_concurrency: usize,
    /// New connections per second during the storm; 0 = as fast as the loops go.
    #[arg(long, default_value_t = 0.0)]
    storm_rate: f64,
    /// Spread the `cmd` connections over 127.0.0.1 ..= 127.0.0.K (the handshake loops use
    /// 127.0.2.1 ..= 127.0.2.K).
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Measure handshakes/s (full and resumed) only.
    #[arg(long)]
    handshakes_only: bool,
    /// Leave out the `cmd` comparison (part 1): handshakes/s and the storm only.
    #[arg(long)]
    skip_cmd: bool,
    /// Replies/s the TLS `cmd` load is paced at during the storm comparison; 0 = half of
    /// its maximum, measured first. On a loaded machine a fixed rate well below the
    /// maximum keeps the quiet runs from queueing.
    #[arg(long, default_value_t = 0.0)]
    storm_cmd_rate: f64,
    /// Nice value of the handshake loops' thread during the storm (0: as the rest of the
    /// client): above the server's handshake threads' 10, the storm takes only CPU that
    /// neither the server's event loops nor the timed load want.
    #[arg(long, default_value_t = 0)]
    storm_nice: i32,
}

/// Longest wait for one handshake loop's cycle.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the three comparisons and reports.
pub async fn run(args: &Args, report: &mut Report) -> Fallible<()> {
    raise_open_files()?;
    let plain_addr = check_loopback(args.addr)?;
    let tls_addr = check_loopback(args.tls_addr)?;
    let tls = TlsClient::new(&args.tls_ca, &args.tls_name)?;
    let rounds = args.rounds.max(1);
    let spec = |addr, shape: &str, tls: Option<&TlsClient>| -> Fallible<LoadSpec> {
        let (connections, depth) = crate::cmd::parse_shape(shape)?;
        Ok(LoadSpec {
            addr,
            proto: Proto::Tether,
            connections,
            depth,
            warmup: args.warmup,
            duration: args.duration,
            rate: None,
            sources: args.sources,
            tls: tls.cloned(),
        })
    };

    if args.handshakes_only {
        return handshakes(args, tls_addr, &tls, report).await.map(|_| ());
    }
    // 1. cmd over TLS against plaintext.
    let plain = spec(plain_addr, &args.shape, None)?;
    let over_tls = spec(tls_addr, &args.shape, Some(&tls))?;
    let mut cmd_ratios = Vec::with_capacity(rounds);
    let mut rows = Vec::new();
    let cmd_rounds = if args.skip_cmd { 0 } else { rounds };
    for round in 1..=cmd_rounds {
        let (first, second) = alternate(round, (&plain, "plain"), (&over_tls, "tls"));
        let mut outcomes = Vec::with_capacity(2);
        for (spec, label) in [first, second] {
            let outcome = run_load(spec).await?;
            check_outcome(report, "tls cmd", Proto::Tether, label, &outcome);
            outcomes.push((label, outcome));
        }
        let plain = pick(&outcomes, "plain");
        let tls = pick(&outcomes, "tls");
        let ratio = tls.replies_per_s / plain.replies_per_s.max(f64::MIN_POSITIVE);
        cmd_ratios.push(ratio);
        report.emit(&json!({
            "scenario": "tls-cmd",
            "target": "tether",
            "round": round,
            "shape": args.shape,
            "plain_replies_per_s": plain.replies_per_s,
            "tls_replies_per_s": tls.replies_per_s,
            "plain_p99_us": plain.latency.p99_us,
            "tls_p99_us": tls.latency.p99_us,
            "ratio": ratio,
        }))?;
        rows.push(vec![
            round.to_string(),
            count(plain.replies_per_s),
            count(tls.replies_per_s),
            dec(plain.latency.p99_us),
            dec(tls.latency.p99_us),
            format!("{ratio:.2}"),
        ]);
    }
    let cmd_ratio = median(&mut cmd_ratios);
    if !args.skip_cmd {
        report.table(
            &format!(
                "tls — cmd {} over TLS ({tls_addr}) and plaintext ({plain_addr})",
                args.shape
            ),
            &[
                "round",
                "plain/s",
                "TLS/s",
                "plain p99 µs",
                "TLS p99 µs",
                "TLS/plain",
            ],
            &rows,
        );
        println!("  median TLS/plain = {cmd_ratio:.2} (target ≥ 0.6)\n");
    }

    // 2. Handshakes/s, nothing else running.
    let (storm, handshakes_per_s) = handshakes(args, tls_addr, &tls, report).await?;

    // 3. Handshake storm against quiet, TLS connections paced at half their maximum.
    let mut paced = spec(tls_addr, &args.storm_shape, Some(&tls))?;
    let max = if args.storm_cmd_rate > 0.0 {
        None
    } else {
        let max = run_load(&paced).await?;
        check_outcome(report, "tls storm", Proto::Tether, "max", &max);
        Some(max.replies_per_s)
    };
    let cmd_rate = max.map_or(args.storm_cmd_rate, |max| max / 2.0);
    paced.rate = Some(cmd_rate);
    let mut storm_ratios = Vec::with_capacity(rounds);
    let mut storm_rows = Vec::new();
    for round in 1..=rounds {
        let (first, second) = alternate(round, (false, "quiet"), (true, "storm"));
        let mut outcomes = Vec::with_capacity(2);
        let mut storm_rate = 0.0;
        for (stormy, label) in [first, second] {
            let outcome = if stormy {
                let storm = Storm {
                    rate: (args.storm_rate > 0.0).then_some(args.storm_rate),
                    nice: args.storm_nice,
                    ..storm.clone()
                };
                let handshakes = storm.run_apart(args.warmup + args.duration + 0.5);
                let (outcome, handshakes) = tokio::join!(run_load(&paced), handshakes);
                let (outcome, handshakes) = (outcome?, handshakes?);
                report.check(handshakes.failures.is_empty(), || {
                    handshakes.failure_summary("tls storm")
                });
                storm_rate = handshakes.per_second();
                outcome
            } else {
                run_load(&paced).await?
            };
            check_outcome(report, "tls storm", Proto::Tether, label, &outcome);
            outcomes.push((label, outcome));
        }
        let quiet = pick(&outcomes, "quiet");
        let stormy = pick(&outcomes, "storm");
        let ratio = stormy.latency.p99_us / quiet.latency.p99_us.max(f64::MIN_POSITIVE);
        storm_ratios.push(ratio);
        report.emit(&json!({
            "scenario": "tls-storm",
            "target": "tether",
            "round": round,
            "shape": args.storm_shape,
            "cmd_rate": paced.rate,
            "handshakes_per_s": storm_rate,
            "storm_nice": args.storm_nice,
            "quiet_p50_us": quiet.latency.p50_us,
            "quiet_p99_us": quiet.latency.p99_us,
            "storm_p50_us": stormy.latency.p50_us,
            "storm_p99_us": stormy.latency.p99_us,
            "p99_ratio": ratio,
        }))?;
        storm_rows.push(vec![
            round.to_string(),
            dec(quiet.latency.p99_us),
            dec(stormy.latency.p99_us),
            count(storm_rate),
            format!("{ratio:.2}"),
        ]);
    }
    let storm_ratio = median(&mut storm_ratios);
    report.table(
        &format!(
            "tls — handshake storm ({} loops{}, {}) against TLS cmd {} paced at {}/s{}",
            storm.concurrency,
            if args.storm_nice != 0 {
                format!(" at nice {}", args.storm_nice)
            } else {
                String::new()
            },
            if args.storm_rate > 0.0 {
                format!("{}/s", count(args.storm_rate))
            } else {
                "as fast as they go".to_string()
            },
            args.storm_shape,
            count(cmd_rate),
            max.map_or(String::new(), |max| format!(" (half of {})", count(max)))
        ),
        &[
            "round",
            "quiet p99 µs",
            "storm p99 µs",
            "handshakes/s",
            "storm/quiet",
        ],
        &storm_rows,
    );
    println!(
        "  handshakes/s alone: {}; median p99 storm/quiet = {storm_ratio:.2} (target ≤ 2)\n",
        count(handshakes_per_s)
    );
    report.emit(&json!({
        "scenario": "tls-summary",
        "target": "tether",
        "rounds": rounds,
        "cmd_ratio": cmd_ratio,
        "handshakes_per_s": handshakes_per_s,
        "storm_p99_ratio": storm_ratio,
        "storm_rate": (args.storm_rate > 0.0).then_some(args.storm_rate),
        "storm_nice": args.storm_nice,
    }))?;
    Ok(())
}

/// Handshakes/s of `--storm-concurrency` loops, full then resumed, reported; answers the
/// storm of full handshakes and its rate.
async fn handshakes(
    args: &Args,
    tls_addr: SocketAddr,
    tls: &TlsClient,
    report: &mut Report,
) -> Fallible<(Storm, f64)> {
    let storm = Storm {
        addr: tls_addr,
        tls: tls.clone(),
        concurrency: args.storm_concurrency.max(1),
        sources: args.sources,
        rate: None,
        nice: 0,
    };
    let full = storm.run_apart(args.warmup + args.duration).await?;
    report.check(full.failures.is_empty(), || {
        full.failure_summary("tls handshakes")
    });
    let resuming = Storm {
        tls: tls.resuming(),
        ..storm.clone()
    };
    let resumed = resuming.run_apart(args.warmup + args.duration).await?;
    report.check(resumed.failures.is_empty(), || {
        resumed.failure_summary("tls resumed handshakes")
    });
    let resumed_share = resumed.resumed as f64 / (resumed.handshakes.max(1)) as f64;
    println!(
        "  handshakes/s ({} loops): full {}, with resumption offered {} ({:.0} % resumed)\n",
        storm.concurrency,
        count(full.per_second()),
        count(resumed.per_second()),
        resumed_share * 100.0
    );
    report.emit(&json!({
        "scenario": "tls-handshakes",
        "target": "tether",
        "loops": storm.concurrency,
        "full_per_s": full.per_second(),
        "resuming_per_s": resumed.per_second(),
        "resumed_share": resumed_share,
    }))?;
    let per_second = full.per_second();
    Ok((storm, per_second))
}

/// The two runs of `round` in the order it runs them: `a` first in odd rounds, `b` first
/// in even ones.
fn alternate<T>(round: usize, a: T, b: T) -> (T, T) {
    if round % 2 == 1 {
        (a, b)
    } else {
        (b, a)
    }
}

/// The outcome labelled `label`.
fn pick<'a>(outcomes: &'a [(&str, LoadOutcome)], label: &str) -> &'a LoadOutcome {
    &outcomes
        .iter()
        .find(|(name, _)| *name == label)
        .unwrap_or(&outcomes[0])
        .1
}

/// The median of `values` (sorted in place); 0 for none.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// New TLS connections, as fast as `concurrency` loops make them or at `rate` in all.
#[derive(Clone)]
struct Storm {
    addr: SocketAddr,
    tls: TlsClient,
    concurrency: usize,
    sources: u8,
    /// New connections per second in all, or `None` for as fast as they go.
    rate: Option<f64>,
    /// Nice value of the loops' thread.
    nice: i32,
}

/// What a storm did.
struct StormOutcome {
    /// Cycles completed: handshake done and one `prolongate` answered.
    handshakes: u64,
    /// Of those, the ones whose handshake resumed a session.
    resumed: u64,
    /// How long it ran, in seconds.
    seconds: f64,
    /// Failed cycles, one line each.
    failures: Vec<String>,
}

impl StormOutcome {
    fn per_second(&self) -> f64 {
        self.handshakes as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    fn failure_summary(&self, what: &str) -> String {
        format!(
            "{what}: {} handshake cycles failed, first: {}",
            self.failures.len(),
            self.failures.first().map_or("", String::as_str)
        )
    }
}

impl Storm {
    /// Runs the loops for `seconds` on a thread and runtime of their own.
    async fn run_apart(&self, seconds: f64) -> Fallible<StormOutcome> {
        let storm = self.clone();
        let (done, outcome) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("handshake-storm".into())
            .spawn(move || {
                if storm.nice != 0 {
                    // Per thread on Linux: the timed load keeps its priority.
                    if let Err(err) = rustix::process::setpriority_process(None, storm.nice) {
                        eprintln!("cannot renice the handshake storm: {err}");
                    }
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let outcome = match runtime {
                    Ok(runtime) => Ok(runtime.block_on(storm.run(seconds))),
                    Err(err) => Err(format!("cannot start the storm's runtime: {err}")),
                };
                let _ = done.send(outcome);
            })
            .map_err(|err| format!("cannot start the storm's thread: {err}"))?;
        outcome
            .await
            .map_err(|_| "the handshake storm's thread failed".to_string())?
    }

    /// Runs the loops for `seconds`. Each cycle binds its own source port on
    /// 127.0.2.1 ..= 127.0.2.K with `SO_REUSEADDR`, so that its closed connections'
    /// TIME_WAIT does not take the ports the `cmd` load binds.
    async fn run(&self, seconds: f64) -> StormOutcome {
        let began = now_ns();
        let end = began + (seconds * 1e9) as u64;
        let sources = Arc::new(sources_in(2, self.sources));
        // Each loop's share of the rate, as the time between its cycles.
        let interval_ns = self
            .rate
            .map(|rate| (1e9 * self.concurrency as f64 / rate.max(f64::MIN_POSITIVE)) as u64);
        let loops: Vec<_> = (0..self.concurrency)
            .map(|worker| {
                let sources = Arc::clone(&sources);
                let tls = self.tls.clone();
                let addr = self.addr;
                let mut due = began
                    + interval_ns.map_or(0, |interval| {
                        interval * worker as u64 / self.concurrency as u64
                    });
                tokio::spawn(async move {
                    let mut done = 0u64;
                    let mut resumed = 0u64;
                    let mut failures = Vec::new();
                    let mut i = worker;
                    while now_ns() < end {
                        if let Some(interval) = interval_ns {
                            if due >= end {
                                break;
                            }
                            tokio::time::sleep_until(instant_at(due)).await;
                            due += interval;
                        }
                        let source = sources[i % sources.len()];
                        let cycle = async {
                            let mut stream = connect(source, addr, true, Some(&tls)).await?;
                            exchange(&mut stream, Proto::Tether.request(), Proto::Tether.reply())
                                .await?;
                            Ok::<_, String>(stream.resumed())
                        };
                        match tokio::time::timeout(CYCLE_TIMEOUT, cycle).await {
                            Ok(Ok(was_resumed)) => {
                                done += 1;
                                resumed += u64::from(was_resumed);
                            }
                            Ok(Err(err)) => failures.push(err),
                            Err(_) => failures.push(format!("no reply in {CYCLE_TIMEOUT:?}")),
                        }
                        i += 1;
                    }
                    (done, resumed, failures)
                })
            })
            .collect();
        let mut outcome = StormOutcome {
            handshakes: 0,
            resumed: 0,
            seconds: 0.0,
            failures: Vec::new(),
        };
        for task in loops {
            match task.await {
                Ok((done, resumed, failures)) => {
                    outcome.handshakes += done;
                    outcome.resumed += resumed;
                    outcome.failures.extend(failures);
                }
                Err(err) => outcome
                    .failures
                    .push(format!("handshake loop failed: {err}")),
            }
        }
        outcome.seconds = now_ns().saturating_sub(began) as f64 / 1e9;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate_and_medians_are_middles() {
        assert_eq!(alternate(1, 'a', 'b'), ('a', 'b'));
        assert_eq!(alternate(2, 'a', 'b'), ('b', 'a'));
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
