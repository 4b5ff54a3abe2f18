//! The commands that work on the users table (SPEC §9): `tether db init`, `tether db
//! import`, and `tether passwd` / `tether deluser` when `auth.database` is set. Each opens
//! one connection of its own; a running server learns of the change from the trigger.

use tokio_postgres::Client;

use crate::config::Config;
use crate::users::failure::Failure;
use crate::users::pg_schema::{self, TableError};
use crate::users::read;

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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Failure::failed(format!("cannot start a runtime: {err}")))?;
    let database = pg_schema::Database::new(url, config.auth.database_ca_file.as_deref())
        .map_err(|why| Failure::invalid(format!("auth.database_ca_file: {why}")))?;
    runtime.block_on(async {
        let mut client = pg_schema::connect(&database)
            .await
            .map_err(|err| failed("cannot reach the users database", &err))?;
        work(&mut client, &config.auth.table).await
    })
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

/// `tether passwd NAME` with `auth.database`: sets the hash in the table, creating the row.
pub fn set_hash(config: &Config, name: &str, hash: &str) -> Result<String, Failure> {
    with_database(config, async |client, table| {
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

/// `tether deluser NAME` with `auth.database`: removes the row; none is a failure.
pub fn remove(config: &Config, name: &str) -> Result<String, Failure> {
    with_database(config, async |client, table| {
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
