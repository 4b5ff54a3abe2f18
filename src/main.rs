//! The `tether` command: parses arguments, sets up logging and runs the server.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tether::config::Config;

/// A session server: long-lived TCP connections, password logins, pushed events and forced
/// log-outs.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file [default: ./server.toml, all defaults if it does not exist]
    #[arg(long, short, value_name = "PATH")]
    config: Option<PathBuf>,
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
    env_logger::Builder::new()
        .filter_level(config.log.level)
        .parse_env("RUST_LOG")
        .init();
    let outcome = tether::serve::run(config);
    ExitCode::from(u8::try_from(outcome.exit_code()).unwrap_or(1))
}
