//! Fine-tuning RoBERTa for sequence classification, as transformers' `Trainer` does it for the
//! notebook, and sturdier: AdamW (PyTorch's defaults, not Burn's), a linear schedule with optional
//! warmup ([`LinearSchedule`]), clipping by the global gradient norm, batches reshuffled every
//! epoch from the seed, evaluation with the metrics crate and a checkpoint every epoch or every
//! N steps, kept by [`KeepBestCheckpoints`], the best model loaded at the end, evaluated on the
//! test split and exported as a Hugging Face folder; and resume from the last checkpoint, mid-epoch
//! or not. [`pretrain`] does masked-LM pre-training with RoBERTa's dynamic masking on the same
//! machinery; [`classify`] predicts with a fine-tuned model; [`parity`] checks a backend against
//! the committed PyTorch references.
//!
//! Run folder:
//! ```text
//! train_config.json          hyperparameters and model configuration
//! metrics.json, metrics.csv  one row per evaluation (epoch and step)
//! checkpoints/step-N/        model.bpk, optimizer.bpk + .json, state.json (kept by the policy)
//! test_metrics.json          the best model on the test split
//! best_model/                config.json, model.safetensors, tokenizer files
//! outcome.json               history, best epoch and step, test evaluation
//! train.log                  what happened when: start, resume, evaluations, interruption, end
//! ```

mod adamw;
mod checkpoints;
mod clip;
mod error;
mod options;
pub mod parity;
mod predict;
mod pretrain;
mod run;
mod schedule;
mod step;
pub mod tensorboard;
mod trainer;

use std::path::Path;

pub use adamw::{AdamWSettings, FlatAdamW, FlatSlot, FlatStep};
pub use checkpoints::KeepBestCheckpoints;
pub use clip::{clip_grad_norm, global_grad_norm};
pub use error::TrainError;
pub use options::RunOptions;
pub use predict::{Predictions, check_compatible, classify};
pub use pretrain::{
    MaskedBatch, MaskingConfig, MlmEvaluation, NOT_A_TARGET, PretrainConfig, PretrainEpoch,
    PretrainOutcome, evaluate_mlm, hold_out, mask_rng, mask_tokens, masked_lm_loss, pretrain,
};
pub use run::{EarlyStopping, RUN_VERSION, StopToken, TrainHooks};
pub use schedule::LinearSchedule;
pub use step::{MicroBatch, Stepped, gradients, train_step};
pub use trainer::{
    BEST_MODEL_DIR, BestMetric, EpochMetrics, Evaluation, Progress, TrainConfig, TrainData,
    TrainOutcome, evaluate, logits, train,
};

/// Writes a file atomically (temporary sibling, then rename).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    sentiment_data::write_file_atomic(path, bytes).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}
