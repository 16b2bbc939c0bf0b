//! `cargo xtask fixtures`: writes (or with `--check`, verifies) the bundled data fixtures.
//!
//! The generated samples come from [`crate::synth`]; the small "awkward" files hold hand-written
//! rows with the real release's difficulties (quotes and commas inside texts, HTML entities,
//! Windows-1252 bytes, a neutral row, embedded newlines, emoji and non-Latin scripts), and
//! `malformed_raw.csv` one row of each kind of malformation.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::synth::{Layout, TweetGenerator};

/// Rows in the bundled raw sample that the default pipeline trains on.
pub const SAMPLE_ROWS: usize = 8_000;

/// The folder holding the data fixtures.
pub fn data_fixtures_dir() -> PathBuf {
    crate::project_root().join("fixtures/sentiment140")
}

/// (polarity, text) rows of `awkward_raw.csv`.
const AWKWARD_RAW: &[(u8, &str)] = &[
    (
        0,
        "@switchfoot http://twitpic.com/2y1zl - Awww, that's a bummer.  You shoulda got David Carr of Third Day to do it. ;D",
    ),
    (
        4,
        "I &lt;3 this café &amp; their crème brûlée, \"best\" in town",
    ),
    (2, "just checking the weather report"),
    (4, "“smart quotes” and an ellipsis… it cost €5"),
    (
        0,
        "is upset that he can't update his Facebook by texting it... and might cry as a result  School today also. Blah!",
    ),
    (4, "   leading spaces and trailing   "),
    (
        0,
        "&quot;quoted&quot; entities, commas, and a URL www.example.com/x?a=1&amp;b=2",
    ),
    (
        4,
        "@Kenichan I dived many times for the ball. Managed to save 50%  The rest go out of bounds",
    ),
    (0, "a tweet that\nspans two lines"),
    (4, "naïve señor says: ¡hola! ½ price"),
    (0, "my whole body feels itchy and like its on fire "),
    (
        4,
        "@LettyA ahh ive always wanted to see rent  love the soundtrack!!",
    ),
];

/// (id, text, sentiment, user) rows of `awkward_cleaned.csv`; `text` is not the first column.
const AWKWARD_CLEANED: &[(u32, &str, u8, &str)] = &[
    (1, "I love this 😀🎉 so much", 1, "a"),
    (2, "今日は最悪の日だ", 0, "b"),
    (3, "مرحبا بالعالم، يوم سعيد", 1, "c"),
    (4, "commas, \"quotes\", and\nnewlines", 0, "d"),
    (5, "ZWJ family 👨‍👩‍👧 and flags 🇧🇷🇯🇵", 1, "e"),
    (6, "", 0, "f"),
    (7, "Привет, как дела? ужасно", 0, "g"),
    (8, "tab\tseparated\tand  double  spaces", 1, "h"),
    (9, "&amp; still escaped &gt;&gt; here", 1, "i"),
    (10, "Ünïcödé àccénts éverywhere", 0, "j"),
];

/// `malformed_raw.csv`: line 1 and 5 are good; 2 has five columns, 3 an unknown polarity,
/// 4 a stray quote, 6 an unterminated quote.
const MALFORMED_RAW: &str = concat!(
    "\"4\",\"1\",\"Mon Apr 06 22:19:45 PDT 2009\",\"NO_QUERY\",\"u1\",\"a good row\"\n",
    "\"0\",\"2\",\"Mon Apr 06 22:19:46 PDT 2009\",\"NO_QUERY\",\"u2\"\n",
    "\"3\",\"3\",\"Mon Apr 06 22:19:47 PDT 2009\",\"NO_QUERY\",\"u3\",\"polarity three\"\n",
    "\"0\",\"4\",\"Mon Apr 06 22:19:48 PDT 2009\",\"NO_QUERY\",\"u4\",\"a \"stray\" quote\"\n",
    "\"0\",\"5\",\"Mon Apr 06 22:19:49 PDT 2009\",\"NO_QUERY\",\"u5\",\"another good row\"\n",
    "\"4\",\"6\",\"Mon Apr 06 22:19:50 PDT 2009\",\"NO_QUERY\",\"u6\",\"never closed\n",
);

/// Every bundled data fixture: (file name, bytes).
pub fn data_fixtures() -> Result<Vec<(&'static str, Vec<u8>)>> {
    let mut sample = Vec::new();
    TweetGenerator::new(140, Layout::Raw, 0.005).write_rows(&mut sample, SAMPLE_ROWS)?;
    let mut cleaned = Vec::new();
    TweetGenerator::new(141, Layout::Cleaned, 0.0).write_rows(&mut cleaned, 1_000)?;

    let mut awkward_raw = Vec::new();
    let mut raw = TweetGenerator::new(142, Layout::Raw, 0.0);
    for &(polarity, text) in AWKWARD_RAW {
        raw.write_row(&mut awkward_raw, polarity, text)?;
    }
    let mut awkward_cleaned = b"id,text,sentiment,user\n".to_vec();
    for &(id, text, label, user) in AWKWARD_CLEANED {
        let text = if text.contains([',', '"', '\n']) || text.is_empty() {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text.to_string()
        };
        awkward_cleaned.extend(format!("{id},{text},{label},{user}\n").into_bytes());
    }
    Ok(vec![
        ("sample.csv", sample),
        ("sample_cleaned.csv", cleaned),
        ("awkward_raw.csv", awkward_raw),
        ("awkward_cleaned.csv", awkward_cleaned),
        ("malformed_raw.csv", MALFORMED_RAW.as_bytes().to_vec()),
    ])
}

/// The folder holding the tokenizer fixtures.
pub fn tokenize_fixtures_dir() -> PathBuf {
    crate::project_root().join("fixtures/tokenize")
}

/// Vocabulary of the fixture tokenizer trained here (small, so the files stay small).
pub const TRAINED_FIXTURE_VOCAB: usize = 1_000;

/// Trains the fixture tokenizer on the bundled sample's training split and writes it as a
/// Hugging Face folder into `dir`: (file name, bytes) of every file.
fn trained_tokenizer_files() -> Result<Vec<(String, Vec<u8>)>> {
    let work = std::env::temp_dir().join(format!("xtask-fixtures-{}", std::process::id()));
    let config = sentiment_data::PrepareConfig::new(data_fixtures_dir().join("sample.csv"), &work);
    sentiment_data::prepare(&config, &mut |_| {})?;
    let texts = sentiment_data::read_split(&work.join("train.parquet"))?.texts;
    let training = sentiment_tokenize::BpeTrainingConfig {
        vocab_size: TRAINED_FIXTURE_VOCAB,
        min_frequency: 2,
    };
    let tokenizer = sentiment_tokenize::RobertaTokenizer::train(&texts, &training, 64)?;
    let out = work.join("trained");
    let mut files = Vec::new();
    for path in tokenizer.save(&out)? {
        let name = path
            .file_name()
            .expect("named")
            .to_string_lossy()
            .into_owned();
        files.push((name, std::fs::read(&path)?));
    }
    std::fs::remove_dir_all(&work)?;
    files.sort();
    Ok(files)
}

/// The fixture classifier (written by `fixtures/model/generate_reference.py`) loaded and saved
/// again by our code: (file name, bytes). transformers' reading of it is checked by the
/// generator.
fn saved_by_burn_files() -> Result<Vec<(String, Vec<u8>)>> {
    use roberta_burn::{HubSettings, Pretrained, RobertaForSequenceClassification};
    let source = crate::project_root().join("fixtures/model/classifier");
    let loaded = RobertaForSequenceClassification::from_pretrained_with(
        source.to_str().expect("UTF-8 path"),
        &burn::tensor::Device::flex(),
        &HubSettings::from_vars(|_| None),
        |_| {},
    )?;
    let work = std::env::temp_dir().join(format!("xtask-saved-{}", std::process::id()));
    loaded.model.save_pretrained(&loaded.config, &work)?;
    let mut files = Vec::new();
    for name in ["config.json", "model.safetensors"] {
        files.push((name.to_string(), std::fs::read(work.join(name))?));
    }
    std::fs::remove_dir_all(&work)?;
    Ok(files)
}

/// `cargo xtask fixtures [--check]`.
pub struct Fixtures {
    /// Compare instead of writing; fail when a file differs.
    pub check: bool,
}

impl Fixtures {
    /// Writes or checks every fixture.
    pub fn run(&self) -> Result<()> {
        let dir = data_fixtures_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut stale = Vec::new();
        for (name, bytes) in data_fixtures()? {
            let path = dir.join(name);
            if self.check {
                if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
                    stale.push(display(&path));
                }
            } else {
                std::fs::write(&path, &bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {} ({} bytes)", display(&path), bytes.len());
            }
        }
        let trained_dir = tokenize_fixtures_dir().join("trained");
        let saved_dir = crate::project_root().join("fixtures/model/saved-by-burn");
        let generated = trained_tokenizer_files()?
            .into_iter()
            .map(|(name, bytes)| (trained_dir.join(name), bytes))
            .chain(
                saved_by_burn_files()?
                    .into_iter()
                    .map(|(name, bytes)| (saved_dir.join(name), bytes)),
            );
        for (path, bytes) in generated {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if self.check {
                if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
                    stale.push(display(&path));
                }
            } else {
                std::fs::write(&path, &bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {} ({} bytes)", display(&path), bytes.len());
            }
        }
        if !stale.is_empty() {
            bail!(
                "fixtures out of date: {}; run `cargo xtask fixtures`",
                stale.join(", ")
            );
        }
        Ok(())
    }
}

fn display(path: &Path) -> String {
    path.strip_prefix(crate::project_root())
        .unwrap_or(path)
        .display()
        .to_string()
}
