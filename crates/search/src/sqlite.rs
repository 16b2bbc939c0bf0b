//! Studies in an SQLite file in the schema of Optuna 5's RDB storage, exactly (its twelve
//! tables, keys and indices, schema version 12, alembic revision `v3.2.0.a`): Python Optuna
//! opens our studies (`optuna.load_study(storage="sqlite:///…")`, `optuna-dashboard`) and we
//! open and continue Optuna's. Values are stored as Optuna stores them: a parameter's
//! internal value (a categorical's choice index) with its `distribution_json`, infinities and
//! NaN as a type column, times as local date-times. What Optuna has no column for (the search
//! space, the sampler and its settings, the seed) is one study system attribute,
//! `sentiment:study`, as Optuna's own integrations keep theirs.
//!
//! Every change runs in an `IMMEDIATE` transaction, so worker processes that share the file
//! take turns and never get the same trial number; the schema is created in one too, so
//! workers starting at once on a new file do not race.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::SearchError;
use crate::space::Distribution;
use crate::study::{Direction, StudyChange, StudyRecord, StudyStorage, Trial, TrialState};

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

/// Optuna's schema version and the alembic revision of its head, which Optuna checks.
const SCHEMA_VERSION: i64 = 12;
const ALEMBIC_REVISION: &str = "v3.2.0.a";
/// The Optuna release whose schema this is, recorded in `version_info`.
const OPTUNA_VERSION: &str = "5.0.0";

/// The study system attribute holding what Optuna has no column for.
const STUDY_ATTRIBUTE: &str = "sentiment:study";

/// Optuna's date-time text in SQLite (local time, as its `datetime.now()` gives).
const DATETIME: &str = "%Y-%m-%d %H:%M:%S%.6f";

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
        SearchError::Storage(format!(
            "{} (study {:?}): {e}",
            self.path.display(),
            self.name
        ))
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

    /// Creates Optuna's schema in a new file, or checks that the file has it, inside the
    /// operation's own transaction: workers starting at once on a new file take turns.
    fn ensure_schema(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), SearchError> {
        let e = |e: rusqlite::Error| self.error(e);
        let has = |table: &str| -> rusqlite::Result<bool> {
            tx.query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
        };
        if !has("studies").map_err(e)? {
            for statement in SCHEMA {
                tx.execute(statement, []).map_err(e)?;
            }
            tx.execute(
                "INSERT INTO version_info (version_info_id, schema_version, library_version) \
                 VALUES (1, ?1, ?2)",
                params![SCHEMA_VERSION, OPTUNA_VERSION],
            )
            .map_err(e)?;
            tx.execute(
                "INSERT INTO alembic_version (version_num) VALUES (?1)",
                [ALEMBIC_REVISION],
            )
            .map_err(e)?;
        } else if !has("alembic_version").map_err(e)? {
            return Err(self.error(
                "the file holds studies in the layout of an earlier version of this tool, not \
                 Optuna's: start a new study file (the pipeline: --overwrite, or another --out)",
            ));
        } else {
            let revision: Option<String> = tx
                .query_row("SELECT version_num FROM alembic_version", [], |r| r.get(0))
                .optional()
                .map_err(e)?;
            if revision.as_deref() != Some(ALEMBIC_REVISION) {
                return Err(self.error(format!(
                    "the schema is Optuna's revision {}, not {ALEMBIC_REVISION} (Optuna 5): \
                     upgrade it with `optuna storage upgrade`",
                    revision.as_deref().unwrap_or("(none)")
                )));
            }
        }
        Ok(())
    }
}

fn state_name(state: TrialState) -> &'static str {
    match state {
        TrialState::Running => "RUNNING",
        TrialState::Complete => "COMPLETE",
        TrialState::Pruned => "PRUNED",
        TrialState::Fail => "FAIL",
    }
}

fn parse_state(name: &str) -> Option<TrialState> {
    Some(match name {
        "RUNNING" => TrialState::Running,
        "COMPLETE" => TrialState::Complete,
        "PRUNED" => TrialState::Pruned,
        "FAIL" => TrialState::Fail,
        _ => return None,
    })
}

/// Optuna's stored form of a value: the number, or NULL and the kind of non-finite value.
fn stored(value: f64) -> (Option<f64>, &'static str) {
    if value.is_nan() {
        (None, "NAN")
    } else if value == f64::INFINITY {
        (None, "INF_POS")
    } else if value == f64::NEG_INFINITY {
        (None, "INF_NEG")
    } else {
        (Some(value), "FINITE")
    }
}

fn from_stored(value: Option<f64>, kind: &str) -> f64 {
    match kind {
        "INF_POS" => f64::INFINITY,
        "INF_NEG" => f64::NEG_INFINITY,
        "NAN" => f64::NAN,
        _ => value.unwrap_or(f64::NAN),
    }
}

/// Seconds since the Unix epoch as Optuna's local date-time text.
fn datetime(seconds: f64) -> String {
    // Whole microseconds, rounded: what Optuna's text holds, and what `seconds` reads back.
    let micros = (seconds * 1e6).round() as i64;
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .with_timezone(&chrono::Local)
        .naive_local()
        .format(DATETIME)
        .to_string()
}

/// Optuna's local date-time text as seconds since the Unix epoch.
fn seconds(text: &str) -> Option<f64> {
    use chrono::TimeZone;
    let naive = chrono::NaiveDateTime::parse_from_str(text, DATETIME)
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S"))
        .ok()?;
    let local = chrono::Local.from_local_datetime(&naive).earliest()?;
    Some(local.timestamp_micros() as f64 / 1e6)
}

/// The rows `sql` gives for the study `id` (its one parameter), each mapped by `row`.
fn query<T>(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    id: i64,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut statement = tx.prepare(sql)?;
    // Collected into a binding before returning: the rows borrow `statement`, which a tail
    // expression would outlive.
    #[allow(clippy::let_and_return)]
    let rows = statement.query_map([id], row)?.collect();
    rows
}

/// What Optuna has no column for, kept in [`STUDY_ATTRIBUTE`].
#[derive(serde::Serialize, serde::Deserialize)]
struct Settings {
    version: u32,
    space: crate::SearchSpace,
    sampler: crate::Sampler,
    seed: u64,
}

/// A study as stored: its id and record; `foreign` when Optuna (or another tool) wrote it, so
/// its space was read from the trials' distributions and its sampler and seed are unknown.
type Stored = (i64, StudyRecord);

impl SqliteStorage {
    /// Reads the study, or None if the file has none of this name.
    fn read(&self, tx: &rusqlite::Transaction<'_>) -> Result<Option<Stored>, SearchError> {
        let e = |e: rusqlite::Error| self.error(e);
        let Some(id) = tx
            .query_row(
                "SELECT study_id FROM studies WHERE study_name = ?1",
                [&self.name],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(e)?
        else {
            return Ok(None);
        };
        let direction: String = tx
            .query_row(
                "SELECT direction FROM study_directions WHERE study_id = ?1 AND objective = 0",
                [id],
                |r| r.get(0),
            )
            .map_err(e)?;
        let direction = match direction.as_str() {
            "MINIMIZE" => Direction::Minimize,
            "MAXIMIZE" => Direction::Maximize,
            other => return Err(self.error(format!("unknown direction {other:?}"))),
        };
        let settings: Option<String> = tx
            .query_row(
                "SELECT value_json FROM study_system_attributes WHERE study_id = ?1 AND key = ?2",
                params![id, STUDY_ATTRIBUTE],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?;

        let mut trials: BTreeMap<i64, Trial> = BTreeMap::new();
        let rows = query(
            tx,
            "SELECT trial_id, number, state, datetime_start, datetime_complete
             FROM trials WHERE study_id = ?1 ORDER BY number",
            id,
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            },
        )
        .map_err(e)?;
        for (trial_id, number, state, started, finished) in rows {
            let state = parse_state(&state).ok_or_else(|| {
                self.error(format!(
                    "trial {number} has a state we do not run: {state:?}"
                ))
            })?;
            trials.insert(
                trial_id,
                Trial {
                    number: number as usize,
                    state,
                    params: BTreeMap::new(),
                    internal: BTreeMap::new(),
                    value: None,
                    intermediate: BTreeMap::new(),
                    started: started.as_deref().and_then(seconds).unwrap_or(0.0),
                    finished: finished.as_deref().and_then(seconds),
                    user_attrs: BTreeMap::new(),
                },
            );
        }
        let mut space = crate::SearchSpace::new();
        let rows = query(
            tx,
            "SELECT p.trial_id, p.param_name, p.param_value, p.distribution_json
             FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id
             WHERE t.study_id = ?1",
            id,
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, f64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        )
        .map_err(e)?;
        for (trial_id, name, internal, distribution) in rows {
            let distribution = Distribution::from_optuna_json(&distribution)?;
            if let Some(trial) = trials.get_mut(&trial_id) {
                trial
                    .params
                    .insert(name.clone(), distribution.to_external(internal));
                trial.internal.insert(name.clone(), internal);
            }
            space.insert(name, distribution);
        }
        let rows = query(
            tx,
            "SELECT v.trial_id, v.value, v.value_type
             FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id
             WHERE t.study_id = ?1 AND v.objective = 0",
            id,
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<f64>>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .map_err(e)?;
        for (trial_id, value, kind) in rows {
            if let Some(trial) = trials.get_mut(&trial_id) {
                trial.value = Some(from_stored(value, &kind));
            }
        }
        let rows = query(
            tx,
            "SELECT v.trial_id, v.step, v.intermediate_value, v.intermediate_value_type
             FROM trial_intermediate_values v JOIN trials t ON t.trial_id = v.trial_id
             WHERE t.study_id = ?1",
            id,
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<f64>>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        )
        .map_err(e)?;
        for (trial_id, step, value, kind) in rows {
            if let Some(trial) = trials.get_mut(&trial_id) {
                trial
                    .intermediate
                    .insert(step as usize, from_stored(value, &kind));
            }
        }

        let rows = query(
            tx,
            "SELECT a.trial_id, a.key, a.value_json
             FROM trial_user_attributes a JOIN trials t ON t.trial_id = a.trial_id
             WHERE t.study_id = ?1",
            id,
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .map_err(e)?;
        for (trial_id, key, value) in rows {
            let value = serde_json::from_str(&value)
                .map_err(|e| self.error(format!("user attribute {key:?}: {e}")))?;
            if let Some(trial) = trials.get_mut(&trial_id) {
                trial.user_attrs.insert(key, value);
            }
        }

        let trials: Vec<Trial> = trials.into_values().collect();
        let record = match settings {
            Some(text) => {
                let settings: Settings = serde_json::from_str(&text)
                    .map_err(|e| self.error(format!("{STUDY_ATTRIBUTE}: {e}")))?;
                StudyRecord {
                    version: settings.version,
                    direction,
                    space: settings.space,
                    sampler: settings.sampler,
                    seed: settings.seed,
                    foreign: false,
                    trials,
                }
            }
            None => StudyRecord {
                version: crate::STUDY_VERSION,
                direction,
                space,
                sampler: crate::Sampler::Random,
                seed: 0,
                foreign: true,
                trials,
            },
        };
        Ok(Some((id, record)))
    }

    fn write(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: Option<i64>,
        old: Option<&StudyRecord>,
        new: &StudyRecord,
    ) -> Result<(), SearchError> {
        let e = |e: rusqlite::Error| self.error(e);
        let id = match id {
            Some(id) => id,
            None => {
                tx.execute("INSERT INTO studies (study_name) VALUES (?1)", [&self.name])
                    .map_err(e)?;
                let id = tx.last_insert_rowid();
                let direction = match new.direction {
                    Direction::Minimize => "MINIMIZE",
                    Direction::Maximize => "MAXIMIZE",
                };
                tx.execute(
                    "INSERT INTO study_directions (direction, study_id, objective)
                     VALUES (?1, ?2, 0)",
                    params![direction, id],
                )
                .map_err(e)?;
                id
            }
        };
        let settings = serde_json::to_string(&Settings {
            version: new.version,
            space: new.space.clone(),
            sampler: new.sampler,
            seed: new.seed,
        })
        .map_err(|e| self.error(e))?;
        tx.execute(
            "INSERT INTO study_system_attributes (study_id, key, value_json) VALUES (?1, ?2, ?3)
             ON CONFLICT (study_id, key) DO UPDATE SET value_json = excluded.value_json",
            params![id, STUDY_ATTRIBUTE, settings],
        )
        .map_err(e)?;
        // Only the trials that changed are rewritten: a study of many trials stays cheap.
        let before: BTreeMap<usize, &Trial> = old
            .map(|o| o.trials.iter().map(|t| (t.number, t)).collect())
            .unwrap_or_default();
        for trial in &new.trials {
            if before.get(&trial.number) == Some(&trial) {
                continue;
            }
            let number = trial.number as i64;
            let (started, finished) = (datetime(trial.started), trial.finished.map(datetime));
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT trial_id FROM trials WHERE study_id = ?1 AND number = ?2",
                    params![id, number],
                    |r| r.get(0),
                )
                .optional()
                .map_err(e)?;
            let trial_id = match existing {
                Some(trial_id) => {
                    tx.execute(
                        "UPDATE trials SET state = ?2, datetime_start = ?3, datetime_complete = ?4
                         WHERE trial_id = ?1",
                        params![trial_id, state_name(trial.state), started, finished],
                    )
                    .map_err(e)?;
                    for table in [
                        "trial_params",
                        "trial_values",
                        "trial_intermediate_values",
                        "trial_user_attributes",
                    ] {
                        tx.execute(
                            &format!("DELETE FROM {table} WHERE trial_id = ?1"),
                            [trial_id],
                        )
                        .map_err(e)?;
                    }
                    trial_id
                }
                None => {
                    tx.execute(
                        "INSERT INTO trials (number, study_id, state, datetime_start,
                         datetime_complete) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![number, id, state_name(trial.state), started, finished],
                    )
                    .map_err(e)?;
                    tx.last_insert_rowid()
                }
            };
            for (name, internal) in &trial.internal {
                let distribution = new.space.get(name).ok_or_else(|| {
                    self.error(format!(
                        "trial {number}: parameter {name:?} is not in the study's space"
                    ))
                })?;
                tx.execute(
                    "INSERT INTO trial_params (trial_id, param_name, param_value,
                     distribution_json) VALUES (?1, ?2, ?3, ?4)",
                    params![trial_id, name, internal, distribution.to_optuna_json()],
                )
                .map_err(e)?;
            }
            if let Some(value) = trial.value {
                let (value, kind) = stored(value);
                tx.execute(
                    "INSERT INTO trial_values (trial_id, objective, value, value_type)
                     VALUES (?1, 0, ?2, ?3)",
                    params![trial_id, value, kind],
                )
                .map_err(e)?;
            }
            for (key, value) in &trial.user_attrs {
                tx.execute(
                    "INSERT INTO trial_user_attributes (trial_id, key, value_json)
                     VALUES (?1, ?2, ?3)",
                    params![trial_id, key, value.to_string()],
                )
                .map_err(e)?;
            }
            for (step, value) in &trial.intermediate {
                let (value, kind) = stored(*value);
                tx.execute(
                    "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value,
                     intermediate_value_type) VALUES (?1, ?2, ?3, ?4)",
                    params![trial_id, *step as i64, value, kind],
                )
                .map_err(e)?;
            }
        }
        Ok(())
    }
}

impl StudyStorage for SqliteStorage {
    fn transact(&self, change: &mut StudyChange<'_>) -> Result<StudyRecord, SearchError> {
        let mut connection = self.connect()?;
        // IMMEDIATE takes the write lock at once: two workers cannot both read the same
        // trial count and then both append.
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(e))?;
        self.ensure_schema(&tx)?;
        let (id, stored) = match self.read(&tx)? {
            Some((id, record)) => (Some(id), Some(record)),
            None => (None, None),
        };
        let (record, write) = change(stored.clone())?;
        if write {
            self.write(&tx, id, stored.as_ref(), &record)?;
        }
        // Committed even without a change: a new file keeps the schema just created.
        tx.commit().map_err(|e| self.error(e))?;
        Ok(record)
    }

    fn describe(&self) -> String {
        format!("{} (study {:?})", self.path.display(), self.name)
    }
}

/// Whether `path` names an SQLite study file (`.db`, `.sqlite`, `.sqlite3`) rather than JSON.
pub fn is_sqlite_path(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("db" | "sqlite" | "sqlite3")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A time in whole microseconds survives Optuna's date-time text exactly.
    #[test]
    fn times_read_back_to_the_microsecond() {
        for micros in (0..2000u64).map(|i| 1_796_314_538_000_000 + i * 7_919) {
            let t = micros as f64 / 1e6;
            assert_eq!(seconds(&datetime(t)), Some(t), "{}", datetime(t));
        }
    }
}
