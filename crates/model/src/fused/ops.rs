//! The fused operations' traits: [`FusedOps`], the operations the model calls, dispatched to
//! the device's backend, and [`FusedKernels`], each backend's forward and backward kernels,
//! whose default bodies compose them from Burn's operations (the closed forms of
//! [`crate::fused`]'s documentation). The backends ([`super::flex`], `cubecl`, `libtorch`) and
//! the autodiff wrapper ([`super::autodiff`]) implement them; nothing here calls a backend.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata, backend_extension};
use burn::tensor::{Distribution, Shape};

/// What the backward pass of a fused attention needs, as its forward kernel left it.
#[derive(Debug, Clone)]
// Only the CPU backend's and libtorch's kernels fill and read it.
#[cfg_attr(not(any(feature = "flex", feature = "tch")), allow(dead_code))]
pub struct AttentionSaved<B: Backend> {
    pub(super) query: FloatTensor<B>,
    pub(super) key: FloatTensor<B>,
    pub(super) value: FloatTensor<B>,
    /// The additive bias in the layout the kernel took.
    pub(super) bias: FloatTensor<B>,
    /// (libtorch's backward kernels take it.)
    #[cfg_attr(not(feature = "tch"), allow(dead_code))]
    pub(super) output: FloatTensor<B>,
    pub(super) logsumexp: FloatTensor<B>,
    /// The dropout generator's state the kernel drew its mask from (CUDA: philox seed and
    /// offset); empty without dropout and on the CPU backend.
    #[cfg_attr(not(feature = "tch"), allow(dead_code))]
    pub(super) generator: Vec<FloatTensor<B>>,
    /// The seed of the CPU backend's counter-based dropout mask (0 elsewhere).
    pub(super) mask_seed: u64,
    pub(super) dropout: f64,
    pub(super) scale: f64,
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
        layer_norm_forward_composed::<Self>(x, gamma, beta, epsilon)
    }

    /// `(∂x, ∂γ, ∂β)` from the output gradient `grad` and what the forward kept.
    fn layer_norm_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        layer_norm_backward_composed::<Self>(grad, x, gamma, mean, rstd)
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

    /// The exact (erf) GELU of `x`.
    fn exact_gelu_forward(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as burn::backend::ops::ActivationOps<Self>>::gelu(x)
    }

    /// `∂x` of the exact GELU at `x` from the output gradient `grad`.
    fn exact_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as burn::backend::ops::ActivationOps<Self>>::gelu_backward(x, grad)
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

    /// `x·w + b` over the last dimension of `x` (`w`: `[in, out]`); with `bf16`, the product
    /// from bf16-rounded operands where the backend has such products (the CPU backend; see
    /// [`crate::autocast`]), in the tensors' own float type elsewhere.
    fn linear_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        bf16: bool,
    ) -> FloatTensor<Self> {
        let _ = bf16;
        Self::linear(x, weight, Some(bias))
    }

    /// `(∂x, ∂w, ∂b)` of [`linear_forward`](Self::linear_forward), its products in the same
    /// precision.
    fn linear_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bf16: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let _ = bf16;
        linear_backward_composed::<Self>(grad, x, weight)
    }

    /// `(output, saved)`: `softmax(q·kᵀ·scale + bias)` with dropout on the probabilities, times
    /// `v`, as one kernel, with what its backward pass needs. Only backends for which
    /// [`super::attention_available`] says so implement it: the model composes attention elsewhere.
    fn attention_forward(
        _query: FloatTensor<Self>,
        _key: FloatTensor<Self>,
        _value: FloatTensor<Self>,
        _bias: FloatTensor<Self>,
        _dropout: f64,
        _scale: f64,
    ) -> (FloatTensor<Self>, AttentionSaved<Self>) {
        unreachable!("fused attention on a backend without the kernel (see attention_available)")
    }

    /// `(∂q, ∂k, ∂v)` of the fused attention that saved `saved`.
    fn attention_backward(
        _grad: FloatTensor<Self>,
        _saved: AttentionSaved<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("fused attention on a backend without the kernel (see attention_available)")
    }
}

/// `(∂x, ∂w, ∂b)` of the linear layer from the backend's own backward operations.
pub(super) fn linear_backward_composed<B: Backend>(
    grad: FloatTensor<B>,
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    (
        B::linear_x_backward(weight, grad.clone()),
        B::linear_weight_backward(x, grad.clone()),
        B::linear_bias_backward(grad),
    )
}

/// The layer norm's output and row statistics from the backend's operations (its own layer
/// norm for the output).
pub(super) fn layer_norm_forward_composed<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    epsilon: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let last = x.shape().num_dims() - 1;
    let mean = B::float_mean_dim(x.clone(), last);
    let centered = B::float_sub(x.clone(), mean.clone());
    let variance = B::float_mean_dim(B::float_mul(centered.clone(), centered), last);
    let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(variance, epsilon.into())));
    let y = B::layer_norm(x, gamma, Some(beta), epsilon);
    (y, mean, rstd)
}

/// The layer-norm backward pass (module documentation) from the backend's operations.
pub(super) fn layer_norm_backward_composed<B: Backend>(
    grad: FloatTensor<B>,
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    mean: FloatTensor<B>,
    rstd: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let shape = x.shape();
    let rank = shape.num_dims();
    let width = shape[rank - 1];
    let rows = shape.num_elements() / width;
    let normalized = B::float_mul(B::float_sub(x, mean), rstd.clone());
    let per_row = |t: FloatTensor<B>| {
        let summed = B::float_sum_dim(B::float_reshape(t, Shape::new([rows, width])), 0);
        B::float_reshape(summed, Shape::new([width]))
    };
    let grad_beta = per_row(grad.clone());
    let grad_gamma = per_row(B::float_mul(grad.clone(), normalized.clone()));
    let scaled = B::float_mul(grad, broadcastable::<B>(gamma, rank));
    let mean_scaled = B::float_mean_dim(scaled.clone(), rank - 1);
    let mean_projection =
        B::float_mean_dim(B::float_mul(scaled.clone(), normalized.clone()), rank - 1);
    let grad_x = B::float_mul(
        B::float_sub(
            B::float_sub(scaled, mean_scaled),
            B::float_mul(normalized, mean_projection),
        ),
        rstd,
    );
    (grad_x, grad_gamma, grad_beta)
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

    /// The exact (erf) GELU. Off the autodiff graph this is the backend's own GELU.
    #[fusion(default)]
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as burn::backend::ops::ActivationOps<Self>>::gelu(x)
    }

    /// Dropout with probability `prob` (training only: the caller decides when it applies).
    #[fusion(default)]
    fn fused_dropout(x: FloatTensor<Self>, prob: f64) -> FloatTensor<Self> {
        dropout_with_mask::<Self>(x, prob).0
    }

    /// `x·w + b` over the last dimension of `x` (`w`: `[in, out]`, Burn's layout); `bf16` as
    /// [`FusedKernels::linear_forward`]'s.
    #[fusion(default)]
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        bf16: bool,
    ) -> FloatTensor<Self> {
        let _ = bf16;
        Self::linear(x, weight, Some(bias))
    }

    /// Scaled dot-product attention of `[batch, heads, seq, head_dim]` queries, keys and
    /// values with an additive `bias` broadcastable to the scores, and dropout on the
    /// probabilities. Off the autodiff graph this is the backend's fused kernel where it has
    /// one, Burn's attention (without dropout) elsewhere; the model calls it only where
    /// [`super::attention_available`] says so.
    #[fusion(default)]
    fn fused_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        dropout: f64,
        scale: f64,
    ) -> FloatTensor<Self> {
        assert!(
            dropout == 0.0,
            "attention dropout needs a backend with fused attention"
        );
        let shape = query.shape();
        let bias = Self::float_expand(
            bias,
            Shape::new([shape[0], shape[1], shape[2], key.shape()[2]]),
        );
        Self::attention(
            query,
            key,
            value,
            None,
            Some(bias),
            burn::backend::ops::AttentionModuleOptions {
                scale: Some(scale),
                ..Default::default()
            },
        )
    }
}
