//! Studies in a PostgreSQL database in the schema of Optuna 5's RDB storage, as SQLAlchemy
//! creates it there (native enum types, serial keys; checked against a database Optuna itself
//! made), so that workers on many machines, ours and Python Optuna's, share one study.
//!
//! Optuna's rules for many workers: every change runs in one transaction that first locks the
//! study's row (`SELECT … FOR UPDATE`, as Optuna's `create_new_trial` does, so a trial number is
//! given out once) and then the rows of its unfinished trials (as Optuna's
//! `set_trial_state_values` locks the trial it changes, so a waiting trial is taken by one
//! worker and a running one is failed or told once). A transaction that loses a race (a
//! deadlock, a serialization failure, two workers creating one study) or its connection is run
//! again after a random pause of up to two seconds, at most [`MAX_RETRIES`] times. Each storage
//! holds at most one connection.
//!
//! What is read and written, and how, is [`super::rdb`]'s.

use std::error::Error;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use postgres::error::SqlState;
use postgres::types::{FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};
use postgres::{Client, Config, NoTls};
use rand::Rng;

use super::base::StudyStorage;
use super::rdb::{self, Database, DbError, Value};
use crate::SearchError;
use crate::trial::{StudyChange, StudyRecord};

/// How many times a transaction that lost a race is run again (Optuna's `MAX_RETRIES`).
pub const MAX_RETRIES: usize = 5;

/// Optuna 5's schema as SQLAlchemy creates it in PostgreSQL (checked against
/// `fixtures/search/optuna/postgres_schema.txt`, which Optuna made).
const SCHEMA: &[&str] = &[
    "CREATE TYPE studydirection AS ENUM ('NOT_SET', 'MINIMIZE', 'MAXIMIZE')",
    "CREATE TYPE trialstate AS ENUM ('RUNNING', 'COMPLETE', 'PRUNED', 'FAIL', 'WAITING')",
    "CREATE TYPE trialvaluetype AS ENUM ('FINITE', 'INF_POS', 'INF_NEG')",
    "CREATE TYPE trialintermediatevaluetype AS ENUM ('FINITE', 'INF_POS', 'INF_NEG', 'NAN')",
    "CREATE TABLE studies (study_id SERIAL NOT NULL, study_name VARCHAR(512) NOT NULL, PRIMARY KEY (study_id))",
    "CREATE UNIQUE INDEX ix_studies_study_name ON studies (study_name)",
    "CREATE TABLE version_info (version_info_id INTEGER NOT NULL, schema_version INTEGER, library_version VARCHAR(256), PRIMARY KEY (version_info_id), CHECK (version_info_id=1))",
    "CREATE TABLE study_directions (study_direction_id SERIAL NOT NULL, direction studydirection NOT NULL, study_id INTEGER NOT NULL, objective INTEGER NOT NULL, PRIMARY KEY (study_direction_id), UNIQUE (study_id, objective), FOREIGN KEY(study_id) REFERENCES studies (study_id))",
    "CREATE TABLE study_system_attributes (study_system_attribute_id SERIAL NOT NULL, study_id INTEGER, key VARCHAR(512), value_json TEXT, PRIMARY KEY (study_system_attribute_id), UNIQUE (study_id, key), FOREIGN KEY(study_id) REFERENCES studies (study_id))",
    "CREATE TABLE study_user_attributes (study_user_attribute_id SERIAL NOT NULL, study_id INTEGER, key VARCHAR(512), value_json TEXT, PRIMARY KEY (study_user_attribute_id), UNIQUE (study_id, key), FOREIGN KEY(study_id) REFERENCES studies (study_id))",
    "CREATE TABLE trials (trial_id SERIAL NOT NULL, number INTEGER, study_id INTEGER, state trialstate NOT NULL, datetime_start TIMESTAMP WITHOUT TIME ZONE, datetime_complete TIMESTAMP WITHOUT TIME ZONE, PRIMARY KEY (trial_id), FOREIGN KEY(study_id) REFERENCES studies (study_id))",
    "CREATE INDEX ix_trials_study_id ON trials (study_id)",
    "CREATE TABLE trial_heartbeats (trial_heartbeat_id SERIAL NOT NULL, trial_id INTEGER NOT NULL, heartbeat TIMESTAMP WITHOUT TIME ZONE NOT NULL, PRIMARY KEY (trial_heartbeat_id), UNIQUE (trial_id), FOREIGN KEY(trial_id) REFERENCES trials (trial_id))",
    "CREATE TABLE trial_intermediate_values (trial_intermediate_value_id SERIAL NOT NULL, trial_id INTEGER NOT NULL, step INTEGER NOT NULL, intermediate_value FLOAT(53), intermediate_value_type trialintermediatevaluetype NOT NULL, PRIMARY KEY (trial_intermediate_value_id), UNIQUE (trial_id, step), FOREIGN KEY(trial_id) REFERENCES trials (trial_id))",
    "CREATE TABLE trial_params (param_id SERIAL NOT NULL, trial_id INTEGER, param_name VARCHAR(512), param_value FLOAT(53), distribution_json TEXT, PRIMARY KEY (param_id), UNIQUE (trial_id, param_name), FOREIGN KEY(trial_id) REFERENCES trials (trial_id))",
    "CREATE TABLE trial_system_attributes (trial_system_attribute_id SERIAL NOT NULL, trial_id INTEGER, key VARCHAR(512), value_json TEXT, PRIMARY KEY (trial_system_attribute_id), UNIQUE (trial_id, key), FOREIGN KEY(trial_id) REFERENCES trials (trial_id))",
    "CREATE TABLE trial_user_attributes (trial_user_attribute_id SERIAL NOT NULL, trial_id INTEGER, key VARCHAR(512), value_json TEXT, PRIMARY KEY (trial_user_attribute_id), UNIQUE (trial_id, key), FOREIGN KEY(trial_id) REFERENCES trials (trial_id))",
    "CREATE TABLE trial_values (trial_value_id SERIAL NOT NULL, trial_id INTEGER NOT NULL, objective INTEGER NOT NULL, value FLOAT(53), value_type trialvaluetype NOT NULL, PRIMARY KEY (trial_value_id), UNIQUE (trial_id, objective), FOREIGN KEY(trial_id) REFERENCES trials (trial_id))",
    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))",
];

/// The advisory lock that workers creating the schema in an empty database take turns on.
const SCHEMA_LOCK: i64 = 0x6f70_7475_6e61;

/// A study named `name` in a PostgreSQL database.
///
/// The URL is Optuna's (SQLAlchemy's): `postgresql://USER:PASSWORD@HOST:PORT/DB`, also
/// `postgres://` and `postgresql+DRIVER://`, with `?host=/socket/dir` for a Unix socket. What
/// it leaves out comes from the usual environment variables, as libpq reads them: `PGHOST`
/// (else the Unix socket in `/var/run/postgresql` when it exists, else `localhost`), `PGPORT`,
/// `PGUSER` (else `USER`), `PGPASSWORD` and `PGDATABASE` (else the user's name). Connections are
/// unencrypted (no TLS): use a Unix socket, a private network or an SSH tunnel. The password is
/// never printed.
pub struct PostgresStorage {
    shown: String,
    config: Config,
    name: String,
    connection: Mutex<Option<Connection>>,
}

/// The storage's open connection.
struct Connection {
    client: Client,
    /// Whether a transaction on it has created or checked Optuna's schema.
    schema_checked: bool,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("url", &self.shown)
            .field("name", &self.name)
            .finish()
    }
}

impl PostgresStorage {
    /// The study `name` in the database at `url` (nothing is connected until first use).
    pub fn new(url: &str, name: &str) -> Result<Self, SearchError> {
        let shown = crate::redact_url(url);
        // SQLAlchemy names the driver after a `+`; the protocol is the same.
        let plain = match url.split_once("://") {
            Some((scheme, rest)) if scheme.starts_with("postgresql+") => {
                format!("postgresql://{rest}")
            }
            _ => url.to_string(),
        };
        let mut config = Config::from_str(&plain).map_err(|e| {
            SearchError::Storage(format!("storage {shown}: not a PostgreSQL URL: {e}"))
        })?;
        let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        if config.get_hosts().is_empty() {
            match env("PGHOST") {
                Some(host) if host.starts_with('/') => config.host_path(host),
                Some(host) => config.host(&host),
                None if std::path::Path::new("/var/run/postgresql").is_dir() => {
                    config.host_path("/var/run/postgresql")
                }
                None => config.host("localhost"),
            };
        }
        if config.get_ports().is_empty()
            && let Some(port) = env("PGPORT")
        {
            let port = port.parse().map_err(|_| {
                SearchError::Storage(format!("PGPORT={port:?} is not a port number"))
            })?;
            config.port(port);
        }
        if config.get_user().is_none()
            && let Some(user) = env("PGUSER").or_else(|| env("USER"))
        {
            config.user(&user);
        }
        if config.get_password().is_none()
            && let Some(password) = env("PGPASSWORD")
        {
            config.password(password);
        }
        if config.get_dbname().is_none() {
            let database = env("PGDATABASE").or_else(|| config.get_user().map(str::to_string));
            if let Some(database) = database {
                config.dbname(&database);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("sentiment-search");
        Ok(Self {
            shown,
            config,
            name: name.to_string(),
            connection: Mutex::new(None),
        })
    }

    fn error(&self, e: impl std::fmt::Display) -> SearchError {
        SearchError::Storage(format!("{}: {e}", self.describe()))
    }

    /// Runs `work` in a transaction on this storage's connection (opened, or opened again
    /// after it broke; Optuna's schema is created or checked in its first transaction); runs
    /// it again when it loses a race.
    fn in_transaction<T>(
        &self,
        work: &mut dyn FnMut(&mut Pg<'_, '_>) -> Result<T, Failure>,
    ) -> Result<T, SearchError> {
        let mut attempt = 0;
        loop {
            let failure = match self.attempt(work) {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            match failure {
                Failure::Search(e) => return Err(e),
                Failure::Db(e) if !e.retry => return Err(self.error(e.message)),
                Failure::Db(e) if attempt == MAX_RETRIES => {
                    return Err(self.error(format!("{} (after {MAX_RETRIES} retries)", e.message)));
                }
                Failure::Db(_) => {
                    attempt += 1;
                    // Optuna's back-off: random, not exponential, up to two seconds.
                    let pause = rand::rng().random_range(0.0..2.0);
                    std::thread::sleep(Duration::from_secs_f64(pause));
                }
            }
        }
    }

    fn attempt<T>(
        &self,
        work: &mut dyn FnMut(&mut Pg<'_, '_>) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let mut slot = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let client = self
                .config
                .connect(NoTls)
                .map_err(|e| Failure::Db(pg_error(&e)))?;
            *slot = Some(Connection {
                client,
                schema_checked: false,
            });
        }
        let connection = slot.as_mut().expect("connected above");
        // Optuna's schema is created or checked once per connection, in its first transaction.
        let check_schema = !connection.schema_checked;
        let result = (|| {
            let mut tx = connection
                .client
                .transaction()
                .map_err(|e| Failure::Db(pg_error(&e)))?;
            let value = {
                let mut db = Pg(&mut tx);
                if check_schema {
                    ensure_schema(&mut db).map_err(Failure::Db)?;
                }
                work(&mut db)?
            };
            tx.commit().map_err(|e| Failure::Db(pg_error(&e)))?;
            Ok(value)
        })();
        connection.schema_checked |= result.is_ok();
        // A broken connection is opened afresh by the next attempt.
        if connection.client.is_closed() {
            *slot = None;
        }
        result
    }
}

/// Why a transaction did not commit: the database's error, or the change's own refusal.
enum Failure {
    Db(DbError),
    Search(SearchError),
}

impl From<DbError> for Failure {
    fn from(e: DbError) -> Self {
        Failure::Db(e)
    }
}

/// Creates Optuna's schema in an empty database (workers starting at once take turns on an
/// advisory lock), or checks its revision.
fn ensure_schema(db: &mut Pg<'_, '_>) -> Result<(), DbError> {
    let exists = |db: &mut Pg<'_, '_>, table: &str| -> Result<bool, DbError> {
        let rows = db.query(
            "SELECT CAST(to_regclass($1) AS TEXT)",
            &[Value::Text(table.to_string())],
        )?;
        Ok(rows.first().is_some_and(|row| row[0] != Value::Null))
    };
    if !exists(db, "studies")? {
        db.execute("SELECT pg_advisory_xact_lock($1)", &[SCHEMA_LOCK.into()])?;
        if !exists(db, "studies")? {
            for statement in SCHEMA {
                db.execute(statement, &[])?;
            }
            return rdb::init_versions(db);
        }
    }
    if !exists(db, "alembic_version")? {
        return Err(DbError::fatal(
            "the database has a `studies` table that is not Optuna's (no alembic_version)",
        ));
    }
    rdb::check_revision(db)
}

impl StudyStorage for PostgresStorage {
    fn transact(&self, change: &mut StudyChange<'_>) -> Result<StudyRecord, SearchError> {
        self.in_transaction(&mut |db| {
            // The study's row, then its unfinished trials' rows, locked until the commit.
            db.query(
                "SELECT study_id FROM studies WHERE study_name = $1 FOR UPDATE",
                &[self.name.as_str().into()],
            )?;
            db.query(
                "SELECT t.trial_id FROM trials t JOIN studies s ON s.study_id = t.study_id
                 WHERE s.study_name = $1 AND t.state IN ('RUNNING', 'WAITING')
                 ORDER BY t.trial_id FOR UPDATE OF t",
                &[self.name.as_str().into()],
            )?;
            let (id, stored) = match rdb::read(db, &self.name)? {
                Some((id, record)) => (Some(id), Some(record)),
                None => (None, None),
            };
            let (record, write) = change(stored.clone()).map_err(Failure::Search)?;
            if write {
                rdb::write(db, &self.name, id, stored.as_ref(), &record)?;
            }
            Ok(record)
        })
    }

    fn heartbeat(&self, number: usize) -> Result<(), SearchError> {
        self.in_transaction(&mut |db| Ok(rdb::heartbeat(db, &self.name, number)?))
    }

    fn describe(&self) -> String {
        format!("{} (study {:?})", self.shown, self.name)
    }
}

/// A PostgreSQL error as [`DbError`]: retried when another transaction won a race (to lock,
/// to create a study or the schema) or the connection went away.
fn pg_error(e: &postgres::Error) -> DbError {
    let retry = e.is_closed()
        || matches!(
            e.code(),
            Some(
                &SqlState::T_R_SERIALIZATION_FAILURE
                    | &SqlState::T_R_DEADLOCK_DETECTED
                    | &SqlState::UNIQUE_VIOLATION
                    | &SqlState::DUPLICATE_OBJECT
                    | &SqlState::DUPLICATE_TABLE
                    | &SqlState::ADMIN_SHUTDOWN
                    | &SqlState::CANNOT_CONNECT_NOW
            )
        )
        || (e.code().is_none() && e.source().is_some_and(|s| s.is::<std::io::Error>()));
    let message = match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    };
    DbError { message, retry }
}

/// An open PostgreSQL transaction as [`Database`].
struct Pg<'a, 'b>(&'a mut postgres::Transaction<'b>);

impl Database for Pg<'_, '_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        self.0.execute(sql, &params).map_err(|e| pg_error(&e))
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, DbError> {
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = self.0.query(sql, &params).map_err(|e| pg_error(&e))?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| row.try_get::<_, Value>(i).map_err(|e| pg_error(&e)))
                    .collect()
            })
            .collect()
    }

    fn now(&self) -> &'static str {
        // The server's local time without zone, as Optuna's heartbeats in PostgreSQL.
        "LOCALTIMESTAMP"
    }
}

type BoxError = Box<dyn Error + Sync + Send>;

/// Values are sent in the column's own type: an integer as `integer` or `bigint`, text as
/// text or as an enumeration's label (Optuna's states and directions are enum types here).
impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Value::Float(v) => match *ty {
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Value::Text(v) => match ty.kind() {
                // An enum's binary form is its label.
                Kind::Enum(_) => {
                    out.extend_from_slice(v.as_bytes());
                    Ok(IsNull::No)
                }
                _ => v.as_str().to_sql(ty, out),
            },
            Value::Time(t) => t.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT2
                | Type::INT4
                | Type::INT8
                | Type::FLOAT4
                | Type::FLOAT8
                | Type::TEXT
                | Type::VARCHAR
                | Type::TIMESTAMP
        ) || matches!(ty.kind(), Kind::Enum(_))
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(match *ty {
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Float(f32::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Float(f64::from_sql(ty, raw)?),
            Type::TIMESTAMP => Value::Time(chrono::NaiveDateTime::from_sql(ty, raw)?),
            _ => Value::Text(std::str::from_utf8(raw)?.to_string()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        <Value as ToSql>::accepts(ty) || *ty == Type::NAME || *ty == Type::REGCLASS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown() {
        for url in [
            "postgresql://ann:s3cret@db.lan:5432/studies",
            "postgresql+psycopg2://ann@db.lan/studies?password=s3cret&sslmode=disable",
            "postgresql://ann:s3/cret@db.lan:5432/studies",
            "postgresql://ann:s3?cret@db.lan:5432/studies",
        ] {
            let storage = PostgresStorage::new(url, "s").unwrap();
            assert!(!storage.describe().contains("s3"), "{}", storage.describe());
            assert!(!format!("{storage:?}").contains("s3"), "{storage:?}");
        }
    }

    #[test]
    fn a_url_that_is_not_one_is_refused_without_its_password() {
        let err = PostgresStorage::new("postgresql://ann:s3cret@db.lan:notaport/x", "s")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a PostgreSQL URL"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}
