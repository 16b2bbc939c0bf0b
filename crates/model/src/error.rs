//! The crate's error type: every variant names the file, key or field at fault.

use std::path::PathBuf;

/// Errors of configuring, loading and saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A configuration is unreadable or inconsistent.
    #[error("{source_name}: invalid RoBERTa configuration: {detail}")]
    InvalidConfig {
        /// Where the configuration came from.
        source_name: String,
        /// The field and the problem.
        detail: String,
    },
    /// A pretrained name resolves to nothing.
    #[error("model `{name}`: {detail}")]
    NotFound {
        /// The name or path given.
        name: String,
        /// Where it was looked for.
        detail: String,
    },
    /// A folder has no weight file.
    #[error("{dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")]
    NoWeights {
        /// The folder.
        dir: PathBuf,
    },
    /// A weight has another shape than the configuration implies.
    #[error(
        "{file}: `{key}` has shape {found:?} in the file, the configuration needs {expected:?}"
    )]
    ShapeMismatch {
        /// The weight file.
        file: PathBuf,
        /// The checkpoint key.
        key: String,
        /// Shape the model needs, in the file's layout (PyTorch's `[out, in]` for a linear
        /// weight).
        expected: Vec<usize>,
        /// Shape as stored in the file.
        found: Vec<usize>,
    },
    /// Encoder weights are absent from the checkpoint.
    #[error("{file}: missing encoder weights: {keys}")]
    MissingWeights {
        /// The weight file.
        file: PathBuf,
        /// The missing keys, comma-separated.
        keys: String,
    },
    /// A weight file is unreadable.
    #[error("{file}: {detail}")]
    BadWeights {
        /// The weight file.
        file: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// Inputs longer than the position embedding allows.
    #[error("sequences of {length} tokens exceed the model's maximum of {max}")]
    SequenceTooLong {
        /// Requested length.
        length: usize,
        /// Maximum supported.
        max: usize,
    },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ModelError::Io { path, source }
    }
}

impl From<sentiment_hub::NotFound> for ModelError {
    fn from(e: sentiment_hub::NotFound) -> Self {
        ModelError::NotFound {
            name: e.name,
            detail: e.detail,
        }
    }
}
