//! The CPU backend (flex): its vectorised, parallel GELU ([`fast_gelu`]), layer norm in one
//! parallel pass each way ([`layer_norm`]), the linear layer as one GEMM over all rows each way
//! ([`linear`]; in mixed precision [`bf16_gemm`], its weights packed once per evaluation by
//! [`packed_weights`]; both products' operands [`product`]'s), attention as one operation each
//! way ([`attention`]) and dropout masks drawn in parallel ([`mod@dropout`]); what the kernels share
//! in reading and writing tensors is [`tensors`]'.

mod attention;
pub(super) mod bf16_gemm;
mod dropout;
mod fast_gelu;
mod layer_norm;
mod linear;
pub(super) mod packed_weights;
mod product;
mod tensors;

use burn::backend::tensor::FloatTensor;

pub(super) use dropout::dropout;
use dropout::{DropoutMask, attention_mask};

use super::ops::{AttentionSaved, FusedKernels, FusedOps};

/// The flex backend's GELU through [`fast_gelu`]: vectorised and parallel, where flex's
/// own is scalar libm `erff` on one thread; its layer norm under autodiff through
/// [`layer_norm`] and its linear layer through [`linear`].
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

    fn layer_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        layer_norm::forward(&x, &gamma, &beta, epsilon).unwrap_or_else(|| {
            super::ops::layer_norm_forward_composed::<Self>(x, gamma, beta, epsilon)
        })
    }

    fn layer_norm_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        layer_norm::backward(&grad, &x, &gamma, &mean, &rstd).unwrap_or_else(|| {
            super::ops::layer_norm_backward_composed::<Self>(grad, x, gamma, mean, rstd)
        })
    }

    fn linear_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        bf16: bool,
    ) -> FloatTensor<Self> {
        flex_linear(x, weight, bias, bf16, false)
    }

    fn linear_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bf16: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        linear::backward(&grad, &x, &weight, bf16)
            .unwrap_or_else(|| super::ops::linear_backward_composed::<Self>(grad, x, weight))
    }

    fn attention_forward(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        dropout: f64,
        scale: f64,
    ) -> (FloatTensor<Self>, AttentionSaved<Self>) {
        let mask = attention_mask(dropout);
        let (output, logsumexp) =
            attention::forward(&query, &key, &value, &bias, mask, scale, true);
        let saved = AttentionSaved {
            query,
            key,
            value,
            bias,
            output: output.clone(),
            logsumexp: logsumexp.expect("kept when asked for"),
            generator: Vec::new(),
            mask_seed: mask.map_or(0, |mask| mask.seed),
            dropout,
            scale,
        };
        (output, saved)
    }

    fn attention_backward(
        grad: FloatTensor<Self>,
        saved: AttentionSaved<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let mask = (saved.dropout > 0.0).then(|| DropoutMask::new(saved.mask_seed, saved.dropout));
        let [grad_query, grad_key, grad_value] = attention::backward(
            &grad,
            &saved.query,
            &saved.key,
            &saved.value,
            &saved.bias,
            &saved.logsumexp,
            mask,
            saved.scale,
        );
        (grad_query, grad_key, grad_value)
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
        bf16: bool,
    ) -> FloatTensor<Self> {
        // Off the autodiff graph: the weight may be a packed copy kept for the evaluation.
        flex_linear(x, weight, bias, bf16, true)
    }

    fn fused_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        dropout: f64,
        scale: f64,
    ) -> FloatTensor<Self> {
        let mask = attention_mask(dropout);
        attention::forward(&query, &key, &value, &bias, mask, scale, false).0
    }
}

/// The linear layer through [`linear`] for f32 (its products from bf16 operands with `bf16`,
/// the weight's packed copy reused where [`packed_weights`] keeps one and `reuse` allows it),
/// through Burn's for other float types.
fn flex_linear(
    x: FloatTensor<burn::backend::Flex>,
    weight: FloatTensor<burn::backend::Flex>,
    bias: FloatTensor<burn::backend::Flex>,
    bf16: bool,
    reuse: bool,
) -> FloatTensor<burn::backend::Flex> {
    linear::forward(&x, &weight, &bias, bf16, reuse).unwrap_or_else(|| {
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
