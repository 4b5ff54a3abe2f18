//! The users table in PostgreSQL (SPEC §9): the SQL `tether db init` applies or prints,
//! and the check a server makes at start-up that the table is there with its columns.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// The SQL that creates `table` (if missing) and the trigger that notifies the channel
/// named like the table of every insert, update of a name or hash, delete and truncate.
/// Idempotent: applying it again changes nothing but the trigger function's text.
///
/// The payload is the name (an empty one after a truncate). Names longer than 128 bytes
/// cannot log in, so they are not notified: NOTIFY refuses payloads of 8000 bytes or more,
/// and the application's write must not fail because of tether.
pub fn init_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
    name text PRIMARY KEY,
    password_hash text NOT NULL
);

CREATE OR REPLACE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('{table}', '');
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.name = NEW.name
            AND OLD.password_hash IS NOT DISTINCT FROM NEW.password_hash THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' AND octet_length(OLD.name) <= 128 THEN
        PERFORM pg_notify('{table}', OLD.name);
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR OLD.name <> NEW.name)
            AND octet_length(NEW.name) <= 128 THEN
        PERFORM pg_notify('{table}', NEW.name);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS {table}_notify ON {table};
CREATE TRIGGER {table}_notify AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {table}_notify();
DROP TRIGGER IF EXISTS {table}_notify_truncate ON {table};
CREATE TRIGGER {table}_notify_truncate AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify();
"
    )
}

/// Applies [`init_sql`] in one transaction.
pub async fn init(client: &mut Client, table: &str) -> Result<(), tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    transaction.batch_execute(&init_sql(table)).await?;
    transaction.commit().await
}

/// Why the users table cannot be used.
#[derive(Debug)]
pub enum TableError {
    /// The table is missing or lacks a column: `tether db init` makes it.
    NotReady(String),
    /// The database did not answer the check.
    Unreachable(tokio_postgres::Error),
}

/// Checks that `table` exists with the columns tether reads.
pub async fn check_table(client: &Client, table: &str) -> Result<(), TableError> {
    let query = format!("SELECT name::text, password_hash::text FROM {table} LIMIT 0");
    match client.simple_query(&query).await {
        Ok(_) => Ok(()),
        Err(err) => match err.code() {
            Some(code) if *code == SqlState::UNDEFINED_TABLE => Err(TableError::NotReady(format!(
                "the users table {table} does not exist: run `tether db init`"
            ))),
            Some(code) if *code == SqlState::UNDEFINED_COLUMN => {
                let detail = err
                    .as_db_error()
                    .map_or_else(|| err.to_string(), |db| db.message().to_string());
                Err(TableError::NotReady(format!(
                    "the users table {table} lacks a column tether needs ({detail}): run \
                     `tether db init`, or make it a view with columns name and password_hash"
                )))
            }
            Some(_) => Err(TableError::NotReady(format!(
                "cannot read the users table {table}: {}",
                err.as_db_error()
                    .map_or_else(|| err.to_string(), |db| db.message().to_string())
            ))),
            None => Err(TableError::Unreachable(err)),
        },
    }
}

/// Connects to `url` without TLS; the connection is driven by a task spawned on the
/// current runtime.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            log::debug!("database connection ended: {err}");
        }
    });
    Ok(client)
}
