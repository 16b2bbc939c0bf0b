//! The baseline against scikit-learn's outputs (`fixtures/baseline/generate.py`).

use sentiment_baseline::{BagOfWords, LogisticRegression, tokens};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    train_rows: usize,
    tokens: Vec<Tokens>,
    binary: Fit,
    three_classes: Fit,
}

#[derive(Deserialize)]
struct Tokens {
    text: String,
    tokens: Vec<String>,
}

#[derive(Deserialize)]
struct Fit {
    classes: usize,
    n_features: usize,
    first_features: Vec<String>,
    coef: std::collections::BTreeMap<String, Vec<f64>>,
    intercept: Vec<f64>,
    test_proba: Vec<Vec<f64>>,
    test_predict: Vec<usize>,
}

fn fixture(path: &str) -> String {
    format!("{}/../../fixtures/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(fixture("baseline/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The texts and labels the generator read.
fn sample() -> (Vec<String>, Vec<usize>) {
    let mut reader = csv::Reader::from_path(fixture("sentiment140/sample_cleaned.csv")).unwrap();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].to_string(), r[1].parse::<usize>().unwrap())
        })
        .unzip()
}

#[test]
fn tokens_equal_the_default_analyzer() {
    for case in reference().tokens {
        assert_eq!(tokens(&case.text), case.tokens, "{:?}", case.text);
    }
}

fn check(fit: &Fit, labels: &[usize], train_rows: usize) {
    let (texts, _) = sample();
    let (train, test) = texts.split_at(train_rows);
    let settings = LogisticRegression {
        tol: 1e-10,
        ..LogisticRegression::default()
    };
    let model = BagOfWords::fit(
        train.iter().map(String::as_str),
        &labels[..train_rows],
        fit.classes,
        &settings,
    )
    .unwrap();
    assert!(
        model.model.converged,
        "{} iterations",
        model.model.iterations
    );
    let names = model.vectorizer.feature_names();
    assert_eq!(names.len(), fit.n_features);
    assert_eq!(&names[..fit.first_features.len()], fit.first_features);
    for (term, expected) in &fit.coef {
        let feature = names.iter().position(|n| n == term).unwrap();
        for (k, &e) in expected.iter().enumerate() {
            let ours = model.model.coef(k)[feature];
            assert!(
                (ours - e).abs() < 1e-6,
                "coef of {term:?}, output {k}: {ours} vs {e}"
            );
        }
    }
    for (k, &e) in fit.intercept.iter().enumerate() {
        let ours = model.model.intercept(k);
        assert!((ours - e).abs() < 1e-6, "intercept {k}: {ours} vs {e}");
    }
    let rows = model.vectorizer.transform(test.iter().map(String::as_str));
    let proba = model.model.predict_proba(&rows);
    for (i, expected) in fit.test_proba.iter().enumerate() {
        for (k, &e) in expected.iter().enumerate() {
            let ours = proba[i * fit.classes + k];
            // Both sides stop where the objective stops changing in float precision, which
            // leaves the probabilities about 1e-7 apart on this ill-conditioned problem.
            assert!(
                (ours - e).abs() < 1e-6,
                "test row {i}, class {k}: {ours} vs {e}"
            );
        }
    }
    assert_eq!(model.model.predict(&rows), fit.test_predict);
}

#[test]
fn binary_fit_equals_scikit_learn() {
    let reference = reference();
    let (_, labels) = sample();
    check(&reference.binary, &labels, reference.train_rows);
}

#[test]
fn multinomial_fit_equals_scikit_learn() {
    let reference = reference();
    let (_, binary) = sample();
    let labels: Vec<usize> = binary
        .iter()
        .enumerate()
        .map(|(i, &y)| if i % 5 == 0 { 2 } else { y })
        .collect();
    check(&reference.three_classes, &labels, reference.train_rows);
}
