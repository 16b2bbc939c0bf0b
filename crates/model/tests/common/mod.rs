//! What the parity tests against transformers share: the fixtures, their reference outputs
//! (JSON from the `fixtures/model/generate_*.py` scripts) and the comparison.

// Each test binary uses its part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde_json::Value;

/// Largest absolute difference allowed against the reference (f32; the references are
/// rounded to 6 decimals).
pub const TOLERANCE: f32 = 1e-5;

/// `fixtures/model`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/model")
}

/// The reference outputs in `fixtures/model/NAME`.
pub fn reference(name: &str) -> Value {
    let path = fixtures().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A reference array's numbers in order (nested arrays flattened, row by row), as f32.
pub fn floats(v: &Value) -> Vec<f32> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items.iter().rev()),
            other => out.push(
                other
                    .as_f64()
                    .unwrap_or_else(|| panic!("a number, not {other}")) as f32,
            ),
        }
    }
    out
}

/// A reference array of ids as a `[batch, seq]` tensor.
pub fn ints(v: &Value, batch: usize, seq: usize, device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = v
        .as_array()
        .unwrap_or_else(|| panic!("an array of ids, not {v}"))
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    Tensor::from_data(TensorData::new(data, [batch, seq]), device)
}

/// The reference's `(batch, seq)`.
pub fn batch_and_seq(r: &Value) -> (usize, usize) {
    (
        r["batch"].as_u64().unwrap() as usize,
        r["seq"].as_u64().unwrap() as usize,
    )
}

/// The reference's input ids and attention mask.
pub fn inputs(r: &Value, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let (batch, seq) = batch_and_seq(r);
    (
        ints(&r["input_ids"], batch, seq, device),
        ints(&r["attention_mask"], batch, seq, device),
    )
}

/// `actual` within [`TOLERANCE`] of `expected`, element by element.
pub fn assert_close(actual: Tensor<2>, expected: &[f32], what: &str) {
    assert_close_data(
        actual.into_data().try_to_vec::<f32>().unwrap(),
        expected,
        what,
    );
}

/// As [`assert_close`], for values already read back.
pub fn assert_close_data(actual: Vec<f32>, expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let worst = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= TOLERANCE,
        "{what}: max abs difference {worst} > {TOLERANCE}"
    );
}
