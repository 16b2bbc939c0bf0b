//! The prepare stage end to end on the bundled fixtures and on small files made here.

use std::io::Write;
use std::path::{Path, PathBuf};

use sentiment_data::{
    BadRowPolicy, DataError, InputFormat, Manifest, Normalization, PrepareConfig, Split, SplitRows,
    prepare, read_split,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/sentiment140")
        .join(name)
}

fn run(config: &PrepareConfig) -> Result<Manifest, DataError> {
    prepare(config, &mut |_| {})
}

fn splits(dir: &Path) -> Vec<SplitRows> {
    Split::ALL
        .iter()
        .map(|s| read_split(&dir.join(format!("{}.parquet", s.name()))).unwrap())
        .collect()
}

/// The manifest accounts for every row, and the files hold what it says.
fn check_consistent(manifest: &Manifest, dir: &Path) {
    let dropped: u64 = manifest.rows_dropped.values().sum();
    assert_eq!(manifest.rows_read, manifest.rows_kept + dropped);
    let files = splits(dir);
    let mut lines = Vec::new();
    for (summary, rows) in manifest.splits.iter().zip(&files) {
        assert_eq!(summary.rows, rows.len() as u64);
        let mut counts = vec![0u64; manifest.classes.len()];
        for &label in &rows.labels {
            counts[label as usize] += 1;
        }
        assert_eq!(summary.class_counts, counts);
        lines.extend(rows.rows.iter().copied());
    }
    assert_eq!(lines.len() as u64, manifest.rows_kept);
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(
        lines.len() as u64,
        manifest.rows_kept,
        "a row is in two splits"
    );
}

#[test]
fn raw_sample_is_split_70_15_15_per_class() {
    let out = tempfile::tempdir().unwrap();
    let config = PrepareConfig::new(fixture("sample.csv"), out.path());
    let manifest = run(&config).unwrap();
    assert_eq!(manifest.format, InputFormat::Raw);
    assert!(manifest.format_detected);
    assert_eq!(manifest.rows_read, 8_000);
    let neutral = manifest.rows_dropped["neutral"];
    assert!(neutral > 0);
    assert_eq!(manifest.rows_kept, 8_000 - neutral);
    for class in 0..2 {
        let total: u64 = manifest.splits.iter().map(|s| s.class_counts[class]).sum();
        for (summary, ratio) in manifest.splits.iter().zip([0.7, 0.15, 0.15]) {
            let share = total as f64 * ratio;
            assert!((summary.class_counts[class] as f64 - share).abs() < 1.0);
        }
    }
    check_consistent(&manifest, out.path());
    assert_eq!(Manifest::load(out.path()).unwrap(), manifest);
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn same_seed_same_split_other_seed_other_split() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut config = PrepareConfig::new(fixture("sample.csv"), a.path());
    run(&config).unwrap();
    config.out_dir = b.path().to_path_buf();
    run(&config).unwrap();
    config.out_dir = c.path().to_path_buf();
    config.seed = 1;
    run(&config).unwrap();
    assert_eq!(splits(a.path()), splits(b.path()));
    assert_ne!(splits(a.path())[0].rows, splits(c.path())[0].rows);
}

#[test]
fn single_thread_pool_gives_the_same_split() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut config = PrepareConfig::new(fixture("sample.csv"), a.path());
    config.normalization = Normalization::all();
    run(&config).unwrap();
    config.out_dir = b.path().to_path_buf();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| run(&config)).unwrap();
    assert_eq!(splits(a.path()), splits(b.path()));
}

#[test]
fn gzip_input_gives_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("sample.csv.gz");
    let mut encoder =
        flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), Default::default());
    encoder
        .write_all(&std::fs::read(fixture("sample.csv")).unwrap())
        .unwrap();
    encoder.finish().unwrap();
    let (plain_out, gz_out) = (dir.path().join("plain"), dir.path().join("gz"));
    let plain = run(&PrepareConfig::new(fixture("sample.csv"), &plain_out)).unwrap();
    let zipped = run(&PrepareConfig::new(&gz, &gz_out)).unwrap();
    assert!(zipped.input.gzip && !plain.input.gzip);
    assert_eq!(zipped.splits, plain.splits);
    assert_eq!(splits(&plain_out), splits(&gz_out));
}

#[test]
fn a_gzip_bomb_is_refused_by_its_compressed_size() {
    // 192 MiB of identical raw rows: about 600 KiB compressed, so past 100x its size plus
    // the 64 MiB allowance well before its end.
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("bomb.csv.gz");
    let mut encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::best(),
    );
    let row = b"0,1,Mon Apr 06 22:19:45 PDT 2009,NO_QUERY,user,same text again\n";
    let block: Vec<u8> = row
        .iter()
        .copied()
        .cycle()
        .take(row.len() * 16384)
        .collect();
    for _ in 0..(192 << 20) / block.len() {
        encoder.write_all(&block).unwrap();
    }
    encoder.finish().unwrap();
    let compressed = std::fs::metadata(&gz).unwrap().len();
    assert!(compressed < 1 << 20, "{compressed}");
    let err = run(&PrepareConfig::new(&gz, dir.path().join("out"))).unwrap_err();
    assert!(matches!(err, DataError::DecompressionBomb { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("bomb.csv.gz: decompresses to more than 100 times"),
        "{err}"
    );
    assert!(!dir.path().join("out/manifest.json").exists());
}

#[test]
fn raw_awkward_rows_decode_as_windows_1252() {
    let out = tempfile::tempdir().unwrap();
    let manifest = run(&PrepareConfig::new(fixture("awkward_raw.csv"), out.path())).unwrap();
    assert_eq!(manifest.rows_read, 12);
    assert_eq!(manifest.rows_dropped["neutral"], 1);
    let texts: Vec<String> = splits(out.path())
        .into_iter()
        .flat_map(|s| s.texts)
        .collect();
    assert!(texts.contains(&"“smart quotes” and an ellipsis… it cost €5".to_string()));
    assert!(texts.contains(&"a tweet that\nspans two lines".to_string()));
    assert!(texts.iter().any(|t| t.contains("crème brûlée, \"best\"")));
    // Without normalisation, entities and spacing stay as written.
    assert!(texts.iter().any(|t| t.starts_with("I &lt;3")));
    assert!(texts.contains(&"   leading spaces and trailing   ".to_string()));
    check_consistent(&manifest, out.path());
}

#[test]
fn neutral_rows_can_be_kept_as_a_third_class() {
    let out = tempfile::tempdir().unwrap();
    let mut config = PrepareConfig::new(fixture("awkward_raw.csv"), out.path());
    config.keep_neutral = true;
    let manifest = run(&config).unwrap();
    let names: Vec<&str> = manifest.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["negative", "neutral", "positive"]);
    assert_eq!(manifest.rows_kept, 12);
    assert!(manifest.rows_dropped.is_empty());
    check_consistent(&manifest, out.path());
}

#[test]
fn cleaned_file_keeps_unicode_and_counts_empty_texts() {
    let out = tempfile::tempdir().unwrap();
    let manifest = run(&PrepareConfig::new(
        fixture("awkward_cleaned.csv"),
        out.path(),
    ))
    .unwrap();
    assert_eq!(manifest.format, InputFormat::Cleaned);
    assert_eq!(manifest.rows_read, 10);
    assert_eq!(manifest.rows_dropped["empty_text"], 1);
    let texts: Vec<String> = splits(out.path())
        .into_iter()
        .flat_map(|s| s.texts)
        .collect();
    for expected in [
        "I love this 😀🎉 so much",
        "今日は最悪の日だ",
        "ZWJ family 👨‍👩‍👧 and flags 🇧🇷🇯🇵",
    ] {
        assert!(texts.contains(&expected.to_string()), "{expected}");
    }
    check_consistent(&manifest, out.path());
}

#[test]
fn malformed_rows_are_errors_naming_the_line() {
    let out = tempfile::tempdir().unwrap();
    let err = run(&PrepareConfig::new(
        fixture("malformed_raw.csv"),
        out.path(),
    ))
    .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("malformed_raw.csv:2:"), "{message}");
    assert!(message.contains("expected 6 columns, found 5"), "{message}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn skipped_malformed_rows_are_counted_by_reason() {
    let out = tempfile::tempdir().unwrap();
    let mut config = PrepareConfig::new(fixture("malformed_raw.csv"), out.path());
    config.on_bad_row = BadRowPolicy::Skip;
    let manifest = run(&config).unwrap();
    assert_eq!(manifest.rows_read, 6);
    assert_eq!(manifest.rows_kept, 2);
    for reason in [
        "bad_row_column_count",
        "bad_row_unknown_label",
        "bad_row_text_after_closing_quote",
        "bad_row_unterminated_quote",
    ] {
        assert_eq!(manifest.rows_dropped[reason], 1, "{reason}");
    }
    let lines: Vec<u64> = splits(out.path())
        .into_iter()
        .flat_map(|s| s.rows)
        .collect();
    let mut lines = lines;
    lines.sort_unstable();
    assert_eq!(lines, [1, 5]);
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn invalid_utf8_in_a_cleaned_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "bad.csv",
        b"text,sentiment\nfine,1\ncaf\xe9,0\nalso fine,0\n",
    );
    let err = run(&PrepareConfig::new(&input, dir.path().join("out"))).unwrap_err();
    assert!(
        err.to_string()
            .contains("bad.csv:3: column `text` is not valid UTF-8"),
        "{err}"
    );
    let mut config = PrepareConfig::new(&input, dir.path().join("out"));
    config.on_bad_row = BadRowPolicy::Skip;
    let manifest = run(&config).unwrap();
    assert_eq!(manifest.rows_dropped["bad_row_invalid_utf8"], 1);
    assert_eq!(manifest.rows_kept, 2);
}

#[test]
fn a_record_past_the_byte_limit_is_named_and_skipped_whole() {
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(5000);
    let input = write(
        dir.path(),
        "long.csv",
        format!("text,sentiment\nfine,1\n{long},0\nalso fine,0\nbad,0\nok,1\n").as_bytes(),
    );
    let mut config = PrepareConfig::new(&input, dir.path().join("out"));
    config.max_record_bytes = 1000;
    let err = run(&config).unwrap_err();
    assert!(
        err.to_string()
            .contains("long.csv:3: the record is longer than the limit"),
        "{err}"
    );
    config.on_bad_row = BadRowPolicy::Skip;
    let manifest = run(&config).unwrap();
    assert_eq!(manifest.rows_dropped["bad_row_too_long"], 1);
    assert_eq!(manifest.rows_kept, 4);
    assert_eq!(manifest.max_record_bytes, 1000);
}

#[test]
fn bad_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let empty = write(dir.path(), "empty.csv", b"");
    let err = run(&PrepareConfig::new(&empty, &out)).unwrap_err();
    assert!(matches!(err, DataError::EmptyInput { .. }), "{err}");
    assert!(err.to_string().contains("empty.csv: the file is empty"));

    let blank = write(dir.path(), "blank.csv", b"\n\n");
    assert!(matches!(
        run(&PrepareConfig::new(&blank, &out)).unwrap_err(),
        DataError::EmptyInput { .. }
    ));

    let no_label = write(dir.path(), "nolabel.csv", b"text,score\nhi,1\n");
    let mut config = PrepareConfig::new(&no_label, &out);
    config.format = Some(InputFormat::Cleaned);
    let err = run(&config).unwrap_err();
    assert!(
        err.to_string()
            .contains("the header has no `sentiment` column (found: text, score)"),
        "{err}"
    );

    let unknown = write(dir.path(), "unknown.csv", b"a,b\n1,2\n");
    let err = run(&PrepareConfig::new(&unknown, &out)).unwrap_err();
    assert!(
        err.to_string().contains("cannot detect the format"),
        "{err}"
    );

    let missing = dir.path().join("does-not-exist.csv");
    let err = run(&PrepareConfig::new(&missing, &out)).unwrap_err();
    assert!(err.to_string().contains("does-not-exist.csv"), "{err}");

    let header_only = write(dir.path(), "header.csv", b"text,sentiment\n");
    let err = run(&PrepareConfig::new(&header_only, &out)).unwrap_err();
    assert!(matches!(err, DataError::NoRows { .. }), "{err}");

    let mut config = PrepareConfig::new(fixture("sample.csv"), &out);
    config.ratios.train = 0.9;
    assert!(matches!(
        run(&config).unwrap_err(),
        DataError::InvalidRatios(_)
    ));
    assert!(!out.exists(), "failed runs create nothing");
}

#[test]
fn failed_run_leaves_earlier_outputs_untouched() {
    let out = tempfile::tempdir().unwrap();
    let good = run(&PrepareConfig::new(fixture("sample.csv"), out.path())).unwrap();
    let before = splits(out.path());
    run(&PrepareConfig::new(
        fixture("malformed_raw.csv"),
        out.path(),
    ))
    .unwrap_err();
    assert_eq!(Manifest::load(out.path()).unwrap(), good);
    assert_eq!(splits(out.path()), before);
}

#[test]
fn stratified_sample_of_n_rows() {
    let out = tempfile::tempdir().unwrap();
    let mut config = PrepareConfig::new(fixture("sample.csv"), out.path());
    config.sample = Some(1_000);
    let manifest = run(&config).unwrap();
    assert_eq!(manifest.rows_kept, 1_000);
    assert_eq!(
        manifest.rows_dropped["not_sampled"],
        8_000 - manifest.rows_dropped["neutral"] - 1_000
    );
    assert_eq!(
        manifest.splits.iter().map(|s| s.rows).collect::<Vec<_>>(),
        [700, 150, 150]
    );
    check_consistent(&manifest, out.path());
    config.sample = Some(100_000);
    assert!(matches!(
        run(&config).unwrap_err(),
        DataError::SampleTooLarge { .. }
    ));
}

#[test]
fn dedup_drops_copies_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "dups.csv",
        b"text,sentiment\na,1\nb,0\na,1\nc,1\nc,0\nd,0\n  a  ,1\n",
    );
    let mut config = PrepareConfig::new(&input, dir.path().join("out"));
    config.dedup = true;
    let manifest = run(&config).unwrap();
    assert_eq!(manifest.rows_dropped["duplicate_text"], 1);
    assert_eq!(manifest.rows_dropped["conflicting_labels"], 2);
    assert_eq!(manifest.rows_kept, 4);
    // After whitespace normalisation "  a  " is a third copy of "a".
    config.normalization.whitespace = true;
    let manifest = run(&config).unwrap();
    assert_eq!(manifest.rows_dropped["duplicate_text"], 2);
    assert!(manifest.normalization.whitespace);
}

#[test]
fn cleaned_labels_map_to_dense_ids() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "stars.csv",
        b"text,sentiment\na,5\nb,1\nc,3\nd,5\ne,1\nf,x\n",
    );
    let err = run(&PrepareConfig::new(&input, dir.path().join("out"))).unwrap_err();
    assert!(
        err.to_string().contains("stars.csv:7: unknown label \"x\""),
        "{err}"
    );
    let mut config = PrepareConfig::new(&input, dir.path().join("out"));
    config.on_bad_row = BadRowPolicy::Skip;
    let manifest = run(&config).unwrap();
    let values: Vec<i64> = manifest.classes.iter().map(|c| c.value).collect();
    assert_eq!(values, [1, 3, 5]);
    assert_eq!(manifest.classes[2].name, "label_5");
}

#[test]
fn manifest_round_trips_and_rejects_other_versions() {
    let out = tempfile::tempdir().unwrap();
    let manifest = run(&PrepareConfig::new(fixture("awkward_raw.csv"), out.path())).unwrap();
    let json = serde_json::to_string(&manifest).unwrap();
    assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), manifest);
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value["version"] = 99.into();
    std::fs::write(out.path().join("manifest.json"), value.to_string()).unwrap();
    let err = Manifest::load(out.path()).unwrap_err();
    assert!(err.to_string().contains("manifest version 99"), "{err}");
}
