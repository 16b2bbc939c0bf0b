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
use burn::tensor::{Device, Int, Tensor, TensorData};
use roberta_burn::{HubSettings, Pretrained, RobertaForMaskedLM, RobertaForSequenceClassification};
use serde_json::Value;

use crate::{AdamWSettings, FlatAdamW, LinearSchedule, MicroBatch, TrainError, train_step};

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
    let classifier = RobertaForSequenceClassification::from_pretrained_with(
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
        RobertaForMaskedLM::from_pretrained_with(&folder(fixtures, "mlm")?, device, &hub, |_| {})?
            .model;
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

/// What [`curve`] records of a run of optimizer steps.
struct Curve {
    losses: Vec<f64>,
    grad_norms: Vec<f64>,
    learning_rates: Vec<f64>,
    /// The logits of the four fixture rows after the last step (validation mode, f32).
    logits_after: Vec<f32>,
}

/// `steps` optimizer steps on `device`, as the references' generators take them: `FlatAdamW`
/// (β 0.9 / 0.999, ε 1e-8, weight decay 0.01), transformers' linear schedule with 2 warmup
/// steps, clipping at 0.5, on the fixture classifier with dropout off and two alternating
/// batches of the model reference's rows; with `bf16` the forward and backward passes under
/// [`roberta_burn::autocast::bf16`].
fn curve(
    device: &Device,
    fixtures: &Path,
    labels: &[i64],
    steps: usize,
    bf16: bool,
) -> Result<Curve, TrainError> {
    curve_of(device, fixtures, Family::Roberta, labels, steps, bf16)
}

/// Which fixture classifier a curve trains: RoBERTa's (`model/classifier`, inputs of
/// `model/reference.json`) or BERT's (`model/bert-classifier`, `model/bert_reference.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Roberta,
    Bert,
}

/// [`curve`] on the fixture classifier of `family`.
fn curve_of(
    device: &Device,
    fixtures: &Path,
    family: Family,
    labels: &[i64],
    steps: usize,
    bf16: bool,
) -> Result<Curve, TrainError> {
    let (model_folder, inputs_file) = match family {
        Family::Roberta => ("classifier", "model/reference.json"),
        Family::Bert => ("bert-classifier", "model/bert_reference.json"),
    };
    let inputs = read(fixtures.join(inputs_file))?;
    let autodiff = device.clone().autodiff();
    let (batch, seq) = (size(&inputs, "batch")?, size(&inputs, "seq")?);
    let (ids, mask) = (ints(&inputs["input_ids"]), ints(&inputs["attention_mask"]));
    if labels.len() < 4 || batch < 4 {
        return Err(TrainError::InvalidData(
            "the parity references need four rows and their labels".into(),
        ));
    }
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
    let mut model = RobertaForSequenceClassification::from_pretrained_with(
        &folder(fixtures, model_folder)?,
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
        total_steps: steps,
    };
    let loss_fn = CrossEntropyLossConfig::new().init(&autodiff);
    let mut curve = Curve {
        losses: Vec::with_capacity(steps),
        grad_norms: Vec::with_capacity(steps),
        learning_rates: Vec::with_capacity(steps),
        logits_after: Vec::new(),
    };
    for step in 0..steps {
        let batch = rows(if step % 2 == 0 { &[0, 1] } else { &[2, 3] });
        let rate = schedule.rate(step);
        // The trainer's step (`train_step`), its forward and backward passes in mixed
        // precision where asked, as the trainer runs them.
        let stepped;
        (model, stepped) = roberta_burn::autocast::bf16(bf16, || {
            train_step(
                model,
                &mut optimizer,
                rate,
                vec![MicroBatch { items: 2, batch }],
                |model, (x, m, y)| loss_fn.forward(model.forward(x, m), y),
            )
        })?;
        let stepped = stepped.expect("a step over one batch");
        curve.losses.push(stepped.loss());
        curve.grad_norms.push(stepped.report.grad_norm());
        curve.learning_rates.push(rate);
    }
    let all = |data: &[i64]| {
        Tensor::<2, Int>::from_data(TensorData::new(data.to_vec(), [batch, seq]), device)
    };
    curve.logits_after = values(model.valid().forward(all(&ids), all(&mask)))?;
    Ok(curve)
}

/// The largest relative difference between `got` and the reference `want` step by step
/// (infinite if the reference has fewer steps).
fn worst_relative(got: &[f64], want: &[f64]) -> f64 {
    if want.len() < got.len() {
        return f64::INFINITY;
    }
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs())
        .fold(0.0, f64::max)
}

/// Six optimizer steps on `device` against PyTorch's (see [`curve`]; clipping acts at every
/// step). The learning rates (absolute), losses and gradient norms (relative) of every step,
/// and the logits after the last (absolute).
pub fn training_differences(
    device: &Device,
    fixtures: &Path,
) -> Result<Vec<Difference>, TrainError> {
    family_training_differences(device, fixtures, Family::Roberta)
}

/// [`training_differences`] on the BERT fixture classifier (`model/bert-classifier`; PyTorch's
/// steps in `train/bert_reference.json`).
pub fn bert_training_differences(
    device: &Device,
    fixtures: &Path,
) -> Result<Vec<Difference>, TrainError> {
    family_training_differences(device, fixtures, Family::Bert)
}

fn family_training_differences(
    device: &Device,
    fixtures: &Path,
    family: Family,
) -> Result<Vec<Difference>, TrainError> {
    let reference = match family {
        Family::Roberta => "train/reference.json",
        Family::Bert => "train/bert_reference.json",
    };
    let expected = read(fixtures.join(reference))?;
    let curve = curve_of(
        device,
        fixtures,
        family,
        &ints(&expected["labels"]),
        6,
        false,
    )?;
    let want_rates = floats(&expected["learning_rates"]);
    let worst_rate = if want_rates.len() < curve.learning_rates.len() {
        f64::INFINITY
    } else {
        curve
            .learning_rates
            .iter()
            .zip(want_rates)
            .map(|(got, want)| (got - want).abs())
            .fold(0.0, f64::max)
    };
    Ok(vec![
        Difference {
            what: "training: learning rate of each of 6 steps",
            worst: worst_rate,
            scale: Scale::Absolute,
        },
        Difference {
            what: "training: loss of each step (relative)",
            worst: worst_relative(&curve.losses, &floats(&expected["losses"])),
            scale: Scale::Relative,
        },
        Difference {
            what: "training: gradient norm of each step (relative)",
            worst: worst_relative(&curve.grad_norms, &floats(&expected["grad_norms"])),
            scale: Scale::Relative,
        },
        Difference {
            what: "training: logits after 6 steps",
            worst: worst_abs(&curve.logits_after, &floats(&expected["logits_after"])),
            scale: Scale::Absolute,
        },
    ])
}

/// The loss curve of thirty steps (see [`curve`]) against PyTorch's, in f32 and in mixed bf16
/// precision (ours under [`roberta_burn::autocast::bf16`], PyTorch's forward pass under
/// `torch.autocast("cpu", dtype=torch.bfloat16)`; `fixtures/train/bf16_reference.json`):
/// the largest relative difference of a step's loss between ours and PyTorch's in f32, between
/// the two in bf16, and, for scale, between PyTorch's two precisions.
pub fn bf16_differences(device: &Device, fixtures: &Path) -> Result<Vec<Difference>, TrainError> {
    let expected = read(fixtures.join("train/bf16_reference.json"))?;
    let steps = size(&expected, "steps")?;
    let labels = ints(&expected["labels"]);
    let f32 = curve(device, fixtures, &labels, steps, false)?;
    let bf16 = curve(device, fixtures, &labels, steps, true)?;
    let (torch_f32, torch_bf16) = (
        floats(&expected["f32_losses"]),
        floats(&expected["bf16_losses"]),
    );
    let relative = |what, worst| Difference {
        what,
        worst,
        scale: Scale::Relative,
    };
    Ok(vec![
        relative(
            "mixed precision: loss of each of 30 steps in f32 (relative)",
            worst_relative(&f32.losses, &torch_f32),
        ),
        relative(
            "mixed precision: loss of each step under bf16 autocast (relative)",
            worst_relative(&bf16.losses, &torch_bf16),
        ),
        relative(
            "mixed precision: PyTorch's bf16 loss against its f32 one (relative, for scale)",
            worst_relative(&torch_bf16[..steps.min(torch_bf16.len())], &torch_f32),
        ),
    ])
}
