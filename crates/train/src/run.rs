//! The one epoch loop that fine-tuning ([`crate::train`]) and masked-LM pre-training
//! ([`crate::pretrain`]) share: seeded batch order, per-step dropout seeds, AdamW with the linear
//! schedule and clipping, divergence checks, evaluations and checkpoints every epoch or every N
//! steps (`max_steps`, `eval_steps`, `save_steps`), a checkpoint on a stop request, exact resume
//! from any of them, metrics files, the run log and the hooks.
//!
//! What differs between the two is a [`Task`]: the loss of one batch, the evaluation, the
//! record of an evaluation, and which checkpoints to keep. A new kind of training implements
//! `Task` and gets everything else.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{
    AdamWSettings, FlatAdamW, LinearSchedule, MicroBatch, Progress, RunOptions, TrainError,
    train_step, write_atomic,
};

/// Version of the files a run folder holds (2: the optimizer state is [`FlatAdamW`]'s flat
/// moments, `optimizer.bpk` + `optimizer.json`, instead of Burn's per-tensor record; 3:
/// checkpoints are named by step, `checkpoints/step-N`, and record the training since the
/// last evaluation, so that evaluations and checkpoints can fall mid-epoch).
pub const RUN_VERSION: u32 = 3;

/// A request to stop a run, shared between whoever asks (a Ctrl-C handler, a pipeline worker)
/// and the runs it should reach. The run saves a checkpoint at the next step boundary and
/// returns [`TrainError::Interrupted`]. Each caller owns its token, so one run's stop never
/// reaches, or is cleared by, a run that was handed another token.
#[derive(Debug, Clone, Default)]
pub struct StopToken(Arc<AtomicBool>);

impl StopToken {
    /// A token no one has requested yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the runs holding this token to checkpoint and stop. One atomic store:
    /// async-signal-safe, so a SIGINT handler may call it.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// A token requested when `flag` is set, by [`StopToken::request`] or by whatever else
    /// holds the flag (a signal handler's crate).
    pub fn from_flag(flag: Arc<AtomicBool>) -> Self {
        Self(flag)
    }
}

/// Callbacks of a run: progress after every step, and a say after every epoch. `E` is the
/// epoch's record ([`crate::EpochMetrics`] for fine-tuning, [`crate::PretrainEpoch`] for
/// pre-training).
pub trait TrainHooks<E = crate::EpochMetrics> {
    /// After every optimizer step.
    fn on_step(&mut self, progress: Progress) {
        let _ = progress;
    }

    /// After every epoch's evaluation and checkpoint; returning false ends the run there (a
    /// pruner's decision), which then finishes as usual with the best epoch so far.
    fn on_epoch(&mut self, record: &E) -> bool {
        let _ = record;
        true
    }
}

/// A plain progress closure is a set of hooks that never stops the run.
impl<E, F: FnMut(Progress)> TrainHooks<E> for F {
    fn on_step(&mut self, progress: Progress) {
        self(progress);
    }
}

/// transformers' `EarlyStoppingCallback`: stop after `patience` evaluations in a row without
/// an improvement of the best metric by more than `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Evaluations without improvement before stopping (at least 1).
    pub patience: usize,
    /// How much better than the best so far a value must be to count as an improvement.
    pub threshold: f64,
}

impl EarlyStopping {
    /// Whether the run should stop after the evaluations `values` (in order), where larger is
    /// better when `greater_is_better`. A pure function of the history, so a resumed run stops
    /// where an uninterrupted one would. As transformers compares each value with the best
    /// before it: the first value sets the best; a later one resets the count when it beats
    /// the best by more than the threshold, and adds one otherwise.
    pub fn should_stop(&self, values: &[f64], greater_is_better: bool) -> bool {
        let mut best: Option<f64> = None;
        let mut waited = 0;
        for &value in values {
            let improved = match best {
                None => true,
                Some(b) => {
                    let better = if greater_is_better {
                        value > b
                    } else {
                        value < b
                    };
                    better && (value - b).abs() > self.threshold
                }
            };
            if improved {
                waited = 0;
            } else {
                waited += 1;
            }
            let better_than_best = match best {
                None => true,
                Some(b) => {
                    if greater_is_better {
                        value > b
                    } else {
                        value < b
                    }
                }
            };
            if better_than_best && !value.is_nan() {
                best = Some(value);
            }
        }
        waited >= self.patience
    }

    /// Refuses a patience of 0 or a threshold that is negative or not finite.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.patience == 0 {
            return Err(TrainError::InvalidSetting(
                "early_stopping_patience must be at least 1".into(),
            ));
        }
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return Err(TrainError::InvalidSetting(format!(
                "early_stopping_threshold {} must be finite and >= 0",
                self.threshold
            )));
        }
        Ok(())
    }
}

/// The loop's own numbers for an epoch, handed to [`Task::record`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct EpochSummary {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: usize,
    /// Mean training loss of the steps since the previous evaluation.
    pub train_loss: f64,
    /// Learning rate of the last step before the evaluation.
    pub learning_rate: f64,
    /// Training samples per second in the steps since the previous evaluation.
    pub train_samples_per_second: f64,
    /// Seconds this evaluation took.
    pub eval_runtime: f64,
    /// Wall time since the previous evaluation's record, this evaluation included.
    pub seconds: f64,
}

/// What one kind of training adds to the shared loop. Shared with the CPU backend's thread
/// pool, which runs its steps and evaluations ([`roberta_burn::in_thread_pool`]).
pub(crate) trait Task: Sync {
    /// The model being trained.
    type Model: Module;
    /// The held-out evaluation after an epoch.
    type Evaluation: Send;
    /// One row of the run's metrics: what an epoch produced.
    type Epoch: Clone + Serialize + DeserializeOwned;
    /// A training batch ready for the forward pass.
    type Batch;

    /// The training batch `batch` (0-based micro-batch within `epoch`) of the rows at `rows`,
    /// on `device` (the autodiff device), masks drawn; None when it has nothing to learn from
    /// (no update is made from it; the step is still counted).
    fn batch(
        &self,
        rows: &[usize],
        epoch: usize,
        batch: usize,
        device: &Device,
    ) -> Option<Self::Batch>;

    /// The items a batch's loss is the mean over (rows; masked tokens for a masked LM).
    fn items(&self, batch: &Self::Batch) -> usize;

    /// The mean loss of `batch`.
    fn loss(&self, model: &Self::Model, batch: Self::Batch, device: &Device) -> Tensor<1>;

    /// Evaluates `model` (in validation mode) on the held-out rows.
    fn evaluate(&self, model: &Self::Model) -> Result<Self::Evaluation, TrainError>;

    /// The epoch's record from the loop's numbers and the evaluation.
    fn record(&self, summary: EpochSummary, evaluation: Self::Evaluation) -> Self::Epoch;

    /// Deletes the epoch checkpoints no longer needed once `history`'s last epoch is saved.
    fn prune_checkpoints(&self, run_dir: &Path, history: &[Self::Epoch]) -> Result<(), TrainError>;

    /// The value early stopping watches in an epoch's record, and whether larger is better.
    fn watched(&self, record: &Self::Epoch) -> (f64, bool);

    /// The evaluation scalars of an epoch's record, by the Trainer's names (`eval/loss`, …).
    fn eval_scalars(&self, record: &Self::Epoch) -> Vec<(&'static str, f64)>;

    /// Real tokens of every training row, for length grouping.
    fn train_lengths(&self) -> Vec<usize>;

    /// Whether early stopping by `rule` ends the run after the epochs of `history`.
    fn stops_early(&self, rule: EarlyStopping, history: &[Self::Epoch]) -> bool {
        let Some(last) = history.last() else {
            return false;
        };
        let values: Vec<f64> = history.iter().map(|r| self.watched(r).0).collect();
        rule.should_stop(&values, self.watched(last).1)
    }
}

/// The settings the loop itself uses, taken from a task's configuration.
pub(crate) struct LoopSettings<'a, C> {
    /// The whole configuration: saved with every checkpoint, compared on resume.
    pub config: &'a C,
    /// The file (in the run folder) that records the configuration and the model's.
    pub config_file: &'a str,
    /// The model's configuration, saved next to `config`.
    pub model_config: &'a roberta_burn::RobertaConfig,
    /// Training rows.
    pub rows: usize,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Passes over the rows.
    pub epochs: usize,
    /// Seed of the batch order and dropout.
    pub seed: u64,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Linear warmup steps.
    pub warmup_steps: usize,
    /// AdamW's settings.
    pub optimizer: AdamWSettings,
    /// Accumulation, length grouping, early stopping and reporting.
    pub run: &'a RunOptions,
    /// The line logged when a fresh run starts (the loop adds the steps per epoch).
    pub start_line: String,
}

/// What [`run_epochs`] leaves: the model after its last step, every epoch's record, and the
/// epoch after which a hook stopped the run, if one did.
pub(crate) struct Finished<M, E> {
    /// The model after the last step (still on the autodiff device).
    pub model: M,
    /// Every epoch's record, in order.
    pub history: Vec<E>,
    /// The epoch after which a hook ended the run.
    pub stopped_early: Option<usize>,
    /// The epoch after which early stopping ended the run.
    pub early_stopped: Option<usize>,
}

/// `checkpoints/step-N/state.json`: where training stands after optimizer step N.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunState<E, C> {
    version: u32,
    /// The last completed epoch, or for a mid-epoch checkpoint the epoch in progress.
    epoch: usize,
    step: usize,
    history: Vec<E>,
    config: C,
    /// Set on a checkpoint taken mid-epoch: how far the epoch got.
    partial: Option<PartialEpoch>,
    /// The training since the last evaluation, which the next one's record sums up.
    interval: Interval,
    /// Whether the checkpoint holds an evaluated model (one keep-best may choose), rather than
    /// a resume point only (`save_steps`, or a stop request).
    evaluated: bool,
}

impl<E: Clone, C: Clone> RunState<E, C> {
    /// An evaluated checkpoint at the end of `epoch`; the caller sets what differs.
    fn new(epoch: usize, step: usize, history: &[E], config: &C) -> Self {
        Self {
            version: RUN_VERSION,
            epoch,
            step,
            history: history.to_vec(),
            config: config.clone(),
            partial: None,
            interval: Interval::default(),
            evaluated: true,
        }
    }
}

/// A checkpoint folder and the state it holds.
type Checkpoint<E, C> = (PathBuf, RunState<E, C>);

/// Progress inside an epoch a checkpoint was taken in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct PartialEpoch {
    /// Optimizer steps done in the epoch.
    batches_done: usize,
}

/// The training between two evaluations: what the next evaluation's record reports as the
/// training loss, throughput and time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Interval {
    /// Sum of the steps' losses.
    loss_sum: f64,
    /// Optimizer steps.
    steps: usize,
    /// Training rows.
    rows: usize,
    /// Time in the steps (each one's batches built, forward, backward, optimizer).
    seconds: f64,
    /// Wall time since the previous evaluation's record, up to the end of the last step: the
    /// steps and what runs between them (shuffling, logging, checkpoints). (Absent from a
    /// checkpoint written before it was kept: counted from the resumption.)
    #[serde(default)]
    wall_seconds: f64,
}

/// The folder of the checkpoint taken after optimizer step `step` (the Trainer's
/// `checkpoint-N`, under `checkpoints/`).
pub(crate) fn checkpoint_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step}"))
}

/// Deletes a checkpoint folder, if it is still there.
pub(crate) fn remove_checkpoint(dir: &Path) -> Result<(), TrainError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TrainError::io(dir)(e)),
        _ => Ok(()),
    }
}

/// Trains `model` (already on the autodiff device, in training mode) for the epochs `settings`
/// ask, resuming from the latest checkpoint in `run_dir` when `resume` is set; in mixed bf16
/// precision when they say so (the CPU backend only).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_epochs<T, C>(
    task: &T,
    model: T::Model,
    settings: &LoopSettings<'_, C>,
    run_dir: &Path,
    device: &Device,
    resume: bool,
    stop: &StopToken,
    hooks: &mut dyn TrainHooks<T::Epoch>,
) -> Result<Finished<T::Model, T::Epoch>, TrainError>
where
    T: Task,
    C: Clone + PartialEq + Serialize + DeserializeOwned,
{
    if settings.run.bf16 && !sentiment_backend::is_flex(device) {
        return Err(TrainError::InvalidSetting(
            "bf16: mixed precision runs on the CPU backend (flex); other backends train in \
             their device's float type"
                .into(),
        ));
    }
    // Every step and evaluation below runs on this thread, in the run's precision.
    let _precision = roberta_burn::autocast::bf16_scope(settings.run.bf16);
    let accumulation = settings.run.gradient_accumulation_steps.max(1);
    let lengths = settings.run.group_by_length.then(|| task.train_lengths());
    // The schedule counts optimizer steps, not micro-batches.
    let steps_per_epoch = settings
        .rows
        .div_ceil(settings.batch_size)
        .div_ceil(accumulation);
    // `max_steps` overrides the epochs: as many passes as its steps need, the last cut short.
    let total_steps = settings
        .run
        .max_steps
        .unwrap_or(steps_per_epoch * settings.epochs);
    let epochs = total_steps.div_ceil(steps_per_epoch);
    let schedule = LinearSchedule {
        peak: settings.learning_rate,
        warmup_steps: settings.warmup_steps,
        total_steps,
    };
    let autodiff = device.clone().autodiff();
    let mut model = model;
    let mut optimizer = FlatAdamW::new(settings.optimizer);
    let mut history: Vec<T::Epoch> = Vec::new();
    let (mut step, mut start_epoch) = (0usize, 1usize);
    // The epoch of the checkpoint resumed from.
    let mut resumed_epoch = 0;
    let mut partial: Option<PartialEpoch> = None;
    let mut interval = Interval::default();
    // The newest checkpoint that no evaluation made (a `save_steps` one, or a stop's): only
    // there to resume from, so it goes once a newer checkpoint exists.
    let mut resume_only: Option<PathBuf> = None;

    // A fresh run never overwrites one, and a resume never silently starts afresh.
    let config_path = run_dir.join(settings.config_file);
    match (resume, config_path.exists()) {
        (true, false) => {
            return Err(TrainError::NothingToResume {
                run_dir: run_dir.to_path_buf(),
                config_file: settings.config_file.into(),
            });
        }
        (false, true) => {
            return Err(TrainError::RunExists {
                run_dir: run_dir.to_path_buf(),
                config_file: settings.config_file.into(),
            });
        }
        _ => {}
    }
    let candidates = if resume {
        remove_stale_temporaries(&run_dir.join("checkpoints"))?;
        checkpoints_newest_first::<T::Epoch, C>(run_dir)?
    } else {
        Vec::new()
    };
    // The newest checkpoint that reads back: one whose files a crash cut short (written but
    // not yet on disk) is passed over for the one before, and the log says so.
    let mut latest = None;
    let mut unreadable = None;
    for (dir, state) in candidates {
        if state.config != *settings.config {
            return Err(different_settings(run_dir, &state.config, settings.config));
        }
        match load_checkpoint(model.clone(), optimizer.clone(), &dir, device) {
            Ok(loaded) => {
                (model, optimizer) = loaded;
                latest = Some((dir, state));
                break;
            }
            Err(e @ (TrainError::BadCheckpoint { .. } | TrainError::Io { .. })) => {
                log(
                    run_dir,
                    &format!(
                        "checkpoint {} is unreadable ({e}): a write cut short, by a crash say; \
                         resuming from the one before it, if any",
                        dir.display()
                    ),
                )?;
                unreadable.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    // Checkpoints, none readable: an error, never a silent fresh start.
    if let (None, Some(e)) = (&latest, unreadable) {
        return Err(e);
    }
    if let Some((dir, state)) = latest {
        (step, history, partial, interval) =
            (state.step, state.history, state.partial, state.interval);
        start_epoch = state.epoch + usize::from(partial.is_none());
        resumed_epoch = state.epoch;
        if !state.evaluated {
            resume_only = Some(dir.clone());
        }
        log(
            run_dir,
            &format!(
                "resumed at step {step} (epoch {start_epoch}) from {}",
                dir.display()
            ),
        )?;
    } else {
        if resume {
            // Killed before its first checkpoint: it starts afresh, with the same settings.
            let saved = std::fs::read_to_string(&config_path)
                .ok()
                .and_then(|t| serde_json::from_str::<(C, serde_json::Value)>(&t).ok());
            if let Some((saved, _)) = saved
                && saved != *settings.config
            {
                return Err(different_settings(run_dir, &saved, settings.config));
            }
        }
        save_json(&config_path, &(settings.config, settings.model_config))?;
        log(
            run_dir,
            &format!(
                "{}, {steps_per_epoch} steps per epoch, {total_steps} steps",
                settings.start_line
            ),
        )?;
    }
    if settings.run.bf16 {
        log(
            run_dir,
            &roberta_burn::autocast::Bf16Support::detect().describe(),
        )?;
    }

    let (mut stopped_early, mut early_stopped) = (None, None);
    // Where the wall time not yet added to `interval` starts: everything between two records
    // (steps, shuffling, logging, checkpoints, the evaluation) is counted once.
    let mut mark = Instant::now();
    let mut tensorboard = if settings.run.tensorboard() {
        Some(crate::tensorboard::EventWriter::create(
            &run_dir.join("tb"),
        )?)
    } else {
        None
    };
    // A run resumed after early stopping had ended it has nothing left to do.
    let early_stopping = settings.run.early_stopping();
    if early_stopping.is_some_and(|rule| task.stops_early(rule, &history)) {
        early_stopped = Some(resumed_epoch);
    }
    // The step of the newest checkpoint on disk: a stop request right after it has nothing to
    // add.
    let mut saved_at: Option<usize> = None;
    'epochs: for epoch in start_epoch..=epochs {
        if early_stopped.is_some() || step >= total_steps {
            break;
        }
        let started = Instant::now();
        // Batch order, masks and dropout depend on (seed, epoch, step) only, so a resumed run
        // sees the same data in the same order as an uninterrupted one.
        let mut order: Vec<usize> = (0..settings.rows).collect();
        let mut shuffle = ChaCha8Rng::seed_from_u64(settings.seed);
        shuffle.set_stream(epoch as u64);
        order.shuffle(&mut shuffle);
        if let Some(lengths) = &lengths {
            order = sentiment_tokenize::group_by_length(&order, lengths, settings.batch_size);
        }
        // An interrupted epoch continues where it stopped.
        let skip = partial.take().map_or(0, |p| p.batches_done);
        // One optimizer step per `accumulation` micro-batches (the last step of an epoch may
        // take fewer); `skip` counts steps, so a mid-epoch checkpoint is on a step boundary.
        let micro: Vec<&[usize]> = order.chunks(settings.batch_size).collect();
        let mut rows_done = 0usize;
        for (i, group) in micro.chunks(accumulation).enumerate().skip(skip) {
            if stop.is_requested() {
                let dir = checkpoint_dir(run_dir, step);
                if saved_at != Some(step) {
                    let mut state = RunState::new(epoch, step, &history, settings.config);
                    state.partial = Some(PartialEpoch { batches_done: i });
                    state.interval = interval;
                    state.evaluated = false;
                    save_checkpoint(&model, &optimizer, &dir, &state)?;
                }
                log(
                    run_dir,
                    &format!("interrupted at step {step}; checkpoint {}", dir.display()),
                )?;
                return Err(TrainError::Interrupted { checkpoint: dir });
            }
            let step_started = Instant::now();
            // The dropout masks of a step depend on (seed, step) only: a run resumed at any
            // step draws the masks an uninterrupted run would.
            autodiff.seed(sentiment_backend::mix_seed(settings.seed, step as u64));
            let rate = schedule.rate(step);
            let wants_norm = tensorboard.is_some();
            // The step is one job of the CPU backend's thread pool, not hundreds.
            let outcome;
            (model, outcome) = roberta_burn::in_thread_pool(device, || {
                // Batch indices count micro-batches, so masks drawn per batch do not depend on
                // K.
                let batches: Vec<MicroBatch<T::Batch>> = group
                    .iter()
                    .enumerate()
                    .filter_map(|(m, rows)| {
                        let batch = task.batch(rows, epoch, i * accumulation + m, &autodiff)?;
                        Some(MicroBatch {
                            items: task.items(&batch),
                            batch,
                        })
                    })
                    .collect();
                let (model, stepped) =
                    train_step(model, &mut optimizer, rate, batches, |model, batch| {
                        task.loss(model, batch, &autodiff)
                    })?;
                let outcome = stepped.map(|stepped| {
                    let norm = wants_norm.then(|| stepped.report.grad_norm());
                    (stepped.loss(), norm)
                });
                Ok::<_, TrainError>((model, outcome))
            })?;
            let mut step_loss = None;
            let mut grad_norm = None;
            if let Some((value, norm)) = outcome {
                if !value.is_finite() {
                    return Err(TrainError::Diverged { epoch, step });
                }
                interval.loss_sum += value;
                step_loss = Some(value);
                grad_norm = norm;
            }
            step += 1;
            let rows: usize = group.iter().map(|b| b.len()).sum();
            rows_done += rows;
            interval.rows += rows;
            interval.steps += 1;
            interval.seconds += step_started.elapsed().as_secs_f64();
            interval.wall_seconds += mark.elapsed().as_secs_f64();
            mark = Instant::now();
            if let (Some(tb), Some(loss), Some(norm)) = (&mut tensorboard, step_loss, grad_norm) {
                tb.scalar("train/loss", loss, step)?;
                tb.scalar("train/learning_rate", rate, step)?;
                tb.scalar("train/grad_norm", norm, step)?;
                tb.scalar(
                    "train/epoch",
                    epoch as f64 - 1.0 + (i + 1) as f64 / steps_per_epoch as f64,
                    step,
                )?;
            }
            hooks.on_step(Progress {
                epoch,
                epochs,
                step_in_epoch: i + 1,
                steps_per_epoch,
                step,
                total_steps,
                loss: step_loss.unwrap_or(f64::NAN),
                samples_per_second: rows_done as f64 / started.elapsed().as_secs_f64().max(1e-9),
                elapsed_seconds: started.elapsed().as_secs_f64(),
            });

            let epoch_done = i + 1 == steps_per_epoch;
            let last = step == total_steps;
            // Where the resumed run would pick up: the next step of this epoch, or the next
            // epoch.
            let position = |state: &mut RunState<T::Epoch, C>| {
                state.epoch = epoch;
                state.partial = (!epoch_done).then_some(PartialEpoch {
                    batches_done: i + 1,
                });
            };
            let evaluate_now = match settings.run.eval_steps {
                None => epoch_done || last,
                Some(n) => step.is_multiple_of(n) || last,
            };
            if !evaluate_now {
                if settings
                    .run
                    .save_steps
                    .is_some_and(|n| step.is_multiple_of(n))
                {
                    let dir = checkpoint_dir(run_dir, step);
                    let mut state = RunState::new(epoch, step, &history, settings.config);
                    position(&mut state);
                    state.interval = interval;
                    state.evaluated = false;
                    save_checkpoint(&model, &optimizer, &dir, &state)?;
                    saved_at = Some(step);
                    if let Some(old) = resume_only.replace(dir) {
                        remove_checkpoint(&old)?;
                    }
                }
                if last {
                    break 'epochs;
                }
                continue;
            }

            // Evaluate, record, checkpoint.
            let evaluation_started = Instant::now();
            let valid = model.valid();
            let evaluation = roberta_burn::in_thread_pool(device, move || task.evaluate(&valid))?;
            let eval_runtime = evaluation_started.elapsed().as_secs_f64();
            let wall_seconds = interval.wall_seconds + mark.elapsed().as_secs_f64();
            mark = Instant::now();
            let record = task.record(
                EpochSummary {
                    epoch,
                    step,
                    train_loss: interval.loss_sum / interval.steps.max(1) as f64,
                    learning_rate: rate,
                    train_samples_per_second: interval.rows as f64 / interval.seconds.max(1e-9),
                    eval_runtime,
                    seconds: wall_seconds,
                },
                evaluation,
            );
            interval = Interval::default();
            history.push(record);
            let mut state = RunState::new(epoch, step, &history, settings.config);
            position(&mut state);
            save_checkpoint(&model, &optimizer, &checkpoint_dir(run_dir, step), &state)?;
            saved_at = Some(step);
            if let Some(old) = resume_only.take() {
                remove_checkpoint(&old)?;
            }
            write_metrics(run_dir, &history)?;
            let record = &history[history.len() - 1];
            if let Some(tb) = &mut tensorboard {
                for (tag, value) in task.eval_scalars(record) {
                    tb.scalar(tag, value, step)?;
                }
                tb.flush()?;
            }
            log(
                run_dir,
                &format!(
                    "evaluation at step {step} (epoch {epoch}): {}",
                    serde_json::to_string(record).expect("serialisable")
                ),
            )?;
            task.prune_checkpoints(run_dir, &history)?;
            // The hooks see every evaluation (a study records it); then early stopping, then a
            // hook's stop (a pruner), end the run.
            let hooks_continue = hooks.on_epoch(record);
            if last {
                break 'epochs;
            }
            if let Some(rule) = early_stopping
                && task.stops_early(rule, &history)
            {
                early_stopped = Some(epoch);
                log(
                    run_dir,
                    &format!(
                        "early stopping at step {step} (epoch {epoch}): no improvement by \
                         more than {} in {} evaluations",
                        rule.threshold, rule.patience
                    ),
                )?;
                break 'epochs;
            }
            if !hooks_continue {
                stopped_early = Some(epoch);
                log(
                    run_dir,
                    &format!("stopped at step {step} (epoch {epoch}) by a hook (pruned)"),
                )?;
                break 'epochs;
            }
        }
    }
    Ok(Finished {
        model,
        history,
        stopped_early,
        early_stopped,
    })
}

/// Appends a line to `run_dir/train.log`, stamped with the local time in ISO 8601.
pub(crate) fn log(run_dir: &Path, line: &str) -> Result<(), TrainError> {
    use std::io::Write;
    let path = run_dir.join("train.log");
    // ISO 8601 with the local offset: readable, and sortable within one zone.
    let now = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "[{now}] {line}"))
        .map_err(TrainError::io(&path))
}

/// Writes `value` as pretty JSON, atomically.
pub(crate) fn save_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), TrainError> {
    let mut json = serde_json::to_vec_pretty(value).expect("serialisable");
    json.push(b'\n');
    write_atomic(path, &json)
}

/// Writes `metrics.json` and `metrics.csv` (a header from the record's field names, one row per
/// epoch), each atomically.
fn write_metrics<E: Serialize>(run_dir: &Path, history: &[E]) -> Result<(), TrainError> {
    save_json(&run_dir.join("metrics.json"), history)?;
    let path = run_dir.join("metrics.csv");
    let mut csv = csv::Writer::from_writer(Vec::new());
    for record in history {
        csv.serialize(record).map_err(|e| TrainError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
    }
    let bytes = csv.into_inner().map_err(|e| TrainError::Io {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    write_atomic(&path, &bytes)
}

/// Writes a checkpoint folder under a temporary name, then renames it: a checkpoint directory
/// with a `state.json` is always complete.
fn save_checkpoint<M: Module, S: Serialize>(
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
    // The weights on disk before the state that names them complete (state.json is synced
    // as it is written), and the folder's name before anything points at it.
    for path in [model_path, temp.join("optimizer.bpk")] {
        if path.exists() {
            sentiment_data::sync_path(&path).map_err(TrainError::io(&path))?;
        }
    }
    save_json(&temp.join("state.json"), state)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(TrainError::io(dir))?;
    }
    std::fs::rename(&temp, dir).map_err(TrainError::io(dir))?;
    if let Some(parent) = dir.parent() {
        sentiment_data::sync_path(parent).map_err(TrainError::io(parent))?;
    }
    Ok(())
}

/// Removes the temporary folders (`.NAME.tmp-PID`) that checkpoint writes of earlier,
/// killed processes left in `checkpoints_dir`: never complete, never read, only in the way.
fn remove_stale_temporaries(checkpoints_dir: &Path) -> Result<(), TrainError> {
    let Ok(entries) = std::fs::read_dir(checkpoints_dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry.map_err(TrainError::io(checkpoints_dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with('.') && n.contains(".tmp-")) && path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(TrainError::io(&path))?;
        }
    }
    Ok(())
}

/// The error for resuming a run folder with other settings than it was started with: names
/// every setting that differs, with both values.
fn different_settings<C: Serialize>(run_dir: &Path, saved: &C, asked: &C) -> TrainError {
    let as_object = |c: &C| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (saved, asked) = (as_object(saved), as_object(asked));
    let differences: Vec<String> = saved
        .iter()
        .filter(|&(key, value)| asked.get(key) != Some(value))
        .map(|(key, value)| {
            let now = asked
                .get(key)
                .map_or_else(|| "unset".to_string(), ToString::to_string);
            format!("{key} = {now} (the run has {value})")
        })
        .collect();
    TrainError::InvalidSetting(format!(
        "{}: the run was started with other settings: {}; resume with the run's settings or \
         use a new run folder",
        run_dir.display(),
        if differences.is_empty() {
            "the configuration differs".to_string()
        } else {
            differences.join(", ")
        }
    ))
}

/// Loads the model and optimizer state of the checkpoint folder `dir`; the moments go onto
/// `device`, the plain device the run trains on.
fn load_checkpoint<M: Module>(
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

/// The checkpoints of `run_dir` (folder and state), the most optimizer steps first.
fn checkpoints_newest_first<E: DeserializeOwned, C: DeserializeOwned>(
    run_dir: &Path,
) -> Result<Vec<Checkpoint<E, C>>, TrainError> {
    let dir = run_dir.join("checkpoints");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut found: Vec<Checkpoint<E, C>> = Vec::new();
    for entry in entries {
        let path = entry.map_err(TrainError::io(&dir))?.path();
        let state_path = path.join("state.json");
        let Ok(text) = std::fs::read_to_string(&state_path) else {
            continue;
        };
        // The version first, so an old layout is named as such rather than as a parse error.
        let version = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64));
        if version != Some(u64::from(RUN_VERSION)) {
            return Err(TrainError::BadCheckpoint {
                path: state_path,
                detail: format!(
                    "version {} (expected {RUN_VERSION})",
                    version.map_or_else(|| "missing".to_string(), |v| v.to_string())
                ),
            });
        }
        let state: RunState<E, C> =
            serde_json::from_str(&text).map_err(|e| TrainError::BadCheckpoint {
                path: state_path.clone(),
                detail: e.to_string(),
            })?;
        found.push((path, state));
    }
    found.sort_by_key(|(_, state)| std::cmp::Reverse(state.step));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::EarlyStopping;

    #[test]
    fn early_stopping_counts_evaluations_without_improvement() {
        let rule = EarlyStopping {
            patience: 2,
            threshold: 0.0,
        };
        assert!(!rule.should_stop(&[0.5, 0.6, 0.7], true));
        assert!(
            !rule.should_stop(&[0.5, 0.6, 0.6], true),
            "one without improvement"
        );
        assert!(rule.should_stop(&[0.5, 0.6, 0.6, 0.55], true));
        // An improvement resets the count.
        assert!(!rule.should_stop(&[0.5, 0.4, 0.6, 0.5], true));
        // Smaller is better for a loss.
        assert!(rule.should_stop(&[0.5, 0.6, 0.7], false));
        assert!(!rule.should_stop(&[0.5, 0.4, 0.3], false));
        // Within the threshold is no improvement.
        let strict = EarlyStopping {
            patience: 1,
            threshold: 0.05,
        };
        assert!(strict.should_stop(&[0.5, 0.54], true));
        assert!(!strict.should_stop(&[0.5, 0.56], true));
        // A value that improves by no more than the threshold still becomes the best.
        assert!(strict.should_stop(&[0.5, 0.54, 0.58], true));
    }
}
