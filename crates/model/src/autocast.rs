//! Mixed precision on the CPU backend, as `torch.autocast("cpu", dtype=torch.bfloat16)` runs
//! PyTorch's: inside [`bf16`], the linear layers' matrix products take their operands rounded
//! to bf16 and sum the products in f32; parameters, activations, gradients and every other
//! operation (layer norm, softmax, GELU, the attention scores) stay f32. On a CPU with AMX
//! (Intel Xeon from Sapphire Rapids on) the products run on its tiles, many times f32's
//! multiply-adds per instruction; with AVX512-BF16 alone (AMD Zen 4 on, Intel Cooper Lake) a
//! bf16 product does twice the multiply-adds of an f32 one; elsewhere the products are f32
//! products of the rounded operands: the same numbers up to the order of the sums, at about
//! f32's speed ([`Bf16Support`] says which).
//!
//! PyTorch's autocast also rounds the products' outputs, and what reads them, to bf16; here
//! only the products' operands are rounded, so a run is at least as close to f32 as PyTorch's.
//! The precision is recorded with each product of the autodiff graph: the backward pass
//! computes its gradient products as the forward pass did, wherever `backward` is called.
//! Other backends compute in their own float type (the device's, e.g. bf16 on a GPU) and
//! ignore this switch.

use std::any::Any;
use std::cell::{Cell, RefCell};

pub use crate::cpu::Bf16Support;

thread_local! {
    /// Whether this thread is inside an enabled [`bf16`].
    static BF16: Cell<bool> = const { Cell::new(false) };
    /// How many [`reuse_weights`] this thread is inside.
    static REUSE_WEIGHTS: Cell<usize> = const { Cell::new(0) };
    /// What a backend keeps while this thread's outermost [`reuse_weights`] lasts (the CPU
    /// backend's packed weights: [`kept_in_region`]), dropped when it ends. Held here, as an
    /// opaque value, so that the region's end drops it without this module knowing the
    /// backends: they read this module, not the other way round.
    static KEPT: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Runs `f` with the CPU backend's linear layers computing in mixed bf16 precision on this
/// thread if `enabled`, in f32 if not (as `torch.autocast(..., enabled=False)` turns it off
/// inside an autocast region; see the module documentation), then restores the previous
/// setting, also when `f` panics.
pub fn bf16<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    let _scope = bf16_scope(enabled);
    f()
}

/// [`bf16`] as a guard: this thread's linear layers compute in mixed bf16 precision if
/// `enabled`, in f32 if not, until the guard is dropped, which restores the previous setting.
pub fn bf16_scope(enabled: bool) -> Bf16Scope {
    Bf16Scope {
        previous: BF16.with(|bf16| bf16.replace(enabled)),
        _thread: std::marker::PhantomData,
    }
}

/// The guard of [`bf16_scope`]; it belongs to the thread that made it (the setting is that
/// thread's).
#[must_use = "the setting lasts only while the guard lives"]
pub struct Bf16Scope {
    previous: bool,
    /// Neither `Send` nor `Sync`.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Drop for Bf16Scope {
    fn drop(&mut self) {
        BF16.with(|bf16| bf16.set(self.previous));
    }
}

/// Whether this thread is inside an enabled [`bf16`].
pub fn is_bf16() -> bool {
    BF16.with(Cell::get)
}

/// Runs `f` with each linear layer's weight rounded and packed for the bf16 products once, and
/// that copy reused by every product that takes the weight off the autodiff graph (evaluation,
/// prediction), as `torch.autocast` keeps its bf16 copies of the weights while its region
/// lasts; then drops the copies (2 bytes per weight; 4 where the products are f32 products of
/// the rounded operands: [`Bf16Support`]), also when `f` panics. Each copy holds its
/// weight's storage, so a weight cannot change under it: an in-place update copies instead.
/// Outside [`bf16`], or on another backend, it changes nothing.
pub fn reuse_weights<R>(f: impl FnOnce() -> R) -> R {
    /// Leaves the region; the outermost one drops the copies.
    struct Region;
    impl Drop for Region {
        fn drop(&mut self) {
            let depth = REUSE_WEIGHTS.with(|depth| {
                depth.set(depth.get() - 1);
                depth.get()
            });
            if depth == 0 {
                // Taken out first: dropping the copies runs outside the borrow.
                drop(KEPT.with(|kept| kept.borrow_mut().take()));
            }
        }
    }
    REUSE_WEIGHTS.with(|depth| depth.set(depth.get() + 1));
    let _region = Region;
    f()
}

/// Whether this thread is inside a [`reuse_weights`].
pub(crate) fn reuses_weights() -> bool {
    REUSE_WEIGHTS.with(Cell::get) > 0
}

/// `f` on the `T` this thread keeps for its [`reuse_weights`] region (made with
/// `T::default()` on first use, dropped when the outermost region ends); `None` outside a
/// region. `f` must not call it again.
pub(crate) fn kept_in_region<T: Any + Default, R>(f: impl FnOnce(&mut T) -> R) -> Option<R> {
    if !reuses_weights() {
        return None;
    }
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        let kept = kept.get_or_insert_with(|| Box::new(T::default()));
        kept.downcast_mut::<T>().map(f)
    })
}
