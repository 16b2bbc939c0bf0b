//! Our encodings equal `transformers.AutoTokenizer`'s, id for id, on awkward texts.
//!
//! Reference values: `fixtures/tokenize/reference.json`, written by
//! `fixtures/tokenize/generate_reference.py` from the committed tokenizer folders.

use std::path::{Path, PathBuf};

use sentiment_tokenize::RobertaTokenizer;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenize")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn rows<T: TryFrom<u64>>(value: &Value) -> Vec<Vec<T>>
where
    T::Error: std::fmt::Debug,
{
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| T::try_from(v.as_u64().unwrap()).unwrap())
                .collect()
        })
        .collect()
}

fn check(tokenizer_dir: &Path, reference_name: &str) {
    let reference = reference();
    let texts: Vec<String> = reference["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    for max_length in [64usize, 16] {
        let expected = &reference["encodings"][format!("{reference_name}/{max_length}")];
        let expected_ids: Vec<Vec<u32>> = rows(&expected["input_ids"]);
        let expected_mask: Vec<Vec<u8>> = rows(&expected["attention_mask"]);
        let tokenizer = RobertaTokenizer::from_folder(tokenizer_dir, max_length).unwrap();
        let batch = tokenizer.encode_batch(&texts).unwrap();
        assert_eq!(batch.len(), texts.len());
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(
                batch.ids(i),
                expected_ids[i].as_slice(),
                "{reference_name}, max_length {max_length}, text {i} {text:?}"
            );
            assert_eq!(
                batch.mask(i),
                expected_mask[i].as_slice(),
                "mask of text {i}"
            );
        }
        let long = texts.iter().filter(|t| t.len() > 400).count();
        assert!(
            batch.truncated >= long,
            "long texts are counted as truncated"
        );
    }
}

#[test]
fn pretrained_tokenizer_json_matches_transformers() {
    check(&fixtures().join("pretrained"), "pretrained");
}

#[test]
fn pretrained_vocab_and_merges_only_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        std::fs::copy(
            fixtures().join("pretrained").join(file),
            dir.path().join(file),
        )
        .unwrap();
    }
    check(dir.path(), "pretrained");
}

#[test]
fn tokenizer_trained_here_matches_transformers_loading_it() {
    check(&fixtures().join("trained"), "trained");
}

#[test]
fn a_saved_tokenizer_reloads_identically() {
    let original = RobertaTokenizer::from_folder(&fixtures().join("pretrained"), 64).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let written = original.save(dir.path()).unwrap();
    assert_eq!(written.len(), 5);
    let reloaded = RobertaTokenizer::from_folder(dir.path(), 64).unwrap();
    assert_eq!(reloaded.content_hash(), original.content_hash());
    let texts = ["hello there", "a <mask> b", ""];
    assert_eq!(
        reloaded.encode_batch(&texts).unwrap(),
        original.encode_batch(&texts).unwrap()
    );
}

/// A WordPiece tokenizer (uncased, `[CLS] … [SEP]`, as MiniLM's and bert-base-uncased's),
/// trained by `fixtures/model/generate_bert_reference.py`: ids equal to `AutoTokenizer`'s on
/// tweets with mentions, URLs, emoji, accents and casing; its special tokens are BERT's.
#[test]
fn wordpiece_tokenizer_matches_transformers() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/model");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("bert_reference.json")).unwrap())
            .unwrap();
    let texts: Vec<String> = reference["tweets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let expected: Vec<Vec<u32>> = rows(&reference["tweet_ids"]);
    for folder in ["bert-classifier", "bert-base"] {
        let tokenizer = RobertaTokenizer::from_folder(&model.join(folder), 32).unwrap();
        let names = tokenizer.special_token_names();
        assert_eq!((names.cls.as_str(), names.pad.as_str()), ("[CLS]", "[PAD]"));
        let batch = tokenizer.encode_batch(&texts).unwrap();
        for (i, text) in texts.iter().enumerate() {
            let ids = &batch.ids(i)[..expected[i].len()];
            assert_eq!(ids, expected[i].as_slice(), "{folder}: text {i} {text:?}");
            // Then padding with [PAD], masked out.
            let pad = tokenizer.special_tokens().pad;
            assert!(batch.ids(i)[expected[i].len()..].iter().all(|&t| t == pad));
            assert_eq!(
                batch.mask(i).iter().filter(|&&m| m == 1).count(),
                expected[i].len()
            );
        }
    }
}

/// Saved, a WordPiece tokenizer keeps BERT's special tokens and class, and reads back equal.
#[test]
fn a_saved_wordpiece_tokenizer_reads_back_equal() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/model");
    let tokenizer = RobertaTokenizer::from_folder(&model.join("bert-classifier"), 32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    tokenizer.save(dir.path()).unwrap();
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["tokenizer_class"], "BertTokenizer");
    assert_eq!(config["cls_token"], "[CLS]");
    assert_eq!(config["do_lower_case"], true);
    assert!(dir.path().join("vocab.txt").exists());
    let again = RobertaTokenizer::from_folder(dir.path(), 32).unwrap();
    assert_eq!(again.special_tokens(), tokenizer.special_tokens());
    assert_eq!(again.content_hash(), tokenizer.content_hash());
}
