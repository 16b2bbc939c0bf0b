//! The parity checks against the transformers / PyTorch references committed under
//! `fixtures/`, on any device: the parity tests run them on the CPU backend, and `cargo xtask
//! parity` on whichever backend a machine has (a GPU), so the two never drift apart.
//!
//! References: `fixtures/model/reference.json` (hidden states and logits of the fixture
//! classifier and masked LM, from `fixtures/model/generate_reference.py`) and
//! `fixtures/train/reference.json` (six AdamW steps with warmup and clipping, from
//! `fixtures/train/generate_reference.py`).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use roberta_burn::{HubSettings, Pretrained, RobertaForMaskedLM, RobertaForSequenceClassification};
use serde_json::Value;

use crate::{AdamWSettings, FlatAdamW, LinearSchedule, TrainError};

/// How a difference is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// The largest absolute difference.
    Absolute,
    /// The largest difference relative to the reference value.
    Relative,
}

/// One compared quantity and the largest difference found (NaN when a kernel broke).
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// What was compared.
    pub what: &'static str,
    /// The largest difference.
    pub worst: f64,
    /// How `worst` is measured.
    pub scale: Scale,
}

fn read(path: PathBuf) -> Result<Value, TrainError> {
    let text = std::fs::read_to_string(&path).map_err(TrainError::io(&path))?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::InvalidData(format!("{}: {e}", path.display())))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

fn size(v: &Value, key: &str) -> Result<usize, TrainError> {
    v[key]
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| TrainError::InvalidData(format!("the reference has no `{key}`")))
}

/// Largest absolute difference between `actual` and `expected` (infinite if their lengths
/// differ).
fn worst_abs(actual: &[f32], expected: &[f64]) -> f64 {
    if actual.len() != expected.len() {
        return f64::INFINITY;
    }
    actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (f64::from(*a) - e).abs())
        .fold(0.0, f64::max)
}

fn values<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, TrainError> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| TrainError::Backend(format!("{e:?}")))
}

fn folder(fixtures: &Path, name: &str) -> Result<String, TrainError> {
    let path = fixtures.join("model").join(name);
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| TrainError::InvalidData(format!("{} is not UTF-8", path.display())))
}

/// The fixture models' outputs on `device` against transformers': the classifier's last hidden
/// state and logits, and the masked LM's logits at one position (absolute differences).
pub fn model_differences(device: &Device, fixtures: &Path) -> Result<Vec<Difference>, TrainError> {
    let r = read(fixtures.join("model/reference.json"))?;
    let (batch, seq, vocab) = (size(&r, "batch")?, size(&r, "seq")?, size(&r, "vocab")?);
    let tensor = |key: &str| {
        Tensor::<2, Int>::from_data(TensorData::new(ints(&r[key]), [batch, seq]), device)
    };
    let hub = HubSettings::from_vars(|_| None);
    let classifier = RobertaForSequenceClassification::from_pretrained(
        &folder(fixtures, "classifier")?,
        device,
        &hub,
        |_| {},
    )?
    .model;
    let (ids, mask) = (tensor("input_ids"), tensor("attention_mask"));
    let hidden = values(classifier.roberta().forward(ids.clone(), mask.clone()))?;
    let logits = values(classifier.forward(ids, mask.clone()))?;
    let mlm =
        RobertaForMaskedLM::from_pretrained(&folder(fixtures, "mlm")?, device, &hub, |_| {})?.model;
    let at_2 = mlm
        .forward(tensor("mlm_input_ids"), mask)
        .narrow(1, 2, 1)
        .reshape([batch, vocab]);
    let absolute = |what, worst| Difference {
        what,
        worst,
        scale: Scale::Absolute,
    };
    Ok(vec![
        absolute(
            "last hidden state",
            worst_abs(&hidden, &floats(&r["last_hidden_state"])),
        ),
        absolute(
            "classifier logits",
            worst_abs(&logits, &floats(&r["logits"])),
        ),
        absolute(
            "masked-LM logits",
            worst_abs(&values(at_2)?, &floats(&r["mlm_logits_at_2"])),
        ),
    ])
}

/// Six optimizer steps on `device` against PyTorch's: `FlatAdamW` (β 0.9 / 0.999, ε 1e-8,
/// weight decay 0.01), transformers' linear schedule with 2 warmup steps, clipping at 0.5
/// (acting at every step), on the fixture classifier with dropout off and two alternating
/// batches. The learning rates (absolute), losses and gradient norms (relative) of every step,
/// and the logits after the last (absolute).
pub fn training_differences(
    device: &Device,
    fixtures: &Path,
) -> Result<Vec<Difference>, TrainError> {
    let inputs = read(fixtures.join("model/reference.json"))?;
    let expected = read(fixtures.join("train/reference.json"))?;
    let autodiff = device.clone().autodiff();
    let (batch, seq) = (size(&inputs, "batch")?, size(&inputs, "seq")?);
    let (ids, mask, labels) = (
        ints(&inputs["input_ids"]),
        ints(&inputs["attention_mask"]),
        ints(&expected["labels"]),
    );
    let rows = |r: &[usize]| {
        let pick = |data: &[i64]| -> Vec<i64> {
            r.iter()
                .flat_map(|&i| data[i * seq..(i + 1) * seq].to_vec())
                .collect()
        };
        let two = |data: &[i64]| {
            Tensor::<2, Int>::from_data(TensorData::new(pick(data), [r.len(), seq]), &autodiff)
        };
        (
            two(&ids),
            two(&mask),
            Tensor::<1, Int>::from_data(
                TensorData::new(r.iter().map(|&i| labels[i]).collect::<Vec<_>>(), [r.len()]),
                &autodiff,
            ),
        )
    };
    let mut model = RobertaForSequenceClassification::from_pretrained(
        &folder(fixtures, "classifier")?,
        &autodiff,
        &HubSettings::from_vars(|_| None),
        |c| {
            c.hidden_dropout_prob = 0.0;
            c.attention_probs_dropout_prob = 0.0;
            c.classifier_dropout = Some(0.0);
        },
    )?
    .model;
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
    let loss_fn = CrossEntropyLossConfig::new().init(&autodiff);
    let (want_losses, want_norms, want_rates) = (
        floats(&expected["losses"]),
        floats(&expected["grad_norms"]),
        floats(&expected["learning_rates"]),
    );
    if want_losses.len() < 6 || want_norms.len() < 6 || want_rates.len() < 6 {
        return Err(TrainError::InvalidData(
            "the training reference has fewer than six steps".into(),
        ));
    }
    let (mut worst_rate, mut worst_loss, mut worst_norm) = (0.0f64, 0.0f64, 0.0f64);
    for step in 0..6 {
        let (x, m, y) = rows(if step % 2 == 0 { &[0, 1] } else { &[2, 3] });
        let loss = loss_fn.forward(model.forward(x, m), y);
        let value = f64::from(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let rate = schedule.rate(step);
        let report;
        (model, report) = optimizer.step(rate, model, grads)?;
        let norm = report.grad_norm();
        worst_rate = worst_rate.max((rate - want_rates[step]).abs());
        worst_loss = worst_loss.max((value - want_losses[step]).abs() / want_losses[step]);
        worst_norm = worst_norm.max((norm - want_norms[step]).abs() / want_norms[step]);
    }
    let all = |data: &[i64]| {
        Tensor::<2, Int>::from_data(TensorData::new(data.to_vec(), [batch, seq]), device)
    };
    let logits = values(model.valid().forward(all(&ids), all(&mask)))?;
    Ok(vec![
        Difference {
            what: "training: learning rate of each of 6 steps",
            worst: worst_rate,
            scale: Scale::Absolute,
        },
        Difference {
            what: "training: loss of each step (relative)",
            worst: worst_loss,
            scale: Scale::Relative,
        },
        Difference {
            what: "training: gradient norm of each step (relative)",
            worst: worst_norm,
            scale: Scale::Relative,
        },
        Difference {
            what: "training: logits after 6 steps",
            worst: worst_abs(&logits, &floats(&expected["logits_after"])),
            scale: Scale::Absolute,
        },
    ])
}
