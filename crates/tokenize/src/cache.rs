//! Tokenized splits cached next to the data: `<split>.tokens.parquet` plus `tokens.json`, which
//! records the key each file was made with (tokenizer content hash, `max_length`, the split
//! file's SHA-256). A second run with the same key does no work; any change re-encodes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Int8Builder, Int32Builder};
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Int8Array, Int32Array, Int64Array, RecordBatch,
    UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use sentiment_data::{Split, read_split};

use crate::TokenizedRows;
use crate::tokenizer::RobertaTokenizer;
use crate::{TokenizeError, write_atomic};

/// Version of `tokens.json` and the token file layout.
pub const TOKENS_VERSION: u32 = 1;
/// Name of the cache index next to the splits.
pub const TOKENS_INDEX: &str = "tokens.json";

/// Rows encoded per call of the tokenizer (each call uses every core).
const ENCODE_CHUNK: usize = 64 * 1024;

/// The key and outcome of one tokenized split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizedSplit {
    /// The split.
    pub split: Split,
    /// Token file name, next to the split.
    pub file: String,
    /// SHA-256 of the split's Parquet file it was made from.
    pub split_sha256: String,
    /// Rows encoded.
    pub rows: u64,
    /// Rows whose text was cut to fit `max_length`.
    pub truncated: u64,
}

/// `tokens.json`: what every token file was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokensIndex {
    /// [`TOKENS_VERSION`].
    pub version: u32,
    /// [`RobertaTokenizer::content_hash`] of the tokenizer used.
    pub tokenizer_sha256: String,
    /// Where the tokenizer came from (informational).
    pub tokenizer_origin: String,
    /// Sequence length.
    pub max_length: usize,
    /// One entry per split.
    pub splits: Vec<TokenizedSplit>,
}

/// What [`tokenize_splits`] did for one split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitOutcome {
    /// The split's entry in the index.
    pub entry: TokenizedSplit,
    /// True when the cached file was reused without encoding.
    pub reused: bool,
}

/// Token file name of a split: `train.tokens.parquet`.
pub fn tokens_file_name(split: Split) -> String {
    format!("{}.tokens.parquet", split.name())
}

fn tokens_schema(max_length: usize) -> SchemaRef {
    let list = |name: &str, item: DataType| {
        Field::new(
            name,
            DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), max_length as i32),
            false,
        )
    };
    Arc::new(Schema::new(vec![
        Field::new("row", DataType::UInt64, false),
        Field::new("label", DataType::Int64, false),
        list("input_ids", DataType::Int32),
        list("attention_mask", DataType::Int8),
    ]))
}

/// SHA-256 of a file's bytes, hex (the data crate's, with this crate's error).
pub fn sha256_file(path: &Path) -> Result<String, TokenizeError> {
    Ok(sentiment_data::sha256_file(path)?)
}

impl TokensIndex {
    /// Reads `dir/tokens.json`; `None` when absent, unreadable or of another version (the cache
    /// is then simply rebuilt).
    pub fn load(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(TOKENS_INDEX)).ok()?;
        serde_json::from_str::<Self>(&text)
            .ok()
            .filter(|index| index.version == TOKENS_VERSION)
    }

    fn save(&self, dir: &Path) -> Result<(), TokenizeError> {
        let text = serde_json::to_string_pretty(self).expect("index serialises");
        write_atomic(&dir.join(TOKENS_INDEX), text.as_bytes())
    }
}

/// Tokenizes `data_dir/{train,validation,test}.parquet` into `data_dir/<split>.tokens.parquet`,
/// reusing each file whose key is unchanged. `progress(split, rows_done, rows_total)` is called
/// as encoding advances.
pub fn tokenize_splits(
    data_dir: &Path,
    tokenizer: &RobertaTokenizer,
    tokenizer_origin: &str,
    progress: &mut dyn FnMut(Split, usize, usize),
) -> Result<Vec<SplitOutcome>, TokenizeError> {
    let previous = TokensIndex::load(data_dir);
    let mut outcomes = Vec::new();
    for split in Split::ALL {
        let split_path = data_dir.join(split.file_name());
        if !split_path.is_file() {
            return Err(TokenizeError::MissingFile {
                path: split_path,
                detail: "run `cargo xtask prepare` first".into(),
            });
        }
        let split_sha256 = sha256_file(&split_path)?;
        let file = tokens_file_name(split);
        let cached = previous.as_ref().and_then(|index| {
            let same_tokenizer = index.tokenizer_sha256 == tokenizer.content_hash()
                && index.max_length == tokenizer.max_length();
            index
                .splits
                .iter()
                .find(|e| e.split == split && e.split_sha256 == split_sha256)
                .filter(|_| same_tokenizer && data_dir.join(&file).is_file())
                .cloned()
        });
        if let Some(entry) = cached {
            outcomes.push(SplitOutcome {
                entry,
                reused: true,
            });
            continue;
        }
        let rows = read_split(&split_path)?;
        let (rows_written, truncated) = write_tokens(
            &data_dir.join(&file),
            tokenizer,
            &rows.rows,
            &rows.labels,
            &rows.texts,
            &mut |done, total| progress(split, done, total),
        )?;
        outcomes.push(SplitOutcome {
            entry: TokenizedSplit {
                split,
                file,
                split_sha256,
                rows: rows_written as u64,
                truncated: truncated as u64,
            },
            reused: false,
        });
    }
    TokensIndex {
        version: TOKENS_VERSION,
        tokenizer_sha256: tokenizer.content_hash().to_string(),
        tokenizer_origin: tokenizer_origin.to_string(),
        max_length: tokenizer.max_length(),
        splits: outcomes.iter().map(|o| o.entry.clone()).collect(),
    }
    .save(data_dir)?;
    Ok(outcomes)
}

fn write_tokens(
    path: &Path,
    tokenizer: &RobertaTokenizer,
    rows: &[u64],
    labels: &[i64],
    texts: &[String],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(usize, usize), TokenizeError> {
    let max_length = tokenizer.max_length();
    let schema = tokens_schema(max_length);
    let temp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let parquet_error = |source| TokenizeError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let result = (|| {
        let file = File::create(&temp).map_err(TokenizeError::io(&temp))?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer =
            ArrowWriter::try_new(file, schema.clone(), Some(properties)).map_err(parquet_error)?;
        let mut truncated = 0;
        for start in (0..texts.len()).step_by(ENCODE_CHUNK) {
            let end = (start + ENCODE_CHUNK).min(texts.len());
            let encoded = tokenizer.encode_batch(&texts[start..end])?;
            truncated += encoded.truncated;
            let mut ids = FixedSizeListBuilder::new(Int32Builder::new(), max_length as i32)
                .with_field(Arc::new(Field::new("item", DataType::Int32, false)));
            let mut mask = FixedSizeListBuilder::new(Int8Builder::new(), max_length as i32)
                .with_field(Arc::new(Field::new("item", DataType::Int8, false)));
            for i in 0..encoded.len() {
                ids.values()
                    .append_slice(&encoded.ids(i).iter().map(|&t| t as i32).collect::<Vec<_>>());
                ids.append(true);
                mask.values()
                    .append_slice(&encoded.mask(i).iter().map(|&m| m as i8).collect::<Vec<_>>());
                mask.append(true);
            }
            let columns: Vec<ArrayRef> = vec![
                Arc::new(UInt64Array::from(rows[start..end].to_vec())),
                Arc::new(Int64Array::from(labels[start..end].to_vec())),
                Arc::new(ids.finish()),
                Arc::new(mask.finish()),
            ];
            let batch = RecordBatch::try_new(schema.clone(), columns)
                .expect("columns match the token schema");
            writer.write(&batch).map_err(parquet_error)?;
            progress(end, texts.len());
        }
        writer.close().map_err(parquet_error)?;
        // On disk before its name, and its name before the cache record that points at it.
        sentiment_data::sync_path(&temp).map_err(TokenizeError::io(&temp))?;
        std::fs::rename(&temp, path).map_err(TokenizeError::io(path))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            sentiment_data::sync_path(dir).map_err(TokenizeError::io(dir))?;
        }
        Ok((texts.len(), truncated))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Reads a token file written by [`tokenize_splits`].
pub fn read_tokenized(path: &Path) -> Result<TokenizedRows, TokenizeError> {
    let parquet_error = |source| TokenizeError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let bad = |detail: String| TokenizeError::BadFile {
        path: path.to_path_buf(),
        detail,
    };
    let file = File::open(path).map_err(TokenizeError::io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_error)?
        .build()
        .map_err(parquet_error)?;
    let mut out: Option<TokenizedRows> = None;
    let mut pad_seen = false;
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| bad(format!("no `{name}` column")))
        };
        let rows = column("row")?;
        let labels = column("label")?;
        let ids = column("input_ids")?;
        let mask = column("attention_mask")?;
        let rows = rows
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| bad("`row` is not UInt64".into()))?;
        let labels = labels
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| bad("`label` is not Int64".into()))?;
        let ids = ids
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .ok_or_else(|| bad("`input_ids` is not a fixed-size list".into()))?;
        let mask = mask
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .ok_or_else(|| bad("`attention_mask` is not a fixed-size list".into()))?;
        let max_length = ids.value_length() as usize;
        let id_values = ids
            .values()
            .as_any()
            .downcast_ref::<Int32Array>()
            .ok_or_else(|| bad("`input_ids` items are not Int32".into()))?;
        let mask_values = mask
            .values()
            .as_any()
            .downcast_ref::<Int8Array>()
            .ok_or_else(|| bad("`attention_mask` items are not Int8".into()))?;
        if id_values.null_count() > 0 || rows.null_count() > 0 || labels.null_count() > 0 {
            return Err(bad("null values".into()));
        }
        let (id_values, mask_values) = (id_values.values(), mask_values.values());
        let out = out.get_or_insert_with(|| TokenizedRows::new(max_length, 1));
        // Every padded position holds the tokenizer's pad id: the first one seen sets it (a
        // file with no padded position never pads a batch wider than its rows, so RoBERTa's
        // id stands until then).
        if !pad_seen && let Some(p) = mask_values.iter().position(|&m| m == 0) {
            out.pad_id = id_values[p] as u32;
            pad_seen = true;
        }
        if max_length != out.max_length {
            return Err(bad(format!(
                "rows of {max_length} and of {} ids in one file",
                out.max_length
            )));
        }
        for (i, (&row, &label)) in rows.values().iter().zip(labels.values()).enumerate() {
            let start = i * max_length;
            let mask = &mask_values[start..start + max_length];
            let length = mask
                .iter()
                .rposition(|&m| m != 0)
                .map_or(0, |last| last + 1);
            if mask[..length].contains(&0) {
                return Err(bad(format!(
                    "row {row}: the attention mask is not right-padded (a 0 before a 1)"
                )));
            }
            out.push(
                row,
                label,
                id_values[start..start + length].iter().map(|&v| v as u32),
            );
        }
    }
    Ok(out.unwrap_or_default())
}

/// Paths of the three token files of `data_dir`, by split.
pub fn token_files(data_dir: &Path) -> BTreeMap<Split, PathBuf> {
    Split::ALL
        .iter()
        .map(|&s| (s, data_dir.join(tokens_file_name(s))))
        .collect()
}

/// Folder, next to the splits, where a tokenizer trained on the training split is kept.
pub const TRAINED_TOKENIZER_DIR: &str = "tokenizer";
/// File in that folder recording what the tokenizer was trained from.
const TRAINING_RECORD: &str = "training.json";

/// What a kept tokenizer was trained from; a mismatch means train again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TrainingRecord {
    version: u32,
    train_split_sha256: String,
    config: crate::BpeTrainingConfig,
}

/// The tokenizer trained on `data_dir/train.parquet` with `config`: loaded from
/// `data_dir/tokenizer/` when it was trained from the same split and settings, else trained and
/// saved there (as a Hugging Face tokenizer folder). Returns it and whether it was reused.
pub fn train_on_split(
    data_dir: &Path,
    config: &crate::BpeTrainingConfig,
    max_length: usize,
) -> Result<(RobertaTokenizer, bool), TokenizeError> {
    let train_path = data_dir.join(Split::Train.file_name());
    if !train_path.is_file() {
        return Err(TokenizeError::MissingFile {
            path: train_path,
            detail: "run `cargo xtask prepare` first".into(),
        });
    }
    let record = TrainingRecord {
        version: TOKENS_VERSION,
        train_split_sha256: sha256_file(&train_path)?,
        config: *config,
    };
    let folder = data_dir.join(TRAINED_TOKENIZER_DIR);
    let record_path = folder.join(TRAINING_RECORD);
    let kept = std::fs::read_to_string(&record_path)
        .ok()
        .and_then(|text| serde_json::from_str::<TrainingRecord>(&text).ok());
    if kept.as_ref() == Some(&record)
        && let Ok(tokenizer) = RobertaTokenizer::from_folder(&folder, max_length)
    {
        return Ok((tokenizer, true));
    }
    let texts = read_split(&train_path)?.texts;
    let tokenizer = RobertaTokenizer::train(&texts, config, max_length)?;
    // The record goes last: a folder without it is never reused.
    let _ = std::fs::remove_file(&record_path);
    tokenizer.save(&folder)?;
    let text = serde_json::to_string_pretty(&record).expect("record serialises");
    write_atomic(&record_path, text.as_bytes())?;
    Ok((tokenizer, false))
}
