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
//! checkpoints/epoch-N/       the latest epoch (model.bpk, optimizer.bpk + .json, state.json)
//! model/                     config.json, model.safetensors, tokenizer files
//! train.log                  start, resume, epochs, interruption, end
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use roberta_burn::{Pretrained, RobertaConfig, RobertaForMaskedLM};
use sentiment_tokenize::{RobertaTokenizer, SpecialTokenIds, TokenizedRows};
use serde::{Deserialize, Serialize};

use crate::trainer::{
    STOP, checkpoint_dir, different_settings, latest_checkpoint_by, load_checkpoint, log,
    partial_dir, save_checkpoint, save_json, step_seed,
};
use crate::{
    AdamWSettings, FlatAdamW, LinearSchedule, Progress, RUN_VERSION, TrainError, write_atomic,
};

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
    /// Sequences per step.
    pub batch_size: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Steps of linear warmup.
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay (0.01, as RoBERTa).
    pub weight_decay: f64,
    /// AdamW β1.
    pub adam_beta1: f64,
    /// AdamW β2 (0.98, as RoBERTa's pre-training).
    pub adam_beta2: f64,
    /// AdamW ε (1e-6, as RoBERTa's pre-training).
    pub adam_epsilon: f64,
    /// Global gradient-norm clip (0 = off).
    pub max_grad_norm: f64,
    /// Sequences per evaluation batch.
    pub eval_batch_size: usize,
    /// Seed of the batch order, masks and dropout.
    pub seed: u64,
    /// Masking proportions.
    pub masking: MaskingConfig,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: 5e-4,
            batch_size: 32,
            epochs: 1,
            warmup_steps: 0,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.98,
            adam_epsilon: 1e-6,
            max_grad_norm: 1.0,
            eval_batch_size: 64,
            seed: 42,
            masking: MaskingConfig::default(),
        }
    }
}

impl PretrainConfig {
    /// Refuses settings that cannot run, naming the setting.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: &str| Err(TrainError::InvalidSetting(what.to_string()));
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad("learning_rate must be a positive number");
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return bad("batch_size and eval_batch_size must be at least 1");
        }
        if self.epochs == 0 {
            return bad("epochs must be at least 1");
        }
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

/// One epoch's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PretrainEpoch {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: usize,
    /// Mean masked-LM loss of the epoch's steps.
    pub train_loss: f64,
    /// Masked-LM loss on the held-out rows (mean over their targets).
    pub eval_loss: f64,
    /// Share of the held-out targets predicted exactly.
    pub eval_accuracy: f64,
    /// Learning rate of the last step.
    pub learning_rate: f64,
    /// Training sequences per second.
    pub train_samples_per_second: f64,
    /// Seconds the epoch took, evaluation included.
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

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct PartialPass {
    batches_done: usize,
    loss_sum: f64,
    seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PretrainState {
    version: u32,
    epoch: usize,
    step: usize,
    history: Vec<PretrainEpoch>,
    config: PretrainConfig,
    partial: Option<PartialPass>,
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

/// One masked batch of `rows` at `chunk`, or None when it has no token to mask.
fn masked_batch(
    rows: &TokenizedRows,
    chunk: &[usize],
    tokenizer: &RobertaTokenizer,
    config: &MaskingConfig,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Option<MaskedTensors> {
    let seq = rows.max_length;
    let mut ids = Vec::with_capacity(chunk.len() * seq);
    let mut attention = Vec::with_capacity(chunk.len() * seq);
    for &r in chunk {
        ids.extend(
            rows.input_ids[r * seq..(r + 1) * seq]
                .iter()
                .map(|&t| t as i64),
        );
        attention.extend(
            rows.attention_mask[r * seq..(r + 1) * seq]
                .iter()
                .map(|&m| m as i64),
        );
    }
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
    for (b, chunk) in order.chunks(config.eval_batch_size).enumerate() {
        let mut rng = mask_rng(config.seed, 0, b);
        let Some(MaskedTensors {
            ids,
            mask,
            positions,
            targets: wanted,
        }) = masked_batch(rows, chunk, tokenizer, &config.masking, &mut rng, device)
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

fn write_pretrain_metrics(run_dir: &Path, history: &[PretrainEpoch]) -> Result<(), TrainError> {
    save_json(&run_dir.join("metrics.json"), history)?;
    let mut csv = String::from(
        "epoch,step,train_loss,eval_loss,eval_accuracy,learning_rate,train_samples_per_second,seconds\n",
    );
    for m in history {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            m.epoch,
            m.step,
            m.train_loss,
            m.eval_loss,
            m.eval_accuracy,
            m.learning_rate,
            m.train_samples_per_second,
            m.seconds
        ));
    }
    write_atomic(&run_dir.join("metrics.csv"), csv.as_bytes())
}

/// Pre-trains `model` on `train` (labels ignored), evaluating on `validation` after every
/// epoch, in `run_dir`; with `resume`, continues from the latest checkpoint there. Ctrl-C
/// ([`crate::request_stop`]) saves a mid-epoch checkpoint and returns
/// [`TrainError::Interrupted`].
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
    on_step: &mut dyn FnMut(Progress),
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
    let steps_per_epoch = train.len().div_ceil(config.batch_size);
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
    let (mut step, mut start_epoch) = (0usize, 1usize);
    let mut history: Vec<PretrainEpoch> = Vec::new();
    let mut partial: Option<PartialPass> = None;
    STOP.store(false, Ordering::SeqCst);

    let latest = latest_checkpoint_by(run_dir, |s: &PretrainState| {
        (s.version, s.step, s.partial.is_none())
    })?;
    if resume && let Some((dir, state)) = latest {
        if state.config != *config {
            return Err(different_settings(run_dir));
        }
        (model, optimizer) = load_checkpoint(model, optimizer, &dir, device)?;
        (step, history, partial) = (state.step, state.history, state.partial);
        start_epoch = state.epoch + usize::from(partial.is_none());
        log(
            run_dir,
            &format!("resumed pre-training at step {step} from {}", dir.display()),
        )?;
    } else {
        save_json(
            &run_dir.join("pretrain_config.json"),
            &(config, model_config),
        )?;
        log(
            run_dir,
            &format!(
                "pre-training started: {} rows, {} held out, {steps_per_epoch} steps per epoch",
                train.len(),
                validation.len()
            ),
        )?;
    }

    let loss_fn = CrossEntropyLossConfig::new().init(&autodiff);
    for epoch in start_epoch..=config.epochs {
        let started = Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut shuffle = ChaCha8Rng::seed_from_u64(config.seed);
        shuffle.set_stream(epoch as u64);
        order.shuffle(&mut shuffle);
        let resumed = partial.take();
        let skip = resumed.map_or(0, |p| p.batches_done);
        let mut loss_sum = resumed.map_or(0.0, |p| p.loss_sum);
        let earlier_seconds = resumed.map_or(0.0, |p| p.seconds);
        let mut rate = schedule.rate(step);
        for (i, chunk) in order.chunks(config.batch_size).enumerate().skip(skip) {
            if STOP.load(Ordering::SeqCst) {
                let dir = partial_dir(run_dir, epoch);
                let state = PretrainState {
                    version: RUN_VERSION,
                    epoch,
                    step,
                    history: history.clone(),
                    config: config.clone(),
                    partial: Some(PartialPass {
                        batches_done: i,
                        loss_sum,
                        seconds: earlier_seconds + started.elapsed().as_secs_f64(),
                    }),
                };
                save_checkpoint(&model, &optimizer, &dir, &state)?;
                log(
                    run_dir,
                    &format!("interrupted at step {step}; checkpoint {}", dir.display()),
                )?;
                return Err(TrainError::Interrupted { checkpoint: dir });
            }
            autodiff.seed(step_seed(config.seed, step));
            let mut rng = mask_rng(config.seed, epoch, i);
            rate = schedule.rate(step);
            if let Some(MaskedTensors {
                ids,
                mask,
                positions,
                targets,
            }) = masked_batch(
                train,
                chunk,
                tokenizer,
                &config.masking,
                &mut rng,
                &autodiff,
            ) {
                let logits = model.forward_at(ids, mask, positions);
                let loss = loss_fn.forward(logits, targets);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                (model, _) = optimizer.step(rate, model, grads)?;
                // Read once the step is queued (see the fine-tuning loop).
                let value = f64::from(loss.into_scalar::<f32>());
                if !value.is_finite() {
                    return Err(TrainError::Diverged { epoch, step });
                }
                loss_sum += value;
            }
            step += 1;
            on_step(Progress {
                epoch,
                epochs: config.epochs,
                step_in_epoch: i + 1,
                steps_per_epoch,
                loss: loss_sum / (i + 1) as f64,
                samples_per_second: ((i + 1 - skip) * config.batch_size).min(order.len()) as f64
                    / started.elapsed().as_secs_f64().max(1e-9),
                elapsed_seconds: started.elapsed().as_secs_f64(),
            });
        }
        let train_seconds = earlier_seconds + started.elapsed().as_secs_f64();
        let eval = evaluate_mlm(&model.valid(), validation, tokenizer, config, device)?;
        history.push(PretrainEpoch {
            epoch,
            step,
            train_loss: loss_sum / steps_per_epoch as f64,
            eval_loss: eval.loss,
            eval_accuracy: eval.accuracy,
            learning_rate: rate,
            train_samples_per_second: train.len() as f64 / train_seconds.max(1e-9),
            seconds: earlier_seconds + started.elapsed().as_secs_f64(),
        });
        // Only the latest epoch is kept: pre-training resumes from it and exports it.
        let state = PretrainState {
            version: RUN_VERSION,
            epoch,
            step,
            history: history.clone(),
            config: config.clone(),
            partial: None,
        };
        save_checkpoint(&model, &optimizer, &checkpoint_dir(run_dir, epoch), &state)?;
        let mut stale = vec![partial_dir(run_dir, epoch)];
        if epoch > 1 {
            stale.push(checkpoint_dir(run_dir, epoch - 1));
        }
        for dir in stale.into_iter().filter(|d| d.exists()) {
            std::fs::remove_dir_all(&dir).map_err(TrainError::io(&dir))?;
        }
        write_pretrain_metrics(run_dir, &history)?;
        log(
            run_dir,
            &format!(
                "epoch {epoch}: {}",
                serde_json::to_string(&history[history.len() - 1]).expect("serialisable")
            ),
        )?;
    }

    let model_dir = run_dir.join("model");
    model.valid().save_pretrained(model_config, &model_dir)?;
    tokenizer.save(&model_dir)?;
    let outcome = PretrainOutcome { history, model_dir };
    save_json(&run_dir.join("outcome.json"), &outcome)?;
    log(run_dir, "pre-training finished")?;
    Ok(outcome)
}
