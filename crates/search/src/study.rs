//! Studies: trials with their state, parameters, values and intermediate values, kept in a
//! JSON file that several processes can share (an exclusive lock around every change), so an
//! interrupted study resumes where it stopped and workers never get the same trial number.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::SearchError;
use crate::sampler::{Params, RandomSampler, Sampler, TpeSampler};
use crate::space::SearchSpace;
use crate::sqlite::{SqliteStorage, is_sqlite_path};

/// The study name that [`Study::open`] uses in an SQLite file.
pub const DEFAULT_STUDY_NAME: &str = "default";

/// Version of the study file.
pub const STUDY_VERSION: u32 = 1;

/// Whether smaller or larger objective values are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Smaller is better.
    Minimize,
    /// Larger is better.
    Maximize,
}

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialState {
    /// Asked, not told yet.
    Running,
    /// Finished with a value.
    Complete,
    /// Stopped early by the pruner.
    Pruned,
    /// The objective failed.
    Fail,
}

/// One trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// 0-based number, unique in the study.
    pub number: usize,
    /// State.
    pub state: TrialState,
    /// Parameters as the objective sees them.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Internal values (choice index for categorical) the sampler learns from.
    pub internal: BTreeMap<String, f64>,
    /// Objective value of a complete trial.
    pub value: Option<f64>,
    /// Intermediate values by step (epoch), for pruning and learning curves.
    pub intermediate: BTreeMap<usize, f64>,
    /// Start time, seconds since the Unix epoch.
    pub started: f64,
    /// End time, seconds since the Unix epoch.
    pub finished: Option<f64>,
    /// What the objective recorded beside its value (Optuna's user attributes: the run folder
    /// of a pipeline trial, say), shown by Optuna's tools.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_attrs: BTreeMap<String, serde_json::Value>,
}

impl Trial {
    /// Wall time of a finished trial.
    pub fn duration(&self) -> Option<f64> {
        self.finished.map(|f| f - self.started)
    }
}

/// The persistent part of a study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyRecord {
    /// [`STUDY_VERSION`].
    pub version: u32,
    /// Optimisation direction.
    pub direction: Direction,
    /// The search space (every trial is sampled in it).
    pub space: SearchSpace,
    /// The sampler and its settings.
    pub sampler: Sampler,
    /// Seed of every draw.
    pub seed: u64,
    /// Whether another tool (Python Optuna) created the study: its space was read from the
    /// trials' distributions, and it has no sampler or seed of ours. Opening it adopts the
    /// settings asked for, provided they fit its trials.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub foreign: bool,
    /// Trials so far.
    pub trials: Vec<Trial>,
}

/// How a trial ended, for [`Study::tell`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// A value.
    Complete(f64),
    /// Stopped by the pruner.
    Pruned,
    /// Failed.
    Fail,
}

/// A change to a stored study: given the stored record (None if there is none yet), the new
/// record and whether to write it.
pub type StudyChange<'a> =
    dyn FnMut(Option<StudyRecord>) -> Result<(StudyRecord, bool), SearchError> + 'a;

/// Where a study lives. `transact` must run the change atomically with respect to every other
/// process sharing the study, which is what lets several workers run one study.
pub trait StudyStorage: std::fmt::Debug + Send {
    /// Reads the record, applies `change`, writes the result when asked, returns it.
    fn transact(&self, change: &mut StudyChange<'_>) -> Result<StudyRecord, SearchError>;
    /// Where the study is, for messages.
    fn describe(&self) -> String;
}

/// A study in one JSON file, changed under an exclusive lock on a `.lock` sibling and replaced
/// atomically.
#[derive(Debug, Clone)]
pub struct JsonFileStorage {
    path: PathBuf,
}

impl JsonFileStorage {
    /// Storage at `path` (created on first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl StudyStorage for JsonFileStorage {
    fn transact(&self, change: &mut StudyChange<'_>) -> Result<StudyRecord, SearchError> {
        with_lock(&self.path, change)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A study, in memory or in a [`StudyStorage`].
#[derive(Debug)]
pub struct Study {
    record: StudyRecord,
    storage: Option<Box<dyn StudyStorage>>,
}

/// The time now, in whole microseconds: what Optuna's date-times hold, so a trial reads back
/// from its storage as it was written.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_micros() as f64 / 1e6)
}

impl Study {
    /// A study kept in memory.
    pub fn in_memory(
        direction: Direction,
        space: SearchSpace,
        sampler: Sampler,
        seed: u64,
    ) -> Self {
        Self {
            record: StudyRecord {
                version: STUDY_VERSION,
                direction,
                space,
                sampler,
                seed,
                foreign: false,
                trials: Vec::new(),
            },
            storage: None,
        }
    }

    /// Opens the study file at `path`, creating it if absent: SQLite for `.db`, `.sqlite` and
    /// `.sqlite3` ([`SqliteStorage`], the study named [`DEFAULT_STUDY_NAME`]), else a JSON file
    /// ([`JsonFileStorage`]). An existing study must have the same direction, space, sampler and
    /// seed: it then resumes.
    pub fn open(
        path: &Path,
        direction: Direction,
        space: SearchSpace,
        sampler: Sampler,
        seed: u64,
    ) -> Result<Self, SearchError> {
        Self::with_storage(
            file_storage(path, DEFAULT_STUDY_NAME),
            direction,
            space,
            sampler,
            seed,
        )
    }

    /// The study at `path` as stored, whatever it was created with; None when there is none.
    /// Nothing is created or changed.
    pub fn read(path: &Path) -> Result<Option<StudyRecord>, SearchError> {
        if !path.exists() {
            return Ok(None);
        }
        let storage = file_storage(path, DEFAULT_STUDY_NAME);
        let mut found = true;
        let record = storage.transact(&mut |stored| match stored {
            Some(stored) => Ok((stored, false)),
            None => {
                found = false;
                Err(SearchError::Mismatch("no study".into()))
            }
        });
        match record {
            Ok(record) => Ok(Some(record)),
            Err(_) if !found => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens (or creates) the study kept in `storage`.
    pub fn with_storage(
        storage: Box<dyn StudyStorage>,
        direction: Direction,
        space: SearchSpace,
        sampler: Sampler,
        seed: u64,
    ) -> Result<Self, SearchError> {
        let fresh = StudyRecord {
            version: STUDY_VERSION,
            direction,
            space,
            sampler,
            seed,
            foreign: false,
            trials: Vec::new(),
        };
        let place = storage.describe();
        let record = storage.transact(&mut |stored| match stored {
            None => Ok((fresh.clone(), true)),
            // Written by Optuna: continued in the space asked for, if its trials fit it.
            Some(stored) if stored.foreign => {
                if stored.direction != fresh.direction {
                    return Err(SearchError::Mismatch(format!(
                        "{place}: the study {}s, this run asks to {}",
                        direction_verb(stored.direction),
                        direction_verb(fresh.direction)
                    )));
                }
                for (name, distribution) in &stored.space {
                    if fresh.space.get(name) != Some(distribution) {
                        return Err(SearchError::Mismatch(format!(
                            "{place}: the study's trials have {name} in {}; this run asks \
                             for {}",
                            distribution.to_optuna_json(),
                            fresh
                                .space
                                .get(name)
                                .map_or_else(|| "no such parameter".into(), |d| d.to_optuna_json())
                        )));
                    }
                }
                Ok((
                    StudyRecord {
                        trials: stored.trials,
                        ..fresh.clone()
                    },
                    true,
                ))
            }
            Some(stored) => {
                if (stored.direction, &stored.space, stored.sampler, stored.seed)
                    != (fresh.direction, &fresh.space, fresh.sampler, fresh.seed)
                {
                    return Err(SearchError::Mismatch(format!(
                        "{place}: the study was created with another direction, space, sampler \
                         or seed"
                    )));
                }
                Ok((stored, false))
            }
        })?;
        Ok(Self {
            record,
            storage: Some(storage),
        })
    }

    /// The study's data.
    pub fn record(&self) -> &StudyRecord {
        &self.record
    }

    /// All trials.
    pub fn trials(&self) -> &[Trial] {
        &self.record.trials
    }

    /// Re-reads the shared storage (other workers' trials).
    pub fn refresh(&mut self) -> Result<(), SearchError> {
        if self.storage.is_some() {
            self.apply(|_| Ok(()))?;
        }
        Ok(())
    }

    /// Runs `change` on the current record: in the storage's transaction when there is one.
    fn apply<T>(
        &mut self,
        change: impl FnOnce(&mut StudyRecord) -> Result<T, SearchError>,
    ) -> Result<T, SearchError> {
        let Some(storage) = &self.storage else {
            return change(&mut self.record);
        };
        let place = storage.describe();
        let mut change = Some(change);
        let mut result = None;
        let record = storage.transact(&mut |stored| {
            let mut record = stored
                .ok_or_else(|| SearchError::Storage(format!("{place}: the study disappeared")))?;
            let change = change.take().expect("a transaction runs its change once");
            result = Some(change(&mut record)?);
            Ok((record, true))
        })?;
        self.record = record;
        Ok(result.expect("set by the change"))
    }

    /// Starts a new trial: samples its parameters and marks it running.
    pub fn ask(&mut self) -> Result<Trial, SearchError> {
        let ask = |record: &mut StudyRecord| {
            let number = record.trials.len();
            let internal: Params = match record.sampler {
                Sampler::Random => RandomSampler::sample(&record.space, record.seed, number),
                Sampler::Tpe(config) => TpeSampler { config }.sample(
                    &record.space,
                    &record.trials,
                    record.direction,
                    record.seed,
                    number,
                ),
            };
            let params = internal
                .iter()
                .map(|(n, &v)| (n.clone(), record.space[n].to_external(v)))
                .collect();
            let trial = Trial {
                number,
                state: TrialState::Running,
                params,
                internal,
                value: None,
                intermediate: BTreeMap::new(),
                started: now(),
                finished: None,
                user_attrs: BTreeMap::new(),
            };
            record.trials.push(trial.clone());
            Ok(trial)
        };
        self.apply(ask)
    }

    /// Records a user attribute of a trial (Optuna's `trial.set_user_attr`).
    pub fn set_user_attr(
        &mut self,
        number: usize,
        key: &str,
        value: serde_json::Value,
    ) -> Result<(), SearchError> {
        self.modify(number, |t| {
            t.user_attrs.insert(key.to_string(), value);
            Ok(())
        })
    }

    /// Records an intermediate value (for example the validation F1 after an epoch).
    pub fn report(&mut self, number: usize, step: usize, value: f64) -> Result<(), SearchError> {
        self.modify(number, |t| {
            t.intermediate.insert(step, value);
            Ok(())
        })
    }

    /// Finishes a trial.
    pub fn tell(&mut self, number: usize, outcome: Outcome) -> Result<(), SearchError> {
        self.modify(number, |t| {
            if t.state != TrialState::Running {
                return Err(SearchError::Mismatch(format!(
                    "trial {number} is already {:?}",
                    t.state
                )));
            }
            match outcome {
                Outcome::Complete(v) if !v.is_finite() => {
                    return Err(SearchError::Mismatch(format!(
                        "trial {number}: the value {v} is not a finite number"
                    )));
                }
                Outcome::Complete(v) => {
                    t.state = TrialState::Complete;
                    t.value = Some(v);
                }
                Outcome::Pruned => t.state = TrialState::Pruned,
                Outcome::Fail => t.state = TrialState::Fail,
            }
            t.finished = Some(now());
            Ok(())
        })
    }

    fn modify(
        &mut self,
        number: usize,
        change: impl FnOnce(&mut Trial) -> Result<(), SearchError>,
    ) -> Result<(), SearchError> {
        let apply = |record: &mut StudyRecord| {
            let trial = record
                .trials
                .get_mut(number)
                .ok_or(SearchError::UnknownTrial(number))?;
            change(trial)
        };
        self.apply(apply)
    }

    /// The best complete trial (the earliest on ties).
    pub fn best_trial(&self) -> Option<&Trial> {
        let better = |a: f64, b: f64| match self.record.direction {
            Direction::Minimize => a < b,
            Direction::Maximize => a > b,
        };
        let mut best: Option<&Trial> = None;
        for t in &self.record.trials {
            if let (TrialState::Complete, Some(v)) = (t.state, t.value)
                && best.is_none_or(|b| better(v, b.value.expect("complete")))
            {
                best = Some(t);
            }
        }
        best
    }

    /// Whether the median rule prunes a trial at `step`: its value is worse than the median of
    /// the other trials' values at that step (Optuna's `MedianPruner`, with `n_startup_trials`
    /// complete trials required first and `n_warmup_steps` steps never pruned).
    pub fn median_prunes(
        &self,
        number: usize,
        step: usize,
        n_startup_trials: usize,
        n_warmup_steps: usize,
    ) -> bool {
        if step < n_warmup_steps {
            return false;
        }
        let Some(value) = self
            .record
            .trials
            .get(number)
            .and_then(|t| t.intermediate.get(&step))
        else {
            return false;
        };
        let completed: Vec<&Trial> = self
            .record
            .trials
            .iter()
            .filter(|t| t.state == TrialState::Complete && t.number != number)
            .collect();
        if completed.len() < n_startup_trials.max(1) {
            return false;
        }
        let mut others: Vec<f64> = self
            .record
            .trials
            .iter()
            .filter(|t| t.number != number && t.state != TrialState::Fail)
            .filter_map(|t| t.intermediate.get(&step).copied())
            .filter(|v| v.is_finite())
            .collect();
        if others.is_empty() {
            return false;
        }
        others.sort_by(f64::total_cmp);
        let mid = others.len() / 2;
        let median = if others.len().is_multiple_of(2) {
            (others[mid - 1] + others[mid]) / 2.0
        } else {
            others[mid]
        };
        match self.record.direction {
            Direction::Minimize => *value > median,
            Direction::Maximize => *value < median,
        }
    }

    /// The trials as CSV, like Optuna's `trials_dataframe()`: number, value, state, start,
    /// end, duration, then one `params_<name>` column per parameter.
    pub fn trials_csv(&self) -> String {
        let names: Vec<&String> = self.record.space.keys().collect();
        // csv::Writer quotes what needs quoting: a categorical choice may hold a comma.
        let mut csv = csv::Writer::from_writer(Vec::new());
        let mut header: Vec<String> = [
            "number",
            "value",
            "state",
            "datetime_start",
            "datetime_complete",
            "duration",
        ]
        .map(String::from)
        .to_vec();
        header.extend(names.iter().map(|n| format!("params_{n}")));
        csv.write_record(&header).expect("writing to memory");
        for t in &self.record.trials {
            let state = serde_json::to_value(t.state).expect("state serialises");
            let mut row = vec![
                t.number.to_string(),
                t.value.map(|v| v.to_string()).unwrap_or_default(),
                state.as_str().unwrap_or_default().to_string(),
                iso8601(t.started),
                t.finished.map(iso8601).unwrap_or_default(),
                t.duration().map(|d| format!("{d:.3}")).unwrap_or_default(),
            ];
            for n in &names {
                row.push(match t.params.get(*n) {
                    Some(serde_json::Value::String(text)) => text.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                });
            }
            csv.write_record(&row).expect("writing to memory");
        }
        String::from_utf8(csv.into_inner().expect("writing to memory"))
            .expect("the fields are UTF-8")
    }
}

/// Unix seconds as ISO 8601 in the local zone, to the millisecond (`2026-11-29T15:44:03.123+01:00`).
fn iso8601(seconds: f64) -> String {
    chrono::DateTime::from_timestamp_millis((seconds * 1000.0).round() as i64)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
        })
        .unwrap_or_default()
}

/// Runs `change` on the stored record (None when the file does not exist yet) under an
/// exclusive lock, and writes the result back atomically when it asks to.
fn with_lock(path: &Path, change: &mut StudyChange<'_>) -> Result<StudyRecord, SearchError> {
    let storage = |e: std::io::Error| SearchError::Storage(format!("{}: {e}", path.display()));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(storage)?;
    }
    let lock_path = path.with_extension("lock");
    let lock: File = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(storage)?;
    lock.lock().map_err(storage)?;
    let stored = match std::fs::read_to_string(path) {
        Ok(text) => {
            let record: StudyRecord = serde_json::from_str(&text).map_err(|e| {
                SearchError::Storage(format!("{}: not a study file: {e}", path.display()))
            })?;
            if record.version != STUDY_VERSION {
                return Err(SearchError::Storage(format!(
                    "{}: study version {} (expected {STUDY_VERSION})",
                    path.display(),
                    record.version
                )));
            }
            Some(record)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(storage(e)),
    };
    let (record, write) = change(stored)?;
    if write {
        let temp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&record).expect("study serialises");
        std::fs::write(&temp, text)
            .and_then(|()| std::fs::rename(&temp, path))
            .map_err(storage)?;
    }
    lock.unlock().map_err(storage)?;
    Ok(record)
}

/// "minimize" or "maximize".
fn direction_verb(direction: Direction) -> &'static str {
    match direction {
        Direction::Minimize => "minimize",
        Direction::Maximize => "maximize",
    }
}

/// The storage of a study file: SQLite for `.db` / `.sqlite` / `.sqlite3` (the study `name` in
/// it), else a JSON file (one study).
fn file_storage(path: &Path, name: &str) -> Box<dyn StudyStorage> {
    if is_sqlite_path(path) {
        Box::new(SqliteStorage::new(path, name))
    } else {
        Box::new(JsonFileStorage::new(path))
    }
}

/// The study `name` in a storage given as Optuna names it: `sqlite:///PATH` (a relative
/// path; `sqlite:////abs/path` for an absolute one), or a bare file path (SQLite by its
/// extension, else JSON, which holds one study).
pub fn storage(url: &str, name: &str) -> Result<Box<dyn StudyStorage>, SearchError> {
    if let Some(path) = url.strip_prefix("sqlite:///") {
        return Ok(Box::new(SqliteStorage::new(path, name)));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        let detail = if scheme.starts_with("postgres") {
            "PostgreSQL storages are not supported by this version yet; share a study through an \
             SQLite file (sqlite:///PATH) on one machine"
        } else {
            "the storages are sqlite:///PATH or a file path"
        };
        return Err(SearchError::Storage(format!(
            "storage {url:?}: unknown scheme {scheme}://: {detail}"
        )));
    }
    let path = Path::new(url);
    if !is_sqlite_path(path) && name != DEFAULT_STUDY_NAME {
        return Err(SearchError::Storage(format!(
            "{url}: a JSON study file holds one study; --study-name {name:?} needs an SQLite \
             storage (.db, or sqlite:///PATH)"
        )));
    }
    Ok(file_storage(path, name))
}
