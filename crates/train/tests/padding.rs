//! Padding stays inert: batches padded to their longest row (rounded up to a multiple of 8)
//! give the logits, the training losses step by step and the masked-LM losses of batches
//! padded to the full 64 tokens, within 1e-5, with dropout off and the batch order unchanged.

mod common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{BACKEND_RNG, Prepared};
use roberta_burn::{RobertaConfig, RobertaForMaskedLM, RobertaForSequenceClassification};
use sentiment_tokenize::{Padding, TokenizedRows};
use sentiment_train::{
    PretrainConfig, PretrainEpoch, Progress, RunOptions, StopToken, TrainConfig, TrainData,
    TrainHooks,
};

const MAX_LENGTH: usize = 64;

/// 400 rows of the sample, tokenized to 64.
fn prepared() -> Prepared {
    common::prepared(400, MAX_LENGTH)
}

/// A tiny model for 64-token rows, dropout off.
fn model_config(vocab: usize) -> RobertaConfig {
    let mut config = RobertaConfig::preset("tiny", vocab)
        .unwrap()
        .with_labels(&["negative".into(), "positive".into()]);
    config.max_position_embeddings = MAX_LENGTH + 2;
    config.hidden_dropout_prob = 0.0;
    config.attention_probs_dropout_prob = 0.0;
    config.classifier_dropout = Some(0.0);
    config
}

fn logits_of(
    model: &RobertaForSequenceClassification,
    rows: &TokenizedRows,
    indices: &[usize],
    padding: Padding,
    device: &Device,
) -> (Vec<f32>, usize) {
    let (ids, mask, width) = rows.batch(indices, padding);
    let shape = [indices.len(), width];
    let logits = model.forward(
        Tensor::<2, Int>::from_data(TensorData::new(ids, shape), device),
        Tensor::<2, Int>::from_data(TensorData::new(mask, shape), device),
    );
    (logits.into_data().try_to_vec().unwrap(), width)
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-5, "{what} {i}: {x} vs {y}");
    }
}

#[test]
fn dynamic_batches_give_the_logits_of_fixed_ones() {
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let p = prepared();
    let device = Device::flex();
    device.seed(3);
    let config = model_config(p.tokenizer.vocab_size());
    let model = RobertaForSequenceClassification::new(&config, &device);
    let rows = &p.validation;
    let all: Vec<usize> = (0..rows.len()).collect();
    let mut narrower = 0;
    for batch in all.chunks(16) {
        let (dynamic, width) = logits_of(&model, rows, batch, Padding::default(), &device);
        let (fixed, _) = logits_of(&model, rows, batch, Padding::FIXED, &device);
        assert!(width <= MAX_LENGTH && width % 8 == 0, "{width}");
        narrower += usize::from(width < MAX_LENGTH);
        let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
        assert_close(&widen(dynamic), &widen(fixed), "logit");
    }
    // Real tweets' lengths: most batches of 16 are narrower than the limit, some reach it.
    assert!(narrower > 0, "no batch was narrower than {MAX_LENGTH}");
    // The evaluation (length-sorted batches, results put back in row order) equals the fixed
    // one: loss within 1e-5, the same confusion matrix.
    let eval =
        |padding| sentiment_train::evaluate(&model, rows, 2, 16, 1, padding, &device).unwrap();
    let (dynamic, fixed) = (eval(Padding::default()), eval(Padding::FIXED));
    assert_close(&[dynamic.loss], &[fixed.loss], "eval loss");
    assert_eq!(
        dynamic.report.confusion_matrix,
        fixed.report.confusion_matrix
    );
}

/// Records every step's loss.
#[derive(Default)]
struct Losses(Vec<f64>);

impl<E> TrainHooks<E> for Losses {
    fn on_step(&mut self, progress: Progress) {
        self.0.push(progress.loss);
    }
}

/// Fine-tunes a fresh dropout-free model seeded alike with `config`: every step's loss and the
/// epochs' records.
fn fine_tune(p: &Prepared, config: TrainConfig) -> (Vec<f64>, Vec<sentiment_train::EpochMetrics>) {
    let device = Device::flex();
    let model_config = model_config(p.tokenizer.vocab_size());
    let data = TrainData {
        train: &p.train,
        validation: &p.validation,
        test: None,
    };
    device.seed(5);
    let dir = tempfile::tempdir().unwrap();
    let mut losses = Losses::default();
    let outcome = sentiment_train::train(
        RobertaForSequenceClassification::new(&model_config, &device),
        &model_config,
        None,
        &data,
        &config,
        dir.path(),
        &device,
        false,
        &StopToken::new(),
        &mut losses,
    )
    .unwrap();
    (losses.0, outcome.history)
}

/// Pre-trains a fresh dropout-free masked LM seeded alike with `config`: every step's loss and
/// the epochs' records.
fn pretrain(p: &Prepared, config: PretrainConfig) -> (Vec<f64>, Vec<PretrainEpoch>) {
    let device = Device::flex();
    let mut model_config = model_config(p.tokenizer.vocab_size());
    model_config.num_labels = None;
    device.seed(9);
    let dir = tempfile::tempdir().unwrap();
    let mut losses = Losses::default();
    let outcome = sentiment_train::pretrain(
        RobertaForMaskedLM::new(&model_config, &device),
        &model_config,
        &p.tokenizer,
        &p.train,
        &p.validation,
        &config,
        dir.path(),
        &device,
        false,
        &StopToken::new(),
        &mut losses as &mut dyn TrainHooks<PretrainEpoch>,
    )
    .unwrap();
    (losses.0, outcome.history)
}

fn eval_losses(history: &[sentiment_train::EpochMetrics]) -> Vec<f64> {
    history.iter().map(|m| m.eval_loss).collect()
}

#[test]
fn dynamic_padding_trains_with_the_losses_of_fixed_padding() {
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let p = prepared();
    let run = |padding: Padding| {
        fine_tune(
            &p,
            TrainConfig {
                learning_rate: 1e-3,
                batch_size: 16,
                epochs: 2,
                run: RunOptions {
                    padding,
                    group_by_length: false,
                    ..RunOptions::default()
                },
                ..TrainConfig::default()
            },
        )
    };
    let (dynamic, dynamic_history) = run(Padding::default());
    let (fixed, fixed_history) = run(Padding::FIXED);
    assert_eq!(dynamic.len(), 2 * p.train.len().div_ceil(16));
    assert_close(&dynamic, &fixed, "step loss");
    assert_close(
        &eval_losses(&dynamic_history),
        &eval_losses(&fixed_history),
        "eval loss",
    );
}

#[test]
fn dynamic_padding_pretrains_with_the_losses_of_fixed_padding() {
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let p = prepared();
    let run = |padding: Padding| {
        pretrain(
            &p,
            PretrainConfig {
                batch_size: 16,
                epochs: 1,
                run: RunOptions {
                    padding,
                    group_by_length: false,
                    ..RunOptions::default()
                },
                ..PretrainConfig::default()
            },
        )
    };
    let (dynamic, dynamic_history) = run(Padding::default());
    let (fixed, fixed_history) = run(Padding::FIXED);
    assert_eq!(dynamic.len(), p.train.len().div_ceil(16));
    assert_close(&dynamic, &fixed, "masked-LM step loss");
    let (d, f) = (dynamic_history[0], fixed_history[0]);
    assert_close(
        &[d.eval_loss, d.eval_accuracy],
        &[f.eval_loss, f.eval_accuracy],
        "held-out masked-LM loss and accuracy",
    );
}

#[test]
fn grouped_batches_are_a_seeded_permutation_with_the_longest_first() {
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let p = prepared();
    let lengths = p.train.lengths();
    let order: Vec<usize> = (0..lengths.len()).rev().collect();
    let grouped = sentiment_tokenize::group_by_length(&order, &lengths, 8);
    let mut sorted = grouped.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..lengths.len()).collect::<Vec<_>>());
    assert_eq!(lengths[grouped[0]], *lengths.iter().max().unwrap());
    // Within a batch, lengths are close: the mean padded width is well below the longest row.
    let widths: Vec<usize> = grouped
        .chunks(8)
        .map(|b| Padding::default().width(b.iter().map(|&i| lengths[i]), MAX_LENGTH))
        .collect();
    let ungrouped: Vec<usize> = order
        .chunks(8)
        .map(|b| Padding::default().width(b.iter().map(|&i| lengths[i]), MAX_LENGTH))
        .collect();
    assert!(
        widths.iter().sum::<usize>() < ungrouped.iter().sum::<usize>(),
        "{widths:?} vs {ungrouped:?}"
    );
}

/// Gradient accumulation: 2 micro-batches of 12 rows make the optimizer steps of one batch of
/// 24 (same rows, dropout off): the same loss at every step, the same schedule, the same
/// model after two epochs (its validation loss), within 1e-5.
#[test]
fn accumulated_micro_batches_train_as_one_batch() {
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let p = prepared();
    let run = |batch_size: usize, accumulation: usize| {
        fine_tune(
            &p,
            TrainConfig {
                learning_rate: 1e-3,
                batch_size,
                epochs: 2,
                warmup_steps: 3,
                run: RunOptions {
                    gradient_accumulation_steps: accumulation,
                    group_by_length: false,
                    ..RunOptions::default()
                },
                ..TrainConfig::default()
            },
        )
    };
    let (whole, whole_history) = run(24, 1);
    let (accumulated, accumulated_history) = run(12, 2);
    // The schedule counts optimizer steps: as many as with the whole batches.
    assert_eq!(whole.len(), accumulated.len());
    assert_eq!(
        whole_history.iter().map(|m| m.step).collect::<Vec<_>>(),
        accumulated_history
            .iter()
            .map(|m| m.step)
            .collect::<Vec<_>>()
    );
    // An epoch's last step joins a full micro-batch and a short one: only a loss normalised
    // by the step's row count (not the mean of the two means) matches the whole batch.
    assert!(
        !p.train.len().is_multiple_of(12) && p.train.len() % 24 > 12,
        "{}",
        p.train.len()
    );
    assert_close(&accumulated, &whole, "step loss");
    assert_close(
        &eval_losses(&accumulated_history),
        &eval_losses(&whole_history),
        "eval loss",
    );
}

/// Pre-training accumulates too, and its schedule counts optimizer steps. (Its masks are drawn
/// per micro-batch, so it cannot be compared with whole batches step by step; the weighting by
/// items, here masked tokens, is the loop's, checked above with rows.)
#[test]
fn accumulated_masked_lm_runs_count_optimizer_steps() {
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let p = prepared();
    let (accumulated, _) = pretrain(
        &p,
        PretrainConfig {
            batch_size: 8,
            epochs: 1,
            run: RunOptions {
                gradient_accumulation_steps: 2,
                group_by_length: false,
                ..RunOptions::default()
            },
            ..PretrainConfig::default()
        },
    );
    assert_eq!(accumulated.len(), p.train.len().div_ceil(8).div_ceil(2));
    assert!(accumulated.iter().all(|l| l.is_finite()), "{accumulated:?}");
}
