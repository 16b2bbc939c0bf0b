//! The fine-tuning loop: the notebook's `Trainer`, with resume.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use roberta_burn::{Pretrained, RobertaConfig, RobertaForSequenceClassification};
use sentiment_metrics::{ConfusionMatrix, log_loss_from_logits};
use sentiment_tokenize::{RobertaTokenizer, TokenizedRows};
use serde::{Deserialize, Serialize};

use crate::{
    AdamWSettings, FlatAdamW, KeepBestCheckpoints, LinearSchedule, TrainError, write_atomic,
};

/// Version of the files a run folder holds (2: the optimizer state is [`FlatAdamW`]'s flat
/// moments, `optimizer.bpk` + `optimizer.json`, instead of Burn's per-tensor record).
pub const RUN_VERSION: u32 = 2;

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
    /// Training batch size.
    pub batch_size: usize,
    /// Evaluation batch size (no gradients, so it can be larger).
    pub eval_batch_size: usize,
    /// Passes over the training split.
    pub epochs: usize,
    /// Linear warmup steps before the linear decay.
    pub warmup_steps: usize,
    /// Decoupled weight decay (AdamW).
    pub weight_decay: f64,
    /// AdamW β1.
    pub adam_beta1: f64,
    /// AdamW β2.
    pub adam_beta2: f64,
    /// AdamW ε (PyTorch's 1e-8; Burn's default is 1e-5).
    pub adam_epsilon: f64,
    /// Global gradient norm bound; 0 disables clipping.
    pub max_grad_norm: f64,
    /// Seed of the initialisation, the batch order and dropout.
    pub seed: u64,
    /// Metric that picks the best checkpoint.
    pub metric_for_best: BestMetric,
    /// Checkpoints kept (the best and the latest for 2).
    pub save_total_limit: usize,
    /// Class counted as positive for precision, recall and F1.
    pub positive_class: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: 5e-5,
            batch_size: 32,
            eval_batch_size: 64,
            epochs: 3,
            warmup_steps: 0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            seed: 42,
            metric_for_best: BestMetric::F1,
            save_total_limit: 2,
            positive_class: 1,
        }
    }
}

impl TrainConfig {
    /// Checks every setting; the message names it.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |detail: String| Err(TrainError::InvalidSetting(detail));
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!(
                "learning rate {} must be positive",
                self.learning_rate
            ));
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return bad("batch sizes must be at least 1".into());
        }
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) {
            return bad("AdamW betas must be in [0, 1)".into());
        }
        if self.adam_epsilon <= 0.0 || self.weight_decay < 0.0 || self.max_grad_norm < 0.0 {
            return bad("epsilon must be positive; weight decay and max grad norm >= 0".into());
        }
        if self.save_total_limit == 0 {
            return bad("save_total_limit must be at least 1".into());
        }
        Ok(())
    }
}

/// Metrics at the end of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: usize,
    /// Mean training loss over the epoch.
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
    /// Learning rate of the epoch's last step.
    pub learning_rate: f64,
    /// Training samples per second over the epoch.
    pub train_samples_per_second: f64,
    /// Wall time of the epoch, evaluation included.
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

/// `checkpoints/epoch-N/state.json`: where training stands after epoch N.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CheckpointState {
    version: u32,
    /// The last completed epoch, or for a partial checkpoint the epoch in progress.
    epoch: usize,
    step: usize,
    history: Vec<EpochMetrics>,
    config: TrainConfig,
    /// Set on a checkpoint taken mid-epoch (on Ctrl-C): how far the epoch got.
    #[serde(default)]
    partial: Option<PartialEpoch>,
}

/// Progress inside an interrupted epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct PartialEpoch {
    batches_done: usize,
    loss_sum: f64,
    seconds: f64,
}

/// Set by [`request_stop`] (a Ctrl-C handler): the trainer saves a checkpoint at the next
/// step boundary and returns [`TrainError::Interrupted`].
pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

/// Asks a running [`train`] to checkpoint and stop. Async-signal-safe (one atomic store), so a
/// SIGINT handler may call it.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// A deterministic seed for the dropout masks of one optimizer step: a run resumed at any step
/// draws the masks an uninterrupted run would.
pub(crate) fn step_seed(seed: u64, step: usize) -> u64 {
    let mut z = seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a finished run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// Per-epoch metrics.
    pub history: Vec<EpochMetrics>,
    /// The best epoch (1-based).
    pub best_epoch: usize,
    /// The best model's test evaluation, if a test split was given.
    pub test: Option<Evaluation>,
    /// The best model as a Hugging Face folder.
    pub best_model_dir: PathBuf,
    /// The epoch after which a hook stopped the run (pruning), if one did.
    #[serde(default)]
    pub stopped_early: Option<usize>,
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
    /// Loss of the last step.
    pub loss: f64,
    /// Samples per second so far in this epoch.
    pub samples_per_second: f64,
    /// Seconds since the epoch started.
    pub elapsed_seconds: f64,
}

/// Callbacks of a run: progress after every step, and a say after every epoch.
pub trait TrainHooks {
    /// After every optimizer step.
    fn on_step(&mut self, progress: Progress) {
        let _ = progress;
    }

    /// After every epoch's evaluation and checkpoint; returning false ends the run there (a
    /// pruner's decision), which then finishes as usual with the best epoch so far.
    fn on_epoch(&mut self, metrics: &EpochMetrics) -> bool {
        let _ = metrics;
        true
    }
}

/// A plain progress closure is a set of hooks that never stops the run.
impl<F: FnMut(Progress) + ?Sized> TrainHooks for F {
    fn on_step(&mut self, progress: Progress) {
        self(progress);
    }
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

pub(crate) fn checkpoint_dir(run_dir: &Path, epoch: usize) -> PathBuf {
    run_dir.join("checkpoints").join(format!("epoch-{epoch}"))
}

pub(crate) fn partial_dir(run_dir: &Path, epoch: usize) -> PathBuf {
    run_dir
        .join("checkpoints")
        .join(format!("epoch-{epoch}-partial"))
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

/// A batch of rows as tensors on `device`.
fn batch(
    rows: &TokenizedRows,
    indices: &[usize],
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<1, Int>) {
    let len = rows.max_length;
    let mut ids = Vec::with_capacity(indices.len() * len);
    let mut mask = Vec::with_capacity(indices.len() * len);
    let mut labels = Vec::with_capacity(indices.len());
    for &i in indices {
        ids.extend(
            rows.input_ids[i * len..(i + 1) * len]
                .iter()
                .map(|&t| i64::from(t)),
        );
        mask.extend(
            rows.attention_mask[i * len..(i + 1) * len]
                .iter()
                .map(|&m| i64::from(m)),
        );
        labels.push(rows.labels[i]);
    }
    let shape = [indices.len(), len];
    (
        Tensor::from_data(TensorData::new(ids, shape), device),
        Tensor::from_data(TensorData::new(mask, shape), device),
        Tensor::from_data(TensorData::new(labels, [indices.len()]), device),
    )
}

/// Evaluates `model` (already in validation mode) on `rows`.
pub fn evaluate(
    model: &RobertaForSequenceClassification,
    rows: &TokenizedRows,
    num_labels: usize,
    batch_size: usize,
    positive_class: usize,
    device: &Device,
) -> Result<Evaluation, TrainError> {
    let started = Instant::now();
    let mut logits: Vec<f32> = Vec::with_capacity(rows.len() * num_labels);
    let all: Vec<usize> = (0..rows.len()).collect();
    for chunk in all.chunks(batch_size.max(1)) {
        let (ids, mask, _) = batch(rows, chunk, device);
        let out = model.forward(ids, mask);
        logits.extend(
            out.into_data()
                .try_to_vec::<f32>()
                .map_err(|e| TrainError::Backend(format!("{e:?}")))?,
        );
    }
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

/// Fine-tunes `model` on `data`, writing checkpoints, metrics and the best model into
/// `run_dir`. With `resume`, continues from the latest complete checkpoint there (same data and
/// configuration required), ending with the metrics an uninterrupted run would give.
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

    let steps_per_epoch = data.train.len().div_ceil(config.batch_size);
    let schedule = LinearSchedule {
        peak: config.learning_rate,
        warmup_steps: config.warmup_steps,
        total_steps: steps_per_epoch * config.epochs,
    };
    let autodiff = device.clone().autodiff();
    let mut optimizer = FlatAdamW::new(AdamWSettings {
        beta1: config.adam_beta1,
        beta2: config.adam_beta2,
        epsilon: config.adam_epsilon,
        weight_decay: config.weight_decay,
        max_grad_norm: config.max_grad_norm,
    });
    let mut model = model.to_device(&autodiff).train();
    let mut history: Vec<EpochMetrics> = Vec::new();
    let mut step = 0usize;
    let mut start_epoch = 1usize;
    let mut partial: Option<PartialEpoch> = None;
    let mut stopped_early: Option<usize> = None;
    STOP.store(false, Ordering::SeqCst);

    if resume && let Some((dir, state)) = latest_checkpoint(run_dir)? {
        if state.config != *config {
            return Err(different_settings(run_dir));
        }
        (model, optimizer) = load_checkpoint(model, optimizer, &dir, device)?;
        step = state.step;
        history = state.history;
        partial = state.partial;
        start_epoch = if partial.is_some() {
            state.epoch
        } else {
            state.epoch + 1
        };
        log(
            run_dir,
            &format!(
                "resumed at step {step} (epoch {start_epoch}) from {}",
                dir.display()
            ),
        )?;
    } else {
        save_json(&run_dir.join("train_config.json"), &(config, model_config))?;
        log(
            run_dir,
            &format!(
                "started: {} train rows, {} validation rows, {} steps per epoch, {}",
                data.train.len(),
                data.validation.len(),
                steps_per_epoch,
                serde_json::to_string(config).expect("serialisable")
            ),
        )?;
    }

    let loss_fn = CrossEntropyLossConfig::new().init(&autodiff);
    let policy = KeepBestCheckpoints {
        greater_is_better: config.metric_for_best.greater_is_better(),
        total_limit: config.save_total_limit,
    };
    for epoch in start_epoch..=config.epochs {
        let started = Instant::now();
        // Batch order and dropout depend on (seed, epoch) only, so a resumed run sees the
        // same data in the same order as an uninterrupted one.
        let mut order: Vec<usize> = (0..data.train.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        rng.set_stream(epoch as u64);
        order.shuffle(&mut rng);
        // An interrupted epoch continues where it stopped.
        let resumed = partial.take();
        let skip = resumed.map_or(0, |p| p.batches_done);
        let mut loss_sum = resumed.map_or(0.0, |p| p.loss_sum);
        let earlier_seconds = resumed.map_or(0.0, |p| p.seconds);
        let mut rate = schedule.rate(step);
        for (i, chunk) in order.chunks(config.batch_size).enumerate().skip(skip) {
            if STOP.load(Ordering::SeqCst) {
                let progress = PartialEpoch {
                    batches_done: i,
                    loss_sum,
                    seconds: earlier_seconds + started.elapsed().as_secs_f64(),
                };
                let dir = partial_dir(run_dir, epoch);
                let state = CheckpointState {
                    version: RUN_VERSION,
                    epoch,
                    step,
                    history: history.clone(),
                    config: config.clone(),
                    partial: Some(progress),
                };
                save_checkpoint(&model, &optimizer, &dir, &state)?;
                log(
                    run_dir,
                    &format!("interrupted at step {step}; checkpoint {}", dir.display()),
                )?;
                return Err(TrainError::Interrupted { checkpoint: dir });
            }
            autodiff.seed(step_seed(config.seed, step));
            let (ids, mask, labels) = batch(data.train, chunk, &autodiff);
            let logits = model.forward(ids, mask);
            let loss = loss_fn.forward(logits, labels);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            rate = schedule.rate(step);
            (model, _) = optimizer.step(rate, model, grads)?;
            // Read once the whole step is queued: on a GPU, a read before the backward pass
            // would drain the device's queue in the middle of every step.
            let loss_value = f64::from(loss.into_scalar::<f32>());
            if !loss_value.is_finite() {
                return Err(TrainError::Diverged { epoch, step });
            }
            loss_sum += loss_value;
            step += 1;
            hooks.on_step(Progress {
                epoch,
                epochs: config.epochs,
                step_in_epoch: i + 1,
                steps_per_epoch,
                loss: loss_value,
                samples_per_second: ((i + 1 - skip) * config.batch_size).min(order.len()) as f64
                    / started.elapsed().as_secs_f64().max(1e-9),
                elapsed_seconds: started.elapsed().as_secs_f64(),
            });
        }
        let train_seconds = earlier_seconds + started.elapsed().as_secs_f64();
        let eval = evaluate(
            &model.valid(),
            data.validation,
            num_labels,
            config.eval_batch_size,
            config.positive_class,
            device,
        )?;
        let metrics = EpochMetrics {
            epoch,
            step,
            train_loss: loss_sum / steps_per_epoch as f64,
            eval_loss: eval.loss,
            accuracy: eval.report.binary.accuracy,
            precision: eval.report.binary.precision,
            recall: eval.report.binary.recall,
            f1: eval.report.binary.f1,
            learning_rate: rate,
            train_samples_per_second: data.train.len() as f64 / train_seconds.max(1e-9),
            seconds: earlier_seconds + started.elapsed().as_secs_f64(),
        };
        history.push(metrics);
        let dir = checkpoint_dir(run_dir, epoch);
        let state = CheckpointState {
            version: RUN_VERSION,
            epoch,
            step,
            history: history.clone(),
            config: config.clone(),
            partial: None,
        };
        save_checkpoint(&model, &optimizer, &dir, &state)?;
        let stale = partial_dir(run_dir, epoch);
        if stale.exists() {
            std::fs::remove_dir_all(&stale).map_err(TrainError::io(&stale))?;
        }
        write_metrics(run_dir, &history)?;
        log(
            run_dir,
            &format!(
                "epoch {epoch}: {}",
                serde_json::to_string(&history[history.len() - 1]).expect("serialisable")
            ),
        )?;
        // Delete what the policy says, among the checkpoints still on disk.
        let values: Vec<f64> = history
            .iter()
            .map(|m| config.metric_for_best.of(m))
            .collect();
        let deleted: Vec<usize> = (0..history.len())
            .filter(|&i| !checkpoint_dir(run_dir, history[i].epoch).exists())
            .collect();
        for index in policy.to_delete(&values, &deleted) {
            let dir = checkpoint_dir(run_dir, history[index].epoch);
            std::fs::remove_dir_all(&dir).map_err(TrainError::io(&dir))?;
        }
        if !hooks.on_epoch(&history[history.len() - 1]) && epoch < config.epochs {
            stopped_early = Some(epoch);
            log(
                run_dir,
                &format!("stopped after epoch {epoch} by a hook (pruned)"),
            )?;
            break;
        }
    }

    // Load the best checkpoint, evaluate it on the test split, export it.
    let values: Vec<f64> = history
        .iter()
        .map(|m| config.metric_for_best.of(m))
        .collect();
    let best_index = policy.best(&values).unwrap_or(history.len() - 1);
    let best_epoch = history[best_index].epoch;
    let best_path = checkpoint_dir(run_dir, best_epoch).join("model.bpk");
    let best = RobertaForSequenceClassification::new(model_config, device)
        .try_load_file(&best_path)
        .map_err(|e| TrainError::BadCheckpoint {
            path: best_path.clone(),
            detail: format!("{e:?}"),
        })?;
    let test = match data.test {
        Some(rows) => {
            check_labels(rows, num_labels, "test split")?;
            let evaluation = evaluate(
                &best,
                rows,
                num_labels,
                config.eval_batch_size,
                config.positive_class,
                device,
            )?;
            save_json(&run_dir.join("test_metrics.json"), &evaluation)?;
            Some(evaluation)
        }
        None => None,
    };
    let best_model_dir = run_dir.join("best_model");
    best.save_pretrained(model_config, &best_model_dir)?;
    if let Some(tokenizer) = tokenizer {
        tokenizer.save(&best_model_dir)?;
    }
    let outcome = TrainOutcome {
        history,
        best_epoch,
        test,
        best_model_dir,
        stopped_early,
    };
    save_json(&run_dir.join("outcome.json"), &outcome)?;
    log(
        run_dir,
        &format!(
            "finished: best epoch {best_epoch}, test {}",
            outcome
                .test
                .as_ref()
                .map(|t| serde_json::to_string(&t.report.binary).expect("serialisable"))
                .unwrap_or_else(|| "not evaluated".into())
        ),
    )?;
    Ok(outcome)
}

/// Appends a time-stamped line to `run_dir/train.log`.
pub(crate) fn log(run_dir: &Path, line: &str) -> Result<(), TrainError> {
    use std::io::Write;
    let path = run_dir.join("train.log");
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "[{seconds:.3}] {line}"))
        .map_err(TrainError::io(&path))
}

pub(crate) fn save_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), TrainError> {
    let mut json = serde_json::to_vec_pretty(value).expect("serialisable");
    json.push(b'\n');
    write_atomic(path, &json)
}

fn write_metrics(run_dir: &Path, history: &[EpochMetrics]) -> Result<(), TrainError> {
    save_json(&run_dir.join("metrics.json"), history)?;
    let mut csv = String::from(
        "epoch,step,train_loss,eval_loss,accuracy,precision,recall,f1,learning_rate,train_samples_per_second,seconds\n",
    );
    for m in history {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            m.epoch,
            m.step,
            m.train_loss,
            m.eval_loss,
            m.accuracy,
            m.precision,
            m.recall,
            m.f1,
            m.learning_rate,
            m.train_samples_per_second,
            m.seconds
        ));
    }
    write_atomic(&run_dir.join("metrics.csv"), csv.as_bytes())
}

/// Writes a checkpoint folder under a temporary name, then renames it: a checkpoint directory
/// with a `state.json` is always complete.
pub(crate) fn save_checkpoint<M: Module, S: Serialize>(
    model: &M,
    optimizer: &FlatAdamW,
    dir: &Path,
    state: &S,
) -> Result<(), TrainError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    if temp.exists() {
        std::fs::remove_dir_all(&temp).map_err(TrainError::io(&temp))?;
    }
    std::fs::create_dir_all(&temp).map_err(TrainError::io(&temp))?;
    let model_path = temp.join("model.bpk");
    model
        .clone()
        .save_file(&model_path)
        .map_err(|e| TrainError::BadCheckpoint {
            path: model_path.clone(),
            detail: format!("{e:?}"),
        })?;
    optimizer.save(&temp.join("optimizer.bpk"))?;
    save_json(&temp.join("state.json"), state)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(TrainError::io(dir))?;
    }
    std::fs::rename(&temp, dir).map_err(TrainError::io(dir))
}

/// The error for resuming a run folder with other settings than it was started with.
pub(crate) fn different_settings(run_dir: &Path) -> TrainError {
    TrainError::InvalidSetting(format!(
        "{}: the run was started with other settings; resume with the same ones or use a new \
         run folder",
        run_dir.display()
    ))
}

/// Loads the model and optimizer state of the checkpoint folder `dir`; the moments go onto
/// `device`, the plain device the run trains on.
pub(crate) fn load_checkpoint<M: Module>(
    model: M,
    optimizer: FlatAdamW,
    dir: &Path,
    device: &Device,
) -> Result<(M, FlatAdamW), TrainError> {
    let model_path = dir.join("model.bpk");
    let model = model
        .try_load_file(&model_path)
        .map_err(|e| TrainError::BadCheckpoint {
            path: model_path.clone(),
            detail: format!("{e:?}"),
        })?;
    let optimizer = optimizer.load(&dir.join("optimizer.bpk"), device)?;
    Ok((model, optimizer))
}

/// The most advanced complete checkpoint of `run_dir` (folder and state), if any.
fn latest_checkpoint(run_dir: &Path) -> Result<Option<(PathBuf, CheckpointState)>, TrainError> {
    // Optimizer steps taken measure progress, partial or not.
    latest_checkpoint_by(run_dir, |s: &CheckpointState| {
        (s.version, s.step, s.partial.is_none())
    })
}

/// The checkpoint of `run_dir` whose state ranks highest by `progress` (a state version first,
/// then how far the run got), if any.
pub(crate) fn latest_checkpoint_by<S: serde::de::DeserializeOwned>(
    run_dir: &Path,
    progress: impl Fn(&S) -> (u32, usize, bool),
) -> Result<Option<(PathBuf, S)>, TrainError> {
    let dir = run_dir.join("checkpoints");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let mut latest: Option<(PathBuf, S)> = None;
    for entry in entries {
        let path = entry.map_err(TrainError::io(&dir))?.path();
        let state_path = path.join("state.json");
        let Ok(text) = std::fs::read_to_string(&state_path) else {
            continue;
        };
        let state: S = serde_json::from_str(&text).map_err(|e| TrainError::BadCheckpoint {
            path: state_path.clone(),
            detail: e.to_string(),
        })?;
        let version = progress(&state).0;
        if version != RUN_VERSION {
            return Err(TrainError::BadCheckpoint {
                path: state_path,
                detail: format!("version {version} (expected {RUN_VERSION})"),
            });
        }
        let rank = |s: &S| {
            let (_, step, complete) = progress(s);
            (step, complete)
        };
        if latest.as_ref().is_none_or(|(_, l)| rank(&state) > rank(l)) {
            latest = Some((path, state));
        }
    }
    Ok(latest)
}
