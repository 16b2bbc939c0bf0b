//! Training end to end on the bundled sample: metrics, keep-best, best model export, resume.
//! Determinism holds per process: Burn's random generator is global (see `BACKEND_RNG`).

mod common;

use std::path::Path;

use burn::tensor::Device;
use common::{BACKEND_RNG, Prepared};
use roberta_burn::{Pretrained, RobertaConfig, RobertaForSequenceClassification};
use sentiment_train::{RunOptions, StopToken, TrainConfig, TrainData, TrainError, train};

/// `rows` of the sample, tokenized to 32.
fn prepared(rows: usize) -> Prepared {
    common::prepared(rows, 32)
}

fn model_config(vocab: usize) -> RobertaConfig {
    let mut config = RobertaConfig::preset("tiny", vocab)
        .unwrap()
        .with_labels(&["negative".into(), "positive".into()]);
    config.max_position_embeddings = 34;
    config
}

/// Everything but the timings, which differ from run to run.
fn quality(history: &[sentiment_train::EpochMetrics]) -> Vec<[f64; 9]> {
    history
        .iter()
        .map(|m| {
            [
                m.epoch as f64,
                m.step as f64,
                m.train_loss,
                m.eval_loss,
                m.accuracy,
                m.precision,
                m.recall,
                m.f1,
                m.learning_rate,
            ]
        })
        .collect()
}

fn quick() -> TrainConfig {
    TrainConfig {
        learning_rate: 5e-4,
        batch_size: 16,
        epochs: 2,
        warmup_steps: 5,
        ..TrainConfig::default()
    }
}

fn run(
    p: &Prepared,
    config: &TrainConfig,
    dir: &Path,
    resume: bool,
) -> Result<sentiment_train::TrainOutcome, TrainError> {
    run_with(p, config, dir, resume, &StopToken::new(), &mut |_| {})
}

fn run_with(
    p: &Prepared,
    config: &TrainConfig,
    dir: &Path,
    resume: bool,
    stop: &StopToken,
    progress: &mut dyn FnMut(sentiment_train::Progress),
) -> Result<sentiment_train::TrainOutcome, TrainError> {
    let device = Device::flex();
    device.seed(config.seed);
    let model_config = model_config(p.tokenizer.vocab_size());
    let model = RobertaForSequenceClassification::new(&model_config, &device);
    let data = TrainData {
        train: &p.train,
        validation: &p.validation,
        test: Some(&p.test),
    };
    train(
        model,
        &model_config,
        Some(&p.tokenizer),
        &data,
        config,
        dir,
        &device,
        resume,
        stop,
        &mut &mut *progress,
    )
}

#[test]
fn trains_evaluates_keeps_the_best_exports_and_resumes_identically() {
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let p = prepared(2_000);
    let run_a = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let outcome = run(&p, &quick(), run_a.path(), false).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    // Each record's wall time holds its steps and its evaluation; the records' wall times,
    // each counted once, fit in the run's.
    let rows = p.train.len() as f64;
    for m in &outcome.history {
        let in_steps = rows / m.train_samples_per_second;
        assert!(m.eval_runtime > 0.0, "{m:?}");
        assert!(m.seconds >= in_steps + m.eval_runtime - 1e-6, "{m:?}");
    }
    let recorded: f64 = outcome.history.iter().map(|m| m.seconds).sum();
    assert!(
        recorded <= elapsed,
        "{recorded} s recorded in a {elapsed} s run"
    );
    // A fresh run into a folder that holds one is refused, nothing overwritten; so is a resume
    // of a folder that holds none.
    let metrics = std::fs::read(run_a.path().join("metrics.json")).unwrap();
    let err = run(&p, &quick(), run_a.path(), false).unwrap_err();
    assert!(matches!(err, TrainError::RunExists { .. }), "{err}");
    assert!(err.to_string().contains("--overwrite"), "{err}");
    assert_eq!(
        std::fs::read(run_a.path().join("metrics.json")).unwrap(),
        metrics
    );
    let err = run(&p, &quick(), &run_a.path().join("missing"), true).unwrap_err();
    assert!(matches!(err, TrainError::NothingToResume { .. }), "{err}");
    assert_eq!(outcome.history.len(), 2);
    let steps = p.train.len().div_ceil(16);
    assert_eq!(outcome.history[1].step, 2 * steps);
    // It learns: the synthetic sample is far from random.
    let best = outcome.best();
    assert!(best.accuracy > 0.6, "{:?}", outcome.history);
    assert!(outcome.history[1].train_loss < outcome.history[0].train_loss + 0.05);
    for file in [
        "metrics.json",
        "metrics.csv",
        "train_config.json",
        "test_metrics.json",
        "outcome.json",
        "train.log",
    ] {
        assert!(run_a.path().join(file).exists(), "{file}");
    }
    let csv = std::fs::read_to_string(run_a.path().join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3);
    // Two epochs, limit 2: both checkpoints stay, named by their step.
    let checkpoint = |run: &Path, step: usize| run.join(format!("checkpoints/step-{step}"));
    assert!(checkpoint(run_a.path(), steps).join("model.bpk").exists());
    assert!(
        checkpoint(run_a.path(), 2 * steps)
            .join("optimizer.bpk")
            .exists()
    );
    let test = outcome.test.as_ref().unwrap();
    assert_eq!(
        test.report.confusion_matrix.iter().flatten().sum::<u64>() as usize,
        p.test.len()
    );
    // The exported best model loads as a Hugging Face folder, with its tokenizer.
    let loaded = RobertaForSequenceClassification::from_pretrained_with(
        outcome.best_model_dir.to_str().unwrap(),
        &Device::flex(),
        &roberta_burn::HubSettings::from_vars(|_| None),
        |_| {},
    )
    .unwrap();
    assert!(loaded.report.newly_initialized.is_empty());
    assert!(outcome.best_model_dir.join("tokenizer.json").exists());

    // Resume: a run stopped after epoch 1 ends exactly like the uninterrupted one.
    let run_b = tempfile::tempdir().unwrap();
    let one_epoch = run(&p, &quick(), run_b.path(), false).unwrap();
    assert_eq!(
        quality(&one_epoch.history),
        quality(&outcome.history),
        "same seed, same run"
    );
    std::fs::remove_dir_all(checkpoint(run_b.path(), 2 * steps)).unwrap();
    std::fs::remove_dir_all(run_b.path().join("best_model")).unwrap();
    let resumed = run(&p, &quick(), run_b.path(), true).unwrap();
    assert_eq!(quality(&resumed.history), quality(&outcome.history));
    let (a, b) = (resumed.test.unwrap(), outcome.test.clone().unwrap());
    assert_eq!((a.loss, a.report), (b.loss, b.report));

    // Ctrl-C mid-epoch saves a partial checkpoint; resuming from it ends the same way too.
    let run_c = tempfile::tempdir().unwrap();
    let stop = StopToken::new();
    let err = run_with(&p, &quick(), run_c.path(), false, &stop, &mut |progress| {
        if progress.epoch == 2 && progress.step_in_epoch == 10 {
            stop.request();
        }
    })
    .unwrap_err();
    assert!(matches!(err, TrainError::Interrupted { .. }), "{err}");
    let partial = checkpoint(run_c.path(), steps + 10);
    assert!(partial.join("state.json").exists());
    let before = |name: &str| std::fs::read_to_string(run_c.path().join(name)).unwrap();
    let (json_before, csv_before) = (before("metrics.json"), before("metrics.csv"));
    let resumed = run(&p, &quick(), run_c.path(), true).unwrap();
    assert_eq!(quality(&resumed.history), quality(&outcome.history));
    assert!(
        !partial.exists(),
        "a resume point goes once a newer checkpoint exists"
    );
    // Epoch 1's record went through the checkpoint's JSON and back: written again, its every
    // float has the same digits (the timings included, which no other run reproduces).
    let (json_after, csv_after) = (before("metrics.json"), before("metrics.csv"));
    let first_record = |json: &str| json[..json.find("\n  }").expect("a record")].to_string();
    assert_eq!(first_record(&json_after), first_record(&json_before));
    assert_eq!(csv_after.lines().nth(1), csv_before.lines().nth(1));

    // Resuming with other settings is refused, nothing overwritten.
    let other = TrainConfig {
        learning_rate: 2e-3,
        ..quick()
    };
    let err = run(&p, &other, run_b.path(), true).unwrap_err();
    // Each differing setting is named with both values.
    assert!(
        err.to_string()
            .contains("learning_rate = 0.002 (the run has 0.0005)"),
        "{err}"
    );

    // Every checkpoint corrupt (one alone is passed over, see below): an error naming the
    // file, never a silent fresh start.
    for step in [steps, 2 * steps] {
        let model_file = checkpoint(run_b.path(), step).join("model.bpk");
        let bytes = std::fs::read(&model_file).unwrap();
        std::fs::write(&model_file, &bytes[..bytes.len() / 3]).unwrap();
    }
    let err = run(&p, &quick(), run_b.path(), true).unwrap_err();
    assert!(err.to_string().contains("model.bpk"), "{err}");
}

#[test]
fn bad_settings_and_data_are_refused() {
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let p = prepared(300);
    let dir = tempfile::tempdir().unwrap();
    for (config, needle) in [
        (
            TrainConfig {
                batch_size: 0,
                ..quick()
            },
            "batch_size",
        ),
        (
            TrainConfig {
                learning_rate: 0.0,
                ..quick()
            },
            "learning_rate 0 must be finite and positive",
        ),
        (
            TrainConfig {
                learning_rate: f64::INFINITY,
                ..quick()
            },
            "learning_rate inf must be finite and positive",
        ),
        (
            TrainConfig {
                epochs: 0,
                ..quick()
            },
            "epochs",
        ),
        // Every float setting must be finite and in range: a NaN weight decay was once saved
        // as `null`, and the run's own resume then failed.
        (
            TrainConfig {
                optimizer: sentiment_train::AdamWSettings {
                    weight_decay: f64::NAN,
                    ..quick().optimizer
                },
                ..quick()
            },
            "weight_decay NaN must be finite and >= 0",
        ),
        (
            TrainConfig {
                optimizer: sentiment_train::AdamWSettings {
                    beta2: 1.0,
                    ..quick().optimizer
                },
                ..quick()
            },
            "adam_beta2 1 must be in [0, 1)",
        ),
        (
            TrainConfig {
                optimizer: sentiment_train::AdamWSettings {
                    epsilon: f64::INFINITY,
                    ..quick().optimizer
                },
                ..quick()
            },
            "adam_epsilon inf must be finite and positive",
        ),
        (
            TrainConfig {
                optimizer: sentiment_train::AdamWSettings {
                    max_grad_norm: -1.0,
                    ..quick().optimizer
                },
                ..quick()
            },
            "max_grad_norm -1 must be finite and >= 0",
        ),
    ] {
        let err = run(&p, &config, dir.path(), false).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
    let mut one_class = p.train.clone();
    one_class.labels.iter_mut().for_each(|l| *l = 0);
    let device = Device::flex();
    let model_config = model_config(p.tokenizer.vocab_size());
    let data = TrainData {
        train: &one_class,
        validation: &p.validation,
        test: None,
    };
    let err = train(
        RobertaForSequenceClassification::new(&model_config, &device),
        &model_config,
        None,
        &data,
        &quick(),
        dir.path(),
        &device,
        false,
        &StopToken::new(),
        &mut |_: sentiment_train::Progress| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("one class only"), "{err}");
    assert!(!dir.path().join("checkpoints").exists(), "nothing written");
}

/// Stops after the first epoch, as a pruner would.
struct StopAfterFirstEpoch(usize);

impl sentiment_train::TrainHooks for StopAfterFirstEpoch {
    fn on_epoch(&mut self, _: &sentiment_train::EpochMetrics) -> bool {
        self.0 += 1;
        false
    }
}

#[test]
fn an_epoch_hook_can_stop_the_run_early() {
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let p = prepared(600);
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let model_config = model_config(p.tokenizer.vocab_size());
    let data = TrainData {
        train: &p.train,
        validation: &p.validation,
        test: Some(&p.test),
    };
    let mut hook = StopAfterFirstEpoch(0);
    let outcome = train(
        RobertaForSequenceClassification::new(&model_config, &device),
        &model_config,
        None,
        &data,
        &TrainConfig {
            epochs: 3,
            ..quick()
        },
        dir.path(),
        &device,
        false,
        &StopToken::new(),
        &mut hook,
    )
    .unwrap();
    assert_eq!(hook.0, 1);
    assert_eq!(outcome.history.len(), 1);
    assert_eq!(outcome.stopped_early, Some(1));
    assert!(outcome.test.is_some());
    assert!(outcome.best_model_dir.join("model.safetensors").exists());
    let log = std::fs::read_to_string(dir.path().join("train.log")).unwrap();
    // Each line starts with an ISO 8601 time and its zone.
    for line in log.lines() {
        let stamp = &line[1..line.find(']').unwrap()];
        chrono::DateTime::parse_from_rfc3339(stamp).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    assert!(log.contains("(epoch 1) by a hook (pruned)"), "{log}");
}

#[test]
fn early_stopping_ends_the_run_and_a_resume_keeps_it_ended() {
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let p = prepared(600);
    let dir = tempfile::tempdir().unwrap();
    // A threshold no change can beat: the second evaluation is the first without improvement.
    let config = TrainConfig {
        epochs: 4,
        run: RunOptions {
            early_stopping_patience: Some(1),
            early_stopping_threshold: 1.0,
            ..quick().run
        },
        ..quick()
    };
    let outcome = run(&p, &config, dir.path(), false).unwrap();
    assert_eq!(outcome.early_stopped, Some(2));
    assert_eq!(outcome.stopped_early, None, "not a hook's stop");
    assert_eq!(outcome.history.len(), 2);
    assert!(
        outcome.test.is_some(),
        "the best epoch is still evaluated on the test split"
    );
    let log = std::fs::read_to_string(dir.path().join("train.log")).unwrap();
    assert!(log.contains("(epoch 2): no improvement"), "{log}");
    // Resuming the finished run does not train on: the rule is a function of the history.
    let resumed = run(&p, &config, dir.path(), true).unwrap();
    assert_eq!(resumed.history.len(), 2);
    assert_eq!(resumed.early_stopped, Some(2));
    // Without early stopping the same run goes on.
    let patient = TrainConfig {
        run: RunOptions {
            early_stopping_patience: Some(3),
            ..config.run.clone()
        },
        ..config.clone()
    };
    let other = tempfile::tempdir().unwrap();
    let outcome = run(&p, &patient, other.path(), false).unwrap();
    assert_eq!(outcome.early_stopped, None);
    assert_eq!(outcome.history.len(), 4);
    let bad = TrainConfig {
        run: RunOptions {
            early_stopping_patience: Some(0),
            ..quick().run
        },
        ..quick()
    };
    let err = run(&p, &bad, tempfile::tempdir().unwrap().path(), false).unwrap_err();
    assert!(err.to_string().contains("early_stopping_patience"), "{err}");
}

/// Copies the folder `from` into `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The checkpoint folders of a run, by step.
fn checkpoint_steps(run: &Path) -> Vec<usize> {
    let mut steps: Vec<usize> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|name| name.strip_prefix("step-")?.parse().ok())
        .collect();
    steps.sort_unstable();
    steps
}

#[test]
fn evaluates_and_checkpoints_every_n_steps_and_resumes_mid_epoch() {
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let p = prepared(600);
    let steps_per_epoch = p.train.len().div_ceil(16);
    assert!(
        steps_per_epoch > 20 && steps_per_epoch < 30,
        "{steps_per_epoch}"
    );
    // 40 steps: the second pass over the data is cut short; an evaluation every 10 steps, a
    // resume point every 5.
    let config = TrainConfig {
        epochs: 5,
        run: RunOptions {
            max_steps: Some(40),
            eval_steps: Some(10),
            save_steps: Some(5),
            ..quick().run
        },
        ..quick()
    };
    let dir = tempfile::tempdir().unwrap();
    let outcome = run(&p, &config, dir.path(), false).unwrap();
    let evaluated: Vec<(usize, usize)> =
        outcome.history.iter().map(|m| (m.epoch, m.step)).collect();
    assert_eq!(evaluated, [(1, 10), (1, 20), (2, 30), (2, 40)]);
    // Every evaluation is in the metrics files with its step.
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert!(csv.starts_with("epoch,step,"), "{csv}");
    assert_eq!(csv.lines().count(), 5);
    // The schedule ends at step 40: the last step's rate is one 35th of the peak (5 warmup).
    let last = &outcome.history[3];
    assert!(
        (last.learning_rate - 5e-4 / 35.0).abs() < 1e-12,
        "{}",
        last.learning_rate
    );
    // Keep-best with save_total_limit 2 across the evaluations: the best and the latest stay;
    // no resume point is left once an evaluated checkpoint is newer.
    let mut kept = vec![outcome.best_step, 40];
    kept.dedup();
    assert_eq!(checkpoint_steps(dir.path()), kept);
    assert_eq!(outcome.best().step, outcome.best_step);

    // Killed at step 37 (after the resume point of step 35, mid-epoch): resuming continues
    // from step 35 in the same data order and ends exactly as the uninterrupted run.
    let killed = tempfile::tempdir().unwrap();
    let crash = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_with(
            &p,
            &config,
            killed.path(),
            false,
            &StopToken::new(),
            &mut |progress| {
                assert!(progress.step < 37, "killed");
            },
        )
    }));
    assert!(crash.is_err());
    let on_disk = checkpoint_steps(killed.path());
    assert!(
        on_disk.len() == 3 && on_disk.ends_with(&[30, 35]),
        "{on_disk:?}"
    );
    // The same crash, but the newest checkpoint's weights were cut short (written, not yet
    // on disk when the machine went down) and a checkpoint write left its temporary folder:
    // the resume passes over the torn checkpoint for the one before, says so, removes the
    // leftover, and still ends exactly as the uninterrupted run.
    let torn = tempfile::tempdir().unwrap();
    copy_tree(killed.path(), torn.path());
    std::fs::write(torn.path().join("checkpoints/step-35/model.bpk"), b"").unwrap();
    let leftover = torn.path().join("checkpoints/.step-40.tmp-4242");
    std::fs::create_dir_all(&leftover).unwrap();
    let resumed = run(&p, &config, torn.path(), true).unwrap();
    assert_eq!(quality(&resumed.history), quality(&outcome.history));
    let log = std::fs::read_to_string(torn.path().join("train.log")).unwrap();
    assert!(
        log.contains("step-35 is unreadable") && log.contains("resumed at step 30 (epoch 2)"),
        "{log}"
    );
    assert!(!leftover.exists());

    let resumed = run(&p, &config, killed.path(), true).unwrap();
    assert_eq!(quality(&resumed.history), quality(&outcome.history));
    assert_eq!(resumed.best_step, outcome.best_step);
    let log = std::fs::read_to_string(killed.path().join("train.log")).unwrap();
    assert!(log.contains("resumed at step 35 (epoch 2)"), "{log}");

    // Zero steps are refused by name.
    let zero = TrainConfig {
        run: RunOptions {
            eval_steps: Some(0),
            ..quick().run
        },
        ..quick()
    };
    let err = run(&p, &zero, tempfile::tempdir().unwrap().path(), false).unwrap_err();
    assert!(
        err.to_string().contains("eval_steps must be at least 1"),
        "{err}"
    );
}

/// `bf16: true` (the Trainer's switch) trains and evaluates under mixed precision: the run
/// says so in its log, its metrics are bf16's (not f32's bits, within a few per cent of them),
/// the same seed gives the same run, and resuming it in f32 is refused, naming the setting.
#[test]
fn bf16_mixed_precision_trains_deterministically() {
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let p = prepared(600);
    let mixed = TrainConfig {
        run: RunOptions {
            bf16: true,
            ..quick().run
        },
        ..quick()
    };
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let f32_run = run(&p, &quick(), dirs[0].path(), false).unwrap();
    let bf16_run = run(&p, &mixed, dirs[1].path(), false).unwrap();
    let again = run(&p, &mixed, dirs[2].path(), false).unwrap();
    assert_eq!(quality(&bf16_run.history), quality(&again.history));
    assert_ne!(quality(&bf16_run.history), quality(&f32_run.history));
    for (mixed, full) in bf16_run.history.iter().zip(&f32_run.history) {
        assert!(
            (mixed.eval_loss - full.eval_loss).abs() <= 0.05 * full.eval_loss,
            "bf16 eval loss {} against f32 {}",
            mixed.eval_loss,
            full.eval_loss
        );
    }
    let log = std::fs::read_to_string(dirs[1].path().join("train.log")).unwrap();
    assert!(log.contains("bf16 mixed precision"), "{log}");
    let err = run(&p, &quick(), dirs[1].path(), true).unwrap_err();
    assert!(err.to_string().contains("bf16"), "{err}");
}
