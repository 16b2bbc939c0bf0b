//! Metrics against scikit-learn's values and against brute-force definitions.

use approx::assert_abs_diff_eq;
use proptest::prelude::*;
use sentiment_metrics::{
    ConfusionMatrix, MetricsError, argmax_rows, log_loss_from_logits, log_loss_from_probabilities,
};

/// scikit-learn's values, from `fixtures/metrics/reference.json` (made by
/// `fixtures/metrics/generate_reference.py`).
fn reference() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/metrics/reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn labels(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn number(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap()
}

#[test]
fn binary_matches_scikit_learn() {
    let r = &reference()["binary"];
    let m = ConfusionMatrix::from_labels(&labels(&r["true"]), &labels(&r["predicted"]), 2).unwrap();
    let b = m.binary(1);
    assert_abs_diff_eq!(b.accuracy, number(&r["accuracy"]), epsilon = 1e-12);
    assert_abs_diff_eq!(b.precision, number(&r["precision"]), epsilon = 1e-12);
    assert_abs_diff_eq!(b.recall, number(&r["recall"]), epsilon = 1e-12);
    assert_abs_diff_eq!(b.f1, number(&r["f1"]), epsilon = 1e-12);
    assert_abs_diff_eq!(
        m.binary(0).precision,
        number(&r["precision_of_0"]),
        epsilon = 1e-12
    );
    assert_abs_diff_eq!(
        m.macro_average().f1,
        number(&r["macro_f1"]),
        epsilon = 1e-12
    );
    let matrix: Vec<Vec<u64>> = serde_json::from_value(r["confusion_matrix"].clone()).unwrap();
    assert_eq!(m.rows(), matrix);
}

#[test]
fn multiclass_averages_match_scikit_learn() {
    let r = &reference()["multiclass"];
    let m = ConfusionMatrix::from_labels(&labels(&r["true"]), &labels(&r["predicted"]), 3).unwrap();
    for (ours, key) in [
        (m.macro_average(), "macro"),
        (m.weighted_average(), "weighted"),
    ] {
        let want: Vec<f64> = serde_json::from_value(r[key].clone()).unwrap();
        assert_abs_diff_eq!(ours.precision, want[0], epsilon = 1e-12);
        assert_abs_diff_eq!(ours.recall, want[1], epsilon = 1e-12);
        assert_abs_diff_eq!(ours.f1, want[2], epsilon = 1e-12);
    }
}

/// ```python
/// precision_score([0, 0, 1], [0, 0, 0], zero_division=0)  # 0.0 (no predicted positive)
/// recall_score([0, 0, 0], [0, 1, 0], zero_division=0)     # 0.0 (no actual positive)
/// f1_score([0, 0, 1], [0, 0, 0], zero_division=0)         # 0.0
/// ```
#[test]
fn zero_division_is_zero() {
    let m = ConfusionMatrix::from_labels(&[0, 0, 1], &[0, 0, 0], 2).unwrap();
    assert_eq!(m.binary(1).precision, 0.0);
    assert_eq!(m.binary(1).f1, 0.0);
    let m = ConfusionMatrix::from_labels(&[0, 0, 0], &[0, 1, 0], 2).unwrap();
    assert_eq!(m.binary(1).recall, 0.0);
}

#[test]
fn log_loss_matches_scikit_learn() {
    let r = &reference()["log_loss"];
    let logits: Vec<f32> = serde_json::from_value(r["logits"].clone()).unwrap();
    let loss = log_loss_from_logits(&labels(&r["logit_labels"]), &logits, 2).unwrap();
    assert_abs_diff_eq!(loss, number(&r["from_logits"]), epsilon = 1e-7);
    let probabilities: Vec<f32> = serde_json::from_value(r["probabilities"].clone()).unwrap();
    let loss =
        log_loss_from_probabilities(&labels(&r["probability_labels"]), &probabilities, 3).unwrap();
    assert_abs_diff_eq!(loss, number(&r["from_probabilities"]), epsilon = 1e-7);
}

#[test]
fn bad_inputs_are_errors() {
    assert_eq!(
        ConfusionMatrix::from_labels(&[0, 1], &[0], 2),
        Err(MetricsError::LengthMismatch {
            what: "true and predicted labels",
            left: 2,
            right: 1
        })
    );
    assert!(matches!(
        ConfusionMatrix::from_labels(&[0, 2], &[0, 1], 2),
        Err(MetricsError::LabelOutOfRange {
            index: 1,
            label: 2,
            ..
        })
    ));
    assert_eq!(ConfusionMatrix::new(0), Err(MetricsError::NoClasses));
    assert!(matches!(
        log_loss_from_logits(&[0], &[f32::NAN, 1.0], 2),
        Err(MetricsError::NonFinite { index: 0, .. })
    ));
    assert_eq!(log_loss_from_logits(&[], &[], 2), Err(MetricsError::Empty));
    assert!(argmax_rows(&[1.0, 2.0, 3.0], 2).is_err());
}

#[test]
fn argmax_takes_the_first_of_ties() {
    assert_eq!(argmax_rows(&[1.0, 1.0, 0.0, 2.0], 2).unwrap(), vec![0, 1]);
    let m = ConfusionMatrix::from_logits(&[0, 1], &[1.0, 1.0, 0.0, 2.0], 2).unwrap();
    assert_eq!(m.accuracy(), 1.0);
}

#[test]
fn report_round_trips_through_json() {
    let m = ConfusionMatrix::from_labels(&[0, 1, 1], &[0, 1, 0], 2).unwrap();
    let report = m.report(1);
    let json = serde_json::to_string(&report).unwrap();
    assert_eq!(
        serde_json::from_str::<sentiment_metrics::ClassificationReport>(&json).unwrap(),
        report
    );
    let matrix_json = serde_json::to_string(&m).unwrap();
    assert_eq!(
        serde_json::from_str::<ConfusionMatrix>(&matrix_json).unwrap(),
        m
    );
}

/// Labels and predictions of the same length over `k` classes.
fn labelled(max_classes: usize) -> impl Strategy<Value = (usize, Vec<(usize, usize)>)> {
    (1..=max_classes).prop_flat_map(|k| (Just(k), prop::collection::vec((0..k, 0..k), 1..200)))
}

fn brute_force_scores(pairs: &[(usize, usize)], class: usize) -> (f64, f64) {
    let tp = pairs
        .iter()
        .filter(|&&(t, p)| t == class && p == class)
        .count();
    let predicted = pairs.iter().filter(|&&(_, p)| p == class).count();
    let actual = pairs.iter().filter(|&&(t, _)| t == class).count();
    let div = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    (div(tp, predicted), div(tp, actual))
}

proptest! {
    #[test]
    fn scores_are_probabilities_and_match_brute_force((k, pairs) in labelled(4)) {
        let (truth, predicted): (Vec<usize>, Vec<usize>) = pairs.iter().copied().unzip();
        let m = ConfusionMatrix::from_labels(&truth, &predicted, k).unwrap();
        prop_assert_eq!(m.total(), pairs.len() as u64);
        let correct = pairs.iter().filter(|(t, p)| t == p).count();
        prop_assert!((m.accuracy() - correct as f64 / pairs.len() as f64).abs() < 1e-12);
        for class in 0..k {
            let s = m.class_scores(class);
            for v in [s.precision, s.recall, s.f1] {
                prop_assert!((0.0..=1.0).contains(&v));
            }
            let (precision, recall) = brute_force_scores(&pairs, class);
            prop_assert!((s.precision - precision).abs() < 1e-12);
            prop_assert!((s.recall - recall).abs() < 1e-12);
            // F1 is the harmonic mean of precision and recall.
            if s.precision + s.recall > 0.0 {
                let harmonic = 2.0 / (1.0 / s.precision.max(1e-300) + 1.0 / s.recall.max(1e-300));
                prop_assert!((s.f1 - harmonic).abs() < 1e-9);
                prop_assert!(s.f1 <= s.precision.max(s.recall) + 1e-12);
                prop_assert!(s.f1 >= s.precision.min(s.recall) - 1e-12);
            } else {
                prop_assert_eq!(s.f1, 0.0);
            }
        }
        for avg in [m.macro_average(), m.weighted_average()] {
            for v in [avg.precision, avg.recall, avg.f1] {
                prop_assert!((0.0..=1.0 + 1e-12).contains(&v));
            }
        }
        // Weighted recall is accuracy, by definition.
        prop_assert!((m.weighted_average().recall - m.accuracy()).abs() < 1e-12);
    }

    #[test]
    fn invariant_under_permutation((k, pairs) in labelled(3), seed in any::<u64>()) {
        let (truth, predicted): (Vec<usize>, Vec<usize>) = pairs.iter().copied().unzip();
        let m = ConfusionMatrix::from_labels(&truth, &predicted, k).unwrap();
        // A deterministic shuffle driven by the seed.
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        let mut state = seed | 1;
        for i in (1..order.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let t2: Vec<usize> = order.iter().map(|&i| truth[i]).collect();
        let p2: Vec<usize> = order.iter().map(|&i| predicted[i]).collect();
        let m2 = ConfusionMatrix::from_labels(&t2, &p2, k).unwrap();
        prop_assert_eq!(&m, &m2);
        prop_assert_eq!(m.report(0), m2.report(0));
    }

    #[test]
    fn log_loss_is_non_negative_and_matches_probabilities(
        rows in prop::collection::vec((prop::collection::vec(-10.0f32..10.0, 3), 0usize..3), 1..50)
    ) {
        let truth: Vec<usize> = rows.iter().map(|r| r.1).collect();
        let logits: Vec<f32> = rows.iter().flat_map(|r| r.0.clone()).collect();
        let from_logits = log_loss_from_logits(&truth, &logits, 3).unwrap();
        prop_assert!(from_logits >= 0.0);
        let probabilities: Vec<f32> = rows.iter().flat_map(|r| {
            let max = r.0.iter().fold(f32::MIN, |a, &b| a.max(b));
            let e: Vec<f64> = r.0.iter().map(|&v| ((v - max) as f64).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| (v / s) as f32)
        }).collect();
        let from_probabilities = log_loss_from_probabilities(&truth, &probabilities, 3).unwrap();
        prop_assert!((from_logits - from_probabilities).abs() < 1e-4);
    }
}
