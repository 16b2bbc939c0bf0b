//! Classification metrics with scikit-learn's definitions: a confusion matrix, accuracy,
//! precision, recall and F1 per class, binary (one positive class), macro and weighted averages,
//! and log loss, computed from labels or from logits.
//!
//! Undefined ratios (no predicted positives for precision, no actual positives for recall)
//! are 0, as scikit-learn's `zero_division=0` makes them.
//!
//! ```
//! use sentiment_metrics::ConfusionMatrix;
//!
//! let matrix = ConfusionMatrix::from_labels(&[0, 1, 1, 0], &[0, 1, 0, 0], 2)?;
//! let binary = matrix.binary(1);
//! assert_eq!(binary.accuracy, 0.75);
//! assert_eq!(binary.precision, 1.0);
//! assert_eq!(binary.recall, 0.5);
//! # Ok::<(), sentiment_metrics::MetricsError>(())
//! ```

use serde::{Deserialize, Serialize};

/// Why metrics could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// Two inputs that must be the same length are not.
    #[error("{what}: {left} vs {right} items")]
    LengthMismatch {
        /// Which inputs.
        what: &'static str,
        /// First length.
        left: usize,
        /// Second length.
        right: usize,
    },
    /// A label is not below the class count.
    #[error("label {label} at index {index} is not below the class count {num_classes}")]
    LabelOutOfRange {
        /// Position of the label.
        index: usize,
        /// The label.
        label: usize,
        /// Number of classes.
        num_classes: usize,
    },
    /// Fewer than one class.
    #[error("the number of classes must be at least 1")]
    NoClasses,
    /// A logit or probability is NaN or infinite.
    #[error("non-finite value {value} at sample {index}")]
    NonFinite {
        /// Sample index.
        index: usize,
        /// The value.
        value: f64,
    },
    /// Nothing to average over.
    #[error("no samples")]
    Empty,
}

/// Counts of (true class, predicted class) pairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    num_classes: usize,
    /// Row-major `[true][predicted]` counts.
    counts: Vec<u64>,
}

/// Precision, recall and F1 of one class or one average.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrecisionRecallF1 {
    /// Of the samples predicted in the class, the fraction that are in it.
    pub precision: f64,
    /// Of the samples in the class, the fraction predicted in it.
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
}

/// The notebook's four numbers: accuracy, and precision / recall / F1 of one positive class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// Precision of the positive class.
    pub precision: f64,
    /// Recall of the positive class.
    pub recall: f64,
    /// F1 of the positive class.
    pub f1: f64,
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

fn harmonic_mean(precision: f64, recall: f64) -> f64 {
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

impl ConfusionMatrix {
    /// An all-zero matrix for `num_classes` classes.
    pub fn new(num_classes: usize) -> Result<Self, MetricsError> {
        if num_classes == 0 {
            return Err(MetricsError::NoClasses);
        }
        Ok(Self {
            num_classes,
            counts: vec![0; num_classes * num_classes],
        })
    }

    /// Counts the pairs `(truth[i], predicted[i])`.
    pub fn from_labels(
        truth: &[usize],
        predicted: &[usize],
        num_classes: usize,
    ) -> Result<Self, MetricsError> {
        if truth.len() != predicted.len() {
            return Err(MetricsError::LengthMismatch {
                what: "true and predicted labels",
                left: truth.len(),
                right: predicted.len(),
            });
        }
        let mut matrix = Self::new(num_classes)?;
        for (index, (&t, &p)) in truth.iter().zip(predicted).enumerate() {
            matrix.add(index, t, p)?;
        }
        Ok(matrix)
    }

    /// Counts the argmax of each row of `logits` (row-major, `num_classes` per sample) against
    /// `truth`. Probabilities work too: the argmax is the same.
    pub fn from_logits(
        truth: &[usize],
        logits: &[f32],
        num_classes: usize,
    ) -> Result<Self, MetricsError> {
        let predicted = argmax_rows(logits, num_classes)?;
        Self::from_labels(truth, &predicted, num_classes)
    }

    /// Adds one pair; `index` only labels the error.
    pub fn add(
        &mut self,
        index: usize,
        truth: usize,
        predicted: usize,
    ) -> Result<(), MetricsError> {
        for label in [truth, predicted] {
            if label >= self.num_classes {
                return Err(MetricsError::LabelOutOfRange {
                    index,
                    label,
                    num_classes: self.num_classes,
                });
            }
        }
        self.counts[truth * self.num_classes + predicted] += 1;
        Ok(())
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Samples of class `truth` predicted as `predicted`.
    pub fn count(&self, truth: usize, predicted: usize) -> u64 {
        self.counts[truth * self.num_classes + predicted]
    }

    /// The matrix as rows of true classes, as scikit-learn's `confusion_matrix` prints it.
    pub fn rows(&self) -> Vec<Vec<u64>> {
        self.counts
            .chunks(self.num_classes)
            .map(<[u64]>::to_vec)
            .collect()
    }

    /// Number of samples.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Samples whose true class is `class` (its support).
    pub fn support(&self, class: usize) -> u64 {
        (0..self.num_classes).map(|p| self.count(class, p)).sum()
    }

    fn predicted_as(&self, class: usize) -> u64 {
        (0..self.num_classes).map(|t| self.count(t, class)).sum()
    }

    /// Fraction of correct predictions (0 for an empty matrix).
    pub fn accuracy(&self) -> f64 {
        let correct = (0..self.num_classes).map(|c| self.count(c, c)).sum();
        ratio(correct, self.total())
    }

    /// Precision, recall and F1 of one class.
    pub fn class_scores(&self, class: usize) -> PrecisionRecallF1 {
        let true_positives = self.count(class, class);
        let precision = ratio(true_positives, self.predicted_as(class));
        let recall = ratio(true_positives, self.support(class));
        PrecisionRecallF1 {
            precision,
            recall,
            f1: harmonic_mean(precision, recall),
        }
    }

    /// Accuracy plus the scores of `positive`: scikit-learn's `average="binary"`.
    pub fn binary(&self, positive: usize) -> BinaryMetrics {
        let scores = self.class_scores(positive);
        BinaryMetrics {
            accuracy: self.accuracy(),
            precision: scores.precision,
            recall: scores.recall,
            f1: scores.f1,
        }
    }

    /// Unweighted mean of the per-class scores (`average="macro"`; the F1 is the mean of the
    /// per-class F1s, not the F1 of the mean precision and recall).
    pub fn macro_average(&self) -> PrecisionRecallF1 {
        self.average(|_| 1.0)
    }

    /// Mean of the per-class scores weighted by support (`average="weighted"`).
    pub fn weighted_average(&self) -> PrecisionRecallF1 {
        self.average(|class| self.support(class) as f64)
    }

    fn average(&self, weight: impl Fn(usize) -> f64) -> PrecisionRecallF1 {
        let total: f64 = (0..self.num_classes).map(&weight).sum();
        let mut sum = PrecisionRecallF1 {
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
        };
        if total == 0.0 {
            return sum;
        }
        for class in 0..self.num_classes {
            let w = weight(class) / total;
            let scores = self.class_scores(class);
            sum.precision += w * scores.precision;
            sum.recall += w * scores.recall;
            sum.f1 += w * scores.f1;
        }
        sum
    }

    /// Every metric of this crate in one serialisable value.
    pub fn report(&self, positive: usize) -> ClassificationReport {
        ClassificationReport {
            binary: self.binary(positive),
            positive_class: positive,
            macro_average: self.macro_average(),
            weighted_average: self.weighted_average(),
            per_class: (0..self.num_classes)
                .map(|c| self.class_scores(c))
                .collect(),
            confusion_matrix: self.rows(),
        }
    }
}

/// A full evaluation summary, as written to metrics files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    /// Accuracy and the positive class's precision, recall and F1.
    pub binary: BinaryMetrics,
    /// The class counted as positive in `binary`.
    pub positive_class: usize,
    /// Macro averages.
    pub macro_average: PrecisionRecallF1,
    /// Support-weighted averages.
    pub weighted_average: PrecisionRecallF1,
    /// Scores of each class, by class id.
    pub per_class: Vec<PrecisionRecallF1>,
    /// `[true][predicted]` counts.
    pub confusion_matrix: Vec<Vec<u64>>,
}

/// Index of the largest value of each row (the first on ties, as numpy's `argmax`).
pub fn argmax_rows(values: &[f32], num_classes: usize) -> Result<Vec<usize>, MetricsError> {
    check_rows(values, num_classes)?;
    Ok(values
        .chunks(num_classes)
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best
        })
        .collect())
}

fn check_rows(values: &[f32], num_classes: usize) -> Result<(), MetricsError> {
    if num_classes == 0 {
        return Err(MetricsError::NoClasses);
    }
    if !values.len().is_multiple_of(num_classes) {
        return Err(MetricsError::LengthMismatch {
            what: "values and a whole number of rows",
            left: values.len(),
            right: values.len().div_ceil(num_classes) * num_classes,
        });
    }
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(MetricsError::NonFinite {
            index: index / num_classes,
            value: f64::from(values[index]),
        });
    }
    Ok(())
}

/// Mean cross-entropy of the true classes under `softmax(logits)`, computed in f64 with the
/// log-sum-exp trick (exact, no clipping needed).
pub fn log_loss_from_logits(
    truth: &[usize],
    logits: &[f32],
    num_classes: usize,
) -> Result<f64, MetricsError> {
    check_rows(logits, num_classes)?;
    check_samples(truth, logits.len() / num_classes, num_classes)?;
    let total: f64 = logits
        .chunks(num_classes)
        .zip(truth)
        .map(|(row, &t)| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let log_sum: f64 = row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            log_sum - row[t] as f64
        })
        .sum();
    Ok(total / truth.len() as f64)
}

/// Mean negative log-probability of the true classes, with probabilities clipped to
/// `[eps, 1 - eps]` (`eps` = f64 machine epsilon) and each row renormalised, as scikit-learn's
/// `log_loss` does.
pub fn log_loss_from_probabilities(
    truth: &[usize],
    probabilities: &[f32],
    num_classes: usize,
) -> Result<f64, MetricsError> {
    check_rows(probabilities, num_classes)?;
    check_samples(truth, probabilities.len() / num_classes, num_classes)?;
    let eps = f64::EPSILON;
    let total: f64 = probabilities
        .chunks(num_classes)
        .zip(truth)
        .map(|(row, &t)| {
            let clipped: Vec<f64> = row
                .iter()
                .map(|&p| (p as f64).clamp(eps, 1.0 - eps))
                .collect();
            let sum: f64 = clipped.iter().sum();
            -(clipped[t] / sum).ln()
        })
        .sum();
    Ok(total / truth.len() as f64)
}

fn check_samples(truth: &[usize], rows: usize, num_classes: usize) -> Result<(), MetricsError> {
    if truth.len() != rows {
        return Err(MetricsError::LengthMismatch {
            what: "labels and score rows",
            left: truth.len(),
            right: rows,
        });
    }
    if truth.is_empty() {
        return Err(MetricsError::Empty);
    }
    if let Some(index) = truth.iter().position(|&t| t >= num_classes) {
        return Err(MetricsError::LabelOutOfRange {
            index,
            label: truth[index],
            num_classes,
        });
    }
    Ok(())
}
