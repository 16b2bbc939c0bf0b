//! What the training tests share: the bundled sample prepared, a tokenizer trained on it, and
//! the splits tokenized; and the lock on Burn's process-wide random generator.

use std::path::{Path, PathBuf};

use sentiment_data::{PrepareConfig, prepare};
use sentiment_tokenize::{
    BpeTrainingConfig, RobertaTokenizer, TokenizedRows, read_tokenized, tokenize_splits,
    train_on_split,
};

/// Burn's random generator is global to the process: tests that seed it and draw from it
/// (initialisation, dropout) must not run at the same time, or each changes the other's draws.
pub static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The repository's `fixtures/`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A prepared, tokenized sample (the folder lives as long as this).
pub struct Prepared {
    _dir: tempfile::TempDir,
    /// A byte-level BPE of 500 tokens trained on the train split.
    pub tokenizer: RobertaTokenizer,
    /// The train split.
    pub train: TokenizedRows,
    /// The validation split.
    pub validation: TokenizedRows,
    /// The test split.
    #[allow(dead_code)]
    pub test: TokenizedRows,
}

/// `rows` of the bundled sample, split 70/15/15 and tokenized to `max_length`.
pub fn prepared(rows: usize, max_length: usize) -> Prepared {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PrepareConfig::new(fixtures().join("sentiment140/sample.csv"), dir.path());
    config.sample = Some(rows);
    prepare(&config, &mut |_| {}).unwrap();
    let training = BpeTrainingConfig {
        vocab_size: 500,
        min_frequency: 2,
    };
    let (tokenizer, _) = train_on_split(dir.path(), &training, max_length).unwrap();
    tokenize_splits(dir.path(), &tokenizer, "test", &mut |_, _, _| {}).unwrap();
    let read = |s: &str| read_tokenized(&dir.path().join(format!("{s}.tokens.parquet"))).unwrap();
    Prepared {
        train: read("train"),
        validation: read("validation"),
        test: read("test"),
        tokenizer,
        _dir: dir,
    }
}
