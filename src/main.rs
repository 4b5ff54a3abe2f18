//! The `tether` command: parses arguments, sets up logging and runs the server, or changes
//! the user store (`passwd`, `deluser`; `db` for the users table), checks the configuration (`check-config`), talks
//! to a server as a client (`client`), or writes shell completions and the man page.

#![forbid(unsafe_code)]

/// mimalloc instead of glibc malloc: fan-out allocates and frees a message per connection
/// in bursts, which overflow glibc's per-thread cache (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tether::config::Config;
use tether::users::cli as users_cli;
use tether::users::db_cli;
use tether::users::failure::Failure;

/// A session server: long-lived TCP connections, password logins, pushed events and forced
/// log-outs.
#[derive(Debug, Parser)]
#[command(
    name = "tether",
    version,
    about,
    long_about = "A session server: long-lived TCP connections, password logins, pushed \
                  events and forced log-outs.\n\n\
                  Without a command, tether runs the server on the configuration file \
                  (--config, or ./server.toml; all defaults when that does not exist).",
    after_help = "Without a command, tether runs the server; --help tells about signals, \
                  RUST_LOG and exit codes.",
    after_long_help = "Signals (to the running server):\n  \
                       SIGINT, SIGTERM  stop: send `shutdown` to every client, flush for \
                       up to server.shutdown_grace, exit 0\n  \
                       SIGHUP           re-read the users file now (with auth.database: \
                       check the users logged in here against the table now)\n\n\
                       Environment:\n  \
                       RUST_LOG         overrides log.level, in env_logger's syntax \
                       (RUST_LOG=debug, RUST_LOG=tether_actors=debug)\n\n\
                       Exit codes: 0 stopped on a signal; 1 a run-time failure (an address \
                       in use); 2 an invalid configuration or users file.\n\n\
                       Protocol and admin API: docs/protocol.md and docs/admin-api.md in \
                       the source repository."
)]
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
    /// Set a user's password in the user store (the users file, or the users table with
    /// auth.database), creating the user if needed: prompted twice on a terminal, one line
    /// from standard input otherwise
    Passwd {
        /// The user name (1–128 bytes, no control characters)
        name: String,
    },
    /// Remove a user from the user store (exit code 1 if there is none by that name)
    Deluser {
        /// The user name
        name: String,
    },
    /// Work on the users table in PostgreSQL (auth.database)
    #[command(subcommand)]
    Db(DbCommand),
    /// Connect to a server as a client: a prompt for people, flags for scripts
    Client(tether::cli::ClientArgs),
    /// Check the configuration and the users file, and print the settings in force (the
    /// admin token masked); exit code 0 when both are valid, 2 otherwise
    CheckConfig,
    /// Write a new verifier key (auth.verifier_key_file): 32 random bytes as 64 hexadecimal
    /// digits, mode 0600
    Keygen {
        /// Where to write it
        path: PathBuf,
        /// Replace an existing file (every verifier made under the old key becomes useless)
        #[arg(long)]
        force: bool,
    },
    /// Print a completion script for SHELL to standard output
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to standard output
    Man,
}

/// What to do with the users table.
#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Create the users table and the trigger that notifies the servers of every change
    /// (idempotent)
    Init {
        /// Print the SQL instead of applying it
        #[arg(long)]
        print: bool,
    },
    /// Copy a users file's entries into the table (insert or update) and print the counts
    Import {
        /// The users file (TOML, as `auth.users_file`)
        file: PathBuf,
    },
}

/// Where the configuration is read when `--config` is not given.
const DEFAULT_CONFIG: &str = "server.toml";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config;
    match cli.command {
        Some(Command::Completions { shell }) => {
            // Made in memory, then written: a closed pipe ends the command quietly.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tether", &mut script);
            tether::stdout::bytes(&script);
            ExitCode::SUCCESS
        }
        Some(Command::Man) => {
            let mut page = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut page) {
                Ok(()) => {
                    tether::stdout::bytes(&page);
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("tether: cannot make the man page: {err}");
                    ExitCode::from(1)
                }
            }
        }
        Some(Command::Passwd { name }) => {
            with_config(config, |config| users_cli::passwd(config, &name))
        }
        Some(Command::Deluser { name }) => {
            with_config(config, |config| users_cli::deluser(config, &name))
        }
        Some(Command::Db(DbCommand::Init { print })) => {
            with_config(config, |config| db_cli::init(config, print))
        }
        Some(Command::Db(DbCommand::Import { file })) => {
            with_config(config, |config| db_cli::import(config, &file))
        }
        Some(Command::CheckConfig) => with_config(config, tether::check_config::check_config),
        Some(Command::Keygen { path, force }) => outcome(tether::admission::keygen(&path, force)),
        Some(Command::Client(args)) => match load_config(config) {
            Ok(config) => ExitCode::from(tether::cli::run(args, &config)),
            Err(exit) => exit,
        },
        None => match load_config(config) {
            Ok(config) => serve(config),
            Err(exit) => exit,
        },
    }
}

/// The configuration at `path` (or the default file), or exit code 2 with the reason on
/// standard error.
fn load_config(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    let loaded = match &path {
        Some(path) => Config::load(path),
        None => Config::load_or_defaults(&PathBuf::from(DEFAULT_CONFIG)),
    };
    loaded.map_err(|err| {
        eprintln!("tether: {err}");
        ExitCode::from(2)
    })
}

/// Runs `command` on the configuration: its answer on standard output, or its failure on
/// standard error with its exit code.
fn with_config(
    path: Option<PathBuf>,
    command: impl FnOnce(&Config) -> Result<String, Failure>,
) -> ExitCode {
    match load_config(path) {
        Ok(config) => outcome(command(&config)),
        Err(exit) => exit,
    }
}

/// A command's answer on standard output, or its failure on standard error with its exit
/// code.
fn outcome(result: Result<String, Failure>) -> ExitCode {
    match result {
        Ok(done) => {
            tether::stdout::line(done);
            ExitCode::SUCCESS
        }
        Err(Failure { exit_code, message }) => {
            eprintln!("tether: {message}");
            ExitCode::from(exit_code)
        }
    }
}

/// Sets up logging and runs the server until it stops.
fn serve(config: Config) -> ExitCode {
    env_logger::Builder::new()
        .filter_level(config.log.level)
        // actix-server narrates its workers starting and stopping at info; tether logs its
        // listeners itself.
        .filter_module("actix_server", config.log.level.min(log::LevelFilter::Warn))
        // The redis crate's cluster client warns at every node it cannot reach while a
        // Redis Cluster fails over, many times a second; the broker logs the outage once.
        .filter_module("redis", config.log.level.min(log::LevelFilter::Error))
        .parse_env("RUST_LOG")
        .init();
    let outcome = tether::serve::run(config);
    ExitCode::from(u8::try_from(outcome.exit_code()).unwrap_or(1))
}
