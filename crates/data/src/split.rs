//! Seeded stratified sampling and splitting: pure functions over class labels.
//!
//! Everything here runs on one thread from one seeded ChaCha stream, so the result depends on
//! the labels and the seed only, never on the machine or the thread count.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::DataError;

/// The three splits, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Rows the model is trained on.
    Train,
    /// Rows evaluated every epoch to pick hyperparameters and the best checkpoint.
    Validation,
    /// Rows held out for the final evaluation only.
    Test,
}

impl Split {
    /// All splits, in the order their counts are apportioned.
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    /// The split's name, also its file stem (`train.parquet`).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    /// The file `prepare` writes the split to, inside its output folder.
    pub fn file_name(self) -> String {
        format!("{}.parquet", self.name())
    }

    /// Position in [`Split::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Fractions of each class that go to train, validation and test; they sum to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitRatios {
    /// Fraction for training (0.7 in the notebook).
    pub train: f64,
    /// Fraction for validation (0.15).
    pub validation: f64,
    /// Fraction for the test set (0.15).
    pub test: f64,
}

impl Default for SplitRatios {
    /// The notebook's 70/15/15.
    fn default() -> Self {
        Self {
            train: 0.7,
            validation: 0.15,
            test: 0.15,
        }
    }
}

impl SplitRatios {
    /// Checks that every ratio is finite, non-negative and that they sum to 1 (within 1e-6).
    pub fn new(train: f64, validation: f64, test: f64) -> Result<Self, DataError> {
        // Ratios computed by a caller (1 - a - b) may come out a rounding error below 0.
        let clamp = |r: f64| if (-1e-9..0.0).contains(&r) { 0.0 } else { r };
        let ratios = Self {
            train: clamp(train),
            validation: clamp(validation),
            test: clamp(test),
        };
        let all = ratios.as_array();
        if all.iter().any(|r| !r.is_finite() || *r < 0.0) {
            return Err(DataError::InvalidRatios(format!(
                "{train}/{validation}/{test}: every ratio must be a finite number >= 0"
            )));
        }
        let sum: f64 = all.iter().sum();
        if (sum - 1.0).abs() > 1e-6 {
            return Err(DataError::InvalidRatios(format!(
                "{train}/{validation}/{test} sum to {sum}, not 1"
            )));
        }
        Ok(ratios)
    }

    /// The ratios in [`Split::ALL`] order.
    pub fn as_array(&self) -> [f64; 3] {
        [self.train, self.validation, self.test]
    }
}

/// Divides `n` items into parts proportional to `weights` by the largest-remainder method:
/// every part is within one item of its exact share and the parts sum to `n`. Ties in the
/// remainders go to the earlier part, so the result is deterministic.
pub fn apportion(n: usize, weights: &[f64]) -> Vec<usize> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 || weights.is_empty() {
        let mut parts = vec![0; weights.len()];
        if let Some(first) = parts.first_mut() {
            *first = n;
        }
        return parts;
    }
    let shares: Vec<f64> = weights.iter().map(|w| n as f64 * w / total).collect();
    let mut parts: Vec<usize> = shares.iter().map(|s| s.floor() as usize).collect();
    let assigned: usize = parts.iter().sum();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Stable sort: equal remainders keep index order.
    order.sort_by(|&a, &b| {
        let fa = shares[a] - shares[a].floor();
        let fb = shares[b] - shares[b].floor();
        fb.total_cmp(&fa)
    });
    for &i in order.iter().take(n.saturating_sub(assigned)) {
        parts[i] += 1;
    }
    parts
}

fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Row indices grouped by class, each group in ascending order.
fn rows_by_class(labels: &[u32], num_classes: usize) -> Vec<Vec<u32>> {
    let mut groups = vec![Vec::new(); num_classes];
    for (row, &label) in labels.iter().enumerate() {
        groups[label as usize].push(row as u32);
    }
    groups
}

/// Picks `n` of the rows so that each class keeps its share of the total (largest remainder),
/// uniformly at random within each class. Returns the chosen row indices in ascending order.
///
/// `labels[i]` must be below `num_classes`.
pub fn stratified_sample(
    labels: &[u32],
    num_classes: usize,
    n: usize,
    seed: u64,
) -> Result<Vec<usize>, DataError> {
    if n > labels.len() {
        return Err(DataError::SampleTooLarge {
            requested: n,
            available: labels.len(),
        });
    }
    let groups = rows_by_class(labels, num_classes);
    let weights: Vec<f64> = groups.iter().map(|g| g.len() as f64).collect();
    let per_class = apportion(n, &weights);
    let mut rng = rng(seed, 1);
    let mut chosen = Vec::with_capacity(n);
    for (mut group, take) in groups.into_iter().zip(per_class) {
        group.shuffle(&mut rng);
        chosen.extend(group[..take].iter().map(|&r| r as usize));
    }
    chosen.sort_unstable();
    Ok(chosen)
}

/// Assigns every row to a split: within each class the rows are shuffled with the seed and cut
/// into parts apportioned from `ratios`, so each class is split as evenly as integers allow.
///
/// `labels[i]` must be below `num_classes`.
pub fn stratified_split(
    labels: &[u32],
    num_classes: usize,
    ratios: SplitRatios,
    seed: u64,
) -> Vec<Split> {
    let mut assignment = vec![Split::Train; labels.len()];
    let mut rng = rng(seed, 2);
    for mut group in rows_by_class(labels, num_classes) {
        let counts = apportion(group.len(), &ratios.as_array());
        group.shuffle(&mut rng);
        let mut rows = group.into_iter();
        for (split, count) in Split::ALL.into_iter().zip(counts) {
            for row in rows.by_ref().take(count) {
                assignment[row as usize] = split;
            }
        }
    }
    assignment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportion_examples() {
        assert_eq!(apportion(10, &[0.7, 0.15, 0.15]), vec![7, 2, 1]);
        assert_eq!(
            apportion(10_000, &[0.7, 0.15, 0.15]),
            vec![7000, 1500, 1500]
        );
        assert_eq!(apportion(1, &[0.7, 0.15, 0.15]), vec![1, 0, 0]);
        assert_eq!(apportion(3, &[1.0, 1.0, 1.0]), vec![1, 1, 1]);
        assert_eq!(apportion(5, &[0.0, 0.0]), vec![5, 0]);
    }

    #[test]
    fn ratios_are_validated() {
        assert!(SplitRatios::new(0.8, 0.1, 0.1).is_ok());
        assert!(SplitRatios::new(0.8, 0.1, 0.2).is_err());
        assert!(SplitRatios::new(1.2, -0.1, -0.1).is_err());
        assert!(SplitRatios::new(f64::NAN, 0.5, 0.5).is_err());
    }

    #[test]
    fn notebook_sizes() {
        // 10,000 balanced rows split 70/15/15 give the notebook's 7,000 / 1,500 / 1,500.
        let labels: Vec<u32> = (0..10_000).map(|i| i % 2).collect();
        let split = stratified_split(&labels, 2, SplitRatios::default(), 734);
        let count = |s| split.iter().filter(|&&x| x == s).count();
        assert_eq!(
            (
                count(Split::Train),
                count(Split::Validation),
                count(Split::Test)
            ),
            (7000, 1500, 1500)
        );
    }

    #[test]
    fn sample_too_large_is_an_error() {
        let err = stratified_sample(&[0, 1], 2, 3, 1).unwrap_err();
        assert!(err.to_string().contains("3"), "{err}");
    }
}
