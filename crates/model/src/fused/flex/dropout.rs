//! Dropout on the CPU backend: masks as a counter-based hash of one seed, drawn in parallel and
//! in any order (flex draws every mask element from one ChaCha stream, serially), for the
//! dropout operation and inside the fused attention.

use std::mem::MaybeUninit;

use burn::tensor::{Device, Int, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

/// Dropout with a mask drawn in parallel from a counter-based hash ([`DropoutMask`]): flex
/// draws every mask element from one ChaCha stream, serially, which took 12% of a training step
/// on two threads (docs/perf-notes/journal.md).
pub(in crate::fused) fn dropout<const D: usize>(x: Tensor<D>, prob: f64) -> Tensor<D> {
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

/// A dropout mask as a counter-based hash of one seed ([`sentiment_backend::mix_seed`]): element `index`
/// is kept, and scaled by 1/(1 − p), when the top 32 bits of its hash fall below (1 − p)·2³²;
/// so any element is drawn without the others, in parallel and in any order.
#[derive(Clone, Copy, Debug)]
pub(super) struct DropoutMask {
    pub(super) seed: u64,
    threshold: u64,
    scale: f32,
}

impl DropoutMask {
    /// The mask of drop probability `prob` from `seed`.
    pub(super) fn new(seed: u64, prob: f64) -> Self {
        let keep = 1.0 - prob;
        DropoutMask {
            seed,
            threshold: (keep * 4_294_967_296.0) as u64,
            scale: (1.0 / keep) as f32,
        }
    }

    /// A mask whose seed comes from Burn's generator on `device`, so that `Device::seed` makes
    /// a run reproducible.
    pub(super) fn draw(device: &Device, prob: f64) -> Self {
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
    pub(super) fn factor(&self, index: u64) -> f32 {
        if sentiment_backend::mix_seed(self.seed, index) >> 32 < self.threshold {
            self.scale
        } else {
            0.0
        }
    }

    /// `out[i]` = the factor of element `first + i`.
    pub(super) fn fill(&self, first: u64, out: &mut [MaybeUninit<f32>]) {
        fill_factors(self, first, out);
    }

    /// `values[i]` multiplied by the factor of element `first + i`.
    pub(super) fn apply(&self, first: u64, values: &mut [f32]) {
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

/// The attention's dropout mask for probability `dropout` (none at 0), its seed drawn from
/// Burn's generator as [`dropout`] draws its own.
pub(super) fn attention_mask(dropout: f64) -> Option<DropoutMask> {
    (dropout > 0.0).then(|| DropoutMask::draw(&Device::new(burn_flex::FlexDevice), dropout))
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
