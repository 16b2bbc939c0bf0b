//! [`KeepBestCheckpoints`]: which epoch checkpoints to keep, as a pure policy on metric values.
//!
//! transformers' `save_total_limit` with `load_best_model_at_end` keeps the best checkpoint and
//! the most recent ones up to the limit; the policy returns what to delete, and the trainer
//! does the deleting, so the rule is tested on made-up metrics alone.

use serde::{Deserialize, Serialize};

/// Keep the best checkpoint (by one metric) and the latest, at most `total_limit` in all.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KeepBestCheckpoints {
    /// Whether a larger metric is better (F1, accuracy) or a smaller one (loss).
    pub greater_is_better: bool,
    /// Checkpoints kept at most (at least 1; 2 keeps the best and the latest).
    pub total_limit: usize,
}

impl KeepBestCheckpoints {
    /// Index of the best of `metrics` (earliest on ties, as transformers keeps the first best);
    /// NaN never wins.
    pub fn best(&self, metrics: &[f64]) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, &m) in metrics.iter().enumerate() {
            if m.is_nan() {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) if self.greater_is_better => m > metrics[b],
                Some(b) => m < metrics[b],
            };
            if better {
                best = Some(i);
            }
        }
        best
    }

    /// Given the metric of every saved checkpoint so far (in save order, all still on disk
    /// except those in `deleted`), the indices to delete now.
    pub fn to_delete(&self, metrics: &[f64], deleted: &[usize]) -> Vec<usize> {
        let limit = self.total_limit.max(1);
        let best = self.best(metrics);
        let alive: Vec<usize> = (0..metrics.len())
            .filter(|i| !deleted.contains(i))
            .collect();
        let mut keep: Vec<usize> = Vec::new();
        if let Some(b) = best {
            keep.push(b);
        }
        for &i in alive.iter().rev() {
            if keep.len() >= limit {
                break;
            }
            if !keep.contains(&i) {
                keep.push(i);
            }
        }
        alive.into_iter().filter(|i| !keep.contains(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F1: KeepBestCheckpoints = KeepBestCheckpoints {
        greater_is_better: true,
        total_limit: 2,
    };

    #[test]
    fn keeps_the_best_and_the_latest() {
        assert_eq!(F1.to_delete(&[0.5], &[]), Vec::<usize>::new());
        assert_eq!(F1.to_delete(&[0.5, 0.7], &[]), Vec::<usize>::new());
        // Epoch 2 is best; epoch 3 is latest; epoch 1 goes.
        assert_eq!(F1.to_delete(&[0.5, 0.7, 0.6], &[]), vec![0]);
        // The best stays while newer ones rotate.
        assert_eq!(F1.to_delete(&[0.5, 0.7, 0.6, 0.65], &[0]), vec![2]);
        // A new best that is also the latest leaves room for the previous latest.
        assert_eq!(F1.to_delete(&[0.5, 0.7, 0.6, 0.8], &[0]), vec![1]);
    }

    #[test]
    fn loss_is_smaller_is_better_and_nan_never_wins() {
        let loss = KeepBestCheckpoints {
            greater_is_better: false,
            total_limit: 2,
        };
        assert_eq!(loss.best(&[0.9, 0.4, f64::NAN, 0.5]), Some(1));
        assert_eq!(loss.best(&[f64::NAN]), None);
        assert_eq!(F1.best(&[0.7, 0.7]), Some(0));
        let one = KeepBestCheckpoints {
            greater_is_better: true,
            total_limit: 1,
        };
        assert_eq!(one.to_delete(&[0.5, 0.7, 0.6], &[]), vec![0, 2]);
    }
}
