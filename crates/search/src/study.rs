//! Studies: trials with their state, parameters, values and intermediate values, kept in
//! Optuna's RDB schema (an SQLite file or a PostgreSQL database) that several processes on
//! several machines share, each change in one transaction, so an interrupted study resumes
//! where it stopped, workers never get the same trial number, and a dead worker's trial is
//! failed and run again (Optuna's heartbeats and `RetryHeartbeatStaleTrialCallback`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::SearchError;
use crate::sampler::{Params, RandomSampler, TpeSampler};
use crate::space::SearchSpace;
use crate::storage::{SqliteStorage, StudyStorage};
use crate::trial::{
    DEFAULT_STUDY_NAME, Direction, FAILED_TRIAL_ATTRIBUTE, Outcome, STUDY_VERSION, Sampler,
    StudyRecord, Trial, TrialState, WORKER_ATTRIBUTE,
};

/// A study, in memory or in a [`StudyStorage`].
#[derive(Debug)]
pub struct Study {
    record: StudyRecord,
    storage: Option<Arc<dyn StudyStorage>>,
}

/// The trial system attribute holding the request that started a trial: a retried
/// transaction (the connection lost at COMMIT, which may have committed) finds the trial its
/// first attempt started instead of starting a second one.
const REQUEST_ATTRIBUTE: &str = "sentiment:request";

/// A fresh request token: random, so no two requests of any worker share one.
fn request_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The trial that the request `token` started, if one did.
fn started_by(record: &StudyRecord, token: &str) -> Option<Trial> {
    record
        .trials
        .iter()
        .find(|t| {
            t.system_attrs
                .get(REQUEST_ATTRIBUTE)
                .and_then(|v| v.as_str())
                == Some(token)
        })
        .cloned()
}

/// Records the request `token` in the trial it started, in the record and the trial returned.
fn mark_request(record: &mut StudyRecord, mut trial: Trial, token: &str) -> Trial {
    trial
        .system_attrs
        .insert(REQUEST_ATTRIBUTE.into(), token.into());
    record.trials[trial.number].system_attrs = trial.system_attrs.clone();
    trial
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
                system_attrs: BTreeMap::new(),
                trials: Vec::new(),
            },
            storage: None,
        }
    }

    /// Opens the study named [`DEFAULT_STUDY_NAME`] in the SQLite file at `path`, creating
    /// it if absent ([`Study::with_storage`]).
    pub fn open(
        path: &Path,
        direction: Direction,
        space: SearchSpace,
        sampler: Sampler,
        seed: u64,
    ) -> Result<Self, SearchError> {
        Self::with_storage(
            Box::new(SqliteStorage::new(path, DEFAULT_STUDY_NAME)),
            direction,
            space,
            sampler,
            seed,
        )
    }

    /// The study in `storage` as stored, whatever it was created with; None when there is
    /// none. No study is created or changed (a new SQLite file or an empty database gets
    /// Optuna's empty schema).
    pub fn read(storage: &dyn StudyStorage) -> Result<Option<StudyRecord>, SearchError> {
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

    /// Opens (or creates) the study kept in `storage`. An existing study must have the same
    /// direction, space, sampler and seed (the refusal says which differ); one that Python
    /// Optuna created is continued in the space asked for, if its trials fit it.
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
            system_attrs: BTreeMap::new(),
            trials: Vec::new(),
        };
        let place = storage.describe();
        let record = storage.transact(&mut |stored| match stored {
            None => Ok((fresh.clone(), true)),
            // Written by Optuna: continued in the space asked for, if its trials fit it.
            Some(stored) if stored.foreign => {
                let differences = differences(&stored, &fresh, true);
                if !differences.is_empty() {
                    return Err(SearchError::Mismatch(format!(
                        "{place}: {}",
                        differences.join("; ")
                    )));
                }
                Ok((
                    StudyRecord {
                        trials: stored.trials,
                        system_attrs: stored.system_attrs,
                        ..fresh.clone()
                    },
                    true,
                ))
            }
            Some(stored) => {
                let differences = differences(&stored, &fresh, false);
                if !differences.is_empty() {
                    return Err(SearchError::Mismatch(format!(
                        "{place}: {}",
                        differences.join("; ")
                    )));
                }
                Ok((stored, false))
            }
        })?;
        Ok(Self {
            record,
            storage: Some(Arc::from(storage)),
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

    /// Where the study is, for messages.
    pub fn describe(&self) -> String {
        self.storage
            .as_ref()
            .map_or_else(|| "(in memory)".into(), |s| s.describe())
    }

    /// Re-reads the shared storage (other workers' trials).
    pub fn refresh(&mut self) -> Result<(), SearchError> {
        if self.storage.is_some() {
            self.update(|_| Ok(()))?;
        }
        Ok(())
    }

    /// Runs `change` on the current record, in the storage's transaction when there is one
    /// (where it may run more than once, each time on the record as stored), and keeps the
    /// result.
    pub fn update<T>(
        &mut self,
        mut change: impl FnMut(&mut StudyRecord) -> Result<T, SearchError>,
    ) -> Result<T, SearchError> {
        let Some(storage) = &self.storage else {
            return change(&mut self.record);
        };
        let place = storage.describe();
        let mut result = None;
        let record = storage.transact(&mut |stored| {
            let mut record = stored
                .ok_or_else(|| SearchError::Storage(format!("{place}: the study disappeared")))?;
            result = Some(change(&mut record)?);
            // The storage writes what differs from what it read.
            Ok((record, true))
        })?;
        self.record = record;
        Ok(result.expect("set by the change"))
    }

    /// Starts a trial: the first waiting one (a retry, or one Optuna enqueued), with its
    /// parameters, else a new one, sampled; either way marked running.
    pub fn ask(&mut self) -> Result<Trial, SearchError> {
        let request = request_token();
        self.update(|record| {
            if let Some(started) = started_by(record, &request) {
                return Ok(started);
            }
            let (trial, _) = start_trial(record)?;
            Ok(mark_request(record, trial, &request))
        })
    }

    /// Starts a trial while the study holds fewer than `total` trials that are finished with
    /// a result (complete or pruned) or under way (running or waiting): Optuna's
    /// `MaxTrialsCallback`, counted in the transaction that creates the trial, so workers
    /// sharing the study never overshoot. A waiting trial is always taken. None when the study
    /// has its count. With `worker`, the trial's [`WORKER_ATTRIBUTE`] is set in that same
    /// transaction: another worker never sees the trial running without its worker (in the
    /// pipeline's own study such a trial counts as left by a dead process, and is failed).
    pub fn ask_within(
        &mut self,
        total: usize,
        worker: Option<&str>,
    ) -> Result<Option<Trial>, SearchError> {
        let request = request_token();
        self.update(|record| {
            if let Some(started) = started_by(record, &request) {
                return Ok(Some(started));
            }
            let counted = record
                .trials
                .iter()
                .filter(|t| t.state != TrialState::Fail)
                .count();
            let waiting = record.trials.iter().any(|t| t.state == TrialState::Waiting);
            if !waiting && counted >= total {
                return Ok(None);
            }
            let (mut trial, _) = start_trial(record)?;
            if let Some(worker) = worker {
                trial
                    .system_attrs
                    .insert(WORKER_ATTRIBUTE.into(), worker.into());
                record.trials[trial.number].system_attrs = trial.system_attrs.clone();
            }
            Ok(Some(mark_request(record, trial, &request)))
        })
    }

    /// Fails the running trials that `dead` says are dead (a stale heartbeat, say; see
    /// [`Trial::heartbeat_age`]), and, with `retry`, queues each again with its parameters and
    /// user attributes, as Optuna's `RetryHeartbeatStaleTrialCallback` does (`failed_trial`
    /// and `retry_history` in the new trial's system attributes). Returns each failed trial's
    /// number with its retry's.
    pub fn fail_stale(
        &mut self,
        dead: impl Fn(&Trial) -> bool,
        retry: bool,
    ) -> Result<Vec<(usize, Option<usize>)>, SearchError> {
        self.update(|record| {
            let stale: Vec<usize> = record
                .trials
                .iter()
                .filter(|t| t.state == TrialState::Running && dead(t))
                .map(|t| t.number)
                .collect();
            let mut failed = Vec::new();
            for number in stale {
                let trial = &mut record.trials[number];
                trial.state = TrialState::Fail;
                trial.finished = Some(now());
                let original = trial.clone();
                let retried = retry.then(|| {
                    let mut system_attrs = original.system_attrs.clone();
                    system_attrs.remove(WORKER_ATTRIBUTE);
                    system_attrs.remove(REQUEST_ATTRIBUTE);
                    system_attrs
                        .entry(FAILED_TRIAL_ATTRIBUTE.into())
                        .or_insert(number.into());
                    let mut history = system_attrs
                        .get("retry_history")
                        .and_then(|h| h.as_array().cloned())
                        .unwrap_or_default();
                    history.push(number.into());
                    system_attrs.insert("retry_history".into(), history.into());
                    let retry_number = record.trials.len();
                    record.trials.push(Trial {
                        number: retry_number,
                        state: TrialState::Waiting,
                        value: None,
                        intermediate: BTreeMap::new(),
                        started: now(),
                        finished: None,
                        system_attrs,
                        heartbeat_age: None,
                        ..original
                    });
                    retry_number
                });
                failed.push((number, retried));
            }
            Ok(failed)
        })
    }

    /// Records that the worker running trial `number` is alive.
    pub fn heartbeat(&self, number: usize) -> Result<(), SearchError> {
        match &self.storage {
            Some(storage) => storage.heartbeat(number),
            None => Ok(()),
        }
    }

    /// Records a heartbeat of trial `number` now and then every `interval` on a thread of its
    /// own, until the returned guard is dropped (Optuna's heartbeat thread). A failed beat is
    /// passed to `on_error` and the beats go on.
    pub fn heartbeats(
        &self,
        number: usize,
        interval: Duration,
        on_error: impl Fn(SearchError) + Send + 'static,
    ) -> Heartbeats {
        let Some(storage) = self.storage.clone() else {
            return Heartbeats { stop: None };
        };
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            loop {
                if let Err(e) = storage.heartbeat(number) {
                    on_error(e);
                }
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    _ => return,
                }
            }
        });
        Heartbeats {
            stop: Some((stop, thread)),
        }
    }

    /// Records a user attribute of a trial (Optuna's `trial.set_user_attr`).
    pub fn set_user_attr(
        &mut self,
        number: usize,
        key: &str,
        value: serde_json::Value,
    ) -> Result<(), SearchError> {
        self.set_attr(number, key, value, |t| &mut t.user_attrs)
    }

    /// Records a system attribute of a trial (Optuna's `set_trial_system_attr`).
    pub fn set_system_attr(
        &mut self,
        number: usize,
        key: &str,
        value: serde_json::Value,
    ) -> Result<(), SearchError> {
        self.set_attr(number, key, value, |t| &mut t.system_attrs)
    }

    fn set_attr(
        &mut self,
        number: usize,
        key: &str,
        value: serde_json::Value,
        attrs: fn(&mut Trial) -> &mut BTreeMap<String, serde_json::Value>,
    ) -> Result<(), SearchError> {
        self.modify(number, |t| {
            attrs(t).insert(key.to_string(), value.clone());
            Ok(())
        })
    }

    /// Records an intermediate value (for example the validation F1 after an epoch).
    pub fn report(&mut self, number: usize, step: usize, value: f64) -> Result<(), SearchError> {
        self.modify(number, |t| {
            // As Optuna: a finished trial (failed by another worker, say) takes no value.
            if t.state != TrialState::Running {
                return Err(SearchError::Finished {
                    number,
                    state: t.state,
                });
            }
            t.intermediate.insert(step, value);
            Ok(())
        })
    }

    /// Finishes a trial.
    pub fn tell(&mut self, number: usize, outcome: Outcome) -> Result<(), SearchError> {
        self.modify(number, |t| {
            // A retried transaction whose first attempt committed (the connection was lost at
            // COMMIT) finds the trial as it left it: done, not refused.
            let already = match outcome {
                Outcome::Complete(v) => t.state == TrialState::Complete && t.value == Some(v),
                Outcome::Pruned => t.state == TrialState::Pruned,
                Outcome::Fail => t.state == TrialState::Fail,
            };
            if already && t.finished.is_some() {
                return Ok(());
            }
            if t.state != TrialState::Running {
                return Err(SearchError::Finished {
                    number,
                    state: t.state,
                });
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
        mut change: impl FnMut(&mut Trial) -> Result<(), SearchError>,
    ) -> Result<(), SearchError> {
        self.update(|record| {
            let trial = record
                .trials
                .get_mut(number)
                .ok_or(SearchError::UnknownTrial(number))?;
            change(trial)
        })
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

/// Starts the first waiting trial, or a new one: its parameters are the waiting trial's own
/// and its `fixed_params` (Optuna's enqueued parameters), the rest sampled. Returns the trial
/// and whether it was waiting.
fn start_trial(record: &mut StudyRecord) -> Result<(Trial, bool), SearchError> {
    let waiting = record
        .trials
        .iter()
        .position(|t| t.state == TrialState::Waiting);
    let number = waiting.unwrap_or(record.trials.len());
    let mut internal: Params = match record.sampler {
        Sampler::Random => RandomSampler::sample(&record.space, record.seed, number),
        Sampler::Tpe(config) => TpeSampler { config }.sample(
            &record.space,
            &record.trials,
            record.direction,
            record.seed,
            number,
        ),
    };
    let mut trial = match waiting {
        Some(index) => record.trials[index].clone(),
        None => Trial {
            number,
            state: TrialState::Running,
            params: BTreeMap::new(),
            internal: BTreeMap::new(),
            value: None,
            intermediate: BTreeMap::new(),
            started: 0.0,
            finished: None,
            user_attrs: BTreeMap::new(),
            system_attrs: BTreeMap::new(),
            heartbeat_age: None,
        },
    };
    internal.extend(trial.internal.iter().map(|(n, v)| (n.clone(), *v)));
    if let Some(fixed) = trial
        .system_attrs
        .get("fixed_params")
        .and_then(|f| f.as_object())
    {
        for (name, external) in fixed {
            let value = record
                .space
                .get(name)
                .and_then(|d| d.to_internal(external))
                .ok_or_else(|| {
                    SearchError::Mismatch(format!(
                        "trial {number} was enqueued with {name} = {external}, which is not in \
                         the study's space"
                    ))
                })?;
            internal.insert(name.clone(), value);
        }
    }
    trial.params = internal
        .iter()
        .map(|(n, &v)| (n.clone(), record.space[n].to_external(v)))
        .collect();
    trial.internal = internal;
    trial.state = TrialState::Running;
    trial.started = now();
    match waiting {
        Some(index) => record.trials[index] = trial.clone(),
        None => record.trials.push(trial.clone()),
    }
    Ok((trial, waiting.is_some()))
}

/// What differs between a stored study and the one asked for, in words: direction, each
/// parameter's distribution, and (unless the stored study is `foreign`, which has none of
/// ours) sampler and seed.
fn differences(stored: &StudyRecord, asked: &StudyRecord, foreign: bool) -> Vec<String> {
    let mut out = Vec::new();
    if stored.direction != asked.direction {
        out.push(format!(
            "the study {}s, this run asks to {}",
            direction_verb(stored.direction),
            direction_verb(asked.direction)
        ));
    }
    let shown = |d: Option<&crate::Distribution>| d.map_or_else(|| "nothing".into(), describe);
    let names: std::collections::BTreeSet<&String> =
        stored.space.keys().chain(asked.space.keys()).collect();
    for name in names {
        let (was, now) = (stored.space.get(name), asked.space.get(name));
        // A study Optuna made knows only the parameters its trials have: the run may add more.
        if was != now && !(foreign && was.is_none()) {
            out.push(format!(
                "the study was created with {name} in {}; this run asks for {}",
                shown(was),
                shown(now)
            ));
        }
    }
    if !foreign {
        if stored.sampler != asked.sampler {
            out.push(format!(
                "the study was created with the sampler {}; this run asks for {}",
                serde_json::to_string(&stored.sampler).expect("serialisable"),
                serde_json::to_string(&asked.sampler).expect("serialisable")
            ));
        }
        if stored.seed != asked.seed {
            out.push(format!(
                "the study was created with seed {}; this run asks for {}",
                stored.seed, asked.seed
            ));
        }
    }
    out
}

/// A distribution as a reader writes it: `{16, 32}`, `[1e-05, 5e-05] (log)`.
fn describe(distribution: &crate::Distribution) -> String {
    use crate::Distribution::*;
    let scale = |log: bool, step: Option<String>| match (log, step) {
        (true, _) => " (log)".to_string(),
        (false, Some(step)) => format!(" step {step}"),
        (false, None) => String::new(),
    };
    match distribution {
        Float {
            low,
            high,
            log,
            step,
        } => format!(
            "[{low:e}, {high:e}]{}",
            scale(*log, step.map(|s| format!("{s:e}")))
        ),
        Int {
            low,
            high,
            log,
            step,
        } => format!(
            "[{low}, {high}]{}",
            scale(*log, step.filter(|&s| s != 1).map(|s| s.to_string()))
        ),
        Categorical { choices } => format!(
            "{{{}}}",
            choices
                .iter()
                .map(|c| match c {
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The heartbeat thread of one trial ([`Study::heartbeats`]): stopped and joined when dropped.
#[derive(Debug)]
pub struct Heartbeats {
    stop: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.stop.take() {
            stop.send(()).ok();
            drop(thread.join());
        }
    }
}

/// "minimize" or "maximize".
fn direction_verb(direction: Direction) -> &'static str {
    match direction {
        Direction::Minimize => "minimize",
        Direction::Maximize => "maximize",
    }
}
