//! The crate's error type: which stage failed and on what, or why a stage refused to run.

use std::path::PathBuf;

/// Errors of a pipeline run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Reading or writing a file of the pipeline's own failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A setting cannot run; the message names it.
    #[error("{0}")]
    InvalidSetting(String),
    /// Running would mix or destroy earlier results; the message says what changed and which
    /// flag allows discarding them.
    #[error("{0}")]
    Refused(String),
    /// A stop was requested between two trials: the study is as the last one left it.
    #[error("interrupted between trials")]
    Interrupted,
    /// No trial of the search completed.
    #[error("no trial completed: see the errors above")]
    NoCompleteTrial,
    /// A worker's trials failed one after another, as many as
    /// `--max-consecutive-failures`: the search stops rather than fail every trial.
    #[error(
        "{count} trials in a row failed; the search stops (--max-consecutive-failures). The \
         last one: {last}"
    )]
    TrialsFailing {
        /// How many failed in a row.
        count: usize,
        /// The last trial's error.
        last: Box<PipelineError>,
    },
    /// A search worker's thread panicked (a bug: please report it with the message).
    #[error("a search worker panicked: {0}")]
    WorkerPanicked(String),
    /// A stage failed; `stage` says which and on what.
    #[error("{stage}: {source}")]
    Stage {
        /// The stage and its input, e.g. `preparing data/sample.csv`.
        stage: String,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The data stage failed.
    #[error(transparent)]
    Data(#[from] sentiment_data::DataError),
    /// The tokenizer stage failed.
    #[error(transparent)]
    Tokenize(#[from] sentiment_tokenize::TokenizeError),
    /// Loading or saving a model failed.
    #[error(transparent)]
    Model(#[from] roberta_burn::ModelError),
    /// A training run failed.
    #[error(transparent)]
    Train(#[from] sentiment_train::TrainError),
    /// The study failed.
    #[error(transparent)]
    Search(#[from] sentiment_search::SearchError),
}

impl PipelineError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| PipelineError::Io { path, source }
    }

    pub(crate) fn stage<E: std::error::Error + Send + Sync + 'static>(
        stage: impl Into<String>,
    ) -> impl FnOnce(E) -> Self {
        let stage = stage.into();
        move |source| PipelineError::Stage {
            stage,
            source: Box::new(source),
        }
    }

    /// Whether the error is a training run stopped on request (Ctrl-C), which resumes.
    pub fn is_interrupted(&self) -> bool {
        match self {
            PipelineError::Interrupted => true,
            PipelineError::Train(e) => matches!(e, sentiment_train::TrainError::Interrupted { .. }),
            PipelineError::Stage { source, .. } => matches!(
                source.downcast_ref::<sentiment_train::TrainError>(),
                Some(sentiment_train::TrainError::Interrupted { .. })
            ),
            _ => false,
        }
    }
}
