//! Layer normalisation, softmax and dropout as single differentiable operations with
//! hand-written backward passes.
//!
//! Under autodiff, Burn 0.22 composes `layer_norm` from nine element-wise and reduction
//! operations and `softmax` from five, and differentiates each of them, broadcasts included: some
//! thirty operations per layer norm and fifteen per softmax and step (25 layer norms and 12
//! softmaxes in roberta-base); its `Dropout` takes five per step (37 in roberta-base). On a GPU,
//! where a training step is bounded by how many operations are launched, that is a large part of
//! the gap to PyTorch, whose layer norm, softmax and dropout are one kernel each way. Here the
//! forward pass is the backend's own operation (one kernel on the CPU backend and on libtorch,
//! where `native_layer_norm` also returns the row statistics and `native_dropout` the mask) and
//! the backward pass is the closed form:
//! ```text
//! layer norm:  x̂ = (x − μ)·r,  r = 1/√(σ² + ε)
//!              ∂β = Σ_rows g,  ∂γ = Σ_rows g·x̂,  ∂x = r·(gγ − mean(gγ) − x̂·mean(gγ·x̂))
//! softmax:     ∂x = y·(g − Σ g·y)
//! dropout:     ∂x = g·m/(1 − p)   (m the mask)
//! ```
//! composed from the backend's operations ([`FusedKernels`]' default bodies), or on libtorch
//! `native_dropout_backward`.

// burn-tch is deprecated upstream, and still the fastest GPU backend here (docs/BENCHMARKS.md).
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind, unary},
};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{Distribution, Shape, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether [`layer_norm`], [`softmax`] and [`dropout`] use the fused operations (the default)
/// or Burn's composed ones.
static FUSED: AtomicBool = AtomicBool::new(true);

/// Turns the fused layer norm, softmax and dropout on (the default) or off, process-wide: off,
/// the model runs Burn's composed operations, for A/B benchmarks (`bench model-worker
/// --composed-ops`).
pub fn set_fused_ops(enabled: bool) {
    FUSED.store(enabled, Ordering::Relaxed);
}

/// The forward and backward kernels of the fused operations, per backend.
pub trait FusedKernels: Backend {
    /// `(y, mean, rstd)`: the normalised, scaled and shifted `x` (the backend's own layer
    /// norm, a single kernel on the CPU backend), and each row's mean and reciprocal standard
    /// deviation, shaped like `x` with a last dimension of 1.
    fn layer_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let last = x.shape().num_dims() - 1;
        let mean = Self::float_mean_dim(x.clone(), last);
        let centered = Self::float_sub(x.clone(), mean.clone());
        let variance = Self::float_mean_dim(Self::float_mul(centered.clone(), centered), last);
        let rstd = Self::float_recip(Self::float_sqrt(Self::float_add_scalar(
            variance,
            epsilon.into(),
        )));
        let y = Self::layer_norm(x, gamma, Some(beta), epsilon);
        (y, mean, rstd)
    }

    /// `(∂x, ∂γ, ∂β)` from the output gradient `grad` and what the forward kept.
    fn layer_norm_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let shape = x.shape();
        let rank = shape.num_dims();
        let width = shape[rank - 1];
        let rows = shape.num_elements() / width;
        let normalized = Self::float_mul(Self::float_sub(x, mean), rstd.clone());
        let per_row = |t: FloatTensor<Self>| {
            let summed = Self::float_sum_dim(Self::float_reshape(t, Shape::new([rows, width])), 0);
            Self::float_reshape(summed, Shape::new([width]))
        };
        let grad_beta = per_row(grad.clone());
        let grad_gamma = per_row(Self::float_mul(grad.clone(), normalized.clone()));
        let scaled = Self::float_mul(grad, broadcastable::<Self>(gamma, rank));
        let mean_scaled = Self::float_mean_dim(scaled.clone(), rank - 1);
        let mean_projection = Self::float_mean_dim(
            Self::float_mul(scaled.clone(), normalized.clone()),
            rank - 1,
        );
        let grad_x = Self::float_mul(
            Self::float_sub(
                Self::float_sub(scaled, mean_scaled),
                Self::float_mul(normalized, mean_projection),
            ),
            rstd,
        );
        (grad_x, grad_gamma, grad_beta)
    }

    /// `∂x` of `y = softmax(x)` along `dim` from the output gradient `grad` and `y`.
    fn softmax_backward(
        grad: FloatTensor<Self>,
        y: FloatTensor<Self>,
        dim: usize,
    ) -> FloatTensor<Self> {
        let projection = Self::float_sum_dim(Self::float_mul(grad.clone(), y.clone()), dim);
        Self::float_mul(y, Self::float_sub(grad, projection))
    }

    /// `(y, saved)`: `x` with each element zeroed with probability `prob` and the others scaled
    /// by `1 / (1 − prob)`, and what [`dropout_backward`](Self::dropout_backward) needs.
    fn dropout_forward(x: FloatTensor<Self>, prob: f64) -> (FloatTensor<Self>, FloatTensor<Self>) {
        dropout_with_mask::<Self>(x, prob)
    }

    /// `∂x` of the dropout that saved `saved`.
    fn dropout_backward(
        grad: FloatTensor<Self>,
        saved: FloatTensor<Self>,
        _prob: f64,
    ) -> FloatTensor<Self> {
        Self::float_mul(grad, saved)
    }
}

/// Dropout from the backend's operations: a Bernoulli mask scaled by `1 / (1 − prob)` (what
/// Burn's `Dropout` draws), the output and that scaled mask.
fn dropout_with_mask<B: Backend>(x: FloatTensor<B>, prob: f64) -> (FloatTensor<B>, FloatTensor<B>) {
    let keep = 1.0 - prob;
    let mask = B::float_random(
        x.shape(),
        Distribution::Bernoulli(keep),
        &x.device(),
        x.dtype().into(),
    );
    let scaled = B::float_mul_scalar(mask, (1.0 / keep).into());
    (B::float_mul(x, scaled.clone()), scaled)
}

/// `[width]` reshaped to `[1, …, 1, width]` for broadcasting against a rank-`rank` tensor.
fn broadcastable<B: Backend>(vector: FloatTensor<B>, rank: usize) -> FloatTensor<B> {
    let width = vector.shape().num_elements();
    let mut dims = vec![1; rank];
    dims[rank - 1] = width;
    B::float_reshape(vector, Shape::from(dims))
}

/// The differentiable operations, routed to the device's backend. Every backend this crate can
/// be built with must be listed: dispatch panics on an unlisted one.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    Cube: cfg(any(feature = "wgpu", feature = "vulkan")),
    Fusion: cfg(any(feature = "wgpu", feature = "vulkan")),
    LibTorch: cfg(feature = "tch"),
    Autodiff,
)]
pub trait FusedOps: Backend {
    /// Layer norm over the last dimension of `x` with scale `gamma` and shift `beta`. Off the
    /// autodiff graph this is the backend's own layer norm.
    #[fusion(default)]
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, Some(beta), epsilon)
    }

    /// Softmax along `dim`. Off the autodiff graph this is the backend's own softmax.
    #[fusion(default)]
    fn fused_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        <Self as burn::backend::ops::ActivationOps<Self>>::softmax(x, dim)
    }

    /// Dropout with probability `prob` (training only: the caller decides when it applies).
    #[fusion(default)]
    fn fused_dropout(x: FloatTensor<Self>, prob: f64) -> FloatTensor<Self> {
        dropout_with_mask::<Self>(x, prob).0
    }
}

#[cfg(feature = "flex")]
impl FusedKernels for burn::backend::Flex {}
#[cfg(feature = "flex")]
impl FusedOps for burn::backend::Flex {}

#[cfg(any(feature = "wgpu", feature = "vulkan"))]
impl FusedKernels for burn_cubecl::CubeBackend {}
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
impl FusedOps for burn_cubecl::CubeBackend {}
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
impl<B: burn::backend::fusion::FusionBackend> FusedKernels for burn::backend::fusion::Fusion<B> {}

#[cfg(feature = "tch")]
impl FusedOps for burn_tch::LibTorch {}

/// On libtorch the forward pass is PyTorch's `native_layer_norm`, one kernel that also returns
/// the row statistics; tch exposes no `native_layer_norm_backward`, so the backward pass is the
/// closed form composed from libtorch operations.
#[cfg(feature = "tch")]
impl FusedKernels for burn_tch::LibTorch {
    fn layer_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let width = *x.tensor.size().last().expect("a tensor of rank at least 1");
        let (y, mean, rstd) =
            x.tensor
                .native_layer_norm([width], Some(&gamma.tensor), Some(&beta.tensor), epsilon);
        (
            burn_tch::TchTensor::new(y),
            burn_tch::TchTensor::new(mean),
            burn_tch::TchTensor::new(rstd),
        )
    }

    /// PyTorch's fused dropout kernel; its boolean mask is what the backward pass keeps.
    fn dropout_forward(x: FloatTensor<Self>, prob: f64) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (y, mask) = x.tensor.native_dropout(prob, true);
        (burn_tch::TchTensor::new(y), burn_tch::TchTensor::new(mask))
    }

    fn dropout_backward(
        grad: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        prob: f64,
    ) -> FloatTensor<Self> {
        burn_tch::TchTensor::new(tch::Tensor::native_dropout_backward(
            &grad.tensor,
            &mask.tensor,
            1.0 / (1.0 - prob),
        ))
    }
}

/// The layer-norm backward step: the three parents are `x`, `γ` and `β`.
#[derive(Debug)]
struct LayerNormBackward;

impl<B: Backend + FusedKernels> Backward<B, 3> for LayerNormBackward {
    /// `x`, `γ`, the row means and reciprocal standard deviations.
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, mean, rstd) = ops.state;
        let (grad_x, grad_gamma, grad_beta) = B::layer_norm_backward(grad, x, gamma, mean, rstd);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, grad_x);
        }
        if let Some(node) = node_gamma {
            grads.register::<B>(node.id, grad_gamma);
        }
        if let Some(node) = node_beta {
            grads.register::<B>(node.id, grad_beta);
        }
    }
}

impl<B: Backend + FusedKernels, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        match LayerNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, gamma) = (x.into_primitive(), gamma.into_primitive());
                let (y, mean, rstd) =
                    B::layer_norm_forward(x.clone(), gamma.clone(), beta.into_primitive(), epsilon);
                prep.finish((x, gamma, mean, rstd), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::layer_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                Some(beta.into_primitive()),
                epsilon,
            )),
        }
    }

    fn fused_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        match SoftmaxBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y =
                    <B as burn::backend::ops::ActivationOps<B>>::softmax(x.into_primitive(), dim);
                prep.finish((y.clone(), dim), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(
                <B as burn::backend::ops::ActivationOps<B>>::softmax(x.into_primitive(), dim),
            ),
        }
    }

    fn fused_dropout(x: FloatTensor<Self>, prob: f64) -> FloatTensor<Self> {
        match DropoutBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, saved) = B::dropout_forward(x.into_primitive(), prob);
                prep.finish((saved, prob), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::dropout_forward(x.into_primitive(), prob).0),
        }
    }
}

/// The dropout backward step: the saved mask and the probability.
#[derive(Debug)]
struct DropoutBackward;

impl<B: Backend + FusedKernels> Backward<B, 1> for DropoutBackward {
    /// What the forward kernel saved (the scaled mask, or libtorch's boolean mask) and `prob`.
    type State = (FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (saved, prob) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::dropout_backward(grad, saved, prob)
        });
    }
}

/// The softmax backward step: its output and dimension are all it needs.
#[derive(Debug)]
struct SoftmaxBackward;

impl<B: Backend + FusedKernels> Backward<B, 1> for SoftmaxBackward {
    /// The softmax output and the dimension it normalises.
    type State = (FloatTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, dim) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::softmax_backward(grad, y, dim)
        });
    }
}

/// Dropout of `x` with probability `prob`, always applied (the caller checks training mode):
/// one operation whose backward pass multiplies by the saved mask; on libtorch, PyTorch's fused
/// `native_dropout` kernels.
pub fn dropout<const D: usize>(x: Tensor<D>, prob: f64) -> Tensor<D> {
    if !FUSED.load(Ordering::Relaxed) {
        // Burn's `Dropout`, step for step.
        let keep = 1.0 - prob;
        let mask = x.random_like(burn::tensor::Distribution::Bernoulli(keep));
        return x * mask * (1.0 / keep);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_dropout(
        x.into_dispatch(),
        prob,
    ))
}

/// Softmax of `x` along `dim`: one operation with a closed-form backward pass (see the module
/// documentation).
pub fn softmax<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    if !FUSED.load(Ordering::Relaxed) {
        return burn::tensor::activation::softmax(x, dim);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_softmax(
        x.into_dispatch(),
        dim,
    ))
}

/// Layer norm over the last dimension of `x` (`[..., width]`) with scale and shift `[width]`:
/// one operation with a closed-form backward pass (see the module documentation).
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    if !FUSED.load(Ordering::Relaxed) {
        return burn::tensor::module::layer_norm(x, gamma, Some(beta), epsilon);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ))
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::LayerNormConfig;
    use burn::tensor::{Device, Tensor, TensorData};

    /// `n` values of a shifted sine: inputs from a formula, not Burn's generator, because tests
    /// in this binary run in parallel and another one reseeds the shared generator.
    fn wave(n: usize, phase: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.37 + phase).sin() * 2.0 + 0.5)
            .collect()
    }

    /// Asserts that `got` equals `want` within `tolerance` relative to `want`'s largest
    /// magnitude (at least 1), and that `want` is not trivially small.
    fn assert_close(name: &str, got: &[f32], want: &[f32], tolerance: f32) {
        assert_eq!(got.len(), want.len(), "{name}");
        let worst = got
            .iter()
            .zip(want)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        let scale = want.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        assert!(scale > 1e-2, "{name}: a trivial reference");
        assert!(
            worst <= tolerance * scale.max(1.0),
            "{name} differs by {worst}"
        );
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// Value and gradients (of a weighted sum, so that every output matters differently) of
    /// the fused operation and of Burn's composed `LayerNorm`.
    #[test]
    fn equals_burns_layer_norm_forward_and_backward() {
        let device = Device::flex().autodiff();
        let x = Tensor::<3>::from_data(TensorData::new(wave(160, 0.1), [2, 5, 16]), &device);
        let weights = Tensor::<3>::from_data(TensorData::new(wave(160, 1.3), [2, 5, 16]), &device);
        let mut norm = LayerNormConfig::new(16).with_epsilon(1e-5).init(&device);
        norm.gamma = Param::from_tensor(Tensor::from_data(
            TensorData::new(wave(16, 2.0), [16]),
            &device,
        ));
        norm.beta = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(wave(16, 0.7), [16]),
            &device,
        )));
        let beta = norm.beta.as_ref().unwrap();

        let run = |fused: bool| {
            let x = x.clone().detach().require_grad();
            let y = if fused {
                super::layer_norm(x.clone(), norm.gamma.val(), beta.val(), 1e-5)
            } else {
                norm.forward(x.clone())
            };
            let grads = (y.clone() * weights.clone()).sum().backward();
            [
                values(y.inner()),
                values(x.grad(&grads).unwrap()),
                values(norm.gamma.val().grad(&grads).unwrap()),
                values(beta.val().grad(&grads).unwrap()),
            ]
        };
        let (fused, composed) = (run(true), run(false));
        for (i, name) in ["output", "∂x", "∂γ", "∂β"].into_iter().enumerate() {
            assert_close(name, &fused[i], &composed[i], 1e-5);
        }
    }

    /// The fused dropout (through the backend's operations, as on every backend but libtorch)
    /// drops its share, scales the rest, and passes the gradient through the same mask.
    #[test]
    fn dropout_drops_its_share_and_its_gradient_follows_the_mask() {
        let _generator = crate::GENERATOR_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let device = Device::flex().autodiff();
        let x = Tensor::<1>::from_data(TensorData::new(wave(100_000, 0.3), [100_000]), &device)
            .require_grad();
        let y = super::dropout(x.clone(), 0.2);
        let grads = y.clone().sum().backward();
        let (inputs, outputs, gradient) = (
            values(x.clone().inner()),
            values(y.inner()),
            values(x.grad(&grads).unwrap()),
        );
        let kept = 1.0 / 0.8f32;
        let mut dropped = 0;
        for ((input, output), grad) in inputs.iter().zip(&outputs).zip(&gradient) {
            if *grad == 0.0 {
                dropped += 1;
                assert_eq!(*output, 0.0);
            } else {
                assert!((grad - kept).abs() < 1e-6, "gradient {grad}");
                assert!(
                    (output - input * kept).abs() < 1e-5,
                    "{output} from {input}"
                );
            }
        }
        let share = dropped as f64 / inputs.len() as f64;
        assert!((share - 0.2).abs() < 0.01, "dropped {share}");
    }

    /// Value and gradient of the fused softmax and of Burn's composed one, along an inner and
    /// the last dimension.
    #[test]
    fn equals_burns_softmax_forward_and_backward() {
        let device = Device::flex().autodiff();
        let x = Tensor::<3>::from_data(TensorData::new(wave(120, 0.2), [2, 6, 10]), &device);
        let weights = Tensor::<3>::from_data(TensorData::new(wave(120, 0.9), [2, 6, 10]), &device);
        for dim in [1, 2] {
            let run = |fused: bool| {
                let x = x.clone().detach().require_grad();
                let y = if fused {
                    super::softmax(x.clone(), dim)
                } else {
                    burn::tensor::activation::softmax(x.clone(), dim)
                };
                let grads = (y.clone() * weights.clone()).sum().backward();
                [values(y.inner()), values(x.grad(&grads).unwrap())]
            };
            let (fused, composed) = (run(true), run(false));
            assert_close(&format!("dim {dim}, output"), &fused[0], &composed[0], 1e-6);
            assert_close(&format!("dim {dim}, ∂x"), &fused[1], &composed[1], 1e-6);
        }
    }
}
