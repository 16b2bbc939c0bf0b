//! The crate's error type: every variant names the setting, split or file at fault.

use std::path::PathBuf;

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A hyperparameter is out of range.
    #[error("invalid setting: {0}")]
    InvalidSetting(String),
    /// The data cannot be trained on.
    #[error("invalid data: {0}")]
    InvalidData(String),
    /// A checkpoint is unreadable or belongs to another configuration.
    #[error("{path}: unusable checkpoint: {detail}")]
    BadCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "the loss diverged (not finite) in epoch {epoch} at step {step}: lower the learning rate"
    )]
    Diverged {
        /// 1-based epoch.
        epoch: usize,
        /// Global step.
        step: usize,
    },
    /// Stopped on request (Ctrl-C) after saving a checkpoint.
    #[error("interrupted; checkpoint saved in {checkpoint}: run again with --resume to continue")]
    Interrupted {
        /// The mid-epoch checkpoint folder.
        checkpoint: PathBuf,
    },
    /// A fresh run was asked into a folder that holds one.
    #[error(
        "{run_dir} already holds a run ({config_file}): --resume continues it, --overwrite \
         replaces it"
    )]
    RunExists {
        /// The run folder.
        run_dir: PathBuf,
        /// The configuration file that marks it as a run.
        config_file: String,
    },
    /// A resume was asked of a folder that holds no run.
    #[error("{run_dir}: nothing to resume (no {config_file}): start without --resume")]
    NothingToResume {
        /// The run folder.
        run_dir: PathBuf,
        /// The configuration file a run would have written.
        config_file: String,
    },
    /// The backend failed to return data.
    #[error("backend error: {0}")]
    Backend(String),
    /// A model error (configuration, saving).
    #[error(transparent)]
    Model(#[from] roberta_burn::ModelError),
    /// A tokenizer error (saving the tokenizer with the model).
    #[error(transparent)]
    Tokenize(#[from] sentiment_tokenize::TokenizeError),
    /// A metrics error.
    #[error(transparent)]
    Metrics(#[from] sentiment_metrics::MetricsError),
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| TrainError::Io { path, source }
    }
}
