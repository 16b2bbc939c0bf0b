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

mod flex;
#[cfg(feature = "tch")]
mod libtorch;
mod settings;

pub use settings::AdamWSettings;

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
