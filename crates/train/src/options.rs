//! The switches fine-tuning and pre-training share, with one validation: how batches are
//! padded, grouped and accumulated, how long a run trains, when it evaluates and checkpoints,
//! when it stops early, and where it reports. Flattened into both configurations, so their JSON
//! keeps the Trainer's keys (`pad_to_multiple_of`, `group_by_length`,
//! `gradient_accumulation_steps`, `max_steps`, `eval_steps`, `save_steps`,
//! `early_stopping_patience`, `report_to`, `bf16`, …).

use sentiment_tokenize::Padding;
use serde::{Deserialize, Serialize};

use crate::{EarlyStopping, TrainError};

/// Batching, length, evaluation and checkpoint steps, early stopping and reporting of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    /// How batches are padded: to their longest row, rounded up to `pad_to_multiple_of`
    /// (transformers' `DataCollatorWithPadding`), or to the full length.
    #[serde(flatten)]
    pub padding: Padding,
    /// Order each epoch's batches by length within mega-batches, as the Trainer's
    /// `group_by_length` (runs saved before it existed read as `false`).
    #[serde(default)]
    pub group_by_length: bool,
    /// Micro-batches per optimizer step (transformers' `gradient_accumulation_steps`): the
    /// loss is normalised over all their items, as one batch of all of them would be. The
    /// schedule counts optimizer steps; checkpoints are taken on step boundaries only.
    #[serde(default = "one")]
    pub gradient_accumulation_steps: usize,
    /// Optimizer steps in all, overriding the epochs (the Trainer's `max_steps`): the run
    /// passes over the data as often as these steps need, the last pass cut short, and the
    /// schedule decays to zero at the last of them.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Evaluate, and checkpoint, every this many optimizer steps and after the last one (the
    /// Trainer's `eval_strategy="steps"`); None evaluates after every epoch. Keep-best and
    /// `save_total_limit` choose among these evaluated checkpoints.
    #[serde(default)]
    pub eval_steps: Option<usize>,
    /// Also checkpoint every this many optimizer steps between evaluations, to resume from
    /// (the Trainer's `save_steps`); only the latest such checkpoint is kept, since the best
    /// model is chosen among evaluated ones. None: checkpoints at evaluations only.
    #[serde(default)]
    pub save_steps: Option<usize>,
    /// Stop after this many evaluations without an improvement of the watched metric by more
    /// than `early_stopping_threshold` (transformers' `EarlyStoppingCallback`); None trains to
    /// the end.
    #[serde(default)]
    pub early_stopping_patience: Option<usize>,
    /// The improvement that counts for early stopping.
    #[serde(default)]
    pub early_stopping_threshold: f64,
    /// Where metrics are reported besides the run folder's files, as the Trainer's
    /// `report_to`: `tensorboard` writes event files under `RUN/tb`.
    #[serde(default)]
    pub report_to: Vec<String>,
    /// Mixed precision, the Trainer's `bf16` on a CPU: training and evaluation run under
    /// [`roberta_burn::autocast::bf16`] (the linear layers' products from bf16 operands, f32
    /// everything else). The CPU backend only; runs saved before it existed read as `false`.
    #[serde(default)]
    pub bf16: bool,
}

fn one() -> usize {
    1
}

impl Default for RunOptions {
    /// Dynamic padding to a multiple of 8, length grouping, no accumulation, no early
    /// stopping, no reporting.
    fn default() -> Self {
        Self {
            padding: Padding::default(),
            group_by_length: true,
            gradient_accumulation_steps: 1,
            max_steps: None,
            eval_steps: None,
            save_steps: None,
            early_stopping_patience: None,
            early_stopping_threshold: 0.0,
            report_to: Vec::new(),
            bf16: false,
        }
    }
}

impl RunOptions {
    /// Refuses settings that cannot run, naming the setting.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |detail: &str| Err(TrainError::InvalidSetting(detail.into()));
        if self.padding.pad_to_multiple_of == 0 {
            return bad("pad_to_multiple_of must be at least 1");
        }
        if self.gradient_accumulation_steps == 0 {
            return bad("gradient_accumulation_steps must be at least 1");
        }
        for (name, steps) in [
            ("max_steps", self.max_steps),
            ("eval_steps", self.eval_steps),
            ("save_steps", self.save_steps),
        ] {
            if steps == Some(0) {
                return Err(TrainError::InvalidSetting(format!(
                    "{name} must be at least 1 (leave it unset for the default)"
                )));
            }
        }
        if let Some(rule) = self.early_stopping() {
            rule.validate()?;
        }
        match self
            .report_to
            .iter()
            .find(|r| !matches!(r.as_str(), "tensorboard" | "none"))
        {
            Some(other) => Err(TrainError::InvalidSetting(format!(
                "report_to `{other}` is not supported (tensorboard, none)"
            ))),
            None => Ok(()),
        }
    }

    /// The early-stopping rule these options ask for.
    pub fn early_stopping(&self) -> Option<EarlyStopping> {
        self.early_stopping_patience.map(|patience| EarlyStopping {
            patience,
            threshold: self.early_stopping_threshold,
        })
    }

    /// Whether TensorBoard event files are written.
    pub fn tensorboard(&self) -> bool {
        self.report_to.iter().any(|r| r == "tensorboard")
    }
}
