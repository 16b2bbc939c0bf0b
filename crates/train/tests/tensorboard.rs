//! TensorBoard event files: the bytes of each scalar event equal those TensorBoard's own writer
//! produced for the same event (`fixtures/tensorboard/`, from its `generate.py`), and a run with
//! `report_to: ["tensorboard"]` writes a file of valid records with the Trainer's tag names.

mod common;

use burn::tensor::Device;
use common::{BACKEND_RNG, fixtures, prepared};
use roberta_burn::{RobertaConfig, RobertaForSequenceClassification};
use sentiment_train::tensorboard::{scalar_event, tf_record};
use sentiment_train::{RunOptions, StopToken, TrainConfig, TrainData};

/// The records of an event file: (data) each, with both checksums verified by re-framing.
fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let length = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let data = bytes[at + 12..at + 12 + length].to_vec();
        assert_eq!(
            &bytes[at..at + 16 + length],
            tf_record(&data).as_slice(),
            "record at byte {at}: framing or checksum differs"
        );
        out.push(data);
        at += 16 + length;
    }
    out
}

#[test]
fn scalar_events_are_byte_identical_to_tensorboards_own() {
    let dir = fixtures().join("tensorboard");
    let bytes = std::fs::read(dir.join("events.out.tfevents.fixture")).unwrap();
    let scalars: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("scalars.json")).unwrap()).unwrap();
    let records = records(&bytes);
    // The first record is the file version; then one per scalar.
    assert!(
        records[0].windows(13).any(|w| w == b"brain.Event:2"),
        "{:?}",
        records[0]
    );
    let scalars = scalars.as_array().unwrap();
    assert_eq!(records.len(), 1 + scalars.len());
    for (record, s) in records[1..].iter().zip(scalars) {
        let ours = scalar_event(
            s["wall_time"].as_f64().unwrap(),
            s["step"].as_i64().unwrap(),
            s["tag"].as_str().unwrap(),
            s["value"].as_f64().unwrap() as f32,
        );
        assert_eq!(&ours, record, "{s}");
    }
}

#[test]
fn a_run_reporting_to_tensorboard_writes_the_trainers_scalars() {
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let p = prepared(300, 32);
    let device = Device::flex();
    let mut model_config = RobertaConfig::preset("tiny", p.tokenizer.vocab_size())
        .unwrap()
        .with_labels(&["negative".into(), "positive".into()]);
    model_config.max_position_embeddings = 34;
    let run = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        epochs: 2,
        batch_size: 16,
        run: RunOptions {
            report_to: vec!["tensorboard".into()],
            ..RunOptions::default()
        },
        ..TrainConfig::default()
    };
    let outcome = sentiment_train::train(
        RobertaForSequenceClassification::new(&model_config, &device),
        &model_config,
        None,
        &TrainData {
            train: &p.train,
            validation: &p.validation,
            test: None,
        },
        &config,
        run.path(),
        &device,
        false,
        &StopToken::new(),
        &mut |_: sentiment_train::Progress| {},
    )
    .unwrap();
    let files: Vec<_> = std::fs::read_dir(run.path().join("tb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let records = records(&std::fs::read(&files[0]).unwrap());
    let steps = outcome.history.last().unwrap().step;
    let count = |tag: &str| {
        records
            .iter()
            .filter(|r| r.windows(tag.len()).any(|w| w == tag.as_bytes()))
            .count()
    };
    for tag in [
        "train/loss",
        "train/learning_rate",
        "train/grad_norm",
        "train/epoch",
    ] {
        assert_eq!(count(tag), steps, "{tag}");
    }
    for tag in [
        "eval/loss",
        "eval/f1",
        "eval/accuracy",
        "eval/precision",
        "eval/recall",
    ] {
        assert_eq!(count(tag), 2, "{tag}: one per epoch");
    }
    // An unknown destination is refused before anything is written.
    let err = TrainConfig {
        run: RunOptions {
            report_to: vec!["wandb".into()],
            ..RunOptions::default()
        },
        ..TrainConfig::default()
    }
    .validate()
    .unwrap_err();
    assert!(err.to_string().contains("report_to `wandb`"), "{err}");
}
