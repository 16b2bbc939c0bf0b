//! The linear layer on the CPU backend: one GEMM over all rows each way, the bias in the
//! forward GEMM's destination.
//!
//! Burn's `linear` on flex runs a GEMM per sequence of the batch against the broadcast weight
//! (the weight packed again for each), adds the bias in a separate serial pass, and under
//! autodiff takes the weight's gradient as one `[in, out]` product per sequence, summed
//! afterwards: 32 matrices of 768×3072 for an FFN layer of roberta-base at batch 32, zero-filled,
//! copied into aligned storage (flex's `FlexTensor::empty` allocates twice) and reduced on one
//! thread. In a profile of a roberta-base training step on two threads that was 8% of the time
//! in copies, fills and the reduction (docs/perf-notes/journal.md). Here, as PyTorch's `addmm` does, the
//! rows of every sequence are one matrix:
//! ```text
//! y  = x·w + b      the destination starts as b in every row, GEMM adds x·w (in bf16, the
//!                   product's tiles add b to their first sums: no pass writes b first)
//! ∂x = g·wᵀ         wᵀ read through strides, not copied
//! ∂w = xᵀ·g         one GEMM whose inner dimension is every row of the batch
//! ∂b = Σ_rows g     columns split over the pool, rows summed in order
//! ```
//! with the `gemm` crate (flex's own) parallel over the rayon pool, or under
//! [`crate::autocast`] the products of [`bf16_gemm`] (bf16 operands, f32 sums); the bias, the
//! output and the gradients stay f32.

use burn::tensor::{DType, Shape};
use burn_flex::FlexTensor;
use multiversion::multiversion;
use rayon::prelude::*;

use super::product::{Operand, Start, f32_product};
use super::tensors::{COLUMN_BLOCK, contiguous, elements, from_vec, written};
use super::{bf16_gemm, packed_weights};

/// Multiply-adds below which a product runs on one thread (flex's own threshold).
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// `y = x·w + b` for `x` `[..., in]`, `w` `[in, out]`, `b` `[out]` (f32; `None` for others),
/// with `bf16` the product from bf16-rounded operands ([`bf16_gemm`]), and with `reuse` too
/// from the weight's packed copy while [`packed_weights`] keeps them.
pub(super) fn forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    bf16: bool,
    reuse: bool,
) -> Option<FlexTensor> {
    if [x, weight, bias].iter().any(|t| t.dtype() != DType::F32) {
        return None;
    }
    let x = contiguous(x);
    let bias = contiguous(bias);
    let (rows, d_in) = rows_and_width(&x);
    let d_out = weight.layout().shape()[1];
    let bias = elements(&bias);
    // The GEMM reads by these sizes: a mismatch would read past the tensors.
    assert!(
        weight.layout().shape()[0] == d_in && bias.len() == d_out,
        "linear: input width {d_in}, weight {:?}, bias {}",
        weight.layout().shape(),
        bias.len()
    );

    let (x_rows, w) = (row_major(&x, d_in), matrix(weight));
    let dims = (rows, d_out, d_in);
    let y = if bf16 {
        // SAFETY: `w` reads the `[in, out]` weight by its strides.
        let packed = reuse
            .then(|| unsafe { packed_weights::packed(weight, w, (d_in, d_out)) })
            .flatten();
        let rhs = match &packed {
            Some(packed) => bf16_gemm::Rhs::Packed(packed),
            None => bf16_gemm::Rhs::Unpacked(w),
        };
        // The bias is where the product's tiles start, as they store their first sums: no
        // separate pass writes it first.
        // SAFETY: the product writes every element of the rows × out destination (it reads
        // none); `x` is `[rows, in]` contiguous, `w` `[in, out]` read by its strides (the sizes
        // checked above).
        unsafe {
            filled_by_product(rows * d_out, |dst| {
                bf16_gemm::product(dst, dims, Start::Bias(bias), x_rows, rhs)
            })
        }
    } else {
        // Every row starts as the bias; the GEMM adds the product to it.
        // SAFETY: every row is written in full (`bias` has `d_out` elements, checked above).
        let mut y = unsafe {
            written(rows * d_out, d_out, |_, row| {
                for (slot, &b) in row.iter_mut().zip(bias) {
                    slot.write(b);
                }
            })
        };
        // SAFETY: as above, `y` has rows × out elements.
        unsafe { product(y.as_mut_ptr(), dims, true, x_rows, w, false) };
        y
    };
    let mut shape = x.layout().shape().clone();
    let last = shape.num_dims() - 1;
    shape[last] = d_out;
    Some(from_vec(y, shape))
}

/// `(∂x, ∂w, ∂b)` of [`forward`] for the output's gradient `grad` (f32; `None` for others),
/// with `bf16` the products from bf16-rounded operands as in the forward pass.
pub(super) fn backward(
    grad: &FlexTensor,
    x: &FlexTensor,
    weight: &FlexTensor,
    bf16: bool,
) -> Option<(FlexTensor, FlexTensor, FlexTensor)> {
    if [grad, x, weight].iter().any(|t| t.dtype() != DType::F32) {
        return None;
    }
    let grad = contiguous(grad);
    let x = contiguous(x);
    let (rows, d_in) = rows_and_width(&x);
    let d_out = weight.layout().shape()[1];
    assert!(
        weight.layout().shape()[0] == d_in && elements(&grad).len() == rows * d_out,
        "linear backward: input {:?}, weight {:?}, output gradient {:?}",
        x.layout().shape(),
        weight.layout().shape(),
        grad.layout().shape()
    );
    let g = row_major(&grad, d_out);
    let w = matrix(weight);

    // ∂x = g·wᵀ: wᵀ is w with its strides swapped.
    let w_transposed = w.transposed();
    // SAFETY: the GEMM writes all rows × in elements (it reads none: `read_dst` is false);
    // the operands are `[rows, out]` contiguous and `w` read within its own extent.
    let grad_x = unsafe {
        filled_by_product(rows * d_in, |dst| {
            product(dst, (rows, d_in, d_out), false, g, w_transposed, bf16)
        })
    };
    // ∂w = xᵀ·g: xᵀ is the contiguous `[rows, in]` read by columns.
    let x_transposed = row_major(&x, d_in).transposed();
    // SAFETY: as above, with in × out elements.
    let grad_weight = unsafe {
        filled_by_product(d_in * d_out, |dst| {
            product(dst, (d_in, d_out, rows), false, x_transposed, g, bf16)
        })
    };
    let grad_bias = column_sums(elements(&grad), d_out);

    Some((
        from_vec(grad_x, x.layout().shape().clone()),
        from_vec(grad_weight, Shape::new([d_in, d_out])),
        from_vec(grad_bias, Shape::new([d_out])),
    ))
}

/// Sums of the columns of the row-major `[rows, width]` matrix `values`: columns split over
/// the pool, each summed over the rows in order, so the result does not depend on the number
/// of threads.
fn column_sums(values: &[f32], width: usize) -> Vec<f32> {
    let mut sums = vec![0.0f32; width];
    sums.par_chunks_mut(COLUMN_BLOCK)
        .enumerate()
        .for_each(|(block, sums)| {
            let first = block * COLUMN_BLOCK;
            for row in values.chunks_exact(width) {
                add_row(sums, &row[first..]);
            }
        });
    sums
}

/// `sums += row`, element by element (as far as the shorter goes).
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn add_row(sums: &mut [f32], row: &[f32]) {
    for (sum, value) in sums.iter_mut().zip(row) {
        *sum += value;
    }
}

/// A vector of `len` f32 that `fill` writes in full through the pointer it gets.
///
/// # Safety
/// `fill` must write every one of the `len` elements.
unsafe fn filled_by_product(len: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    // No zero fill: the product overwrites every element.
    let mut values = Vec::<f32>::with_capacity(len);
    fill(values.as_mut_ptr());
    // SAFETY: the caller's promise.
    unsafe { values.set_len(len) };
    values
}

/// `dst = (dst if accumulate) + lhs·rhs` for an `[m, k]` by `[k, n]` product into a
/// row-major `[m, n]` destination, on the rayon pool when it is large enough; with `bf16` from
/// bf16-rounded operands ([`bf16_gemm`]).
///
/// # Safety
/// `dst` must hold m × n elements and the operands must be readable over their extents.
unsafe fn product(
    dst: *mut f32,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    bf16: bool,
) {
    if bf16 {
        // SAFETY: the caller's promise.
        return unsafe {
            bf16_gemm::product(
                dst,
                (m, n, k),
                if accumulate { Start::Dst } else { Start::Zero },
                lhs,
                bf16_gemm::Rhs::Unpacked(rhs),
            )
        };
    }
    let parallel = m.saturating_mul(n).saturating_mul(k) >= PARALLEL_WORK;
    // SAFETY: the caller's promise.
    unsafe { f32_product(dst, n, (m, n, k), accumulate, lhs, rhs, 1.0, parallel) }
}

/// The number of rows and the width (last dimension) of `t`.
fn rows_and_width(t: &FlexTensor) -> (usize, usize) {
    let shape = t.layout().shape();
    let width = shape[shape.num_dims() - 1];
    (shape.num_elements() / width.max(1), width)
}

/// The contiguous tensor `t` as a row-major matrix of rows of `width`.
fn row_major(t: &FlexTensor, width: usize) -> Operand {
    Operand::row_major(elements(t), width)
}

/// The rank-2 tensor `t` as a matrix, through its own strides.
fn matrix(t: &FlexTensor) -> Operand {
    let strides = t.layout().strides();
    Operand {
        start: t.storage::<f32>()[t.layout().start_offset()..].as_ptr(),
        row_stride: strides[0],
        column_stride: strides[1],
    }
}
