//! The fine-tuning loop: the notebook's `Trainer`, with resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use roberta_burn::{Pretrained, RobertaConfig, RobertaForSequenceClassification};
use sentiment_metrics::{ConfusionMatrix, log_loss_from_logits};
use sentiment_tokenize::{Padding, RobertaTokenizer, TokenizedRows, by_length};
use serde::{Deserialize, Serialize};

use crate::run::{
    EpochSummary, LoopSettings, StopToken, Task, TrainHooks, checkpoint_dir, log,
    remove_checkpoint, run_epochs, save_json,
};
use crate::{AdamWSettings, KeepBestCheckpoints, RunOptions, TrainError};

/// The metric that picks the best checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    /// F1 of the positive class (the notebook's choice).
    F1,
    /// Accuracy.
    Accuracy,
    /// Validation loss (smaller is better).
    Loss,
}

impl BestMetric {
    fn greater_is_better(self) -> bool {
        !matches!(self, BestMetric::Loss)
    }

    fn of(self, m: &EpochMetrics) -> f64 {
        match self {
            BestMetric::F1 => m.f1,
            BestMetric::Accuracy => m.accuracy,
            BestMetric::Loss => m.eval_loss,
        }
    }
}

/// Hyperparameters of a run. Defaults are transformers' `TrainingArguments` where the notebook
/// relied on them (AdamW 0.9 / 0.999 / 1e-8, no weight decay, clipping at 1.0, no warmup,
/// best by F1, two checkpoints kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Training batch size (of one micro-batch, with gradient accumulation).
    pub batch_size: usize,
    /// Evaluation batch size (no gradients, so it can be larger).
    pub eval_batch_size: usize,
    /// Passes over the training split.
    pub epochs: usize,
    /// Linear warmup steps before the linear decay.
    pub warmup_steps: usize,
    /// AdamW: betas, epsilon, weight decay and the global gradient-norm bound (flattened:
    /// the JSON keeps the Trainer's `adam_beta1`, …, `max_grad_norm` keys).
    #[serde(flatten)]
    pub optimizer: AdamWSettings,
    /// Seed of the initialisation, the batch order and dropout.
    pub seed: u64,
    /// Metric that picks the best checkpoint.
    pub metric_for_best: BestMetric,
    /// Checkpoints kept (the best and the latest for 2).
    pub save_total_limit: usize,
    /// Class counted as positive for precision, recall and F1.
    pub positive_class: usize,
    /// Batching (padding, grouping, accumulation), early stopping on `metric_for_best`, and
    /// reporting (flattened: the JSON keeps the Trainer's keys).
    #[serde(flatten)]
    pub run: RunOptions,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: 5e-5,
            batch_size: 32,
            eval_batch_size: 64,
            epochs: 3,
            warmup_steps: 0,
            optimizer: AdamWSettings {
                max_grad_norm: 1.0,
                ..AdamWSettings::default()
            },
            seed: 42,
            metric_for_best: BestMetric::F1,
            save_total_limit: 2,
            positive_class: 1,
            run: RunOptions::default(),
        }
    }
}

impl TrainConfig {
    /// Checks every setting; the message names it.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |detail: String| Err(TrainError::InvalidSetting(detail));
        validate_schedule(
            self.learning_rate,
            self.batch_size,
            self.eval_batch_size,
            self.epochs,
        )?;
        self.optimizer.validate()?;
        self.run.validate()?;
        if self.save_total_limit == 0 {
            return bad("save_total_limit must be at least 1".into());
        }
        Ok(())
    }
}

/// The checks fine-tuning and pre-training share on the loop's own settings.
pub(crate) fn validate_schedule(
    learning_rate: f64,
    batch_size: usize,
    eval_batch_size: usize,
    epochs: usize,
) -> Result<(), TrainError> {
    let bad = |detail: String| Err(TrainError::InvalidSetting(detail));
    if !(learning_rate.is_finite() && learning_rate > 0.0) {
        return bad(format!(
            "learning_rate {learning_rate} must be finite and positive"
        ));
    }
    if batch_size == 0 || eval_batch_size == 0 {
        return bad("batch_size and eval_batch_size must be at least 1".into());
    }
    if epochs == 0 {
        return bad("epochs must be at least 1".into());
    }
    Ok(())
}

/// The metrics of one evaluation (at the end of each epoch, unless `eval_steps` is set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: usize,
    /// Mean training loss of the steps since the previous evaluation (the epoch's, when
    /// evaluating every epoch).
    pub train_loss: f64,
    /// Validation cross-entropy.
    pub eval_loss: f64,
    /// Validation accuracy.
    pub accuracy: f64,
    /// Validation precision of the positive class.
    pub precision: f64,
    /// Validation recall of the positive class.
    pub recall: f64,
    /// Validation F1 of the positive class.
    pub f1: f64,
    /// Learning rate of the last step before the evaluation.
    pub learning_rate: f64,
    /// Training samples per second in the steps since the previous evaluation (each step's
    /// batches built, forward, backward, optimizer).
    pub train_samples_per_second: f64,
    /// Seconds the evaluation took (transformers' name).
    #[serde(default)]
    pub eval_runtime: f64,
    /// Wall time since the previous evaluation, this evaluation included: the steps, the
    /// evaluation and what runs between them (shuffling, logging, checkpoints).
    pub seconds: f64,
}

/// Evaluation of one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Cross-entropy.
    pub loss: f64,
    /// Accuracy, precision, recall, F1 and the confusion matrix.
    pub report: sentiment_metrics::ClassificationReport,
    /// Samples per second of the evaluation.
    pub samples_per_second: f64,
}

/// The folder, inside a run's, that holds its best model as a Hugging Face folder.
pub const BEST_MODEL_DIR: &str = "best_model";

/// What a finished run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// Every evaluation's metrics (one per epoch, unless `eval_steps` is set).
    pub history: Vec<EpochMetrics>,
    /// The epoch (1-based) of the best evaluation.
    pub best_epoch: usize,
    /// The optimizer step of the best evaluation: its record is the one with this step.
    pub best_step: usize,
    /// The best model's test evaluation, if a test split was given.
    pub test: Option<Evaluation>,
    /// The best model as a Hugging Face folder.
    pub best_model_dir: PathBuf,
    /// The epoch in which a hook stopped the run (pruning), if one did.
    #[serde(default)]
    pub stopped_early: Option<usize>,
    /// The epoch in which early stopping ended the run, if it did.
    #[serde(default)]
    pub early_stopped: Option<usize>,
}

impl TrainOutcome {
    /// The best evaluation's record.
    pub fn best(&self) -> &EpochMetrics {
        self.history
            .iter()
            .find(|m| m.step == self.best_step)
            .unwrap_or_else(|| &self.history[self.history.len() - 1])
    }
}

/// Progress of training, reported every step.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// 1-based epoch.
    pub epoch: usize,
    /// Epochs in all.
    pub epochs: usize,
    /// Steps done in this epoch.
    pub step_in_epoch: usize,
    /// Steps per epoch.
    pub steps_per_epoch: usize,
    /// Optimizer steps done in the run.
    pub step: usize,
    /// Optimizer steps the run will take (fewer if it stops early).
    pub total_steps: usize,
    /// Loss of the last step.
    pub loss: f64,
    /// Samples per second so far in this epoch.
    pub samples_per_second: f64,
    /// Seconds since the epoch started.
    pub elapsed_seconds: f64,
}

/// The splits a run uses.
#[derive(Debug, Clone)]
pub struct TrainData<'a> {
    /// Training rows.
    pub train: &'a TokenizedRows,
    /// Validation rows, evaluated every epoch.
    pub validation: &'a TokenizedRows,
    /// Test rows, evaluated once with the best model.
    pub test: Option<&'a TokenizedRows>,
}

fn check_labels(rows: &TokenizedRows, num_labels: usize, name: &str) -> Result<(), TrainError> {
    if let Some(&bad) = rows
        .labels
        .iter()
        .find(|&&l| l < 0 || l as usize >= num_labels)
    {
        return Err(TrainError::InvalidData(format!(
            "{name}: label {bad} is not below the model's {num_labels} classes"
        )));
    }
    Ok(())
}

/// A batch of rows as tensors on `device`, padded as `padding` says.
fn batch(
    rows: &TokenizedRows,
    indices: &[usize],
    padding: Padding,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<1, Int>) {
    let (ids, mask, width) = rows.batch(indices, padding);
    let labels: Vec<i64> = indices.iter().map(|&i| rows.labels[i]).collect();
    let shape = [indices.len(), width];
    (
        Tensor::from_data(TensorData::new(ids, shape), device),
        Tensor::from_data(TensorData::new(mask, shape), device),
        Tensor::from_data(TensorData::new(labels, [indices.len()]), device),
    )
}

/// The logits of every row (`num_labels` per row, in the rows' order) from `model` (in
/// validation mode). Batches are formed longest rows first, so that each pads little (with
/// dynamic `padding`), and the logits are put back in the rows' order. Under mixed precision
/// each weight is packed for the bf16 products once for all batches
/// ([`roberta_burn::autocast::reuse_weights`]). On the CPU backend all batches run as one job
/// of its thread pool ([`roberta_burn::in_thread_pool`]).
pub fn logits(
    model: &RobertaForSequenceClassification,
    rows: &TokenizedRows,
    num_labels: usize,
    batch_size: usize,
    padding: Padding,
    device: &Device,
) -> Result<Vec<f32>, TrainError> {
    let mut logits: Vec<f32> = vec![0.0; rows.len() * num_labels];
    let order = by_length(&rows.lengths());
    roberta_burn::in_thread_pool(device, || {
        roberta_burn::autocast::reuse_weights(|| {
            for chunk in order.chunks(batch_size.max(1)) {
                let (ids, mask, _) = batch(rows, chunk, padding, device);
                let out = model
                    .forward(ids, mask)
                    .into_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| TrainError::Backend(format!("{e:?}")))?;
                for (k, &row) in chunk.iter().enumerate() {
                    logits[row * num_labels..(row + 1) * num_labels]
                        .copy_from_slice(&out[k * num_labels..(k + 1) * num_labels]);
                }
            }
            Ok(logits)
        })
    })
}

/// Evaluates `model` (already in validation mode) on `rows`. Batches are formed longest rows
/// first, so that each pads little (with dynamic `padding`); the logits are put back in the
/// rows' order before anything is computed from them.
pub fn evaluate(
    model: &RobertaForSequenceClassification,
    rows: &TokenizedRows,
    num_labels: usize,
    batch_size: usize,
    positive_class: usize,
    padding: Padding,
    device: &Device,
) -> Result<Evaluation, TrainError> {
    let started = Instant::now();
    let logits = logits(model, rows, num_labels, batch_size, padding, device)?;
    let truth: Vec<usize> = rows.labels.iter().map(|&l| l as usize).collect();
    let matrix = ConfusionMatrix::from_logits(&truth, &logits, num_labels)?;
    let loss = if truth.is_empty() {
        f64::NAN
    } else {
        log_loss_from_logits(&truth, &logits, num_labels)?
    };
    Ok(Evaluation {
        loss,
        report: matrix.report(positive_class.min(num_labels - 1)),
        samples_per_second: rows.len() as f64 / started.elapsed().as_secs_f64().max(1e-9),
    })
}

/// Fine-tuning as a [`Task`] of the shared loop: cross-entropy on the labels, evaluation on the
/// validation split, keep-best checkpoints.
struct FineTune<'a> {
    data: &'a TrainData<'a>,
    config: &'a TrainConfig,
    num_labels: usize,
    device: &'a Device,
    policy: KeepBestCheckpoints,
}

impl Task for FineTune<'_> {
    type Model = RobertaForSequenceClassification;
    type Evaluation = Evaluation;
    type Epoch = EpochMetrics;
    type Batch = (Tensor<2, Int>, Tensor<2, Int>, Tensor<1, Int>);

    fn batch(
        &self,
        rows: &[usize],
        _epoch: usize,
        _batch: usize,
        device: &Device,
    ) -> Option<Self::Batch> {
        Some(batch(
            self.data.train,
            rows,
            self.config.run.padding,
            device,
        ))
    }

    fn items(&self, batch: &Self::Batch) -> usize {
        batch.2.dims()[0]
    }

    fn loss(&self, model: &Self::Model, batch: Self::Batch, device: &Device) -> Tensor<1> {
        let (ids, mask, labels) = batch;
        let logits = model.forward(ids, mask);
        CrossEntropyLossConfig::new()
            .init(device)
            .forward(logits, labels)
    }

    fn evaluate(&self, model: &Self::Model) -> Result<Evaluation, TrainError> {
        evaluate(
            model,
            self.data.validation,
            self.num_labels,
            self.config.eval_batch_size,
            self.config.positive_class,
            self.config.run.padding,
            self.device,
        )
    }

    fn record(&self, summary: EpochSummary, eval: Evaluation) -> EpochMetrics {
        EpochMetrics {
            epoch: summary.epoch,
            step: summary.step,
            train_loss: summary.train_loss,
            eval_loss: eval.loss,
            accuracy: eval.report.binary.accuracy,
            precision: eval.report.binary.precision,
            recall: eval.report.binary.recall,
            f1: eval.report.binary.f1,
            learning_rate: summary.learning_rate,
            train_samples_per_second: summary.train_samples_per_second,
            eval_runtime: summary.eval_runtime,
            seconds: summary.seconds,
        }
    }

    fn prune_checkpoints(
        &self,
        run_dir: &Path,
        history: &[EpochMetrics],
    ) -> Result<(), TrainError> {
        // Delete what the policy says, among the checkpoints still on disk.
        let values: Vec<f64> = history
            .iter()
            .map(|m| self.config.metric_for_best.of(m))
            .collect();
        let deleted: Vec<usize> = (0..history.len())
            .filter(|&i| !checkpoint_dir(run_dir, history[i].step).exists())
            .collect();
        for index in self.policy.to_delete(&values, &deleted) {
            remove_checkpoint(&checkpoint_dir(run_dir, history[index].step))?;
        }
        Ok(())
    }

    fn watched(&self, record: &EpochMetrics) -> (f64, bool) {
        let metric = self.config.metric_for_best;
        (metric.of(record), metric.greater_is_better())
    }

    fn train_lengths(&self) -> Vec<usize> {
        self.data.train.lengths()
    }

    fn eval_scalars(&self, m: &EpochMetrics) -> Vec<(&'static str, f64)> {
        vec![
            ("eval/loss", m.eval_loss),
            ("eval/accuracy", m.accuracy),
            ("eval/precision", m.precision),
            ("eval/recall", m.recall),
            ("eval/f1", m.f1),
        ]
    }
}

/// Fine-tunes `model` on `data`, writing checkpoints, metrics and the best model into
/// `run_dir`. With `resume`, continues from the latest complete checkpoint there (same data and
/// configuration required), ending with the metrics an uninterrupted run would give. A request
/// on `stop` saves a mid-epoch checkpoint and returns [`TrainError::Interrupted`].
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: RobertaForSequenceClassification,
    model_config: &RobertaConfig,
    tokenizer: Option<&RobertaTokenizer>,
    data: &TrainData<'_>,
    config: &TrainConfig,
    run_dir: &Path,
    device: &Device,
    resume: bool,
    stop: &StopToken,
    hooks: &mut dyn TrainHooks,
) -> Result<TrainOutcome, TrainError> {
    config.validate()?;
    let num_labels = model_config.num_labels();
    check_labels(data.train, num_labels, "train split")?;
    check_labels(data.validation, num_labels, "validation split")?;
    if data.train.is_empty() || data.validation.is_empty() {
        return Err(TrainError::InvalidData(
            "the train and validation splits need rows".into(),
        ));
    }
    let classes: std::collections::BTreeSet<i64> = data.train.labels.iter().copied().collect();
    if classes.len() < 2 {
        return Err(TrainError::InvalidData(format!(
            "the train split holds one class only ({classes:?}): nothing to learn"
        )));
    }
    model_config.check_sequence_length(data.train.max_length)?;
    std::fs::create_dir_all(run_dir).map_err(TrainError::io(run_dir))?;

    let policy = KeepBestCheckpoints {
        greater_is_better: config.metric_for_best.greater_is_better(),
        total_limit: config.save_total_limit,
    };
    let task = FineTune {
        data,
        config,
        num_labels,
        device,
        policy,
    };
    let settings = LoopSettings {
        config,
        config_file: "train_config.json",
        model_config,
        rows: data.train.len(),
        batch_size: config.batch_size,
        epochs: config.epochs,
        seed: config.seed,
        learning_rate: config.learning_rate,
        warmup_steps: config.warmup_steps,
        optimizer: config.optimizer,
        run: &config.run,
        start_line: format!(
            "started: {} train rows, {} validation rows, {}",
            data.train.len(),
            data.validation.len(),
            serde_json::to_string(config).expect("serialisable")
        ),
    };
    let model = model.to_device(&device.clone().autodiff()).train();
    let finished = run_epochs(
        &task, model, &settings, run_dir, device, resume, stop, hooks,
    )?;
    let history = finished.history;

    // Load the best checkpoint, evaluate it on the test split, export it.
    let values: Vec<f64> = history
        .iter()
        .map(|m| config.metric_for_best.of(m))
        .collect();
    let best_index = policy.best(&values).unwrap_or(history.len() - 1);
    let (best_epoch, best_step) = (history[best_index].epoch, history[best_index].step);
    let best_path = checkpoint_dir(run_dir, best_step).join("model.bpk");
    let best = RobertaForSequenceClassification::new(model_config, device)
        .try_load_file(&best_path)
        .map_err(|e| TrainError::BadCheckpoint {
            path: best_path.clone(),
            detail: format!("{e:?}"),
        })?;
    let test = match data.test {
        Some(rows) => {
            check_labels(rows, num_labels, "test split")?;
            // In the run's precision, as its validation.
            let evaluation = roberta_burn::autocast::bf16(config.run.bf16, || {
                evaluate(
                    &best,
                    rows,
                    num_labels,
                    config.eval_batch_size,
                    config.positive_class,
                    config.run.padding,
                    device,
                )
            })?;
            save_json(&run_dir.join("test_metrics.json"), &evaluation)?;
            Some(evaluation)
        }
        None => None,
    };
    let best_model_dir = run_dir.join(BEST_MODEL_DIR);
    best.save_pretrained(model_config, &best_model_dir)?;
    if let Some(tokenizer) = tokenizer {
        tokenizer.save(&best_model_dir)?;
    }
    let outcome = TrainOutcome {
        history,
        best_epoch,
        best_step,
        test,
        best_model_dir,
        stopped_early: finished.stopped_early,
        early_stopped: finished.early_stopped,
    };
    save_json(&run_dir.join("outcome.json"), &outcome)?;
    log(
        run_dir,
        &format!(
            "finished: best at step {best_step} (epoch {best_epoch}), test {}",
            outcome
                .test
                .as_ref()
                .map(|t| serde_json::to_string(&t.report.binary).expect("serialisable"))
                .unwrap_or_else(|| "not evaluated".into())
        ),
    )?;
    Ok(outcome)
}
