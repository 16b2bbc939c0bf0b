//! The exact (erf) GELU and its derivative on the CPU backend, vectorised and parallel.
//!
//! Burn's flex backend computes GELU one element at a time, on one thread, through libm's
//! scalar `erff` (14% of an inference step and 7% of a training step in a profile on an Intel
//! Xeon, docs/perf-notes/journal.md). Here `erf` is a rational approximation on `[-4, 4]` (Eigen's and
//! XLA's `erf` for f32: odd numerator of degree 13, even denominator of degree 8, saturating
//! to ±1 outside; within 4e-7 of libm, a few f32 ulps at 1) and `exp` Cephes'
//! polynomial with a power-of-two scaling, both branch-free, so the loops vectorise; rows are
//! split across the rayon pool. The result equals the exact GELU that transformers uses to
//! within f32 rounding (tested against libm below and against transformers' logits in the
//! parity tests).

// The polynomial coefficients are written as published (Eigen, Cephes), not as f32 rounds them.
#![allow(clippy::excessive_precision)]

use multiversion::multiversion;
use rayon::prelude::*;

/// Elements per parallel task: below this, the pool's overhead outweighs the work.
const CHUNK: usize = 1 << 14;

/// `erf(x)` for f32, branch-free.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_2e-10_f32;
    p = p.mul_add(x2, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_4e-5);
    p = p.mul_add(x2, -7.349_906_3e-4);
    p = p.mul_add(x2, -2.954_600_1e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    let mut q = -1.456_607_2e-5_f32;
    q = q.mul_add(x2, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329e-3);
    q = q.mul_add(x2, -1.426_473_9e-2);
    x * p / q
}

/// `exp(x)` for f32 on `[-87, 0]` (what the GELU derivative needs), branch-free: Cephes'
/// `expf`, `e^x = 2^n e^r` with `|r| <= ln 2 / 2`.
#[inline(always)]
pub(super) fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_2e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_65);
    p = p.mul_add(r, 0.5);
    let e = p.mul_add(r * r, r) + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `0.5 x (1 + erf(x / √2))`.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `g (Φ(x) + x φ(x))`, the GELU derivative times the output gradient.
#[inline(always)]
fn gelu_grad(x: f32, g: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = INV_SQRT_2PI * exp_nonpositive(-0.5 * x * x);
    g * x.mul_add(pdf, cdf)
}

/// GELU of every element, in place.
pub(crate) fn gelu_in_place(values: &mut [f32]) {
    values.par_chunks_mut(CHUNK).for_each(gelu_chunk);
}

/// `grad[i] = gelu'(x[i]) · grad[i]`, in place in `grad`.
pub(crate) fn gelu_backward_in_place(x: &[f32], grad: &mut [f32]) {
    grad.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(g, x)| gelu_backward_chunk(x, g));
}

/// One task's share of [`gelu_in_place`], compiled for the widest vector instructions this
/// CPU has (the build targets baseline x86-64).
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn gelu_chunk(values: &mut [f32]) {
    for v in values {
        *v = gelu(*v);
    }
}

/// One task's share of [`gelu_backward_in_place`], compiled as [`gelu_chunk`] is.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn gelu_backward_chunk(x: &[f32], g: &mut [f32]) {
    for (g, &x) in g.iter_mut().zip(x) {
        *g = gelu_grad(x, *g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_and_exp_match_libm_to_f32_resolution() {
        let mut worst = (0.0f64, 0.0f64);
        for i in -60_000i32..=60_000 {
            let x = i as f32 * 1e-4;
            let e = (f64::from(erf(x)) - libm::erf(f64::from(x))).abs();
            worst.0 = worst.0.max(e);
            let y = -(i.abs() as f32) * 1.2e-3;
            let want = libm::exp(f64::from(y));
            let rel = (f64::from(exp_nonpositive(y)) - want).abs() / want;
            worst.1 = worst.1.max(rel);
        }
        assert!(worst.0 < 5e-7, "erf off by {}", worst.0);
        assert!(worst.1 < 3e-7, "exp off by {} (relative)", worst.1);
    }

    #[test]
    fn gelu_and_its_derivative_match_the_exact_formulas() {
        let xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 2.5e-3).collect();
        let mut y = xs.clone();
        gelu_in_place(&mut y);
        let mut g = vec![1.0f32; xs.len()];
        gelu_backward_in_place(&xs, &mut g);
        for ((&x, &y), &g) in xs.iter().zip(&y).zip(&g) {
            let x = f64::from(x);
            let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!((f64::from(y) - x * cdf).abs() < 1e-6, "gelu({x})");
            assert!((f64::from(g) - (cdf + x * pdf)).abs() < 1e-6, "gelu'({x})");
        }
    }
}
