//! The CPU backend (flex): its vectorised, parallel GELU ([`fast_gelu`]), the linear layer as
//! one GEMM over all rows each way ([`linear`]) and dropout masks drawn in parallel.

mod fast_gelu;
mod linear;

use burn::backend::tensor::FloatTensor;
use burn::tensor::{Device, Int, Tensor};

use super::{FusedKernels, FusedOps};

/// The flex backend's GELU through [`fast_gelu`]: vectorised and parallel, where flex's
/// own is scalar libm `erff` on one thread; its linear layer through [`linear`].
impl FusedKernels for burn::backend::Flex {
    fn exact_gelu_forward(x: FloatTensor<Self>) -> FloatTensor<Self> {
        flex_gelu(x)
    }

    fn exact_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != burn::tensor::DType::F32 || grad.dtype() != burn::tensor::DType::F32 {
            return <Self as burn::backend::ops::ActivationOps<Self>>::gelu_backward(x, grad);
        }
        let x = x.to_contiguous();
        let mut grad =
            if grad.is_unique() && grad.is_contiguous() && grad.layout().start_offset() == 0 {
                grad
            } else {
                grad.to_contiguous()
            };
        let n = x.layout().num_elements();
        fast_gelu::gelu_backward_in_place(
            &x.storage::<f32>()[..n],
            &mut grad.storage_mut::<f32>()[..n],
        );
        grad
    }

    fn linear_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        flex_linear(x, weight, bias)
    }

    fn linear_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if let Some(grads) = linear::backward(&grad, &x, &weight) {
            return grads;
        }
        use burn::backend::ops::ModuleOps;
        (
            Self::linear_x_backward(weight, grad.clone()),
            Self::linear_weight_backward(x, grad.clone()),
            Self::linear_bias_backward(grad),
        )
    }
}

impl FusedOps for burn::backend::Flex {
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        flex_gelu(x)
    }

    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        flex_linear(x, weight, bias)
    }
}

/// The linear layer through [`linear`] for f32, through Burn's for other float types.
fn flex_linear(
    x: FloatTensor<burn::backend::Flex>,
    weight: FloatTensor<burn::backend::Flex>,
    bias: FloatTensor<burn::backend::Flex>,
) -> FloatTensor<burn::backend::Flex> {
    linear::forward(&x, &weight, &bias).unwrap_or_else(|| {
        <burn::backend::Flex as burn::backend::ops::ModuleOps<burn::backend::Flex>>::linear(
            x,
            weight,
            Some(bias),
        )
    })
}

/// GELU on a flex tensor: in place when the tensor is this operation's alone, else on a
/// contiguous copy; other float types through flex's own.
fn flex_gelu(x: FloatTensor<burn::backend::Flex>) -> FloatTensor<burn::backend::Flex> {
    if x.dtype() != burn::tensor::DType::F32 {
        return <burn::backend::Flex as burn::backend::ops::ActivationOps<burn::backend::Flex>>::gelu(x);
    }
    let mut x = if x.is_unique() && x.is_contiguous() && x.layout().start_offset() == 0 {
        x
    } else {
        x.to_contiguous()
    };
    let n = x.layout().num_elements();
    fast_gelu::gelu_in_place(&mut x.storage_mut::<f32>()[..n]);
    x
}

/// Whether `device` (or the device under its autodiff wrapper) is the CPU backend's.
pub(super) fn is_flex(device: &Device) -> bool {
    matches!(
        device.clone().without_autodiff().as_dispatch(),
        burn_dispatch::DispatchDevice::Flex(_)
    )
}

/// Dropout with a mask drawn in parallel from a counter-based hash ([`crate::mix_seed`]): flex
/// draws every mask element from one ChaCha stream, serially, which took 12% of a training step
/// on two threads (docs/BENCHMARKS.md); each mask's seed comes from Burn's generator, so
/// `Device::seed` still makes a run reproducible.
pub(super) fn dropout<const D: usize>(x: Tensor<D>, prob: f64) -> Tensor<D> {
    let device = x.device();
    let draw = Tensor::<1, Int>::random(
        [2],
        // 31 bits each: the default integer type may be i32.
        burn::tensor::Distribution::Uniform(0.0, 2_147_483_647.0),
        &device.clone().without_autodiff(),
    );
    let words: Vec<i64> = draw
        .into_data()
        .convert::<i64>()
        .try_to_vec()
        .unwrap_or_default();
    let seed = words.iter().fold(0u64, |acc, &w| (acc << 31) ^ w as u64);
    let keep = 1.0 - prob;
    let scale = (1.0 / keep) as f32;
    // An element is kept when the top 32 bits of its hash fall below keep * 2^32.
    let threshold = (keep * 4_294_967_296.0) as u64;
    let shape = x.shape();
    let mask: Vec<f32> = {
        use rayon::prelude::*;
        (0..shape.num_elements())
            .into_par_iter()
            .with_min_len(1 << 14)
            .map(|i| {
                if crate::mix_seed(seed, i as u64) >> 32 < threshold {
                    scale
                } else {
                    0.0
                }
            })
            .collect()
    };
    x * Tensor::from_data(burn::tensor::TensorData::new(mask, shape), &device)
}
