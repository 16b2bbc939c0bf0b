//! The update on the CPU backend: clipping, both moments and every parameter in one parallel
//! pass (see [`super`]'s documentation).

use burn::backend::Flex;
use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::{Bytes, DType, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::settings::AdamWSettings;

/// Elements per parallel task: below this, the pool's overhead outweighs the work.
const CHUNK: usize = 1 << 14;

/// The step's results: each parameter's new values (in the order given), the moments and
/// the norm before clipping.
pub(super) struct Update {
    pub params: Vec<Tensor<1>>,
    pub moment_1: Tensor<1>,
    pub moment_2: Tensor<1>,
    pub grad_norm: f64,
}

/// The CPU backend's tensor of `tensor`, contiguous (copied when it is a strided view).
fn contiguous(tensor: Tensor<1>) -> FlexTensor {
    let tensor = tensor
        .try_into_primitive::<Flex>()
        .expect("a tensor on the CPU backend");
    if tensor.is_contiguous() {
        tensor
    } else {
        tensor.to_contiguous()
    }
}

/// The elements of the contiguous f32 tensor `t`, in order.
fn values(t: &FlexTensor) -> &[f32] {
    let start = t.layout().start_offset();
    &t.storage::<f32>()[start..start + t.layout().num_elements()]
}

/// A `[len]` f32 tensor over `values`.
fn tensor(values: Vec<f32>) -> FlexTensor {
    let len = values.len();
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::new([len])),
        DType::F32,
    )
}

/// A moment of `len` elements that this step may update in place: its own buffer when no
/// other tensor shares it (a checkpoint being written may), else a copy; zeros before the
/// first step.
fn exclusive(moment: Option<Tensor<1>>, len: usize) -> FlexTensor {
    let Some(moment) = moment else {
        return tensor(vec![0.0; len]);
    };
    let mut moment = contiguous(moment);
    let whole = moment.layout().start_offset() == 0 && moment.storage::<f32>().len() == len;
    if whole && moment.try_storage_mut::<f32>().is_some() {
        moment
    } else {
        tensor(values(&moment).to_vec())
    }
}

/// `Σ x²` in f64, over eight independent accumulators so that the loop vectorises (one
/// running sum is a chain of dependent additions); compiled for AVX-512 and AVX2 too, chosen
/// at run time (the crate's baseline, SSE2, converts and adds two lanes at a time).
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn sum_of_squares(values: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut blocks = values.chunks_exact(8);
    for block in &mut blocks {
        for (lane, &x) in lanes.iter_mut().zip(block) {
            *lane += f64::from(x) * f64::from(x);
        }
    }
    let tail: f64 = blocks
        .remainder()
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum();
    lanes.iter().sum::<f64>() + tail
}

/// A step's constants, in f32 as the update computes.
#[derive(Clone, Copy)]
struct Constants {
    /// The clipping factor, when the norm is above the maximum.
    clip: Option<f32>,
    b1: f32,
    b1_rest: f32,
    b2: f32,
    b2_rest: f32,
    /// `√(1 − β2ᵗ)`.
    correction_2: f32,
    epsilon: f32,
    /// `lr / (1 − β1ᵗ)`.
    step_size: f32,
    /// `1 − lr·λ`, when there is weight decay.
    decay: Option<f32>,
}

impl Constants {
    /// The update of one chunk: the moments `m` and `v` in place, the parameters `p` into
    /// `out`, from the gradients `g` (all of one length).
    fn update(
        &self,
        out: &mut [MaybeUninit<f32>],
        m: &mut [f32],
        v: &mut [f32],
        g: &[f32],
        p: &[f32],
    ) {
        // One instance of `update` per case, so that its loop has no branch.
        match (self.clip, self.decay) {
            (Some(clip), Some(decay)) => update(self, out, m, v, g, p, |g| g * clip, |p| p * decay),
            (Some(clip), None) => update(self, out, m, v, g, p, |g| g * clip, |p| p),
            (None, Some(decay)) => update(self, out, m, v, g, p, |g| g, |p| p * decay),
            (None, None) => update(self, out, m, v, g, p, |g| g, |p| p),
        }
    }
}

/// [`Constants::update`] with clipping and decay as `clip` and `decay`; compiled for
/// AVX-512 and AVX2 too, chosen at run time: the crate's baseline (SSE2) divides and takes
/// square roots four lanes at a time, which made this pass 7.9% of a small model's
/// training step on one thread (docs/perf-notes/journal.md). The same operations in the same order
/// on every path (no fused multiply-adds: Rust does not contract), so the same bits.
#[allow(clippy::too_many_arguments)]
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn update(
    c: &Constants,
    out: &mut [MaybeUninit<f32>],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    p: &[f32],
    clip: impl Fn(f32) -> f32,
    decay: impl Fn(f32) -> f32,
) {
    for ((((out, m), v), &g), &p) in out.iter_mut().zip(m).zip(v).zip(g).zip(p) {
        let g = clip(g);
        *m = *m * c.b1 + g * c.b1_rest;
        *v = *v * c.b2 + g * g * c.b2_rest;
        let delta = *m / (v.sqrt() / c.correction_2 + c.epsilon) * c.step_size;
        out.write(decay(p) - delta);
    }
}

/// One AdamW step (`steps` counts this one): `clip_grad_norm_` then `torch.optim.AdamW`,
/// the arithmetic of the composed path in its order, each parameter read from and written
/// to a buffer of its own (so the next forward pass reads them without copies).
pub(super) fn step(
    settings: &AdamWSettings,
    lr: f64,
    steps: u64,
    gradients: Vec<Tensor<1>>,
    params: Vec<Tensor<1>>,
    moments: Option<(Tensor<1>, Tensor<1>)>,
) -> Update {
    let AdamWSettings {
        beta1,
        beta2,
        epsilon,
        weight_decay,
        max_grad_norm,
    } = *settings;
    let gradients: Vec<FlexTensor> = gradients.into_iter().map(contiguous).collect();
    let params: Vec<FlexTensor> = params.into_iter().map(contiguous).collect();
    let len = gradients.iter().map(|g| values(g).len()).sum();

    // Partial sums per chunk, added in order: the norm does not depend on the pool.
    let partial: Vec<f64> = gradients
        .par_iter()
        .flat_map(|g| values(g).par_chunks(CHUNK))
        .map(sum_of_squares)
        .collect();
    let grad_norm = partial.iter().sum::<f64>().sqrt();
    let factor = max_grad_norm / (grad_norm + 1e-6);
    let clip = (max_grad_norm > 0.0 && factor < 1.0).then_some(factor as f32);

    let (moment_1, moment_2) = moments.unzip();
    let (mut moment_1, mut moment_2) = (exclusive(moment_1, len), exclusive(moment_2, len));
    let correction_1 = 1.0 - beta1.powi(steps as i32);
    let correction_2 = ((1.0 - beta2.powi(steps as i32)).sqrt()) as f32;
    let constants = Constants {
        clip,
        b1: beta1 as f32,
        b1_rest: (1.0 - beta1) as f32,
        b2: beta2 as f32,
        b2_rest: (1.0 - beta2) as f32,
        correction_2,
        epsilon: epsilon as f32,
        step_size: (lr / correction_1) as f32,
        decay: (weight_decay > 0.0).then_some((1.0 - lr * weight_decay) as f32),
    };

    // Each parameter's slices of the moments.
    let mut pieces = Vec::with_capacity(params.len());
    let (mut m_rest, mut v_rest) = (moment_1.storage_mut::<f32>(), moment_2.storage_mut::<f32>());
    for (g, p) in gradients.iter().zip(&params) {
        let n = values(g).len();
        let (m, m_next) = std::mem::take(&mut m_rest).split_at_mut(n);
        let (v, v_next) = std::mem::take(&mut v_rest).split_at_mut(n);
        (m_rest, v_rest) = (m_next, v_next);
        pieces.push((values(g), values(p), m, v));
    }
    let updated: Vec<Tensor<1>> = pieces
        .into_par_iter()
        .map(|(g, p, m, v)| {
            let mut out = Vec::<f32>::with_capacity(p.len());
            out.spare_capacity_mut()
                .par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK).zip(p.par_chunks(CHUNK)))
                .for_each(|(((out, m), v), (g, p))| constants.update(out, m, v, g, p));
            // SAFETY: the chunks cover `out` and every element was written above.
            unsafe { out.set_len(p.len()) };
            Tensor::from_primitive::<Flex>(tensor(out))
        })
        .collect();
    Update {
        params: updated,
        moment_1: Tensor::from_primitive::<Flex>(moment_1),
        moment_2: Tensor::from_primitive::<Flex>(moment_2),
        grad_norm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each of the four loops (clipping or not, decay or not) gives, to the bit, the
    /// element-by-element formula, on a length that is no multiple of a vector's lanes.
    #[test]
    fn every_variant_of_the_update_is_the_formula_to_the_bit() {
        let n = 1003;
        let wave = |phase: f32, scale: f32| -> Vec<f32> {
            (0..n)
                .map(|i| (i as f32 * 0.37 + phase).sin() * scale)
                .collect()
        };
        let (g, p, m0) = (wave(0.1, 2.0), wave(0.7, 0.05), wave(1.3, 0.1));
        let v0: Vec<f32> = wave(2.1, 0.1).iter().map(|x| x * x).collect();
        for clip in [Some(0.25f32), None] {
            for decay in [Some(0.99f32), None] {
                let c = Constants {
                    clip,
                    b1: 0.9,
                    b1_rest: 0.1,
                    b2: 0.999,
                    b2_rest: 0.001,
                    correction_2: 0.3,
                    epsilon: 1e-6,
                    step_size: 1e-3,
                    decay,
                };
                let (mut m, mut v) = (m0.clone(), v0.clone());
                let mut out = vec![MaybeUninit::uninit(); n];
                c.update(&mut out, &mut m, &mut v, &g, &p);
                for i in 0..n {
                    let g = clip.map_or(g[i], |clip| g[i] * clip);
                    let m_i = m0[i] * 0.9 + g * 0.1;
                    let v_i = v0[i] * 0.999 + g * g * 0.001;
                    let delta = m_i / (v_i.sqrt() / 0.3 + 1e-6) * 1e-3;
                    let p_i = decay.map_or(p[i], |decay| p[i] * decay) - delta;
                    // SAFETY: `update` wrote every element.
                    let written = unsafe { out[i].assume_init() };
                    assert_eq!(
                        (m[i].to_bits(), v[i].to_bits(), written.to_bits()),
                        (m_i.to_bits(), v_i.to_bits(), p_i.to_bits()),
                        "clip {clip:?}, decay {decay:?}, element {i}"
                    );
                }
            }
        }
    }
}
