//! Studies in an SQLite file, in tables that users can query as they would Optuna's RDB
//! storage (`studies`, `trials`, `trial_params`, `trial_intermediate_values`), several studies
//! per file by name. Every change runs in an `IMMEDIATE` transaction, so worker processes that
//! share the file take turns and never get the same trial number.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::SearchError;
use crate::study::{StudyChange, StudyRecord, StudyStorage, Trial, TrialState};

/// How long a worker waits for another's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(600);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS studies (
    study_id INTEGER PRIMARY KEY,
    study_name TEXT NOT NULL UNIQUE,
    version INTEGER NOT NULL,
    direction TEXT NOT NULL,
    -- The search space and sampler settings as JSON, the seed as a signed 64-bit integer
    -- (the u64 seed's bits).
    space_json TEXT NOT NULL,
    sampler_json TEXT NOT NULL,
    seed INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    study_id INTEGER NOT NULL REFERENCES studies(study_id),
    number INTEGER NOT NULL,
    state TEXT NOT NULL,
    value REAL,
    datetime_start REAL NOT NULL,
    datetime_complete REAL,
    PRIMARY KEY (study_id, number)
);
CREATE TABLE IF NOT EXISTS trial_params (
    study_id INTEGER NOT NULL,
    number INTEGER NOT NULL,
    param_name TEXT NOT NULL,
    param_value_json TEXT,
    internal_value REAL,
    PRIMARY KEY (study_id, number, param_name)
);
CREATE TABLE IF NOT EXISTS trial_intermediate_values (
    study_id INTEGER NOT NULL,
    number INTEGER NOT NULL,
    step INTEGER NOT NULL,
    intermediate_value REAL NOT NULL,
    PRIMARY KEY (study_id, number, step)
);
";

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
        connection
            .execute_batch(SCHEMA)
            .map_err(|e| self.error(e))?;
        Ok(connection)
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

/// Reads the study `name`, or None if the file has none of that name.
fn read(tx: &rusqlite::Transaction<'_>, name: &str) -> rusqlite::Result<Option<(i64, Row)>> {
    let study = tx
        .query_row(
            "SELECT study_id, version, direction, space_json, sampler_json, seed
             FROM studies WHERE study_name = ?1",
            [name],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((id, version, direction, space, sampler, seed)) = study else {
        return Ok(None);
    };
    let mut trials: BTreeMap<usize, Trial> = BTreeMap::new();
    let mut statement = tx.prepare(
        "SELECT number, state, value, datetime_start, datetime_complete
         FROM trials WHERE study_id = ?1 ORDER BY number",
    )?;
    let rows = statement.query_map([id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<f64>>(2)?,
            r.get::<_, f64>(3)?,
            r.get::<_, Option<f64>>(4)?,
        ))
    })?;
    let mut states = Vec::new();
    for row in rows {
        let (number, state, value, started, finished) = row?;
        states.push((number as usize, state.clone()));
        trials.insert(
            number as usize,
            Trial {
                number: number as usize,
                state: parse_state(&state).unwrap_or(TrialState::Fail),
                params: BTreeMap::new(),
                internal: BTreeMap::new(),
                value,
                intermediate: BTreeMap::new(),
                started,
                finished,
            },
        );
    }
    let mut statement = tx.prepare(
        "SELECT number, param_name, param_value_json, internal_value
         FROM trial_params WHERE study_id = ?1",
    )?;
    let rows = statement.query_map([id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<f64>>(3)?,
        ))
    })?;
    for row in rows {
        let (number, name, value, internal) = row?;
        if let Some(trial) = trials.get_mut(&(number as usize)) {
            if let Some(value) = value.and_then(|v| serde_json::from_str(&v).ok()) {
                trial.params.insert(name.clone(), value);
            }
            if let Some(internal) = internal {
                trial.internal.insert(name, internal);
            }
        }
    }
    let mut statement = tx.prepare(
        "SELECT number, step, intermediate_value
         FROM trial_intermediate_values WHERE study_id = ?1",
    )?;
    let rows = statement.query_map([id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, f64>(2)?,
        ))
    })?;
    for row in rows {
        let (number, step, value) = row?;
        if let Some(trial) = trials.get_mut(&(number as usize)) {
            trial.intermediate.insert(step as usize, value);
        }
    }
    Ok(Some((
        id,
        Row {
            version,
            direction,
            space,
            sampler,
            seed,
            trials: trials.into_values().collect(),
            states,
        },
    )))
}

/// A study as stored, before its JSON columns are parsed.
struct Row {
    version: u32,
    direction: String,
    space: String,
    sampler: String,
    seed: i64,
    trials: Vec<Trial>,
    /// Every trial's state as written, to report one this version does not know.
    states: Vec<(usize, String)>,
}

impl SqliteStorage {
    fn decode(&self, row: Row) -> Result<StudyRecord, SearchError> {
        if let Some((number, state)) = row.states.iter().find(|(_, s)| parse_state(s).is_none()) {
            return Err(self.error(format!("trial {number} has an unknown state {state:?}")));
        }
        let json = |what: &str, text: &str| -> Result<serde_json::Value, SearchError> {
            serde_json::from_str(text).map_err(|e| self.error(format!("column {what}: {e}")))
        };
        let value = serde_json::json!({
            "version": row.version,
            "direction": row.direction,
            "space": json("space_json", &row.space)?,
            "sampler": json("sampler_json", &row.sampler)?,
            "seed": row.seed as u64,
            "trials": row.trials,
        });
        serde_json::from_value(value).map_err(|e| self.error(format!("not a study: {e}")))
    }

    fn write(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: Option<i64>,
        old: Option<&StudyRecord>,
        new: &StudyRecord,
    ) -> Result<(), SearchError> {
        let e = |e: rusqlite::Error| self.error(e);
        let json = |e: serde_json::Error| self.error(e);
        let direction = serde_json::to_value(new.direction).map_err(json)?;
        let direction = direction.as_str().unwrap_or_default().to_owned();
        let space = serde_json::to_string(&new.space).map_err(json)?;
        let sampler = serde_json::to_string(&new.sampler).map_err(json)?;
        let id = match id {
            Some(id) => {
                tx.execute(
                    "UPDATE studies SET version = ?2, direction = ?3, space_json = ?4,
                     sampler_json = ?5, seed = ?6 WHERE study_id = ?1",
                    params![id, new.version, direction, space, sampler, new.seed as i64],
                )
                .map_err(e)?;
                id
            }
            None => {
                tx.execute(
                    "INSERT INTO studies (study_name, version, direction, space_json,
                     sampler_json, seed) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        self.name,
                        new.version,
                        direction,
                        space,
                        sampler,
                        new.seed as i64
                    ],
                )
                .map_err(e)?;
                tx.last_insert_rowid()
            }
        };
        // Only the trials that changed are rewritten: a study of many trials stays cheap.
        let before: BTreeMap<usize, &Trial> = old
            .map(|o| o.trials.iter().map(|t| (t.number, t)).collect())
            .unwrap_or_default();
        for trial in &new.trials {
            if before.get(&trial.number) == Some(&trial) {
                continue;
            }
            let number = trial.number as i64;
            for table in ["trial_params", "trial_intermediate_values"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE study_id = ?1 AND number = ?2"),
                    params![id, number],
                )
                .map_err(e)?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO trials
                 (study_id, number, state, value, datetime_start, datetime_complete)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    id,
                    number,
                    state_name(trial.state),
                    trial.value,
                    trial.started,
                    trial.finished
                ],
            )
            .map_err(e)?;
            let names: std::collections::BTreeSet<&String> =
                trial.params.keys().chain(trial.internal.keys()).collect();
            for name in names {
                let value = trial.params.get(name).map(|v| v.to_string());
                tx.execute(
                    "INSERT INTO trial_params
                     (study_id, number, param_name, param_value_json, internal_value)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, number, name, value, trial.internal.get(name)],
                )
                .map_err(e)?;
            }
            for (step, value) in &trial.intermediate {
                tx.execute(
                    "INSERT INTO trial_intermediate_values
                     (study_id, number, step, intermediate_value) VALUES (?1, ?2, ?3, ?4)",
                    params![id, number, *step as i64, value],
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
        let (id, stored) = match read(&tx, &self.name).map_err(|e| self.error(e))? {
            Some((id, row)) => (Some(id), Some(self.decode(row)?)),
            None => (None, None),
        };
        let (record, write) = change(stored.clone())?;
        if write {
            self.write(&tx, id, stored.as_ref(), &record)?;
            tx.commit().map_err(|e| self.error(e))?;
        }
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
