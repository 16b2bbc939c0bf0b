//! The CPU backend's f32 tensors as its kernels read and write them: contiguous views and their
//! elements, new tensors over vectors filled in parallel, output pointers shared by parallel
//! tasks, and the task sizes and summing order the kernels share.

use std::mem::MaybeUninit;

use burn::tensor::{DType, Shape};
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

/// An output pointer shared by parallel tasks that each write their own elements of it.
#[derive(Clone, Copy)]
pub(super) struct Shared(pub(super) *mut f32);

// SAFETY: the tasks write disjoint elements, and only while the buffer is borrowed by their
// caller.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The element `offset` past the start (a method, so that a closure captures the whole
    /// `Shared`, which is `Sync`, not its raw pointer).
    pub(super) fn offset(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Columns per parallel task when summing a row-major matrix's columns.
pub(super) const COLUMN_BLOCK: usize = 256;

/// Parallel tasks of at least this many rows of `width` (about 16k elements each).
pub(super) fn rows_per_task(width: usize) -> usize {
    ((1 << 14) / width.max(1)).max(1)
}

/// `t` itself when it is contiguous, else a contiguous copy. Unlike flex's `to_contiguous`, a
/// contiguous view that starts inside its buffer is not copied: [`elements`] reads it in place.
pub(super) fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.is_contiguous() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// The elements of the contiguous f32 tensor `t`, in order.
pub(super) fn elements(t: &FlexTensor) -> &[f32] {
    let start = t.layout().start_offset();
    &t.storage::<f32>()[start..start + t.layout().num_elements()]
}

/// A contiguous f32 tensor of `shape` over `values`.
pub(super) fn from_vec(values: Vec<f32>, shape: Shape) -> FlexTensor {
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
pub(super) unsafe fn written(
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
pub(super) fn lane_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
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
