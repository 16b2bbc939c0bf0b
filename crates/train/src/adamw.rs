//! AdamW over one flat buffer, with PyTorch's arithmetic and clipping by the global norm built
//! in.
//!
//! Burn's `AdamW` updates each parameter tensor with its own chain of element-wise operations:
//! about ten per tensor, some 2,000 small kernels a step for RoBERTa's ~200 tensors. On a GPU that
//! is launch-bound (21 ms of a 70 ms roberta-base step on an H200, where PyTorch's multi-tensor
//! `foreach` AdamW takes a few). [`FlatAdamW`] concatenates every gradient into one vector, keeps
//! both moments as one vector each, updates all parameters with one chain of operations over
//! those vectors and hands the parameters back as slices of the result. The global gradient
//! norm falls out of the flat gradient at the cost of one reduction; on GPUs it stays on the
//! device (reading it would drain the device's queue mid-step). On libtorch the update is
//! PyTorch's in-place operations on the flat buffers (`mod libtorch` below).
//!
//! On the CPU backend (`mod flex` below) the chain of operations was a dozen serial passes over
//! roberta-base's 125 million parameters, each into a freshly allocated 500 MB vector: 12.5% of
//! a profile of training steps on two threads, half of it the kernel clearing those pages
//! (docs/perf-notes/journal.md). There the update is one parallel pass that reads each gradient where
//! the backward pass left it, updates the moments in place and writes each parameter a buffer
//! of its own, with the same arithmetic in the same order.
//!
//! The update is `torch.optim.AdamW`'s (`_single_tensor_adamw` / `_multi_tensor_adamw`):
//! ```text
//! p ← p · (1 − lr·λ)
//! m ← β1·m + (1 − β1)·g
//! v ← β2·v + (1 − β2)·g²
//! p ← p − lr / (1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
//! ```
//! and clipping is `clip_grad_norm_`'s: `g ← g · min(1, max_norm / (‖g‖ + 1e-6))`.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// AdamW's hyperparameters, with PyTorch's meaning (and the notebook's values as defaults).
/// Serialised under transformers' `TrainingArguments` names (`adam_beta1`, …), so a
/// configuration that embeds it with `#[serde(flatten)]` reads like the Trainer's; the short
/// names of earlier `optimizer.json` files are still read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWSettings {
    /// β1, the first moment's decay.
    #[serde(rename = "adam_beta1", alias = "beta1")]
    pub beta1: f64,
    /// β2, the second moment's decay.
    #[serde(rename = "adam_beta2", alias = "beta2")]
    pub beta2: f64,
    /// ε, added to the bias-corrected √v (PyTorch's 1e-8; Burn's default is 1e-5).
    #[serde(rename = "adam_epsilon", alias = "epsilon")]
    pub epsilon: f64,
    /// Decoupled weight decay λ (multiplied by the learning rate).
    pub weight_decay: f64,
    /// Bound on the global gradient norm; 0 disables clipping.
    pub max_grad_norm: f64,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 0.0,
        }
    }
}

impl AdamWSettings {
    /// Checks every setting is finite and in range; the message names the setting by its
    /// command-line and configuration name.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |detail: String| Err(TrainError::InvalidSetting(detail));
        for (name, value) in [("adam_beta1", self.beta1), ("adam_beta2", self.beta2)] {
            if !(value.is_finite() && (0.0..1.0).contains(&value)) {
                return bad(format!("{name} {value} must be in [0, 1)"));
            }
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return bad(format!(
                "adam_epsilon {} must be finite and positive",
                self.epsilon
            ));
        }
        for (name, value) in [
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return bad(format!("{name} {value} must be finite and >= 0"));
            }
        }
        Ok(())
    }
}

/// One parameter's place in the flat buffers: its module path and shape, in visiting order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlatSlot {
    /// The parameter's path in the module tree (`roberta.embeddings.word_embeddings.weight`).
    pub path: String,
    /// Its shape.
    pub shape: Vec<usize>,
}

impl FlatSlot {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The moments and step count, laid out by [`FlatSlot`]s.
#[derive(Debug, Clone)]
struct FlatState {
    steps: u64,
    slots: Vec<FlatSlot>,
    moment_1: Tensor<1>,
    moment_2: Tensor<1>,
}

/// What [`FlatAdamW::step`] reports besides the updated module.
#[derive(Debug, Clone)]
pub struct FlatStep {
    grad_norm: GradNorm,
}

/// The global gradient norm: read already (CPU backend), or still on the device, read only when
/// asked for.
#[derive(Debug, Clone)]
enum GradNorm {
    Read(f64),
    OnDevice(Box<Tensor<1>>),
}

impl FlatStep {
    /// The global gradient norm before clipping. On a GPU this waits for the step to finish.
    pub fn grad_norm(&self) -> f64 {
        match &self.grad_norm {
            GradNorm::Read(norm) => *norm,
            GradNorm::OnDevice(norm) => f64::from(norm.as_ref().clone().into_scalar::<f32>()),
        }
    }
}

/// AdamW over all parameters at once (see the module documentation).
#[derive(Debug, Clone)]
pub struct FlatAdamW {
    settings: AdamWSettings,
    state: Option<FlatState>,
    gpu_code_paths: bool,
}

/// The moments as a module, so that Burn's burnpack format saves and loads them.
#[derive(Module, Debug)]
struct MomentsRecord {
    moment_1: Param<Tensor<1>>,
    moment_2: Param<Tensor<1>>,
}

/// What `optimizer.json` holds next to the moments.
#[derive(Debug, Serialize, Deserialize)]
struct FlatMeta {
    settings: AdamWSettings,
    steps: u64,
    slots: Vec<FlatSlot>,
}

impl FlatAdamW {
    /// A fresh optimizer: no steps taken, moments created at the first step.
    pub fn new(settings: AdamWSettings) -> Self {
        Self {
            settings,
            state: None,
            gpu_code_paths: false,
        }
    }

    /// The same optimizer, taking the code paths of GPU backends on every backend (the norm
    /// kept on the device, the parameters as slices of one flat result), so that tests on the
    /// CPU cover them.
    #[doc(hidden)]
    pub fn with_gpu_code_paths(mut self) -> Self {
        self.gpu_code_paths = true;
        self
    }

    /// The hyperparameters.
    pub fn settings(&self) -> &AdamWSettings {
        &self.settings
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| s.steps)
    }

    /// Updates every parameter of `module` that has a gradient in `grads`, at learning rate
    /// `lr`, after clipping the gradients by their global norm when the settings ask for it.
    ///
    /// The parameters with gradients must be the same ones, with the same shapes, at every
    /// step (as with a fixed model); a different set is refused, naming the first difference.
    pub fn step<M: Module>(
        &mut self,
        lr: f64,
        module: M,
        mut grads: GradientsParams,
    ) -> Result<(M, FlatStep), TrainError> {
        let mut gather = Gather {
            grads: &mut grads,
            path: Vec::new(),
            slots: Vec::new(),
            ids: Vec::new(),
            params: Vec::new(),
            gradients: Vec::new(),
        };
        module.visit(&mut gather);
        let Gather {
            slots,
            ids,
            params,
            gradients,
            ..
        } = gather;
        if params.is_empty() {
            return Err(TrainError::InvalidSetting(
                "the optimizer step got no gradient for any parameter".into(),
            ));
        }
        if let Some(state) = &self.state {
            check_layout(&state.slots, &slots)?;
        }

        let steps = self.steps() + 1;
        let device = gradients[0].device();
        #[cfg(feature = "tch")]
        if sentiment_backend::is_libtorch(&device) {
            let moments = self.state.take().map(|s| (s.moment_1, s.moment_2));
            let gradient = Tensor::cat(gradients, 0);
            let update = libtorch::step(&self.settings, lr, steps, gradient, params, moments);
            let pieces = ids
                .into_iter()
                .zip(ranges(&slots))
                .map(|(id, range)| (id, update.params.clone().slice(range)))
                .collect();
            return Ok(self.finish(
                module,
                pieces,
                slots,
                steps,
                (update.moment_1, update.moment_2),
                GradNorm::OnDevice(Box::new(update.grad_norm)),
            ));
        }

        let all_f32 = gradients
            .iter()
            .chain(&params)
            .all(|t| t.dtype() == DType::F32);
        // The CPU backend's one-pass update, for f32 parameters; others take the composed path.
        if sentiment_backend::is_flex(&device) && all_f32 && !self.gpu_code_paths {
            let moments = self.state.take().map(|s| (s.moment_1, s.moment_2));
            let update = flex::step(&self.settings, lr, steps, gradients, params, moments);
            let pieces = ids.into_iter().zip(update.params).collect();
            return Ok(self.finish(
                module,
                pieces,
                slots,
                steps,
                (update.moment_1, update.moment_2),
                GradNorm::Read(update.grad_norm),
            ));
        }

        let gradient = Tensor::cat(gradients, 0);
        // The norm stays on the device: reading it would drain the device's queue in the
        // middle of every step.
        let max_norm = self.settings.max_grad_norm;
        let norm = gradient.clone().square().sum().sqrt();
        let gradient = if max_norm > 0.0 {
            let factor = norm
                .clone()
                .add_scalar(1e-6)
                .recip()
                .mul_scalar(max_norm)
                .clamp_max(1.0);
            gradient * factor
        } else {
            gradient
        };
        let grad_norm = GradNorm::OnDevice(Box::new(norm));

        let AdamWSettings {
            beta1,
            beta2,
            epsilon,
            weight_decay,
            ..
        } = self.settings;
        let (moment_1, moment_2) = match self.state.take() {
            Some(state) => (
                state.moment_1.mul_scalar(beta1) + gradient.clone().mul_scalar(1.0 - beta1),
                state.moment_2.mul_scalar(beta2) + gradient.square().mul_scalar(1.0 - beta2),
            ),
            // Zero moments: the first update reduces to these.
            None => (
                gradient.clone().mul_scalar(1.0 - beta1),
                gradient.square().mul_scalar(1.0 - beta2),
            ),
        };
        let correction_1 = 1.0 - beta1.powi(steps as i32);
        let correction_2 = (1.0 - beta2.powi(steps as i32)).sqrt();
        let denominator = moment_2
            .clone()
            .sqrt()
            .div_scalar(correction_2)
            .add_scalar(epsilon);
        let delta = moment_1
            .clone()
            .div(denominator)
            .mul_scalar(lr / correction_1);
        let decay = 1.0 - lr * weight_decay;
        let decayed = |param: Tensor<1>| {
            if weight_decay > 0.0 {
                param.mul_scalar(decay)
            } else {
                param
            }
        };

        let flat = decayed(Tensor::cat(params, 0)) - delta;
        let pieces = ids
            .into_iter()
            .zip(ranges(&slots))
            .map(|(id, range)| (id, flat.clone().slice(range)))
            .collect();
        Ok(self.finish(
            module,
            pieces,
            slots,
            steps,
            (moment_1, moment_2),
            grad_norm,
        ))
    }

    /// Puts the updated parameters into `module` and keeps the new state.
    fn finish<M: Module>(
        &mut self,
        module: M,
        pieces: HashMap<ParamId, Tensor<1>>,
        slots: Vec<FlatSlot>,
        steps: u64,
        (moment_1, moment_2): (Tensor<1>, Tensor<1>),
        grad_norm: GradNorm,
    ) -> (M, FlatStep) {
        let module = module.map(&mut Scatter { pieces });
        self.state = Some(FlatState {
            steps,
            slots,
            moment_1,
            moment_2,
        });
        (module, FlatStep { grad_norm })
    }

    /// Writes the moments to `path` (burnpack) and the step count, settings and layout to the
    /// same name with a `.json` extension. Before the first step there are no moments: only the
    /// JSON is written.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let meta = FlatMeta {
            settings: self.settings,
            steps: self.steps(),
            slots: self
                .state
                .as_ref()
                .map(|s| s.slots.clone())
                .unwrap_or_default(),
        };
        if let Some(state) = &self.state {
            let record = MomentsRecord {
                moment_1: Param::initialized(ParamId::new(), state.moment_1.clone()),
                moment_2: Param::initialized(ParamId::new(), state.moment_2.clone()),
            };
            record
                .save_file(path)
                .map_err(|e| TrainError::BadCheckpoint {
                    path: path.to_path_buf(),
                    detail: format!("{e:?}"),
                })?;
        }
        let json = path.with_extension("json");
        crate::write_atomic(
            &json,
            serde_json::to_string_pretty(&meta)
                .expect("serialisable")
                .as_bytes(),
        )
    }

    /// Reads what [`save`](Self::save) wrote at `path`, onto `device` (the plain device the
    /// parameters' gradients live on, not its autodiff wrapper). The settings must equal this
    /// optimizer's.
    pub fn load(self, path: &Path, device: &Device) -> Result<Self, TrainError> {
        let json = path.with_extension("json");
        let bad = |detail: String| TrainError::BadCheckpoint {
            path: json.clone(),
            detail,
        };
        let text = std::fs::read_to_string(&json).map_err(TrainError::io(&json))?;
        let meta: FlatMeta = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if meta.settings != self.settings {
            return Err(bad(format!(
                "saved with {:?}, loading into {:?}",
                meta.settings, self.settings
            )));
        }
        if meta.steps == 0 {
            return Ok(Self {
                state: None,
                ..self
            });
        }
        let len: usize = meta.slots.iter().map(FlatSlot::len).sum();
        let empty = MomentsRecord {
            moment_1: Param::initialized(ParamId::new(), Tensor::zeros([len], device)),
            moment_2: Param::initialized(ParamId::new(), Tensor::zeros([len], device)),
        };
        let record = empty
            .try_load_file(path)
            .map_err(|e| TrainError::BadCheckpoint {
                path: path.to_path_buf(),
                detail: format!("{e:?}"),
            })?;
        Ok(Self {
            settings: self.settings,
            gpu_code_paths: self.gpu_code_paths,
            state: Some(FlatState {
                steps: meta.steps,
                slots: meta.slots,
                moment_1: record.moment_1.val(),
                moment_2: record.moment_2.val(),
            }),
        })
    }
}

/// Each parameter's range in the flat buffers, in visiting order.
fn ranges(slots: &[FlatSlot]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    slots.iter().scan(0, |offset, slot| {
        let range = *offset..*offset + slot.len();
        *offset = range.end;
        Some(range)
    })
}

/// Refuses a parameter layout that differs from the one the moments were built for.
fn check_layout(expected: &[FlatSlot], got: &[FlatSlot]) -> Result<(), TrainError> {
    if expected == got {
        return Ok(());
    }
    let detail = match expected.iter().zip(got).find(|(a, b)| a != b) {
        Some((a, b)) => format!(
            "parameter {} {:?} where the moments hold {} {:?}",
            b.path, b.shape, a.path, a.shape
        ),
        None => format!(
            "{} parameters with gradients where the moments hold {}",
            got.len(),
            expected.len()
        ),
    };
    Err(TrainError::InvalidSetting(format!(
        "the optimizer's parameters changed: {detail}"
    )))
}

/// Collects, in visiting order, each parameter that has a gradient: its path, shape, flattened
/// value (off the autodiff graph) and flattened gradient.
struct Gather<'a> {
    grads: &'a mut GradientsParams,
    path: Vec<String>,
    slots: Vec<FlatSlot>,
    ids: Vec<ParamId>,
    params: Vec<Tensor<1>>,
    gradients: Vec<Tensor<1>>,
}

impl ModuleVisitor for Gather<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(gradient) = self.grads.remove::<D>(param.id) else {
            return;
        };
        let value = param.val().inner();
        let shape = value.shape().to_vec();
        let len: usize = shape.iter().product();
        self.slots.push(FlatSlot {
            path: self.path.join("."),
            shape,
        });
        self.ids.push(param.id);
        self.params.push(value.reshape([len]));
        self.gradients.push(gradient.reshape([len]));
    }
}

/// Puts the updated slices back into the module as trainable parameters.
struct Scatter {
    pieces: HashMap<ParamId, Tensor<1>>,
}

impl ModuleMapper for Scatter {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(piece) = self.pieces.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        // What `Tensor::from_inner` would reset: Burn's own optimizer restores the same.
        let require_grad = tensor.is_require_grad();
        let strategy = tensor.gradient_checkpointing_strategy();
        let mut updated = Tensor::from_inner(piece.reshape(tensor.shape()));
        drop(tensor);
        if let Some(strategy) = strategy {
            updated = updated.with_gradient_checkpointing_strategy(strategy);
        }
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// The update on the CPU backend: clipping, both moments and every parameter in one parallel
/// pass (see the module documentation).
mod flex {
    use burn::backend::Flex;
    use burn::backend::flex::{FlexTensor, Layout};
    use burn::tensor::{Bytes, DType, Shape, Tensor};
    use multiversion::multiversion;
    use rayon::prelude::*;
    use std::mem::MaybeUninit;

    use super::AdamWSettings;

    /// Elements per parallel task: below this, the pool's overhead outweighs the work.
    const CHUNK: usize = 1 << 14;

    /// The step's results: each parameter's new values (in the order given), the moments and
    /// the norm before clipping.
    pub(super) struct Update {
        pub params: Vec<Tensor<1>>,
        pub moment_1: Tensor<1>,
        pub moment_2: Tensor<1>,
        pub grad_norm: f64,
    }

    /// The CPU backend's tensor of `tensor`, contiguous (copied when it is a strided view).
    fn contiguous(tensor: Tensor<1>) -> FlexTensor {
        let tensor = tensor
            .try_into_primitive::<Flex>()
            .expect("a tensor on the CPU backend");
        if tensor.is_contiguous() {
            tensor
        } else {
            tensor.to_contiguous()
        }
    }

    /// The elements of the contiguous f32 tensor `t`, in order.
    fn values(t: &FlexTensor) -> &[f32] {
        let start = t.layout().start_offset();
        &t.storage::<f32>()[start..start + t.layout().num_elements()]
    }

    /// A `[len]` f32 tensor over `values`.
    fn tensor(values: Vec<f32>) -> FlexTensor {
        let len = values.len();
        FlexTensor::new(
            Bytes::from_elems(values),
            Layout::contiguous(Shape::new([len])),
            DType::F32,
        )
    }

    /// A moment of `len` elements that this step may update in place: its own buffer when no
    /// other tensor shares it (a checkpoint being written may), else a copy; zeros before the
    /// first step.
    fn exclusive(moment: Option<Tensor<1>>, len: usize) -> FlexTensor {
        let Some(moment) = moment else {
            return tensor(vec![0.0; len]);
        };
        let mut moment = contiguous(moment);
        let whole = moment.layout().start_offset() == 0 && moment.storage::<f32>().len() == len;
        if whole && moment.try_storage_mut::<f32>().is_some() {
            moment
        } else {
            tensor(values(&moment).to_vec())
        }
    }

    /// `Σ x²` in f64, over eight independent accumulators so that the loop vectorises (one
    /// running sum is a chain of dependent additions); compiled for AVX-512 and AVX2 too, chosen
    /// at run time (the crate's baseline, SSE2, converts and adds two lanes at a time).
    #[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
    fn sum_of_squares(values: &[f32]) -> f64 {
        let mut lanes = [0.0f64; 8];
        let mut blocks = values.chunks_exact(8);
        for block in &mut blocks {
            for (lane, &x) in lanes.iter_mut().zip(block) {
                *lane += f64::from(x) * f64::from(x);
            }
        }
        let tail: f64 = blocks
            .remainder()
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum();
        lanes.iter().sum::<f64>() + tail
    }

    /// A step's constants, in f32 as the update computes.
    #[derive(Clone, Copy)]
    struct Constants {
        /// The clipping factor, when the norm is above the maximum.
        clip: Option<f32>,
        b1: f32,
        b1_rest: f32,
        b2: f32,
        b2_rest: f32,
        /// `√(1 − β2ᵗ)`.
        correction_2: f32,
        epsilon: f32,
        /// `lr / (1 − β1ᵗ)`.
        step_size: f32,
        /// `1 − lr·λ`, when there is weight decay.
        decay: Option<f32>,
    }

    impl Constants {
        /// The update of one chunk: the moments `m` and `v` in place, the parameters `p` into
        /// `out`, from the gradients `g` (all of one length).
        fn update(
            &self,
            out: &mut [MaybeUninit<f32>],
            m: &mut [f32],
            v: &mut [f32],
            g: &[f32],
            p: &[f32],
        ) {
            // One instance of `update` per case, so that its loop has no branch.
            match (self.clip, self.decay) {
                (Some(clip), Some(decay)) => {
                    update(self, out, m, v, g, p, |g| g * clip, |p| p * decay)
                }
                (Some(clip), None) => update(self, out, m, v, g, p, |g| g * clip, |p| p),
                (None, Some(decay)) => update(self, out, m, v, g, p, |g| g, |p| p * decay),
                (None, None) => update(self, out, m, v, g, p, |g| g, |p| p),
            }
        }
    }

    /// [`Constants::update`] with clipping and decay as `clip` and `decay`; compiled for
    /// AVX-512 and AVX2 too, chosen at run time: the crate's baseline (SSE2) divides and takes
    /// square roots four lanes at a time, which made this pass 7.9% of a small model's
    /// training step on one thread (docs/perf-notes/journal.md). The same operations in the same order
    /// on every path (no fused multiply-adds: Rust does not contract), so the same bits.
    #[allow(clippy::too_many_arguments)]
    #[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
    fn update(
        c: &Constants,
        out: &mut [MaybeUninit<f32>],
        m: &mut [f32],
        v: &mut [f32],
        g: &[f32],
        p: &[f32],
        clip: impl Fn(f32) -> f32,
        decay: impl Fn(f32) -> f32,
    ) {
        for ((((out, m), v), &g), &p) in out.iter_mut().zip(m).zip(v).zip(g).zip(p) {
            let g = clip(g);
            *m = *m * c.b1 + g * c.b1_rest;
            *v = *v * c.b2 + g * g * c.b2_rest;
            let delta = *m / (v.sqrt() / c.correction_2 + c.epsilon) * c.step_size;
            out.write(decay(p) - delta);
        }
    }

    /// One AdamW step (`steps` counts this one): `clip_grad_norm_` then `torch.optim.AdamW`,
    /// the arithmetic of the composed path in its order, each parameter read from and written
    /// to a buffer of its own (so the next forward pass reads them without copies).
    pub(super) fn step(
        settings: &AdamWSettings,
        lr: f64,
        steps: u64,
        gradients: Vec<Tensor<1>>,
        params: Vec<Tensor<1>>,
        moments: Option<(Tensor<1>, Tensor<1>)>,
    ) -> Update {
        let AdamWSettings {
            beta1,
            beta2,
            epsilon,
            weight_decay,
            max_grad_norm,
        } = *settings;
        let gradients: Vec<FlexTensor> = gradients.into_iter().map(contiguous).collect();
        let params: Vec<FlexTensor> = params.into_iter().map(contiguous).collect();
        let len = gradients.iter().map(|g| values(g).len()).sum();

        // Partial sums per chunk, added in order: the norm does not depend on the pool.
        let partial: Vec<f64> = gradients
            .par_iter()
            .flat_map(|g| values(g).par_chunks(CHUNK))
            .map(sum_of_squares)
            .collect();
        let grad_norm = partial.iter().sum::<f64>().sqrt();
        let factor = max_grad_norm / (grad_norm + 1e-6);
        let clip = (max_grad_norm > 0.0 && factor < 1.0).then_some(factor as f32);

        let (moment_1, moment_2) = moments.unzip();
        let (mut moment_1, mut moment_2) = (exclusive(moment_1, len), exclusive(moment_2, len));
        let correction_1 = 1.0 - beta1.powi(steps as i32);
        let correction_2 = ((1.0 - beta2.powi(steps as i32)).sqrt()) as f32;
        let constants = Constants {
            clip,
            b1: beta1 as f32,
            b1_rest: (1.0 - beta1) as f32,
            b2: beta2 as f32,
            b2_rest: (1.0 - beta2) as f32,
            correction_2,
            epsilon: epsilon as f32,
            step_size: (lr / correction_1) as f32,
            decay: (weight_decay > 0.0).then_some((1.0 - lr * weight_decay) as f32),
        };

        // Each parameter's slices of the moments.
        let mut pieces = Vec::with_capacity(params.len());
        let (mut m_rest, mut v_rest) =
            (moment_1.storage_mut::<f32>(), moment_2.storage_mut::<f32>());
        for (g, p) in gradients.iter().zip(&params) {
            let n = values(g).len();
            let (m, m_next) = std::mem::take(&mut m_rest).split_at_mut(n);
            let (v, v_next) = std::mem::take(&mut v_rest).split_at_mut(n);
            (m_rest, v_rest) = (m_next, v_next);
            pieces.push((values(g), values(p), m, v));
        }
        let updated: Vec<Tensor<1>> = pieces
            .into_par_iter()
            .map(|(g, p, m, v)| {
                let mut out = Vec::<f32>::with_capacity(p.len());
                out.spare_capacity_mut()
                    .par_chunks_mut(CHUNK)
                    .zip(m.par_chunks_mut(CHUNK))
                    .zip(v.par_chunks_mut(CHUNK))
                    .zip(g.par_chunks(CHUNK).zip(p.par_chunks(CHUNK)))
                    .for_each(|(((out, m), v), (g, p))| constants.update(out, m, v, g, p));
                // SAFETY: the chunks cover `out` and every element was written above.
                unsafe { out.set_len(p.len()) };
                Tensor::from_primitive::<Flex>(tensor(out))
            })
            .collect();
        Update {
            params: updated,
            moment_1: Tensor::from_primitive::<Flex>(moment_1),
            moment_2: Tensor::from_primitive::<Flex>(moment_2),
            grad_norm,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Each of the four loops (clipping or not, decay or not) gives, to the bit, the
        /// element-by-element formula, on a length that is no multiple of a vector's lanes.
        #[test]
        fn every_variant_of_the_update_is_the_formula_to_the_bit() {
            let n = 1003;
            let wave = |phase: f32, scale: f32| -> Vec<f32> {
                (0..n)
                    .map(|i| (i as f32 * 0.37 + phase).sin() * scale)
                    .collect()
            };
            let (g, p, m0) = (wave(0.1, 2.0), wave(0.7, 0.05), wave(1.3, 0.1));
            let v0: Vec<f32> = wave(2.1, 0.1).iter().map(|x| x * x).collect();
            for clip in [Some(0.25f32), None] {
                for decay in [Some(0.99f32), None] {
                    let c = Constants {
                        clip,
                        b1: 0.9,
                        b1_rest: 0.1,
                        b2: 0.999,
                        b2_rest: 0.001,
                        correction_2: 0.3,
                        epsilon: 1e-6,
                        step_size: 1e-3,
                        decay,
                    };
                    let (mut m, mut v) = (m0.clone(), v0.clone());
                    let mut out = vec![MaybeUninit::uninit(); n];
                    c.update(&mut out, &mut m, &mut v, &g, &p);
                    for i in 0..n {
                        let g = clip.map_or(g[i], |clip| g[i] * clip);
                        let m_i = m0[i] * 0.9 + g * 0.1;
                        let v_i = v0[i] * 0.999 + g * g * 0.001;
                        let delta = m_i / (v_i.sqrt() / 0.3 + 1e-6) * 1e-3;
                        let p_i = decay.map_or(p[i], |decay| p[i] * decay) - delta;
                        // SAFETY: `update` wrote every element.
                        let written = unsafe { out[i].assume_init() };
                        assert_eq!(
                            (m[i].to_bits(), v[i].to_bits(), written.to_bits()),
                            (m_i.to_bits(), v_i.to_bits(), p_i.to_bits()),
                            "clip {clip:?}, decay {decay:?}, element {i}"
                        );
                    }
                }
            }
        }
    }
}

/// The update on libtorch: PyTorch's in-place operations on the flat buffers, the ones
/// `torch.optim.AdamW`'s multi-tensor path runs (`lerp_` for the moments), about a dozen kernels
/// a step where the composed chain takes twenty, each streaming the whole model through memory
/// (roberta-base: 8 ms of a 51 ms H100 step before this). The norm stays on the device.
#[cfg(feature = "tch")]
mod libtorch {
    // burn-tch is deprecated upstream, and still the fastest GPU backend here.
    #![allow(deprecated)]

    use burn::tensor::Tensor;
    use burn_tch::{LibTorch, TchTensor};

    use super::AdamWSettings;

    /// The step's results: the updated flat parameters, the moments and the norm before
    /// clipping (shape `[1]`).
    pub(super) struct Update {
        pub params: Tensor<1>,
        pub moment_1: Tensor<1>,
        pub moment_2: Tensor<1>,
        pub grad_norm: Tensor<1>,
    }

    /// The libtorch tensor of a tensor on a libtorch device, made exclusive (copied when
    /// another Burn tensor shares its memory), so that it can be updated in place.
    fn exclusive(tensor: Tensor<1>) -> tch::Tensor {
        let tensor = tensor
            .try_into_primitive::<LibTorch>()
            .expect("a tensor on the libtorch device");
        if tensor.can_mut() {
            tensor.tensor
        } else {
            tensor.tensor.copy()
        }
    }

    fn to_burn(tensor: tch::Tensor) -> Tensor<1> {
        Tensor::from_primitive::<LibTorch>(TchTensor::new(tensor))
    }

    /// One AdamW step (`steps` counts this one) over the flat `gradient`, as
    /// `clip_grad_norm_` then `torch.optim.AdamW` compute it.
    pub(super) fn step(
        settings: &AdamWSettings,
        lr: f64,
        steps: u64,
        gradient: Tensor<1>,
        params: Vec<Tensor<1>>,
        moments: Option<(Tensor<1>, Tensor<1>)>,
    ) -> Update {
        let AdamWSettings {
            beta1,
            beta2,
            epsilon,
            weight_decay,
            max_grad_norm,
        } = *settings;
        let mut gradient = exclusive(gradient);
        let grad_norm = gradient.norm().reshape([1]);
        if max_grad_norm > 0.0 {
            // clip_grad_norm_: g · min(1, max_norm / (‖g‖ + 1e-6)), computed on the device.
            let factor = (&grad_norm + 1e-6).reciprocal() * max_grad_norm;
            let _ = gradient.g_mul_(&factor.clamp_max(1.0));
        }
        let (mut moment_1, mut moment_2) = match moments {
            Some((m, v)) => (exclusive(m), exclusive(v)),
            None => (gradient.zeros_like(), gradient.zeros_like()),
        };
        // m ← m + (1 − β1)(g − m) = β1·m + (1 − β1)·g, PyTorch's `_foreach_lerp_`; the same for
        // v with g².
        let _ = moment_1.lerp_(&gradient, 1.0 - beta1);
        let _ = moment_2.lerp_(&gradient.square(), 1.0 - beta2);
        let correction_1 = 1.0 - beta1.powi(steps as i32);
        let correction_2 = (1.0 - beta2.powi(steps as i32)).sqrt();
        let step_size = lr / correction_1;
        let raw: Vec<tch::Tensor> = params
            .into_iter()
            .map(|p| {
                p.try_into_primitive::<LibTorch>()
                    .expect("a tensor on the libtorch device")
                    .tensor
            })
            .collect();
        let mut flat = tch::Tensor::cat(&raw, 0);
        drop(raw);
        if weight_decay > 0.0 {
            let _ = flat.g_mul_scalar_(1.0 - lr * weight_decay);
        }
        // A zero learning rate (the schedule's first and last steps) moves nothing; below, it
        // would divide by zero.
        if step_size > 0.0 {
            // p ← p − step·m / (√v / c2 + ε), with the step folded into the denominator
            // because tch's `addcdiv_` has no scale: √v / (−step·c2) − ε / step.
            let mut denominator = moment_2.sqrt();
            let _ = denominator.g_div_scalar_(-step_size * correction_2);
            let _ = denominator.g_add_scalar_(-epsilon / step_size);
            let _ = flat.addcdiv_(&moment_1, &denominator);
        }
        Update {
            params: to_burn(flat),
            moment_1: to_burn(moment_1),
            moment_2: to_burn(moment_2),
            grad_norm: to_burn(grad_norm),
        }
    }
}
