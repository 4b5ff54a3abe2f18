//! The `tether` command: parses arguments, sets up logging and runs the server, or edits
//! the users file (`passwd`, `deluser`).

/// mimalloc instead of glibc malloc: fan-out allocates and frees a message per connection
/// in bursts, which overflow glibc's per-thread cache (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tether::config::Config;
use tether::users_cli::{self, Failure};

/// A session server: long-lived TCP connections, password logins, pushed events and forced
/// log-outs.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file [default: ./server.toml, all defaults if it does not exist]
    // No short form: `-c` is `tether client -c COMMAND`, as in `redis-cli`-style tools.
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Without a command, tether runs the server.
    #[command(subcommand)]
    command: Option<Command>,
}

/// What to do instead of running the server.
#[derive(Debug, Subcommand)]
enum Command {
    /// Set a user's password in the users file, creating the user if needed: prompted twice
    /// on a terminal, one line from standard input otherwise
    Passwd {
        /// The user name (1–128 bytes, no control characters)
        name: String,
    },
    /// Remove a user from the users file (exit code 1 if there is none by that name)
    Deluser {
        /// The user name
        name: String,
    },
    /// Connect to a server as a client: a prompt for people, flags for scripts
    Client(tether::client::ClientArgs),
}

/// Where the configuration is read when `--config` is not given.
const DEFAULT_CONFIG: &str = "server.toml";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match &cli.config {
        Some(path) => Config::load(path),
        None => Config::load_or_defaults(&PathBuf::from(DEFAULT_CONFIG)),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(err) => {
            eprintln!("tether: {err}");
            return ExitCode::from(2);
        }
    };
    let edited = match cli.command {
        Some(Command::Passwd { name }) => users_cli::passwd(&config, &name),
        Some(Command::Deluser { name }) => users_cli::deluser(&config, &name),
        Some(Command::Client(args)) => return ExitCode::from(tether::client::run(args, &config)),
        None => {
            env_logger::Builder::new()
                .filter_level(config.log.level)
                // actix-server narrates its workers starting and stopping at info; tether
                // logs its listeners itself.
                .filter_module("actix_server", config.log.level.min(log::LevelFilter::Warn))
                .parse_env("RUST_LOG")
                .init();
            let outcome = tether::serve::run(config);
            return ExitCode::from(u8::try_from(outcome.exit_code()).unwrap_or(1));
        }
    };
    match edited {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(Failure { exit_code, message }) => {
            eprintln!("tether: {message}");
            ExitCode::from(exit_code)
        }
    }
}
