//! Reading one text column from a user's CSV or Parquet file (for prediction and pre-training).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt64Type};
use arrow_array::{Array, LargeStringArray, StringArray};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::csv_reader::{ReadOutcome, Record, RecordReader};
use crate::{BadRow, DataError, ROW_COLUMN};

/// The texts of a file, in file order, and the row ids that came with them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextColumn {
    /// The text column.
    pub texts: Vec<String>,
    /// The file's `row` column (as `prepare`'s splits carry: the row's line in the source
    /// CSV), when it has one, so that results join back to their source.
    pub rows: Option<Vec<u64>>,
}

/// Reads column `column` of a `.parquet` file or of a UTF-8 CSV with a header (any other
/// extension), in file order, with the `row` column when there is one; a raw Sentiment140
/// CSV (no header, six fields, Windows-1252) gives its text field, as `prepare` reads it. A
/// malformed CSV row, a null or a `row` value that is not a non-negative integer is an error
/// naming it.
pub fn read_text_column(path: &Path, column: &str) -> Result<TextColumn, DataError> {
    if path.extension().is_some_and(|e| e == "parquet") {
        read_parquet_column(path, column)
    } else {
        read_csv_column(path, column)
    }
}

fn read_csv_column(path: &Path, column: &str) -> Result<TextColumn, DataError> {
    let file = File::open(path).map_err(DataError::io(path))?;
    let mut reader = RecordReader::new(BufReader::new(file));
    let mut record = Record::default();
    let bad_row = |line, problem| DataError::BadTextRow {
        path: path.to_path_buf(),
        line,
        problem,
    };
    let names: Vec<String> = match reader
        .read_record(&mut record)
        .map_err(DataError::io(path))?
    {
        ReadOutcome::End => {
            return Err(DataError::EmptyInput {
                path: path.to_path_buf(),
            });
        }
        ReadOutcome::Malformed { line, error } => return Err(bad_row(line, error.into())),
        ReadOutcome::Record => (0..record.len())
            .map(|i| String::from_utf8_lossy(record.field(i)).trim().to_string())
            .collect(),
    };
    let first: Vec<&[u8]> = (0..record.len()).map(|i| record.field(i)).collect();
    if !names.iter().any(|n| n == column)
        && crate::detect_format(&first, column, "\0") == Ok(crate::InputFormat::Raw)
    {
        let texts = read_raw_texts(path, &mut reader, &mut record)?;
        return Ok(TextColumn { texts, rows: None });
    }
    let index = names
        .iter()
        .position(|n| n == column)
        .ok_or_else(|| DataError::MissingColumn {
            path: path.to_path_buf(),
            column: column.into(),
            found: crate::excerpt(&names.join(", ")),
        })?;
    let row_index = names.iter().position(|n| n == ROW_COLUMN);
    let mut out = TextColumn {
        texts: Vec::new(),
        rows: row_index.map(|_| Vec::new()),
    };
    loop {
        match reader
            .read_record(&mut record)
            .map_err(DataError::io(path))?
        {
            ReadOutcome::End => return Ok(out),
            ReadOutcome::Malformed { line, error } => return Err(bad_row(line, error.into())),
            ReadOutcome::Record if record.len() != names.len() => {
                let problem = BadRow::ColumnCount {
                    expected: names.len(),
                    found: record.len(),
                };
                return Err(bad_row(record.line, problem));
            }
            ReadOutcome::Record => {
                let text = String::from_utf8(record.field(index).to_vec()).map_err(|_| {
                    bad_row(
                        record.line,
                        BadRow::InvalidUtf8 {
                            column: column.into(),
                        },
                    )
                })?;
                out.texts.push(text);
                if let (Some(i), Some(rows)) = (row_index, out.rows.as_mut()) {
                    let field = String::from_utf8_lossy(record.field(i));
                    let id = field.trim().parse().map_err(|_| {
                        bad_row(record.line, BadRow::BadRowId(crate::excerpt(&field)))
                    })?;
                    rows.push(id);
                }
            }
        }
    }
}

/// The text field of a raw Sentiment140 file whose first record is in `record`.
fn read_raw_texts<R: std::io::BufRead>(
    path: &Path,
    reader: &mut RecordReader<R>,
    record: &mut Record,
) -> Result<Vec<String>, DataError> {
    use crate::format::{RAW_COLUMNS, RAW_TEXT};
    let mut texts = Vec::new();
    loop {
        if record.len() != RAW_COLUMNS {
            return Err(DataError::BadTextRow {
                path: path.to_path_buf(),
                line: record.line,
                problem: BadRow::ColumnCount {
                    expected: RAW_COLUMNS,
                    found: record.len(),
                },
            });
        }
        texts.push(crate::decode_cp1252(record.field(RAW_TEXT)));
        match reader.read_record(record).map_err(DataError::io(path))? {
            ReadOutcome::End => return Ok(texts),
            ReadOutcome::Malformed { line, error } => {
                return Err(DataError::BadTextRow {
                    path: path.to_path_buf(),
                    line,
                    problem: error.into(),
                });
            }
            ReadOutcome::Record => {}
        }
    }
}

fn read_parquet_column(path: &Path, column: &str) -> Result<TextColumn, DataError> {
    let parquet_error = |source| DataError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let bad = |detail: String| DataError::BadSplitFile {
        path: path.to_path_buf(),
        detail,
    };
    let file = File::open(path).map_err(DataError::io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_error)?
        .build()
        .map_err(parquet_error)?;
    let mut texts = Vec::new();
    let mut rows: Option<Vec<u64>> = None;
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        if let Some(ids) = batch.column_by_name(ROW_COLUMN) {
            if ids.null_count() > 0 {
                return Err(bad(format!("`{ROW_COLUMN}` has null values")));
            }
            let rows = rows.get_or_insert_with(Vec::new);
            match ids.data_type() {
                DataType::UInt64 => rows.extend(ids.as_primitive::<UInt64Type>().values()),
                DataType::Int64 => {
                    for &id in ids.as_primitive::<Int64Type>().values() {
                        rows.push(u64::try_from(id).map_err(|_| {
                            bad(format!("`{ROW_COLUMN}` holds {id}, not a row id"))
                        })?);
                    }
                }
                other => {
                    return Err(bad(format!(
                        "`{ROW_COLUMN}` has type {other}, not an integer"
                    )));
                }
            }
        }
        let array = batch
            .column_by_name(column)
            .ok_or_else(|| bad(format!("no `{column}` column")))?;
        if array.null_count() > 0 {
            return Err(bad(format!("`{column}` has null values")));
        }
        if let Some(strings) = array.as_any().downcast_ref::<StringArray>() {
            texts.extend(strings.iter().map(|s| s.unwrap_or_default().to_string()));
        } else if let Some(strings) = array.as_any().downcast_ref::<LargeStringArray>() {
            texts.extend(strings.iter().map(|s| s.unwrap_or_default().to_string()));
        } else {
            return Err(bad(format!(
                "`{column}` has type {}, not a string",
                array.data_type()
            )));
        }
    }
    Ok(TextColumn { texts, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_text_of_a_raw_sentiment140_file() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("raw.csv");
        let mut bytes = b"\"0\",\"1\",\"Mon\",\"NO_QUERY\",\"u\",\"caf\xe9 &amp; more\"\n".to_vec();
        bytes.extend_from_slice(b"\"4\",\"2\",\"Mon\",\"NO_QUERY\",\"v\",\"fine\"\n");
        std::fs::write(&csv, bytes).unwrap();
        let read = read_text_column(&csv, "text").unwrap();
        assert_eq!(read.texts, ["café &amp; more", "fine"]);
        assert_eq!(read.rows, None);
        std::fs::write(
            &csv,
            "\"0\",\"1\",\"Mon\",\"NO_QUERY\",\"u\",\"a\"\n\"4\",\"2\"\n",
        )
        .unwrap();
        let err = read_text_column(&csv, "text").unwrap_err();
        assert!(
            err.to_string().contains("raw.csv:2: expected 6 columns"),
            "{err}"
        );
    }

    #[test]
    fn reads_csv_and_parquet_columns() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("in.csv");
        std::fs::write(&csv, "id,text\n1,\"hello, world\"\n2,bye\n").unwrap();
        let read = read_text_column(&csv, "text").unwrap();
        assert_eq!(read.texts, ["hello, world", "bye"]);
        assert_eq!(read.rows, None, "only a column named `row` is a row id");
        let err = read_text_column(&csv, "tweet").unwrap_err();
        assert!(
            err.to_string()
                .contains("no `tweet` column (found: id, text)"),
            "{err}"
        );

        std::fs::write(&csv, "row,text\n17,a\n5,b\n").unwrap();
        assert_eq!(
            read_text_column(&csv, "text").unwrap().rows,
            Some(vec![17, 5])
        );
        std::fs::write(&csv, "row,text\n17,a\nx7,b\n").unwrap();
        let err = read_text_column(&csv, "text").unwrap_err();
        assert!(
            err.to_string()
                .contains("in.csv:3: column `row` holds \"x7\", not a non-negative integer"),
            "{err}"
        );

        let parquet = dir.path().join("split.parquet");
        let mut writer = crate::SplitWriter::create(&parquet).unwrap();
        writer.push(41, "from parquet", 0).unwrap();
        writer.push(3, "and more", 1).unwrap();
        let (temp, target) = writer.finish().unwrap();
        std::fs::rename(temp, target).unwrap();
        let read = read_text_column(&parquet, "text").unwrap();
        assert_eq!(read.texts, ["from parquet", "and more"]);
        assert_eq!(read.rows, Some(vec![41, 3]));
        assert!(read_text_column(&parquet, "label").is_err());
    }
}
