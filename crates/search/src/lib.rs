//! Hyperparameter search with Optuna 5's semantics: a Tree-structured Parzen Estimator
//! ([`TpeSampler`]: multivariate, 10 random startup trials, 24 candidates, γ = min(⌈0.1 n⌉, 25),
//! Optuna's weights, prior and magic clip, constant liar), a [`RandomSampler`], and [`Study`]:
//! trials with states, values and per-epoch intermediate values, a median pruner, a trials CSV,
//! and storage in Optuna 5's own RDB schema that resumes after a kill and that workers on many
//! machines share: an SQLite file ([`SqliteStorage`]) or a PostgreSQL database
//! ([`PostgresStorage`]), with Optuna's heartbeats and retries of dead workers' trials.
//!
//! ```
//! use sentiment_search::{Direction, Outcome, Sampler, Study, TpeConfig, parse_space};
//!
//! let space = parse_space(["x=float:-5:5", "flavour=cat:a,b"])?;
//! let mut study = Study::in_memory(Direction::Minimize, space, Sampler::Tpe(TpeConfig::default()), 1);
//! for _ in 0..30 {
//!     let trial = study.ask()?;
//!     let x = trial.params["x"].as_f64().unwrap();
//!     let penalty = if trial.params["flavour"] == "a" { 0.0 } else { 1.0 };
//!     study.tell(trial.number, Outcome::Complete((x - 2.0).powi(2) + penalty))?;
//! }
//! assert!(study.best_trial().unwrap().value.unwrap() < 1.0);
//! # Ok::<(), sentiment_search::SearchError>(())
//! ```

mod math;
mod parzen;
mod sampler;
mod secrets;
mod space;
mod storage;
mod study;
mod trial;

pub use parzen::{Kernel, ParzenConfig, ParzenEstimator, default_weights};
pub use sampler::{Params, RandomSampler, TpeSampler, default_gamma};
pub use secrets::{redact_args, redact_url};
pub use space::{Distribution, Param, SearchSpace, parse_space, snap, space_from_json};
pub use storage::{PostgresStorage, SqliteStorage, StudyStorage, storage};
pub use study::{Heartbeats, Study};
pub use trial::{
    DEFAULT_STUDY_NAME, Direction, Outcome, STUDY_VERSION, Sampler, StudyChange, StudyRecord,
    TpeConfig, Trial, TrialState, WORKER_ATTRIBUTE,
};

/// Errors of a search.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// A parameter or space definition is invalid.
    #[error("invalid search space: {0}")]
    InvalidSpace(String),
    /// A trial number the study does not have.
    #[error("unknown trial {0}")]
    UnknownTrial(usize),
    /// A trial told after it finished: another worker failed it (its heartbeat was stale), or
    /// it was told twice.
    #[error("trial {number} is already {state:?}")]
    Finished {
        /// The trial.
        number: usize,
        /// The state it has.
        state: TrialState,
    },
    /// A request that contradicts the study's state or definition.
    #[error("{0}")]
    Mismatch(String),
    /// Reading or writing the study file failed.
    #[error("study storage: {0}")]
    Storage(String),
}
