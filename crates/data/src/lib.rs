//! Data preparation: a Sentiment140 CSV, raw or cleaned, into stratified train / validation /
//! test Parquet files and a manifest that accounts for every row.
//!
//! The pipeline is: detect the layout ([`InputFormat`]) from the first line, decode the text
//! (Windows-1252 for the raw release, UTF-8 otherwise), optionally normalise it
//! ([`Normalization`]), drop what must be dropped while counting each reason (neutral rows,
//! empty texts, duplicates, malformed rows under [`BadRowPolicy::Skip`]), optionally draw a
//! stratified sample, then split each class 70/15/15 with a seed ([`stratified_split`]).
//! Memory stays bounded: the file is streamed twice and only labels are held.
//!
//! ```no_run
//! use sentiment_data::{PrepareConfig, prepare};
//!
//! let mut config = PrepareConfig::new("training.1600000.processed.noemoticon.csv", "data/s140");
//! config.sample = Some(10_000);
//! let manifest = prepare(&config, &mut |_| {})?;
//! println!("{} rows kept of {}", manifest.rows_kept, manifest.rows_read);
//! let train = sentiment_data::read_split(&config.out_dir.join("train.parquet"))?;
//! assert_eq!(train.len() as u64, manifest.splits[0].rows);
//! # Ok::<(), sentiment_data::DataError>(())
//! ```

mod csv_reader;
mod error;
mod format;
mod manifest;
mod normalize;
mod parquet_io;
mod prepare;
mod split;
mod texts;

use std::io::Write;
use std::path::Path;

pub use csv_reader::{
    DEFAULT_MAX_RECORD_BYTES, MAX_RECORD_LINES, ReadOutcome, Record, RecordReader, SyntaxError,
};
pub use error::{BadRow, DataError};
pub use format::{InputFormat, TextEncoding, decode_cp1252, detect_format, encode_cp1252};
pub use manifest::{
    BadRowPolicy, ClassInfo, InputSummary, MANIFEST_FILE, MANIFEST_VERSION, Manifest, SplitSummary,
};
pub use normalize::Normalization;
pub use parquet_io::{
    LABEL_COLUMN, ROW_COLUMN, SplitRows, SplitWriter, TEXT_COLUMN, read_split, split_schema,
};
pub use prepare::{PrepareConfig, Progress, prepare, sha256_file};
pub use split::{Split, SplitRatios, apportion, stratified_sample, stratified_split};
pub use texts::{TextColumn, read_text_column};

/// Writes `bytes` to `path` atomically: a temporary file beside it (`tempfile`, removed if
/// anything fails), flushed to disk, then renamed over `path`, so a reader sees the old file or
/// the new one, never a part.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(DataError::io(path))?;
    file.write_all(bytes)
        .and_then(|()| file.as_file().sync_all())
        .map_err(DataError::io(path))?;
    file.persist(path)
        .map_err(|e| DataError::io(path)(e.error))?;
    // The rename itself is durable once the folder is: a crash right after must not bring
    // back the old file (or none) beside files that were written after this one.
    sync_path(dir).map_err(DataError::io(dir))
}

/// Flushes a file's data, or a folder's entries (names created, renamed or removed in it), to
/// the disk. On Windows a folder cannot be opened to flush it and its renames are durable
/// once the call returns, so a folder is not flushed there.
pub fn sync_path(path: &Path) -> std::io::Result<()> {
    if cfg!(windows) && path.is_dir() {
        return Ok(());
    }
    std::fs::File::open(path)?.sync_all()
}

/// At most 120 characters of `text`, control characters escaped, with how much was left out:
/// what an error quotes from a user's file, which may be binary.
pub fn excerpt(text: &str) -> String {
    const MAX: usize = 120;
    let escaped: String = text
        .chars()
        .flat_map(|c| {
            if c.is_control() || c == '\u{fffd}' {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    match escaped.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}… ({} more bytes)", &escaped[..cut], escaped.len() - cut),
        None => escaped,
    }
}
