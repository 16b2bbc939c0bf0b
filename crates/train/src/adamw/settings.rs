//! AdamW's hyperparameters: what the optimizer and its per-backend updates read (a leaf of
//! the optimizer's modules).

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// AdamW's hyperparameters, with PyTorch's meaning (and the notebook's values as defaults).
/// Serialised under transformers' `TrainingArguments` names (`adam_beta1`, …), so a
/// configuration that embeds it with `#[serde(flatten)]` reads like the Trainer's; the short
/// names of earlier `optimizer.json` files are still read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWSettings {
    /// β1, the first moment's decay.
    #[serde(rename = "adam_beta1", alias = "beta1")]
    pub beta1: f64,
    /// β2, the second moment's decay.
    #[serde(rename = "adam_beta2", alias = "beta2")]
    pub beta2: f64,
    /// ε, added to the bias-corrected √v (PyTorch's 1e-8; Burn's default is 1e-5).
    #[serde(rename = "adam_epsilon", alias = "epsilon")]
    pub epsilon: f64,
    /// Decoupled weight decay λ (multiplied by the learning rate).
    pub weight_decay: f64,
    /// Bound on the global gradient norm; 0 disables clipping.
    pub max_grad_norm: f64,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 0.0,
        }
    }
}

impl AdamWSettings {
    /// Checks every setting is finite and in range; the message names the setting by its
    /// command-line and configuration name.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |detail: String| Err(TrainError::InvalidSetting(detail));
        for (name, value) in [("adam_beta1", self.beta1), ("adam_beta2", self.beta2)] {
            if !(value.is_finite() && (0.0..1.0).contains(&value)) {
                return bad(format!("{name} {value} must be in [0, 1)"));
            }
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return bad(format!(
                "adam_epsilon {} must be finite and positive",
                self.epsilon
            ));
        }
        for (name, value) in [
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return bad(format!("{name} {value} must be finite and >= 0"));
            }
        }
        Ok(())
    }
}
