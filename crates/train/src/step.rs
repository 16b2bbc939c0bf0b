//! One training step: the mean loss of each micro-batch and its gradients (several
//! accumulated as transformers' fixed accumulation weighs them), then clipping by the global
//! norm and AdamW at the schedule's rate ([`FlatAdamW`]). It is the step that `train` and
//! `pretrain` run (`crate::run`), that the parity checks run against PyTorch
//! ([`crate::parity`]) and that `bench model --train` times, so that every speed and every
//! parity figure measures the code users run; no other crate calls `backward` for a training
//! step.

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;

use crate::{FlatAdamW, FlatStep, TrainError};

/// A micro-batch of a step, and the items its loss is the mean over (rows; masked tokens for a
/// masked LM).
pub struct MicroBatch<B> {
    /// The items its loss is the mean over.
    pub items: usize,
    /// What the loss function reads.
    pub batch: B,
}

/// The gradients of one step over `batches`, whose mean losses `loss` computes, and those
/// losses, not yet read (reading one waits for the device). None when there is no batch.
///
/// One batch: its mean loss as is, bit for bit what a run without accumulation computes.
/// Several: each micro-batch's mean loss weighted by its share of the step's items, so that
/// their sum is the mean over all of them, as one batch of every row would give (not the mean
/// of the K means); the returned losses are those weighted shares, which sum to the step's
/// loss.
pub fn gradients<M: Module, B>(
    model: &M,
    batches: Vec<MicroBatch<B>>,
    loss: impl Fn(&M, B) -> Tensor<1>,
) -> Option<(GradientsParams, Vec<Tensor<1>>)> {
    match batches.len() {
        0 => None,
        1 => {
            let MicroBatch { batch, .. } = batches.into_iter().next().expect("one batch");
            let loss = loss(model, batch);
            let grads = GradientsParams::from_grads(loss.backward(), model);
            Some((grads, vec![loss]))
        }
        _ => {
            let total: usize = batches.iter().map(|b| b.items).sum();
            let mut accumulated = GradientsAccumulator::new();
            let mut losses = Vec::with_capacity(batches.len());
            for MicroBatch { items, batch } in batches {
                let share = items as f32 / total.max(1) as f32;
                let loss = loss(model, batch).mul_scalar(share);
                accumulated.accumulate(model, GradientsParams::from_grads(loss.backward(), model));
                losses.push(loss);
            }
            Some((accumulated.grads(), losses))
        }
    }
}

/// What a step did: its losses (not yet read; they sum to the step's mean loss) and the
/// optimizer's report (the gradients' global norm).
pub struct Stepped {
    /// The micro-batches' losses, weighted as [`gradients`] says.
    pub losses: Vec<Tensor<1>>,
    /// The optimizer step's report.
    pub report: FlatStep,
}

impl Stepped {
    /// The step's mean loss, read from the device (after the whole step is queued: on a GPU
    /// a read before the backward pass would drain the queue in the middle of every step).
    pub fn loss(&self) -> f64 {
        self.losses
            .iter()
            .map(|l| f64::from(l.clone().into_scalar::<f32>()))
            .sum()
    }
}

/// One optimizer step of `model` over `batches`: [`gradients`], then `optimizer`'s clipping
/// and AdamW update at learning rate `rate`. The model comes back updated, or as it was when
/// there was no batch (no update; the caller still counts the step, as the Trainer does).
pub fn train_step<M: Module, B>(
    model: M,
    optimizer: &mut FlatAdamW,
    rate: f64,
    batches: Vec<MicroBatch<B>>,
    loss: impl Fn(&M, B) -> Tensor<1>,
) -> Result<(M, Option<Stepped>), TrainError> {
    let Some((grads, losses)) = gradients(&model, batches, loss) else {
        return Ok((model, None));
    };
    let (model, report) = optimizer.step(rate, model, grads)?;
    Ok((model, Some(Stepped { losses, report })))
}
