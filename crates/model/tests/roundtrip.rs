//! Hugging Face folders out and back in: our save loads in our loader bit for bit, and in
//! transformers with the same logits (checked by `fixtures/model/generate_reference.py` on the
//! committed `fixtures/model/saved-by-burn`, which this test proves is what we write).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use roberta_burn::{
    HubSettings, ModelError, Pretrained, RobertaConfig, RobertaForMaskedLM,
    RobertaForSequenceClassification,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/model")
}

fn offline() -> HubSettings {
    HubSettings::from_vars(|_| None)
}

fn classifier(
    folder: &Path,
) -> Result<roberta_burn::Loaded<RobertaForSequenceClassification>, ModelError> {
    RobertaForSequenceClassification::from_pretrained_with(
        folder.to_str().unwrap(),
        &Device::flex(),
        &offline(),
        |_| {},
    )
}

fn inputs(device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let ids = TensorData::new(vec![0i64, 10, 20, 30, 2, 1, 0, 40, 2, 1, 1, 1], [2, 6]);
    let mask = TensorData::new(vec![1i64, 1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0], [2, 6]);
    (
        Tensor::from_data(ids, device),
        Tensor::from_data(mask, device),
    )
}

#[test]
fn saved_classifier_reloads_bit_for_bit_and_matches_the_committed_file() {
    let device = Device::flex();
    let loaded = classifier(&fixtures().join("classifier")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    loaded
        .model
        .save_pretrained(&loaded.config, dir.path())
        .unwrap();
    let config = RobertaConfig::load(&dir.path().join("config.json")).unwrap();
    assert_eq!(
        config.architectures.as_deref(),
        Some(&["RobertaForSequenceClassification".to_string()][..])
    );
    assert_eq!(config.label_name(0), "negative");
    let reloaded = classifier(dir.path()).unwrap();
    assert!(reloaded.report.newly_initialized.is_empty());
    assert!(reloaded.report.unused.is_empty());
    let (ids, mask) = inputs(&device);
    let a = loaded.model.forward(ids.clone(), mask.clone()).into_data();
    let b = reloaded.model.forward(ids, mask).into_data();
    assert_eq!(a, b);
    let committed = std::fs::read(fixtures().join("saved-by-burn/model.safetensors")).unwrap();
    let written = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    assert!(
        committed == written,
        "fixtures/model/saved-by-burn is stale: run `cargo xtask fixtures`, then the generator"
    );
}

#[test]
fn transformers_read_our_save_with_the_same_logits() {
    // Recorded by the generator after loading `saved-by-burn` with transformers: the logit
    // difference, and the SHA-256 of the bytes it read. The committed file has those bytes, and
    // the test above checks that Burn writes exactly the committed file, so what we write today
    // is what transformers checked.
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap())
            .unwrap();
    let difference = reference["saved_by_burn_max_abs_logit_difference"]
        .as_f64()
        .expect("generator ran on saved-by-burn");
    assert!(difference < 1e-5, "transformers disagrees by {difference}");
    use sha2::Digest;
    let committed = std::fs::read(fixtures().join("saved-by-burn/model.safetensors")).unwrap();
    let hash: String = sha2::Sha256::digest(&committed)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        reference["saved_by_burn_sha256"].as_str(),
        Some(hash.as_str()),
        "saved-by-burn changed since transformers read it: rerun the generator"
    );
}

#[test]
fn masked_lm_round_trips_with_its_tied_decoder() {
    let device = Device::flex();
    let loaded = RobertaForMaskedLM::from_pretrained_with(
        fixtures().join("mlm").to_str().unwrap(),
        &device,
        &offline(),
        |_| {},
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    loaded
        .model
        .save_pretrained(&loaded.config, dir.path())
        .unwrap();
    let reloaded = RobertaForMaskedLM::from_pretrained_with(
        dir.path().to_str().unwrap(),
        &device,
        &offline(),
        |_| {},
    )
    .unwrap();
    assert!(
        reloaded.report.newly_initialized.is_empty(),
        "{:?}",
        reloaded.report
    );
    let (ids, mask) = inputs(&device);
    assert_eq!(
        loaded.model.forward(ids.clone(), mask.clone()).into_data(),
        reloaded.model.forward(ids, mask).into_data()
    );
}

#[test]
fn a_fresh_model_saves_and_loads() {
    let device = Device::flex();
    let config = RobertaConfig::preset("tiny", 300)
        .unwrap()
        .with_labels(&["negative".into(), "positive".into()]);
    let model = RobertaForSequenceClassification::new(&config, &device);
    let dir = tempfile::tempdir().unwrap();
    model.save_pretrained(&config, dir.path()).unwrap();
    let loaded = classifier(dir.path()).unwrap();
    let (ids, mask) = inputs(&device);
    assert_eq!(
        model.forward(ids.clone(), mask.clone()).into_data(),
        loaded.model.forward(ids, mask).into_data()
    );
}

#[test]
fn bad_folders_get_clear_errors() {
    let empty = tempfile::tempdir().unwrap();
    let err = classifier(empty.path()).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");

    // A config without weights.
    std::fs::copy(
        fixtures().join("classifier/config.json"),
        empty.path().join("config.json"),
    )
    .unwrap();
    let err = classifier(empty.path()).unwrap_err();
    assert!(matches!(err, ModelError::NoWeights { .. }), "{err}");

    // A truncated weight file.
    let bytes = std::fs::read(fixtures().join("classifier/model.safetensors")).unwrap();
    std::fs::write(
        empty.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let err = classifier(empty.path()).unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    // An encoder that lacks layers the configuration has.
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("classifier/config.json")).unwrap(),
    )
    .unwrap();
    config["num_hidden_layers"] = 3.into();
    std::fs::write(empty.path().join("config.json"), config.to_string()).unwrap();
    std::fs::write(empty.path().join("model.safetensors"), &bytes).unwrap();
    let err = classifier(empty.path()).unwrap_err();
    assert!(matches!(err, ModelError::MissingWeights { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("roberta.encoder.layer.2.attention.self.query.weight"),
        "{err}"
    );

    // An inconsistent configuration names the field.
    config["num_hidden_layers"] = 2.into();
    config["num_attention_heads"] = 5.into();
    std::fs::write(empty.path().join("config.json"), config.to_string()).unwrap();
    let err = classifier(empty.path()).unwrap_err();
    assert!(err.to_string().contains("num_attention_heads"), "{err}");
}
