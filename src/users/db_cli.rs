//! The users table as the commands see it (SPEC §9): `tether db init`, `tether db import`,
//! and [`PgStore`], the [`Store`] of `auth.database` (`tether passwd` / `tether deluser`
//! write the table, and the server's store starts from it). Each command opens one
//! connection of its own; a running server learns of the change from the trigger.

use std::path::Path;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::config::Config;
use crate::users::failure::Failure;
use crate::users::pg_schema::{self, TableError};
use crate::users::pg_store::{PgUsers, StartError};
use crate::users::read;
use crate::users::store::{Running, Store};

/// Runs `work` on a connection to `auth.database`, which must be set.
fn with_database<T>(
    config: &Config,
    work: impl AsyncFnOnce(&mut Client, &str) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let Some(url) = &config.auth.database else {
        return Err(Failure::invalid(format!(
            "auth.database is not set in {}: users are in the users file",
            config.source
        )));
    };
    PgStore::new(
        url,
        config.auth.database_ca_file.as_deref(),
        &config.auth.table,
    )?
    .run(work)
}

/// The users table the configuration names (`auth.database`, `auth.table`) as a
/// [`Store`]: each command opens one connection of its own; the server's store is
/// [`PgUsers`].
pub struct PgStore {
    /// Where the database is, and how its certificate is checked.
    database: pg_schema::Database,
    /// `auth.table`.
    table: String,
}

impl PgStore {
    /// The table `table` in the database at `url`, its certificate checked against
    /// `ca_file` when given; a failure (exit code 2) when the URL or the CA file is bad.
    pub fn new(url: &str, ca_file: Option<&Path>, table: &str) -> Result<Self, Failure> {
        let database = pg_schema::Database::new(url, ca_file)
            .map_err(|why| Failure::invalid(format!("auth.database_ca_file: {why}")))?;
        Ok(Self {
            database,
            table: table.to_owned(),
        })
    }

    /// Runs `work` on a connection of its own, on a runtime of its own.
    fn run<T>(
        &self,
        work: impl AsyncFnOnce(&mut Client, &str) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| Failure::failed(format!("cannot start a runtime: {err}")))?;
        runtime.block_on(async {
            let mut client = pg_schema::connect(&self.database)
                .await
                .map_err(|err| failed("cannot reach the users database", &err))?;
            work(&mut client, &self.table).await
        })
    }
}

impl Store for PgStore {
    fn shown(&self) -> String {
        format!("table {}", self.table)
    }

    fn check(&self) -> Result<String, Failure> {
        Ok(format!(
            "table {} in auth.database (not read: `tether db init` creates it)",
            self.table
        ))
    }

    fn set_password_hash(&self, name: &str, hash: &str) -> Result<String, Failure> {
        self.run(async |client, table| {
            check(client, table).await?;
            let created = pg_schema::write_hash(client, table, name, hash)
                .await
                .map_err(|err| failed(&format!("cannot set the password of {name:?}"), &err))?;
            Ok(if created {
                format!("user {name:?} created in table {table}")
            } else {
                format!("password of user {name:?} changed in table {table}")
            })
        })
    }

    fn remove_user(&self, name: &str) -> Result<String, Failure> {
        self.run(async |client, table| {
            check(client, table).await?;
            let query = format!("DELETE FROM {table} WHERE name = $1");
            let removed = client
                .execute(&query, &[&name])
                .await
                .map_err(|err| failed(&format!("cannot remove {name:?}"), &err))?;
            if removed == 0 {
                return Err(Failure::failed(format!(
                    "no user {name:?} in table {table}; nothing removed"
                )));
            }
            Ok(format!("user {name:?} removed from table {table}"))
        })
    }

    /// Connects and checks the table; users are then looked up per login.
    fn start(&self) -> Result<Arc<dyn Running>, Failure> {
        match PgUsers::connect(self.database.clone(), &self.table) {
            Ok(users) => {
                log::info!(
                    "users from PostgreSQL table {} (looked up per login)",
                    self.table
                );
                Ok(Arc::new(users))
            }
            Err(StartError::NotReady(why)) => Err(Failure::invalid(why)),
            Err(StartError::Unreachable(why)) => Err(Failure::failed(format!(
                "cannot reach the users database: {why}"
            ))),
        }
    }
}

/// A database error as a failure (exit code 1), with the server's message.
fn failed(what: &str, err: &tokio_postgres::Error) -> Failure {
    let detail = crate::users::pg_store::describe(err);
    Failure::failed(format!("{what}: {detail}"))
}

/// `tether db init`: creates the users table and its trigger (or, with `print`, answers
/// the SQL instead, for a DBA to apply).
pub fn init(config: &Config, print: bool) -> Result<String, Failure> {
    if print {
        return Ok(pg_schema::init_sql(&config.auth.table)
            .trim_end()
            .to_string());
    }
    with_database(config, async |client, table| {
        pg_schema::init(client, table)
            .await
            .map_err(|err| failed("cannot create the users table", &err))?;
        Ok(format!(
            "users table {table} and its trigger are in place (notifying channel {table})"
        ))
    })
}

/// `tether db import FILE`: copies every entry of a users file into the table, inserting
/// or updating; answers the counts.
pub fn import(config: &Config, file: &std::path::Path) -> Result<String, Failure> {
    let contents = read::read_contents(file);
    let users = contents.users(file)?;
    with_database(config, async |client, table| {
        check(client, table).await?;
        let transaction = client
            .transaction()
            .await
            .map_err(|err| failed("cannot start a transaction", &err))?;
        let writer = pg_schema::HashWriter::prepare(&transaction, table)
            .await
            .map_err(|err| failed("cannot write the users table", &err))?;
        let (mut inserted, mut updated) = (0_usize, 0_usize);
        let mut names: Vec<&String> = users.keys().collect();
        names.sort_unstable();
        for name in names {
            let hash: &str = &users[name];
            let created = writer
                .write(&transaction, name, hash)
                .await
                .map_err(|err| failed(&format!("cannot write user {name:?}"), &err))?;
            if created {
                inserted += 1;
            } else {
                updated += 1;
            }
        }
        transaction
            .commit()
            .await
            .map_err(|err| failed("cannot commit the import", &err))?;
        Ok(format!(
            "{} user(s) from {} imported into {table}: {inserted} inserted, {updated} updated",
            inserted + updated,
            file.display()
        ))
    })
}

/// Fails unless the table is ready (exit code 2 naming `tether db init` when it is not).
async fn check(client: &Client, table: &str) -> Result<(), Failure> {
    pg_schema::check_table(client, table)
        .await
        .map_err(|err| match err {
            TableError::NotReady(why) => Failure::invalid(why),
            TableError::Unreachable(err) => failed("cannot reach the users database", &err),
        })
}
