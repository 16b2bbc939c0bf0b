//! Property tests of the stratified sample and split.

use proptest::prelude::*;
use sentiment_data::{Split, SplitRatios, apportion, stratified_sample, stratified_split};

/// Labels over 1..=4 classes, and ratios that sum to 1.
fn labels_and_ratios() -> impl Strategy<Value = (usize, Vec<u32>, SplitRatios)> {
    (1usize..=4)
        .prop_flat_map(|k| (Just(k), prop::collection::vec(0..k as u32, 0..400)))
        .prop_flat_map(|(k, labels)| {
            (Just(k), Just(labels), 1u32..100, 0u32..100, 0u32..100).prop_map(
                |(k, labels, a, b, c)| {
                    let total = f64::from(a + b + c);
                    let ratios = SplitRatios::new(
                        f64::from(a) / total,
                        f64::from(b) / total,
                        1.0 - f64::from(a) / total - f64::from(b) / total,
                    )
                    .unwrap();
                    (k, labels, ratios)
                },
            )
        })
}

proptest! {
    #[test]
    fn apportion_sums_and_stays_within_one_of_the_share(
        n in 0usize..100_000,
        weights in prop::collection::vec(0.0f64..10.0, 1..6),
    ) {
        let parts = apportion(n, &weights);
        prop_assert_eq!(parts.iter().sum::<usize>(), n);
        let total: f64 = weights.iter().sum();
        if total > 0.0 {
            for (part, w) in parts.iter().zip(&weights) {
                prop_assert!((*part as f64 - n as f64 * w / total).abs() < 1.0 + 1e-9);
            }
        }
    }

    #[test]
    fn split_is_complete_stratified_and_deterministic(
        (k, labels, ratios) in labels_and_ratios(),
        seed in any::<u64>(),
    ) {
        let split = stratified_split(&labels, k, ratios, seed);
        for class in 0..k as u32 {
            let in_class = labels.iter().filter(|&&l| l == class).count() as f64;
            for (s, ratio) in Split::ALL.iter().zip(ratios.as_array()) {
                let count = labels
                    .iter()
                    .zip(&split)
                    .filter(|&(&l, x)| l == class && x == s)
                    .count() as f64;
                prop_assert!((count - in_class * ratio).abs() < 1.0 + 1e-9,
                    "class {} split {:?}: {} vs share {}", class, s, count, in_class * ratio);
            }
        }
        prop_assert_eq!(stratified_split(&labels, k, ratios, seed), split);
    }

    #[test]
    fn sample_keeps_class_proportions(
        (k, labels, _ratios) in labels_and_ratios(),
        fraction in 0.0f64..=1.0,
        seed in any::<u64>(),
    ) {
        let n = (labels.len() as f64 * fraction) as usize;
        let chosen = stratified_sample(&labels, k, n, seed).unwrap();
        prop_assert_eq!(chosen.len(), n);
        prop_assert!(chosen.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
        prop_assert!(chosen.iter().all(|&i| i < labels.len()));
        for class in 0..k as u32 {
            let total = labels.iter().filter(|&&l| l == class).count() as f64;
            let picked = chosen.iter().filter(|&&i| labels[i] == class).count() as f64;
            let share = n as f64 * total / labels.len().max(1) as f64;
            prop_assert!((picked - share).abs() < 1.0 + 1e-9);
        }
        prop_assert_eq!(stratified_sample(&labels, k, n, seed).unwrap(), chosen);
    }
}

#[test]
fn different_seeds_give_different_splits() {
    let labels: Vec<u32> = (0..1_000).map(|i| i % 2).collect();
    let a = stratified_split(&labels, 2, SplitRatios::default(), 734);
    let b = stratified_split(&labels, 2, SplitRatios::default(), 735);
    assert_ne!(a, b);
}
