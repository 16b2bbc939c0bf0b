//! The notebook's whole workflow as a library: prepare the data, tokenize it, search the
//! hyperparameters with TPE (each trial a fine-tuning run, pruned by the median rule when asked),
//! train the best parameters (reusing the best trial's run, which used the same seed), evaluate
//! on the test split, export the best model as a Hugging Face folder, and write a report.
//!
//! Every stage records what determined its result ([`stages`]) and is reused only when all of
//! it is unchanged; a change redoes that stage and everything downstream, says why, and is
//! refused when it would discard trials unless [`PipelineConfig::overwrite`] is set. The
//! command line (`cargo xtask pipeline`) only parses flags into a [`PipelineConfig`] and prints
//! what the [`Observer`] is told.
//!
//! ```no_run
//! # use sentiment_pipeline::{Observer, Pipeline, PipelineConfig, StudySettings};
//! # use sentiment_train::{Progress, StopToken};
//! struct Print;
//! impl Observer for Print {
//!     fn message(&self, line: &str) { println!("{line}") }
//!     fn progress(&self) -> Box<dyn FnMut(Progress) + '_> { Box::new(|_| {}) }
//! }
//! let config = PipelineConfig {
//!     out: "runs/pipeline".into(),
//!     prepare: sentiment_data::PrepareConfig::new("tweets.csv", "unused"),
//!     pretrained: None,
//!     model_config: "tiny".into(),
//!     tokenizer: None,
//!     vocab_size: 8000,
//!     max_length: 64,
//!     trials: 4,
//!     startup_trials: None,
//!     epochs: 2,
//!     run: sentiment_train::RunOptions::default(),
//!     prune: None,
//!     space: PipelineConfig::default_space(false),
//!     seed: 734,
//!     study: StudySettings::default(),
//!     overwrite: false,
//!     command: "my-pipeline".into(),
//! };
//! let pipeline = Pipeline::new(config, vec![burn::tensor::Device::flex()])?;
//! // None when another worker sharing the study runs the final stage.
//! if let Some(done) = pipeline.run(&StopToken::new(), &Print)? {
//!     println!("best trial {} -> {}", done.best.number, done.report.display());
//! }
//! # Ok::<(), sentiment_pipeline::PipelineError>(())
//! ```
//!
//! Output folder:
//! ```text
//! data/                      prepared splits, manifest, tokenizer, token files
//! study.db                   the study (Optuna's schema in SQLite), unless --storage names one
//! pipeline.json              what the study was started with (data, model, epochs, space, …)
//! trials/trial_N/            each trial's run folder (see sentiment-train)
//! final/                     the final run, when the best trial's could not be reused
//! best_model/                the best model as a Hugging Face folder
//! trials.csv, report.json, report.md, report.html, *.svg
//! ```

mod baseline;
mod error;
mod lock;
mod pipeline;
pub mod report;
pub mod stages;
mod start;
mod trial;
mod worker;

pub use error::PipelineError;
pub use pipeline::{Observer, Pipeline, PipelineConfig, PipelineOutcome, StudySettings};
pub use start::{Start, StartOptions, masked_lm_start, starting_point};
pub use trial::{PruneSettings, TRIAL_PARAMETERS, trial_config};
