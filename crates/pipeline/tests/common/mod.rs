//! What the pipeline's tests share: the bundled sample, a small configuration, a run that
//! collects the messages.

#![allow(dead_code)] // Each test binary uses its own part of it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::Device;
use sentiment_pipeline::{Observer, Pipeline, PipelineConfig, PipelineError};
use sentiment_train::{Progress, StopToken};

/// Collects the pipeline's messages.
#[derive(Default)]
pub struct Messages(Mutex<Vec<String>>);

impl Observer for Messages {
    fn message(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }

    fn progress(&self) -> Box<dyn FnMut(Progress) + '_> {
        Box::new(|_| {})
    }
}

impl Messages {
    pub fn all(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

pub fn sample_csv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sentiment140/sample.csv")
}

pub fn config(out: &Path, sample: usize, epochs: usize) -> PipelineConfig {
    let mut prepare = sentiment_data::PrepareConfig::new(sample_csv(), out.join("data"));
    prepare.sample = Some(sample);
    PipelineConfig {
        out: out.to_path_buf(),
        prepare,
        pretrained: None,
        model_config: "tiny".into(),
        tokenizer: None,
        vocab_size: 400,
        max_length: 32,
        trials: 2,
        startup_trials: Some(1),
        epochs,
        run: sentiment_train::RunOptions::default(),
        prune: None,
        space: PipelineConfig::default_space(false),
        seed: 734,
        study: sentiment_pipeline::StudySettings::default(),
        overwrite: false,
        command: "test".into(),
    }
}

/// The pipeline's own study in OUT.
pub fn own_study(out: &Path) -> sentiment_search::SqliteStorage {
    sentiment_search::SqliteStorage::new(out.join("study.db"), sentiment_search::DEFAULT_STUDY_NAME)
}

/// The pipeline's own study in OUT, opened with the settings it was made with, to change it
/// as another worker (or a hand with SQL) would.
pub fn reopen_own_study(out: &Path) -> sentiment_search::Study {
    let record = sentiment_search::Study::read(&own_study(out))
        .unwrap()
        .unwrap();
    sentiment_search::Study::with_storage(
        Box::new(own_study(out)),
        record.direction,
        record.space,
        record.sampler,
        record.seed,
    )
    .unwrap()
}

pub fn run(
    config: PipelineConfig,
) -> (
    Result<sentiment_pipeline::PipelineOutcome, PipelineError>,
    String,
) {
    let (result, messages) = run_worker(config);
    (
        result.map(|done| done.expect("a lone worker runs the final stage")),
        messages,
    )
}

/// One worker of a study that others may share: None when another runs the final stage.
pub fn run_worker(
    config: PipelineConfig,
) -> (
    Result<Option<sentiment_pipeline::PipelineOutcome>, PipelineError>,
    String,
) {
    let messages = Messages::default();
    let result = Pipeline::new(config, vec![Device::flex()])
        .and_then(|p| p.run(&StopToken::new(), &messages));
    (result, messages.all())
}
