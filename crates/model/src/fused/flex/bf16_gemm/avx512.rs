//! The AVX512-BF16 kernels (AMD Zen 4 on, Intel Cooper Lake on): the operands' packing sixteen
//! words at a time with AVX512-BW's permutes, and the micro kernel on `vdpbf16ps`.

use super::packing::{MR, NR, Order, Source};
use crate::fused::flex::product::Start;
use std::arch::x86_64::*;

/// One panel of [`super::pack`] (as [`super::packing::pack_panel`]) sixteen words at a time, where
/// the operand is contiguous along the inner dimension (in lane order a plain conversion,
/// in pair order through a transpose) or along the lanes (in pair order); element by
/// element otherwise. Rounds as [`super::packing::bf16_bits`] does except for subnormals, which
/// `vcvtne2ps2bf16` flushes to zero.
///
/// # Safety
/// The CPU must have AVX512-F, -BW and -BF16; otherwise as [`super::packing::pack_panel`].
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn pack_panel<const W: usize>(
    source: Source,
    lane: usize,
    first: usize,
    out: &mut [u32],
    order: Order,
) {
    let pairs = out.len() / W;
    let lanes = source.lanes.saturating_sub(lane).min(W);
    let inner = (source.inner - first).min(2 * pairs);
    debug_assert!(order != Order::Tiles || pairs.is_multiple_of(16));
    if matches!(order, Order::Lanes | Order::Tiles) && source.inner_stride == 1 {
        // Each lane's inner values are contiguous, and so are its words in the panel, 16
        // pairs at a time: 32 values round to 16 words in order, stored as they are.
        // Absent lanes are zeros.
        for l in 0..W {
            if l >= lanes {
                for p in 0..pairs {
                    out[order.index::<W>(l, p, pairs)] = 0;
                }
                continue;
            }
            for p in (0..pairs).step_by(16) {
                let count = (inner - 2 * p).min(32);
                let values = source.at(lane + l, first + 2 * p);
                // SAFETY: the masks keep the loads inside this lane's `inner` values and
                // the store inside its words of pairs `p`.. (contiguous in both orders).
                unsafe {
                    let low = _mm512_maskz_loadu_ps(lane_mask(count), values);
                    let high = _mm512_maskz_loadu_ps(
                        lane_mask(count.saturating_sub(16)),
                        values.wrapping_add(16),
                    );
                    _mm512_mask_storeu_epi32(
                        out.as_mut_ptr().add(order.index::<W>(l, p, pairs)).cast(),
                        lane_mask(pairs - p),
                        std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(high, low)),
                    );
                }
            }
        }
    } else if order == Order::Pairs && source.inner_stride == 1 {
        // Each lane's inner values are contiguous: 32 of them round to 16 words at once
        // (in order: the even index in the low half); sixteen lanes' words, transposed in
        // registers, are sixteen pairs' rows of the panel. Absent lanes are zero rows.
        for half in (0..W).step_by(16) {
            let present = lanes.saturating_sub(half).min(16);
            let store = lane_mask(W - half);
            for p in (0..pairs).step_by(16) {
                let count = (inner - 2 * p).min(32);
                let mut rows = [_mm512_setzero_si512(); 16];
                for (l, row) in rows.iter_mut().enumerate().take(present) {
                    let values = source.at(lane + half + l, first + 2 * p);
                    // SAFETY: the masks keep the loads inside this lane's `inner` values
                    // (masked-off elements do not fault).
                    *row = unsafe {
                        let low = _mm512_maskz_loadu_ps(lane_mask(count), values);
                        let high = _mm512_maskz_loadu_ps(
                            lane_mask(count.saturating_sub(16)),
                            values.wrapping_add(16),
                        );
                        std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(high, low))
                    };
                }
                let columns = transpose(rows);
                for (q, column) in columns.iter().enumerate().take(pairs - p) {
                    // SAFETY: pair `p + q` < `pairs`, and the mask keeps the store inside
                    // its `W` words (`out` holds `pairs` × `W`).
                    unsafe {
                        _mm512_mask_storeu_epi32(
                            out.as_mut_ptr().add((p + q) * W + half).cast(),
                            store,
                            *column,
                        )
                    };
                }
            }
        }
    } else if order == Order::Pairs && source.lane_stride == 1 {
        // Each inner index's lanes are contiguous: two indices round to 32 bf16, which
        // one permute interleaves into 16 words.
        for p in 0..pairs {
            for half in (0..W).step_by(16) {
                // SAFETY: the store writes the panel's `W` words of pair `p` (`out` holds
                // `pairs` × `W`).
                unsafe {
                    _mm512_mask_storeu_epi32(
                        out.as_mut_ptr().add(p * W + half).cast(),
                        lane_mask(W - half),
                        interleaved(
                            source,
                            lane + half,
                            first,
                            p,
                            lanes - half.min(lanes),
                            inner,
                        ),
                    )
                };
            }
        }
    } else if matches!(order, Order::Lanes | Order::Tiles) && source.lane_stride == 1 {
        // Each inner index's lanes are contiguous (a transposed left operand, as the
        // weight gradient's): sixteen pairs' words of sixteen lanes, interleaved as above,
        // transposed in registers, are sixteen lanes' rows of sixteen pairs.
        for half in (0..W).step_by(16) {
            let present = lanes.saturating_sub(half).min(16);
            for p in (0..pairs).step_by(16) {
                let rows: [__m512i; 16] = std::array::from_fn(|q| {
                    // SAFETY: as `interleaved` needs.
                    unsafe { interleaved(source, lane + half, first, p + q, present, inner) }
                });
                let columns = transpose(rows);
                for (l, column) in columns.iter().enumerate().take(present) {
                    // SAFETY: lane `half + l` < `W`, and the mask keeps the store inside
                    // its words of pairs `p`.. (contiguous in both orders).
                    unsafe {
                        _mm512_mask_storeu_epi32(
                            out.as_mut_ptr()
                                .add(order.index::<W>(half + l, p, pairs))
                                .cast(),
                            lane_mask(pairs - p),
                            *column,
                        )
                    };
                }
                for l in present..16.min(W - half) {
                    for q in p..(p + 16).min(pairs) {
                        out[order.index::<W>(half + l, q, pairs)] = 0;
                    }
                }
            }
        }
    } else {
        // SAFETY: the caller's promise.
        unsafe { super::packing::pack_panel::<W>(source, lane, first, out, order) }
    }
}

/// The words of pair `p` of the block from `first` (`inner` values of it left) for the 16
/// lanes from `lane` (`present` of them exist; the others, and pairs past `inner`, are
/// zeros), for an operand whose lanes are contiguous: two indices' values round to 32
/// bf16, which one permute interleaves into 16 words.
///
/// # Safety
/// The CPU must have AVX512-F, -BW and -BF16; the operand's elements must be readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn interleaved(
    source: Source,
    lane: usize,
    first: usize,
    p: usize,
    present: usize,
    inner: usize,
) -> __m512i {
    if 2 * p >= inner {
        return _mm512_setzero_si512();
    }
    let order: [u16; 32] =
        std::array::from_fn(|i| if i % 2 == 0 { i / 2 } else { 16 + i / 2 } as u16);
    let mask = lane_mask(present);
    let index = first + 2 * p;
    // SAFETY: 64 bytes read from a 64-byte array; the mask keeps the loads inside the
    // operand's lanes, and the second index is read only when it exists.
    unsafe {
        let order = _mm512_loadu_si512(order.as_ptr().cast());
        let low = _mm512_maskz_loadu_ps(mask, source.at(lane, index));
        let high = if 2 * p + 1 < inner {
            _mm512_maskz_loadu_ps(mask, source.at(lane, index + 1))
        } else {
            _mm512_setzero_ps()
        };
        _mm512_permutexvar_epi16(
            order,
            std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(high, low)),
        )
    }
}

/// The AVX512-BF16 micro kernel: [`MR`] × 2 vectors of accumulators, per pair one
/// broadcast word of each row against the panel's two vectors; `a` in
/// [`super::Order::Lanes`] if `LANES`, else in [`super::Order::Pairs`].
///
/// # Safety
/// The CPU must have AVX512-F and AVX512-BF16; `a`, `b` and `out` as [`super::micro`]'s.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn micro<const LANES: bool>(
    pairs: usize,
    a: &[u32],
    b: &[u32],
    out: *mut f32,
    stride: usize,
    height: usize,
    width: usize,
    start: Start,
) {
    debug_assert!(a.len() >= pairs * MR && b.len() >= pairs * NR);
    debug_assert!(!matches!(start, Start::Bias(bias) if bias.len() < width));
    let mut sums = [[_mm512_setzero_ps(); 2]; MR];
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for p in 0..pairs {
        // SAFETY: `p` < `pairs`, so both panels hold these words.
        unsafe {
            let right: [__m512bh; 2] = [
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add(p * NR).cast())),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    b.add(p * NR + 16).cast(),
                )),
            ];
            for (i, row) in sums.iter_mut().enumerate() {
                let left: __m512bh =
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*a.add(if LANES {
                        i * pairs + p
                    } else {
                        p * MR + i
                    })
                        as i32));
                row[0] = _mm512_dpbf16_ps(row[0], left, right[0]);
                row[1] = _mm512_dpbf16_ps(row[1], left, right[1]);
            }
        }
    }
    let masks = [lane_mask(width), lane_mask(width.saturating_sub(16))];
    // SAFETY: the masks keep the loads inside the bias's first `width` values, the
    // caller's promise.
    let bias = match start {
        Start::Bias(bias) => Some([0, 1].map(|half| unsafe {
            _mm512_maskz_loadu_ps(masks[half], bias.as_ptr().wrapping_add(16 * half))
        })),
        _ => None,
    };
    for (i, row) in sums.iter().enumerate().take(height) {
        for (half, &sum) in row.iter().enumerate() {
            // SAFETY: the masks keep the lanes inside the tile's `width` columns of row
            // `i` < `height`, the caller's promise.
            unsafe {
                let slot = out.add(i * stride + half * 16);
                let value = match (start, bias) {
                    (Start::Dst, _) => _mm512_add_ps(_mm512_maskz_loadu_ps(masks[half], slot), sum),
                    (_, Some(bias)) => _mm512_add_ps(bias[half], sum),
                    _ => sum,
                };
                _mm512_mask_storeu_ps(slot, masks[half], value);
            }
        }
    }
}

/// The 16 × 16 matrix of words whose rows are `rows`, transposed: unpacking pairs of
/// words, then pairs of pairs, within each 128-bit lane, then gathering the lanes.
#[target_feature(enable = "avx512f")]
fn transpose(rows: [__m512i; 16]) -> [__m512i; 16] {
    let mut pairs = [_mm512_setzero_si512(); 16];
    for k in 0..8 {
        pairs[2 * k] = _mm512_unpacklo_epi32(rows[2 * k], rows[2 * k + 1]);
        pairs[2 * k + 1] = _mm512_unpackhi_epi32(rows[2 * k], rows[2 * k + 1]);
    }
    // quads[4k + m], 128-bit lane L: rows 4k..4k+4 of column 4L + m.
    let mut quads = [_mm512_setzero_si512(); 16];
    for k in 0..4 {
        let [a, b, c, d] = [0, 1, 2, 3].map(|i| pairs[4 * k + i]);
        quads[4 * k] = _mm512_unpacklo_epi64(a, c);
        quads[4 * k + 1] = _mm512_unpackhi_epi64(a, c);
        quads[4 * k + 2] = _mm512_unpacklo_epi64(b, d);
        quads[4 * k + 3] = _mm512_unpackhi_epi64(b, d);
    }
    let mut columns = [_mm512_setzero_si512(); 16];
    for m in 0..4 {
        let [a, b, c, d] = [0, 4, 8, 12].map(|i| quads[i + m]);
        // Lanes 0 and 1 of each, then lanes 2 and 3.
        let (low_ab, low_cd) = (
            _mm512_shuffle_i32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_i32x4::<0b01_00_01_00>(c, d),
        );
        let (high_ab, high_cd) = (
            _mm512_shuffle_i32x4::<0b11_10_11_10>(a, b),
            _mm512_shuffle_i32x4::<0b11_10_11_10>(c, d),
        );
        columns[m] = _mm512_shuffle_i32x4::<0b10_00_10_00>(low_ab, low_cd);
        columns[4 + m] = _mm512_shuffle_i32x4::<0b11_01_11_01>(low_ab, low_cd);
        columns[8 + m] = _mm512_shuffle_i32x4::<0b10_00_10_00>(high_ab, high_cd);
        columns[12 + m] = _mm512_shuffle_i32x4::<0b11_01_11_01>(high_ab, high_cd);
    }
    columns
}

/// The first `lanes` (at most 16) of a vector.
fn lane_mask(lanes: usize) -> __mmask16 {
    if lanes >= 16 {
        0xffff
    } else {
        ((1u32 << lanes) - 1) as __mmask16
    }
}
