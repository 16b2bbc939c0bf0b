//! The BERT family: a tiny random BERT's classifier logits, bare encoder states and masked-LM
//! logits equal transformers', within 1e-5 absolute; a bare `BertModel` folder (as
//! sentence-transformers ships MiniLM) gives a classifier with its pooler and a fresh
//! projection, reported in transformers' names; our save loads back bit for bit under BERT's
//! names.
//!
//! Reference: `fixtures/model/bert_reference.json`, from `fixtures/model/generate_bert_reference.py`.

mod common;

use std::path::Path;

use burn::tensor::Device;
use common::{assert_close_data as assert_close, fixtures, floats, inputs};
use roberta_burn::{
    HubSettings, ModelError, Pretrained, RobertaForMaskedLM, RobertaForSequenceClassification,
};
use serde_json::Value;

fn classifier(
    folder: &Path,
) -> Result<roberta_burn::Loaded<RobertaForSequenceClassification>, ModelError> {
    RobertaForSequenceClassification::from_pretrained_with(
        folder.to_str().unwrap(),
        &Device::flex(),
        &HubSettings::from_vars(|_| None),
        |_| {},
    )
}

#[test]
fn bert_classifier_matches_transformers() {
    let r = common::reference("bert_reference.json");
    let device = Device::flex();
    let loaded = classifier(&fixtures().join("bert-classifier")).unwrap();
    assert!(loaded.config.is_bert());
    assert!(
        loaded.report.newly_initialized.is_empty(),
        "{:?}",
        loaded.report
    );
    assert!(loaded.report.unused.is_empty(), "{:?}", loaded.report);
    let (ids, mask) = inputs(&r, &device);
    let hidden = loaded.model.roberta().forward(ids.clone(), mask.clone());
    assert_close(
        hidden.into_data().try_to_vec::<f32>().unwrap(),
        &floats(&r["last_hidden_state"]),
        "last hidden state",
    );
    assert_close(
        loaded
            .model
            .forward(ids, mask)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
        &floats(&r["logits"]),
        "logits",
    );
}

#[test]
fn a_bare_bert_model_gets_a_fresh_projection_on_its_pooler() {
    let r = common::reference("bert_reference.json");
    let device = Device::flex();
    let loaded = classifier(&fixtures().join("bert-base")).unwrap();
    // transformers' load report for BertForSequenceClassification.from_pretrained(bert-base):
    // the pooler is the checkpoint's, the classifier new.
    assert_eq!(
        loaded.report.newly_initialized,
        ["classifier.bias", "classifier.weight"]
    );
    let (ids, mask) = inputs(&r, &device);
    let hidden = loaded.model.roberta().forward(ids, mask);
    assert_close(
        hidden.into_data().try_to_vec::<f32>().unwrap(),
        &floats(&r["last_hidden_state"]),
        "last hidden state",
    );
}

#[test]
fn bert_masked_lm_with_tied_decoder_matches_transformers() {
    let r = common::reference("bert_reference.json");
    let device = Device::flex();
    let loaded = RobertaForMaskedLM::from_pretrained_with(
        fixtures().join("bert-mlm").to_str().unwrap(),
        &device,
        &HubSettings::from_vars(|_| None),
        |_| {},
    )
    .unwrap();
    let (ids, mask) = inputs(&r, &device);
    let logits = loaded.model.forward(ids, mask);
    let [batch, _, vocab] = logits.dims();
    let position = r["mlm_position"].as_u64().unwrap() as usize;
    let at = logits.narrow(1, position, 1).reshape([batch, vocab]);
    assert_close(
        at.into_data().try_to_vec::<f32>().unwrap(),
        &floats(&r["mlm_logits"]),
        "masked-LM logits",
    );
}

#[test]
fn a_saved_bert_classifier_reloads_bit_for_bit_under_berts_names() {
    let loaded = classifier(&fixtures().join("bert-classifier")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    loaded
        .model
        .save_pretrained(&loaded.config, dir.path())
        .unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["model_type"], "bert");
    let again = classifier(dir.path()).unwrap();
    assert!(
        again.report.newly_initialized.is_empty(),
        "{:?}",
        again.report
    );
    let device = Device::flex();
    let (ids, mask) = inputs(&common::reference("bert_reference.json"), &device);
    let a: Vec<f32> = loaded
        .model
        .forward(ids.clone(), mask.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let b: Vec<f32> = again
        .model
        .forward(ids, mask)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn other_families_are_refused_naming_those_supported() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("bert-classifier")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"model_type\": \"bert\"", "\"model_type\": \"gpt2\""),
    )
    .unwrap();
    let err = classifier(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("`model_type` \"gpt2\" is not supported"),
        "{err}"
    );
    assert!(err.contains("(roberta, bert)"), "{err}");
}
