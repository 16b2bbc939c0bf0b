//! Reading one text column from a user's CSV or Parquet file (for prediction and pre-training).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use arrow_array::{Array, LargeStringArray, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::csv_reader::{ReadOutcome, Record, RecordReader};
use crate::{BadRow, DataError};

/// Reads column `column` of a `.parquet` file or of a UTF-8 CSV with a header (any other
/// extension), in file order; a raw Sentiment140 CSV (no header, six fields, Windows-1252)
/// gives its text field, as `prepare` reads it. A malformed CSV row or a null is an error
/// naming it.
pub fn read_text_column(path: &Path, column: &str) -> Result<Vec<String>, DataError> {
    if path.extension().is_some_and(|e| e == "parquet") {
        read_parquet_column(path, column)
    } else {
        read_csv_column(path, column)
    }
}

fn read_csv_column(path: &Path, column: &str) -> Result<Vec<String>, DataError> {
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
        return read_raw_texts(path, &mut reader, &mut record);
    }
    let index = names
        .iter()
        .position(|n| n == column)
        .ok_or_else(|| DataError::MissingColumn {
            path: path.to_path_buf(),
            column: column.into(),
            found: crate::excerpt(&names.join(", ")),
        })?;
    let mut texts = Vec::new();
    loop {
        match reader
            .read_record(&mut record)
            .map_err(DataError::io(path))?
        {
            ReadOutcome::End => return Ok(texts),
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
                texts.push(text);
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

fn read_parquet_column(path: &Path, column: &str) -> Result<Vec<String>, DataError> {
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
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
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
    Ok(texts)
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
        assert_eq!(
            read_text_column(&csv, "text").unwrap(),
            ["café &amp; more", "fine"]
        );
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
        assert_eq!(
            read_text_column(&csv, "text").unwrap(),
            ["hello, world", "bye"]
        );
        let err = read_text_column(&csv, "tweet").unwrap_err();
        assert!(
            err.to_string()
                .contains("no `tweet` column (found: id, text)"),
            "{err}"
        );

        let parquet = dir.path().join("split.parquet");
        let mut writer = crate::SplitWriter::create(&parquet).unwrap();
        writer.push(1, "from parquet", 0).unwrap();
        let (temp, target) = writer.finish().unwrap();
        std::fs::rename(temp, target).unwrap();
        assert_eq!(
            read_text_column(&parquet, "text").unwrap(),
            ["from parquet"]
        );
        assert!(read_text_column(&parquet, "label").is_err());
    }
}
