//! The `[auth]` table: where users come from (the users file or a PostgreSQL table), the
//! login rules, the bcrypt threads, and the verifiers that admit a returning login without
//! bcrypt (SPEC §5).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::config::SslMode;
use toml_edit::{value, Table};

use crate::config::check::Check;
use crate::config::duration::format_duration;
use crate::config::error::ConfigError;
use crate::config::format::{self, mask_password};

/// The `[auth]` table: the users file and login rules.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The users file, already resolved against the configuration file's folder; not used
    /// when `database` is set.
    pub users_file: PathBuf,
    /// The PostgreSQL database users come from (SPEC §9), when set: a `postgres://` URL.
    pub database: Option<String>,
    /// The CA certificates (PEM) the database server's certificate must chain to; when
    /// set, the connection to `database` is TLS (rustls), and without it, plain TCP.
    pub database_ca_file: Option<PathBuf>,
    /// The table (or view) of users in `database`; also the name of the channel its
    /// trigger notifies.
    pub table: String,
    /// bcrypt cost of the hashes the server itself writes (4–16, the most a stored hash
    /// may have).
    pub bcrypt_cost: u32,
    /// Whether external edits of the users file are applied while running.
    pub watch: bool,
    /// Failed logins per (client address, name) and minute before further ones are
    /// refused without a check; 0 means no limit.
    pub login_failures_per_minute: u32,
    /// Threads running bcrypt (1–1024); a configured 0 is already resolved to one per CPU
    /// but one, at least one.
    pub password_threads: usize,
    /// The secret key of the verifiers that admit a returning login without bcrypt (SPEC
    /// §5), resolved against the configuration's folder; `None` (`""`): off.
    pub verifier_key_file: Option<PathBuf>,
    /// Where a node alone keeps its verifiers, resolved against the configuration's folder.
    pub verifier_file: PathBuf,
    /// How long an unused verifier is kept; at least a second.
    pub verifier_ttl: Duration,
    /// How often a node alone saves its verifiers to `verifier_file` when they changed
    /// (SPEC §5: at least every minute); from 1 s to 1 min. What a crash loses since the
    /// last save is paid in bcrypt once per user.
    pub verifier_save_interval: Duration,
}

/// `[auth]` as written; every key optional. `users_file` has no default here so that
/// `database` may be set instead (the check gives it `users.toml`).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "an [auth] table")]
pub(super) struct RawAuth {
    users_file: Option<PathBuf>,
    database: String,
    database_ca_file: String,
    table: String,
    bcrypt_cost: u32,
    watch: bool,
    login_failures_per_minute: u32,
    password_threads: u64,
    verifier_key_file: String,
    verifier_file: String,
    verifier_ttl: String,
    verifier_save_interval: String,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            users_file: None,
            database: String::new(),
            database_ca_file: String::new(),
            table: "tether_users".to_string(),
            bcrypt_cost: 12,
            watch: true,
            login_failures_per_minute: 10,
            password_threads: 0,
            verifier_key_file: String::new(),
            verifier_file: "verifiers".to_string(),
            verifier_ttl: "7d".to_string(),
            verifier_save_interval: "10s".to_string(),
        }
    }
}

/// The accepted `auth.verifier_save_interval`s: a save rewrites the whole file, and SPEC §5
/// saves at least every minute.
const VERIFIER_SAVE_INTERVALS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(60);

/// Largest accepted `auth.password_threads`.
const MAX_PASSWORD_THREADS: u64 = 1024;

/// The bcrypt threads an `auth.password_threads` of 0 means: one per CPU but one, at least
/// one, so that a login storm always leaves a core to the event loops.
fn automatic_password_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    cpus.saturating_sub(1).max(1)
}

/// Whether `name` may be `auth.table`: a PostgreSQL identifier that needs no quoting and
/// keeps its case (lowercase letters, digits and `_`, not starting with a digit, at most
/// 63 bytes), so it can name both the table and the channel its trigger notifies.
fn valid_table_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first == b'_')
        && bytes.all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
        && name.len() <= 63
}

impl Check<'_> {
    pub(super) fn auth(&self, raw: RawAuth) -> Result<AuthConfig, ConfigError> {
        if raw
            .users_file
            .as_ref()
            .is_some_and(|file| file.as_os_str().is_empty())
        {
            return Err(self.error("auth.users_file", "must not be empty".into()));
        }
        let database = match raw.database.as_str() {
            "" => None,
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                if raw.users_file.is_some() {
                    return Err(self.error(
                        "auth.database",
                        "cannot be set together with auth.users_file: users come from one \
                         of them"
                            .into(),
                    ));
                }
                let parsed = match url.parse::<tokio_postgres::Config>() {
                    Ok(parsed) => parsed,
                    Err(err) => {
                        return Err(self.error("auth.database", format!("invalid URL: {err}")))
                    }
                };
                let ssl_mode = parsed.get_ssl_mode();
                if raw.database_ca_file.is_empty() && ssl_mode == SslMode::Require {
                    return Err(self.error(
                        "auth.database",
                        "sslmode=require needs auth.database_ca_file: the CA certificate \
                         (PEM) the database server's certificate is checked against"
                            .into(),
                    ));
                }
                if !raw.database_ca_file.is_empty() && ssl_mode == SslMode::Disable {
                    return Err(self.error(
                        "auth.database",
                        "sslmode=disable contradicts auth.database_ca_file (which makes the \
                         connection TLS)"
                            .into(),
                    ));
                }
                Some(url.to_string())
            }
            _ => {
                return Err(self.error(
                    "auth.database",
                    "must be a postgres:// URL, or \"\" for the users file".into(),
                ))
            }
        };
        if !valid_table_name(&raw.table) {
            return Err(self.error(
                "auth.table",
                format!(
                    "must be a table name, optionally schema-qualified (letters, digits and \
                     _, not starting with a digit, at most 63 bytes each), found {:?}",
                    raw.table
                ),
            ));
        }
        let max_cost = tether_actors::auth::password::MAX_STORED_COST;
        if !(4..=max_cost).contains(&raw.bcrypt_cost) {
            return Err(self.error(
                "auth.bcrypt_cost",
                format!("must be from 4 to {max_cost}, found {}", raw.bcrypt_cost),
            ));
        }
        let password_threads = match self.size(
            "auth.password_threads",
            raw.password_threads,
            0,
            MAX_PASSWORD_THREADS,
            "",
        )? {
            0 => automatic_password_threads(),
            threads => threads,
        };
        if database.is_none() && !raw.database_ca_file.is_empty() {
            return Err(self.error(
                "auth.database_ca_file",
                "is only for auth.database (leave it \"\" with the users file)".into(),
            ));
        }
        let folder = self.folder();
        let verifier_ttl = self.duration("auth.verifier_ttl", &raw.verifier_ttl)?;
        if verifier_ttl < Duration::from_secs(1) {
            return Err(self.error(
                "auth.verifier_ttl",
                format!("must be at least 1s, found {:?}", raw.verifier_ttl),
            ));
        }
        let verifier_save_interval =
            self.duration("auth.verifier_save_interval", &raw.verifier_save_interval)?;
        if !VERIFIER_SAVE_INTERVALS.contains(&verifier_save_interval) {
            return Err(self.error(
                "auth.verifier_save_interval",
                format!(
                    "must be from 1s to 1m, found {:?}",
                    raw.verifier_save_interval
                ),
            ));
        }
        if raw.verifier_file.is_empty() {
            return Err(self.error(
                "auth.verifier_file",
                "must name a file (it is only written when auth.verifier_key_file is set)".into(),
            ));
        }
        Ok(AuthConfig {
            users_file: folder.join(
                raw.users_file
                    .unwrap_or_else(|| PathBuf::from("users.toml")),
            ),
            database,
            database_ca_file: self.optional_path(&raw.database_ca_file),
            table: raw.table,
            bcrypt_cost: raw.bcrypt_cost,
            watch: raw.watch,
            login_failures_per_minute: raw.login_failures_per_minute,
            password_threads,
            verifier_key_file: self.optional_path(&raw.verifier_key_file),
            verifier_file: folder.join(raw.verifier_file),
            verifier_ttl,
            verifier_save_interval,
        })
    }
}

/// `[auth]` as [`Config::effective_toml`](crate::config::Config::effective_toml) shows it:
/// one of `users_file` and `database` (both set is an error when read back), the
/// database's password masked.
pub(super) fn effective(auth: &AuthConfig) -> Table {
    let mut table = Table::new();
    match &auth.database {
        Some(url) => table.insert("database", value(mask_password(url))),
        None => table.insert("users_file", format::path(Some(auth.users_file.as_path()))),
    };
    table.insert(
        "database_ca_file",
        format::path(auth.database_ca_file.as_deref()),
    );
    table.insert("table", value(auth.table.clone()));
    table.insert("bcrypt_cost", value(i64::from(auth.bcrypt_cost)));
    table.insert("watch", value(auth.watch));
    table.insert(
        "login_failures_per_minute",
        value(i64::from(auth.login_failures_per_minute)),
    );
    table.insert("password_threads", format::count(auth.password_threads));
    table.insert(
        "verifier_key_file",
        format::path(auth.verifier_key_file.as_deref()),
    );
    table.insert(
        "verifier_file",
        format::path(Some(auth.verifier_file.as_path())),
    );
    table.insert("verifier_ttl", value(format_duration(auth.verifier_ttl)));
    table.insert(
        "verifier_save_interval",
        value(format_duration(auth.verifier_save_interval)),
    );
    table
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::testing::{assert_refused, config};
    use crate::config::Config;

    #[test]
    fn empty_file_gives_the_defaults_of_the_spec() {
        let config = config("").unwrap();
        let auth = &config.auth;
        assert_eq!(auth.users_file, Path::new("/etc/tether/users.toml"));
        assert_eq!(auth.bcrypt_cost, 12);
        assert!(auth.watch);
        assert_eq!(auth.login_failures_per_minute, 10);
        assert_eq!(auth.password_threads, automatic_password_threads());
    }

    #[test]
    fn every_key_is_read() {
        let config = config(
            r#"
            [auth]
            users_file = "/var/lib/tether/users.toml"
            bcrypt_cost = 4
            watch = false
            login_failures_per_minute = 0
            password_threads = 5
            "#,
        )
        .unwrap();
        assert_eq!(
            config.auth.users_file,
            Path::new("/var/lib/tether/users.toml")
        );
        assert_eq!(config.auth.bcrypt_cost, 4);
        assert!(!config.auth.watch);
        assert_eq!(config.auth.login_failures_per_minute, 0);
        assert_eq!(config.auth.password_threads, 5);
    }

    #[test]
    fn verifier_keys_have_their_defaults_and_are_checked() {
        let auth = config("").unwrap().auth;
        assert_eq!(auth.verifier_key_file, None);
        assert_eq!(auth.verifier_file, Path::new("/etc/tether/verifiers"));
        assert_eq!(auth.verifier_ttl, Duration::from_secs(7 * 86_400));
        let auth = config("[auth]\nverifier_key_file = \"k\"\nverifier_ttl = \"1d12h\"")
            .unwrap()
            .auth;
        assert_eq!(
            auth.verifier_key_file.as_deref(),
            Some(Path::new("/etc/tether/k"))
        );
        assert_eq!(auth.verifier_ttl, Duration::from_secs(36 * 3_600));
        assert_refused(
            "[auth]\nverifier_ttl = \"0s\"",
            "auth.verifier_ttl",
            "at least 1s",
        );
        assert_refused(
            "[auth]\nverifier_ttl = \"7w\"",
            "auth.verifier_ttl",
            "unknown unit",
        );
        assert_refused(
            "[auth]\nverifier_file = \"\"",
            "auth.verifier_file",
            "must name",
        );
    }

    #[test]
    fn the_verifier_save_interval_defaults_to_10s_and_lies_from_1s_to_1m() {
        let interval = |text: &str| config(text).unwrap().auth.verifier_save_interval;
        assert_eq!(interval(""), Duration::from_secs(10));
        for (text, expected) in [("1s", 1), ("1m", 60), ("1m0s", 60), ("15s", 15)] {
            let text = format!("[auth]\nverifier_save_interval = \"{text}\"");
            assert_eq!(interval(&text), Duration::from_secs(expected), "{text}");
            let shown = config(&text).unwrap().effective_toml();
            assert_eq!(
                config(&shown)
                    .unwrap()
                    .auth
                    .verifier_save_interval
                    .as_secs(),
                expected
            );
        }
        for (text, words) in [
            ("0s", "from 1s to 1m"),
            ("999ms", "from 1s to 1m"),
            ("1m1s", "from 1s to 1m"),
            ("1h", "from 1s to 1m"),
            ("10", "missing unit"),
            ("", "empty"),
            ("-5s", "expected a number"),
        ] {
            assert_refused(
                &format!("[auth]\nverifier_save_interval = \"{text}\""),
                "auth.verifier_save_interval",
                words,
            );
        }
        assert_refused(
            "[auth]\nverifier_save_interval = 10",
            "auth.verifier_save_interval",
            "invalid type",
        );
    }

    #[test]
    fn relative_users_file_is_resolved_against_the_config_folder() {
        let text = "[auth]\nusers_file = \"data/users.toml\"";
        let config = Config::from_toml(text, Path::new("/srv/tether/server.toml")).unwrap();
        assert_eq!(
            config.auth.users_file,
            Path::new("/srv/tether/data/users.toml")
        );
        let config = Config::from_toml(text, Path::new("server.toml")).unwrap();
        assert_eq!(config.auth.users_file, Path::new("data/users.toml"));
    }

    #[test]
    fn database_and_users_file_together_are_refused() {
        assert_refused(
            "[auth]\nusers_file = \"u.toml\"\ndatabase = \"postgres://h/db\"",
            "auth.database",
            "users_file",
        );
        assert_refused(
            "[auth]\ndatabase = \"mysql://h/db\"",
            "auth.database",
            "postgres://",
        );
        assert_refused(
            "[auth]\ntable = \"Users; drop\"",
            "auth.table",
            "table name",
        );
        let config = Config::from_toml(
            "[auth]\ndatabase = \"postgres://me:secret@h:5433/db\"\ntable = \"people\"",
            Path::new("/etc/tether/server.toml"),
        )
        .expect("valid");
        assert_eq!(config.auth.table, "people");
        let effective = config.effective_toml();
        assert!(effective.contains("database = \"postgres://me:****@h:5433/db\""));
        assert!(!effective.contains("users_file"));
    }

    #[test]
    fn a_database_ca_file_goes_with_a_database_that_may_use_tls() {
        assert_refused(
            "[auth]\ndatabase = \"postgres://h/db?sslmode=require\"",
            "auth.database",
            "database_ca_file",
        );
        assert_refused(
            "[auth]\ndatabase = \"postgres://h/db?sslmode=disable\"\ndatabase_ca_file = \"ca.pem\"",
            "auth.database",
            "contradicts",
        );
        assert_refused(
            "[auth]\ndatabase_ca_file = \"ca.pem\"",
            "auth.database_ca_file",
            "only for auth.database",
        );
        let config = Config::from_toml(
            "[auth]\ndatabase = \"postgres://h/db?sslmode=require\"\ndatabase_ca_file = \"ca.pem\"",
            Path::new("/etc/tether/server.toml"),
        )
        .expect("valid");
        assert_eq!(
            config.auth.database_ca_file.as_deref(),
            Some(Path::new("/etc/tether/ca.pem"))
        );
        let again = Config::from_toml(&config.effective_toml(), Path::new("/x/server.toml"))
            .expect("reads back");
        assert_eq!(again.auth.database_ca_file, config.auth.database_ca_file);
    }

    #[test]
    fn empty_users_file_is_refused() {
        assert_refused("[auth]\nusers_file = \"\"", "auth.users_file", "empty");
    }

    #[test]
    fn bcrypt_cost_outside_4_to_16_is_refused() {
        assert_refused(
            "[auth]\nbcrypt_cost = 3",
            "auth.bcrypt_cost",
            "from 4 to 16",
        );
        assert_refused(
            "[auth]\nbcrypt_cost = 17",
            "auth.bcrypt_cost",
            "from 4 to 16",
        );
    }

    #[test]
    fn zero_password_threads_means_one_per_cpu_but_one() {
        let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let expected = cpus.saturating_sub(1).max(1);
        assert_eq!(config("").unwrap().auth.password_threads, expected);
        assert_eq!(
            config("[auth]\npassword_threads = 0")
                .unwrap()
                .auth
                .password_threads,
            expected
        );
    }

    #[test]
    fn positive_password_threads_are_kept() {
        for threads in [1, 3, 1024] {
            let text = format!("[auth]\npassword_threads = {threads}");
            assert_eq!(config(&text).unwrap().auth.password_threads, threads);
        }
    }

    #[test]
    fn too_many_password_threads_are_refused() {
        assert_refused(
            "[auth]\npassword_threads = 1025",
            "auth.password_threads",
            "at most 1024",
        );
    }

    #[test]
    fn negative_password_threads_are_refused() {
        assert_refused(
            "[auth]\npassword_threads = -1",
            "auth.password_threads",
            "invalid value",
        );
    }
}
