//! Which of this crate's own kernels the model runs: the fused layer norm, softmax, GELU,
//! dropout and linear layer, the fused attention, and the way the CPU backend's bf16 products
//! run. Every one is on by default (and the products run as this CPU's: [`Bf16Support`]); the
//! benchmarks turn them off one at a time to time each against what it replaces (`cargo xtask
//! bench model-worker --composed-ops`, `--composed-attention`, `--bf16-products`).
//!
//! A value the caller sets for the calls it makes ([`with`]), held per thread as
//! [`crate::autocast`]'s precision is and carried into the thread pool's job by
//! [`crate::in_thread_pool`]: a benchmark's choice cannot leak into another caller's model in
//! the same process. A leaf: the operations read it, it reads nothing of theirs.
//!
//! [`Bf16Support`]: crate::cpu::Bf16Support

use std::cell::Cell;

/// The kernels a model's operations run (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernels {
    /// The fused layer norm, softmax, GELU, dropout and linear layer (else Burn's composed
    /// operations).
    pub fused_ops: bool,
    /// The fused attention where the backend has one (else attention composed from Burn's
    /// operations).
    pub fused_attention: bool,
    /// How the CPU backend's bf16 products run (`None`: as this CPU's do).
    pub bf16_products: Option<Bf16Products>,
}

impl Kernels {
    /// Every fused kernel, the products as this CPU's.
    pub const DEFAULT: Kernels = Kernels {
        fused_ops: true,
        fused_attention: true,
        bf16_products: None,
    };
}

/// The ways the CPU backend's bf16 products can run, for A/B benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// Only the benchmarks' choice ([`with`]) names a variant.
#[cfg_attr(not(feature = "bench"), allow(dead_code))]
pub enum Bf16Products {
    /// AVX512-BF16's `vdpbf16ps`.
    Native,
    /// `vdpbf16ps`'s order of sums in plain Rust.
    Portable,
    /// f32 products of the bf16-rounded operands (the `gemm` crate's kernels).
    RoundedF32,
    /// AMX's `tdpbf16ps` tile products, without the self-check of the detected choice.
    Amx,
}

thread_local! {
    /// The kernels this thread's model operations run.
    static KERNELS: Cell<Kernels> = const { Cell::new(Kernels::DEFAULT) };
}

/// The kernels this thread's model operations run.
pub(crate) fn current() -> Kernels {
    KERNELS.with(Cell::get)
}

/// Runs `f` with this thread's model operations (and those of the thread pool's job that
/// [`crate::in_thread_pool`] starts inside it) running `kernels`, then restores the previous
/// choice, also when `f` panics. `Err`, and `f` not run, where this CPU cannot run
/// `kernels.bf16_products` (`Native` without AVX512-BF16, `Amx` without AMX or the operating
/// system's grant of its tile state), with the reason.
#[cfg(feature = "bench")]
pub fn with<R>(kernels: Kernels, f: impl FnOnce() -> R) -> Result<R, &'static str> {
    use crate::cpu;
    let refused = match kernels.bf16_products {
        Some(Bf16Products::Native) if !cpu::avx512_bf16() => Some("this CPU has no AVX512-BF16"),
        Some(Bf16Products::Amx) if !(cpu::avx512_bf16() && cpu::amx_bf16()) => {
            Some("this CPU has no AMX-BF16")
        }
        Some(Bf16Products::Amx) => cpu::amx_permission().err(),
        _ => None,
    };
    match refused {
        Some(reason) => Err(reason),
        None => Ok(scoped(kernels, f)),
    }
}

/// Runs `f` with this thread's operations running `kernels`, restoring the previous choice
/// after it, also when `f` panics.
pub(crate) fn scoped<R>(kernels: Kernels, f: impl FnOnce() -> R) -> R {
    /// Restores the previous choice when dropped.
    struct Restore(Kernels);
    impl Drop for Restore {
        fn drop(&mut self) {
            KERNELS.with(|current| current.set(self.0));
        }
    }
    let _restore = Restore(KERNELS.with(|current| current.replace(kernels)));
    f()
}
