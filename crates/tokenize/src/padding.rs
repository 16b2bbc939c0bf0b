//! Dynamic padding, as transformers' `DataCollatorWithPadding` does it: a batch is cut to its
//! longest row, rounded up to a multiple (`pad_to_multiple_of`, 8 by default: tensor shapes stay
//! few, and kernels aligned), never past the sequence length the rows were encoded with; and
//! the Trainer's `group_by_length` order, which puts rows of similar length together.
//!
//! The token caches hold every row's tokens, so a batch is its rows padded on the right to
//! `width`: nothing is re-tokenized. Padding stays inert because the model
//! ignores padded positions (attention bias, position ids, pooling at `<s>`); the equivalence
//! with fixed padding is tested in the train crate.

use serde::{Deserialize, Serialize};

/// How batches are padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Padding {
    /// Pad every batch to the full sequence length (the notebook's behaviour; for
    /// comparisons). Runs saved before dynamic padding existed read as `true`.
    #[serde(default = "fixed_padding")]
    pub pad_to_max_length: bool,
    /// Round a batch's width up to a multiple of this (1: no rounding).
    #[serde(default = "default_multiple")]
    pub pad_to_multiple_of: usize,
}

fn fixed_padding() -> bool {
    true
}

fn default_multiple() -> usize {
    8
}

impl Default for Padding {
    /// Dynamic padding to a multiple of 8.
    fn default() -> Self {
        Self {
            pad_to_max_length: false,
            pad_to_multiple_of: default_multiple(),
        }
    }
}

impl Padding {
    /// The notebook's fixed padding to the full length.
    pub const FIXED: Padding = Padding {
        pad_to_max_length: true,
        pad_to_multiple_of: 8,
    };

    /// The width of a batch whose rows have `lengths` real tokens, for rows encoded with
    /// `max_length` columns.
    pub fn width(&self, lengths: impl IntoIterator<Item = usize>, max_length: usize) -> usize {
        if self.pad_to_max_length {
            return max_length;
        }
        let longest = lengths.into_iter().max().unwrap_or(0).max(1);
        longest
            .div_ceil(self.pad_to_multiple_of.max(1))
            .saturating_mul(self.pad_to_multiple_of.max(1))
            .min(max_length)
    }
}

/// Real tokens of a right-padded mask row: one past its last 1.
pub fn row_length(mask: &[u8]) -> usize {
    mask.iter()
        .rposition(|&m| m != 0)
        .map_or(0, |last| last + 1)
}

/// The rows at `indices` of row-major `[rows, max_length]` ids and mask, cut to their first
/// `width` columns, as the `i64` tensors' data `[indices.len(), width]` (ids, mask).
pub fn gather_rows(
    input_ids: &[u32],
    attention_mask: &[u8],
    max_length: usize,
    indices: &[usize],
    width: usize,
) -> (Vec<i64>, Vec<i64>) {
    let mut ids = Vec::with_capacity(indices.len() * width);
    let mut mask = Vec::with_capacity(indices.len() * width);
    for &i in indices {
        let row = i * max_length..i * max_length + width;
        ids.extend(input_ids[row.clone()].iter().map(|&t| i64::from(t)));
        mask.extend(attention_mask[row].iter().map(|&m| i64::from(m)));
    }
    (ids, mask)
}

/// transformers' `get_length_grouped_indices`: the rows of `order` (a seeded permutation) cut
/// into mega-batches of `min(rows / (4 batch), 50)` batches (at least one), each sorted by
/// length, longest first (stably); then the longest row overall moved to the front, so that
/// the first step is the one that needs the most memory.
pub fn group_by_length(order: &[usize], lengths: &[usize], batch_size: usize) -> Vec<usize> {
    let batch_size = batch_size.max(1);
    let mult = (order.len() / (batch_size * 4)).clamp(1, 50);
    let mega = mult * batch_size;
    let mut megabatches: Vec<Vec<usize>> = order
        .chunks(mega)
        .map(|chunk| {
            let mut sorted = chunk.to_vec();
            sorted.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
            sorted
        })
        .collect();
    // The first of the mega-batches whose head is the longest, as torch.argmax picks.
    let longest = megabatches
        .iter()
        .enumerate()
        .fold(None::<(usize, usize)>, |best, (m, batch)| {
            let length = lengths[batch[0]];
            match best {
                Some((_, l)) if l >= length => best,
                _ => Some((m, length)),
            }
        })
        .map_or(0, |(m, _)| m);
    if longest != 0 {
        let (first, rest) = megabatches.split_at_mut(longest);
        std::mem::swap(&mut first[0][0], &mut rest[0][0]);
    }
    megabatches.concat()
}

/// The rows `0..lengths.len()` sorted by length, longest first (stably): evaluation and
/// prediction batch in this order, so each batch pads little, and put the results back.
pub fn by_length(lengths: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_padded_to_its_longest_row_rounded_up() {
        let dynamic = Padding::default();
        assert_eq!(dynamic.width([3, 17, 9], 64), 24);
        assert_eq!(dynamic.width([16], 64), 16);
        assert_eq!(dynamic.width([61], 64), 64);
        assert_eq!(dynamic.width([61], 62), 62, "never past the encoded length");
        let exact = Padding {
            pad_to_multiple_of: 1,
            ..dynamic
        };
        assert_eq!(exact.width([3, 17, 9], 64), 17);
        assert_eq!(Padding::FIXED.width([3], 64), 64);
    }

    #[test]
    fn row_lengths_and_gathering_follow_the_mask() {
        assert_eq!(row_length(&[1, 1, 1, 0, 0]), 3);
        assert_eq!(row_length(&[0, 0]), 0);
        let ids = [5, 6, 7, 1, 8, 9, 1, 1];
        let mask = [1, 1, 1, 0, 1, 1, 0, 0];
        let (i, m) = gather_rows(&ids, &mask, 4, &[1, 0], 3);
        assert_eq!(i, [8, 9, 1, 5, 6, 7]);
        assert_eq!(m, [1, 1, 0, 1, 1, 1]);
    }

    /// What transformers 5's `get_length_grouped_indices` returns for these inputs (the
    /// permutation given in place of its `torch.randperm`), computed by hand from its source.
    #[test]
    fn grouping_follows_the_trainer() {
        let lengths = [5, 9, 2, 7, 3, 8, 1, 6, 4, 10];
        let order = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        // 10 rows / (4 * 2) = 1 batch per mega-batch: pairs sorted, the head of the pair
        // with the longest row (row 9, length 10) swapped with the first pair's head.
        assert_eq!(
            group_by_length(&order, &lengths, 2),
            [9, 0, 3, 2, 5, 4, 7, 6, 1, 8]
        );
        // 10 / (4 * 5) = 0, so at least 1: two mega-batches of 5, each sorted, heads swapped.
        assert_eq!(
            group_by_length(&order, &lengths, 5),
            [9, 3, 0, 4, 2, 1, 5, 7, 8, 6]
        );
        let mut sorted = group_by_length(&order, &lengths, 3);
        sorted.sort_unstable();
        assert_eq!(sorted, order, "a permutation");
    }

    #[test]
    fn evaluation_order_is_longest_first_and_stable() {
        assert_eq!(by_length(&[2, 5, 2, 7]), [3, 1, 0, 2]);
    }
}
