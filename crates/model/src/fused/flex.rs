//! The CPU backend (flex): its vectorised, parallel GELU ([`fast_gelu`]), layer norm in one
//! parallel pass each way ([`layer_norm`]), the linear layer as one GEMM over all rows each way
//! ([`linear`]; in mixed precision [`bf16_gemm`], its weights packed once per evaluation by
//! [`packed_weights`]), attention as one operation each way ([`attention`]) and dropout masks
//! drawn in parallel.

mod attention;
pub(super) mod bf16_gemm;
mod fast_gelu;
mod layer_norm;
mod linear;
pub(super) mod packed_weights;

use std::mem::MaybeUninit;

use burn::tensor::{DType, Shape};
use burn_flex::{FlexTensor, Layout};
use multiversion::multiversion;
use rayon::prelude::*;

use burn::backend::tensor::FloatTensor;
use burn::tensor::{Device, Int, Tensor};

use super::{AttentionSaved, FusedKernels, FusedOps};

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
        layer_norm::forward(&x, &gamma, &beta, epsilon)
            .unwrap_or_else(|| super::layer_norm_forward_composed::<Self>(x, gamma, beta, epsilon))
    }

    fn layer_norm_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        layer_norm::backward(&grad, &x, &gamma, &mean, &rstd).unwrap_or_else(|| {
            super::layer_norm_backward_composed::<Self>(grad, x, gamma, mean, rstd)
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
            .unwrap_or_else(|| super::linear_backward_composed::<Self>(grad, x, weight))
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

/// The attention's dropout mask for probability `dropout` (none at 0), its seed drawn from
/// Burn's generator as [`dropout`] draws its own.
fn attention_mask(dropout: f64) -> Option<DropoutMask> {
    (dropout > 0.0).then(|| DropoutMask::draw(&Device::new(burn_flex::FlexDevice), dropout))
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

/// Whether `device` (or the device under its autodiff wrapper) is the CPU backend's.
pub(super) fn is_flex(device: &Device) -> bool {
    matches!(
        device.clone().without_autodiff().as_dispatch(),
        burn_dispatch::DispatchDevice::Flex(_)
    )
}

/// Dropout with a mask drawn in parallel from a counter-based hash ([`DropoutMask`]): flex
/// draws every mask element from one ChaCha stream, serially, which took 12% of a training step
/// on two threads (docs/perf-notes/journal.md).
pub(super) fn dropout<const D: usize>(x: Tensor<D>, prob: f64) -> Tensor<D> {
    let device = x.device();
    let mask = DropoutMask::draw(&device, prob);
    let shape = x.shape();
    let mut factors = Vec::<f32>::with_capacity(shape.num_elements());
    factors
        .spare_capacity_mut()
        .par_chunks_mut(MASK_CHUNK)
        .enumerate()
        .for_each(|(chunk, out)| mask.fill((chunk * MASK_CHUNK) as u64, out));
    // SAFETY: the chunks cover the capacity, and `fill` wrote each of their elements.
    unsafe { factors.set_len(shape.num_elements()) };
    x * Tensor::from_data(burn::tensor::TensorData::new(factors, shape), &device)
}

/// A dropout mask as a counter-based hash of one seed ([`crate::backend::mix_seed`]): element `index`
/// is kept, and scaled by 1/(1 − p), when the top 32 bits of its hash fall below (1 − p)·2³²;
/// so any element is drawn without the others, in parallel and in any order.
#[derive(Clone, Copy, Debug)]
struct DropoutMask {
    seed: u64,
    threshold: u64,
    scale: f32,
}

impl DropoutMask {
    /// The mask of drop probability `prob` from `seed`.
    fn new(seed: u64, prob: f64) -> Self {
        let keep = 1.0 - prob;
        DropoutMask {
            seed,
            threshold: (keep * 4_294_967_296.0) as u64,
            scale: (1.0 / keep) as f32,
        }
    }

    /// A mask whose seed comes from Burn's generator on `device`, so that `Device::seed` makes
    /// a run reproducible.
    fn draw(device: &Device, prob: f64) -> Self {
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
        Self::new(seed, prob)
    }

    /// 1/(1 − p) where element `index` is kept, 0 where it is dropped.
    #[inline(always)]
    fn factor(&self, index: u64) -> f32 {
        if crate::backend::mix_seed(self.seed, index) >> 32 < self.threshold {
            self.scale
        } else {
            0.0
        }
    }

    /// `out[i]` = the factor of element `first + i`.
    fn fill(&self, first: u64, out: &mut [MaybeUninit<f32>]) {
        fill_factors(self, first, out);
    }

    /// `values[i]` multiplied by the factor of element `first + i`.
    fn apply(&self, first: u64, values: &mut [f32]) {
        apply_factors(self, first, values);
    }
}

/// Elements per task when a mask is drawn on the pool.
const MASK_CHUNK: usize = 1 << 14;

/// [`DropoutMask::fill`], compiled for AVX-512 (its 64-bit multiplies, `vpmullq`) and AVX2 too,
/// chosen at run time: the baseline build hashes one element at a time, 3.8% of a small
/// model's training step on one thread (docs/perf-notes/journal.md).
#[multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn fill_factors(mask: &DropoutMask, first: u64, out: &mut [MaybeUninit<f32>]) {
    for (index, slot) in (first..).zip(out.iter_mut()) {
        slot.write(mask.factor(index));
    }
}

/// [`DropoutMask::apply`], compiled as [`fill_factors`] is.
#[multiversion(targets("x86_64+avx512f+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn apply_factors(mask: &DropoutMask, first: u64, values: &mut [f32]) {
    for (index, value) in (first..).zip(values.iter_mut()) {
        *value *= mask.factor(index);
    }
}

/// A matrix operand of the products (the linear layer's, attention's): its first element and
/// the strides between rows and between columns.
#[derive(Clone, Copy)]
struct Operand {
    start: *const f32,
    row_stride: isize,
    column_stride: isize,
}

// SAFETY: an operand is only read, and only while the tensor it points into is borrowed by the
// product's caller.
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}

impl Operand {
    /// The row-major `[rows, width]` matrix that starts `values`.
    fn row_major(values: &[f32], width: usize) -> Operand {
        Operand {
            start: values.as_ptr(),
            row_stride: width as isize,
            column_stride: 1,
        }
    }

    /// The transposed matrix, read through swapped strides.
    fn transposed(self) -> Operand {
        Operand {
            start: self.start,
            row_stride: self.column_stride,
            column_stride: self.row_stride,
        }
    }
}

/// An output pointer shared by parallel tasks that each write their own elements of it.
#[derive(Clone, Copy)]
struct Shared(*mut f32);

// SAFETY: the tasks write disjoint elements, and only while the buffer is borrowed by their
// caller.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The element `offset` past the start (a method, so that a closure captures the whole
    /// `Shared`, which is `Sync`, not its raw pointer).
    fn offset(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `dst = (dst if accumulate) + scale·lhs·rhs` for an `[m, k]` by `[k, n]` product into an
/// `[m, n]` destination whose rows are `dst_row_stride` apart, with the `gemm` crate (flex's
/// own), on the rayon pool if `parallel`.
///
/// # Safety
/// `dst` must be writable over its `[m, n]` extent (and readable when `accumulate`: gemm reads
/// it only then), and the operands readable over theirs.
#[allow(clippy::too_many_arguments)]
unsafe fn f32_product(
    dst: *mut f32,
    dst_row_stride: usize,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    scale: f32,
    parallel: bool,
) {
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.start,
            lhs.column_stride,
            lhs.row_stride,
            rhs.start,
            rhs.column_stride,
            rhs.row_stride,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Columns per parallel task when summing a row-major matrix's columns.
const COLUMN_BLOCK: usize = 256;

/// Parallel tasks of at least this many rows of `width` (about 16k elements each).
fn rows_per_task(width: usize) -> usize {
    ((1 << 14) / width.max(1)).max(1)
}

/// `t` itself when it is contiguous, else a contiguous copy. Unlike flex's `to_contiguous`, a
/// contiguous view that starts inside its buffer is not copied: [`elements`] reads it in place.
fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.is_contiguous() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// The elements of the contiguous f32 tensor `t`, in order.
fn elements(t: &FlexTensor) -> &[f32] {
    let start = t.layout().start_offset();
    &t.storage::<f32>()[start..start + t.layout().num_elements()]
}

/// A contiguous f32 tensor of `shape` over `values`.
fn from_vec(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        burn::tensor::Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// A vector of `len` f32 written by `fill` in parallel, one call per row of `width` elements
/// (with the row's index), rows grouped into tasks of about 16k elements; no zero fill first.
///
/// # Safety
/// `fill` must write every element of the row it is given.
unsafe fn written(
    len: usize,
    width: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut values = Vec::<f32>::with_capacity(len);
    values
        .spare_capacity_mut()
        .par_chunks_mut(width.max(1))
        .enumerate()
        .with_min_len(rows_per_task(width))
        .for_each(|(row, slots)| fill(row, slots));
    // SAFETY: the rows cover the capacity, and the caller's promise.
    unsafe { values.set_len(len) };
    values
}

/// `Σ f(i)` for `i` in `0..n` over eight interleaved accumulators, so that the loop
/// vectorises (one running sum is a chain of dependent additions). Inlined into the kernels,
/// which `multiversion` compiles for AVX-512 and AVX2 + FMA (its AVX-512 version also asks for
/// Ice Lake's extensions; older AVX-512 CPUs run the AVX2 one).
#[inline(always)]
fn lane_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let full = n - n % 8;
    for start in (0..full).step_by(8) {
        for (lane, sum) in lanes.iter_mut().enumerate() {
            *sum += f(start + lane);
        }
    }
    let tail: f32 = (full..n).map(&f).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorised fills give each element the factor of its own index: from an offset,
    /// over a length that is no multiple of a vector's lanes.
    #[test]
    fn mask_fills_give_each_element_its_own_factor() {
        let mask = DropoutMask::new(0x1234_5678_9abc_def0, 0.3);
        let (first, n) = (1_000_003u64, 1001);
        let mut filled = vec![MaybeUninit::uninit(); n];
        mask.fill(first, &mut filled);
        let mut applied: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
        mask.apply(first, &mut applied);
        let mut dropped = 0;
        for i in 0..n {
            let factor = mask.factor(first + i as u64);
            // SAFETY: `fill` wrote every element.
            assert_eq!(unsafe { filled[i].assume_init() }, factor, "element {i}");
            assert_eq!(applied[i], (i as f32 + 0.5) * factor, "element {i}");
            dropped += usize::from(factor == 0.0);
        }
        // Both values occur: the comparison above saw kept and dropped elements alike.
        assert!((200..400).contains(&dropped), "{dropped} of {n} dropped");
    }
}
