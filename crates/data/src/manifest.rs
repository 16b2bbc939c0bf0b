//! `manifest.json`: what a prepare run read, kept, dropped and wrote.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::format::{InputFormat, TextEncoding};
use crate::normalize::Normalization;
use crate::split::{Split, SplitRatios};
use crate::{DataError, write_file_atomic};

/// Manifest schema version; bumped on any incompatible change.
pub const MANIFEST_VERSION: u32 = 1;

/// File name of the manifest inside the output folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// What to do with a malformed row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRowPolicy {
    /// Stop with an error naming the file and line (the default).
    #[default]
    Error,
    /// Skip the row and count it in the manifest under its reason.
    Skip,
}

/// The input file as it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSummary {
    /// Path as given.
    pub path: String,
    /// Size in bytes (compressed size for `.gz`).
    pub bytes: u64,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// Whether the file was gzip-compressed.
    pub gzip: bool,
}

/// One class: its dense id (the `label` column), the value in the input and a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// The id written to the `label` column, `0..num_classes`.
    pub id: u32,
    /// The label as it appears in the input (raw polarity 0/2/4, or the cleaned integer).
    pub value: i64,
    /// Human-readable name, used as the model's `id2label`.
    pub name: String,
}

/// One written split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSummary {
    /// Which split.
    pub split: Split,
    /// File name inside the output folder.
    pub file: String,
    /// Rows written.
    pub rows: u64,
    /// Rows per class id.
    pub class_counts: Vec<u64>,
}

/// Everything a prepare run decided, so its outputs can be traced and reproduced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`] at write time.
    pub version: u32,
    /// The crate and version that wrote it.
    pub created_by: String,
    /// The input file.
    pub input: InputSummary,
    /// Layout used.
    pub format: InputFormat,
    /// Whether the layout was detected (true) or forced by the caller.
    pub format_detected: bool,
    /// Encoding the text was decoded from.
    pub encoding: TextEncoding,
    /// Column the text came from (`text` for both layouts).
    pub text_column: String,
    /// Column the label came from (`polarity` for the raw layout).
    pub label_column: String,
    /// Records read, well-formed or not (header and blank lines excluded).
    pub rows_read: u64,
    /// Empty lines in the input, which hold no record.
    pub blank_lines: u64,
    /// Rows written to the splits. `rows_read == rows_kept + sum(rows_dropped)`.
    pub rows_kept: u64,
    /// Rows not written, by reason.
    pub rows_dropped: BTreeMap<String, u64>,
    /// The classes, by id.
    pub classes: Vec<ClassInfo>,
    /// Whether raw neutral rows (polarity 2) were kept as a third class.
    pub keep_neutral: bool,
    /// Text normalisation applied.
    pub normalization: Normalization,
    /// Whether exact duplicate texts (and texts with conflicting labels) were removed.
    pub dedup: bool,
    /// `--sample N`, if any.
    pub sample: Option<usize>,
    /// Seed of the sample and the split.
    pub seed: u64,
    /// Split ratios.
    pub ratios: SplitRatios,
    /// Policy for malformed rows.
    pub on_bad_row: BadRowPolicy,
    /// The most bytes a record could hold (manifests written before the limit existed read
    /// as the default: no earlier input had a record that long and was prepared).
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// The written splits, in train / validation / test order.
    pub splits: Vec<SplitSummary>,
}

fn default_max_record_bytes() -> usize {
    crate::DEFAULT_MAX_RECORD_BYTES
}

impl Manifest {
    /// Reads and version-checks `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self, DataError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(DataError::io(&path))?;
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let json_error = |source| DataError::Json {
            path: path.clone(),
            source,
        };
        let Version { version } = serde_json::from_slice(&bytes).map_err(json_error)?;
        if version != MANIFEST_VERSION {
            return Err(DataError::ManifestVersion {
                path,
                found: version,
                expected: MANIFEST_VERSION,
            });
        }
        serde_json::from_slice(&bytes).map_err(json_error)
    }

    /// Writes `dir/manifest.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), DataError> {
        let path = dir.join(MANIFEST_FILE);
        let mut json = serde_json::to_vec_pretty(self).map_err(|source| DataError::Json {
            path: path.clone(),
            source,
        })?;
        json.push(b'\n');
        write_file_atomic(&path, &json)
    }

    /// Summary of the split `split`.
    pub fn split(&self, split: Split) -> Option<&SplitSummary> {
        self.splits.iter().find(|s| s.split == split)
    }
}
