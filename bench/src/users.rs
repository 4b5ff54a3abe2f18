//! `make-users`: a users file (SPEC §5) with bench users `PREFIX0 ..`, all with one
//! password. The hash is computed once and shared by every user: bcrypt verifies each
//! login at the hash's cost all the same, and 20,000 users are written in milliseconds.

use crate::Fallible;
use std::io::Write;

/// Arguments of `make-users`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many users.
    count: u32,
    /// bcrypt cost of the hash (4 to 31).
    #[arg(long, default_value_t = 4)]
    cost: u32,
    /// Users are named PREFIX0, PREFIX1, …
    #[arg(long, default_value = "u")]
    prefix: String,
    /// Everyone's password.
    #[arg(long, default_value = "bench")]
    password: String,
}

/// Prints the users file to standard output.
pub fn run(args: &Args) -> Fallible<()> {
    let hash = bcrypt::hash(&args.password, args.cost)
        .map_err(|err| format!("cannot hash at cost {}: {err}", args.cost))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut write = || -> std::io::Result<()> {
        writeln!(
            out,
            "# {} bench users ({}0 ..), password {:?}, bcrypt cost {}",
            args.count, args.prefix, args.password, args.cost
        )?;
        for i in 0..args.count {
            writeln!(
                out,
                "[users.{}{i}]\npassword_hash = \"{hash}\"",
                args.prefix
            )?;
        }
        out.flush()
    };
    write().map_err(|err| format!("cannot write the users file: {err}"))
}
