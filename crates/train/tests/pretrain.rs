//! Masked-LM pre-training: RoBERTa's masking proportions, never a special or padding token, a
//! fresh mask every epoch and the same one for the same seed; the loss equals transformers' on
//! the fixture masked LM, before and after one AdamW step; and a run end to end whose output
//! loads as a masked LM and as a classifier to fine-tune, and resumes where it stopped.

use std::path::{Path, PathBuf};

use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use roberta_burn::{
    HubSettings, Pretrained, RobertaConfig, RobertaForMaskedLM, RobertaForSequenceClassification,
};
use sentiment_data::{PrepareConfig, prepare};
use sentiment_tokenize::{BpeTrainingConfig, read_tokenized, tokenize_splits, train_on_split};
use sentiment_train::{
    AdamWSettings, FlatAdamW, MaskingConfig, NOT_A_TARGET, PretrainConfig, StopToken, TrainError,
    mask_rng, mask_tokens, masked_lm_loss, pretrain,
};

/// Burn's random generator is global to the process (see tests/training.rs).
static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

const SPECIAL: [i64; 5] = [0, 1, 2, 3, 4];
const MASK: i64 = 4;
const VOCAB: usize = 1000;

/// 400 rows of 64: `<s>`, 40 ordinary tokens, `</s>`, padding.
fn rows() -> (Vec<i64>, Vec<i64>) {
    let mut ids = Vec::new();
    let mut attention = Vec::new();
    for r in 0..400i64 {
        ids.push(0);
        ids.extend((0..40).map(|t| 5 + (r * 41 + t) % 995));
        ids.push(2);
        ids.extend(std::iter::repeat_n(1, 22));
        attention.extend(std::iter::repeat_n(1, 42));
        attention.extend(std::iter::repeat_n(0, 22));
    }
    (ids, attention)
}

#[test]
fn masking_follows_robertas_proportions_and_never_touches_special_tokens() {
    let (ids, attention) = rows();
    let batch = mask_tokens(
        &ids,
        &attention,
        &SPECIAL,
        MASK,
        VOCAB,
        &MaskingConfig::default(),
        &mut mask_rng(7, 1, 0),
    );
    let eligible = 400 * 40;
    let targets: Vec<usize> = (0..ids.len())
        .filter(|&i| batch.labels[i] != NOT_A_TARGET)
        .collect();
    let share = targets.len() as f64 / eligible as f64;
    assert!((share - 0.15).abs() < 0.01, "targets: {share}");
    let (mut masked, mut random, mut kept) = (0, 0, 0);
    for &i in &targets {
        assert_eq!(batch.labels[i], ids[i], "a label is the original token");
        assert!(!SPECIAL.contains(&ids[i]), "special token {i} chosen");
        assert_eq!(attention[i], 1, "padding {i} chosen");
        match batch.input_ids[i] {
            MASK => masked += 1,
            t if t == ids[i] => kept += 1,
            t => {
                assert!(!SPECIAL.contains(&t), "a random replacement is special");
                random += 1;
            }
        }
    }
    let n = targets.len() as f64;
    // A random replacement can draw the original token itself: it then counts as kept.
    assert!((masked as f64 / n - 0.8).abs() < 0.02, "<mask>: {masked}");
    assert!((random as f64 / n - 0.1).abs() < 0.02, "random: {random}");
    assert!((kept as f64 / n - 0.1).abs() < 0.02, "kept: {kept}");
    for i in (0..ids.len()).filter(|&i| batch.labels[i] == NOT_A_TARGET) {
        assert_eq!(batch.input_ids[i], ids[i], "a non-target changed at {i}");
    }
}

#[test]
fn masks_are_fresh_every_epoch_and_identical_for_the_same_seed() {
    let (ids, attention) = rows();
    let mask = |seed, epoch, batch| {
        mask_tokens(
            &ids,
            &attention,
            &SPECIAL,
            MASK,
            VOCAB,
            &MaskingConfig::default(),
            &mut mask_rng(seed, epoch, batch),
        )
    };
    assert_eq!(mask(3, 1, 0), mask(3, 1, 0));
    assert_ne!(mask(3, 1, 0).labels, mask(3, 2, 0).labels);
    assert_ne!(mask(3, 1, 0).labels, mask(3, 1, 1).labels);
    assert_ne!(mask(3, 1, 0).labels, mask(4, 1, 0).labels);
}

#[test]
fn a_batch_gets_a_target_even_when_the_draw_chooses_none() {
    // One real token: at 15% the draw often chooses nothing.
    for seed in 0..20 {
        let batch = mask_tokens(
            &[0, 77, 2, 1],
            &[1, 1, 1, 0],
            &SPECIAL,
            MASK,
            VOCAB,
            &MaskingConfig::default(),
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        );
        assert_eq!(batch.labels, [NOT_A_TARGET, 77, NOT_A_TARGET, NOT_A_TARGET]);
    }
    // Nothing eligible: no target, nothing changed.
    let batch = mask_tokens(
        &[0, 2, 1],
        &[1, 1, 0],
        &SPECIAL,
        MASK,
        VOCAB,
        &MaskingConfig::default(),
        &mut mask_rng(0, 1, 0),
    );
    assert!(batch.target_positions().is_empty());
    assert_eq!(batch.input_ids, [0, 2, 1]);
}

fn read(path: PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn the_masked_lm_loss_and_one_adamw_step_match_transformers() {
    let inputs = read(fixtures().join("model/reference.json"));
    let expected = read(fixtures().join("train/mlm_reference.json"));
    let (batch, seq) = (
        inputs["batch"].as_u64().unwrap() as usize,
        inputs["seq"].as_u64().unwrap() as usize,
    );
    let device = Device::flex().autodiff();
    let tensor = |key: &str| {
        Tensor::<2, Int>::from_data(TensorData::new(ints(&inputs[key]), [batch, seq]), &device)
    };
    let labels = ints(&expected["labels"]);
    let model = RobertaForMaskedLM::from_pretrained_with(
        fixtures().join("model/mlm").to_str().unwrap(),
        &device,
        &HubSettings::from_vars(|_| None),
        |c| {
            c.hidden_dropout_prob = 0.0;
            c.attention_probs_dropout_prob = 0.0;
        },
    )
    .unwrap()
    .model;
    let close = |ours: f64, key: &str| {
        let theirs = expected[key].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() <= 1e-5 * theirs.abs(),
            "{key}: ours {ours}, transformers {theirs}"
        );
    };
    let loss = masked_lm_loss(
        &model,
        tensor("mlm_input_ids"),
        tensor("attention_mask"),
        &labels,
    );
    close(f64::from(loss.clone().into_scalar::<f32>()), "loss");
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut optimizer = FlatAdamW::new(AdamWSettings {
        weight_decay: 0.01,
        ..AdamWSettings::default()
    });
    let (model, _) = optimizer.step(1e-3, model, grads).unwrap();
    let after = masked_lm_loss(
        &model,
        tensor("mlm_input_ids"),
        tensor("attention_mask"),
        &labels,
    );
    close(f64::from(after.into_scalar::<f32>()), "loss_after_one_step");
}

#[test]
fn pretraining_runs_resumes_and_its_output_fine_tunes() {
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = tempfile::tempdir().unwrap();
    let mut prepare_config =
        PrepareConfig::new(fixtures().join("sentiment140/sample.csv"), data.path());
    prepare_config.sample = Some(600);
    prepare(&prepare_config, &mut |_| {}).unwrap();
    let training = BpeTrainingConfig {
        vocab_size: 400,
        min_frequency: 2,
    };
    let (tokenizer, _) = train_on_split(data.path(), &training, 32).unwrap();
    tokenize_splits(data.path(), &tokenizer, "test", &mut |_, _, _| {}).unwrap();
    let rows = |s: &str| read_tokenized(&data.path().join(format!("{s}.tokens.parquet"))).unwrap();
    let (train, validation) = (rows("train"), rows("validation"));
    let mut model_config = RobertaConfig::preset("tiny", tokenizer.vocab_size()).unwrap();
    model_config.max_position_embeddings = 34;
    let config = PretrainConfig {
        epochs: 3,
        batch_size: 16,
        learning_rate: 2e-3,
        seed: 5,
        ..PretrainConfig::default()
    };
    let device = Device::flex();
    let run = |dir: &Path, resume: bool, stop_at: Option<usize>| {
        device.seed(11);
        let model = RobertaForMaskedLM::new(&model_config, &device);
        let mut steps = 0;
        let stop = StopToken::new();
        pretrain(
            model,
            &model_config,
            &tokenizer,
            &train,
            &validation,
            &config,
            dir,
            &device,
            resume,
            &stop,
            &mut |_: sentiment_train::Progress| {
                steps += 1;
                if Some(steps) == stop_at {
                    stop.request();
                }
            },
        )
    };
    let whole = tempfile::tempdir().unwrap();
    let outcome = run(whole.path(), false, None).unwrap();
    assert_eq!(outcome.history.len(), 3);
    let first = outcome.history[0];
    let last = outcome.history[2];
    // A model that learned nothing scores ln(vocab) at best.
    let uniform = (tokenizer.vocab_size() as f64).ln();
    assert!(last.eval_loss < first.eval_loss, "{:?}", outcome.history);
    assert!(
        last.eval_loss < uniform - 1.0,
        "{last:?} vs ln(vocab) {uniform}"
    );
    assert!(
        last.eval_accuracy > 0.0 && last.eval_accuracy < 1.0,
        "{last:?}"
    );

    // Interrupted mid-epoch 2, then resumed: the same numbers as the uninterrupted run.
    let broken = tempfile::tempdir().unwrap();
    let steps_per_epoch = train.len().div_ceil(config.batch_size);
    let err = run(broken.path(), false, Some(steps_per_epoch + 3)).unwrap_err();
    assert!(matches!(err, TrainError::Interrupted { .. }), "{err}");
    let resumed = run(broken.path(), true, None).unwrap();
    let numbers = |h: &[sentiment_train::PretrainEpoch]| -> Vec<[f64; 4]> {
        h.iter()
            .map(|e| [e.step as f64, e.train_loss, e.eval_loss, e.eval_accuracy])
            .collect()
    };
    assert_eq!(numbers(&resumed.history), numbers(&outcome.history));

    // The output is a Hugging Face masked LM, and a classifier starts from it.
    let hub = HubSettings::from_vars(|_| None);
    let folder = outcome.model_dir.to_str().unwrap();
    let mlm = RobertaForMaskedLM::from_pretrained_with(folder, &device, &hub, |_| {}).unwrap();
    assert!(mlm.report.newly_initialized.is_empty(), "{:?}", mlm.report);
    let classifier =
        RobertaForSequenceClassification::from_pretrained_with(folder, &device, &hub, |c| {
            *c = c
                .clone()
                .with_labels(&["negative".into(), "positive".into()])
        })
        .unwrap();
    assert_eq!(classifier.report.newly_initialized.len(), 4);
    assert!(outcome.model_dir.join("tokenizer.json").exists());
    assert!(whole.path().join("metrics.csv").exists());
}

#[test]
fn pretraining_checks_the_optimizer_settings_as_fine_tuning_does() {
    for (optimizer, needle) in [
        (
            AdamWSettings {
                beta2: 1.5,
                ..PretrainConfig::default().optimizer
            },
            "adam_beta2 1.5 must be in [0, 1)",
        ),
        (
            AdamWSettings {
                epsilon: 0.0,
                ..PretrainConfig::default().optimizer
            },
            "adam_epsilon 0 must be finite and positive",
        ),
    ] {
        let config = PretrainConfig {
            optimizer,
            ..PretrainConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn the_held_out_texts_are_a_seeded_share_and_nothing_is_lost() {
    let texts: Vec<String> = (0..10).map(|i| format!("text {i}")).collect();
    let (train, held) = sentiment_train::hold_out(texts.clone(), 0.3, 5).unwrap();
    assert_eq!((train.len(), held.len()), (7, 3));
    let mut all: Vec<String> = train.iter().chain(&held).cloned().collect();
    all.sort();
    let mut sorted = texts.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    assert_eq!(
        sentiment_train::hold_out(texts.clone(), 0.3, 5).unwrap().1,
        held
    );
    assert_ne!(
        sentiment_train::hold_out(texts.clone(), 0.3, 6).unwrap().1,
        held
    );
    // At least one held out and one to train on, whatever the share.
    assert_eq!(sentiment_train::hold_out(texts, 0.0, 5).unwrap().1.len(), 1);
    assert!(sentiment_train::hold_out(vec!["only".into()], 0.5, 5).is_none());
}
