//! The crate's error type: every variant names the file, line or setting at fault.

use std::fmt;
use std::path::PathBuf;

use crate::csv_reader::SyntaxError;

/// Why a row of the input was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRow {
    /// The record has the wrong number of fields.
    ColumnCount {
        /// Fields the format needs.
        expected: usize,
        /// Fields the record has.
        found: usize,
    },
    /// The label field is not one the format allows.
    UnknownLabel(String),
    /// A quoted field never closes.
    UnterminatedQuote,
    /// Text follows a closing quote inside a field.
    TextAfterClosingQuote,
    /// The record holds more bytes than the limit on a record.
    RecordTooLong,
    /// The text column of a UTF-8 file holds bytes that are not UTF-8.
    InvalidUtf8 {
        /// The offending column's name.
        column: String,
    },
    /// The `row` column holds something other than a non-negative integer.
    BadRowId(String),
}

impl BadRow {
    /// The manifest key this reason is counted under.
    pub fn reason_key(&self) -> &'static str {
        match self {
            BadRow::ColumnCount { .. } => "bad_row_column_count",
            BadRow::UnknownLabel(_) => "bad_row_unknown_label",
            BadRow::UnterminatedQuote => "bad_row_unterminated_quote",
            BadRow::TextAfterClosingQuote => "bad_row_text_after_closing_quote",
            BadRow::RecordTooLong => "bad_row_too_long",
            BadRow::InvalidUtf8 { .. } => "bad_row_invalid_utf8",
            BadRow::BadRowId(_) => "bad_row_row_id",
        }
    }
}

impl From<SyntaxError> for BadRow {
    fn from(error: SyntaxError) -> Self {
        match error {
            SyntaxError::UnterminatedQuote => BadRow::UnterminatedQuote,
            SyntaxError::TextAfterClosingQuote => BadRow::TextAfterClosingQuote,
            SyntaxError::RecordTooLong => BadRow::RecordTooLong,
        }
    }
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadRow::ColumnCount { expected, found } => {
                write!(f, "expected {expected} columns, found {found}")
            }
            BadRow::UnknownLabel(label) => write!(f, "unknown label {label:?}"),
            BadRow::UnterminatedQuote => write!(
                f,
                "unterminated quoted field (the quote opened on this line is not closed before \
                 the end of the file or within {} lines)",
                crate::csv_reader::MAX_RECORD_LINES
            ),
            BadRow::TextAfterClosingQuote => {
                write!(f, "text after a closing quote (a stray or unescaped `\"`)")
            }
            BadRow::RecordTooLong => write!(
                f,
                "the record is longer than the limit on a record's bytes (--max-record-bytes; \
                 it was skipped unread)"
            ),
            BadRow::InvalidUtf8 { column } => {
                write!(f, "column `{column}` is not valid UTF-8")
            }
            BadRow::BadRowId(value) => write!(
                f,
                "column `{}` holds {value:?}, not a non-negative integer row id",
                crate::ROW_COLUMN
            ),
        }
    }
}

/// Errors of data preparation.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A compressed input decompresses to more than its size allows (a gzip bomb).
    #[error(
        "{path}: decompresses to more than {ratio} times its {compressed} bytes (plus \
         {margin_mib} MiB): a gzip bomb, or not text; refused before it takes the memory"
    )]
    DecompressionBomb {
        /// The input file.
        path: PathBuf,
        /// Its compressed size.
        compressed: u64,
        /// The most a byte of it may become.
        ratio: u64,
        /// The fixed allowance on top, in MiB.
        margin_mib: u64,
    },
    /// The input holds no record at all.
    #[error("{path}: the file is empty")]
    EmptyInput {
        /// The input file.
        path: PathBuf,
    },
    /// The first line fits neither layout.
    #[error("{path}: cannot detect the format: {detail}; pass --format raw or --format cleaned")]
    UnknownFormat {
        /// The input file.
        path: PathBuf,
        /// What the first line looked like.
        detail: String,
    },
    /// A cleaned file's header lacks a needed column. `found` is an excerpt, escaped: a binary
    /// file's first "line" can be kilobytes of control bytes.
    #[error("{path}: the header has no `{column}` column (found: {found})")]
    MissingColumn {
        /// The input file.
        path: PathBuf,
        /// The missing column.
        column: String,
        /// The columns the header has.
        found: String,
    },
    /// A malformed row while `--on-bad-row error` is in force.
    #[error("{path}:{line}: {problem} (pass --on-bad-row skip to skip such rows and count them)")]
    BadRow {
        /// The input file.
        path: PathBuf,
        /// 1-based line the row starts on.
        line: u64,
        /// What is wrong.
        problem: BadRow,
    },
    /// A malformed row in a file read for its texts only (`predict --input`, `pretrain`), which
    /// has no skipping policy.
    #[error("{path}:{line}: {problem} (fix or remove that row)")]
    BadTextRow {
        /// The input file.
        path: PathBuf,
        /// 1-based line the row starts on.
        line: u64,
        /// What is wrong.
        problem: BadRow,
    },
    /// Nothing is left to split.
    #[error("{path}: no usable rows (read {rows_read}, dropped: {dropped})")]
    NoRows {
        /// The input file.
        path: PathBuf,
        /// Records read.
        rows_read: u64,
        /// Dropped counts by reason.
        dropped: String,
    },
    /// The split ratios are invalid.
    #[error("invalid split ratios {0}")]
    InvalidRatios(String),
    /// `--sample` asks for more rows than there are.
    #[error("--sample {requested} asks for more rows than the {available} kept")]
    SampleTooLarge {
        /// Rows asked for.
        requested: usize,
        /// Rows available.
        available: usize,
    },
    /// The input changed between the two reading passes.
    #[error("{path}: the file changed while it was being read (line {line})")]
    InputChanged {
        /// The input file.
        path: PathBuf,
        /// Where the passes disagreed.
        line: u64,
    },
    /// Writing or reading Parquet failed.
    #[error("{path}: {source}")]
    Parquet {
        /// The Parquet file.
        path: PathBuf,
        /// The underlying error.
        source: parquet::errors::ParquetError,
    },
    /// A Parquet file lacks a column or has it with the wrong type.
    #[error("{path}: {detail}")]
    BadSplitFile {
        /// The Parquet file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A manifest could not be read or written.
    #[error("{path}: {source}")]
    Json {
        /// The manifest file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A manifest written by an incompatible version.
    #[error("{path}: manifest version {found} is not supported (expected {expected})")]
    ManifestVersion {
        /// The manifest file.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version this build writes.
        expected: u32,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| DataError::Io { path, source }
    }
}
