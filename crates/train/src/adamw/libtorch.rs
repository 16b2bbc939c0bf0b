//! The update on libtorch: PyTorch's in-place operations on the flat buffers, the ones
//! `torch.optim.AdamW`'s multi-tensor path runs (`lerp_` for the moments), about a dozen kernels
//! a step where the composed chain takes twenty, each streaming the whole model through memory
//! (roberta-base: 8 ms of a 51 ms H100 step before this). The norm stays on the device.

// burn-tch is deprecated upstream, and still the fastest GPU backend here.
#![allow(deprecated)]

use burn::tensor::Tensor;
use burn_tch::{LibTorch, TchTensor};

use super::settings::AdamWSettings;

/// The step's results: the updated flat parameters, the moments and the norm before
/// clipping (shape `[1]`).
pub(super) struct Update {
    pub params: Tensor<1>,
    pub moment_1: Tensor<1>,
    pub moment_2: Tensor<1>,
    pub grad_norm: Tensor<1>,
}

/// The libtorch tensor of a tensor on a libtorch device, made exclusive (copied when
/// another Burn tensor shares its memory), so that it can be updated in place.
fn exclusive(tensor: Tensor<1>) -> tch::Tensor {
    let tensor = tensor
        .try_into_primitive::<LibTorch>()
        .expect("a tensor on the libtorch device");
    if tensor.can_mut() {
        tensor.tensor
    } else {
        tensor.tensor.copy()
    }
}

fn to_burn(tensor: tch::Tensor) -> Tensor<1> {
    Tensor::from_primitive::<LibTorch>(TchTensor::new(tensor))
}

/// One AdamW step (`steps` counts this one) over the flat `gradient`, as
/// `clip_grad_norm_` then `torch.optim.AdamW` compute it.
pub(super) fn step(
    settings: &AdamWSettings,
    lr: f64,
    steps: u64,
    gradient: Tensor<1>,
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
    let mut gradient = exclusive(gradient);
    let grad_norm = gradient.norm().reshape([1]);
    if max_grad_norm > 0.0 {
        // clip_grad_norm_: g · min(1, max_norm / (‖g‖ + 1e-6)), computed on the device.
        let factor = (&grad_norm + 1e-6).reciprocal() * max_grad_norm;
        let _ = gradient.g_mul_(&factor.clamp_max(1.0));
    }
    let (mut moment_1, mut moment_2) = match moments {
        Some((m, v)) => (exclusive(m), exclusive(v)),
        None => (gradient.zeros_like(), gradient.zeros_like()),
    };
    // m ← m + (1 − β1)(g − m) = β1·m + (1 − β1)·g, PyTorch's `_foreach_lerp_`; the same for
    // v with g².
    let _ = moment_1.lerp_(&gradient, 1.0 - beta1);
    let _ = moment_2.lerp_(&gradient.square(), 1.0 - beta2);
    let correction_1 = 1.0 - beta1.powi(steps as i32);
    let correction_2 = (1.0 - beta2.powi(steps as i32)).sqrt();
    let step_size = lr / correction_1;
    let raw: Vec<tch::Tensor> = params
        .into_iter()
        .map(|p| {
            p.try_into_primitive::<LibTorch>()
                .expect("a tensor on the libtorch device")
                .tensor
        })
        .collect();
    let mut flat = tch::Tensor::cat(&raw, 0);
    drop(raw);
    if weight_decay > 0.0 {
        let _ = flat.g_mul_scalar_(1.0 - lr * weight_decay);
    }
    // A zero learning rate (the schedule's first and last steps) moves nothing; below, it
    // would divide by zero.
    if step_size > 0.0 {
        // p ← p − step·m / (√v / c2 + ε), with the step folded into the denominator
        // because tch's `addcdiv_` has no scale: √v / (−step·c2) − ε / step.
        let mut denominator = moment_2.sqrt();
        let _ = denominator.g_div_scalar_(-step_size * correction_2);
        let _ = denominator.g_add_scalar_(-epsilon / step_size);
        let _ = flat.addcdiv_(&moment_1, &denominator);
    }
    Update {
        params: to_burn(flat),
        moment_1: to_burn(moment_1),
        moment_2: to_burn(moment_2),
        grad_norm: to_burn(grad_norm),
    }
}
