//! `cmd`: C connections, each keeping D commands (`prolongate`, or `PING` for Redis) in
//! flight. Closed loop by default — a reply lets the next command go — or paced at a fixed
//! total rate (`--rate`), then latency counts from each command's *intended* send time.
//!
//! The client is built to cost the server's machine little: one task per connection, every
//! reply in a read checked against the expected bytes in bulk, one clock read per read, the
//! commands a read allows written in one write.

use crate::net::{check_loopback, now_ns, sources};
use crate::proto::{Proto, ReplyMatcher};
use crate::report::{count, dec, Report};
use crate::stats::{new_histogram, Percentiles, Recorder, SharedHistogram};
use crate::stream::{connect, BenchStream, TlsClient};
use crate::{Fallible, Target};
use serde_json::json;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Arguments of `cmd`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server under test.
    #[command(flatten)]
    target: Target,
    /// Shapes to run, as CxD (connections x depth), comma-separated.
    #[arg(long, default_value = "50x1,50x16,1000x1", value_delimiter = ',')]
    shapes: Vec<String>,
    /// Measured seconds per shape.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of traffic before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Total commands per second (paced, open loop); 0 = closed loop, as fast as replies come.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Spread connections over 127.0.0.1 ..= 127.0.0.K.
    #[arg(long, default_value_t = 4)]
    sources: u8,
}

/// One load run's shape.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Server address.
    pub addr: SocketAddr,
    /// Protocol.
    pub proto: Proto,
    /// Connections.
    pub connections: usize,
    /// Commands in flight per connection.
    pub depth: usize,
    /// Seconds of traffic before measuring.
    pub warmup: f64,
    /// Measured seconds.
    pub duration: f64,
    /// Total paced rate, or `None` for a closed loop.
    pub rate: Option<f64>,
    /// Source addresses to spread over.
    pub sources: u8,
    /// Connect through TLS with this client, or in plaintext.
    pub tls: Option<TlsClient>,
}

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct LoadOutcome {
    /// Replies per second over the measured window.
    pub replies_per_s: f64,
    /// Latency of the replies in the window.
    pub latency: Percentiles,
    /// Commands that never got a reply (after a drain of up to 5 s).
    pub lost: u64,
    /// Connection failures, one line each.
    pub errors: Vec<String>,
}

/// How long a connection waits for its last replies after the run.
const DRAIN: Duration = Duration::from_secs(5);
/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 256;

/// Parses "50x16".
pub fn parse_shape(shape: &str) -> Fallible<(usize, usize)> {
    let (connections, depth) = shape
        .split_once('x')
        .ok_or_else(|| format!("shape {shape:?} is not CxD, such as 50x16"))?;
    let parse = |text: &str| -> Fallible<usize> {
        text.trim()
            .parse()
            .ok()
            .filter(|value| *value > 0)
            .ok_or_else(|| format!("shape {shape:?}: {text:?} is not a positive number"))
    };
    Ok((parse(connections)?, parse(depth)?))
}

/// Runs every shape and reports each.
pub async fn run(args: &Args, report: &mut Report) -> Fallible<()> {
    let mut rows = Vec::new();
    for shape in &args.shapes {
        let (connections, depth) = parse_shape(shape)?;
        let spec = LoadSpec {
            addr: check_loopback(args.target.addr)?,
            proto: args.target.proto,
            connections,
            depth,
            warmup: args.warmup,
            duration: args.duration,
            rate: (args.rate > 0.0).then_some(args.rate),
            sources: args.sources,
            tls: args.target.tls()?,
        };
        let outcome = run_load(&spec).await?;
        report.emit(&json!({
            "scenario": "cmd",
            "target": args.target.proto.label(),
            "connections": connections,
            "depth": depth,
            "rate": spec.rate,
            "duration_s": args.duration,
            "replies_per_s": outcome.replies_per_s,
            "p50_us": outcome.latency.p50_us,
            "p99_us": outcome.latency.p99_us,
            "p999_us": outcome.latency.p999_us,
            "max_us": outcome.latency.max_us,
            "lost": outcome.lost,
            "errors": outcome.errors.len(),
        }))?;
        check_outcome(report, "cmd", args.target.proto, shape, &outcome);
        rows.push(vec![
            shape.clone(),
            count(outcome.replies_per_s),
            dec(outcome.latency.p50_us),
            dec(outcome.latency.p99_us),
            dec(outcome.latency.p999_us),
            outcome.lost.to_string(),
            outcome.errors.len().to_string(),
        ]);
    }
    report.table(
        &format!(
            "cmd — {} at {}",
            args.target.proto.label(),
            args.target.addr
        ),
        &[
            "CxD",
            "replies/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "lost",
            "errors",
        ],
        &rows,
    );
    Ok(())
}

/// Fails the report if a load run lost replies, had errors or got nothing.
pub fn check_outcome(
    report: &mut Report,
    scenario: &str,
    proto: Proto,
    what: &str,
    outcome: &LoadOutcome,
) {
    let label = proto.label();
    report.check(outcome.lost == 0, || {
        format!(
            "{scenario} {label} {what}: {} commands never answered",
            outcome.lost
        )
    });
    report.check(outcome.errors.is_empty(), || {
        format!(
            "{scenario} {label} {what}: {} connection errors, first: {}",
            outcome.errors.len(),
            outcome.errors.first().map_or("", String::as_str)
        )
    });
    report.check(outcome.latency.count > 0, || {
        format!("{scenario} {label} {what}: no reply in the measured window")
    });
}

/// Opens the connections, drives them for warmup + duration, and drains.
pub async fn run_load(spec: &LoadSpec) -> Fallible<LoadOutcome> {
    let streams =
        open_connections(spec.addr, spec.connections, spec.sources, spec.tls.as_ref()).await?;
    let histogram: SharedHistogram = Arc::new(Mutex::new(new_histogram()));
    let start = now_ns() + 20_000_000;
    let measure_from = start + secs_to_ns(spec.warmup);
    let end = measure_from + secs_to_ns(spec.duration);
    let per_connection_rate = spec.rate.map(|rate| rate / spec.connections as f64);
    let mut tasks = Vec::with_capacity(streams.len());
    for (index, stream) in streams.into_iter().enumerate() {
        let driver = Driver {
            proto: spec.proto,
            depth: spec.depth,
            window: (measure_from, end),
            // Stagger paced connections so their commands do not all start together.
            next_due: start
                + per_connection_rate.map_or(0, |rate| {
                    (index as f64 / spec.connections as f64 * 1e9 / rate) as u64
                }),
            interval_ns: per_connection_rate.map(|rate| (1e9 / rate).max(1.0) as u64),
            recorder: Recorder::new(&histogram),
        };
        // A server that stops answering ends the run at its deadline plus the drain.
        let give_up = crate::net::instant_at(end) + DRAIN * 2;
        tasks.push(tokio::spawn(async move {
            tokio::time::timeout_at(give_up, driver.drive(stream))
                .await
                .map_err(|_| "the server stopped answering".to_string())?
        }));
    }
    let mut counted = 0;
    let mut lost = 0;
    let mut errors = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok(result)) => {
                counted += result.counted;
                lost += result.lost;
            }
            Ok(Err(err)) => errors.push(err),
            Err(err) => errors.push(format!("connection task failed: {err}")),
        }
    }
    let latency = Percentiles::of_shared(&histogram);
    Ok(LoadOutcome {
        replies_per_s: counted as f64 / spec.duration,
        latency,
        lost,
        errors,
    })
}

fn secs_to_ns(secs: f64) -> u64 {
    (secs.max(0.0) * 1e9) as u64
}

/// Opens `count` connections (through TLS with `tls`), spread over the source addresses, a
/// bounded number at once.
pub async fn open_connections(
    addr: SocketAddr,
    count: usize,
    source_count: u8,
    tls: Option<&TlsClient>,
) -> Fallible<Vec<BenchStream>> {
    let sources = sources(source_count);
    let mut streams = Vec::with_capacity(count);
    let mut index = 0;
    while index < count {
        let batch = (count - index).min(CONNECT_CONCURRENCY);
        let mut pending = Vec::with_capacity(batch);
        for i in index..index + batch {
            let source = sources[i % sources.len()];
            let tls = tls.cloned();
            pending.push(tokio::spawn(async move {
                connect(source, addr, false, tls.as_ref()).await
            }));
        }
        for task in pending {
            let stream = task
                .await
                .map_err(|err| format!("connect task failed: {err}"))??;
            streams.push(stream);
        }
        index += batch;
    }
    Ok(streams)
}

/// What one connection counted.
struct DriverResult {
    /// Replies to commands sent inside the measured window.
    counted: u64,
    /// Commands unanswered after the drain.
    lost: u64,
}

/// One connection's command loop.
struct Driver {
    proto: Proto,
    depth: usize,
    /// Replies to commands intended in [from, to) are measured; none is sent from `to` on.
    window: (u64, u64),
    /// When the next paced command is due (ns on [`now_ns`]'s clock).
    next_due: u64,
    /// Pace per command on this connection, or `None` for a closed loop.
    interval_ns: Option<u64>,
    recorder: Recorder,
}

impl Driver {
    async fn drive(mut self, mut stream: BenchStream) -> Fallible<DriverResult> {
        let (measure_from, end) = self.window;
        let request = self.proto.request();
        let mut matcher = ReplyMatcher::new(self.proto.reply());
        let mut in_flight: VecDeque<u64> = VecDeque::with_capacity(self.depth);
        let mut output = Vec::with_capacity(self.depth * request.len());
        let mut input = vec![0u8; 64 * 1024];
        let mut counted = 0;
        let start = crate::net::instant_at(self.next_due.min(measure_from));
        tokio::time::sleep_until(start).await;
        loop {
            let now = now_ns();
            if now >= end {
                break;
            }
            output.clear();
            while in_flight.len() < self.depth {
                match self.interval_ns {
                    None => in_flight.push_back(now),
                    Some(interval) if self.next_due <= now => {
                        in_flight.push_back(self.next_due);
                        self.next_due += interval;
                    }
                    Some(_) => break,
                }
                output.extend_from_slice(request);
            }
            if !output.is_empty() {
                stream
                    .write_all(&output)
                    .await
                    .map_err(|err| format!("write failed: {err}"))?;
                // Nothing for TCP; for TLS, the records rustls may still hold.
                stream
                    .flush()
                    .await
                    .map_err(|err| format!("write failed: {err}"))?;
            }
            let read = if self.interval_ns.is_some() && in_flight.len() < self.depth {
                // Wait for a reply or the next due command, whichever comes first.
                let wake = crate::net::instant_at(self.next_due.min(end));
                match tokio::time::timeout_at(wake, stream.read(&mut input)).await {
                    Ok(read) => read,
                    Err(_) => continue,
                }
            } else if in_flight.is_empty() {
                continue;
            } else {
                // Closed loop: a reply is always owed; `run_load` bounds the whole task.
                stream.read(&mut input).await
            };
            let read = match read {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(read) => read,
                Err(err) => return Err(format!("read failed: {err}")),
            };
            let replies = matcher.feed(&input[..read])?;
            let received = now_ns();
            for _ in 0..replies {
                let sent = in_flight
                    .pop_front()
                    .ok_or("a reply arrived for no command")?;
                if sent >= measure_from && sent < end {
                    self.recorder.record(received.saturating_sub(sent));
                    counted += 1;
                }
            }
        }
        // Drain: every command sent must be answered.
        let drain_until = tokio::time::Instant::now() + DRAIN;
        while !in_flight.is_empty() {
            let read = match tokio::time::timeout_at(drain_until, stream.read(&mut input)).await {
                Ok(Ok(read)) if read > 0 => read,
                _ => break,
            };
            for _ in 0..matcher.feed(&input[..read])? {
                in_flight.pop_front();
            }
        }
        self.recorder.flush();
        Ok(DriverResult {
            counted,
            lost: in_flight.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse() {
        assert_eq!(parse_shape("50x16").unwrap(), (50, 16));
        assert!(parse_shape("50").is_err());
        assert!(parse_shape("0x1").is_err());
    }
}
