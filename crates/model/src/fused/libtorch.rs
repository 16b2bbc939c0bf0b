//! libtorch (CPU and CUDA): PyTorch's own kernels for the fused operations.

use burn::backend::tensor::FloatTensor;

use super::ops::{AttentionSaved, FusedKernels, FusedOps, layer_norm_backward_composed};

/// Off the autodiff graph, PyTorch's `scaled_dot_product_attention`, which takes an additive
/// bias as it is (burn-tch's `attention` composes the attention from its parts when given one).
impl FusedOps for burn_tch::LibTorch {
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        bf16: bool,
    ) -> FloatTensor<Self> {
        <Self as FusedKernels>::linear_forward(x, weight, bias, bf16)
    }

    fn fused_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        dropout: f64,
        scale: f64,
    ) -> FloatTensor<Self> {
        let bias = bias.tensor.to_kind(query.tensor.kind());
        burn_tch::TchTensor::new(tch::Tensor::scaled_dot_product_attention(
            &query.tensor,
            &key.tensor,
            &value.tensor,
            Some(bias),
            dropout,
            false,
            Some(scale),
            false,
        ))
    }
}

/// Three libtorch results as Burn's tensors.
fn wrap_three(
    a: tch::Tensor,
    b: tch::Tensor,
    c: tch::Tensor,
) -> (
    burn_tch::TchTensor,
    burn_tch::TchTensor,
    burn_tch::TchTensor,
) {
    use burn_tch::TchTensor;
    (TchTensor::new(a), TchTensor::new(b), TchTensor::new(c))
}

/// The bias as PyTorch's memory-efficient attention kernel takes it (`preprocess_mask` in
/// ATen's `sdp_utils`): expanded to `[batch, heads, queries, keys]`, materialised, its rows
/// padded to a multiple of 16 elements.
fn efficient_attention_bias(bias: &tch::Tensor, query: &tch::Tensor, keys: i64) -> tch::Tensor {
    let size = query.size();
    let (batch, heads, queries) = (size[0], size[1], size[2]);
    let bias = bias
        .to_kind(query.kind())
        .expand([batch, heads, queries, keys], false);
    let padded_keys = (keys + 15) / 16 * 16;
    let buffer = tch::Tensor::zeros(
        [batch, heads, queries, padded_keys],
        (query.kind(), query.device()),
    );
    let mut view = buffer.narrow(3, 0, keys);
    view.copy_(&bias);
    view
}

/// On libtorch the forward pass is PyTorch's `native_layer_norm`, one kernel that also returns
/// the row statistics; tch exposes no `native_layer_norm_backward`, so the backward pass is the
/// closed form composed from libtorch operations.
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
        wrap_three(y, mean, rstd)
    }

    /// On CUDA, PyTorch's batch-norm backward kernels, which are the layer norm's with the
    /// roles of rows and columns chosen by the view (tch exposes no `native_layer_norm_backward`):
    /// `[rows, width]` as a batch of `rows` samples with `width` channels gives ∂β and ∂γ from
    /// the normalised input in one reduction, and `[1, rows, width]` as one sample with `rows`
    /// channels gives ∂x from the row statistics in two kernels; six passes over the
    /// activations where the composed form takes thirteen. Elsewhere (ATen has these kernels on
    /// CUDA only) the composed form.
    fn layer_norm_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if !x.tensor.device().is_cuda() {
            return layer_norm_backward_composed::<Self>(grad, x, gamma, mean, rstd);
        }
        let size = x.tensor.size();
        let width = size[size.len() - 1];
        let rows = x.tensor.numel() as i64 / width;
        let options = (x.tensor.kind(), x.tensor.device());
        let none = None::<&tch::Tensor>;
        let grad = grad.tensor.reshape([rows, width]);
        let x = x.tensor.reshape([rows, width]);
        let (mean, rstd) = (mean.tensor.reshape([rows]), rstd.tensor.reshape([rows]));
        // x̂ = (x − μ)·r, then per column: Σ g = ∂β and Σ g·(x̂ − 0)·1 = ∂γ.
        let normalized = (&x - mean.unsqueeze(1)) * rstd.unsqueeze(1);
        let (grad_beta, grad_gamma, _, _) = normalized.batch_norm_backward_reduce(
            &grad,
            &tch::Tensor::zeros([width], options),
            &tch::Tensor::ones([width], options),
            none,
            true,
            false,
            false,
        );
        // ∂x = r·(dy − mean(dy) − (x − μ)·r²·mean(dy·(x − μ))) with dy = g·γ, per row.
        let scaled = (&grad * &gamma.tensor).reshape([1, rows, width]);
        let x = x.reshape([1, rows, width]);
        let (sum_dy, sum_dy_xmu, _, _) =
            x.batch_norm_backward_reduce(&scaled, &mean, &rstd, none, true, false, false);
        let count = tch::Tensor::full([1], width, (tch::Kind::Int, x.device()));
        let grad_x =
            x.batch_norm_backward_elemt(&scaled, &mean, &rstd, none, &sum_dy, &sum_dy_xmu, &count);
        wrap_three(grad_x.reshape(size), grad_gamma, grad_beta)
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

    /// PyTorch's `addmm` on the rows of `x`: one GEMM with the bias in its epilogue, where
    /// Burn's `linear` runs a GEMM batched over the leading dimension and a separate addition.
    fn linear_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        _bf16: bool,
    ) -> FloatTensor<Self> {
        let mut size = x.tensor.size();
        let width = *size.last().expect("a tensor of rank at least 1");
        let rows = x.tensor.reshape([-1, width]);
        let y = bias.tensor.addmm(&rows, &weight.tensor);
        *size.last_mut().expect("rank checked") = weight.tensor.size()[1];
        burn_tch::TchTensor::new(y.reshape(size))
    }

    fn linear_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        _bf16: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let size = x.tensor.size();
        let (d_in, d_out) = (size[size.len() - 1], weight.tensor.size()[1]);
        let grad = grad.tensor.reshape([-1, d_out]);
        let rows = x.tensor.reshape([-1, d_in]);
        let grad_x = grad.mm(&weight.tensor.tr()).reshape(size);
        let grad_weight = rows.tr().mm(&grad);
        let grad_bias = grad.sum_dim_intlist([0i64].as_slice(), false, grad.kind());
        wrap_three(grad_x, grad_weight, grad_bias)
    }

    /// On CUDA, PyTorch's memory-efficient attention (what `scaled_dot_product_attention`
    /// picks for transformers' training step), dropout inside the kernel; on the CPU, its flash
    /// attention, which has no dropout ([`attention_available`] keeps dropout off the CPU).
    fn attention_forward(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        dropout: f64,
        scale: f64,
    ) -> (FloatTensor<Self>, AttentionSaved<Self>) {
        use burn_tch::TchTensor;
        let (q, k, v) = (&query.tensor, &key.tensor, &value.tensor);
        let (output, logsumexp, bias, generator) = if q.device().is_cuda() {
            let bias = efficient_attention_bias(&bias.tensor, q, k.size()[2]);
            let (output, logsumexp, seed, offset) =
                tch::Tensor::internal_scaled_dot_product_efficient_attention(
                    q,
                    k,
                    v,
                    Some(&bias),
                    true,
                    dropout,
                    false,
                    Some(scale),
                );
            let generator = vec![TchTensor::new(seed), TchTensor::new(offset)];
            (output, logsumexp, bias, generator)
        } else {
            assert!(
                dropout == 0.0,
                "no attention dropout in PyTorch's CPU kernel"
            );
            let bias = bias.tensor.to_kind(q.kind());
            let (output, logsumexp) =
                tch::Tensor::internal_scaled_dot_product_flash_attention_for_cpu(
                    q,
                    k,
                    v,
                    0.0,
                    false,
                    Some(&bias),
                    Some(scale),
                );
            (output, logsumexp, bias, Vec::new())
        };
        let output = TchTensor::new(output);
        let saved = AttentionSaved {
            query,
            key,
            value,
            bias: TchTensor::new(bias),
            output: output.clone(),
            logsumexp: TchTensor::new(logsumexp),
            generator,
            mask_seed: 0,
            dropout,
            scale,
        };
        (output, saved)
    }

    /// ATen's `_scaled_dot_product_efficient_attention_backward_cuda` (the kernel works on
    /// `[batch, seq, heads, head_dim]`), or the CPU flash attention's backward.
    fn attention_backward(
        grad: FloatTensor<Self>,
        saved: AttentionSaved<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (q, k, v) = (&saved.query.tensor, &saved.key.tensor, &saved.value.tensor);
        let (grad_q, grad_k, grad_v) = if let [seed, offset] = saved.generator.as_slice() {
            let seq = |t: &tch::Tensor| t.transpose(1, 2);
            let (grad_q, grad_k, grad_v, _) = tch::Tensor::internal_efficient_attention_backward(
                &seq(&grad.tensor).contiguous(),
                &seq(q),
                &seq(k),
                &seq(v),
                Some(&saved.bias.tensor),
                &seq(&saved.output.tensor),
                None::<&tch::Tensor>,
                None::<&tch::Tensor>,
                q.size()[2],
                k.size()[2],
                &saved.logsumexp.tensor,
                saved.dropout,
                &seed.tensor,
                &offset.tensor,
                0, // no causal mask
                false,
                Some(saved.scale),
                None::<i64>,
                None::<i64>,
                false,
            );
            (seq(&grad_q), seq(&grad_k), seq(&grad_v))
        } else {
            tch::Tensor::internal_scaled_dot_product_flash_attention_for_cpu_backward(
                &grad.tensor.contiguous(),
                q,
                k,
                v,
                &saved.output.tensor,
                &saved.logsumexp.tensor,
                0.0,
                false,
                Some(&saved.bias.tensor),
                Some(saved.scale),
            )
        };
        wrap_three(grad_q, grad_k, grad_v)
    }
}
