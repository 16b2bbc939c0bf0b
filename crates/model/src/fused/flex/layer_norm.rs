//! Layer norm under autodiff on the CPU backend: one parallel pass over the rows each way.
//!
//! The composed default bodies (`FusedKernels::layer_norm_forward` and
//! `layer_norm_backward_composed`) are about fifteen of flex's element-wise operations, each a
//! serial pass over the activations on the calling thread while the pool waits: 25 layer norms
//! a step in roberta-base. Here each row is normalised, or differentiated, in one pass, rows
//! split over the rayon pool, and the parameters' gradients are column sums split by columns
//! (the rows summed in order, so the result does not depend on the number of threads):
//! ```text
//! forward:   μ = mean(x),  r = 1/√(mean((x − μ)²) + ε),  y = (x − μ)·r·γ + β
//! backward:  x̂ = (x − μ)·r,  ∂x = r·(gγ − mean(gγ) − x̂·mean(gγ·x̂)),
//!            ∂γ = Σ_rows g·x̂,  ∂β = Σ_rows g
//! ```

use burn::tensor::{DType, Shape};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use std::mem::MaybeUninit;

use multiversion::multiversion;

use super::tensors::{
    COLUMN_BLOCK, contiguous, elements, from_vec, lane_sum, rows_per_task, written,
};

/// `(y, mean, rstd)` of the layer norm of `x` (`[..., width]`) with scale `gamma` and shift
/// `beta`; mean and rstd shaped like `x` with a last dimension of 1 (f32; `None` for others).
pub(super) fn forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
) -> Option<(FlexTensor, FlexTensor, FlexTensor)> {
    if [x, gamma, beta].iter().any(|t| t.dtype() != DType::F32) {
        return None;
    }
    let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
    let shape = x.layout().shape().clone();
    let width = shape[shape.num_dims() - 1];
    let (values, gamma, beta) = (elements(&x), elements(&gamma), elements(&beta));
    if gamma.len() != width || beta.len() != width {
        return None;
    }
    let (mean, rstd): (Vec<f32>, Vec<f32>) = values
        .par_chunks(width)
        .with_min_len(rows_per_task(width))
        .map(|x| row_statistics(x, epsilon as f32))
        .unzip();
    // SAFETY: every row is written in full.
    let y = unsafe {
        written(values.len(), width, |row, y| {
            let x = &values[row * width..][..width];
            normalise_row(y, x, gamma, beta, mean[row], rstd[row]);
        })
    };
    let mut stats = shape.clone();
    let last = stats.num_dims() - 1;
    stats[last] = 1;
    Some((
        from_vec(y, shape),
        from_vec(mean, stats.clone()),
        from_vec(rstd, stats),
    ))
}

/// `(∂x, ∂γ, ∂β)` from the output gradient `grad` and what [`forward`] kept (f32; `None` for
/// others).
pub(super) fn backward(
    grad: &FlexTensor,
    x: &FlexTensor,
    gamma: &FlexTensor,
    mean: &FlexTensor,
    rstd: &FlexTensor,
) -> Option<(FlexTensor, FlexTensor, FlexTensor)> {
    if [grad, x, gamma, mean, rstd]
        .iter()
        .any(|t| t.dtype() != DType::F32)
    {
        return None;
    }
    let (grad, x, gamma) = (contiguous(grad), contiguous(x), contiguous(gamma));
    let (mean, rstd) = (contiguous(mean), contiguous(rstd));
    let shape = x.layout().shape().clone();
    let width = shape[shape.num_dims() - 1];
    let (g, values, gamma) = (elements(&grad), elements(&x), elements(&gamma));
    let (mean, rstd) = (elements(&mean), elements(&rstd));
    let rows = values.len() / width.max(1);
    if g.len() != values.len() || gamma.len() != width || mean.len() != rows || rstd.len() != rows {
        return None;
    }

    // SAFETY: every row is written in full.
    let grad_x = unsafe {
        written(values.len(), width, |row, dx| {
            let (g, x) = (&g[row * width..][..width], &values[row * width..][..width]);
            backward_row(dx, g, x, gamma, mean[row], rstd[row]);
        })
    };

    let mut grad_gamma = vec![0.0f32; width];
    let mut grad_beta = vec![0.0f32; width];
    grad_gamma
        .par_chunks_mut(COLUMN_BLOCK)
        .zip(grad_beta.par_chunks_mut(COLUMN_BLOCK))
        .enumerate()
        .for_each(|(block, (dgamma, dbeta))| {
            let first = block * COLUMN_BLOCK;
            for ((g, x), (&mu, &r)) in g
                .chunks_exact(width)
                .zip(values.chunks_exact(width))
                .zip(mean.iter().zip(rstd))
            {
                parameter_gradients_row(dgamma, dbeta, &g[first..], &x[first..], mu, r);
            }
        });
    Some((
        from_vec(grad_x, shape),
        from_vec(grad_gamma, Shape::new([width])),
        from_vec(grad_beta, Shape::new([width])),
    ))
}

/// A row's mean and reciprocal standard deviation.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn row_statistics(x: &[f32], epsilon: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mu = lane_sum(x.len(), |i| x[i]) / n;
    let variance = lane_sum(x.len(), |i| (x[i] - mu) * (x[i] - mu)) / n;
    (mu, 1.0 / (variance + epsilon).sqrt())
}

/// `y = (x − μ)·r·γ + β` for one row.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn normalise_row(
    y: &mut [MaybeUninit<f32>],
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mu: f32,
    r: f32,
) {
    for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
        y.write((x - mu) * r * g + b);
    }
}

/// `∂x` of one row (module documentation).
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn backward_row(dx: &mut [MaybeUninit<f32>], g: &[f32], x: &[f32], gamma: &[f32], mu: f32, r: f32) {
    let (n, width) = (x.len() as f32, x.len().min(g.len()).min(gamma.len()));
    let sum = lane_sum(width, |i| g[i] * gamma[i]) / n;
    let projection = lane_sum(width, |i| g[i] * gamma[i] * (x[i] - mu) * r) / n;
    for (((dx, &g), &x), &gamma) in dx.iter_mut().zip(g).zip(x).zip(gamma) {
        dx.write(r * (g * gamma - sum - (x - mu) * r * projection));
    }
}

/// One row's share of `∂γ` and `∂β`, added to the columns of `dgamma` and `dbeta`.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn parameter_gradients_row(
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    g: &[f32],
    x: &[f32],
    mu: f32,
    r: f32,
) {
    for (((dgamma, dbeta), &g), &x) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(g).zip(x) {
        *dgamma += g * (x - mu) * r;
        *dbeta += g;
    }
}
