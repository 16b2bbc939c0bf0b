//! What a study is made of, shared by the study's logic ([`crate::Study`]), the samplers and
//! the storages: trials with their state, parameters and values, the study's persistent
//! record, and what an objective reports. (Optuna's `trial/` and `study/_study_direction.py`.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::SearchError;
use crate::space::SearchSpace;

/// The study name used when none is given (Optuna's tools need one to open a study).
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
    /// Queued with its parameters (a retry of a failed trial, Optuna's `enqueue_trial`): the
    /// next ask takes it.
    Waiting,
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
    /// Optuna's trial system attributes: `failed_trial` and `retry_history` of a retry,
    /// `fixed_params` of an enqueued trial, [`WORKER_ATTRIBUTE`] of the worker running it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub system_attrs: BTreeMap<String, serde_json::Value>,
    /// Seconds since the trial's last heartbeat, by the storage's clock, when the study was
    /// read; None when it has none (a worker without heartbeats, or a finished trial).
    #[serde(default, skip)]
    pub heartbeat_age: Option<f64>,
}

/// Optuna's trial system attribute naming the trial a retry was queued for.
pub(crate) const FAILED_TRIAL_ATTRIBUTE: &str = "failed_trial";

/// The trial system attribute naming the worker that runs a trial (`host:pid`, and the device
/// when a process runs several).
pub const WORKER_ATTRIBUTE: &str = "sentiment:worker";

impl Trial {
    /// Wall time of a finished trial.
    pub fn duration(&self) -> Option<f64> {
        self.finished.map(|f| f - self.started)
    }

    /// The worker that ran (or runs) the trial, if it recorded itself.
    pub fn worker(&self) -> Option<&str> {
        self.system_attrs.get(WORKER_ATTRIBUTE)?.as_str()
    }

    /// The trial a retry was queued for (the first of a chain of retries), as Optuna's
    /// `RetryHeartbeatStaleTrialCallback.retried_trial_number`; None for any other trial.
    pub fn retried_from(&self) -> Option<usize> {
        let number = self.system_attrs.get(FAILED_TRIAL_ATTRIBUTE)?.as_u64()?;
        usize::try_from(number).ok()
    }

    /// Whether the trial is finished (complete, pruned or failed).
    pub fn is_finished(&self) -> bool {
        matches!(
            self.state,
            TrialState::Complete | TrialState::Pruned | TrialState::Fail
        )
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
    /// Optuna's study system attributes, but for the one that holds the fields above: what
    /// the programs that run the study record in it (the pipeline's settings, say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub system_attrs: BTreeMap<String, serde_json::Value>,
    /// Trials so far.
    pub trials: Vec<Trial>,
}

/// How a trial ended, for [`crate::Study::tell`].
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

/// Which sampler a study uses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sampler {
    /// Tree-structured Parzen Estimator.
    Tpe(TpeConfig),
    /// Uniform in the transformed space.
    Random,
}

/// TPE's settings; every default is Optuna 5's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TpeConfig {
    /// Random trials before TPE starts (10). A budget not above it never uses TPE: the
    /// notebook's 8 trials with the default were all random.
    pub n_startup_trials: usize,
    /// Candidates drawn from l(x) per trial (24).
    pub n_ei_candidates: usize,
    /// Prior component weight (1.0).
    pub prior_weight: f64,
    /// Lower-bound the bandwidths (true).
    pub consider_magic_clip: bool,
    /// Bounds as neighbours of extreme observations (false).
    pub consider_endpoints: bool,
    /// Sample all parameters jointly (true since Optuna 5; independent TPE when false).
    pub multivariate: bool,
    /// Count running trials as bad ones, so parallel workers spread out (true since 5).
    pub constant_liar: bool,
}

impl Default for TpeConfig {
    fn default() -> Self {
        Self {
            n_startup_trials: 10,
            n_ei_candidates: 24,
            prior_weight: 1.0,
            consider_magic_clip: true,
            consider_endpoints: false,
            multivariate: true,
            constant_liar: true,
        }
    }
}
