//! A changed input or setting is never silently mixed with old results: the pipeline refuses
//! before writing anything, names what changed as flags, and with `overwrite` retrains every
//! trial, so that the report's figures all come from one run.

mod common;

use std::path::Path;

use burn::tensor::Device;
use common::{config, own_study, run, sample_csv};
use sentiment_pipeline::{Pipeline, PipelineConfig, PipelineError};

/// The run's `report.json`.
fn report_json(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

/// The test split's row count in the report's data.
fn report_test_rows(out: &Path) -> u64 {
    let report = report_json(out);
    let splits = report["data"]["splits"].as_array().unwrap();
    let test = splits
        .iter()
        .find(|s| s["split"] == "test")
        .expect("the data has a test split");
    test["rows"].as_u64().unwrap()
}

#[test]
fn changed_data_or_epochs_never_mix_with_the_old_trials() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("p");
    let (first, _) = run(config(&out, 400, 1));
    let first = first.unwrap();
    let matrix_total = |o: &sentiment_pipeline::PipelineOutcome| -> u64 {
        o.outcome
            .test
            .as_ref()
            .unwrap()
            .report
            .confusion_matrix
            .iter()
            .flatten()
            .sum()
    };
    assert_eq!(report_test_rows(&out), matrix_total(&first));
    // The bag-of-words baseline: fitted on this run's train split, scored on its test split.
    let split = |name: &str| sentiment_data::read_split(&out.join("data").join(name)).unwrap();
    let (train, test) = (split("train.parquet"), split("test.parquet"));
    let ids = |labels: &[i64]| labels.iter().map(|&l| l as usize).collect::<Vec<_>>();
    let baseline = sentiment_baseline::BagOfWords::fit(
        train.texts.iter().map(String::as_str),
        &ids(&train.labels),
        2,
        &Default::default(),
    )
    .unwrap();
    let predicted = baseline.predict(test.texts.iter().map(String::as_str));
    let f1 = sentiment_metrics::ConfusionMatrix::from_labels(&ids(&test.labels), &predicted, 2)
        .unwrap()
        .binary(1)
        .f1;
    let report = report_json(&out);
    let baselines = &report["baselines"];
    let reported = baselines["bag_of_words"]["f1"].as_f64().unwrap();
    assert!((reported - f1).abs() < 1e-12, "{reported} against {f1}");
    assert!(baselines["majority_class_accuracy"].as_f64().unwrap() >= 0.5);
    // The Markdown shows the same comparison.
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(markdown.contains("| bag-of-words logistic regression |"));
    // Each trial's run folder is a user attribute of its trial, for Optuna's tools.
    let record = sentiment_search::Study::read(&own_study(&out))
        .unwrap()
        .unwrap();
    for trial in &record.trials {
        assert_eq!(
            trial.user_attrs["run_dir"],
            format!("trials/trial_{}", trial.number)
        );
    }
    let manifest = std::fs::read(out.join("data/manifest.json")).unwrap();

    // Another sample: refused before anything is written, with the flag that changed.
    let (second, _) = run(config(&out, 300, 1));
    let err = second.unwrap_err();
    assert!(matches!(err, PipelineError::Refused(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("data changed: --sample 300 (was 400)"),
        "{text}"
    );
    assert!(
        text.contains("trials (0-1)") && text.contains("--overwrite"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(out.join("data/manifest.json")).unwrap(),
        manifest
    );

    // More epochs: the trials were trained for fewer, so they are not reused either.
    let (third, _) = run(config(&out, 400, 2));
    let text = third.unwrap_err().to_string();
    assert!(text.contains("--epochs 2 (was 1)"), "{text}");

    // With overwrite the data is prepared again and every trial retrained: the report's data
    // table and its confusion matrix describe the same test split.
    let mut again = config(&out, 300, 1);
    again.overwrite = true;
    let (fourth, messages) = run(again);
    let fourth = fourth.unwrap();
    assert!(
        messages.contains("data changed: --sample 300 (was 400); trials 0-1 will be retrained"),
        "{messages}"
    );
    assert!(messages.contains("[3/5] search: trial 0"), "{messages}");
    assert!(!messages.contains("prepare: reusing"), "{messages}");
    assert_eq!(report_test_rows(&out), matrix_total(&fourth));
    assert_ne!(matrix_total(&fourth), matrix_total(&first));

    // The same settings again reuse every stage.
    let (fifth, messages) = run(config(&out, 300, 1));
    fifth.unwrap();
    assert!(messages.contains("prepare: reusing"), "{messages}");
    assert!(!messages.contains("search: trial"), "{messages}");
}

#[test]
fn a_changed_input_file_is_prepared_again() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("p");
    let input = work.path().join("tweets.csv");
    std::fs::copy(sample_csv(), &input).unwrap();
    let mut settings = config(&out, 300, 1);
    settings.prepare.input = input.clone();
    settings.trials = 1;
    let (first, _) = run(settings.clone());
    first.unwrap();
    // Same path, same size, other content: the old prepare cache keyed on path and size.
    let mut bytes = std::fs::read(&input).unwrap();
    let (a, b) = (bytes.iter().position(|&c| c == b'\n').unwrap(), bytes.len());
    let line = bytes[..=a].to_vec();
    bytes.drain(..=a);
    bytes.extend_from_slice(&line);
    assert_eq!(bytes.len(), b);
    std::fs::write(&input, bytes).unwrap();
    let (second, _) = run(settings.clone());
    let err = second.unwrap_err().to_string();
    assert!(err.contains("the file's content changed"), "{err}");
    settings.overwrite = true;
    let (third, messages) = run(settings);
    third.unwrap();
    assert!(
        messages.contains("the file's content changed"),
        "{messages}"
    );
    assert!(
        messages.contains("trials 0 will be retrained"),
        "{messages}"
    );
}

#[test]
fn an_empty_space_and_unknown_parameters_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let mut settings = config(work.path(), 300, 1);
    settings.space.clear();
    let err = Pipeline::new(settings.clone(), vec![Device::flex()])
        .err()
        .unwrap();
    assert!(err.to_string().contains("search space is empty"), "{err}");
    settings.space = sentiment_search::parse_space(["dropout=float:0.0:0.3"]).unwrap();
    let err = Pipeline::new(settings.clone(), vec![Device::flex()])
        .err()
        .unwrap();
    assert!(err.to_string().contains("`dropout`"), "{err}");
    settings.space = PipelineConfig::default_space(false);
    let err = Pipeline::new(settings, vec![]).err().unwrap();
    assert!(err.to_string().contains("--devices"), "{err}");
    assert!(!work.path().join("data").exists(), "nothing written");
}

#[test]
fn a_trial_stopped_early_is_complete_and_the_report_says_where_it_stopped() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("p");
    let mut settings = config(&out, 300, 3);
    settings.trials = 1;
    // No change beats a threshold of 1: every trial stops after its second evaluation.
    settings.run.early_stopping_patience = Some(1);
    settings.run.early_stopping_threshold = 1.0;
    let (done, messages) = run(settings);
    let done = done.unwrap();
    assert_eq!(done.best.state, sentiment_search::TrialState::Complete);
    assert!(done.best.value.is_some());
    assert!(
        messages.contains("(stopped early after epoch 2)"),
        "{messages}"
    );
    let report = report_json(&out);
    let trial = &report["trials"][0];
    assert_eq!(trial["state"], "complete", "{trial}");
    assert_eq!(trial["epochs_run"], 2, "{trial}");
}

#[test]
fn a_larger_trial_count_extends_a_finished_study() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("p");
    let mut settings = config(&out, 300, 1);
    // The default startup count depends on the budget (half of it): 1 for 2 trials, 2 for 3.
    settings.startup_trials = None;
    let (first, _) = run(settings.clone());
    first.unwrap();
    settings.trials = 3;
    let (second, messages) = run(settings);
    let second = second.unwrap();
    assert!(
        messages.contains("[3/5] search: trial 2 of 3"),
        "{messages}"
    );
    assert!(!messages.contains("search: trial 0"), "{messages}");
    assert!(second.best.number <= 2);
    let record = sentiment_search::Study::read(&own_study(&out))
        .unwrap()
        .unwrap();
    assert_eq!(record.trials.len(), 3);
}

#[test]
fn trials_evaluated_every_n_steps_report_by_step() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("p");
    let mut settings = config(&out, 300, 1);
    settings.trials = 1;
    settings.space = sentiment_search::parse_space(["learning_rate=float:1e-3:2e-3:log"]).unwrap();
    settings.run.eval_steps = Some(5);
    let (done, _) = run(settings);
    let done = done.unwrap();
    // 210 training rows in batches of 32: 7 steps, evaluated at step 5 and after step 7. The
    // study's intermediate values are keyed by global step, as transformers reports them.
    let keys: Vec<usize> = done.best.intermediate.keys().copied().collect();
    assert_eq!(keys, [5, 7]);
    let steps: Vec<usize> = done.outcome.history.iter().map(|m| m.step).collect();
    assert_eq!(steps, [5, 7]);
    let report = report_json(&out);
    let steps: Vec<u64> = report["final_run"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [5, 7]);
    let chart = std::fs::read_to_string(out.join("learning_curves_f1.svg")).unwrap();
    assert!(chart.contains("Validation F1 per evaluation"), "{chart}");
}

#[test]
fn a_study_file_of_an_earlier_layout_is_refused_then_replaced_with_overwrite() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("p");
    std::fs::create_dir_all(&out).unwrap();
    // The tables an earlier version wrote: not Optuna's schema.
    let db = rusqlite::Connection::open(out.join("study.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT NOT NULL UNIQUE,
         version INTEGER NOT NULL, direction TEXT NOT NULL, space_json TEXT NOT NULL,
         sampler_json TEXT NOT NULL, seed INTEGER NOT NULL);",
    )
    .unwrap();
    drop(db);
    let mut settings = config(&out, 300, 1);
    settings.trials = 1;
    let (refused, _) = run(settings.clone());
    let err = refused.unwrap_err().to_string();
    assert!(err.contains("earlier version of this tool"), "{err}");
    assert!(err.contains("--overwrite"), "{err}");
    settings.overwrite = true;
    let (done, messages) = run(settings);
    done.unwrap();
    assert!(messages.contains("discarding the study"), "{messages}");
}

#[test]
fn tied_trials_report_the_one_the_final_stage_used() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("p");
    let settings = config(&out, 300, 1);
    run(settings.clone()).0.unwrap();
    // Trial 1 given trial 0's value, as two trials that score alike have (the bundled sample
    // gives such ties).
    let db = rusqlite::Connection::open(out.join("study.db")).unwrap();
    db.execute(
        "UPDATE trial_values SET value = (SELECT v.value FROM trial_values v JOIN trials t \
         ON t.trial_id = v.trial_id WHERE t.number = 0) WHERE trial_id = \
         (SELECT trial_id FROM trials WHERE number = 1)",
        [],
    )
    .unwrap();
    drop(db);
    let (outcome, messages) = run(settings);
    let outcome = outcome.unwrap();
    // Optuna's best_trial: the earliest of tied trials, in the run and in the report alike.
    assert_eq!(outcome.best.number, 0, "{messages}");
    assert!(
        messages.contains("final training: reusing trial 0"),
        "{messages}"
    );
    assert_eq!(report_json(&out)["best_trial"], 0);
}

#[test]
fn a_second_pipeline_on_one_folder_is_refused_with_the_holder() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("p");
    std::fs::create_dir_all(&out).unwrap();
    // Another pipeline holds the folder (an advisory lock, as the pipeline takes it).
    let holder = std::fs::File::create(out.join(".lock")).unwrap();
    holder.try_lock().unwrap();
    std::fs::write(out.join(".lock"), "pid 4242 on elsewhere").unwrap();
    let (refused, _) = run(config(&out, 300, 1));
    let text = refused.unwrap_err().to_string();
    assert!(
        text.contains("is in use by another pipeline (pid 4242 on elsewhere"),
        "{text}"
    );
    assert!(!out.join("data").exists(), "nothing written");
    // Once the holder ends, the folder is free.
    drop(holder);
    run(config(&out, 300, 1)).0.unwrap();
}

#[test]
fn a_run_folder_outside_the_output_folder_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("p");
    let mut settings = config(&out, 300, 1);
    settings.trials = 1;
    run(settings.clone()).0.unwrap();
    // A study row edited (or written by a stranger) to point a trial's run elsewhere.
    for elsewhere in ["../elsewhere", "/tmp/elsewhere"] {
        let mut study = common::reopen_own_study(&out);
        study.set_user_attr(0, "run_dir", elsewhere.into()).unwrap();
        drop(study);
        let (refused, _) = run(settings.clone());
        let text = refused.unwrap_err().to_string();
        assert!(
            text.contains("is not a relative path inside --out"),
            "{elsewhere}: {text}"
        );
    }
    assert!(!work.path().join("elsewhere").exists());
}
