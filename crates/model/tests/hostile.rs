//! A stranger's model folder cannot take the machine: weights and configurations that would
//! claim more memory than their files hold, or read files outside the folder, are refused
//! with the file and the key named, before anything of that size is allocated. The crafted
//! files come from `fixtures/model/hostile/generate.py` or are edited copies of the fixtures.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use roberta_burn::{HubSettings, ModelError, Pretrained, RobertaForSequenceClassification};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/model")
}

fn load(folder: &Path) -> Result<(), ModelError> {
    RobertaForSequenceClassification::from_pretrained_with(
        folder.to_str().unwrap(),
        &Device::flex(),
        &HubSettings::from_vars(|_| None),
        |_| {},
    )
    .map(drop)
}

/// A copy of a fixture folder, to edit.
fn copy_of(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config[key] = value;
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
}

#[test]
fn a_pickled_tensor_larger_than_its_file_is_refused_before_it_is_read() {
    // One float of storage viewed with stride 0 as 2^22 x 32: 674 bytes on disk, 512 MiB read.
    let folder = fixtures().join("hostile/expanded");
    let started = std::time::Instant::now();
    let err = load(&folder).unwrap_err();
    match &err {
        ModelError::BadWeights { file, detail } => {
            assert!(file.ends_with("pytorch_model.bin"), "{err}");
            assert!(
                detail.contains("roberta.embeddings.word_embeddings.weight")
                    && detail.contains("more than the whole file"),
                "{err}"
            );
        }
        other => panic!("expected a refusal of the weights, got {other}"),
    }
    // Refused from the pickle's shapes: nothing of that size was read (a read alone takes
    // seconds on an emulated CPU).
    assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
}

#[test]
fn config_sizes_beyond_the_weights_are_refused_with_the_key_named() {
    for (key, value) in [
        ("vocab_size", serde_json::json!(1_000_000_000_000u64)),
        ("num_hidden_layers", serde_json::json!(100_000)),
        (
            "max_position_embeddings",
            serde_json::json!(10_000_000_000u64),
        ),
    ] {
        let dir = copy_of("classifier");
        edit_config(dir.path(), key, value.clone());
        let err = load(dir.path()).unwrap_err();
        match &err {
            ModelError::InvalidConfig {
                source_name,
                detail,
            } => {
                assert!(source_name.ends_with("config.json"), "{err}");
                assert!(detail.contains(&format!("`{key}` {value}")), "{err}");
                assert!(detail.contains("the weight files hold"), "{err}");
            }
            other => panic!("{key}: expected a refused configuration, got {other}"),
        }
    }
    // The real configuration loads.
    load(&fixtures().join("classifier")).unwrap();
}

#[test]
fn a_shard_outside_the_folder_is_refused() {
    let dir = copy_of("classifier-sharded");
    let index = dir.path().join("model.safetensors.index.json");
    let mut parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    let map = parsed["weight_map"].as_object_mut().unwrap();
    let first = map.keys().next().unwrap().clone();
    map.insert(first, "../../etc/passwd".into());
    std::fs::write(&index, parsed.to_string()).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("\"../../etc/passwd\" is not a file name in the model's folder"),
        "{err}"
    );
}

/// A copy of the `name` fixture folder with `file` replaced by `bytes`.
fn with_file(name: &str, file: &str, bytes: &[u8]) -> tempfile::TempDir {
    let dir = copy_of(name);
    std::fs::write(dir.path().join(file), bytes).unwrap();
    dir
}

/// `bytes` with each `(position, value)` written over it (positions wrap), then cut to
/// `keep` of its length when given.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], keep: Option<f64>) -> Vec<u8> {
    let len = bytes.len();
    for &(at, value) in edits {
        bytes[at % len] = value;
    }
    if let Some(fraction) = keep {
        bytes.truncate((len as f64 * fraction) as usize);
    }
    bytes
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Whatever a model folder's files hold (a valid file with bytes changed or cut short, or
    /// noise), loading returns a model or an error: never a panic.
    #[test]
    fn mutated_model_files_load_or_are_refused(
        edits in proptest::collection::vec((0usize..1 << 20, proptest::num::u8::ANY), 0..8),
        keep in proptest::option::of(0.0f64..1.0),
        noise in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        which in 0usize..4,
    ) {
        let (folder, file) = [
            ("classifier", "model.safetensors"),
            ("classifier-bin", "pytorch_model.bin"),
            ("classifier", "config.json"),
            ("classifier-sharded", "model.safetensors.index.json"),
        ][which];
        let original = std::fs::read(fixtures().join(folder).join(file)).unwrap();
        for bytes in [mutate(original, &edits, keep), noise.clone()] {
            let dir = with_file(folder, file, &bytes);
            let result = std::panic::catch_unwind(|| load(dir.path()));
            proptest::prop_assert!(result.is_ok(), "{folder}/{file}: panicked");
        }
    }
}
