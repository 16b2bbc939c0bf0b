//! Scaled dot-product attention on the CPU backend as one operation each way.
//!
//! The model's projections leave the heads interleaved, `[batch, seq, heads, dim]` in memory
//! behind a `[batch, heads, seq, dim]` view. Flex's own attention copies queries, keys and values
//! into head order first and its output is copied back (four transposes per layer, about 9% of
//! a roberta-base inference step in bf16: docs/perf-notes/journal.md); under autodiff the model composed attention from
//! flex's matmuls, softmax and dropout, each materialising `[batch, heads, seq, seq]` scores or
//! probabilities and differentiated one by one. Here each (sequence, head) pair is one task on
//! the rayon pool: its products (flex's `gemm`, through strides) read its rows where the
//! projections left them and write its output rows in the interleaved order that the next
//! linear layer reads, its scores and probabilities stay in the task's scratch, and the
//! backward pass recomputes the probabilities from each row's saved log-sum-exp, as flash
//! attention does, instead of keeping them:
//! ```text
//! forward:   s = q·kᵀ·scale + bias,  ℓ = log Σⱼ exp s,  p = exp(s − ℓ),  o = (p·m)·v
//! backward:  ∂v = (p·m)ᵀ·∂o,  ∂p = (∂o·vᵀ)·m,  ∂s = p·(∂p − Σⱼ p·∂p),
//!            ∂q = ∂s·k·scale,  ∂k = ∂sᵀ·q·scale
//! ```
//! with `m` the dropout mask scaled by 1/(1 − p), drawn as [`mod@super::dropout`] draws its masks,
//! element by element of the `[batch, heads, seq, seq]` probabilities: the composed attention
//! with that dropout gives the same mask for the same seed. Each task's results depend on its
//! own rows only, so they do not depend on the number of threads.

use burn::tensor::{DType, Shape};
use burn_flex::{FlexTensor, Layout};
use multiversion::multiversion;
use rayon::prelude::*;

use super::dropout::DropoutMask;
use super::fast_gelu::exp_nonpositive;
use super::product::{Operand, f32_product};
use super::tensors::{Shared, contiguous, elements};

/// A `[batch, heads, seq, dim]` f32 tensor read where it lies: row `(b, h, i)` starts at
/// `offset + b·strides[0] + h·strides[1] + i·strides[2]`, its `dim` values contiguous.
#[derive(Clone, Copy)]
struct Rows<'a> {
    data: &'a [f32],
    offset: usize,
    strides: [usize; 3],
    dims: [usize; 4],
}

impl<'a> Rows<'a> {
    /// The rows of `t`, which [`readable`] prepared.
    fn new(t: &'a FlexTensor) -> Self {
        let layout = t.layout();
        let strides = layout.strides();
        let dims = layout.shape();
        Rows {
            data: t.storage::<f32>(),
            offset: layout.start_offset(),
            strides: [0, 1, 2].map(|d| strides[d] as usize),
            dims: [dims[0], dims[1], dims[2], dims[3]],
        }
    }

    /// Head `h` of sequence `b` as a `[seq, dim]` matrix.
    fn matrix(&self, b: usize, h: usize) -> Operand {
        let start = self.offset + b * self.strides[0] + h * self.strides[1];
        Operand {
            // `wrapping_add`: only an address until a product reads the rows it points to.
            start: self.data.as_ptr().wrapping_add(start),
            row_stride: self.strides[2] as isize,
            column_stride: 1,
        }
    }
}

/// `t` itself when [`Rows`] can read it in place (non-negative strides, each row contiguous:
/// the model's heads, a transposed view of its projections), else a contiguous copy.
fn readable(t: &FlexTensor) -> FlexTensor {
    let layout = t.layout();
    let in_place = layout.strides().iter().all(|&s| s >= 0)
        && (layout.strides()[3] == 1 || layout.shape()[3] == 1);
    if in_place {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// The additive bias broadcast to `[batch, heads, seq_q, seq_k]`: element `(b, h, i, j)` at
/// `offset + Σ index·stride`, with stride 0 along its dimensions of size 1.
#[derive(Clone, Copy)]
struct Bias<'a> {
    data: &'a [f32],
    offset: usize,
    strides: [usize; 4],
}

impl<'a> Bias<'a> {
    /// The bias `t` (with non-negative strides), which must be broadcastable to `target`.
    fn new(t: &'a FlexTensor, target: [usize; 4]) -> Self {
        let layout = t.layout();
        let dims = layout.shape();
        assert!(
            dims.num_dims() == 4 && (0..4).all(|d| dims[d] == target[d] || dims[d] == 1),
            "attention bias of shape {dims:?} does not broadcast to {target:?}"
        );
        Bias {
            data: t.storage::<f32>(),
            offset: layout.start_offset(),
            strides: std::array::from_fn(|d| {
                if dims[d] == 1 {
                    0
                } else {
                    layout.strides()[d] as usize
                }
            }),
        }
    }

    /// Row `i` of head `h` of sequence `b` added to `scores`.
    fn add_row(&self, b: usize, h: usize, i: usize, scores: &mut [f32]) {
        let [sb, sh, si, sj] = self.strides;
        let start = self.offset + b * sb + h * sh + i * si;
        if sj == 1 {
            // Contiguous keys (the model's padding bias): a slice, added in vectors.
            let bias = &self.data[start..][..scores.len()];
            for (score, &bias) in scores.iter_mut().zip(bias) {
                *score += bias;
            }
        } else {
            for (j, score) in scores.iter_mut().enumerate() {
                *score += self.data[start + j * sj];
            }
        }
    }
}

/// Checks the heads' shapes against each other and returns the problem's f32 tensors as
/// [`Rows`] can read them.
fn prepare(
    query: &FlexTensor,
    key: &FlexTensor,
    value: &FlexTensor,
    bias: &FlexTensor,
) -> [FlexTensor; 4] {
    for t in [query, key, value, bias] {
        assert!(
            t.dtype() == DType::F32 && t.layout().num_dims() == 4,
            "the CPU backend's fused attention takes rank-4 f32 tensors (see attention_available)"
        );
    }
    let [q, k, v] = [query, key, value].map(|t| t.layout().shape().clone());
    assert!(
        q[0] == k[0]
            && q[1] == k[1]
            && q[3] == k[3]
            && k[0] == v[0]
            && k[1] == v[1]
            && k[2] == v[2],
        "attention heads of shapes {q:?}, {k:?}, {v:?} do not match"
    );
    let bias = if bias.layout().strides().iter().all(|&s| s >= 0) {
        bias.clone()
    } else {
        bias.to_contiguous()
    };
    [readable(query), readable(key), readable(value), bias]
}

/// A `[batch, heads, seq, dim]` tensor over `values` stored as `[batch, seq, heads, dim]`: the
/// order of the model's projections, which its merge of the heads then reads without a copy.
fn interleaved(values: Vec<f32>, [batch, heads, seq, dim]: [usize; 4]) -> FlexTensor {
    let strides = [seq * heads * dim, dim, heads * dim, 1].map(|s| s as isize);
    FlexTensor::new(
        burn::tensor::Bytes::from_elems(values),
        Layout::new(Shape::new([batch, heads, seq, dim]), strides.to_vec(), 0),
        DType::F32,
    )
}

/// One attention problem: the heads, the bias, the scale and the dropout mask.
#[derive(Clone, Copy)]
struct Problem<'a> {
    query: Rows<'a>,
    key: Rows<'a>,
    value: Rows<'a>,
    bias: Bias<'a>,
    scale: f32,
    mask: Option<DropoutMask>,
}

impl<'a> Problem<'a> {
    /// The problem of `[batch, heads, seq, dim]` heads prepared by [`prepare`].
    fn new(
        [query, key, value, bias]: &'a [FlexTensor; 4],
        scale: f64,
        mask: Option<DropoutMask>,
    ) -> Self {
        let (query, key, value) = (Rows::new(query), Rows::new(key), Rows::new(value));
        let [batch, heads, seq_q, _] = query.dims;
        Problem {
            query,
            key,
            value,
            bias: Bias::new(bias, [batch, heads, seq_q, key.dims[2]]),
            scale: scale as f32,
            mask,
        }
    }

    /// `(batch, heads, seq_q, seq_k)`.
    fn dims(&self) -> (usize, usize, usize, usize) {
        let [batch, heads, seq_q, _] = self.query.dims;
        (batch, heads, seq_q, self.key.dims[2])
    }

    /// Into `scores` (`[seq_q, seq_k]`, row-major), head `h` of sequence `b`'s
    /// `q·kᵀ·scale + bias`.
    fn scores(&self, b: usize, h: usize, scores: &mut [f32]) {
        let (_, _, seq_q, seq_k) = self.dims();
        // SAFETY: `scores` holds seq_q × seq_k floats; the heads' rows lie in their tensors.
        unsafe {
            f32_product(
                scores.as_mut_ptr(),
                seq_k,
                (seq_q, seq_k, self.query.dims[3]),
                false,
                self.query.matrix(b, h),
                self.key.matrix(b, h).transposed(),
                self.scale,
                false,
            )
        };
        for (i, row) in scores.chunks_exact_mut(seq_k.max(1)).enumerate() {
            self.bias.add_row(b, h, i, row);
        }
    }

    /// Multiplies each of `values`, head `h` of sequence `b`'s probabilities or their
    /// gradients (`[seq_q, seq_k]`), by the dropout factors (1/(1 − p) where kept, 0 where
    /// dropped), numbered as the composed attention's dropout numbers the contiguous
    /// `[batch, heads, seq_q, seq_k]` probabilities.
    fn drop<const N: usize>(&self, b: usize, h: usize, mut values: [&mut [f32]; N]) {
        let Some(mask) = self.mask else { return };
        let (_, heads, seq_q, seq_k) = self.dims();
        let first = (b * heads + h) * seq_q * seq_k;
        for values in values.iter_mut() {
            mask.apply(first as u64, &mut values[..seq_q * seq_k]);
        }
    }
}

/// A buffer of `[batch, heads, seq, dim]` rows stored [`interleaved`], filled by the tasks,
/// each of which writes the rows of its own (sequence, head) only.
struct Interleaved {
    values: Vec<f32>,
    /// The buffer's start, for the tasks' writes.
    start: Shared,
    dims: [usize; 4],
}

impl Interleaved {
    fn new(dims: [usize; 4]) -> Self {
        let mut values = Vec::with_capacity(dims.iter().product());
        Interleaved {
            start: Shared(values.as_mut_ptr()),
            values,
            dims,
        }
    }

    /// Where rows of head `h` of sequence `b` go: their first element and the stride between
    /// them.
    fn head(&self, b: usize, h: usize) -> (Shared, usize) {
        let [_, heads, seq, dim] = self.dims;
        // `wrapping_add`: only an address until a task writes its rows, inside the capacity.
        let start = self.start.0.wrapping_add((b * seq * heads + h) * dim);
        (Shared(start), heads * dim)
    }

    /// The tensor, once every task has written its rows.
    ///
    /// # Safety
    /// Every row must have been written.
    unsafe fn finish(mut self) -> FlexTensor {
        // SAFETY: the caller's promise.
        unsafe { self.values.set_len(self.values.capacity()) };
        interleaved(self.values, self.dims)
    }
}

impl Shared {
    /// Element `index` set to `value`.
    ///
    /// # Safety
    /// The buffer must hold the element, and no other task may write it.
    unsafe fn set(self, index: usize, value: f32) {
        // SAFETY: the caller's promise.
        unsafe { *self.0.add(index) = value };
    }
}

/// Runs `task(b, h, scratch)` for every (sequence, head) pair on the rayon pool, each with a
/// scratch buffer of `scratch` floats.
fn each_head(
    batch: usize,
    heads: usize,
    scratch: usize,
    task: impl Fn(usize, usize, &mut [f32]) + Sync + Send,
) {
    (0..batch * heads).into_par_iter().for_each_init(
        || vec![0.0f32; scratch],
        |buffer, t| task(t / heads, t % heads, buffer),
    );
}

/// `(output, logsumexp)`: `softmax(q·kᵀ·scale + bias)` with dropout `mask` on the
/// probabilities, times `v`, for `[batch, heads, seq, dim]` f32 heads and a bias broadcastable
/// to the scores; the output [`interleaved`], and each query row's log-sum-exp of its scores
/// (`[batch, heads, seq_q]`) when `keep_logsumexp` (what [`backward`] needs).
pub(super) fn forward(
    query: &FlexTensor,
    key: &FlexTensor,
    value: &FlexTensor,
    bias: &FlexTensor,
    mask: Option<DropoutMask>,
    scale: f64,
    keep_logsumexp: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let tensors = prepare(query, key, value, bias);
    let problem = Problem::new(&tensors, scale, mask);
    let (batch, heads, seq_q, seq_k) = problem.dims();
    let dim = problem.value.dims[3];
    let output = Interleaved::new([batch, heads, seq_q, dim]);
    let rows = if keep_logsumexp {
        batch * heads * seq_q
    } else {
        0
    };
    let mut logsumexp = vec![0.0f32; rows];
    let lse = Shared(logsumexp.as_mut_ptr());
    each_head(batch, heads, seq_q * seq_k, |b, h, probs| {
        problem.scores(b, h, probs);
        for (i, row) in probs.chunks_exact_mut(seq_k.max(1)).enumerate() {
            let total = softmax_row(row);
            if keep_logsumexp {
                // SAFETY: task (b, h) alone writes its rows' entries.
                unsafe { lse.set((b * heads + h) * seq_q + i, total) };
            }
        }
        problem.drop(b, h, [probs]);
        let (out, stride) = output.head(b, h);
        // SAFETY: the task's output rows lie inside the buffer's capacity, written by it alone.
        unsafe {
            f32_product(
                out.0,
                stride,
                (seq_q, dim, seq_k),
                false,
                Operand::row_major(probs, seq_k),
                problem.value.matrix(b, h),
                1.0,
                false,
            )
        };
    });
    let logsumexp = keep_logsumexp.then(|| {
        FlexTensor::new(
            burn::tensor::Bytes::from_elems(logsumexp),
            Layout::contiguous(Shape::new([batch, heads, seq_q])),
            DType::F32,
        )
    });
    // SAFETY: every task wrote all its rows.
    (unsafe { output.finish() }, logsumexp)
}

/// A row of scores replaced by their softmax; returns the row's log-sum-exp.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn softmax_row(row: &mut [f32]) -> f32 {
    let max = lanes(row, f32::NEG_INFINITY, f32::max);
    for score in row.iter_mut() {
        *score = exp(*score - max);
    }
    let total = lanes(row, 0.0, |sum, p| sum + p);
    let inverse = 1.0 / total;
    for p in row.iter_mut() {
        *p *= inverse;
    }
    max + total.ln()
}

/// `values` folded by `op` from `init` in sixteen interleaved lanes, then the lanes and the
/// tail in order: a fold one value after the other is a chain of dependent operations that
/// the compiler must keep scalar (floating-point addition and `max` do not reassociate).
#[inline(always)]
fn lanes(values: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let (chunks, tail) = values.as_chunks::<16>();
    let mut lanes = [init; 16];
    for chunk in chunks {
        for (lane, &value) in lanes.iter_mut().zip(chunk) {
            *lane = op(*lane, value);
        }
    }
    lanes.into_iter().chain(tail.iter().copied()).fold(init, op)
}

/// `Σ a·b` in sixteen interleaved lanes, as [`lanes`] folds.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let ((a_chunks, a_tail), (b_chunks, b_tail)) = (a.as_chunks::<16>(), b.as_chunks::<16>());
    let mut lanes = [0.0f32; 16];
    for (a, b) in a_chunks.iter().zip(b_chunks) {
        for ((lane, &a), &b) in lanes.iter_mut().zip(a).zip(b) {
            *lane += a * b;
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(a, b)| a * b).sum();
    lanes.iter().sum::<f32>() + tail
}

/// `e^x` for the softmax's `x ≤ 0`, vectorisable, and exactly 0 below f32's range (masked
/// keys).
#[inline(always)]
fn exp(x: f32) -> f32 {
    if x < -87.0 { 0.0 } else { exp_nonpositive(x) }
}

/// `(∂q, ∂k, ∂v)` of [`forward`] with the same heads, bias, mask and scale, from the output's
/// gradient `grad` (`[batch, heads, seq_q, dim]`) and the forward pass's `logsumexp`; each
/// [`interleaved`].
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    grad: &FlexTensor,
    query: &FlexTensor,
    key: &FlexTensor,
    value: &FlexTensor,
    bias: &FlexTensor,
    logsumexp: &FlexTensor,
    mask: Option<DropoutMask>,
    scale: f64,
) -> [FlexTensor; 3] {
    let tensors = prepare(query, key, value, bias);
    let problem = Problem::new(&tensors, scale, mask);
    let (batch, heads, seq_q, seq_k) = problem.dims();
    let (dim, value_dim) = (problem.query.dims[3], problem.value.dims[3]);
    let grad = readable(grad);
    let grad = Rows::new(&grad);
    assert_eq!(
        grad.dims,
        [batch, heads, seq_q, value_dim],
        "attention gradient's shape"
    );
    let logsumexp = contiguous(logsumexp);
    let logsumexp = elements(&logsumexp);
    let [dq, dk, dv] = [
        [batch, heads, seq_q, dim],
        [batch, heads, seq_k, dim],
        [batch, heads, seq_k, value_dim],
    ]
    .map(Interleaved::new);
    let area = seq_q * seq_k;
    each_head(batch, heads, 3 * area, |b, h, scratch| {
        let (probs, rest) = scratch.split_at_mut(area);
        let (kept, dscores) = rest.split_at_mut(area);
        problem.scores(b, h, probs);
        let lse = &logsumexp[(b * heads + h) * seq_q..][..seq_q];
        for (row, &lse) in probs.chunks_exact_mut(seq_k.max(1)).zip(lse) {
            probabilities_row(row, lse);
        }
        let dout = grad.matrix(b, h);
        // ∂(p·m) = ∂o·vᵀ, then ∂p = ∂(p·m)·m; p·m kept for ∂v.
        // SAFETY: the scratch holds seq_q × seq_k floats; the rows lie in their tensors.
        unsafe {
            f32_product(
                dscores.as_mut_ptr(),
                seq_k,
                (seq_q, seq_k, value_dim),
                false,
                dout,
                problem.value.matrix(b, h).transposed(),
                1.0,
                false,
            )
        };
        kept.copy_from_slice(probs);
        problem.drop(b, h, [kept, dscores]);
        for (p, ds) in probs
            .chunks_exact(seq_k.max(1))
            .zip(dscores.chunks_exact_mut(seq_k.max(1)))
        {
            score_gradient_row(p, ds);
        }
        let products = [
            // ∂v = (p·m)ᵀ·∂o
            (
                &dv,
                (seq_k, value_dim, seq_q),
                Operand::row_major(kept, seq_k).transposed(),
                dout,
                1.0,
            ),
            // ∂q = ∂s·k·scale
            (
                &dq,
                (seq_q, dim, seq_k),
                Operand::row_major(dscores, seq_k),
                problem.key.matrix(b, h),
                problem.scale,
            ),
            // ∂k = ∂sᵀ·q·scale
            (
                &dk,
                (seq_k, dim, seq_q),
                Operand::row_major(dscores, seq_k).transposed(),
                problem.query.matrix(b, h),
                problem.scale,
            ),
        ];
        for (out, shape, lhs, rhs, scale) in products {
            let (out, stride) = out.head(b, h);
            // SAFETY: the task's rows lie inside the buffer's capacity, written by it alone.
            unsafe { f32_product(out.0, stride, shape, false, lhs, rhs, scale, false) };
        }
    });
    // SAFETY: every task wrote all its rows.
    [dq, dk, dv].map(|g| unsafe { g.finish() })
}

/// A row of scores replaced by the probabilities `exp(s − ℓ)` (`ℓ` its log-sum-exp).
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn probabilities_row(row: &mut [f32], logsumexp: f32) {
    for score in row.iter_mut() {
        *score = exp(*score - logsumexp);
    }
}

/// A row of the probabilities' gradients `∂p` replaced by the scores' `p·(∂p − Σ p·∂p)`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn score_gradient_row(probs: &[f32], grads: &mut [f32]) {
    let weighted = dot(probs, grads);
    for (g, &p) in grads.iter_mut().zip(probs) {
        *g = p * (*g - weighted);
    }
}
