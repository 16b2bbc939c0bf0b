//! What determines each stage's result, so that a result is reused only when all of it is
//! unchanged, and a change is named the way the user made it (`--sample 1500 (was 2000)`).
//!
//! - The prepared data is determined by the input's content and every preparation setting:
//!   [`DataKey`], read back from the data's own manifest.
//! - The tokenizer and token files are cached by content in the tokenize crate.
//! - The study and its trials are determined by the data, the starting point (model and
//!   tokenizer), the epochs, the search space, the sampler and the seed: [`SearchKey`], kept in
//!   `OUT/pipeline.json` next to the study and in the study itself (the system attribute
//!   `sentiment:pipeline`, which every worker sharing the study is checked against).
//!   `--trials` is not part of it: a larger count extends the study.
//! - The final run is determined by the best trial's parameters and everything above; its
//!   own `train_config.json` is compared before it is reused.

use std::path::Path;

use sentiment_data::{
    BadRowPolicy, InputFormat, Manifest, Normalization, PrepareConfig, SplitRatios,
};
use sentiment_search::SearchSpace;
use sentiment_tokenize::Padding;
use serde::{Deserialize, Serialize};

use crate::PipelineError;

/// Version of `pipeline.json`.
pub const STAGES_VERSION: u32 = 1;

/// Everything that determines the prepared data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataKey {
    /// The input as given (shown in messages; its content is what counts).
    pub input: String,
    /// SHA-256 of the input file's bytes.
    pub input_sha256: String,
    /// A forced layout; None when it was detected.
    pub format: Option<InputFormat>,
    /// The layout the data was prepared with, when known (from a manifest): a raw file's
    /// columns are fixed, so the column options do not matter for it.
    #[serde(default)]
    pub layout: Option<InputFormat>,
    /// Text column of a cleaned file.
    pub text_column: String,
    /// Label column of a cleaned file.
    pub label_column: String,
    /// Whether raw neutral rows are a third class.
    pub keep_neutral: bool,
    /// Text normalisation.
    pub normalization: Normalization,
    /// Duplicate removal.
    pub dedup: bool,
    /// Stratified sample size.
    pub sample: Option<usize>,
    /// Seed of the sample and the split.
    pub seed: u64,
    /// Split ratios.
    pub ratios: SplitRatios,
    /// Malformed-row policy.
    pub on_bad_row: BadRowPolicy,
    /// The most bytes of a record.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
}

fn default_max_record_bytes() -> usize {
    sentiment_data::DEFAULT_MAX_RECORD_BYTES
}

impl DataKey {
    /// The key of a preparation about to run with `config` on an input whose bytes hash to
    /// `input_sha256`.
    pub fn of_config(config: &PrepareConfig, input_sha256: String) -> Self {
        Self {
            input: config.input.display().to_string(),
            input_sha256,
            format: config.format,
            layout: config.format,
            text_column: config.text_column.clone(),
            label_column: config.label_column.clone(),
            keep_neutral: config.keep_neutral,
            normalization: config.normalization,
            dedup: config.dedup,
            sample: config.sample,
            seed: config.seed,
            ratios: config.ratios,
            on_bad_row: config.on_bad_row,
            max_record_bytes: config.max_record_bytes,
        }
    }

    /// The key the prepared data in a folder was made with, from its manifest.
    pub fn of_manifest(manifest: &Manifest) -> Self {
        Self {
            input: manifest.input.path.clone(),
            input_sha256: manifest.input.sha256.clone(),
            format: (!manifest.format_detected).then_some(manifest.format),
            layout: Some(manifest.format),
            text_column: manifest.text_column.clone(),
            label_column: manifest.label_column.clone(),
            keep_neutral: manifest.keep_neutral,
            normalization: manifest.normalization,
            dedup: manifest.dedup,
            sample: manifest.sample,
            seed: manifest.seed,
            ratios: manifest.ratios,
            on_bad_row: manifest.on_bad_row,
            max_record_bytes: manifest.max_record_bytes,
        }
    }

    /// What differs from `before`, as the flags that would make the difference; empty when
    /// the same data would be prepared.
    pub fn changes_since(&self, before: &DataKey) -> Vec<String> {
        let mut changes = Vec::new();
        if self.input_sha256 != before.input_sha256 {
            changes.push(if self.input == before.input {
                format!("{}: the file's content changed", self.input)
            } else {
                format!("--input {} (was {})", self.input, before.input)
            });
        }
        let mut flag = |name: &str, now: String, was: String| {
            if now != was {
                changes.push(format!("{name} {now} (was {was})"));
            }
        };
        flag(
            "--format",
            show_option(self.format.map(|f| format!("{f:?}").to_lowercase()), "auto"),
            show_option(
                before.format.map(|f| format!("{f:?}").to_lowercase()),
                "auto",
            ),
        );
        let raw = [self.layout, before.layout].contains(&Some(InputFormat::Raw));
        if !raw {
            flag(
                "--text-column",
                self.text_column.clone(),
                before.text_column.clone(),
            );
            flag(
                "--label-column",
                self.label_column.clone(),
                before.label_column.clone(),
            );
        }
        flag(
            "--keep-neutral",
            self.keep_neutral.to_string(),
            before.keep_neutral.to_string(),
        );
        flag(
            "--normalize",
            show_normalization(&self.normalization),
            show_normalization(&before.normalization),
        );
        flag("--dedup", self.dedup.to_string(), before.dedup.to_string());
        flag(
            "--sample",
            show_option(self.sample, "all rows"),
            show_option(before.sample, "all rows"),
        );
        flag("--seed", self.seed.to_string(), before.seed.to_string());
        flag(
            "--ratios",
            show_ratios(&self.ratios),
            show_ratios(&before.ratios),
        );
        flag(
            "--on-bad-row",
            format!("{:?}", self.on_bad_row).to_lowercase(),
            format!("{:?}", before.on_bad_row).to_lowercase(),
        );
        flag(
            "--max-record-bytes",
            self.max_record_bytes.to_string(),
            before.max_record_bytes.to_string(),
        );
        changes
    }
}

/// Everything that determines a study's trials, besides how many there are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchKey {
    /// The data the trials train and validate on.
    pub data: DataKey,
    /// The pretrained model (folder or hub id), if any.
    pub pretrained: Option<String>,
    /// The preset or `config.json` of a model trained from scratch.
    pub model_config: String,
    /// The pretrained tokenizer, if any (else one trained on the data).
    pub tokenizer: Option<String>,
    /// Vocabulary of a tokenizer trained here.
    pub vocab_size: usize,
    /// Sequence length.
    pub max_length: usize,
    /// Epochs of every trial.
    pub epochs: usize,
    /// How the trials padded their batches (studies from before dynamic padding: fixed).
    #[serde(default = "fixed_padding")]
    pub padding: Padding,
    /// Whether the trials ordered their batches by length.
    #[serde(default)]
    pub group_by_length: bool,
    /// The trials' early stopping.
    #[serde(default)]
    pub early_stopping: Option<sentiment_train::EarlyStopping>,
    /// The trials' micro-batches per optimizer step.
    #[serde(default = "one")]
    pub gradient_accumulation_steps: usize,
    /// The trials' optimizer steps, when fixed instead of by epochs.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// How often the trials evaluated (None: every epoch): it decides what the study's
    /// intermediate values and the pruner saw, and which checkpoint was best.
    #[serde(default)]
    pub eval_steps: Option<usize>,
    /// Whether the trials trained in mixed bf16 precision (studies from before it: f32).
    #[serde(default)]
    pub bf16: bool,
    /// The search space.
    pub space: SearchSpace,
    /// Random trials before TPE acts, as asked (None: the default for the budget).
    pub startup_trials: Option<usize>,
    /// Median pruning: (complete trials before pruning, epochs never pruned), if on.
    pub prune: Option<(usize, usize)>,
    /// Seed of the sampler and of every trial's training.
    pub seed: u64,
}

impl SearchKey {
    /// What differs from `before`, as the flags that would make the difference; empty when
    /// the study's trials are still valid.
    pub fn changes_since(&self, before: &SearchKey) -> Vec<String> {
        let mut changes = Vec::new();
        let data = self.data.changes_since(&before.data);
        if !data.is_empty() {
            changes.push(format!("data changed: {}", data.join(", ")));
        }
        let mut flag = |name: &str, now: String, was: String| {
            if now != was {
                changes.push(format!("{name} {now} (was {was})"));
            }
        };
        flag(
            "--pretrained",
            show_option(self.pretrained.clone(), "none"),
            show_option(before.pretrained.clone(), "none"),
        );
        flag(
            "--config",
            self.model_config.clone(),
            before.model_config.clone(),
        );
        flag(
            "--tokenizer",
            show_option(self.tokenizer.clone(), "trained here"),
            show_option(before.tokenizer.clone(), "trained here"),
        );
        flag(
            "--vocab-size",
            self.vocab_size.to_string(),
            before.vocab_size.to_string(),
        );
        flag(
            "--max-length",
            self.max_length.to_string(),
            before.max_length.to_string(),
        );
        flag(
            "--epochs",
            self.epochs.to_string(),
            before.epochs.to_string(),
        );
        flag(
            "padding",
            show_padding(&self.padding),
            show_padding(&before.padding),
        );
        let stopping = |e: Option<sentiment_train::EarlyStopping>| {
            e.map_or_else(
                || "off".to_string(),
                |e| format!("patience {} threshold {}", e.patience, e.threshold),
            )
        };
        flag(
            "--early-stopping-patience",
            stopping(self.early_stopping),
            stopping(before.early_stopping),
        );
        flag(
            "--gradient-accumulation-steps",
            self.gradient_accumulation_steps.to_string(),
            before.gradient_accumulation_steps.to_string(),
        );
        flag(
            "--max-steps",
            show_option(self.max_steps, "unset"),
            show_option(before.max_steps, "unset"),
        );
        flag(
            "--eval-steps",
            show_option(self.eval_steps, "every epoch"),
            show_option(before.eval_steps, "every epoch"),
        );
        flag(
            "--group-by-length",
            self.group_by_length.to_string(),
            before.group_by_length.to_string(),
        );
        flag("--bf16", self.bf16.to_string(), before.bf16.to_string());
        flag(
            "--space",
            show_space(&self.space),
            show_space(&before.space),
        );
        flag(
            "--startup-trials",
            show_option(self.startup_trials, "default"),
            show_option(before.startup_trials, "default"),
        );
        let prune = |p: Option<(usize, usize)>| {
            p.map_or_else(
                || "off".to_string(),
                |(trials, epochs)| {
                    format!("on (--prune-startup-trials {trials}, --prune-warmup-epochs {epochs})")
                },
            )
        };
        flag("--prune", prune(self.prune), prune(before.prune));
        if self.data.seed == self.seed && before.data.seed == before.seed {
            // One --seed drives both: already named among the data's changes.
        } else {
            flag("--seed", self.seed.to_string(), before.seed.to_string());
        }
        changes
    }
}

/// `OUT/pipeline.json`: what the study in the same folder was started with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// [`STAGES_VERSION`].
    pub version: u32,
    /// The study's key.
    pub search: SearchKey,
}

impl StageRecord {
    /// The record in `out`, if one is there; an unreadable one is an error naming the file.
    pub fn load(out: &Path) -> Result<Option<Self>, PipelineError> {
        let path = out.join("pipeline.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PipelineError::io(&path)(e)),
        };
        let record: StageRecord = serde_json::from_str(&text).map_err(|e| {
            PipelineError::Refused(format!(
                "{}: unreadable ({e}); it records what the study in {} was run with: remove \
                 the folder or rerun with --overwrite to start the search afresh",
                path.display(),
                out.display()
            ))
        })?;
        if record.version != STAGES_VERSION {
            return Err(PipelineError::Refused(format!(
                "{}: version {} (this build writes {STAGES_VERSION}): rerun with --overwrite \
                 to start the search afresh",
                path.display(),
                record.version
            )));
        }
        Ok(Some(record))
    }

    /// Writes the record into `out`, atomically.
    pub fn save(&self, out: &Path) -> Result<(), PipelineError> {
        let path = out.join("pipeline.json");
        let mut json = serde_json::to_vec_pretty(self).expect("serialisable");
        json.push(b'\n');
        sentiment_data::write_file_atomic(&path, &json)?;
        Ok(())
    }
}

/// The trials `numbers` as a short range list: `0-3`, `0-2, 5`.
pub fn show_numbers(numbers: &[usize]) -> String {
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            sorted[i].to_string()
        } else {
            format!("{}-{}", sorted[i], sorted[j])
        });
        i = j + 1;
    }
    parts.join(", ")
}

fn one() -> usize {
    1
}

fn fixed_padding() -> Padding {
    Padding::FIXED
}

fn show_padding(p: &Padding) -> String {
    if p.pad_to_max_length {
        "--pad-to-max-length".into()
    } else {
        format!("--pad-multiple {}", p.pad_to_multiple_of)
    }
}

fn show_option<T: ToString>(value: Option<T>, none: &str) -> String {
    value.map_or_else(|| none.to_string(), |v| v.to_string())
}

fn show_ratios(r: &SplitRatios) -> String {
    format!("{},{},{}", r.train, r.validation, r.test)
}

fn show_normalization(n: &Normalization) -> String {
    let steps: Vec<&str> = [
        (n.html_unescape, "html"),
        (n.mentions, "mentions"),
        (n.urls, "urls"),
        (n.whitespace, "whitespace"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if steps.is_empty() {
        "none".into()
    } else {
        steps.join(",")
    }
}

fn show_space(space: &SearchSpace) -> String {
    serde_json::to_string(space).expect("serialisable")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> DataKey {
        let mut config = PrepareConfig::new("data/sample.csv", "out/data");
        config.sample = Some(2000);
        DataKey::of_config(&config, "ab".repeat(32))
    }

    fn search() -> SearchKey {
        SearchKey {
            data: data(),
            pretrained: None,
            model_config: "tiny".into(),
            tokenizer: None,
            vocab_size: 8000,
            max_length: 64,
            epochs: 2,
            padding: Padding::default(),
            group_by_length: true,
            early_stopping: None,
            gradient_accumulation_steps: 1,
            max_steps: None,
            eval_steps: None,
            bf16: false,
            space: sentiment_search::parse_space(["batch_size=cat:16,32"]).unwrap(),
            startup_trials: None,
            prune: None,
            seed: 734,
        }
    }

    #[test]
    fn the_same_settings_change_nothing() {
        assert!(data().changes_since(&data()).is_empty());
        assert!(search().changes_since(&search()).is_empty());
    }

    #[test]
    fn a_new_sample_size_is_named_as_its_flag() {
        let mut now = data();
        now.sample = Some(1500);
        assert_eq!(now.changes_since(&data()), ["--sample 1500 (was 2000)"]);
        let mut key = search();
        key.data = now;
        assert_eq!(
            key.changes_since(&search()),
            ["data changed: --sample 1500 (was 2000)"]
        );
    }

    #[test]
    fn changed_input_content_is_named_with_the_file() {
        let mut now = data();
        now.input_sha256 = "cd".repeat(32);
        assert_eq!(
            now.changes_since(&data()),
            ["data/sample.csv: the file's content changed"]
        );
        now.input = "other.csv".into();
        assert_eq!(
            now.changes_since(&data()),
            ["--input other.csv (was data/sample.csv)"]
        );
    }

    #[test]
    fn more_epochs_invalidate_the_trials() {
        let mut now = search();
        now.epochs = 3;
        assert_eq!(now.changes_since(&search()), ["--epochs 3 (was 2)"]);
    }

    #[test]
    fn every_study_setting_is_compared() {
        let base = search();
        type Edit = Box<dyn Fn(&mut SearchKey)>;
        let edits: Vec<(&str, Edit)> = vec![
            (
                "--pretrained",
                Box::new(|k| k.pretrained = Some("rb".into())),
            ),
            ("--config", Box::new(|k| k.model_config = "small".into())),
            ("--tokenizer", Box::new(|k| k.tokenizer = Some("rb".into()))),
            ("--vocab-size", Box::new(|k| k.vocab_size = 4000)),
            ("--max-length", Box::new(|k| k.max_length = 32)),
            ("--space", Box::new(|k| k.space.clear())),
            ("--startup-trials", Box::new(|k| k.startup_trials = Some(3))),
            ("--prune", Box::new(|k| k.prune = Some((5, 0)))),
            (
                "padding --pad-to-max-length",
                Box::new(|k| k.padding = Padding::FIXED),
            ),
            ("--group-by-length", Box::new(|k| k.group_by_length = false)),
            ("--bf16", Box::new(|k| k.bf16 = true)),
            ("--max-steps", Box::new(|k| k.max_steps = Some(100))),
            ("--eval-steps", Box::new(|k| k.eval_steps = Some(10))),
            (
                "--gradient-accumulation-steps",
                Box::new(|k| k.gradient_accumulation_steps = 4),
            ),
            (
                "--early-stopping-patience",
                Box::new(|k| {
                    k.early_stopping = Some(sentiment_train::EarlyStopping {
                        patience: 2,
                        threshold: 0.0,
                    })
                }),
            ),
            (
                "data changed: --seed",
                Box::new(|k| {
                    k.seed = 1;
                    k.data.seed = 1;
                }),
            ),
            (
                "data changed: --ratios",
                Box::new(|k| k.data.ratios.test = 0.2),
            ),
            (
                "data changed: --normalize",
                Box::new(|k| k.data.normalization.urls = true),
            ),
        ];
        for (flag, edit) in edits {
            let mut now = base.clone();
            edit(&mut now);
            let changes = now.changes_since(&base);
            assert_eq!(changes.len(), 1, "{flag}: {changes:?}");
            assert!(changes[0].starts_with(flag), "{flag}: {changes:?}");
        }
    }

    #[test]
    fn a_manifest_gives_back_the_key_it_was_prepared_with() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.csv");
        let mut text = String::from("text,sentiment\n");
        for i in 0..40 {
            text.push_str(&format!("text number {i},{}\n", i % 2));
        }
        std::fs::write(&input, text).unwrap();
        let mut config = PrepareConfig::new(&input, dir.path().join("data"));
        config.sample = Some(30);
        config.seed = 9;
        let manifest = sentiment_data::prepare(&config, &mut |_| {}).unwrap();
        let sha = sentiment_data::sha256_file(&input).unwrap();
        let asked = DataKey::of_config(&config, sha);
        let prepared = DataKey::of_manifest(&manifest);
        assert!(asked.changes_since(&prepared).is_empty());
        assert_eq!(prepared.layout, Some(InputFormat::Cleaned));
        let mut other = asked.clone();
        other.label_column = "polarity".into();
        assert_eq!(
            other.changes_since(&prepared),
            ["--label-column polarity (was sentiment)"]
        );
    }

    #[test]
    fn a_raw_file_ignores_the_column_options() {
        let mut prepared = data();
        prepared.layout = Some(InputFormat::Raw);
        prepared.label_column = "polarity".into();
        assert!(data().changes_since(&prepared).is_empty());
    }

    #[test]
    fn trial_numbers_print_as_ranges() {
        assert_eq!(show_numbers(&[3, 0, 1, 2]), "0-3");
        assert_eq!(show_numbers(&[0, 1, 2, 5, 7, 8]), "0-2, 5, 7-8");
        assert_eq!(show_numbers(&[]), "");
    }
}
