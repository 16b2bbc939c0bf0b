//! The split files: an explicit Arrow schema, a batching writer, and a reader.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use arrow_array::builder::{Int64Builder, StringBuilder, UInt64Builder};
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::DataError;

/// Column holding the 1-based line of the input the row starts on, so every row traces back.
pub const ROW_COLUMN: &str = "row";
/// Column holding the (optionally normalised) text.
pub const TEXT_COLUMN: &str = "text";
/// Column holding the dense class id.
pub const LABEL_COLUMN: &str = "label";

static SPLIT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new(ROW_COLUMN, DataType::UInt64, false),
        Field::new(TEXT_COLUMN, DataType::Utf8, false),
        Field::new(LABEL_COLUMN, DataType::Int64, false),
    ]))
});

/// The Arrow schema of every split file: `row` u64, `text` utf8, `label` i64.
pub fn split_schema() -> SchemaRef {
    SPLIT_SCHEMA.clone()
}

/// Rows buffered before a record batch is handed to the Parquet writer.
const BATCH_ROWS: usize = 32 * 1024;

/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Streams rows into one split file, written under a temporary name until [`Self::finish`].
pub struct SplitWriter {
    temp_path: PathBuf,
    final_path: PathBuf,
    writer: ArrowWriter<File>,
    rows: UInt64Builder,
    texts: StringBuilder,
    labels: Int64Builder,
    buffered: usize,
}

impl SplitWriter {
    /// Creates `final_path`'s temporary sibling and a writer on it.
    pub fn create(final_path: &Path) -> Result<Self, DataError> {
        let temp_path = temp_sibling(final_path);
        let file = File::create(&temp_path).map_err(DataError::io(&temp_path))?;
        // Small row groups keep the writer's buffer, and so peak memory, bounded whatever the
        // split's size (the default buffers up to a million rows).
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer =
            ArrowWriter::try_new(file, split_schema(), Some(properties)).map_err(|source| {
                DataError::Parquet {
                    path: temp_path.clone(),
                    source,
                }
            })?;
        Ok(Self {
            temp_path,
            final_path: final_path.to_path_buf(),
            writer,
            rows: UInt64Builder::with_capacity(BATCH_ROWS),
            texts: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 80),
            labels: Int64Builder::with_capacity(BATCH_ROWS),
            buffered: 0,
        })
    }

    /// Appends one row.
    pub fn push(&mut self, row: u64, text: &str, label: i64) -> Result<(), DataError> {
        self.rows.append_value(row);
        self.texts.append_value(text);
        self.labels.append_value(label);
        self.buffered += 1;
        if self.buffered >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DataError> {
        if self.buffered == 0 {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.rows.finish()),
            Arc::new(self.texts.finish()),
            Arc::new(self.labels.finish()),
        ];
        self.buffered = 0;
        let batch =
            RecordBatch::try_new(split_schema(), columns).expect("builders match the split schema");
        self.writer
            .write(&batch)
            .map_err(|source| DataError::Parquet {
                path: self.temp_path.clone(),
                source,
            })
    }

    /// Drops an unfinished file and deletes it.
    pub fn abandon(self) {
        let temp_path = self.temp_path;
        drop(self.writer);
        let _ = std::fs::remove_file(temp_path);
    }

    /// Closes the file and returns (temporary path, final path); the caller renames it into
    /// place once every output is complete.
    pub fn finish(mut self) -> Result<(PathBuf, PathBuf), DataError> {
        self.flush()?;
        self.writer.close().map_err(|source| DataError::Parquet {
            path: self.temp_path.clone(),
            source,
        })?;
        Ok((self.temp_path, self.final_path))
    }
}

/// `dir/name` → `dir/.name.tmp-<pid>`: same folder, so the final rename is atomic.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// One split read back into memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SplitRows {
    /// Source line of each row.
    pub rows: Vec<u64>,
    /// Texts.
    pub texts: Vec<String>,
    /// Class ids.
    pub labels: Vec<i64>,
}

impl SplitRows {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// True when the split holds no row.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

/// Reads a split file written by [`SplitWriter`] (or any Parquet file with the same columns).
pub fn read_split(path: &Path) -> Result<SplitRows, DataError> {
    let parquet_error = |source| DataError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(DataError::io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_error)?
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(parquet_error)?;
    let mut out = SplitRows::default();
    for batch in reader {
        let batch = batch.map_err(|e| DataError::BadSplitFile {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let rows: &UInt64Array = column(&batch, ROW_COLUMN, path)?;
        let texts: &StringArray = column(&batch, TEXT_COLUMN, path)?;
        let labels: &Int64Array = column(&batch, LABEL_COLUMN, path)?;
        if texts.null_count() > 0 || labels.null_count() > 0 || rows.null_count() > 0 {
            return Err(DataError::BadSplitFile {
                path: path.to_path_buf(),
                detail: "null values in a required column".into(),
            });
        }
        out.rows.extend(rows.values().iter().copied());
        out.texts
            .extend(texts.iter().map(|t| t.unwrap_or_default().to_string()));
        out.labels.extend(labels.values().iter().copied());
    }
    Ok(out)
}

fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a T, DataError> {
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| DataError::BadSplitFile {
            path: path.to_path_buf(),
            detail: format!("no `{name}` column"),
        })?;
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| DataError::BadSplitFile {
            path: path.to_path_buf(),
            detail: format!(
                "column `{name}` has type {}, expected the split schema's",
                array.data_type()
            ),
        })
}
