//! `fanout`: events published to many connections. For tether, connection i logs in as
//! user i mod U and events go through the admin API (`POST /v1/events`, SPEC §6) from a few
//! keep-alive publishers; for Redis, connection i SUBSCRIBEs to channel i mod U and events
//! go out with PUBLISH. Event k is for user k mod U and its text is `"<k> <intended ns>"`:
//! open loop at a fixed rate (`--rate`), latency counts from the intended send time, and
//! every delivery owed must arrive (lost = owed − received, which must be 0).
//! `--rate 0` publishes as fast as the publishers' round trips allow: the maximum.
//! `--batch N` sends N events per request (tether's batch route; Redis: N PUBLISH pipelined);
//! `--server-latency` adds tether's own figure, from `tether_event_delivery_seconds`.

use crate::http::HttpClient;
use crate::net::{check_loopback, instant_at, now_ns, raise_open_files, sources};
use crate::proto::{
    exchange, login_message, parse_probe, parts, printable, MessageSplitter, Proto, EVENT, RS,
};
use crate::report::{count, dec, Report};
use crate::server_histogram::DeliveryHistogram;
use crate::stats::{cpu_times, new_histogram, Percentiles, Recorder, SharedHistogram};
use crate::stream::BenchStream;
use crate::Fallible;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Arguments of `fanout`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address of tether's client port or of Redis (loopback).
    #[arg(long)]
    addr: SocketAddr,
    /// More client ports of the same service (the other nodes of a tether cluster):
    /// receiver i connects to the (i mod n)-th of `--addr` and these, so every user's
    /// connections are spread over the nodes. Events still go through `--admin`.
    #[arg(long, value_delimiter = ',')]
    spread: Vec<SocketAddr>,
    /// tether's admin API address (`admin.listen`); needed for tether.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Bearer token for the admin API, if it has one.
    #[arg(long)]
    token: Option<String>,
    /// tether or redis.
    #[arg(long, value_enum, default_value = "tether")]
    proto: Proto,
    /// Receiving connections.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Users (Redis: channels) the connections are spread over; 1 = all share one.
    #[arg(long, default_value_t = 1)]
    users: usize,
    /// Events per second to publish, paced; 0 = as fast as the publishers go.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Concurrent publishers (keep-alive connections).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Users are PREFIX0 .. PREFIX{users-1} (Redis: channel names).
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// The bench users' password.
    #[arg(long, default_value = "bench")]
    password: String,
    /// Spread connections over 127.0.0.1 ..= 127.0.0.K.
    #[arg(long, default_value_t = 16)]
    sources: u8,
    /// Seconds to wait, after publishing ends, for the last deliveries.
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
    /// Measure the maximum first (`--rate` is ignored), then run again paced at half the
    /// maximum event rate, for latency.
    #[arg(long)]
    then_half: bool,
    /// Events per request: tether's batch route (`{"events": [...]}`), Redis PUBLISH
    /// commands pipelined in one write. 1 = the single-event route, one PUBLISH per round
    /// trip.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    batch: u64,
    /// tether: also read the server's own delivery latency (`tether_event_delivery_seconds`
    /// in `/metrics`, before and after each run) and report its p50/p99.
    #[arg(long)]
    server_latency: bool,
    /// The server's process id: also report the CPU time it used from the start of
    /// publishing to the end of the drain, per delivery.
    #[arg(long)]
    pid: Option<u32>,
}

/// Receivers set up at once.
const CONCURRENCY: usize = 256;

/// Counters every receiver adds to.
#[derive(Default)]
struct Tally {
    /// Deliveries received.
    received: AtomicU64,
    /// When the latest delivery arrived (ns on [`now_ns`]'s clock).
    last_received: AtomicU64,
    /// Messages that were not a well-formed probe for this connection.
    garbage: AtomicU64,
}

/// What the publishers did.
#[derive(Default)]
struct Published {
    events: u64,
    /// Deliveries owed: for each event, the connections of its user.
    owed: u64,
    /// The server's own count of connections each event was handed to, summed.
    handed: u64,
    errors: Vec<String>,
}

/// Runs once, or at the maximum and then at half of it.
pub async fn run(args: &Args, report: &mut Report) -> Fallible<()> {
    if args.then_half {
        let max_events_per_s = run_once(args, 0.0, "max", report).await?;
        if max_events_per_s > 0.0 {
            run_once(args, max_events_per_s / 2.0, "half", report).await?;
        }
        Ok(())
    } else {
        let phase = if args.rate > 0.0 { "paced" } else { "max" };
        run_once(args, args.rate, phase, report).await.map(|_| ())
    }
}

/// Sets up, publishes at `rate` (0 = maximum), drains and reports; returns events/s.
async fn run_once(args: &Args, rate: f64, phase: &str, report: &mut Report) -> Fallible<f64> {
    let addr = check_loopback(args.addr)?;
    let nodes: Vec<SocketAddr> = std::iter::once(Ok(addr))
        .chain(args.spread.iter().copied().map(check_loopback))
        .collect::<Fallible<_>>()?;
    let admin = args.admin.map(check_loopback).transpose()?;
    if args.proto == Proto::Raw {
        return Err("fanout needs tether or redis: serve-raw has no events".into());
    }
    if args.proto == Proto::Tether && admin.is_none() {
        return Err("fanout against tether needs --admin (the admin API address)".into());
    }
    raise_open_files()?;
    let users = args.users.clamp(1, args.connections.max(1));
    let histogram: SharedHistogram = Arc::new(Mutex::new(new_histogram()));
    let tally = Arc::new(Tally::default());
    let receivers = start_receivers(args, &nodes, users, &histogram, &tally).await?;
    let mut per_user = vec![0u64; users];
    for i in 0..args.connections {
        per_user[i % users] += 1;
    }
    let per_user = Arc::new(per_user);

    let metrics = match (args.server_latency, args.proto, admin) {
        (true, Proto::Tether, Some(admin)) => Some(admin),
        (true, _, _) => return Err("--server-latency needs tether and --admin".into()),
        _ => None,
    };
    let server_before = match metrics {
        Some(admin) => Some(DeliveryHistogram::scrape(admin, args.token.clone()).await?),
        None => None,
    };
    let cpu_before = args.pid.map(cpu_times).transpose()?;
    let start = now_ns() + 50_000_000;
    let end = start + (args.duration * 1e9) as u64;
    let paced = (rate > 0.0).then_some(rate);
    let total_events = paced.map(|rate| (rate * args.duration).ceil() as u64);
    let next = Arc::new(AtomicU64::new(0));
    let batch = args.batch.max(1);
    let mut publishers = Vec::with_capacity(args.publishers);
    for _ in 0..args.publishers.max(1) {
        let mut publisher = match args.proto {
            Proto::Redis => Publisher::Redis(RedisPublisher::connect(addr).await?),
            _ => Publisher::Http(HttpClient::new(
                admin.ok_or("no admin address")?,
                args.token.clone(),
            )),
        };
        let next = Arc::clone(&next);
        let per_user = Arc::clone(&per_user);
        let prefix = args.user_prefix.clone();
        publishers.push(tokio::spawn(async move {
            let mut published = Published::default();
            let mut events = Vec::with_capacity(batch as usize);
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                let mut last = first + batch - 1;
                let intended = match paced {
                    Some(rate) => {
                        if total_events.is_some_and(|total| first >= total) {
                            break;
                        }
                        last = total_events.map_or(last, |total| last.min(total - 1));
                        // Sent when the last of them is due.
                        let due = start + (last as f64 * 1e9 / rate) as u64;
                        tokio::time::sleep_until(instant_at(due)).await;
                        due
                    }
                    None => {
                        let now = now_ns();
                        if now >= end {
                            break;
                        }
                        if now < start {
                            tokio::time::sleep_until(instant_at(start)).await;
                        }
                        now_ns()
                    }
                };
                events.clear();
                let mut owed = 0;
                for k in first..=last {
                    let user = (k % per_user.len() as u64) as usize;
                    owed += per_user[user];
                    events.push((format!("{prefix}{user}"), format!("{k} {intended}")));
                }
                match publisher.publish(&events, batch > 1).await {
                    Ok(handed) => {
                        published.events += events.len() as u64;
                        published.owed += owed;
                        published.handed += handed;
                    }
                    Err(err) => {
                        published.errors.push(err);
                        if published.errors.len() >= 10 {
                            break;
                        }
                    }
                }
            }
            published
        }));
    }
    let mut published = Published::default();
    for publisher in publishers {
        let done = publisher
            .await
            .map_err(|err| format!("publisher failed: {err}"))?;
        published.events += done.events;
        published.owed += done.owed;
        published.handed += done.handed;
        published.errors.extend(done.errors);
    }
    let publish_end = now_ns();
    let drain_until = publish_end + (args.drain * 1e9) as u64;
    while tally.received.load(Ordering::Relaxed) < published.owed && now_ns() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server_cpu = match (args.pid, cpu_before) {
        (Some(pid), Some(before)) => Some(cpu_times(pid)? - before),
        _ => None,
    };
    let server_cpu_s = server_cpu.map(|cpu| cpu.user + cpu.system);
    let mut receiver_errors = Vec::new();
    for receiver in receivers {
        receiver.abort();
        match receiver.await {
            Ok(Err(err)) => receiver_errors.push(err),
            Ok(Ok(())) => receiver_errors.push("a receiver stopped early".into()),
            Err(_) => {} // aborted, as expected
        }
    }
    let server = match (metrics, &server_before) {
        (Some(admin), Some(before)) => Some(
            DeliveryHistogram::scrape(admin, args.token.clone())
                .await?
                .since(before),
        ),
        _ => None,
    };
    let server_p50_us = server
        .as_ref()
        .and_then(|histogram| histogram.quantile_us(0.5));
    let server_p99_us = server
        .as_ref()
        .and_then(|histogram| histogram.quantile_us(0.99));
    let received = tally.received.load(Ordering::Relaxed);
    let last = tally.last_received.load(Ordering::Relaxed).max(start + 1);
    let garbage = tally.garbage.load(Ordering::Relaxed);
    let lost = published.owed.saturating_sub(received);
    let latency = Percentiles::of_shared(&histogram);
    let deliveries_per_s = received as f64 / ((last - start) as f64 / 1e9);
    let events_per_s = published.events as f64 / ((publish_end - start) as f64 / 1e9);
    let label = args.proto.label();
    report.emit(&json!({
        "scenario": "fanout",
        "target": label,
        "connections": args.connections,
        "nodes": nodes.len(),
        "users": users,
        "phase": phase,
        "rate": paced,
        "publishers": args.publishers,
        "batch": batch,
        "duration_s": args.duration,
        "events": published.events,
        "events_per_s": events_per_s,
        "deliveries": received,
        "deliveries_per_s": deliveries_per_s,
        "handed": published.handed,
        "p50_us": latency.p50_us,
        "p99_us": latency.p99_us,
        "p999_us": latency.p999_us,
        "max_us": latency.max_us,
        "server_p50_us": server_p50_us,
        "server_p99_us": server_p99_us,
        "server_observed": server.as_ref().map(DeliveryHistogram::count),
        "server_cpu_s": server_cpu_s,
        "server_cpu_ns_per_delivery": server_cpu_s
            .filter(|_| received > 0)
            .map(|cpu| cpu * 1e9 / received as f64),
        // User space alone: what the server's own code costs, apart from the kernel's TCP.
        "server_user_ns_per_delivery": server_cpu
            .filter(|_| received > 0)
            .map(|cpu| cpu.user * 1e9 / received as f64),
        "lost": lost,
        "extra": received.saturating_sub(published.owed),
        "garbage": garbage,
        "errors": published.errors.len() + receiver_errors.len(),
    }))?;
    report.table(
        &format!(
            "fanout — {label} at {addr}{}: {} connections over {users} user(s), {} publishers, \
             {batch} event(s) per request, rate {}",
            if nodes.len() > 1 {
                format!(" and {} more node(s)", nodes.len() - 1)
            } else {
                String::new()
            },
            args.connections,
            args.publishers,
            paced.map_or("max".into(), count)
        ),
        &[
            "events/s",
            "deliveries/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "server p50 µs",
            "server p99 µs",
            "owed",
            "lost",
        ],
        &[vec![
            count(events_per_s),
            count(deliveries_per_s),
            dec(latency.p50_us),
            dec(latency.p99_us),
            dec(latency.p999_us),
            dec(latency.max_us),
            server_p50_us.map_or("-".into(), dec),
            server_p99_us.map_or("-".into(), dec),
            count(published.owed as f64),
            lost.to_string(),
        ]],
    );
    report.check(lost == 0, || {
        format!("fanout {label}: {lost} deliveries lost")
    });
    report.check(received <= published.owed, || {
        format!(
            "fanout {label}: {} deliveries more than owed",
            received - published.owed
        )
    });
    report.check(garbage == 0, || {
        format!("fanout {label}: {garbage} unexpected messages")
    });
    report.check(published.events > 0, || {
        format!("fanout {label}: nothing published")
    });
    let errors: Vec<String> = published
        .errors
        .into_iter()
        .chain(receiver_errors)
        .collect();
    report.check(errors.is_empty(), || {
        format!(
            "fanout {label}: {} errors, first: {}",
            errors.len(),
            errors[0]
        )
    });
    Ok(events_per_s)
}

/// Opens, logs in (or subscribes) and starts a reading task for every connection.
async fn start_receivers(
    args: &Args,
    nodes: &[SocketAddr],
    users: usize,
    histogram: &SharedHistogram,
    tally: &Arc<Tally>,
) -> Fallible<Vec<tokio::task::JoinHandle<Fallible<()>>>> {
    let sources = sources(args.sources);
    let mut receivers = Vec::with_capacity(args.connections);
    let mut first = 0;
    while first < args.connections {
        let batch = (args.connections - first).min(CONCURRENCY);
        let mut pending = Vec::with_capacity(batch);
        for i in first..first + batch {
            let source = sources[i % sources.len()];
            let addr = nodes[i % nodes.len()];
            let name = format!("{}{}", args.user_prefix, i % users);
            let (request, expected) = match args.proto {
                Proto::Redis => {
                    let request = format!("SUBSCRIBE {name}\r\n").into_bytes();
                    let confirm = format!(
                        "*3\r\n$9\r\nsubscribe\r\n${}\r\n{name}\r\n:1\r\n",
                        name.len()
                    );
                    (request, confirm.into_bytes())
                }
                _ => (
                    login_message(&name, &args.password),
                    tether_client::framing::OnePart::LoginValid
                        .message()
                        .to_vec(),
                ),
            };
            pending.push(tokio::spawn(async move {
                let setup = async {
                    let mut stream = crate::stream::connect(source, addr, false, None).await?;
                    exchange(&mut stream, &request, &expected).await?;
                    Ok::<_, String>(stream)
                };
                tokio::time::timeout(Duration::from_secs(60), setup)
                    .await
                    .map_err(|_| format!("receiver {i}: set-up timed out"))?
                    .map_err(|err| format!("receiver {i}: {err}"))
            }));
        }
        for task in pending {
            let stream = task
                .await
                .map_err(|err| format!("set-up task failed: {err}"))??;
            let receiver = Receiver {
                recorder: Recorder::new(histogram),
                tally: Arc::clone(tally),
            };
            receivers.push(match args.proto {
                Proto::Redis => tokio::spawn(receiver.redis(stream)),
                _ => tokio::spawn(receiver.tether(stream)),
            });
        }
        first += batch;
    }
    Ok(receivers)
}

/// One receiving connection.
struct Receiver {
    recorder: Recorder,
    tally: Arc<Tally>,
}

impl Receiver {
    /// Reads `event␟time␟"k ns"` messages until aborted.
    async fn tether(mut self, mut stream: BenchStream) -> Fallible<()> {
        let mut splitter = MessageSplitter::new(RS);
        let mut input = vec![0u8; 16 * 1024];
        loop {
            let read = read_some(&mut stream, &mut input).await?;
            let received = now_ns();
            let mut count = 0;
            splitter.feed(&input[..read], |message| {
                let mut parts = parts(message);
                match (parts.next(), parts.next(), parts.next(), parts.next()) {
                    (Some(word), Some(_time), Some(text), None) if word == EVENT.as_bytes() => {
                        let (_, sent) = parse_probe(text)?;
                        self.recorder.record(received.saturating_sub(sent));
                        count += 1;
                    }
                    _ => {
                        self.tally.garbage.fetch_add(1, Ordering::Relaxed);
                        return Err(format!("unexpected message {:?}", printable(message)));
                    }
                }
                Ok(())
            })?;
            self.note(count, received);
        }
    }

    /// Reads pub/sub pushes (`*3 $7 message $n channel $n payload`, one line each).
    async fn redis(mut self, mut stream: BenchStream) -> Fallible<()> {
        let mut splitter = MessageSplitter::new(b'\n');
        let mut input = vec![0u8; 16 * 1024];
        let mut line_in_push = 0usize;
        loop {
            let read = read_some(&mut stream, &mut input).await?;
            let received = now_ns();
            let mut count = 0;
            splitter.feed(&input[..read], |line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let well_formed = match line_in_push {
                    0 => line == b"*3",
                    2 => line == b"message",
                    6 => {
                        let (_, sent) = parse_probe(line)?;
                        self.recorder.record(received.saturating_sub(sent));
                        count += 1;
                        true
                    }
                    _ => true,
                };
                if !well_formed {
                    self.tally.garbage.fetch_add(1, Ordering::Relaxed);
                    return Err(format!("unexpected line {:?}", printable(line)));
                }
                line_in_push = (line_in_push + 1) % 7;
                Ok(())
            })?;
            self.note(count, received);
        }
    }

    fn note(&mut self, count: u64, received: u64) {
        if count > 0 {
            self.tally.received.fetch_add(count, Ordering::Relaxed);
            self.tally
                .last_received
                .fetch_max(received, Ordering::Relaxed);
            // The run may be aborted at any time: keep the histogram current.
            self.recorder.flush();
        }
    }
}

async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, input: &mut [u8]) -> Fallible<usize> {
    match stream.read(input).await {
        Ok(0) => Err("the server closed the connection".into()),
        Ok(read) => Ok(read),
        Err(err) => Err(format!("read failed: {err}")),
    }
}

/// Where events are published.
enum Publisher {
    /// tether's admin API.
    Http(HttpClient),
    /// Redis PUBLISH on a connection of its own.
    Redis(RedisPublisher),
}

impl Publisher {
    /// Publishes `(user, text)` events in one request (`as_batch`: tether's batch route;
    /// Redis: PUBLISH pipelined); returns how many connections the server handed them to.
    async fn publish(&mut self, events: &[(String, String)], as_batch: bool) -> Fallible<u64> {
        match self {
            Self::Http(client) => {
                let body = if as_batch {
                    let events: Vec<_> = events
                        .iter()
                        .map(|(user, text)| json!({ "user": user, "text": text }))
                        .collect();
                    json!({ "events": events })
                } else {
                    let (user, text) = events.first().ok_or("nothing to publish")?;
                    json!({ "user": user, "text": text })
                };
                let response = client
                    .post_json("/v1/events", body.to_string().as_bytes())
                    .await?;
                if response.status != 202 {
                    return Err(format!(
                        "POST /v1/events answered {}: {}",
                        response.status,
                        String::from_utf8_lossy(&response.body)
                    ));
                }
                let answer: serde_json::Value = serde_json::from_slice(&response.body)
                    .map_err(|err| format!("POST /v1/events answered non-JSON: {err}"))?;
                let connections = |one: &serde_json::Value| {
                    one["connections"].as_u64().ok_or_else(|| {
                        format!("POST /v1/events answer has no connections: {answer}")
                    })
                };
                if !as_batch {
                    return connections(&answer);
                }
                let answers = answer["events"]
                    .as_array()
                    .ok_or_else(|| format!("POST /v1/events answer has no events: {answer}"))?;
                if answers.len() != events.len() {
                    return Err(format!(
                        "POST /v1/events answered {} events for {}",
                        answers.len(),
                        events.len()
                    ));
                }
                answers.iter().map(connections).sum()
            }
            Self::Redis(publisher) => publisher.publish(events).await,
        }
    }
}

/// A Redis connection sending PUBLISH and reading its integer reply.
struct RedisPublisher {
    stream: TcpStream,
    splitter_input: Vec<u8>,
    command: Vec<u8>,
}

impl RedisPublisher {
    async fn connect(addr: SocketAddr) -> Fallible<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|err| format!("cannot connect to Redis at {addr}: {err}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            splitter_input: Vec::new(),
            command: Vec::new(),
        })
    }

    /// Sends one PUBLISH per event in one write, then reads their integer replies.
    async fn publish(&mut self, events: &[(String, String)]) -> Fallible<u64> {
        use std::io::Write;
        self.command.clear();
        for (channel, text) in events {
            let _ = write!(
                self.command,
                "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n{text}\r\n",
                channel.len(),
                text.len()
            );
        }
        self.stream
            .write_all(&self.command)
            .await
            .map_err(|err| format!("PUBLISH write failed: {err}"))?;
        let mut handed = 0;
        let mut replies = 0;
        while replies < events.len() {
            if let Some(end) = memchr::memchr(b'\n', &self.splitter_input) {
                let line: Vec<u8> = self.splitter_input.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                handed += line
                    .trim_end()
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or_else(|| format!("PUBLISH answered {:?}", line.trim_end()))?;
                replies += 1;
                continue;
            }
            let mut chunk = [0u8; 4096];
            let read = read_some(&mut self.stream, &mut chunk).await?;
            self.splitter_input.extend_from_slice(&chunk[..read]);
        }
        Ok(handed)
    }
}
