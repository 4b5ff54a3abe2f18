//! A private PostgreSQL server for a test: `initdb` and `pg_ctl` (Debian's `postgresql`
//! package, `/usr/lib/postgresql/*/bin`, or any installation on `PATH`) on a temporary folder and a free loopback port,
//! which the test can stop and start again. Both refuse to run as root: as root they run
//! as the `postgres` system user the package creates, in a folder it owns.
//!
//! Without PostgreSQL, [`Postgres::start`] prints one line saying the test was skipped
//! and how to install it, and answers `None`; under `CI=true` it panics instead.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The superuser `initdb` creates; `psql` runs as it.
const ADMIN: &str = "admin";
/// The role tether connects as: it owns the database [`DATABASE`], nothing more.
pub const ROLE: &str = "tether";
/// The database tether's table lives in.
pub const DATABASE: &str = "app";

/// A running private PostgreSQL server; dropping it stops the server and removes its files.
pub struct Postgres {
    /// The folder holding `data/`, the socket and the log; owned by the server's user.
    dir: tempfile::TempDir,
    /// Where `initdb`, `pg_ctl` and `psql` are.
    bin: PathBuf,
    /// The loopback port it listens on.
    port: u16,
    /// Whether commands must run as the `postgres` user (the tests run as root).
    as_postgres: bool,
}

/// The programs a test server needs, all from one installation.
const PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "psql"];

/// The folder of PostgreSQL's programs: the newest of Debian's `/usr/lib/postgresql/*/bin`
/// (its `/usr/bin` holds wrappers without `initdb`), else the first folder of `PATH`, then
/// `/usr/local/bin` and `/usr/local/pgsql/bin` (a source build), holding all of
/// [`PROGRAMS`].
fn find_bin() -> Option<PathBuf> {
    let complete = |bin: &Path| PROGRAMS.iter().all(|program| bin.join(program).is_file());
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/bin".into(), "/usr/local/pgsql/bin".into()])
        .find(|bin| complete(bin))
}

/// How many free ports a new cluster tries before giving up.
const PORT_ATTEMPTS: usize = 5;

/// Skips the test (one line) outside CI, fails it under `CI=true`.
fn unavailable(why: &str) -> Option<Postgres> {
    super::skip_without(
        &format!("PostgreSQL test ({why})"),
        "install it with `apt-get install postgresql`",
    );
    None
}

/// The uid and gid of the `postgres` user, from `id`.
fn postgres_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

impl Postgres {
    /// Creates a cluster with role [`ROLE`] owning database [`DATABASE`] and starts it;
    /// `None` when PostgreSQL is not installed (outside CI).
    pub fn start() -> Option<Self> {
        let Some(bin) = find_bin() else {
            return unavailable(
                "no initdb, pg_ctl and psql in /usr/lib/postgresql/*/bin, PATH, /usr/local/bin",
            );
        };
        let as_postgres = std::fs::metadata("/proc/self").is_ok_and(|me| me.uid() == 0);
        let dir = tempfile::tempdir().expect("temp dir");
        if as_postgres {
            let Some((uid, gid)) = postgres_ids() else {
                return unavailable("running as root and there is no `postgres` user");
            };
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
                .expect("chmod");
        }
        let mut postgres = Self {
            dir,
            bin,
            port: super::free_port(),
            as_postgres,
        };
        let data = postgres.data();
        postgres.run_owned(
            "initdb",
            &[
                "-D",
                data.to_str().expect("UTF-8 path"),
                "-U",
                ADMIN,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        // The free port may be taken by another process before the server binds it (other
        // tests, and other programs on a shared machine, open ports all the time): then
        // another one is tried.
        let mut attempts = 1;
        while let Err(failure) = postgres.try_start() {
            let taken = postgres.server_log().contains("Address already in use");
            assert!(
                taken && attempts < PORT_ATTEMPTS,
                "{failure}\nserver log:\n{}",
                postgres.server_log()
            );
            attempts += 1;
            postgres.port = super::free_port();
        }
        postgres.psql_in("postgres", &format!("CREATE ROLE {ROLE} LOGIN"));
        postgres.psql_in(
            "postgres",
            &format!("CREATE DATABASE {DATABASE} OWNER {ROLE}"),
        );
        Some(postgres)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One of the server's programs, to run as the user that owns the cluster (through
    /// `runuser` when the tests run as root).
    fn owned_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    /// Runs one of the server's programs as the user that owns the cluster; panics with
    /// its output when it fails.
    fn run_owned(&self, program: &str, args: &[&str]) -> Output {
        let output = self
            .owned_command(program)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.server_log()
        );
        output
    }

    /// The server's log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Starts the server (again) on its port, waiting until it accepts connections.
    pub fn start_again(&self) {
        if let Err(failure) = self.try_start() {
            panic!("{failure}\nserver log:\n{}", self.server_log());
        }
    }

    /// Starts the server on its port and waits until it accepts connections; answers
    /// `pg_ctl`'s output when it could not.
    fn try_start(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let data = self.data();
        let log = self.dir.path().join("log");
        let args = [
            "-D",
            data.to_str().expect("UTF-8 path"),
            "-o",
            &options,
            "-l",
            log.to_str().expect("UTF-8 path"),
            "-w",
            "start",
        ];
        let output = self
            .owned_command("pg_ctl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|err| panic!("cannot run pg_ctl: {err}"));
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "pg_ctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }

    /// Stops the server at once (every connection cut), waiting until it has.
    pub fn stop(&self) {
        let data = self.data();
        self.run_owned(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("UTF-8 path"),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    /// The server's processes: the postmaster and its children.
    fn processes(&self) -> Vec<nix::unistd::Pid> {
        let pid_file =
            std::fs::read_to_string(self.data().join("postmaster.pid")).expect("postmaster.pid");
        let postmaster: i32 = pid_file
            .lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .expect("a pid");
        // Its children, from each process's parent in /proc/PID/stat.
        let mut pids: Vec<i32> = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                // `PID (COMM) STATE PPID …`; COMM may hold spaces and parentheses.
                let after_comm = &stat[stat.rfind(')')? + 1..];
                let parent: i32 = after_comm.split_whitespace().nth(1)?.parse().ok()?;
                (parent == postmaster).then_some(pid)
            })
            .collect();
        pids.push(postmaster);
        pids.into_iter().map(nix::unistd::Pid::from_raw).collect()
    }

    /// Freezes the server (SIGSTOP to every process): connections stay open and nothing
    /// answers, as when a host hangs or a network drops packets.
    pub fn pause(&self) {
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP);
        }
    }

    /// Lets a paused server run again.
    pub fn resume(&self) {
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        }
    }

    /// Turns TLS on with the certificate and key at `cert` and `key` (PEM), copied into
    /// the server's folder, and waits until new connections may use it.
    pub fn enable_tls(&self, cert: &Path, key: &Path) {
        let (cert_copy, key_copy) = (
            self.dir.path().join("tls.crt"),
            self.dir.path().join("tls.key"),
        );
        std::fs::copy(cert, &cert_copy).expect("copy certificate");
        std::fs::copy(key, &key_copy).expect("copy key");
        std::fs::set_permissions(&key_copy, std::fs::Permissions::from_mode(0o600))
            .expect("chmod key");
        if self.as_postgres {
            let (uid, gid) = postgres_ids().expect("the postgres user");
            for file in [&cert_copy, &key_copy] {
                std::os::unix::fs::chown(file, Some(uid), Some(gid)).expect("chown");
            }
        }
        // ALTER SYSTEM runs outside a transaction: one statement per call.
        for setting in [
            format!("ssl_cert_file = '{}'", cert_copy.display()),
            format!("ssl_key_file = '{}'", key_copy.display()),
            "ssl = on".to_string(),
        ] {
            self.psql_in("postgres", &format!("ALTER SYSTEM SET {setting}"));
        }
        self.psql_in("postgres", "SELECT pg_reload_conf()");
        let on = crate::common::wait_until(std::time::Duration::from_secs(10), || {
            self.psql_in("postgres", "SHOW ssl").trim() == "on"
        });
        assert!(
            on,
            "TLS did not come on; server log:\n{}",
            self.server_log()
        );
    }

    /// The URL tether connects with (as [`ROLE`], to [`DATABASE`]).
    pub fn url(&self) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// Runs `sql` as the superuser in [`DATABASE`]; answers the rows, one a line,
    /// columns separated by `|`. Panics when it fails.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in(DATABASE, sql)
    }

    fn psql_in(&self, database: &str, sql: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", ADMIN])
            .args([
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-X",
                "-A",
                "-t",
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A paused server would not hear the stop.
        if self.data().join("postmaster.pid").exists() {
            self.resume();
        }
        let data = self.data();
        let _ = self
            .owned_command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
