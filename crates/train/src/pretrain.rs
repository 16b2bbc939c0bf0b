//! Masked-LM pre-training with RoBERTa's dynamic masking: every time a sequence is seen it gets a
//! fresh mask (15% of its real tokens; of those 80% become `<mask>`, 10% a random token, 10% stay),
//! special and padding tokens are never chosen, and there is no next-sentence task. The same
//! optimizer, schedule, clipping, checkpoints, resume and progress as fine-tuning; masked-LM loss
//! and accuracy on held-out rows after every epoch (with masks fixed across epochs, so the
//! numbers compare); the result is a Hugging Face `RobertaForMaskedLM` folder with its tokenizer.
//!
//! Run folder:
//! ```text
//! pretrain_config.json       settings and model configuration
//! metrics.json, metrics.csv  one row per epoch
//! checkpoints/step-N/        the latest evaluation (model.bpk, optimizer.bpk + .json, state.json)
//! model/                     config.json, model.safetensors, tokenizer files
//! train.log                  start, resume, epochs, interruption, end
//! ```

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use roberta_burn::{Pretrained, RobertaConfig, RobertaForMaskedLM};
use sentiment_tokenize::{Padding, RobertaTokenizer, SpecialTokenIds, TokenizedRows};
use serde::{Deserialize, Serialize};

use crate::run::{
    EpochSummary, LoopSettings, StopToken, Task, TrainHooks, checkpoint_dir, log,
    remove_checkpoint, run_epochs, save_json,
};
use crate::trainer::validate_schedule;
use crate::{AdamWSettings, RunOptions, TrainError};

/// Label of a position that is not a prediction target (transformers' `-100`).
pub const NOT_A_TARGET: i64 = -100;

/// RoBERTa's masking proportions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MaskingConfig {
    /// Share of the real (non-special, non-padding) tokens chosen as targets (0.15).
    pub mlm_probability: f64,
    /// Share of the targets replaced by `<mask>` (0.8).
    pub mask_fraction: f64,
    /// Share of the targets replaced by a random token (0.1); the rest stay as they are.
    pub random_fraction: f64,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        Self {
            mlm_probability: 0.15,
            mask_fraction: 0.8,
            random_fraction: 0.1,
        }
    }
}

/// A batch after masking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedBatch {
    /// Row-major `[rows, seq]` ids fed to the model.
    pub input_ids: Vec<i64>,
    /// Row-major `[rows, seq]` original ids at the targets, [`NOT_A_TARGET`] elsewhere.
    pub labels: Vec<i64>,
}

impl MaskedBatch {
    /// Flat positions of the targets, in order.
    pub fn target_positions(&self) -> Vec<i64> {
        (0..self.labels.len() as i64)
            .filter(|&i| self.labels[i as usize] != NOT_A_TARGET)
            .collect()
    }
}

/// Masks `ids` (row-major, with `attention` 1 on real tokens) as RoBERTa does. Tokens in
/// `special` and padding are never chosen; random replacements are drawn from the ordinary
/// tokens of `[0, vocab_size)`. A batch where the draw chose nothing gets one target (the loss
/// needs one), unless it has no eligible token at all.
pub fn mask_tokens(
    ids: &[i64],
    attention: &[i64],
    special: &[i64],
    mask_id: i64,
    vocab_size: usize,
    config: &MaskingConfig,
    rng: &mut impl Rng,
) -> MaskedBatch {
    let eligible = |i: usize| attention[i] != 0 && !special.contains(&ids[i]);
    let mut input_ids = ids.to_vec();
    let mut labels = vec![NOT_A_TARGET; ids.len()];
    let mut chosen: Vec<usize> = (0..ids.len())
        .filter(|&i| eligible(i) && rng.random::<f64>() < config.mlm_probability)
        .collect();
    if chosen.is_empty() {
        let candidates: Vec<usize> = (0..ids.len()).filter(|&i| eligible(i)).collect();
        if let Some(&i) = candidates.get(rng.random_range(0..candidates.len().max(1))) {
            chosen.push(i);
        }
    }
    for i in chosen {
        labels[i] = ids[i];
        let u = rng.random::<f64>();
        if u < config.mask_fraction {
            input_ids[i] = mask_id;
        } else if u < config.mask_fraction + config.random_fraction {
            input_ids[i] = loop {
                let candidate = rng.random_range(0..vocab_size as i64);
                if !special.contains(&candidate) {
                    break candidate;
                }
            };
        }
    }
    MaskedBatch { input_ids, labels }
}

/// The generator of one batch's mask: a function of (seed, epoch, batch) alone, so a resumed
/// run masks as an uninterrupted one would, and every epoch masks afresh. Epoch 0 is the
/// held-out set's, the same every epoch.
pub fn mask_rng(seed: u64, epoch: usize, batch: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((epoch as u64) << 32) | batch as u64);
    rng
}

/// Pre-training hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Steps of linear warmup.
    pub warmup_steps: usize,
    /// AdamW as RoBERTa's pre-training set it: weight decay 0.01, β2 0.98, ε 1e-6, clipping at
    /// 1.0 (flattened: the JSON keeps the Trainer's `adam_beta1`, … keys).
    #[serde(flatten)]
    pub optimizer: AdamWSettings,
    /// Sequences per evaluation batch.
    pub eval_batch_size: usize,
    /// Seed of the batch order, masks and dropout.
    pub seed: u64,
    /// Masking proportions.
    pub masking: MaskingConfig,
    /// Batching (padding, grouping, accumulation normalised over masked tokens), early
    /// stopping on the held-out masked-LM loss, and reporting (flattened, as in fine-tuning's
    /// configuration).
    #[serde(flatten)]
    pub run: RunOptions,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: 5e-4,
            batch_size: 32,
            epochs: 3,
            warmup_steps: 0,
            optimizer: AdamWSettings {
                beta1: 0.9,
                beta2: 0.98,
                epsilon: 1e-6,
                weight_decay: 0.01,
                max_grad_norm: 1.0,
            },
            eval_batch_size: 64,
            seed: 42,
            masking: MaskingConfig::default(),
            run: RunOptions::default(),
        }
    }
}

impl PretrainConfig {
    /// Refuses settings that cannot run, naming the setting.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: &str| Err(TrainError::InvalidSetting(what.to_string()));
        validate_schedule(
            self.learning_rate,
            self.batch_size,
            self.eval_batch_size,
            self.epochs,
        )?;
        self.optimizer.validate()?;
        self.run.validate()?;
        let m = &self.masking;
        if !(m.mlm_probability > 0.0 && m.mlm_probability <= 1.0) {
            return bad("masking.mlm_probability must be in (0, 1]");
        }
        if !(m.mask_fraction >= 0.0
            && m.random_fraction >= 0.0
            && m.mask_fraction + m.random_fraction <= 1.0)
        {
            return bad("masking.mask_fraction + random_fraction must be within [0, 1]");
        }
        Ok(())
    }
}

/// One evaluation's numbers (one per epoch, unless `eval_steps` is set).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PretrainEpoch {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: usize,
    /// Mean masked-LM loss of the steps since the previous evaluation.
    pub train_loss: f64,
    /// Masked-LM loss on the held-out rows (mean over their targets).
    pub eval_loss: f64,
    /// Share of the held-out targets predicted exactly.
    pub eval_accuracy: f64,
    /// Learning rate of the last step.
    pub learning_rate: f64,
    /// Training sequences per second in the steps.
    pub train_samples_per_second: f64,
    /// Seconds the evaluation took (transformers' name).
    #[serde(default)]
    pub eval_runtime: f64,
    /// Wall time since the previous evaluation, this evaluation included.
    pub seconds: f64,
}

/// Masked-LM loss and accuracy of a model on held-out rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MlmEvaluation {
    /// Mean cross-entropy over the targets.
    pub loss: f64,
    /// Share of targets whose arg-max is the original token.
    pub accuracy: f64,
    /// Targets evaluated.
    pub targets: usize,
}

/// What [`pretrain`] produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainOutcome {
    /// Per-epoch numbers.
    pub history: Vec<PretrainEpoch>,
    /// The final model as a Hugging Face `RobertaForMaskedLM` folder with its tokenizer.
    pub model_dir: PathBuf,
}

/// Special token ids as model inputs.
fn special_ids(special: SpecialTokenIds) -> Vec<i64> {
    [
        special.bos,
        special.pad,
        special.eos,
        special.unk,
        special.mask,
    ]
    .map(i64::from)
    .to_vec()
}

/// A masked batch on the device.
struct MaskedTensors {
    /// `[rows, seq]` ids with the masking applied.
    ids: Tensor<2, Int>,
    /// `[rows, seq]` attention mask.
    mask: Tensor<2, Int>,
    /// `[targets]` flat positions of the targets.
    positions: Tensor<1, Int>,
    /// `[targets]` original ids at those positions.
    targets: Tensor<1, Int>,
}

/// One masked batch of `rows` at `chunk`, padded as `padding` says, or None when it has no
/// token to mask. Padding draws nothing from `rng` (only real tokens are candidates), so the
/// masks do not depend on the padding.
fn masked_batch(
    rows: &TokenizedRows,
    chunk: &[usize],
    tokenizer: &RobertaTokenizer,
    config: &MaskingConfig,
    padding: Padding,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Option<MaskedTensors> {
    let (ids, attention, seq) = rows.batch(chunk, padding);
    let special = tokenizer.special_tokens();
    let masked = mask_tokens(
        &ids,
        &attention,
        &special_ids(special),
        i64::from(special.mask),
        tokenizer.vocab_size(),
        config,
        rng,
    );
    let positions = masked.target_positions();
    if positions.is_empty() {
        return None;
    }
    let targets: Vec<i64> = positions
        .iter()
        .map(|&p| masked.labels[p as usize])
        .collect();
    let n = positions.len();
    Some(MaskedTensors {
        ids: Tensor::from_data(
            TensorData::new(masked.input_ids, [chunk.len(), seq]),
            device,
        ),
        mask: Tensor::from_data(TensorData::new(attention, [chunk.len(), seq]), device),
        positions: Tensor::from_data(TensorData::new(positions, [n]), device),
        targets: Tensor::from_data(TensorData::new(targets, [n]), device),
    })
}

/// The masked-LM loss (mean cross-entropy over the labelled positions; labels
/// [`NOT_A_TARGET`] elsewhere), as transformers' `RobertaForMaskedLM(labels=…)` computes it.
pub fn masked_lm_loss(
    model: &RobertaForMaskedLM,
    input_ids: Tensor<2, Int>,
    attention_mask: Tensor<2, Int>,
    labels: &[i64],
) -> Tensor<1> {
    let device = input_ids.device();
    let positions: Vec<i64> = (0..labels.len() as i64)
        .filter(|&i| labels[i as usize] != NOT_A_TARGET)
        .collect();
    let targets: Vec<i64> = positions.iter().map(|&p| labels[p as usize]).collect();
    let n = positions.len();
    let logits = model.forward_at(
        input_ids,
        attention_mask,
        Tensor::from_data(TensorData::new(positions, [n]), &device),
    );
    CrossEntropyLossConfig::new().init(&device).forward(
        logits,
        Tensor::from_data(TensorData::new(targets, [n]), &device),
    )
}

/// Masked-LM loss and accuracy on `rows`, each batch masked by [`mask_rng`]`(seed, 0, batch)`.
pub fn evaluate_mlm(
    model: &RobertaForMaskedLM,
    rows: &TokenizedRows,
    tokenizer: &RobertaTokenizer,
    config: &PretrainConfig,
    device: &Device,
) -> Result<MlmEvaluation, TrainError> {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let (mut loss_sum, mut correct, mut targets) = (0.0f64, 0usize, 0usize);
    let order: Vec<usize> = (0..rows.len()).collect();
    // Under mixed precision each weight is packed for the bf16 products once for all batches.
    roberta_burn::autocast::reuse_weights(|| {
        for (b, chunk) in order.chunks(config.eval_batch_size).enumerate() {
            let mut rng = mask_rng(config.seed, 0, b);
            let Some(MaskedTensors {
                ids,
                mask,
                positions,
                targets: wanted,
            }) = masked_batch(
                rows,
                chunk,
                tokenizer,
                &config.masking,
                config.run.padding,
                &mut rng,
                device,
            )
            else {
                continue;
            };
            let n = wanted.dims()[0];
            let logits = model.forward_at(ids, mask, positions);
            let loss: f32 = loss_fn
                .forward(logits.clone(), wanted.clone())
                .into_scalar();
            let hits: i64 = logits
                .argmax(1)
                .reshape([n])
                .equal(wanted)
                .int()
                .sum()
                .into_scalar();
            loss_sum += f64::from(loss) * n as f64;
            correct += hits as usize;
            targets += n;
        }
    });
    if targets == 0 {
        return Err(TrainError::InvalidData(
            "the held-out rows have no token that can be masked".into(),
        ));
    }
    Ok(MlmEvaluation {
        loss: loss_sum / targets as f64,
        accuracy: correct as f64 / targets as f64,
        targets,
    })
}

/// Masked-LM pre-training as a [`Task`] of the shared loop: a fresh mask per batch and epoch,
/// the held-out evaluation with fixed masks, only the latest checkpoint kept.
struct Pretraining<'a> {
    train: &'a TokenizedRows,
    validation: &'a TokenizedRows,
    tokenizer: &'a RobertaTokenizer,
    config: &'a PretrainConfig,
    device: &'a Device,
}

impl Task for Pretraining<'_> {
    type Model = RobertaForMaskedLM;
    type Evaluation = MlmEvaluation;
    type Epoch = PretrainEpoch;
    type Batch = MaskedTensors;

    fn batch(
        &self,
        rows: &[usize],
        epoch: usize,
        batch: usize,
        device: &Device,
    ) -> Option<MaskedTensors> {
        let mut rng = mask_rng(self.config.seed, epoch, batch);
        masked_batch(
            self.train,
            rows,
            self.tokenizer,
            &self.config.masking,
            self.config.run.padding,
            &mut rng,
            device,
        )
    }

    fn items(&self, batch: &MaskedTensors) -> usize {
        batch.targets.dims()[0]
    }

    fn loss(&self, model: &Self::Model, batch: MaskedTensors, device: &Device) -> Tensor<1> {
        let MaskedTensors {
            ids,
            mask,
            positions,
            targets,
        } = batch;
        let logits = model.forward_at(ids, mask, positions);
        CrossEntropyLossConfig::new()
            .init(device)
            .forward(logits, targets)
    }

    fn evaluate(&self, model: &Self::Model) -> Result<MlmEvaluation, TrainError> {
        evaluate_mlm(
            model,
            self.validation,
            self.tokenizer,
            self.config,
            self.device,
        )
    }

    fn record(&self, summary: EpochSummary, eval: MlmEvaluation) -> PretrainEpoch {
        PretrainEpoch {
            epoch: summary.epoch,
            step: summary.step,
            train_loss: summary.train_loss,
            eval_loss: eval.loss,
            eval_accuracy: eval.accuracy,
            learning_rate: summary.learning_rate,
            train_samples_per_second: summary.train_samples_per_second,
            eval_runtime: summary.eval_runtime,
            seconds: summary.seconds,
        }
    }

    fn prune_checkpoints(
        &self,
        run_dir: &Path,
        history: &[PretrainEpoch],
    ) -> Result<(), TrainError> {
        // Only the latest evaluation's checkpoint is kept: pre-training resumes from it and
        // exports it.
        if let [.., previous, _] = history {
            remove_checkpoint(&checkpoint_dir(run_dir, previous.step))?;
        }
        Ok(())
    }

    fn watched(&self, record: &PretrainEpoch) -> (f64, bool) {
        (record.eval_loss, false)
    }

    fn train_lengths(&self) -> Vec<usize> {
        self.train.lengths()
    }

    fn eval_scalars(&self, e: &PretrainEpoch) -> Vec<(&'static str, f64)> {
        vec![
            ("eval/loss", e.eval_loss),
            ("eval/accuracy", e.eval_accuracy),
        ]
    }
}

/// Pre-trains `model` on `train` (labels ignored), evaluating on `validation` after every
/// epoch, in `run_dir`; with `resume`, continues from the latest checkpoint there. A request on
/// `stop` saves a mid-epoch checkpoint and returns [`TrainError::Interrupted`].
#[allow(clippy::too_many_arguments)]
pub fn pretrain(
    model: RobertaForMaskedLM,
    model_config: &RobertaConfig,
    tokenizer: &RobertaTokenizer,
    train: &TokenizedRows,
    validation: &TokenizedRows,
    config: &PretrainConfig,
    run_dir: &Path,
    device: &Device,
    resume: bool,
    stop: &StopToken,
    hooks: &mut dyn TrainHooks<PretrainEpoch>,
) -> Result<PretrainOutcome, TrainError> {
    config.validate()?;
    if train.is_empty() || validation.is_empty() {
        return Err(TrainError::InvalidData(
            "pre-training needs training and held-out rows".into(),
        ));
    }
    if tokenizer.vocab_size() > model_config.vocab_size {
        return Err(TrainError::InvalidSetting(format!(
            "the tokenizer has {} tokens, the model's vocabulary only {}",
            tokenizer.vocab_size(),
            model_config.vocab_size
        )));
    }
    model_config.check_sequence_length(train.max_length)?;
    std::fs::create_dir_all(run_dir).map_err(TrainError::io(run_dir))?;
    let task = Pretraining {
        train,
        validation,
        tokenizer,
        config,
        device,
    };
    let settings = LoopSettings {
        config,
        config_file: "pretrain_config.json",
        model_config,
        rows: train.len(),
        batch_size: config.batch_size,
        epochs: config.epochs,
        seed: config.seed,
        learning_rate: config.learning_rate,
        warmup_steps: config.warmup_steps,
        optimizer: config.optimizer,
        run: &config.run,
        start_line: format!(
            "pre-training started: {} rows, {} held out",
            train.len(),
            validation.len()
        ),
    };
    let model = model.to_device(&device.clone().autodiff()).train();
    let finished = run_epochs(
        &task, model, &settings, run_dir, device, resume, stop, hooks,
    )?;

    let model_dir = run_dir.join("model");
    finished
        .model
        .valid()
        .save_pretrained(model_config, &model_dir)?;
    tokenizer.save(&model_dir)?;
    let outcome = PretrainOutcome {
        history: finished.history,
        model_dir,
    };
    save_json(&run_dir.join("outcome.json"), &outcome)?;
    log(run_dir, "pre-training finished")?;
    Ok(outcome)
}

/// Splits `texts` for pre-training: a seeded shuffle, then the last `share` of them (at least
/// one, and at least one left to train on) held out for the per-epoch masked-LM loss. Returns
/// (training texts, held-out texts); None when there are fewer than two texts.
pub fn hold_out(
    mut texts: Vec<String>,
    share: f64,
    seed: u64,
) -> Option<(Vec<String>, Vec<String>)> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    if texts.len() < 2 {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    texts.shuffle(&mut rng);
    let held = ((texts.len() as f64 * share).round() as usize).clamp(1, texts.len() - 1);
    let validation = texts.split_off(texts.len() - held);
    Some((texts, validation))
}
