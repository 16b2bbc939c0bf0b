//! The prepare stage: CSV in, three Parquet splits and a manifest out, in bounded memory.
//!
//! Two streaming passes over the input. The first validates every row, collects each row's
//! label (and a 128-bit hash of its text when de-duplicating) and hashes the file; the sample and
//! the split are then decided from labels alone; the second pass streams the rows again and writes
//! each to its split. Only a few bytes per row are ever held, never the texts.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::read::MultiGzDecoder;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::DataError;
use crate::csv_reader::{ReadOutcome, Record, RecordReader};
use crate::error::BadRow;
use crate::format::{self, InputFormat, TextEncoding};
use crate::manifest::{
    BadRowPolicy, ClassInfo, InputSummary, MANIFEST_FILE, MANIFEST_VERSION, Manifest, SplitSummary,
};
use crate::normalize::Normalization;
use crate::parquet_io::SplitWriter;
use crate::split::{Split, SplitRatios, stratified_sample, stratified_split};

/// Settings of one prepare run. [`PrepareConfig::new`] gives the notebook's defaults.
#[derive(Debug, Clone)]
pub struct PrepareConfig {
    /// The CSV (optionally `.gz`) to read.
    pub input: PathBuf,
    /// Folder that receives the splits and the manifest (created if missing).
    pub out_dir: PathBuf,
    /// Force a layout instead of detecting it from the first line.
    pub format: Option<InputFormat>,
    /// Force an encoding instead of the layout's own (Windows-1252 raw, UTF-8 cleaned).
    pub encoding: Option<TextEncoding>,
    /// Text column of a cleaned file (`text`).
    pub text_column: String,
    /// Label column of a cleaned file (`sentiment`).
    pub label_column: String,
    /// Keep raw neutral rows (polarity 2) as a third class instead of dropping them.
    pub keep_neutral: bool,
    /// Text normalisation (none by default).
    pub normalization: Normalization,
    /// Remove exact duplicate texts, and every copy of a text seen with different labels.
    pub dedup: bool,
    /// Keep a stratified random sample of this many rows.
    pub sample: Option<usize>,
    /// Seed of the sample and the split (734, the notebook's `random_state`).
    pub seed: u64,
    /// Split ratios (70/15/15).
    pub ratios: SplitRatios,
    /// What to do with malformed rows.
    pub on_bad_row: BadRowPolicy,
    /// Most bytes one record may hold: a longer one is a malformed row (`bad_row_too_long`),
    /// named by its line and never held in memory whole.
    pub max_record_bytes: usize,
}

impl PrepareConfig {
    /// Defaults: detect the format, no normalisation, no de-duplication, all rows, seed 734,
    /// 70/15/15, stop on the first malformed row.
    pub fn new(input: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        Self {
            input: input.into(),
            out_dir: out_dir.into(),
            format: None,
            encoding: None,
            text_column: "text".into(),
            label_column: "sentiment".into(),
            keep_neutral: false,
            normalization: Normalization::default(),
            dedup: false,
            sample: None,
            seed: 734,
            ratios: SplitRatios::default(),
            on_bad_row: BadRowPolicy::Error,
            max_record_bytes: crate::DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

/// Progress of a long pass, reported after every batch.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// 1 (validate and count) or 2 (write).
    pub pass: u8,
    /// Records read so far in this pass.
    pub rows: u64,
    /// Input bytes consumed so far (compressed bytes for `.gz`).
    pub bytes: u64,
    /// Input size in bytes.
    pub total_bytes: u64,
}

/// Rows decoded and normalised together on the thread pool.
const BATCH_ROWS: usize = 16 * 1024;

/// Where the label and the text are in a record.
#[derive(Debug, Clone)]
struct Layout {
    format: InputFormat,
    encoding: TextEncoding,
    has_header: bool,
    columns: usize,
    label_index: usize,
    text_index: usize,
    text_name: String,
    label_name: String,
}

/// A well-formed record's label value and line, before any filtering.
#[derive(Debug, Clone, Copy)]
struct GoodRow {
    line: u64,
    label_value: i64,
}

/// Runs the prepare stage. On error, nothing is left in `out_dir` (temporary files removed, an
/// earlier run's outputs untouched unless the new ones were complete).
pub fn prepare(
    config: &PrepareConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<Manifest, DataError> {
    let ratios = SplitRatios::new(
        config.ratios.train,
        config.ratios.validation,
        config.ratios.test,
    )?;
    let path = config.input.as_path();
    let total_bytes = std::fs::metadata(path).map_err(DataError::io(path))?.len();
    let gzip = is_gzip(path)?;
    let (layout, format_detected) = read_layout(config, gzip)?;

    // Pass 1: validate, count and collect labels, hashing the file on the other core meanwhile.
    let (pass1, sha256) = std::thread::scope(|scope| {
        let hasher = scope.spawn(|| sha256_file(path));
        let pass1 = first_pass(config, &layout, gzip, total_bytes, progress);
        let sha256 = hasher.join().expect("hashing thread does not panic");
        (pass1, sha256)
    });
    let mut pass1 = pass1?;
    let sha256 = sha256?;
    let rows_read = pass1.rows.len() as u64 + pass1.bad_rows;

    let classes = class_table(&layout, config.keep_neutral, &pass1.rows);
    let class_of: HashMap<i64, u32> = classes.iter().map(|c| (c.value, c.id)).collect();

    // Which well-formed rows survive the filters, and their class ids.
    let mut keep: Vec<Option<u32>> = pass1
        .rows
        .iter()
        .map(|r| class_of.get(&r.label_value).copied())
        .collect();
    let neutral = keep.iter().filter(|k| k.is_none()).count() as u64;
    add_count(&mut pass1.dropped, "neutral", neutral);
    for (slot, &empty) in keep.iter_mut().zip(&pass1.empty) {
        if empty && slot.is_some() {
            *slot = None;
            *pass1.dropped.entry("empty_text".into()).or_default() += 1;
        }
    }
    if config.dedup {
        drop_duplicates(&mut keep, &pass1.text_hashes, &mut pass1.dropped);
    }

    let kept: Vec<usize> = (0..keep.len()).filter(|&i| keep[i].is_some()).collect();
    let kept_labels: Vec<u32> = kept.iter().map(|&i| keep[i].expect("kept")).collect();
    let (chosen, chosen_labels) = match config.sample {
        None => (kept, kept_labels),
        Some(n) => {
            let picked = stratified_sample(&kept_labels, classes.len(), n, config.seed)?;
            add_count(&mut pass1.dropped, "not_sampled", (kept.len() - n) as u64);
            let rows = picked.iter().map(|&p| kept[p]).collect();
            let labels = picked.iter().map(|&p| kept_labels[p]).collect();
            (rows, labels)
        }
    };
    if chosen.is_empty() {
        return Err(DataError::NoRows {
            path: path.to_path_buf(),
            rows_read,
            dropped: format_counts(&pass1.dropped),
        });
    }
    let assignment = stratified_split(&chosen_labels, classes.len(), ratios, config.seed);
    // Per well-formed row: its split and class, or None when it is not written.
    let mut destination: Vec<Option<(Split, u32)>> = vec![None; pass1.rows.len()];
    for ((&row, &split), &label) in chosen.iter().zip(&assignment).zip(&chosen_labels) {
        destination[row] = Some((split, label));
    }
    let lines: Vec<u64> = pass1.rows.iter().map(|r| r.line).collect();
    drop(pass1.rows);

    std::fs::create_dir_all(&config.out_dir).map_err(DataError::io(&config.out_dir))?;
    let splits = second_pass(
        config,
        &layout,
        gzip,
        total_bytes,
        &lines,
        &destination,
        classes.len(),
        progress,
    )?;

    let manifest = Manifest {
        version: MANIFEST_VERSION,
        created_by: concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")).into(),
        input: InputSummary {
            path: path.display().to_string(),
            bytes: total_bytes,
            sha256,
            gzip,
        },
        format: layout.format,
        format_detected,
        encoding: layout.encoding,
        text_column: layout.text_name.clone(),
        label_column: layout.label_name.clone(),
        rows_read,
        blank_lines: pass1.blank_lines,
        rows_kept: chosen.len() as u64,
        rows_dropped: pass1.dropped,
        classes,
        keep_neutral: config.keep_neutral,
        normalization: config.normalization,
        dedup: config.dedup,
        sample: config.sample,
        seed: config.seed,
        ratios,
        on_bad_row: config.on_bad_row,
        max_record_bytes: config.max_record_bytes,
        splits,
    };
    manifest.save(&config.out_dir)?;
    Ok(manifest)
}

fn add_count(counts: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    if n > 0 {
        *counts.entry(key.into()).or_default() += n;
    }
}

fn format_counts(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    parts.join(", ")
}

/// Keeps the first copy of each text; drops every copy of a text seen with two labels.
fn drop_duplicates(
    keep: &mut [Option<u32>],
    text_hashes: &[u128],
    dropped: &mut BTreeMap<String, u64>,
) {
    // hash -> (first row, its label, conflicting?)
    let mut seen: HashMap<u128, (usize, u32, bool)> = HashMap::with_capacity(keep.len());
    for (row, &hash) in text_hashes.iter().enumerate() {
        let Some(label) = keep[row] else { continue };
        seen.entry(hash)
            .and_modify(|entry| entry.2 |= entry.1 != label)
            .or_insert((row, label, false));
    }
    for (row, &hash) in text_hashes.iter().enumerate() {
        if keep[row].is_none() {
            continue;
        }
        let (first, _, conflicting) = seen[&hash];
        if conflicting {
            keep[row] = None;
            *dropped.entry("conflicting_labels".into()).or_default() += 1;
        } else if first != row {
            keep[row] = None;
            *dropped.entry("duplicate_text".into()).or_default() += 1;
        }
    }
}

/// Class ids: raw polarity 0/4 (and 2 when kept) in that order; cleaned values sorted.
fn class_table(layout: &Layout, keep_neutral: bool, rows: &[GoodRow]) -> Vec<ClassInfo> {
    let named = |values: &[(i64, &str)]| {
        values
            .iter()
            .enumerate()
            .map(|(id, &(value, name))| ClassInfo {
                id: id as u32,
                value,
                name: name.into(),
            })
            .collect()
    };
    match layout.format {
        InputFormat::Raw if keep_neutral => {
            named(&[(0, "negative"), (2, "neutral"), (4, "positive")])
        }
        InputFormat::Raw => named(&[(0, "negative"), (4, "positive")]),
        InputFormat::Cleaned => {
            let mut values: Vec<i64> = rows.iter().map(|r| r.label_value).collect();
            values.sort_unstable();
            values.dedup();
            if values == [0, 1] {
                return named(&[(0, "negative"), (1, "positive")]);
            }
            values
                .iter()
                .enumerate()
                .map(|(id, &value)| ClassInfo {
                    id: id as u32,
                    value,
                    name: format!("label_{value}"),
                })
                .collect()
        }
    }
}

fn is_gzip(path: &Path) -> Result<bool, DataError> {
    let mut magic = [0u8; 2];
    let mut file = File::open(path).map_err(DataError::io(path))?;
    let n = file.read(&mut magic).map_err(DataError::io(path))?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

/// SHA-256 of a file's bytes, lower-case hex (streamed, 1 MiB at a time).
pub fn sha256_file(path: &Path) -> Result<String, DataError> {
    let mut file = File::open(path).map_err(DataError::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(DataError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Counts the compressed bytes read, for progress.
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The most a compressed byte of a `.gz` input may decompress to, and a fixed allowance on top:
/// text compresses 3-10x (Sentiment140 about 3x), so a stream past this is a gzip bomb (whose
/// rows' bookkeeping would grow with it), not tweets. It bounds what a compressed input can
/// claim by its own size.
pub const MAX_GZIP_RATIO: u64 = 100;
/// The allowance on top of [`MAX_GZIP_RATIO`] times the compressed size, in bytes.
pub const GZIP_MARGIN: u64 = 64 << 20;

/// Records of the (possibly decompressed) input.
type InputRecords = RecordReader<Box<dyn BufRead + Send>>;

fn open_records(
    path: &Path,
    gzip: bool,
    max_record_bytes: usize,
) -> Result<(InputRecords, Arc<AtomicU64>), DataError> {
    let file = File::open(path).map_err(DataError::io(path))?;
    let count = Arc::new(AtomicU64::new(0));
    let counted = CountingReader {
        inner: file,
        count: count.clone(),
    };
    let input: Box<dyn BufRead + Send> = if gzip {
        let compressed = BufReader::with_capacity(1 << 20, counted);
        Box::new(BufReader::with_capacity(
            1 << 20,
            MultiGzDecoder::new(compressed),
        ))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, counted))
    };
    Ok((
        RecordReader::new(input).with_max_record_bytes(max_record_bytes),
        count,
    ))
}

/// Reads the first record to detect the format and find the columns.
fn read_layout(config: &PrepareConfig, gzip: bool) -> Result<(Layout, bool), DataError> {
    let path = config.input.as_path();
    let (mut reader, _) = open_records(path, gzip, config.max_record_bytes)?;
    let mut record = Record::default();
    let first: Vec<Vec<u8>> = match reader
        .read_record(&mut record)
        .map_err(DataError::io(path))?
    {
        ReadOutcome::End => {
            return Err(DataError::EmptyInput {
                path: path.to_path_buf(),
            });
        }
        ReadOutcome::Malformed { line, error } => {
            return Err(DataError::BadRow {
                path: path.to_path_buf(),
                line,
                problem: error.into(),
            });
        }
        ReadOutcome::Record => (0..record.len())
            .map(|i| record.field(i).to_vec())
            .collect(),
    };
    let fields: Vec<&[u8]> = first.iter().map(Vec::as_slice).collect();
    let (format, detected) = match config.format {
        Some(format) => (format, false),
        None => {
            let format = format::detect_format(&fields, &config.text_column, &config.label_column)
                .map_err(|detail| DataError::UnknownFormat {
                    path: path.to_path_buf(),
                    detail,
                })?;
            (format, true)
        }
    };
    let encoding = config.encoding.unwrap_or(format.default_encoding());
    let layout = match format {
        InputFormat::Raw => Layout {
            format,
            encoding,
            has_header: false,
            columns: format::RAW_COLUMNS,
            label_index: format::RAW_POLARITY,
            text_index: format::RAW_TEXT,
            text_name: "text".into(),
            label_name: "polarity".into(),
        },
        InputFormat::Cleaned => {
            let names: Vec<String> = fields
                .iter()
                .map(|f| String::from_utf8_lossy(f).trim().to_string())
                .collect();
            let find = |column: &str| {
                names
                    .iter()
                    .position(|n| n == column)
                    .ok_or_else(|| DataError::MissingColumn {
                        path: path.to_path_buf(),
                        column: column.into(),
                        found: crate::excerpt(&names.join(", ")),
                    })
            };
            Layout {
                format,
                encoding,
                has_header: true,
                columns: names.len(),
                label_index: find(&config.label_column)?,
                text_index: find(&config.text_column)?,
                text_name: config.text_column.clone(),
                label_name: config.label_column.clone(),
            }
        }
    };
    Ok((layout, detected))
}

/// Parses a record's label field; `Err` names the bad value.
fn parse_label(layout: &Layout, field: &[u8]) -> Result<i64, BadRow> {
    let text = std::str::from_utf8(field)
        .map_err(|_| BadRow::UnknownLabel(String::from_utf8_lossy(field).into_owned()))?
        .trim();
    let value: Option<i64> = text.parse().ok();
    match (layout.format, value) {
        (InputFormat::Raw, Some(v @ (0 | 2 | 4))) => Ok(v),
        (InputFormat::Cleaned, Some(v)) => Ok(v),
        _ => Err(BadRow::UnknownLabel(text.to_string())),
    }
}

fn decode_text(
    layout: &Layout,
    bytes: &[u8],
    normalization: &Normalization,
) -> Result<String, BadRow> {
    let text = match layout.encoding {
        TextEncoding::Cp1252 => format::decode_cp1252(bytes),
        TextEncoding::Utf8 => {
            String::from_utf8(bytes.to_vec()).map_err(|_| BadRow::InvalidUtf8 {
                column: layout.text_name.clone(),
            })?
        }
    };
    Ok(match normalization.apply(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(normalized) => normalized,
    })
}

/// Streams the well-formed rows of the input, in batches, with their decoded and normalised
/// texts. Malformed rows are errors or are counted in `bad_counts`, per the policy.
struct RowStream<'a> {
    config: &'a PrepareConfig,
    layout: &'a Layout,
    gzip: bool,
    total_bytes: u64,
    pass: u8,
}

struct StreamTotals {
    bad_rows: u64,
    blank_lines: u64,
}

/// Rows read but not yet decoded: flushed as one parallel batch.
#[derive(Default)]
struct PendingRows {
    rows: Vec<GoodRow>,
    raw_texts: Vec<Vec<u8>>,
}

impl RowStream<'_> {
    fn run(
        &self,
        bad_counts: &mut BTreeMap<String, u64>,
        progress: &mut dyn FnMut(Progress),
        mut on_batch: impl FnMut(&[GoodRow], Vec<String>) -> Result<(), DataError>,
    ) -> Result<StreamTotals, DataError> {
        let path = self.config.input.as_path();
        let (mut reader, bytes) = open_records(path, self.gzip, self.config.max_record_bytes)?;
        let mut record = Record::default();
        let mut pending = PendingRows::default();
        let mut records_seen = 0u64;
        let bad_before: u64 = bad_counts.values().sum();
        let mut skip_header = self.layout.has_header;
        let decompressed_limit = if self.gzip {
            let compressed = std::fs::metadata(path).map_err(DataError::io(path))?.len();
            Some((
                compressed,
                compressed.saturating_mul(MAX_GZIP_RATIO) + GZIP_MARGIN,
            ))
        } else {
            None
        };

        loop {
            let outcome = reader
                .read_record(&mut record)
                .map_err(DataError::io(path))?;
            if let Some((compressed, limit)) = decompressed_limit
                && reader.bytes_read() > limit
            {
                return Err(DataError::DecompressionBomb {
                    path: path.to_path_buf(),
                    compressed,
                    ratio: MAX_GZIP_RATIO,
                    margin_mib: GZIP_MARGIN >> 20,
                });
            }
            let problem = match outcome {
                ReadOutcome::End => break,
                ReadOutcome::Malformed { line, error } => Some((line, BadRow::from(error))),
                ReadOutcome::Record if skip_header => {
                    skip_header = false;
                    continue;
                }
                ReadOutcome::Record if record.len() != self.layout.columns => Some((
                    record.line,
                    BadRow::ColumnCount {
                        expected: self.layout.columns,
                        found: record.len(),
                    },
                )),
                ReadOutcome::Record => {
                    match parse_label(self.layout, record.field(self.layout.label_index)) {
                        Ok(label_value) => {
                            pending.rows.push(GoodRow {
                                line: record.line,
                                label_value,
                            });
                            pending
                                .raw_texts
                                .push(record.field(self.layout.text_index).to_vec());
                            None
                        }
                        Err(problem) => Some((record.line, problem)),
                    }
                }
            };
            records_seen += 1;
            if let Some((line, problem)) = problem {
                // Earlier rows in the batch may hold an earlier error: report in line order.
                self.flush(&mut pending, bad_counts, &mut on_batch)?;
                self.bad_row(line, problem, bad_counts)?;
            }
            if pending.rows.len() >= BATCH_ROWS {
                self.flush(&mut pending, bad_counts, &mut on_batch)?;
                progress(Progress {
                    pass: self.pass,
                    rows: records_seen,
                    bytes: bytes.load(Ordering::Relaxed),
                    total_bytes: self.total_bytes,
                });
            }
        }
        self.flush(&mut pending, bad_counts, &mut on_batch)?;
        progress(Progress {
            pass: self.pass,
            rows: records_seen,
            bytes: self.total_bytes,
            total_bytes: self.total_bytes,
        });
        Ok(StreamTotals {
            bad_rows: bad_counts.values().sum::<u64>() - bad_before,
            blank_lines: reader.blank_lines(),
        })
    }

    /// An error under `--on-bad-row error`; counted by reason under `skip`.
    fn bad_row(
        &self,
        line: u64,
        problem: BadRow,
        bad_counts: &mut BTreeMap<String, u64>,
    ) -> Result<(), DataError> {
        match self.config.on_bad_row {
            BadRowPolicy::Error => Err(DataError::BadRow {
                path: self.config.input.clone(),
                line,
                problem,
            }),
            BadRowPolicy::Skip => {
                *bad_counts.entry(problem.reason_key().into()).or_default() += 1;
                Ok(())
            }
        }
    }

    /// Decodes and normalises the pending rows in parallel, then hands the good ones on.
    fn flush(
        &self,
        pending: &mut PendingRows,
        bad_counts: &mut BTreeMap<String, u64>,
        on_batch: &mut impl FnMut(&[GoodRow], Vec<String>) -> Result<(), DataError>,
    ) -> Result<(), DataError> {
        if pending.rows.is_empty() {
            return Ok(());
        }
        let normalization = self.config.normalization;
        let decoded: Vec<Result<String, BadRow>> = pending
            .raw_texts
            .par_iter()
            .map(|bytes| decode_text(self.layout, bytes, &normalization))
            .collect();
        pending.raw_texts.clear();
        let mut good_rows = Vec::with_capacity(pending.rows.len());
        let mut texts = Vec::with_capacity(pending.rows.len());
        for (row, text) in pending.rows.drain(..).zip(decoded) {
            match text {
                Ok(text) => {
                    good_rows.push(row);
                    texts.push(text);
                }
                Err(problem) => self.bad_row(row.line, problem, bad_counts)?,
            }
        }
        on_batch(&good_rows, texts)
    }
}

struct FirstPass {
    rows: Vec<GoodRow>,
    /// Per row: the text is empty (after normalisation).
    empty: Vec<bool>,
    /// Per row, when de-duplicating: a 128-bit hash of the text.
    text_hashes: Vec<u128>,
    dropped: BTreeMap<String, u64>,
    bad_rows: u64,
    blank_lines: u64,
}

fn first_pass(
    config: &PrepareConfig,
    layout: &Layout,
    gzip: bool,
    total_bytes: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<FirstPass, DataError> {
    let stream = RowStream {
        config,
        layout,
        gzip,
        total_bytes,
        pass: 1,
    };
    let mut rows = Vec::new();
    let mut empty = Vec::new();
    let mut text_hashes = Vec::new();
    let mut dropped = BTreeMap::new();
    let totals = stream.run(&mut dropped, progress, |batch, texts| {
        rows.extend_from_slice(batch);
        empty.extend(texts.iter().map(|t| t.trim().is_empty()));
        if config.dedup {
            text_hashes.extend(
                texts
                    .iter()
                    .map(|t| xxhash_rust::xxh3::xxh3_128(t.as_bytes())),
            );
        }
        Ok(())
    })?;
    Ok(FirstPass {
        rows,
        empty,
        text_hashes,
        dropped,
        bad_rows: totals.bad_rows,
        blank_lines: totals.blank_lines,
    })
}

#[allow(clippy::too_many_arguments)]
fn second_pass(
    config: &PrepareConfig,
    layout: &Layout,
    gzip: bool,
    total_bytes: u64,
    lines: &[u64],
    destination: &[Option<(Split, u32)>],
    num_classes: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<SplitSummary>, DataError> {
    let out = &config.out_dir;
    let mut writers = Vec::with_capacity(3);
    let mut summaries = Vec::with_capacity(3);
    for split in Split::ALL {
        let file = split.file_name();
        match SplitWriter::create(&out.join(&file)) {
            Ok(writer) => writers.push(writer),
            Err(e) => {
                discard(writers);
                return Err(e);
            }
        }
        summaries.push(SplitSummary {
            split,
            file,
            rows: 0,
            class_counts: vec![0; num_classes],
        });
    }
    let stream = RowStream {
        config,
        layout,
        gzip,
        total_bytes,
        pass: 2,
    };
    let mut index = 0usize;
    let result = stream.run(&mut BTreeMap::new(), progress, |batch, texts| {
        for (row, text) in batch.iter().zip(texts) {
            if lines.get(index) != Some(&row.line) {
                return Err(DataError::InputChanged {
                    path: config.input.clone(),
                    line: row.line,
                });
            }
            if let Some((split, label)) = destination[index] {
                writers[split.index()].push(row.line, &text, i64::from(label))?;
                let summary = &mut summaries[split.index()];
                summary.rows += 1;
                summary.class_counts[label as usize] += 1;
            }
            index += 1;
        }
        Ok(())
    });
    let result = result.and_then(|_| {
        if index != lines.len() {
            return Err(DataError::InputChanged {
                path: config.input.clone(),
                line: lines.get(index).copied().unwrap_or_default(),
            });
        }
        Ok(())
    });
    if let Err(e) = result {
        discard(writers);
        return Err(e);
    }
    // Close every file before moving any into place, so a failure leaves the old outputs.
    let mut finished = Vec::with_capacity(3);
    for writer in writers {
        match writer.finish() {
            Ok(paths) => finished.push(paths),
            Err(e) => {
                for (temp, _) in finished {
                    let _ = std::fs::remove_file(temp);
                }
                return Err(e);
            }
        }
    }
    // A stale manifest must not describe new split files.
    let manifest = out.join(MANIFEST_FILE);
    if manifest.exists() {
        std::fs::remove_file(&manifest).map_err(DataError::io(&manifest))?;
    }
    // Each split on disk before its name, and the names before the manifest that points at
    // them (written after this returns).
    for (temp, _) in &finished {
        crate::sync_path(temp).map_err(DataError::io(temp))?;
    }
    for (temp, final_path) in finished {
        std::fs::rename(&temp, &final_path).map_err(DataError::io(&final_path))?;
    }
    crate::sync_path(out).map_err(DataError::io(out))?;
    Ok(summaries)
}

fn discard(writers: Vec<SplitWriter>) {
    for writer in writers {
        writer.abandon();
    }
}
