//! The crate's error type: every variant names the file, token or setting at fault.

use std::path::PathBuf;

/// Errors of loading, training and applying a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A needed file is absent.
    #[error("{path}: missing ({detail})")]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// What was expected.
        detail: String,
    },
    /// A file exists but cannot be used.
    #[error("{path}: {detail}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A pretrained name resolves to nothing.
    #[error("tokenizer `{name}`: {detail}")]
    NotFound {
        /// The name or path given.
        name: String,
        /// Where it was looked for.
        detail: String,
    },
    /// The vocabulary lacks one of RoBERTa's special tokens.
    #[error(
        "{origin}: the vocabulary has no `{token}` token (RoBERTa needs <s>, <pad>, </s>, <unk>, <mask>)"
    )]
    MissingSpecialToken {
        /// The tokenizer's origin.
        origin: String,
        /// The missing token.
        token: String,
    },
    /// A setting is out of range.
    #[error("{0}")]
    InvalidSetting(String),
    /// Training failed.
    #[error("training the tokenizer failed: {0}")]
    Training(String),
    /// Encoding failed.
    #[error("encoding failed: {0}")]
    Encoding(String),
    /// Reading a split failed.
    #[error(transparent)]
    Data(#[from] sentiment_data::DataError),
    /// Writing or reading a token file failed.
    #[error("{path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: parquet::errors::ParquetError,
    },
}

impl TokenizeError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| TokenizeError::Io { path, source }
    }
}

impl From<sentiment_hub::NotFound> for TokenizeError {
    fn from(e: sentiment_hub::NotFound) -> Self {
        TokenizeError::NotFound {
            name: e.name,
            detail: e.detail,
        }
    }
}
