//! Optuna 5's RDB storage, written once for every database that holds it (SQLite in
//! [`super::sqlite`], PostgreSQL in [`super::postgres`]), as Optuna writes it once over
//! SQLAlchemy. Values are stored as Optuna stores them: a parameter's internal value (a
//! categorical's choice index) with its `distribution_json`; infinities and NaN as a type
//! column; start and end times as the local date-time of the worker's clock; heartbeats as the
//! database's own clock. What Optuna has no column for (the search space, the sampler and its
//! settings, the seed) is one study system attribute, [`STUDY_ATTRIBUTE`], as Optuna's own
//! integrations keep theirs.
//!
//! The SQL here is the dialect SQLite and PostgreSQL share: `$N` parameters, `RETURNING`,
//! `ON CONFLICT … DO UPDATE`, and `CAST(… AS TEXT)` to read Optuna's enumerations (native
//! enum types in PostgreSQL, text in SQLite).

use std::collections::BTreeMap;

use chrono::NaiveDateTime;

use crate::space::Distribution;
use crate::trial::{Direction, StudyRecord, Trial, TrialState};

/// Optuna's schema version and the alembic revision of its head, which Optuna checks.
pub(crate) const SCHEMA_VERSION: i64 = 12;
/// Optuna's alembic head revision.
pub(crate) const ALEMBIC_REVISION: &str = "v3.2.0.a";
/// The Optuna release whose schema this is, recorded in `version_info`.
pub(crate) const OPTUNA_VERSION: &str = "5.0.0";

/// The study system attribute holding what Optuna has no column for.
pub(crate) const STUDY_ATTRIBUTE: &str = "sentiment:study";

/// Optuna's date-time text in SQLite (local time, as its `datetime.now()` gives).
const DATETIME: &str = "%Y-%m-%d %H:%M:%S%.f";

/// A value going to or coming from the database.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// SQL NULL.
    Null,
    /// An integer (SQLite's INTEGER; PostgreSQL's integer types).
    Int(i64),
    /// A double.
    Float(f64),
    /// Text, or an enumeration's label.
    Text(String),
    /// A date-time without zone (PostgreSQL's `timestamp`; text in SQLite).
    Time(NaiveDateTime),
}

impl Value {
    fn int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    fn float(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Value::Text(v) => Some(v),
            _ => None,
        }
    }

    fn time(&self) -> Option<NaiveDateTime> {
        match self {
            Value::Time(t) => Some(*t),
            Value::Text(text) => NaiveDateTime::parse_from_str(text, DATETIME).ok(),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// A failed statement: its message, and whether running the transaction again may succeed
/// (a serialization failure, a deadlock, a lost connection, a race to create a row).
#[derive(Debug)]
pub(crate) struct DbError {
    /// What the database said.
    pub message: String,
    /// Worth retrying.
    pub retry: bool,
}

impl DbError {
    /// An error that retrying does not cure.
    pub fn fatal(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            retry: false,
        }
    }
}

/// One open transaction of a database holding Optuna's schema.
pub(crate) trait Database {
    /// Runs a statement; returns the rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError>;
    /// Runs a query; returns its rows.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, DbError>;
    /// SQL for the database's clock as a date-time without zone: what Optuna's heartbeats
    /// hold (`func.now()`), so that workers on machines whose clocks differ agree on ages.
    fn now(&self) -> &'static str;
}

/// The one value of a query that returns one row and column.
fn scalar(db: &mut dyn Database, sql: &str, params: &[Value]) -> Result<Value, DbError> {
    Ok(db
        .query(sql, params)?
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next())
        .unwrap_or(Value::Null))
}

/// Inserts the version rows of a freshly created schema.
pub(crate) fn init_versions(db: &mut dyn Database) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO version_info (version_info_id, schema_version, library_version) \
         VALUES (1, $1, $2)",
        &[SCHEMA_VERSION.into(), OPTUNA_VERSION.into()],
    )?;
    db.execute(
        "INSERT INTO alembic_version (version_num) VALUES ($1)",
        &[ALEMBIC_REVISION.into()],
    )?;
    Ok(())
}

/// Checks that the schema is Optuna's head revision.
pub(crate) fn check_revision(db: &mut dyn Database) -> Result<(), DbError> {
    let revision = scalar(db, "SELECT version_num FROM alembic_version", &[])?;
    if revision.text() != Some(ALEMBIC_REVISION) {
        return Err(DbError::fatal(format!(
            "the schema is Optuna's revision {}, not {ALEMBIC_REVISION} (Optuna 5): upgrade it \
             with `optuna storage upgrade`",
            revision.text().unwrap_or("(none)")
        )));
    }
    Ok(())
}

pub(crate) fn state_name(state: TrialState) -> &'static str {
    match state {
        TrialState::Running => "RUNNING",
        TrialState::Waiting => "WAITING",
        TrialState::Complete => "COMPLETE",
        TrialState::Pruned => "PRUNED",
        TrialState::Fail => "FAIL",
    }
}

fn parse_state(name: &str) -> Option<TrialState> {
    Some(match name {
        "RUNNING" => TrialState::Running,
        "WAITING" => TrialState::Waiting,
        "COMPLETE" => TrialState::Complete,
        "PRUNED" => TrialState::Pruned,
        "FAIL" => TrialState::Fail,
        _ => return None,
    })
}

/// Optuna's stored form of a value: the number, or NULL and the kind of non-finite value.
fn stored(value: f64) -> (Value, &'static str) {
    if value.is_nan() {
        (Value::Null, "NAN")
    } else if value == f64::INFINITY {
        (Value::Null, "INF_POS")
    } else if value == f64::NEG_INFINITY {
        (Value::Null, "INF_NEG")
    } else {
        (Value::Float(value), "FINITE")
    }
}

fn from_stored(value: &Value, kind: &Value) -> f64 {
    match kind.text() {
        Some("INF_POS") => f64::INFINITY,
        Some("INF_NEG") => f64::NEG_INFINITY,
        Some("NAN") => f64::NAN,
        _ => value.float().unwrap_or(f64::NAN),
    }
}

/// Seconds since the Unix epoch as Optuna's local date-time.
pub(crate) fn local_time(seconds: f64) -> NaiveDateTime {
    // Whole microseconds, rounded: what Optuna's columns hold, and what `seconds` reads back.
    let micros = (seconds * 1e6).round() as i64;
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .with_timezone(&chrono::Local)
        .naive_local()
}

/// Optuna's local date-time as seconds since the Unix epoch.
pub(crate) fn seconds(time: NaiveDateTime) -> Option<f64> {
    use chrono::TimeZone;
    let local = chrono::Local.from_local_datetime(&time).earliest()?;
    Some(local.timestamp_micros() as f64 / 1e6)
}

/// Optuna's date-time text in SQLite.
pub(crate) fn datetime_text(time: NaiveDateTime) -> String {
    time.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// What Optuna has no column for, kept in [`STUDY_ATTRIBUTE`].
#[derive(serde::Serialize, serde::Deserialize)]
struct Settings {
    version: u32,
    space: crate::SearchSpace,
    sampler: crate::Sampler,
    seed: u64,
}

/// The rows of `sql` over the study `id`, keyed by their first column (a trial id).
fn by_trial(db: &mut dyn Database, sql: &str, id: i64) -> Result<Vec<(i64, Vec<Value>)>, DbError> {
    Ok(db
        .query(sql, &[id.into()])?
        .into_iter()
        .filter_map(|mut row| {
            let trial_id = row.first()?.int()?;
            row.remove(0);
            Some((trial_id, row))
        })
        .collect())
}

fn json(key: &str, text: &Value) -> Result<serde_json::Value, DbError> {
    serde_json::from_str(text.text().unwrap_or("null"))
        .map_err(|e| DbError::fatal(format!("attribute {key:?}: {e}")))
}

/// The id of the study `name`, if there is one.
pub(crate) fn study_id(db: &mut dyn Database, name: &str) -> Result<Option<i64>, DbError> {
    Ok(scalar(
        db,
        "SELECT study_id FROM studies WHERE study_name = $1",
        &[name.into()],
    )?
    .int())
}

/// Reads the study `name`: its id and record, or None if the database has none of this name.
pub(crate) fn read(
    db: &mut dyn Database,
    name: &str,
) -> Result<Option<(i64, StudyRecord)>, DbError> {
    let Some(id) = study_id(db, name)? else {
        return Ok(None);
    };
    let direction = scalar(
        db,
        "SELECT CAST(direction AS TEXT) FROM study_directions WHERE study_id = $1 AND objective = 0",
        &[id.into()],
    )?;
    let direction = match direction.text() {
        Some("MINIMIZE") => Direction::Minimize,
        Some("MAXIMIZE") => Direction::Maximize,
        other => return Err(DbError::fatal(format!("unknown direction {other:?}"))),
    };
    let mut settings = None;
    let mut system_attrs = BTreeMap::new();
    for row in db.query(
        "SELECT key, value_json FROM study_system_attributes WHERE study_id = $1",
        &[id.into()],
    )? {
        let key = row[0].text().unwrap_or_default().to_string();
        if key == STUDY_ATTRIBUTE {
            settings = row[1].text().map(str::to_string);
        } else {
            let value = json(&key, &row[1])?;
            system_attrs.insert(key, value);
        }
    }

    // The database's clock, for the heartbeats' ages.
    let clock = format!("SELECT {}", db.now());
    let now = scalar(db, &clock, &[])?.time();
    let mut trials: BTreeMap<i64, Trial> = BTreeMap::new();
    for (trial_id, row) in by_trial(
        db,
        "SELECT trial_id, number, CAST(state AS TEXT), datetime_start, datetime_complete
         FROM trials WHERE study_id = $1 ORDER BY number",
        id,
    )? {
        let number = row[0]
            .int()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                DbError::fatal(format!(
                    "trial row {trial_id} has no trial number >= 0 ({:?})",
                    row[0].int()
                ))
            })?;
        let state_text = row[1].text().unwrap_or_default();
        let state = parse_state(state_text).ok_or_else(|| {
            DbError::fatal(format!(
                "trial {number} has a state we do not know: {state_text:?}"
            ))
        })?;
        trials.insert(
            trial_id,
            Trial {
                number,
                state,
                params: BTreeMap::new(),
                internal: BTreeMap::new(),
                value: None,
                intermediate: BTreeMap::new(),
                started: row[2].time().and_then(seconds).unwrap_or(0.0),
                finished: row[3].time().and_then(seconds),
                user_attrs: BTreeMap::new(),
                system_attrs: BTreeMap::new(),
                heartbeat_age: None,
            },
        );
    }
    let mut space = crate::SearchSpace::new();
    for (trial_id, row) in by_trial(
        db,
        "SELECT p.trial_id, p.param_name, p.param_value, p.distribution_json
         FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id WHERE t.study_id = $1",
        id,
    )? {
        let name = row[0].text().unwrap_or_default().to_string();
        let internal = row[1].float().unwrap_or(f64::NAN);
        let distribution = Distribution::from_optuna_json(row[2].text().unwrap_or_default())
            .and_then(|d| d.validate(&name).map(|()| d))
            .map_err(DbError::fatal)?;
        if !distribution.holds_internal(internal) {
            return Err(DbError::fatal(format!(
                "trial row {trial_id}: parameter `{name}` holds {internal}, which its \
                 distribution {} cannot (a choice index past the choices, or not a number)",
                row[2].text().unwrap_or_default()
            )));
        }
        if let Some(trial) = trials.get_mut(&trial_id) {
            trial
                .params
                .insert(name.clone(), distribution.to_external(internal));
            trial.internal.insert(name.clone(), internal);
        }
        space.insert(name, distribution);
    }
    for (trial_id, row) in by_trial(
        db,
        "SELECT v.trial_id, v.value, CAST(v.value_type AS TEXT)
         FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id
         WHERE t.study_id = $1 AND v.objective = 0",
        id,
    )? {
        if let Some(trial) = trials.get_mut(&trial_id) {
            trial.value = Some(from_stored(&row[0], &row[1]));
        }
    }
    for (trial_id, row) in by_trial(
        db,
        "SELECT v.trial_id, v.step, v.intermediate_value, CAST(v.intermediate_value_type AS TEXT)
         FROM trial_intermediate_values v JOIN trials t ON t.trial_id = v.trial_id
         WHERE t.study_id = $1",
        id,
    )? {
        if let Some(trial) = trials.get_mut(&trial_id) {
            let step = row[0].int().unwrap_or_default() as usize;
            trial
                .intermediate
                .insert(step, from_stored(&row[1], &row[2]));
        }
    }
    for (table, user) in [
        ("trial_user_attributes", true),
        ("trial_system_attributes", false),
    ] {
        for (trial_id, row) in by_trial(
            db,
            &format!(
                "SELECT a.trial_id, a.key, a.value_json FROM {table} a
                 JOIN trials t ON t.trial_id = a.trial_id WHERE t.study_id = $1"
            ),
            id,
        )? {
            let key = row[0].text().unwrap_or_default().to_string();
            let value = json(&key, &row[1])?;
            if let Some(trial) = trials.get_mut(&trial_id) {
                let attrs = if user {
                    &mut trial.user_attrs
                } else {
                    &mut trial.system_attrs
                };
                attrs.insert(key, value);
            }
        }
    }
    for (trial_id, row) in by_trial(
        db,
        "SELECT h.trial_id, h.heartbeat FROM trial_heartbeats h
         JOIN trials t ON t.trial_id = h.trial_id WHERE t.study_id = $1",
        id,
    )? {
        if let (Some(trial), Some(now), Some(beat)) =
            (trials.get_mut(&trial_id), now, row[0].time())
        {
            trial.heartbeat_age = Some((now - beat).as_seconds_f64());
        }
    }

    // The study addresses trials by number: the numbers must be 0, 1, … without a gap or a
    // repeat (rows edited by hand, or written by something else, are refused, not misread).
    let mut trials: Vec<Trial> = trials.into_values().collect();
    trials.sort_by_key(|t| t.number);
    if let Some((i, t)) = trials.iter().enumerate().find(|(i, t)| t.number != *i) {
        return Err(DbError::fatal(format!(
            "the study's trial numbers are not 0 to {} in order: trial {} is where trial {i} \
             should be",
            trials.len() - 1,
            t.number
        )));
    }
    let record = match settings {
        Some(text) => {
            let settings: Settings = serde_json::from_str(&text)
                .map_err(|e| DbError::fatal(format!("{STUDY_ATTRIBUTE}: {e}")))?;
            for (name, distribution) in &settings.space {
                distribution
                    .validate(name)
                    .map_err(|e| DbError::fatal(format!("{STUDY_ATTRIBUTE}: {e}")))?;
            }
            StudyRecord {
                version: settings.version,
                direction,
                space: settings.space,
                sampler: settings.sampler,
                seed: settings.seed,
                foreign: false,
                system_attrs,
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
            system_attrs,
            trials,
        },
    };
    Ok(Some((id, record)))
}

/// Writes what changed between `old` (as read; None for a new study) and `new` into the study
/// `name` (id `id`, None to create it).
pub(crate) fn write(
    db: &mut dyn Database,
    name: &str,
    id: Option<i64>,
    old: Option<&StudyRecord>,
    new: &StudyRecord,
) -> Result<(), DbError> {
    let id = match id {
        Some(id) => id,
        None => {
            let id = scalar(
                db,
                "INSERT INTO studies (study_name) VALUES ($1) RETURNING study_id",
                &[name.into()],
            )?
            .int()
            .ok_or_else(|| DbError::fatal("no study id returned"))?;
            let direction = match new.direction {
                Direction::Minimize => "MINIMIZE",
                Direction::Maximize => "MAXIMIZE",
            };
            db.execute(
                "INSERT INTO study_directions (direction, study_id, objective) VALUES ($1, $2, 0)",
                &[direction.into(), id.into()],
            )?;
            id
        }
    };
    // What changed is written, and only that: a change that changed nothing writes nothing.
    let same_settings = |o: &StudyRecord| {
        (o.version, &o.space, o.sampler, o.seed, o.foreign)
            == (new.version, &new.space, new.sampler, new.seed, new.foreign)
    };
    let mut attrs: Vec<(&str, String)> = Vec::new();
    if !old.is_some_and(same_settings) {
        let text = serde_json::to_string(&Settings {
            version: new.version,
            space: new.space.clone(),
            sampler: new.sampler,
            seed: new.seed,
        })
        .map_err(DbError::fatal)?;
        attrs.push((STUDY_ATTRIBUTE, text));
    }
    for (key, value) in &new.system_attrs {
        if old.and_then(|o| o.system_attrs.get(key)) != Some(value) {
            attrs.push((key, value.to_string()));
        }
    }
    for (key, value) in attrs {
        db.execute(
            "INSERT INTO study_system_attributes (study_id, key, value_json) VALUES ($1, $2, $3)
             ON CONFLICT (study_id, key) DO UPDATE SET value_json = excluded.value_json",
            &[id.into(), key.into(), value.into()],
        )?;
    }
    // Only the trials that changed are rewritten: a study of many trials stays cheap.
    let before: BTreeMap<usize, &Trial> = old
        .map(|o| o.trials.iter().map(|t| (t.number, t)).collect())
        .unwrap_or_default();
    for trial in &new.trials {
        if before.get(&trial.number) == Some(&trial) {
            continue;
        }
        write_trial(db, id, new, trial)?;
    }
    Ok(())
}

/// Writes one trial: its row, then its parameters, value, intermediate values and attributes
/// afresh.
fn write_trial(
    db: &mut dyn Database,
    id: i64,
    study: &StudyRecord,
    trial: &Trial,
) -> Result<(), DbError> {
    let number = trial.number as i64;
    let started = Value::Time(local_time(trial.started));
    let finished = trial
        .finished
        .map_or(Value::Null, |f| Value::Time(local_time(f)));
    let state = state_name(trial.state);
    let existing = scalar(
        db,
        "SELECT trial_id FROM trials WHERE study_id = $1 AND number = $2",
        &[id.into(), number.into()],
    )?
    .int();
    let trial_id = match existing {
        Some(trial_id) => {
            db.execute(
                "UPDATE trials SET state = $1, datetime_start = $2, datetime_complete = $3
                 WHERE trial_id = $4",
                &[state.into(), started, finished, trial_id.into()],
            )?;
            for table in [
                "trial_params",
                "trial_values",
                "trial_intermediate_values",
                "trial_user_attributes",
                "trial_system_attributes",
            ] {
                db.execute(
                    &format!("DELETE FROM {table} WHERE trial_id = $1"),
                    &[trial_id.into()],
                )?;
            }
            trial_id
        }
        None => scalar(
            db,
            "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete)
             VALUES ($1, $2, $3, $4, $5) RETURNING trial_id",
            &[number.into(), id.into(), state.into(), started, finished],
        )?
        .int()
        .ok_or_else(|| DbError::fatal("no trial id returned"))?,
    };
    for (name, internal) in &trial.internal {
        let distribution = study.space.get(name).ok_or_else(|| {
            DbError::fatal(format!(
                "trial {number}: parameter {name:?} is not in the study's space"
            ))
        })?;
        db.execute(
            "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)
             VALUES ($1, $2, $3, $4)",
            &[
                trial_id.into(),
                name.as_str().into(),
                (*internal).into(),
                distribution.to_optuna_json().into(),
            ],
        )?;
    }
    if let Some(value) = trial.value {
        let (value, kind) = stored(value);
        db.execute(
            "INSERT INTO trial_values (trial_id, objective, value, value_type)
             VALUES ($1, 0, $2, $3)",
            &[trial_id.into(), value, kind.into()],
        )?;
    }
    for (table, attrs) in [
        ("trial_user_attributes", &trial.user_attrs),
        ("trial_system_attributes", &trial.system_attrs),
    ] {
        for (key, value) in attrs {
            db.execute(
                &format!("INSERT INTO {table} (trial_id, key, value_json) VALUES ($1, $2, $3)"),
                &[
                    trial_id.into(),
                    key.as_str().into(),
                    value.to_string().into(),
                ],
            )?;
        }
    }
    for (step, value) in &trial.intermediate {
        let (value, kind) = stored(*value);
        db.execute(
            "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value,
             intermediate_value_type) VALUES ($1, $2, $3, $4)",
            &[trial_id.into(), (*step as i64).into(), value, kind.into()],
        )?;
    }
    Ok(())
}

/// Records that the worker running trial `number` of the study `name` is alive, by the
/// database's clock (Optuna's `record_heartbeat`).
pub(crate) fn heartbeat(db: &mut dyn Database, name: &str, number: usize) -> Result<(), DbError> {
    let Some(id) = study_id(db, name)? else {
        return Err(DbError::fatal("the study disappeared"));
    };
    let Some(trial_id) = scalar(
        db,
        "SELECT trial_id FROM trials WHERE study_id = $1 AND number = $2",
        &[id.into(), (number as i64).into()],
    )?
    .int() else {
        return Err(DbError::fatal(format!("no trial {number}")));
    };
    let now = db.now();
    db.execute(
        &format!(
            "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES ($1, {now})
             ON CONFLICT (trial_id) DO UPDATE SET heartbeat = excluded.heartbeat"
        ),
        &[trial_id.into()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A time in whole microseconds survives Optuna's date-time text exactly.
    #[test]
    fn times_read_back_to_the_microsecond() {
        for micros in (0..2000u64).map(|i| 1_796_314_538_000_000 + i * 7_919) {
            let t = micros as f64 / 1e6;
            let text = Value::Text(datetime_text(local_time(t)));
            assert_eq!(text.time().and_then(seconds), Some(t), "{text:?}");
        }
    }
}
