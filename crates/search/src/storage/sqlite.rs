//! Studies in an SQLite file in the schema of Optuna 5's RDB storage, exactly (its twelve
//! tables, keys and indices, schema version 12, alembic revision `v3.2.0.a`): Python Optuna
//! opens our studies (`optuna.load_study(storage="sqlite:///…")`, `optuna-dashboard`) and we
//! open and continue Optuna's. What is read and written, and how, is [`super::rdb`]'s.
//!
//! Every change runs in an `IMMEDIATE` transaction, so worker processes that share the file
//! take turns and never get the same trial number; the schema is created in one too, so
//! workers starting at once on a new file do not race.

use std::path::PathBuf;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, TransactionBehavior};

use super::base::StudyStorage;
use super::rdb::{self, Database, DbError, Value};
use crate::SearchError;
use crate::trial::{StudyChange, StudyRecord};

/// How long a worker waits for another's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(600);

/// Optuna 5's schema as SQLAlchemy creates it in SQLite (`sqlite_master`'s text, checked
/// against `fixtures/search/optuna/study.db`).
const SCHEMA: &[&str] = &[
    "CREATE TABLE studies (\n\tstudy_id INTEGER NOT NULL, \n\tstudy_name VARCHAR(512) NOT NULL, \n\tPRIMARY KEY (study_id)\n)",
    "CREATE UNIQUE INDEX ix_studies_study_name ON studies (study_name)",
    "CREATE TABLE version_info (\n\tversion_info_id INTEGER NOT NULL, \n\tschema_version INTEGER, \n\tlibrary_version VARCHAR(256), \n\tPRIMARY KEY (version_info_id), \n\tCHECK (version_info_id=1)\n)",
    "CREATE TABLE study_directions (\n\tstudy_direction_id INTEGER NOT NULL, \n\tdirection VARCHAR(8) NOT NULL, \n\tstudy_id INTEGER NOT NULL, \n\tobjective INTEGER NOT NULL, \n\tPRIMARY KEY (study_direction_id), \n\tUNIQUE (study_id, objective), \n\tFOREIGN KEY(study_id) REFERENCES studies (study_id)\n)",
    "CREATE TABLE study_user_attributes (\n\tstudy_user_attribute_id INTEGER NOT NULL, \n\tstudy_id INTEGER, \n\t\"key\" VARCHAR(512), \n\tvalue_json TEXT, \n\tPRIMARY KEY (study_user_attribute_id), \n\tUNIQUE (study_id, \"key\"), \n\tFOREIGN KEY(study_id) REFERENCES studies (study_id)\n)",
    "CREATE TABLE study_system_attributes (\n\tstudy_system_attribute_id INTEGER NOT NULL, \n\tstudy_id INTEGER, \n\t\"key\" VARCHAR(512), \n\tvalue_json TEXT, \n\tPRIMARY KEY (study_system_attribute_id), \n\tUNIQUE (study_id, \"key\"), \n\tFOREIGN KEY(study_id) REFERENCES studies (study_id)\n)",
    "CREATE TABLE trials (\n\ttrial_id INTEGER NOT NULL, \n\tnumber INTEGER, \n\tstudy_id INTEGER, \n\tstate VARCHAR(8) NOT NULL, \n\tdatetime_start DATETIME, \n\tdatetime_complete DATETIME, \n\tPRIMARY KEY (trial_id), \n\tFOREIGN KEY(study_id) REFERENCES studies (study_id)\n)",
    "CREATE INDEX ix_trials_study_id ON trials (study_id)",
    "CREATE TABLE trial_user_attributes (\n\ttrial_user_attribute_id INTEGER NOT NULL, \n\ttrial_id INTEGER, \n\t\"key\" VARCHAR(512), \n\tvalue_json TEXT, \n\tPRIMARY KEY (trial_user_attribute_id), \n\tUNIQUE (trial_id, \"key\"), \n\tFOREIGN KEY(trial_id) REFERENCES trials (trial_id)\n)",
    "CREATE TABLE trial_system_attributes (\n\ttrial_system_attribute_id INTEGER NOT NULL, \n\ttrial_id INTEGER, \n\t\"key\" VARCHAR(512), \n\tvalue_json TEXT, \n\tPRIMARY KEY (trial_system_attribute_id), \n\tUNIQUE (trial_id, \"key\"), \n\tFOREIGN KEY(trial_id) REFERENCES trials (trial_id)\n)",
    "CREATE TABLE trial_params (\n\tparam_id INTEGER NOT NULL, \n\ttrial_id INTEGER, \n\tparam_name VARCHAR(512), \n\tparam_value FLOAT, \n\tdistribution_json TEXT, \n\tPRIMARY KEY (param_id), \n\tUNIQUE (trial_id, param_name), \n\tFOREIGN KEY(trial_id) REFERENCES trials (trial_id)\n)",
    "CREATE TABLE trial_values (\n\ttrial_value_id INTEGER NOT NULL, \n\ttrial_id INTEGER NOT NULL, \n\tobjective INTEGER NOT NULL, \n\tvalue FLOAT, \n\tvalue_type VARCHAR(7) NOT NULL, \n\tPRIMARY KEY (trial_value_id), \n\tUNIQUE (trial_id, objective), \n\tFOREIGN KEY(trial_id) REFERENCES trials (trial_id)\n)",
    "CREATE TABLE trial_intermediate_values (\n\ttrial_intermediate_value_id INTEGER NOT NULL, \n\ttrial_id INTEGER NOT NULL, \n\tstep INTEGER NOT NULL, \n\tintermediate_value FLOAT, \n\tintermediate_value_type VARCHAR(7) NOT NULL, \n\tPRIMARY KEY (trial_intermediate_value_id), \n\tUNIQUE (trial_id, step), \n\tFOREIGN KEY(trial_id) REFERENCES trials (trial_id)\n)",
    "CREATE TABLE trial_heartbeats (\n\ttrial_heartbeat_id INTEGER NOT NULL, \n\ttrial_id INTEGER NOT NULL, \n\theartbeat DATETIME NOT NULL, \n\tPRIMARY KEY (trial_heartbeat_id), \n\tUNIQUE (trial_id), \n\tFOREIGN KEY(trial_id) REFERENCES trials (trial_id)\n)",
    "CREATE TABLE alembic_version (\n\tversion_num VARCHAR(32) NOT NULL, \n\tCONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n)",
];

/// A study named `name` in the SQLite file at `path` (created on first use).
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    path: PathBuf,
    name: String,
}

impl SqliteStorage {
    /// The study `name` in the database file `path`.
    pub fn new(path: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            name: name.into(),
        }
    }

    fn error(&self, e: impl std::fmt::Display) -> SearchError {
        SearchError::Storage(format!("{}: {e}", self.describe()))
    }

    fn connect(&self) -> Result<Connection, SearchError> {
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| self.error(e))?;
        }
        let connection = Connection::open(&self.path).map_err(|e| self.error(e))?;
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.error(e))?;
        Ok(connection)
    }

    /// Runs `work` in one `IMMEDIATE` transaction, after creating Optuna's schema in a new
    /// file or checking it in an existing one (in the same transaction: workers starting at
    /// once on a new file take turns).
    fn in_transaction<T>(
        &self,
        work: impl FnOnce(&mut Sqlite<'_>) -> Result<T, SearchError>,
    ) -> Result<T, SearchError> {
        let mut connection = self.connect()?;
        // IMMEDIATE takes the write lock at once: two workers cannot both read the same
        // trial count and then both append.
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(e))?;
        let mut db = Sqlite(&tx);
        self.ensure_schema(&mut db)?;
        let result = work(&mut db)?;
        // Committed even without a change: a new file keeps the schema just created.
        tx.commit().map_err(|e| self.error(e))?;
        Ok(result)
    }

    fn ensure_schema(&self, db: &mut Sqlite<'_>) -> Result<(), SearchError> {
        let e = |e: DbError| self.error(e.message);
        let has = |db: &mut Sqlite<'_>, table: &str| -> Result<bool, SearchError> {
            let rows = db
                .query(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name = $1",
                    &[table.into()],
                )
                .map_err(e)?;
            Ok(!rows.is_empty())
        };
        if !has(db, "studies")? {
            for statement in SCHEMA {
                db.execute(statement, &[]).map_err(e)?;
            }
            rdb::init_versions(db).map_err(e)
        } else if !has(db, "alembic_version")? {
            Err(self.error(
                "the file holds studies in the layout of an earlier version of this tool, not \
                 Optuna's: start a new study file (the pipeline: --overwrite, or another --out)",
            ))
        } else {
            rdb::check_revision(db).map_err(e)
        }
    }
}

/// An open SQLite transaction as [`Database`].
struct Sqlite<'a>(&'a rusqlite::Transaction<'a>);

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Owned(rusqlite::types::Value::Null),
            Value::Int(v) => ToSqlOutput::Owned((*v).into()),
            Value::Float(v) => ToSqlOutput::Owned((*v).into()),
            Value::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Value::Time(t) => ToSqlOutput::Owned(rdb::datetime_text(*t).into()),
        })
    }
}

impl Sqlite<'_> {
    /// `$N` parameters as SQLite's `?N`, so each binds by its number whatever the order in
    /// which they appear.
    fn numbered(sql: &str) -> String {
        sql.replace('$', "?")
    }

    fn error(e: rusqlite::Error) -> DbError {
        let retry = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        DbError {
            message: e.to_string(),
            retry,
        }
    }
}

impl Database for Sqlite<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let changed = self
            .0
            .execute(&Self::numbered(sql), rusqlite::params_from_iter(params))
            .map_err(Self::error)?;
        Ok(changed as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, DbError> {
        let mut statement = self.0.prepare(&Self::numbered(sql)).map_err(Self::error)?;
        let columns = statement.column_count();
        let mut rows = statement
            .query(rusqlite::params_from_iter(params))
            .map_err(Self::error)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(Self::error)? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i).map_err(Self::error)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Float(v),
                    ValueRef::Text(v) | ValueRef::Blob(v) => {
                        Value::Text(String::from_utf8_lossy(v).into_owned())
                    }
                });
            }
            out.push(values);
        }
        Ok(out)
    }

    fn now(&self) -> &'static str {
        // UTC, as Optuna's heartbeats in SQLite (`func.now()`): only ever compared with itself.
        "CURRENT_TIMESTAMP"
    }
}

impl StudyStorage for SqliteStorage {
    fn transact(&self, change: &mut StudyChange<'_>) -> Result<StudyRecord, SearchError> {
        self.in_transaction(|db| {
            let e = |e: DbError| self.error(e.message);
            let (id, stored) = match rdb::read(db, &self.name).map_err(e)? {
                Some((id, record)) => (Some(id), Some(record)),
                None => (None, None),
            };
            let (record, write) = change(stored.clone())?;
            if write {
                rdb::write(db, &self.name, id, stored.as_ref(), &record).map_err(e)?;
            }
            Ok(record)
        })
    }

    fn heartbeat(&self, number: usize) -> Result<(), SearchError> {
        self.in_transaction(|db| {
            rdb::heartbeat(db, &self.name, number).map_err(|e| self.error(e.message))
        })
    }

    fn describe(&self) -> String {
        format!("{} (study {:?})", self.path.display(), self.name)
    }
}
