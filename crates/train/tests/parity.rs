//! The training step equals PyTorch's: AdamW (β 0.9 / 0.999, ε 1e-8, weight decay 0.01),
//! transformers' linear schedule with warmup, and `clip_grad_norm_`, on the fixture classifier
//! with dropout off and fixed batches. Reference: `fixtures/train/reference.json` from
//! `fixtures/train/generate_reference.py`.
//!
//! Tolerances: losses and gradient norms within 1e-4 relative, logits after six steps within
//! 1e-4 absolute (f32 accumulation order differs between the two libraries).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use roberta_burn::{HubSettings, Pretrained, RobertaForSequenceClassification};
use sentiment_train::{AdamWSettings, FlatAdamW, LinearSchedule};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn read(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn six_steps_match_pytorch_adamw_with_schedule_and_clipping() {
    let inputs = read(fixtures().join("model/reference.json"));
    let expected = read(fixtures().join("train/reference.json"));
    let (batch, seq) = (
        inputs["batch"].as_u64().unwrap() as usize,
        inputs["seq"].as_u64().unwrap() as usize,
    );
    let device = Device::flex().autodiff();
    let ids: Vec<i64> = inputs["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let mask: Vec<i64> = inputs["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let labels: Vec<i64> = expected["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let rows = |r: &[usize]| {
        let pick = |data: &[i64]| -> Vec<i64> {
            r.iter()
                .flat_map(|&i| data[i * seq..(i + 1) * seq].to_vec())
                .collect()
        };
        (
            Tensor::<2, Int>::from_data(TensorData::new(pick(&ids), [r.len(), seq]), &device),
            Tensor::<2, Int>::from_data(TensorData::new(pick(&mask), [r.len(), seq]), &device),
            Tensor::<1, Int>::from_data(
                TensorData::new(r.iter().map(|&i| labels[i]).collect::<Vec<_>>(), [r.len()]),
                &device,
            ),
        )
    };
    let loaded = RobertaForSequenceClassification::from_pretrained(
        fixtures().join("model/classifier").to_str().unwrap(),
        &device,
        &HubSettings::from_vars(|_| None),
        |c| {
            c.hidden_dropout_prob = 0.0;
            c.attention_probs_dropout_prob = 0.0;
            c.classifier_dropout = Some(0.0);
        },
    )
    .unwrap();
    let mut model = loaded.model;
    let mut optimizer = FlatAdamW::new(AdamWSettings {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.01,
        max_grad_norm: 0.5,
    });
    let schedule = LinearSchedule {
        peak: 1e-3,
        warmup_steps: 2,
        total_steps: 6,
    };
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let (want_losses, want_norms, want_rates) = (
        floats(&expected["losses"]),
        floats(&expected["grad_norms"]),
        floats(&expected["learning_rates"]),
    );
    for step in 0..6 {
        let (x, m, y) = rows(if step % 2 == 0 { &[0, 1] } else { &[2, 3] });
        let loss = loss_fn.forward(model.forward(x, m), y);
        let value = f64::from(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let rate = schedule.rate(step);
        let report;
        (model, report) = optimizer.step(rate, model, grads).unwrap();
        let norm = report.grad_norm();
        assert!(
            (rate - want_rates[step]).abs() < 1e-12,
            "step {step}: rate {rate}"
        );
        assert!(
            (value - want_losses[step]).abs() <= 1e-4 * want_losses[step],
            "step {step}: loss {value} vs {}",
            want_losses[step]
        );
        assert!(
            (norm - want_norms[step]).abs() <= 1e-4 * want_norms[step],
            "step {step}: norm {norm} vs {}",
            want_norms[step]
        );
    }
    let plain = Device::flex();
    let eval = model.valid();
    let all = |data: &[i64]| {
        Tensor::<2, Int>::from_data(TensorData::new(data.to_vec(), [batch, seq]), &plain)
    };
    let logits: Vec<f32> = eval
        .forward(all(&ids), all(&mask))
        .into_data()
        .try_to_vec()
        .unwrap();
    let want = floats(&expected["logits_after"]);
    let worst = logits
        .iter()
        .zip(&want)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-4, "logits after training differ by {worst}");
}

/// Gradient accumulation against PyTorch: ten rows, micro-batches of 4, 4 and 2 accumulated
/// into one optimizer step per epoch, through the training loop itself (`train`). Under
/// transformers' fixed accumulation each micro-batch's loss counts by its rows, so every step
/// equals PyTorch's step over one batch of all ten (`fixtures/train/accumulation_reference.json`
/// from `fixtures/train/generate_accumulation_reference.py`): the step's loss, and, through
/// the clipped AdamW update (clipping acts at every step), the loss after it. The mean of the
/// three micro-batch means (transformers' old behaviour) would weigh the two-row micro-batch
/// double and miss both.
#[test]
fn accumulated_micro_batches_match_pytorch() {
    use sentiment_tokenize::{Padding, TokenizedRows};
    use sentiment_train::{BestMetric, RunOptions, StopToken, TrainConfig, TrainData};

    let expected = read(fixtures().join("train/accumulation_reference.json"));
    let seq = expected["seq"].as_u64().unwrap() as usize;
    let input_ids: Vec<u32> = expected["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| floats(row).into_iter().map(|v| v as u32))
        .collect();
    let labels: Vec<i64> = floats(&expected["labels"])
        .into_iter()
        .map(|v| v as i64)
        .collect();
    let mask: Vec<u8> = input_ids.iter().map(|&t| u8::from(t != 1)).collect();
    let rows = TokenizedRows::from_padded(
        seq,
        1,
        (0..labels.len() as u64).collect(),
        labels,
        &input_ids,
        &mask,
    );
    let device = Device::flex();
    let loaded = RobertaForSequenceClassification::from_pretrained(
        fixtures().join("model/classifier").to_str().unwrap(),
        &device,
        &HubSettings::from_vars(|_| None),
        |c| {
            c.hidden_dropout_prob = 0.0;
            c.attention_probs_dropout_prob = 0.0;
            c.classifier_dropout = Some(0.0);
        },
    )
    .unwrap();
    let config = TrainConfig {
        learning_rate: 1e-3,
        batch_size: 4,
        eval_batch_size: 16,
        epochs: 4,
        warmup_steps: 1,
        optimizer: AdamWSettings {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: 0.5,
        },
        metric_for_best: BestMetric::Loss,
        save_total_limit: 1,
        run: RunOptions {
            padding: Padding::FIXED,
            group_by_length: false,
            gradient_accumulation_steps: 3,
            ..RunOptions::default()
        },
        ..TrainConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let outcome = sentiment_train::train(
        loaded.model,
        &loaded.config,
        None,
        &TrainData {
            train: &rows,
            validation: &rows,
            test: None,
        },
        &config,
        dir.path(),
        &device,
        false,
        &StopToken::new(),
        &mut |_: sentiment_train::Progress| {},
    )
    .unwrap();
    let (want_losses, want_eval) = (
        floats(&expected["losses"]),
        floats(&expected["eval_losses"]),
    );
    assert_eq!(outcome.history.len(), 4);
    for (step, record) in outcome.history.iter().enumerate() {
        assert_eq!(record.step, step + 1, "one optimizer step per epoch");
        assert!(
            (record.train_loss - want_losses[step]).abs() < 1e-5,
            "step {step}: loss {} vs {}",
            record.train_loss,
            want_losses[step]
        );
        assert!(
            (record.eval_loss - want_eval[step]).abs() < 1e-5,
            "after step {step}: loss {} vs {}",
            record.eval_loss,
            want_eval[step]
        );
    }
}
