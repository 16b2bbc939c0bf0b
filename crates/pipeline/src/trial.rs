//! One trial of the search: its parameters as a [`TrainConfig`], and the hooks that report
//! each epoch to the study and let the median pruner stop it.

use std::collections::BTreeMap;

use sentiment_search::{Distribution, SearchSpace, Study};
use sentiment_train::{BestMetric, EpochMetrics, Progress, TrainConfig, TrainHooks};

use crate::PipelineError;

/// The parameters the trainer takes from a trial, by their `TrainingArguments` names.
pub const TRIAL_PARAMETERS: [&str; 4] = [
    "learning_rate",
    "batch_size",
    "warmup_steps",
    "weight_decay",
];

/// The training settings of a trial with `params`: `base` (best by F1), then the trial's
/// parameters.
pub fn trial_config(
    params: &BTreeMap<String, serde_json::Value>,
    base: &TrainConfig,
) -> Result<TrainConfig, PipelineError> {
    let mut config = TrainConfig {
        metric_for_best: BestMetric::F1,
        ..base.clone()
    };
    for (name, value) in params {
        let number = value.as_f64().ok_or_else(|| {
            PipelineError::InvalidSetting(format!("parameter {name} = {value} is not a number"))
        })?;
        // A count from a float or a negative number would be truncated or saturated into
        // another value than the study records.
        let count = || -> Result<usize, PipelineError> {
            if number.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&number) {
                Ok(number as usize)
            } else {
                Err(PipelineError::InvalidSetting(format!(
                    "parameter {name} = {value} is not a whole number >= 0"
                )))
            }
        };
        match name.as_str() {
            "learning_rate" => config.learning_rate = number,
            "batch_size" => config.batch_size = count()?,
            "warmup_steps" => config.warmup_steps = count()?,
            "weight_decay" => config.optimizer.weight_decay = number,
            other => {
                return Err(PipelineError::InvalidSetting(format!(
                    "parameter `{other}` is not one the trainer takes ({})",
                    TRIAL_PARAMETERS.join(", ")
                )));
            }
        }
    }
    Ok(config)
}

/// Refuses a search space from which the trainer would refuse a trial, naming the parameter
/// and the value, before any trial runs (a space every trial of which fails would otherwise
/// fail trial after trial). The trainer's accepted ranges are intervals (a positive learning
/// rate, a batch of at least 1, …), so a range's two ends and every choice are what is
/// checked; counts must also come from integers.
pub fn check_space(space: &SearchSpace, base: &TrainConfig) -> Result<(), PipelineError> {
    for (name, distribution) in space {
        let values: Vec<serde_json::Value> = match distribution {
            Distribution::Float { low, high, .. } => {
                if matches!(name.as_str(), "batch_size" | "warmup_steps") {
                    return Err(PipelineError::InvalidSetting(format!(
                        "--space {name}: a count takes whole numbers: int:LOW:HIGH or \
                         cat:A,B, not a float range"
                    )));
                }
                vec![(*low).into(), (*high).into()]
            }
            Distribution::Int { low, high, .. } => vec![(*low).into(), (*high).into()],
            Distribution::Categorical { choices } => choices.clone(),
        };
        for value in values {
            let params = BTreeMap::from([(name.clone(), value.clone())]);
            trial_config(&params, base)
                .and_then(|config| Ok(config.validate()?))
                .map_err(|e| {
                    PipelineError::InvalidSetting(format!(
                        "--space {name}: the trainer refuses {name} = {value}, so every trial \
                         reaching it would fail: {e}"
                    ))
                })?;
        }
    }
    Ok(())
}

/// The median pruner's settings (Optuna's `MedianPruner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PruneSettings {
    /// Complete trials needed before any is pruned.
    pub startup_trials: usize,
    /// Epochs of every trial that are never pruned.
    pub warmup_epochs: usize,
}

/// A trial's hooks: progress to the caller's printer, each evaluation's F1 into the study, and
/// the median pruner's decision when pruning is on.
pub(crate) struct TrialHooks<'a> {
    pub study: &'a mut Study,
    pub number: usize,
    pub prune: Option<PruneSettings>,
    /// Whether evaluations come every N steps: their intermediate values are then keyed by
    /// global step, as transformers' Optuna integration keys them, instead of by epoch.
    pub by_step: bool,
    pub printer: Box<dyn FnMut(Progress) + 'a>,
    /// Set when the pruner stopped the trial.
    pub pruned: bool,
    /// A failure to record an epoch in the study (the run stops at once).
    pub error: Option<PipelineError>,
}

impl TrainHooks for TrialHooks<'_> {
    fn on_step(&mut self, progress: Progress) {
        (self.printer)(progress);
    }

    fn on_epoch(&mut self, metrics: &EpochMetrics) -> bool {
        let key = if self.by_step {
            metrics.step
        } else {
            metrics.epoch
        };
        if let Err(e) = self.study.report(self.number, key, metrics.f1) {
            self.error = Some(e.into());
            return false;
        }
        // The warmup counts epochs either way: no evaluation of an epoch before it is pruned.
        if let Some(prune) = self.prune
            && metrics.epoch >= prune.warmup_epochs
            && self
                .study
                .median_prunes(self.number, key, prune.startup_trials, 0)
        {
            self.pruned = true;
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_sets_its_parameters_over_the_trainer_defaults() {
        let params: BTreeMap<String, serde_json::Value> = serde_json::from_str(
            r#"{"learning_rate": 0.001, "batch_size": 16, "warmup_steps": 3, "weight_decay": 0.01}"#,
        )
        .unwrap();
        let base = TrainConfig {
            epochs: 3,
            seed: 7,
            ..TrainConfig::default()
        };
        let config = trial_config(&params, &base).unwrap();
        assert_eq!(config.learning_rate, 0.001);
        assert_eq!(config.batch_size, 16);
        assert_eq!(config.warmup_steps, 3);
        assert_eq!(config.optimizer.weight_decay, 0.01);
        assert_eq!((config.epochs, config.seed), (3, 7));
        // Untouched settings keep the Trainer's defaults.
        assert_eq!(config.optimizer.max_grad_norm, 1.0);
        assert_eq!(
            config.eval_batch_size,
            TrainConfig::default().eval_batch_size
        );
    }

    #[test]
    fn an_unknown_or_non_numeric_parameter_is_refused() {
        let unknown: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(r#"{"dropout": 0.1}"#).unwrap();
        let err = trial_config(&unknown, &TrainConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`dropout`"), "{err}");
        let text: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(r#"{"batch_size": "large"}"#).unwrap();
        let err = trial_config(&text, &TrainConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("batch_size") && err.contains("not a number"),
            "{err}"
        );
    }
}
