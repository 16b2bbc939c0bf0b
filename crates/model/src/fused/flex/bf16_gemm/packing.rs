//! How the bf16 products lay their operands out: bf16 rounding and pairs of the inner dimension
//! in one word, the panels' widths and orders, an operand read lane by lane, and the portable
//! packing of a panel (the reference the AVX-512 packing is tested against, and its fallback).
//! A leaf: the kernels ([`super::avx512`], [`super::amx`], the portable one) and the product
//! read it.

use crate::fused::flex::product::Operand;

/// Rows of a micro tile: 12 × 2 accumulators, two panel vectors and a broadcast fill 27 of the
/// 32 AVX-512 registers.
pub(super) const MR: usize = 12;
/// Columns of a micro tile: two vectors of 16 f32 lanes.
pub(super) const NR: usize = 32;

/// `x` rounded to bf16, to nearest with ties to even (as PyTorch and `vcvtne2ps2bf16` round);
/// NaN stays a (quiet) NaN.
#[inline(always)]
pub(super) fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// Two bf16 in one word: `low` (the even index of the inner dimension) in the low half.
#[inline(always)]
pub(super) fn pair(low: f32, high: f32) -> u32 {
    bf16_bits(low) as u32 | (bf16_bits(high) as u32) << 16
}

/// How a panel of `W` lanes orders its pairs' words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Order {
    /// Pair by pair, each pair's `W` words together: the order in which the micro kernel reads
    /// them, one pair per step.
    Pairs,
    /// Lane by lane, each lane's pairs together: for a left operand contiguous along the inner
    /// dimension (the activations) packing is then a plain conversion, no transpose, and the
    /// micro kernel reads its [`MR`] rows as as many streams.
    Lanes,
    /// Sixteen pairs at a time, and within them lane by lane: AMX's left tiles, each 16 lanes
    /// × 16 words, contiguous in the order the micro kernel loads them (one stream that the
    /// hardware prefetches, where [`Order::Lanes`]' tile rows are 16 strided streams; roberta-base
    /// bf16 inference: docs/perf-notes/journal.md, "AMX tiles"). Panels of whole tile rows only.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Tiles,
}

impl Order {
    /// The order the left operand `lhs` is packed in.
    pub(super) fn for_rows(lhs: Operand) -> Self {
        if lhs.column_stride == 1 {
            Order::Lanes
        } else {
            Order::Pairs
        }
    }

    /// The position of lane `lane`'s pair `pair` in a panel of `W` lanes and `pairs` pairs.
    #[inline(always)]
    pub(super) fn index<const W: usize>(self, lane: usize, pair: usize, pairs: usize) -> usize {
        match self {
            Order::Pairs => pair * W + lane,
            Order::Lanes => lane * pairs + pair,
            Order::Tiles => pair / 16 * (W * 16) + lane * 16 + pair % 16,
        }
    }
}

/// An operand read lane by lane: element `(lane, index)` of the inner dimension at
/// `start + lane·lane_stride + index·inner_stride`.
#[derive(Clone, Copy)]
pub(super) struct Source {
    pub(super) start: *const f32,
    pub(super) lane_stride: isize,
    pub(super) inner_stride: isize,
    pub(super) lanes: usize,
    pub(super) inner: usize,
}

// SAFETY: as for `Operand`: read only, while the caller of `product` borrows the tensor.
unsafe impl Send for Source {}
unsafe impl Sync for Source {}

impl Source {
    /// The left operand `[m, k]`: its lanes are rows.
    pub(super) fn rows(lhs: Operand, m: usize, k: usize) -> Self {
        Source {
            start: lhs.start,
            lane_stride: lhs.row_stride,
            inner_stride: lhs.column_stride,
            lanes: m,
            inner: k,
        }
    }

    /// The right operand `[k, n]`: its lanes are columns.
    pub(super) fn columns(rhs: Operand, k: usize, n: usize) -> Self {
        Source {
            start: rhs.start,
            lane_stride: rhs.column_stride,
            inner_stride: rhs.row_stride,
            lanes: n,
            inner: k,
        }
    }

    /// Element `(lane, index)`, or 0 outside the operand (the packing's padding).
    ///
    /// # Safety
    /// Inside the bounds, the element must be readable.
    #[inline(always)]
    pub(super) unsafe fn get(&self, lane: usize, index: usize) -> f32 {
        if lane < self.lanes && index < self.inner {
            // SAFETY: the caller's promise.
            unsafe { *self.at(lane, index) }
        } else {
            0.0
        }
    }

    /// The address of element `(lane, index)` (not checked).
    #[inline(always)]
    pub(super) fn at(&self, lane: usize, index: usize) -> *const f32 {
        self.start
            .wrapping_offset(lane as isize * self.lane_stride + index as isize * self.inner_stride)
    }
}

/// One panel of [`super::pack`], element by element: the `W` lanes from `lane`, the pairs of the
/// block from `first`, into `out` (pairs × `W` words in `order`; pairs past the operand's
/// inner dimension are zeros).
///
/// # Safety
/// As [`super::pack`]'s.
pub(super) unsafe fn pack_panel<const W: usize>(
    source: Source,
    lane: usize,
    first: usize,
    out: &mut [u32],
    order: Order,
) {
    let pairs = out.len() / W;
    for p in 0..pairs {
        let index = first + 2 * p;
        for l in 0..W {
            // SAFETY: `get` reads inside the operand only, the caller's promise.
            out[order.index::<W>(l, p, pairs)] =
                unsafe { pair(source.get(lane + l, index), source.get(lane + l, index + 1)) };
        }
    }
}
