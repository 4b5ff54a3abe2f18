//! `tether-bench`: drives a running tether (or Redis, or the raw anchor server it carries)
//! over loopback and reports throughput, latency and memory, one readable table per
//! scenario and one JSON line per result. See `BENCHMARKS.md` for how the figures are made.

#![forbid(unsafe_code)]

mod churn;
mod cmd;
mod fanout;
mod hold;
mod http;
mod login_storm;
mod net;
mod proto;
mod report;
mod serve_raw;
mod server_histogram;
mod stats;
mod stream;
mod tls;
mod users;

use clap::{Parser, Subcommand};
use proto::Proto;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Result of a bench step: errors are sentences that say what failed.
pub type Fallible<T> = Result<T, String>;

/// The server a scenario drives, as `cmd`, `hold` and `churn` take it: where it listens
/// and which protocol it speaks.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Server address (loopback).
    #[arg(long)]
    pub addr: SocketAddr,
    /// Which server and protocol.
    #[arg(long, value_enum, default_value = "tether")]
    pub proto: Proto,
    /// Connect with TLS, trusting the CA certificates of this PEM file (tether's
    /// `server.tls.listen`; every handshake a full one).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry, with `--tls-ca`.
    #[arg(long, default_value = "localhost")]
    pub tls_name: String,
}

impl Target {
    /// The TLS client `--tls-ca` asks for, if it does.
    pub fn tls(&self) -> Fallible<Option<stream::TlsClient>> {
        self.tls_ca
            .as_deref()
            .map(|ca_file| stream::TlsClient::new(ca_file, &self.tls_name))
            .transpose()
    }
}

/// Command line of `tether-bench`.
#[derive(Debug, Parser)]
#[command(name = "tether-bench", version, about)]
struct Cli {
    /// Also append every JSON result line to this file.
    #[arg(long, global = true)]
    json_out: Option<PathBuf>,
    /// Client event-loop threads (1 = a current-thread runtime).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// A label added to every JSON line, such as the repeat number.
    #[arg(long, global = true)]
    tag: Option<String>,
    /// Report every JSON line under this target name instead of the protocol's, such as
    /// `tether-w1` for a second tether started with other settings.
    #[arg(long, global = true)]
    target_name: Option<String>,
    /// Connect over WebSocket (tether's `server.websocket.listen`), upgrading on this path:
    /// every write one binary frame (`wss` with `--tls-ca`).
    #[arg(long, global = true)]
    websocket: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A minimal single-thread tokio server answering every message with `prolongate_ack`.
    ServeRaw(serve_raw::Args),
    /// Print a users file with COUNT bench users sharing one password.
    MakeUsers(users::Args),
    /// Print COUNT loopback TCP ports that are free right now, for scripts.
    FreePorts {
        /// How many ports.
        count: usize,
    },
    /// C connections each keeping D commands in flight: replies/s and latency.
    Cmd(cmd::Args),
    /// N idle logged-in connections: server RSS per connection.
    Hold(hold::Args),
    /// Events published through the admin API (or Redis PUBLISH) to many connections.
    Fanout(fanout::Args),
    /// `prolongate` latency at half the maximum rate, with and without a bcrypt login storm.
    LoginStorm(login_storm::Args),
    /// Users logging in again at once (after a restart, on another node): seconds, bcrypt
    /// checks and logins a verifier admitted; or logins in a row, for the cost of one.
    Readmit(login_storm::ReadmitArgs),
    /// Connect, log in, drop, in a loop: connections/s and server RSS before and after.
    Churn(churn::Args),
    /// TLS against plaintext on one tether: `cmd` ratio, handshakes/s, and `prolongate`
    /// p99 of open TLS connections during a handshake storm against quiet.
    Tls(tls::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::ServeRaw(args) => return exit(serve_raw::run(&args)),
        Command::MakeUsers(args) => return exit(users::run(&args)),
        Command::FreePorts { count } => return exit(net::print_free_ports(count)),
        _ => {}
    }
    if let Some(path) = &cli.websocket {
        stream::use_websocket(path);
    }
    let runtime = match build_runtime(cli.threads) {
        Ok(runtime) => runtime,
        Err(err) => return exit(Err(err)),
    };
    let mut report = match report::Report::new(
        cli.json_out.as_deref(),
        cli.threads,
        cli.tag.as_deref(),
        cli.target_name.as_deref(),
    ) {
        Ok(report) => report,
        Err(err) => return exit(Err(err)),
    };
    let outcome = runtime.block_on(async {
        match &cli.command {
            Command::Cmd(args) => cmd::run(args, &mut report).await,
            Command::Hold(args) => hold::run(args, &mut report).await,
            Command::Fanout(args) => fanout::run(args, &mut report).await,
            Command::LoginStorm(args) => login_storm::run(args, &mut report).await,
            Command::Churn(args) => churn::run(args, &mut report).await,
            Command::Readmit(args) => login_storm::readmit(args, &mut report).await,
            Command::Tls(args) => tls::run(args, &mut report).await,
            Command::ServeRaw(_) | Command::MakeUsers(_) | Command::FreePorts { .. } => Ok(()),
        }
    });
    // Connections still open in detached tasks must not delay the exit.
    runtime.shutdown_background();
    if let Err(err) = outcome {
        return exit(Err(err));
    }
    match report.failures() {
        [] => ExitCode::SUCCESS,
        failures => {
            for failure in failures {
                eprintln!("tether-bench: FAILED: {failure}");
            }
            ExitCode::from(1)
        }
    }
}

fn build_runtime(threads: usize) -> Fallible<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the client runtime: {err}"))
}

fn exit(outcome: Fallible<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tether-bench: {err}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_invocations_of_the_bench_scripts_parse() {
        // As bench/smoke.sh, bench/run-all.sh and bench/common.sh write them, variables
        // filled in.
        let invocations = [
            "free-ports 4",
            "make-users 2 --cost 10 --prefix storm",
            "serve-raw 127.0.0.1:7702",
            "--json-out o.jsonl cmd --proto raw --addr 127.0.0.1:1 --shapes 10x1,10x8 \
             --duration 1 --warmup 0.2",
            "--tag r1 --json-out o.jsonl --threads 2 --target-name tether-w1 cmd \
             --proto tether --addr 127.0.0.1:1 --shapes 50x1,50x16,1000x1 --duration 8 \
             --warmup 2",
            "hold --proto redis --addr 127.0.0.1:1 --pid 7 --connections 400 \
             --checkpoints 200 --users 1000 --pause 0.2 --settle 0.5",
            "--threads 2 fanout --proto tether --addr 127.0.0.1:1 --admin 127.0.0.1:2 \
             --connections 10000 --users 10000 --duration 8 --then-half --publishers 16",
            "fanout --proto redis --addr 127.0.0.1:1 --connections 100 --users 1 --rate 200 \
             --duration 1 --drain 10",
            "--threads 2 fanout --proto tether --addr 127.0.0.1:1 --admin 127.0.0.1:2 \
             --connections 10000 --users 10000 --duration 8 --then-half --publishers 16 \
             --batch 500",
            "fanout --proto redis --addr 127.0.0.1:1 --connections 500 --users 500 --rate 2000 \
             --duration 1 --drain 10 --batch 50",
            "--threads 2 fanout --proto tether --addr 127.0.0.1:1 --admin 127.0.0.1:2 \
             --connections 1000 --users 1 --duration 8 --then-half --publishers 8 \
             --server-latency --pid 7",
            "--threads 2 --target-name cluster-3nodes fanout --addr 127.0.0.1:1 \
             --spread 127.0.0.1:3,127.0.0.1:4 --admin 127.0.0.1:2 --connections 1000 \
             --users 1000 --rate 2000 --duration 8 --publishers 4 --drain 10",
            "--threads 2 --target-name cluster-redis fanout --proto redis --addr 127.0.0.1:1 \
             --connections 3 --users 1 --duration 1 --rate 300 --publishers 8 --drain 10",
            "login-storm --addr 127.0.0.1:1 --connections 10 --duration 1 --warmup 0.2 \
             --storm-rate 4 --storm-connections 2",
            "churn --proto tether --addr 127.0.0.1:1 --pid 7 --duration 1 --concurrency 8 \
             --settle 0.2",
            "tls --addr 127.0.0.1:1 --tls-addr 127.0.0.1:2 --tls-ca ca.pem --rounds 3 \
             --duration 5 --warmup 1",
            "tls --addr 127.0.0.1:1 --tls-addr 127.0.0.1:2 --tls-ca ca.pem --rounds 2 \
             --shape 10x8 --storm-shape 10x1 --duration 1 --warmup 0.2 --storm-concurrency 2",
            "--target-name tether-tls hold --addr 127.0.0.1:2 --tls-ca ca.pem --pid 7 \
             --connections 400 --checkpoints 200 --users 1000 --pause 0.2 --settle 0.5",
            "--target-name tether-tls hold --addr 127.0.0.1:2 --tls-ca ca.pem --pid 7 \
             --connections 10000 --checkpoints 5000",
            "--websocket / --target-name tether-ws cmd --addr 127.0.0.1:3 --shapes 50x16 \
             --duration 8 --warmup 2",
            "--websocket / --threads 2 --target-name tether-ws fanout --addr 127.0.0.1:3 \
             --admin 127.0.0.1:2 --connections 1000 --users 1 --duration 8 --publishers 8",
        ];
        for line in invocations {
            let words = std::iter::once("tether-bench").chain(line.split_whitespace());
            if let Err(err) = Cli::try_parse_from(words) {
                panic!("{line}: {err}");
            }
        }
    }
}
