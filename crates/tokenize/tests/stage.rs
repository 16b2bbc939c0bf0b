//! The tokenize stage: hub cache resolution, training on the split, the token cache, errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use sentiment_data::{PrepareConfig, Split, SplitWriter, prepare, read_split};
use sentiment_tokenize::{
    BpeTrainingConfig, HubSettings, RobertaTokenizer, TokenizeError, read_tokenized,
    tokenize_splits, train_on_split,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

const SMALL: BpeTrainingConfig = BpeTrainingConfig {
    vocab_size: 400,
    min_frequency: 2,
};

fn prepared(seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PrepareConfig::new(fixtures().join("sentiment140/sample.csv"), dir.path());
    config.seed = seed;
    config.sample = Some(2_000);
    prepare(&config, &mut |_| {}).unwrap();
    dir
}

fn encode_all(dir: &Path, tokenizer: &RobertaTokenizer) -> Vec<bool> {
    tokenize_splits(dir, tokenizer, "test", &mut |_, _, _| {})
        .unwrap()
        .iter()
        .map(|o| o.reused)
        .collect()
}

#[test]
fn trained_tokenizer_and_token_files_are_cached_and_invalidated() {
    let data = prepared(734);
    let (tokenizer, reused) = train_on_split(data.path(), &SMALL, 64).unwrap();
    assert!(!reused);
    assert_eq!(tokenizer.vocab_size(), 400);
    assert_eq!(tokenizer.special_tokens().pad, 1);
    let (again, reused) = train_on_split(data.path(), &SMALL, 64).unwrap();
    assert!(reused);
    assert_eq!(again.content_hash(), tokenizer.content_hash());
    // Other training settings: trained anew.
    let other = BpeTrainingConfig {
        vocab_size: 450,
        ..SMALL
    };
    let (retrained, reused) = train_on_split(data.path(), &other, 64).unwrap();
    assert!(!reused);
    assert_ne!(retrained.content_hash(), tokenizer.content_hash());

    assert_eq!(encode_all(data.path(), &tokenizer), [false, false, false]);
    assert_eq!(encode_all(data.path(), &tokenizer), [true, true, true]);

    // The token file holds exactly what encoding the split gives.
    let split = read_split(&data.path().join("train.parquet")).unwrap();
    let tokens = read_tokenized(&data.path().join("train.tokens.parquet")).unwrap();
    let expected = tokenizer.encode_batch(&split.texts).unwrap();
    let expected = sentiment_tokenize::TokenizedRows::from_padded(
        64,
        tokenizer.special_tokens().pad,
        split.rows.clone(),
        split.labels.clone(),
        &expected.input_ids,
        &expected.attention_mask,
    );
    assert_eq!(tokens, expected);
    assert_eq!(tokens.labels, split.labels);
    assert_eq!(tokens.rows, split.rows);
    assert_eq!(tokens.max_length, 64);

    // A new max length or tokenizer invalidates everything.
    let shorter = RobertaTokenizer::from_folder(&data.path().join("tokenizer"), 32).unwrap();
    assert_eq!(encode_all(data.path(), &shorter), [false, false, false]);
    assert_eq!(encode_all(data.path(), &retrained), [false, false, false]);
    assert_eq!(encode_all(data.path(), &retrained), [true, true, true]);

    // A changed split invalidates that split only.
    let mut writer = SplitWriter::create(&data.path().join("validation.parquet")).unwrap();
    writer.push(7, "a brand new row", 1).unwrap();
    let (temp, target) = writer.finish().unwrap();
    std::fs::rename(temp, target).unwrap();
    assert_eq!(encode_all(data.path(), &retrained), [true, false, true]);
    let tokens = read_tokenized(&data.path().join("validation.tokens.parquet")).unwrap();
    assert_eq!(tokens.len(), 1);

    // A deleted token file is rebuilt.
    std::fs::remove_file(data.path().join("test.tokens.parquet")).unwrap();
    assert_eq!(encode_all(data.path(), &retrained), [true, true, false]);
}

#[test]
fn hub_ids_resolve_through_the_cache_layout_offline() {
    let cache = tempfile::tempdir().unwrap();
    let revision = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.path().join("models--FacebookAI--roberta-base");
    let snapshot = repo.join("snapshots").join(revision);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), revision).unwrap();
    for file in ["tokenizer.json", "vocab.json", "merges.txt"] {
        std::fs::copy(
            fixtures().join("tokenize/pretrained").join(file),
            snapshot.join(file),
        )
        .unwrap();
    }
    let settings = HubSettings {
        cache_dir: cache.path().to_path_buf(),
        offline: true,
    };
    let from_hub =
        RobertaTokenizer::from_pretrained("FacebookAI/roberta-base", 64, &settings).unwrap();
    let from_folder =
        RobertaTokenizer::from_folder(&fixtures().join("tokenize/pretrained"), 64).unwrap();
    assert_eq!(from_hub.content_hash(), from_folder.content_hash());
    // An explicit revision resolves to the same snapshot.
    let pinned = RobertaTokenizer::from_pretrained(
        &format!("FacebookAI/roberta-base@{revision}"),
        64,
        &settings,
    )
    .unwrap();
    assert_eq!(pinned.content_hash(), from_folder.content_hash());

    let err = RobertaTokenizer::from_pretrained("roberta-large", 64, &settings).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("roberta-large"), "{message}");
    assert!(message.contains("HF_HUB_OFFLINE"), "{message}");
}

#[test]
fn bad_tokenizer_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = RobertaTokenizer::from_folder(dir.path(), 64).unwrap_err();
    assert!(matches!(err, TokenizeError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("vocab.json"), "{err}");

    std::fs::write(dir.path().join("tokenizer.json"), "{ not json").unwrap();
    let err = RobertaTokenizer::from_folder(dir.path(), 64).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    // A vocabulary without RoBERTa's special tokens.
    let plain = tempfile::tempdir().unwrap();
    std::fs::write(
        plain.path().join("vocab.json"),
        r#"{"a": 0, "b": 1, "ab": 2}"#,
    )
    .unwrap();
    std::fs::write(plain.path().join("merges.txt"), "#version: 0.2\na b\n").unwrap();
    let err = RobertaTokenizer::from_folder(plain.path(), 64).unwrap_err();
    assert!(
        matches!(err, TokenizeError::MissingSpecialToken { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("</s>"), "{err}");

    let err =
        RobertaTokenizer::from_folder(&fixtures().join("tokenize/pretrained"), 1).unwrap_err();
    assert!(err.to_string().contains("max_length 1"), "{err}");

    let err = RobertaTokenizer::train(
        &["a".to_string()],
        &BpeTrainingConfig {
            vocab_size: 10,
            min_frequency: 1,
        },
        64,
    )
    .unwrap_err();
    assert!(err.to_string().contains("vocab size 10"), "{err}");
}

#[test]
fn a_split_without_a_text_column_is_an_error_naming_it() {
    let data = prepared(1);
    let path = data.path().join("test.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("row", DataType::UInt64, false),
        Field::new("label", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(UInt64Array::from(vec![1u64])),
            Arc::new(Int64Array::from(vec![0i64])),
        ],
    )
    .unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None)
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let tokenizer =
        RobertaTokenizer::from_folder(&fixtures().join("tokenize/trained"), 64).unwrap();
    let err = tokenize_splits(data.path(), &tokenizer, "t", &mut |_, _, _| {}).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("test.parquet"), "{message}");
    assert!(message.contains("no `text` column"), "{message}");
    assert!(Split::ALL.len() == 3);
}

#[test]
fn tokenizing_before_preparing_says_what_to_run() {
    let empty = tempfile::tempdir().unwrap();
    let tokenizer =
        RobertaTokenizer::from_folder(&fixtures().join("tokenize/trained"), 64).unwrap();
    let err = tokenize_splits(empty.path(), &tokenizer, "t", &mut |_, _, _| {}).unwrap_err();
    assert!(err.to_string().contains("cargo xtask prepare"), "{err}");
    let err = train_on_split(empty.path(), &SMALL, 64).unwrap_err();
    assert!(err.to_string().contains("train.parquet"), "{err}");
}
