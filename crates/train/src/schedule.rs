//! [`LinearSchedule`]: transformers' `get_linear_schedule_with_warmup`, step for step.
//!
//! Burn's `LinearLrScheduler` cannot start from 0 (its initial rate must be positive) and has no
//! warmup of its own, so the trainer uses this exact formula instead.

use serde::{Deserialize, Serialize};

/// Learning rate rising linearly from 0 over `warmup_steps`, then falling linearly to 0 at
/// `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearSchedule {
    /// Rate at the end of warmup.
    pub peak: f64,
    /// Steps of linear warmup (0: start at the peak, as the notebook did).
    pub warmup_steps: usize,
    /// Optimizer steps of the whole run.
    pub total_steps: usize,
}

impl LinearSchedule {
    /// The rate used by optimizer step `step` (0-based), as `LambdaLR` gives it:
    /// `peak * step / warmup` during warmup, then `peak * (total - step) / (total - warmup)`.
    pub fn rate(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let remaining = self.total_steps.saturating_sub(step) as f64;
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        self.peak * (remaining / span).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    /// ```python
    /// import torch
    /// from transformers import get_linear_schedule_with_warmup
    /// opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=4e-5)
    /// s = get_linear_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=10)
    /// rates = []
    /// for _ in range(10):
    ///     rates.append(opt.param_groups[0]["lr"]); opt.step(); s.step()
    /// # [0.0, 1.333e-05, 2.667e-05, 4e-05, 3.429e-05, 2.857e-05, 2.286e-05, 1.714e-05,
    /// #  1.143e-05, 5.714e-06]
    /// ```
    #[test]
    fn matches_transformers_with_warmup() {
        let s = LinearSchedule {
            peak: 4e-5,
            warmup_steps: 3,
            total_steps: 10,
        };
        let expected = [
            0.0, 1.3333e-5, 2.6667e-5, 4e-5, 3.4286e-5, 2.8571e-5, 2.2857e-5, 1.7143e-5, 1.1429e-5,
            5.7143e-6,
        ];
        for (step, e) in expected.iter().enumerate() {
            assert_abs_diff_eq!(s.rate(step), *e, epsilon = 1e-9);
        }
        assert_eq!(s.rate(10), 0.0);
        assert_eq!(s.rate(11), 0.0);
    }

    #[test]
    fn without_warmup_starts_at_the_peak() {
        let s = LinearSchedule {
            peak: 1.0,
            warmup_steps: 0,
            total_steps: 4,
        };
        let rates: Vec<f64> = (0..4).map(|t| s.rate(t)).collect();
        assert_eq!(rates, [1.0, 0.75, 0.5, 0.25]);
    }
}
