//! The users table in PostgreSQL (SPEC §9): the SQL `tether db init` applies or prints,
//! the check a server makes at start-up that the table is there with its columns, and how
//! to connect (plain TCP, or TLS with rustls when `auth.database_ca_file` is set).

use std::path::Path;
use std::sync::Arc;

use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, Socket, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls;

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

-- GET /v1/users pages through the names in bytewise order: this index serves it, so a
-- page reads its rows and no more (without it, every page scans and sorts the table).
-- A view of an application's table cannot have it: index that table alike.
DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = '{table}'::regclass) IN ('r', 'p') THEN
        CREATE INDEX IF NOT EXISTS {index} ON {table} ((name::text COLLATE \"C\"));
    END IF;
END
$$;
",
        index = bytewise_index_name(table)
    )
}

/// The name of the index that serves the bytewise order of `table`'s names (an index name
/// takes no schema: `app.users` gives `app_users_name_bytewise`).
pub fn bytewise_index_name(table: &str) -> String {
    format!("{}_name_bytewise", table.replace('.', "_"))
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

/// Sets hashes in the users table, creating rows as needed, by an `UPDATE` and, when it
/// changed no row, an `INSERT`. Unlike `INSERT … ON CONFLICT … RETURNING xmax`, this works
/// through any updatable view: a simple one (no system column `xmax`), and one with
/// `INSTEAD OF` triggers or rules (no `ON CONFLICT` at all).
pub struct HashWriter {
    update: Statement,
    insert: Statement,
}

impl HashWriter {
    /// Prepares the two statements for `table` on `client`.
    pub async fn prepare(
        client: &impl GenericClient,
        table: &str,
    ) -> Result<Self, tokio_postgres::Error> {
        let update = format!("UPDATE {table} SET password_hash = $2 WHERE name = $1");
        let insert = format!("INSERT INTO {table} (name, password_hash) VALUES ($1, $2)");
        Ok(Self {
            update: client.prepare(&update).await?,
            insert: client.prepare(&insert).await?,
        })
    }

    /// Sets `name`'s hash; answers whether the row was created. A row inserted by someone
    /// else between the two statements makes the `INSERT` fail with a unique violation
    /// (inside a transaction, that aborts it).
    pub async fn write(
        &self,
        client: &impl GenericClient,
        name: &str,
        hash: &str,
    ) -> Result<bool, tokio_postgres::Error> {
        if client.execute(&self.update, &[&name, &hash]).await? > 0 {
            return Ok(false);
        }
        client.execute(&self.insert, &[&name, &hash]).await?;
        Ok(true)
    }
}

/// Sets `name`'s hash in `table` outside a transaction, creating the row as needed (see
/// [`HashWriter`]); a row inserted meanwhile by someone else is then updated. Answers
/// whether the row was created.
pub async fn write_hash(
    client: &Client,
    table: &str,
    name: &str,
    hash: &str,
) -> Result<bool, tokio_postgres::Error> {
    let writer = HashWriter::prepare(client, table).await?;
    match writer.write(client, name, hash).await {
        Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            writer.write(client, name, hash).await
        }
        written => written,
    }
}

/// The users database and how to reach it: the URL's settings, and TLS (rustls, checking
/// the server's certificate against `auth.database_ca_file`) when that file is given.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

/// A connection to the users database, to be driven by its own task.
pub type Connection = tokio_postgres::Connection<
    Socket,
    <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<Socket>>::Stream,
>;

impl Database {
    /// The database at `url`, over TLS checked against the certificates in `ca_file` when
    /// given (whatever the URL's `sslmode`), else over plain TCP. An error names what is
    /// wrong with the URL or the file.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Self, String> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|err| format!("invalid URL: {err}"))?;
        let roots = match ca_file {
            Some(ca_file) => {
                let roots = crate::pem::root_store(ca_file)?;
                config.ssl_mode(SslMode::Require);
                roots
            }
            // As before TLS was offered: `prefer` (the URL's default) meant plain TCP.
            None => {
                config.ssl_mode(SslMode::Disable);
                rustls::RootCertStore::empty()
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| err.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new(client_config),
        })
    }

    /// Opens a connection; its [`Connection`] must be polled for the client to work.
    pub async fn open(&self) -> Result<(Client, Connection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }
}

/// Connects to `database`; the connection is driven by a task spawned on the current
/// runtime.
pub async fn connect(database: &Database) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = database.open().await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            log::debug!("database connection ended: {err}");
        }
    });
    Ok(client)
}
