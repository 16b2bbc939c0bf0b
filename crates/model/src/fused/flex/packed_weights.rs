//! The linear layers' weights rounded and packed for the bf16 products once, and reused while
//! [`crate::autocast::reuse_weights`] runs, as `torch.autocast` keeps the bf16 copies of the
//! weights for as long as its region lasts. Without it each product packs its weight again,
//! once per batch (A/B on roberta-base inference in bf16: docs/perf-notes/journal.md).
//!
//! A packed weight is found by its storage's address and its view of it. The entry holds a
//! clone of the weight, so that while it is kept the storage can be neither freed (and its
//! address given to another tensor) nor updated in place (flex writes in place only into a
//! tensor that nothing else shares, and copies otherwise): the packed copy always matches the
//! values at its address. Only the products off the autodiff graph use it (evaluation and
//! prediction), whose weights do not change between batches.

use std::collections::HashMap;
use std::rc::Rc;

use burn_flex::FlexTensor;

use super::bf16_gemm::PackedRhs;
use super::product::Operand;

/// A weight: its storage's address, where its view starts, its `[k, n]` and its strides.
#[derive(PartialEq, Eq, Hash)]
struct Key {
    storage: usize,
    offset: usize,
    dims: [usize; 2],
    strides: [isize; 2],
}

/// A packed weight and the weight it was packed from.
struct Entry {
    /// Keeps the storage alive and shared (see the module documentation).
    _weight: FlexTensor,
    packed: Rc<PackedRhs>,
}

/// The packed weights this thread keeps while its [`crate::autocast::reuse_weights`] region
/// lasts ([`crate::autocast::kept_in_region`] holds it and drops it at the region's end).
#[derive(Default)]
struct Cache(HashMap<Key, Entry>);

/// The packed copy of the `[k, n]` `weight`, read as `operand`, while this thread reuses packed
/// weights: the one kept, or one packed now and kept; `None` when it does not.
///
/// # Safety
/// `operand` must read `weight` within its extent.
pub(super) unsafe fn packed(
    weight: &FlexTensor,
    operand: Operand,
    (k, n): (usize, usize),
) -> Option<Rc<PackedRhs>> {
    crate::autocast::kept_in_region(|Cache(cache): &mut Cache| {
        let layout = weight.layout();
        let key = Key {
            storage: weight.storage::<f32>().as_ptr() as usize,
            offset: layout.start_offset(),
            dims: [k, n],
            strides: [operand.row_stride, operand.column_stride],
        };
        let entry = cache.entry(key).or_insert_with(|| Entry {
            _weight: weight.clone(),
            // SAFETY: the caller's promise.
            packed: Rc::new(unsafe { PackedRhs::new(operand, k, n) }),
        });
        entry.packed.clone()
    })
}

/// How many packed weights this thread keeps.
#[cfg(test)]
pub(in crate::fused) fn kept() -> usize {
    crate::autocast::kept_in_region(|Cache(cache): &mut Cache| cache.len()).unwrap_or(0)
}
