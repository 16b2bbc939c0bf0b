//! Logits and hidden states equal transformers' for a tiny random RoBERTa, from every weight
//! format, within 1e-5 absolute (f32; the reference is rounded to 6 decimals; observed below 1e-6).
//!
//! Reference: `fixtures/model/reference.json`, from `fixtures/model/generate_reference.py`.

mod common;

use std::path::Path;

use burn::tensor::Device;
use common::{assert_close, assert_close_data, fixtures, floats, ints};
use roberta_burn::{
    HubSettings, ModelError, Pretrained, RobertaForMaskedLM, RobertaForSequenceClassification,
};

/// The backend under test: `flex`, or libtorch's CPU when built with `--features tch` and run
/// with `ROBERTA_TEST_BACKEND=tch` (see docs/model.md).
fn device() -> Device {
    #[cfg(feature = "tch")]
    if std::env::var("ROBERTA_TEST_BACKEND").as_deref() == Ok("tch") {
        #[allow(deprecated)]
        return Device::libtorch();
    }
    Device::flex()
}

fn check_classifier(folder: &Path) -> roberta_burn::LoadReport {
    let r = common::reference("reference.json");
    let (batch, seq) = (
        r["batch"].as_u64().unwrap() as usize,
        r["seq"].as_u64().unwrap() as usize,
    );
    let device = device();
    let loaded = RobertaForSequenceClassification::from_pretrained_with(
        folder.to_str().unwrap(),
        &device,
        &HubSettings::from_vars(|_| None),
        |_| {},
    )
    .unwrap();
    assert_eq!(loaded.config.num_labels(), 2);
    let ids = ints(&r["input_ids"], batch, seq, &device);
    let mask = ints(&r["attention_mask"], batch, seq, &device);
    let hidden = loaded.model.roberta().forward(ids.clone(), mask.clone());
    assert_close_data(
        hidden.into_data().try_to_vec::<f32>().unwrap(),
        &floats(&r["last_hidden_state"]),
        "last hidden state",
    );
    assert_close(
        loaded.model.forward(ids, mask),
        &floats(&r["logits"]),
        "logits",
    );
    loaded.report
}

#[test]
fn safetensors_classifier_matches_transformers() {
    let report = check_classifier(&fixtures().join("classifier"));
    assert!(report.newly_initialized.is_empty(), "{report:?}");
    assert!(report.unused.is_empty(), "{report:?}");
    assert_eq!(report.loaded, 41);
}

#[test]
fn pytorch_bin_classifier_matches_transformers() {
    check_classifier(&fixtures().join("classifier-bin"));
}

#[test]
fn sharded_safetensors_classifier_matches_transformers() {
    let report = check_classifier(&fixtures().join("classifier-sharded"));
    assert_eq!(report.files.len(), 3);
}

#[test]
fn masked_lm_with_tied_decoder_matches_transformers() {
    let r = common::reference("reference.json");
    let (batch, seq) = (
        r["batch"].as_u64().unwrap() as usize,
        r["seq"].as_u64().unwrap() as usize,
    );
    let device = device();
    let loaded = RobertaForMaskedLM::from_pretrained_with(
        fixtures().join("mlm").to_str().unwrap(),
        &device,
        &HubSettings::from_vars(|_| None),
        |_| {},
    )
    .unwrap();
    let ids = ints(&r["mlm_input_ids"], batch, seq, &device);
    let mask = ints(&r["attention_mask"], batch, seq, &device);
    let logits = loaded.model.forward(ids, mask);
    let vocab = r["vocab"].as_u64().unwrap() as usize;
    let at_2 = logits.narrow(1, 2, 1).reshape([batch, vocab]);
    assert_close(at_2, &floats(&r["mlm_logits_at_2"]), "masked-LM logits");
}

#[test]
fn a_classifier_from_a_masked_lm_checkpoint_initialises_its_head() {
    // As fine-tuning roberta-base does: the lm_head is unused, the classifier is new.
    let device = device();
    let loaded = RobertaForSequenceClassification::from_pretrained_with(
        fixtures().join("mlm").to_str().unwrap(),
        &device,
        &HubSettings::from_vars(|_| None),
        |c| {
            *c = c
                .clone()
                .with_labels(&["neg".into(), "neu".into(), "pos".into()])
        },
    )
    .unwrap();
    assert_eq!(
        loaded.report.newly_initialized,
        [
            "classifier.dense.bias",
            "classifier.dense.weight",
            "classifier.out_proj.bias",
            "classifier.out_proj.weight"
        ]
    );
    assert!(
        loaded
            .report
            .unused
            .iter()
            .any(|k| k.starts_with("lm_head.dense")),
        "{:?}",
        loaded.report
    );
}

#[test]
fn a_wrongly_shaped_checkpoint_names_the_key_and_both_shapes() {
    let device = device();
    let err = RobertaForSequenceClassification::from_pretrained_with(
        fixtures().join("classifier").to_str().unwrap(),
        &device,
        &HubSettings::from_vars(|_| None),
        |c| *c = c.clone().with_labels(&["a".into(), "b".into(), "c".into()]),
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ModelError::ShapeMismatch { .. }), "{message}");
    assert!(message.contains("classifier.out_proj"), "{message}");
    // As stored: PyTorch's `[out, in]` (2 labels, hidden 32), not Burn's transposed layout.
    assert!(
        message.contains("has shape [2, 32] in the file, the configuration needs [3, 32]"),
        "{message}"
    );
}
