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
//! composed from the backend's operations ([`ops::FusedKernels`]' default bodies), or on libtorch
//! `native_dropout_backward` and, on CUDA, PyTorch's batch-norm backward kernels for the layer
//! norm.
//!
//! [`linear`] is one operation on libtorch (`addmm` forward, two GEMMs and a sum backward) and
//! on the CPU backend (the same with the `gemm` crate); the GPU backends keep Burn's `Linear`.
//! [`attention`] is one operation on the CPU backend too (its own kernel on the heads where the
//! projections leave them, dropout inside, the probabilities recomputed backward) and on
//! libtorch PyTorch's kernels (on CUDA the memory-efficient attention kernel with dropout
//! inside, as transformers trains; its flash attention on the CPU without dropout; and
//! `scaled_dot_product_attention` off the autodiff graph); the GPU backends compose attention in
//! the model.
//!
//! The backend-specific code lives here and nowhere else: [`flex`] (the CPU backend's
//! vectorised GELU, layer norm, linear layer and attention, its bf16 products, and parallel
//! dropout masks), `cubecl` (the
//! WebGPU backends, which take the composed default bodies), `libtorch` (PyTorch's kernels) and
//! [`autodiff`] (the backward steps of the fused operations, for every backend).

// burn-tch is deprecated upstream, and still the fastest GPU backend here (docs/perf-notes/journal.md).
#![cfg_attr(feature = "tch", allow(deprecated))]

mod autodiff;
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
mod cubecl;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "tch")]
mod libtorch;

mod ops;

use ops::FusedOps;
use sentiment_backend::{is_flex, is_libtorch};

use burn::backend::Dispatch;
use burn::tensor::Tensor;

/// Dropout of `x` with probability `prob`, always applied (the caller checks training mode):
/// one operation whose backward pass multiplies by the saved mask; on libtorch, PyTorch's fused
/// `native_dropout` kernels; on the CPU backend a mask drawn in parallel ([`flex::dropout`]).
pub fn dropout<const D: usize>(x: Tensor<D>, prob: f64) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if is_flex(&x.device()) {
        return flex::dropout(x, prob);
    }
    if !crate::kernels::current().fused_ops {
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

/// `layer` applied to `x` as one operation: one GEMM over all rows with the bias added in it,
/// two GEMMs and a column sum backward; on libtorch PyTorch's `addmm`, on the CPU backend the
/// `gemm` crate ([`flex`]'s `linear`). The GPU backends keep Burn's `Linear`, which they run
/// well.
pub fn linear<const D: usize>(layer: &burn::nn::Linear, x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    let (Some(bias), true) = (&layer.bias, is_libtorch(&device) || is_flex(&device)) else {
        return layer.forward(x);
    };
    if !crate::kernels::current().fused_ops {
        return layer.forward(x);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_linear(
        x.into_dispatch(),
        layer.weight.val().into_dispatch(),
        bias.val().into_dispatch(),
        crate::autocast::is_bf16(),
    ))
}

impl crate::cpu::Bf16Support {
    /// This CPU's, as the CPU backend's products run in this process (`NoAvx512Bf16` in
    /// builds without the CPU backend). On a CPU with AMX the first call asks the operating
    /// system for the tile state and checks the tile kernel against f32 products.
    pub fn detect() -> Self {
        #[cfg(feature = "flex")]
        return flex::bf16_gemm::support();
        #[cfg(not(feature = "flex"))]
        Self::NoAvx512Bf16
    }
}

/// Runs `f` on a thread of the current rayon pool when `device` is the CPU backend's and this
/// thread is not one already (then returns what `f` gives); elsewhere runs `f` here. The
/// CPU backend's kernels parallelise on that pool: called from a thread outside it, each of a
/// training step's hundreds of parallel loops hands its work to the pool and puts the caller
/// to sleep until the pool is done, and the pool's threads yield and sleep between loops; run
/// on a pool thread, that thread does its share of every loop itself and the others steal the
/// rest. This thread's [`crate::autocast`] settings (bf16, reused weights) and its
/// [`crate::kernels`] apply inside `f`.
/// Other backends keep `f` on this thread, where their own runtime expects it (libtorch's
/// current CUDA device is a thread's).
pub fn in_thread_pool<R: Send>(device: &burn::tensor::Device, f: impl FnOnce() -> R + Send) -> R {
    if is_flex(device) && rayon::current_thread_index().is_none() {
        let (bf16, reuse, kernels) = (
            crate::autocast::is_bf16(),
            crate::autocast::reuses_weights(),
            crate::kernels::current(),
        );
        return rayon::scope(move |_| {
            crate::kernels::scoped(kernels, || {
                crate::autocast::bf16(bf16, || {
                    if reuse {
                        crate::autocast::reuse_weights(f)
                    } else {
                        f()
                    }
                })
            })
        });
    }
    f()
}

/// Whether the model may hand `device`'s kernels tensors of any shape: on the CPU backend,
/// whose kernels compile nothing and want no alignment, the classifier and the masked LM cut a
/// batch's padded columns and size the last layer's rows exactly. Elsewhere a batch keeps the
/// shape its padding gave it (multiples of the pad multiple, or one shape with
/// `--pad-to-max-length`: tensor cores' alignment, CubeCL's kernels compiled per shape;
/// docs/model.md), and the masked LM's rows of the last layer are rounded up to
/// [`SHAPE_MULTIPLE`].
pub(crate) fn any_shape(device: &burn::tensor::Device) -> bool {
    is_flex(device)
}

/// What sizes the model chooses are rounded up to where [`any_shape`] is false (as
/// transformers' `pad_to_multiple_of=8`).
pub(crate) const SHAPE_MULTIPLE: usize = 8;

/// Whether [`attention`] runs on `device` for `dtype` heads with attention dropout `dropout`:
/// on the CPU backend in f32 (its own kernel, dropout included); on libtorch, on CUDA
/// (PyTorch's memory-efficient kernel, dropout included, for head sizes that are a multiple of
/// 8) or without dropout (its CPU flash attention; and off the autodiff graph, its
/// `scaled_dot_product_attention`). Elsewhere the model composes attention from Burn's
/// operations.
pub fn attention_available(
    device: &burn::tensor::Device,
    dtype: burn::tensor::DType,
    dropout: f64,
    head_dim: usize,
) -> bool {
    if !crate::kernels::current().fused_attention {
        return false;
    }
    match device.clone().without_autodiff().as_dispatch() {
        #[cfg(feature = "flex")]
        burn_dispatch::DispatchDevice::Flex(_) => dtype == burn::tensor::DType::F32,
        #[cfg(feature = "tch")]
        burn_dispatch::DispatchDevice::LibTorch(device) => {
            dropout == 0.0
                || (matches!(device, burn_tch::LibTorchDevice::Cuda(_))
                    && head_dim.is_multiple_of(8))
        }
        _ => {
            let _ = (dtype, dropout, head_dim);
            false
        }
    }
}

/// Scaled dot-product attention as one differentiable operation: `softmax(q·kᵀ·scale + bias)`
/// with dropout `dropout` on the probabilities, times `v`. `query`, `key`, `value`:
/// `[batch, heads, seq, head_dim]`; `bias`: broadcastable to `[batch, heads, seq, seq]`. Call
/// only where [`attention_available`] says so.
pub fn attention(
    query: Tensor<4>,
    key: Tensor<4>,
    value: Tensor<4>,
    bias: Tensor<4>,
    dropout: f64,
    scale: f64,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_attention(
        query.into_dispatch(),
        key.into_dispatch(),
        value.into_dispatch(),
        bias.into_dispatch(),
        dropout,
        scale,
    ))
}

/// The exact (erf) GELU of `x`: one operation whose backward pass is one more; on the CPU
/// backend both vectorised and parallel (`flex::fast_gelu`).
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !crate::kernels::current().fused_ops {
        return burn::tensor::activation::gelu(x);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_gelu(x.into_dispatch()))
}

/// Softmax of `x` along `dim`: one operation with a closed-form backward pass (see the module
/// documentation).
pub fn softmax<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    if !crate::kernels::current().fused_ops {
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
    if !crate::kernels::current().fused_ops {
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
    use super::in_thread_pool;
    use burn::module::Param;
    use burn::nn::LayerNormConfig;
    use burn::tensor::{DType, Device, Tensor, TensorData};

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

    /// `work` run on a rayon pool of `threads` threads (the flex kernels and `gemm` use the
    /// current pool).
    fn on_threads<R: Send>(threads: usize, work: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(work)
    }

    /// Asserts that each named part of `one` (run on one thread) equals that of `three` (run
    /// on three) to the bit.
    fn assert_same_bits<const N: usize>(
        parts: [&str; N],
        one: [Vec<f32>; N],
        three: [Vec<f32>; N],
    ) {
        for ((part, one), three) in parts.into_iter().zip(one).zip(three) {
            assert!(one == three, "{part} differs between 1 and 3 threads");
        }
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

    /// The fused linear layer against Burn's `Linear` on `device`: output and the gradients of
    /// a weighted sum, for a batch of sequences, for plain rows, and for an input that is a
    /// transposed view (not contiguous).
    fn linear_equals_burns(device: &Device) {
        use burn::nn::LinearConfig;
        let mut layer = LinearConfig::new(16, 12).init(device);
        layer.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(wave(192, 2.0), [16, 12]),
            device,
        ));
        layer.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(wave(12, 0.7), [12]),
            device,
        )));
        let bias = layer.bias.as_ref().unwrap();
        let batch = Tensor::<3>::from_data(TensorData::new(wave(160, 0.1), [2, 5, 16]), device);
        let transposed =
            Tensor::<3>::from_data(TensorData::new(wave(160, 0.4), [2, 16, 5]), device)
                .swap_dims(1, 2);
        let rows = Tensor::<3>::from_data(TensorData::new(wave(48, 0.9), [1, 3, 16]), device);
        for (name, x) in [("batch", batch), ("transposed", transposed), ("rows", rows)] {
            let [b, s, _] = x.dims();
            let weights =
                Tensor::<3>::from_data(TensorData::new(wave(b * s * 12, 1.3), [b, s, 12]), device);
            let run = |fused: bool| {
                let x = x.clone().detach().require_grad();
                let y = if fused {
                    super::linear(&layer, x.clone())
                } else {
                    layer.forward(x.clone())
                };
                let grads = (y.clone() * weights.clone()).sum().backward();
                [
                    values(y.inner()),
                    values(x.grad(&grads).unwrap()),
                    values(layer.weight.val().grad(&grads).unwrap()),
                    values(bias.val().grad(&grads).unwrap()),
                ]
            };
            let (fused, composed) = (run(true), run(false));
            for (i, part) in ["output", "∂x", "∂w", "∂b"].into_iter().enumerate() {
                assert_close(&format!("{name}: {part}"), &fused[i], &composed[i], 1e-5);
            }
        }
    }

    /// `in_thread_pool` moves its work onto a pool thread with the caller's autocast settings
    /// and kernels (and leaves that thread's own as they were), and keeps it where it is on a
    /// pool thread.
    #[test]
    fn in_thread_pool_runs_on_a_pool_thread_with_the_callers_settings() {
        use crate::autocast::{bf16, is_bf16, reuse_weights, reuses_weights};
        let device = Device::flex();
        let seen = || {
            (
                rayon::current_thread_index().is_some(),
                is_bf16(),
                reuses_weights(),
            )
        };
        let both = bf16(true, || reuse_weights(|| in_thread_pool(&device, seen)));
        assert_eq!(both, (true, true, true));
        assert_eq!(
            bf16(true, || in_thread_pool(&device, seen)),
            (true, true, false)
        );
        assert_eq!(in_thread_pool(&device, seen), (true, false, false));
        let stays = on_threads(2, || {
            let here = std::thread::current().id();
            in_thread_pool(&device, || std::thread::current().id()) == here
        });
        assert!(stays, "a pool thread's work moved");
        // The kernels' choice goes along too, and stays the caller's: another thread, and the
        // pool's next job outside the choice, run the defaults.
        use crate::kernels::{Kernels, current, scoped};
        let composed = Kernels {
            fused_ops: false,
            fused_attention: false,
            bf16_products: None,
        };
        let (inside, elsewhere) = scoped(composed, || {
            let elsewhere = std::thread::spawn(current).join().expect("no panic");
            (in_thread_pool(&device, current), elsewhere)
        });
        assert_eq!(inside, composed);
        assert_eq!(elsewhere, Kernels::DEFAULT);
        assert_eq!(current(), Kernels::DEFAULT);
        assert_eq!(in_thread_pool(&device, current), Kernels::DEFAULT);
    }

    /// A linear layer's forward and backward passes give the same bits in the pool as outside.
    #[test]
    fn in_thread_pool_gives_the_same_bits() {
        let device = Device::flex().autodiff();
        let layer = burn::nn::LinearConfig::new(48, 40).init(&device);
        let run = || {
            let x = Tensor::<2>::from_data(TensorData::new(wave(64 * 48, 0.3), [64, 48]), &device)
                .require_grad();
            let y = super::linear(&layer, x.clone());
            let grads = (y.clone() * y.clone()).sum().backward();
            [
                values(y.inner()),
                values(x.grad(&grads).unwrap()),
                values(layer.weight.val().grad(&grads).unwrap()),
            ]
        };
        let outside = run();
        let inside = in_thread_pool(&device, run);
        for ((part, outside), inside) in ["output", "∂x", "∂w"].into_iter().zip(outside).zip(inside)
        {
            assert!(outside == inside, "{part} differs in the pool");
        }
    }

    /// The CPU backend's linear layer (one GEMM over all rows each way, `flex::linear`).
    #[test]
    fn flex_linear_equals_burns() {
        linear_equals_burns(&Device::flex().autodiff());
    }

    /// Off the autodiff graph the CPU backend's fused linear gives Burn's output too.
    #[test]
    fn flex_linear_without_autodiff_equals_burns() {
        use burn::nn::LinearConfig;
        let device = Device::flex();
        let layer = LinearConfig::new(8, 24).init(&device);
        let x = Tensor::<3>::from_data(TensorData::new(wave(80, 0.3), [2, 5, 8]), &device);
        assert_close(
            "output",
            &values(super::linear(&layer, x.clone())),
            &values(layer.forward(x)),
            1e-5,
        );
    }

    /// The fused linear layer's output and the gradients `[∂x, ∂w, ∂b]` of its output
    /// weighted by `weights` and summed, under bf16 autocast if `bf16`.
    fn linear_results(
        layer: &burn::nn::Linear,
        x: Tensor<3>,
        weights: &Tensor<3>,
        bf16: bool,
    ) -> [Vec<f32>; 4] {
        let x = x.detach().require_grad();
        let y = crate::autocast::bf16(bf16, || super::linear(layer, x.clone()));
        let grads = (y.clone() * weights.clone()).sum().backward();
        [
            values(y.inner()),
            values(x.grad(&grads).unwrap()),
            values(layer.weight.val().grad(&grads).unwrap()),
            values(layer.bias.as_ref().unwrap().val().grad(&grads).unwrap()),
        ]
    }

    /// The CPU backend's linear layer gives the same bits on one thread and on three, for a
    /// layer large enough that its GEMMs run on the pool (`flex::linear`), in f32 and under
    /// bf16 autocast.
    #[test]
    fn flex_linear_does_not_depend_on_the_thread_count() {
        use burn::nn::LinearConfig;
        let device = Device::flex().autodiff();
        let mut layer = LinearConfig::new(128, 512).init(&device);
        layer.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(wave(128 * 512, 0.2), [128, 512]),
            &device,
        ));
        let x = Tensor::<3>::from_data(
            TensorData::new(wave(4 * 64 * 128, 0.5), [4, 64, 128]),
            &device,
        );
        let weights = Tensor::<3>::from_data(
            TensorData::new(wave(4 * 64 * 512, 1.1), [4, 64, 512]),
            &device,
        );
        let run = |threads: usize, bf16: bool| {
            on_threads(threads, || {
                linear_results(&layer, x.clone(), &weights, bf16)
            })
        };
        for bf16 in [false, true] {
            assert_same_bits(["output", "∂x", "∂w", "∂b"], run(1, bf16), run(3, bf16));
        }
    }

    /// `x` rounded to the nearest bf16 (ties to even), as an f32.
    fn to_bf16(x: f32) -> f32 {
        let bits = x.to_bits();
        f32::from_bits((bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff_0000)
    }

    /// Under [`crate::autocast::bf16`] the CPU backend's linear layer gives, forward and
    /// backward, the f32 layer's results for bf16-rounded input and weight (the output's
    /// gradient here is exact in bf16): its products round their operands and sum in f32. The
    /// shapes cross the bf16 kernel's tile and block edges; the input is also a transposed
    /// view. And the results differ from f32 ones on the unrounded operands: the switch acts.
    #[test]
    fn flex_linear_under_bf16_autocast_is_f32_on_rounded_operands() {
        use burn::nn::LinearConfig;
        let device = Device::flex().autodiff();
        let (d_in, d_out) = (400, 72);
        let layer_with = |round: fn(f32) -> f32| {
            let mut layer = LinearConfig::new(d_in, d_out).init(&device);
            let weight: Vec<f32> = wave(d_in * d_out, 0.2).into_iter().map(round).collect();
            layer.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(weight, [d_in, d_out]),
                &device,
            ));
            layer.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(wave(d_out, 0.7), [d_out]),
                &device,
            )));
            layer
        };
        let (exact, rounded) = (layer_with(|x| x), layer_with(to_bf16));
        let input = |round: fn(f32) -> f32, transposed: bool| {
            let values: Vec<f32> = wave(3 * 37 * d_in, 0.5).into_iter().map(round).collect();
            if transposed {
                Tensor::<3>::from_data(TensorData::new(values, [3, d_in, 37]), &device)
                    .swap_dims(1, 2)
            } else {
                Tensor::<3>::from_data(TensorData::new(values, [3, 37, d_in]), &device)
            }
        };
        // Multiples of 1/4 up to 3/4: exact in bf16.
        let weights = Tensor::<3>::from_data(
            TensorData::new(
                (0..3 * 37 * d_out)
                    .map(|i| (i % 7) as f32 * 0.25 - 0.75)
                    .collect::<Vec<f32>>(),
                [3, 37, d_out],
            ),
            &device,
        );
        let run = |layer: &burn::nn::Linear, x: Tensor<3>, bf16: bool| {
            linear_results(layer, x, &weights, bf16)
        };
        for transposed in [false, true] {
            let mixed = run(&exact, input(|x| x, transposed), true);
            let want = run(&rounded, input(to_bf16, transposed), false);
            for (i, part) in ["output", "∂x", "∂w", "∂b"].into_iter().enumerate() {
                assert_close(
                    &format!("{part} (transposed {transposed})"),
                    &mixed[i],
                    &want[i],
                    1e-5,
                );
            }
            let full = run(&exact, input(|x| x, transposed), false);
            let moved = mixed[0]
                .iter()
                .zip(&full[0])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                moved > 1e-3,
                "bf16 products changed the output by only {moved}"
            );
        }
    }

    /// Inside `autocast::reuse_weights`, a bf16 linear layer off the autodiff graph packs its
    /// weight once and gives the bits it gives without; a weight updated inside the region
    /// (by an operation that could write in place: nothing but the packed copy shares it), or
    /// dropped and followed by another of its size, is packed anew, not taken for the old
    /// one; the copies go when the region ends.
    #[test]
    fn flex_bf16_linear_reuses_packed_weights_inside_the_region() {
        use crate::autocast::{bf16, reuse_weights};
        use burn::nn::LinearConfig;
        let device = Device::flex();
        let (d_in, d_out) = (300, 70);
        let layer_with = |phase: f32| {
            let mut layer = LinearConfig::new(d_in, d_out).init(&device);
            layer.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(wave(d_in * d_out, phase), [d_in, d_out]),
                &device,
            ));
            layer.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(wave(d_out, phase + 0.3), [d_out]),
                &device,
            )));
            layer
        };
        let update = |layer: &mut burn::nn::Linear| {
            layer.weight = layer.weight.clone().map(|w| w * 0.5 + 0.25);
        };
        let x = Tensor::<3>::from_data(
            TensorData::new(wave(2 * 9 * d_in, 0.5), [2, 9, d_in]),
            &device,
        );
        let output = |layer: &burn::nn::Linear| values(super::linear(layer, x.clone()));
        let layer = layer_with(0.2);
        let (want, want_updated, want_other) = bf16(true, || {
            let mut updated = layer_with(0.9);
            update(&mut updated);
            (output(&layer), output(&updated), output(&layer_with(1.7)))
        });
        reuse_weights(|| {
            bf16(true, || {
                assert_eq!(super::flex::packed_weights::kept(), 0);
                for _ in 0..2 {
                    assert!(output(&layer) == want, "the reused weight's output differs");
                }
                assert_eq!(super::flex::packed_weights::kept(), 1);
                let mut fresh = layer_with(0.9);
                output(&fresh);
                update(&mut fresh);
                assert!(
                    output(&fresh) == want_updated,
                    "the updated weight's output differs"
                );
                assert_eq!(super::flex::packed_weights::kept(), 3);
                // A weight dropped and another of its size made: the allocator would hand
                // the new one the old one's address if the packed copy did not hold it.
                drop(fresh);
                let other = layer_with(1.7);
                assert!(
                    output(&other) == want_other,
                    "the new weight's output differs"
                );
                assert_eq!(super::flex::packed_weights::kept(), 4);
            });
        });
        assert_eq!(super::flex::packed_weights::kept(), 0);
        // Without bf16 nothing is packed.
        reuse_weights(|| {
            output(&layer);
            assert_eq!(super::flex::packed_weights::kept(), 0);
        });
    }

    /// The CPU backend's layer norm gives the same bits on one thread and on three, with rows
    /// wider than one column block of its parameter gradients (`flex::layer_norm`).
    #[test]
    fn flex_layer_norm_does_not_depend_on_the_thread_count() {
        let device = Device::flex().autodiff();
        let (rows, width) = (200, 300);
        let x = Tensor::<2>::from_data(
            TensorData::new(wave(rows * width, 0.3), [rows, width]),
            &device,
        );
        let weights = Tensor::<2>::from_data(
            TensorData::new(wave(rows * width, 1.7), [rows, width]),
            &device,
        );
        let gamma = Tensor::<1>::from_data(TensorData::new(wave(width, 2.1), [width]), &device);
        let beta = Tensor::<1>::from_data(TensorData::new(wave(width, 0.4), [width]), &device);
        let run = |threads: usize| {
            on_threads(threads, || {
                let (x, gamma, beta) = (
                    x.clone().require_grad(),
                    gamma.clone().require_grad(),
                    beta.clone().require_grad(),
                );
                let y = super::layer_norm(x.clone(), gamma.clone(), beta.clone(), 1e-5);
                let grads = (y.clone() * weights.clone()).sum().backward();
                [
                    values(y.inner()),
                    values(x.grad(&grads).unwrap()),
                    values(gamma.grad(&grads).unwrap()),
                    values(beta.grad(&grads).unwrap()),
                ]
            })
        };
        assert_same_bits(["output", "∂x", "∂γ", "∂β"], run(1), run(3));
    }

    /// libtorch's linear (`addmm` forward, two GEMMs and a sum backward), on libtorch's CPU
    /// device (needs the `tch` feature and libtorch).
    #[cfg(feature = "tch")]
    #[test]
    fn libtorch_linear_equals_burns() {
        linear_equals_burns(&Device::libtorch().autodiff());
    }

    /// Output and, on an autodiff `device`, the gradients of `q`, `k` and `v` (of a weighted
    /// sum of the output) of the fused attention or of attention composed from Burn's
    /// operations (with the fused dropout on the probabilities), on heads given as the model
    /// gives them: a `[batch, heads, seq, dim]` view of `[batch, seq, heads, dim]` values. The
    /// second sequence's last key is padding, masked by the bias. The generator is seeded
    /// first, so that dropout draws the same mask on both sides.
    fn attention_results(device: &Device, fused: bool, dropout: f64) -> Vec<Vec<f32>> {
        let [batch, heads, seq, dim] = [2, 3, 5, 8];
        let tensor = |phase: f32| {
            Tensor::<4>::from_data(
                TensorData::new(
                    wave(batch * heads * seq * dim, phase),
                    [batch, seq, heads, dim],
                ),
                device,
            )
        };
        let (q, k, v) = (tensor(0.1), tensor(0.8), tensor(1.9));
        let weights = tensor(2.6).swap_dims(1, 2);
        let bias = Tensor::<4>::from_data(
            TensorData::new(
                vec![0.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0e4],
                [batch, 1, 1, seq],
            ),
            device,
        );
        let scale = (dim as f64).sqrt().recip();
        let tracked = device.is_autodiff();
        let (q, k, v) = if tracked {
            (q.require_grad(), k.require_grad(), v.require_grad())
        } else {
            (q, k, v)
        };
        let heads_of = |t: &Tensor<4>| t.clone().swap_dims(1, 2);
        device.seed(7);
        let y = if fused {
            super::attention(
                heads_of(&q),
                heads_of(&k),
                heads_of(&v),
                bias,
                dropout,
                scale,
            )
        } else {
            let scores = heads_of(&q).matmul(heads_of(&k).swap_dims(2, 3)) * scale + bias;
            let probs = super::softmax(scores, 3);
            let probs = if dropout > 0.0 {
                super::dropout(probs, dropout)
            } else {
                probs
            };
            probs.matmul(heads_of(&v))
        };
        let mut out = vec![values(y.clone().inner())];
        if tracked {
            let grads = (y * weights).sum().backward();
            for t in [q, k, v] {
                out.push(values(t.grad(&grads).unwrap()));
            }
        }
        out
    }

    /// The fused attention against the composed one on `device`, with and without autodiff.
    fn attention_equals_composed(device: &Device, dropout: f64) {
        let _generator = crate::GENERATOR_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for device in [device.clone().autodiff(), device.clone()] {
            assert!(super::attention_available(&device, DType::F32, dropout, 8));
            if dropout > 0.0 && !device.is_autodiff() {
                continue;
            }
            let fused = attention_results(&device, true, dropout);
            let composed = attention_results(&device, false, dropout);
            for (i, name) in ["output", "∂q", "∂k", "∂v"]
                .iter()
                .enumerate()
                .take(fused.len())
            {
                assert_close(name, &fused[i], &composed[i], 1e-5);
            }
        }
    }

    /// The CPU backend's attention, reading the heads in place and writing them interleaved,
    /// against the composed one.
    #[test]
    fn flex_attention_equals_composed() {
        attention_equals_composed(&Device::flex(), 0.0);
    }

    /// With attention dropout: the same mask as the composed attention's dropout draws for the
    /// same seed, on the probabilities forward and on their gradient backward; and a share of
    /// the probabilities actually dropped (the output differs from no dropout's).
    #[test]
    fn flex_attention_with_dropout_equals_composed() {
        attention_equals_composed(&Device::flex(), 0.3);
        let _generator = crate::GENERATOR_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let device = Device::flex().autodiff();
        let (with, without) = (
            attention_results(&device, true, 0.3),
            attention_results(&device, true, 0.0),
        );
        assert!(with[0] != without[0], "dropout changed nothing");
    }

    /// The same bits on one thread as on three, forward and backward, dropout included.
    #[test]
    fn flex_attention_does_not_depend_on_the_thread_count() {
        let _generator = crate::GENERATOR_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let device = Device::flex().autodiff();
        let run = |threads| on_threads(threads, || attention_results(&device, true, 0.1));
        let (one, three) = (run(1), run(3));
        let [one, three] = [one, three].map(|r| <[Vec<f32>; 4]>::try_from(r).unwrap());
        assert_same_bits(["output", "∂q", "∂k", "∂v"], one, three);
    }

    /// libtorch's attention (its CPU flash attention under autodiff, `scaled_dot_product_
    /// attention` off it) against attention composed from Burn's operations (needs the `tch`
    /// feature and libtorch).
    #[cfg(feature = "tch")]
    #[test]
    fn libtorch_attention_equals_composed() {
        attention_equals_composed(&Device::libtorch(), 0.0);
    }
}
