//! Writing the command line's output to standard output, where a closed pipe is normal:
//! `tether man | head`, `tether client --listen | grep -m1 event`. Rust ignores SIGPIPE,
//! so such a write fails with `EPIPE`, and `println!` would panic ("failed printing to
//! stdout: Broken pipe"). Every line the CLI prints goes through [`line()`] instead: a
//! closed standard output ends the command quietly, as the reader meant, with exit code 0;
//! any other write error is reported once, with exit code 1.

use std::io::Write;

/// Writes `text` and a line feed to standard output (see the module comment for errors).
pub fn line<T: std::fmt::Display>(text: T) {
    let mut out = std::io::stdout().lock();
    let written = writeln!(out, "{text}").and_then(|()| out.flush());
    if let Err(err) = written {
        fail(&err);
    }
}

/// Writes `bytes` as they are to standard output (see the module comment for errors).
pub fn bytes(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(err) = out.write_all(bytes).and_then(|()| out.flush()) {
        fail(&err);
    }
}

/// Ends the process after a failed write: quietly when the reader has gone.
fn fail(err: &std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("tether: cannot write to standard output: {err}");
    std::process::exit(1);
}
