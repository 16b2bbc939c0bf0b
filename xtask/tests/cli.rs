//! `cargo xtask` commands as a user runs them.

#[path = "../../crates/search/tests/support/postgres.rs"]
mod postgres_server;

use std::path::Path;
use std::process::Command;

/// Prepares a stratified sample of the bundled data into `dir`.
fn prepare_sample(dir: &str, rows: usize) {
    let output = xtask(&[
        "prepare",
        "--quiet",
        "--out",
        dir,
        "--sample",
        &rows.to_string(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn xtask(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn prepare_writes_splits_and_a_summary() {
    let out = tempfile::tempdir().unwrap();
    let output = xtask(&[
        "prepare",
        "--out",
        out.path().to_str().unwrap(),
        "--sample",
        "2000",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("rows read"), "{stdout}");
    assert!(stdout.contains("not_sampled"), "{stdout}");
    for file in [
        "train.parquet",
        "validation.parquet",
        "test.parquet",
        "manifest.json",
    ] {
        assert!(out.path().join(file).exists(), "{file}");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["rows_kept"], 2000);
}

#[test]
fn prepare_on_a_malformed_file_fails_with_the_line() {
    let out = tempfile::tempdir().unwrap();
    let input = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/sentiment140/malformed_raw.csv"
    );
    let output = xtask(&[
        "prepare",
        "--input",
        input,
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("malformed_raw.csv:2: expected 6 columns, found 5"),
        "{stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn bad_flags_are_rejected() {
    let output = xtask(&["prepare", "--ratios", "0.5,0.5"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--ratios takes three"), "{stderr}");
    // The documented form, a negative value included, reaches the ratio check (not clap's
    // "unexpected argument").
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let output = xtask(&[
        "prepare",
        "--out",
        out.to_str().unwrap(),
        "--ratios",
        "-0.1,0.6,0.5",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("unexpected argument"), "{stderr}");
    assert!(stderr.contains("ratio"), "{stderr}");
    // An OS error is printed once, after the file it concerns.
    let missing = work.path().join("missing.csv");
    let output = xtask(&[
        "prepare",
        "--input",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("missing.csv"), "{stderr}");
    let output = xtask(&["prepare", "--on-bad-row", "ignore"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("possible values: error, skip"), "{stderr}");
    // Trials in parallel on the CPU: at most one worker per core, each with its own model.
    let output = xtask(&[
        "pipeline",
        "--out",
        out.to_str().unwrap(),
        "--devices",
        "100000",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--devices 100000: with the CPU backend"),
        "{stderr}"
    );
    // No default names a path of the machine the binary was built on.
    for command in [
        "prepare", "tokenize", "train", "pretrain", "predict", "pipeline",
    ] {
        let help = xtask(&[command, "--help"]);
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            !text.contains(env!("CARGO_MANIFEST_DIR")),
            "{command}: {text}"
        );
    }
}

#[test]
fn tokenize_trains_encodes_then_reuses_the_cache() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let prepared = xtask(&["prepare", "--quiet", "--out", dir, "--sample", "1000"]);
    assert!(
        prepared.status.success(),
        "{}",
        String::from_utf8_lossy(&prepared.stderr)
    );
    // `--data`, the older name of `--prepared`, is still accepted.
    let first = xtask(&["tokenize", "--data", dir, "--vocab-size", "400"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("trained a tokenizer"), "{stdout}");
    assert_eq!(stdout.matches("encoded").count(), 3, "{stdout}");
    let second = xtask(&["tokenize", "--prepared", dir, "--vocab-size", "400"]);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(stdout.contains("reusing the tokenizer"), "{stdout}");
    assert_eq!(stdout.matches("cached").count(), 3, "{stdout}");
    assert!(data.path().join("tokenizer/tokenizer.json").exists());
    let bad = xtask(&["tokenize", "--prepared", dir, "--max-length", "1"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("max_length 1"));
}

#[test]
fn predict_classifies_texts_and_files_with_a_hugging_face_folder() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/model/classifier");
    let output = xtask(&[
        "predict",
        "--model",
        model,
        "--json",
        "I love this",
        "worst day ever",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["text"], "I love this");
    let probs: Vec<f64> = lines[0]["probs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    assert!(["negative", "positive"].contains(&lines[0]["label"].as_str().unwrap()));
    assert_eq!(lines[0]["logits"].as_array().unwrap().len(), 2);

    let input = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/sentiment140/awkward_cleaned.csv"
    );
    let output = xtask(&["predict", "--model", model, "--input", input]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 10);

    // Texts of different lengths, batched longest first and padded to each batch's longest:
    // printed in input order, with the logits of padding every text to the full length.
    let texts = [
        "ok",
        "what a wonderful day it has been, really the best one in a long while",
        "meh",
        "I love this so much",
        "no",
    ];
    let json = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["predict", "--model", model, "--json", "--batch-size", "2"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&texts);
        let output = xtask(&args);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (dynamic, fixed, mixed) = (json(&[]), json(&["--pad-to-max-length"]), json(&["--bf16"]));
    // Mixed precision: logits near the f32 ones (bf16 operands keep 8 bits of mantissa), and
    // not equal to them (the products did take rounded operands).
    let logits = |lines: &[serde_json::Value]| -> Vec<f64> {
        lines
            .iter()
            .flat_map(|l| l["logits"].as_array().unwrap().clone())
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (full, rounded) = (logits(&dynamic), logits(&mixed));
    let worst = full
        .iter()
        .zip(&rounded)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst > 0.0 && worst < 0.05,
        "--bf16 logits moved by {worst}"
    );
    for (i, ((d, f), text)) in dynamic.iter().zip(&fixed).zip(texts).enumerate() {
        assert_eq!(d["text"], text);
        assert_eq!(d["index"], i);
        assert_eq!(f["text"], text);
        for (a, b) in d["logits"]
            .as_array()
            .unwrap()
            .iter()
            .zip(f["logits"].as_array().unwrap())
        {
            assert!(
                (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-5,
                "{d} vs {f}"
            );
        }
    }

    // `-` reads one text per line from stdin; binary input is named, not echoed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["predict", "--model", model, "--json", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"first line\nsecond line\n").unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[1]["index"].as_u64(), lines[1]["text"].as_str()),
        (Some(1), Some("second line"))
    );
    let binary = std::env::current_exe().unwrap();
    let output = xtask(&[
        "predict",
        "--model",
        model,
        "--input",
        binary.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.len() < 1000, "{} bytes: {stderr}", stderr.len());
    assert!(!stderr.contains("--on-bad-row"), "{stderr}");

    let output = xtask(&["predict", "--model", model, "--max-length", "64", "x"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("exceed the model's maximum of 16"));
}

#[test]
fn train_from_scratch_then_predict_with_the_best_model() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let run = work.path().join("run");
    let (data_s, run_s) = (data.to_str().unwrap(), run.to_str().unwrap());
    prepare_sample(data_s, 1500);
    let trained = xtask(&[
        "train",
        "--prepared",
        data_s,
        "--out",
        run_s,
        "--epochs",
        "2",
        "--max-length",
        "32",
        "--vocab-size",
        "600",
        "--batch-size",
        "16",
        "--eval-steps",
        "50",
        "--save-steps",
        "20",
    ]);
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let stdout = String::from_utf8_lossy(&trained.stdout);
    assert!(stdout.contains("test: accuracy"), "{stdout}");
    assert!(stdout.contains("(best)"), "{stdout}");
    // Two epochs of 66 steps, evaluated at steps 50 and 100 and after the last: each
    // evaluation a row with its step.
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let steps: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    assert_eq!(steps, ["50", "100", "132"], "{csv}");
    for file in [
        "metrics.csv",
        "metrics.json",
        "test_metrics.json",
        "best_model/config.json",
    ] {
        assert!(run.join(file).exists(), "{file}");
    }
    let model = run.join("best_model");
    let predicted = xtask(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--json",
        "what a great day",
    ]);
    assert!(
        predicted.status.success(),
        "{}",
        String::from_utf8_lossy(&predicted.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&predicted.stdout).trim()).unwrap();
    assert!(["negative", "positive"].contains(&line["label"].as_str().unwrap()));
    assert!(
        line.get("row").is_none(),
        "texts on the command line have no row id"
    );

    // A prepared split: every line carries its index and the split's `row` (the source
    // line), in the split's order, so predictions join back to the CSV.
    let test_split = data.join("test.parquet");
    let predicted = xtask(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--json",
        "--input",
        test_split.to_str().unwrap(),
    ]);
    assert!(
        predicted.status.success(),
        "{}",
        String::from_utf8_lossy(&predicted.stderr)
    );
    let split = sentiment_data::read_split(&test_split).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&predicted.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), split.len());
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i);
        assert_eq!(line["row"], split.rows[i]);
        assert_eq!(line["text"], split.texts[i].as_str());
    }

    let bad = xtask(&[
        "train",
        "--prepared",
        data_s,
        "--out",
        run_s,
        "--batch-size",
        "0",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("batch_size"));
}

#[test]
fn pipeline_runs_end_to_end_and_resumes_from_its_outputs() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("run");
    let out_s = out.to_str().unwrap();
    let args = [
        "pipeline",
        "--out",
        out_s,
        "--sample",
        "600",
        "--trials",
        "2",
        "--epochs",
        "1",
        "--max-length",
        "32",
        "--vocab-size",
        "400",
        "--startup-trials",
        "1",
    ];
    let first = xtask(&args);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("Best parameters"), "{stdout}");
    assert!(stdout.contains("test: accuracy"), "{stdout}");
    // Trials share the seed, so the final run is the best trial's, whichever it is.
    assert!(stdout.contains("final training: reusing trial"), "{stdout}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    // The report's command reproduces the run: `cargo xtask`, then every flag given.
    assert!(
        report.contains(&format!("Reproduce: `cargo xtask {}`", args.join(" "))),
        "{report}"
    );
    for section in [
        "## Data",
        "## Trials",
        "## Final training",
        "## Test",
        "Confusion matrix",
        "| bag-of-words logistic regression |",
    ] {
        assert!(report.contains(section), "{section} missing from report.md");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("</html>"));
    assert_eq!(
        std::fs::read_to_string(out.join("trials.csv"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    assert_eq!(study_trials(&out).len(), 2);
    for trial in 0..2 {
        assert!(
            out.join(format!("trials/trial_{trial}/metrics.json"))
                .exists()
        );
    }
    let model = out.join("best_model");
    let predicted = xtask(&["predict", "--model", model.to_str().unwrap(), "good day"]);
    assert!(
        predicted.status.success(),
        "{}",
        String::from_utf8_lossy(&predicted.stderr)
    );

    // The same command again reuses every stage.
    let second = xtask(&args);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(stdout.contains("prepare: reusing"), "{stdout}");
    assert!(stdout.contains("tokenize: cached"), "{stdout}");
    assert!(stdout.contains("final training: reusing trial"), "{stdout}");
    assert!(!stdout.contains("search: trial"), "{stdout}");
}

#[test]
fn train_from_a_pretrained_hugging_face_folder() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let run = work.path().join("run");
    let (data_s, run_s) = (data.to_str().unwrap(), run.to_str().unwrap());
    prepare_sample(data_s, 800);
    // A masked-LM checkpoint made by transformers: the encoder is loaded, the head is new.
    let pretrained = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/model/mlm");
    let trained = xtask(&[
        "train",
        "--prepared",
        data_s,
        "--out",
        run_s,
        "--pretrained",
        pretrained,
        "--epochs",
        "1",
        "--max-length",
        "16",
        "--batch-size",
        "16",
    ]);
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let stderr = String::from_utf8_lossy(&trained.stderr);
    assert!(stderr.contains("newly initialised"), "{stderr}");
    assert!(stderr.contains("classifier.out_proj.weight"), "{stderr}");
    assert!(stderr.contains("lm_head"), "{stderr}");
    let stdout = String::from_utf8_lossy(&trained.stdout);
    assert!(stdout.contains("test: accuracy"), "{stdout}");
    assert!(run.join("best_model/model.safetensors").exists());
}

#[test]
fn pretrain_then_fine_tune_from_its_output() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let pre = work.path().join("pretrain");
    let run = work.path().join("run");
    let (data_s, pre_s, run_s) = (
        data.to_str().unwrap(),
        pre.to_str().unwrap(),
        run.to_str().unwrap(),
    );
    prepare_sample(data_s, 600);
    // The train split's texts (a Parquet file), labels ignored.
    let pretrained = xtask(&[
        "pretrain",
        "--input",
        data.join("train.parquet").to_str().unwrap(),
        "--out",
        pre_s,
        "--max-steps",
        "20",
        "--eval-steps",
        "8",
        "--vocab-size",
        "400",
        "--max-length",
        "24",
        "--learning-rate",
        "2e-3",
    ]);
    let stdout = String::from_utf8_lossy(&pretrained.stdout);
    assert!(
        pretrained.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&pretrained.stderr)
    );
    assert!(stdout.contains("| 2 |"), "{stdout}");
    assert!(stdout.contains("held out"), "{stdout}");
    // 20 steps in all (a second pass cut short), evaluated every 8 and after the last.
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pre.join("metrics.json")).unwrap()).unwrap();
    let steps: Vec<u64> = metrics
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [8, 16, 20]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pre.join("model/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "RobertaForMaskedLM");
    // The run folder itself (what pretrain printed) stands for the model it exported.
    let trained = xtask(&[
        "train",
        "--prepared",
        data_s,
        "--out",
        run_s,
        "--pretrained",
        pre.to_str().unwrap(),
        "--epochs",
        "1",
        "--max-length",
        "24",
        "--learning-rate",
        "1e-3",
    ]);
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let stdout = String::from_utf8_lossy(&trained.stdout);
    assert!(stdout.contains("test: accuracy"), "{stdout}");
    // The encoder came from pre-training: only the classification head is new.
    let stderr = String::from_utf8_lossy(&trained.stderr);
    assert!(stderr.contains("classifier.out_proj.weight"), "{stderr}");
    assert!(!stderr.contains("roberta.encoder"), "{stderr}");
    assert!(stderr.contains("is a pre-training run folder"), "{stderr}");
}

#[test]
fn ask_tell_drives_a_study_over_json_lines() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let space = dir.path().join("space.json");
    std::fs::write(
        &space,
        r#"[{"name": "x", "type": "float", "low": -5, "high": 5},
            {"name": "k", "type": "int", "low": 1, "high": 4},
            {"name": "c", "type": "categorical", "choices": ["a", "b"]}]"#,
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "search",
            "ask-tell",
            "--space",
            space.to_str().unwrap(),
            "--trials",
            "12",
        ])
        .args([
            "--seed",
            "3",
            "--direction",
            "minimize",
            "--startup-trials",
            "4",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut best = f64::INFINITY;
    // Trial 5 fails: it does not count, so a 13th trial is asked.
    for k in 0..13 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let asked: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(asked["trial"], k);
        let x = asked["params"]["x"].as_f64().unwrap();
        let reply = if k == 5 {
            format!("{{\"trial\": {k}, \"state\": \"fail\"}}")
        } else {
            best = best.min(x * x);
            format!("{{\"trial\": {k}, \"value\": {}}}", x * x)
        };
        writeln!(stdin, "{reply}").unwrap();
    }
    let mut last = String::new();
    stdout.read_line(&mut last).unwrap();
    let end: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(end["best"]["value"].as_f64().unwrap(), best);
    assert!(child.wait().unwrap().success());

    // A trial asked and never told ends as FAIL in the study, whether stdin closes or the
    // session is interrupted (exit status 130).
    for interrupt in [false, true] {
        let study = dir.path().join(format!("abandoned-{interrupt}.db"));
        // `--study PATH` (the older flag) and Optuna's `--storage sqlite:///PATH` alike.
        let storage = if interrupt {
            vec![
                "--storage".to_string(),
                format!("sqlite:///{}", study.display()),
            ]
        } else {
            vec!["--study".to_string(), study.display().to_string()]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["search", "ask-tell", "--space", space.to_str().unwrap()])
            .args(["--trials", "3", "--direction", "minimize"])
            .args(&storage)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.contains("\"trial\":0"), "{line}");
        if interrupt {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        } else {
            drop(stdin);
        }
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("trial 0 marked FAIL"), "{stderr}");
        assert_eq!(output.status.code(), Some(if interrupt { 130 } else { 1 }));
        let db = rusqlite::Connection::open(&study).unwrap();
        let state: String = db
            .query_row("SELECT state FROM trials WHERE number = 0", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(state, "FAIL");
    }

    // Bad replies are errors that say what is wrong.
    for (reply, needle) in [
        ("not json", "not a JSON object"),
        (
            "{\"trial\": 7, \"value\": 1}",
            "trial 7 is not the one asked",
        ),
        ("{\"trial\": 0, \"value\": \"high\"}", "is not a number"),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args([
                "search",
                "ask-tell",
                "--space",
                space.to_str().unwrap(),
                "--trials",
                "2",
            ])
            .args(["--direction", "maximize"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{reply}").unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{reply}: {stderr}");
    }
}

#[test]
fn ask_tell_clients_share_a_postgres_study() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let server = postgres_server::TestServer::start();
    let url = server.database("asktell");
    let dir = tempfile::tempdir().unwrap();
    let space = dir.path().join("space.json");
    std::fs::write(
        &space,
        r#"[{"name": "x", "type": "float", "low": -5, "high": 5}]"#,
    )
    .unwrap();
    let client = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["search", "ask-tell", "--space", space.to_str().unwrap()])
            .args(["--trials", "4", "--direction", "minimize", "--seed", "9"])
            .args(["--storage", &url, "--study-name", "shared"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        (child, stdin, stdout)
    };
    let read = |stdout: &mut BufReader<std::process::ChildStdout>| -> serde_json::Value {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let tell = |stdin: &mut std::process::ChildStdin, asked: &serde_json::Value| {
        let x = asked["params"]["x"].as_f64().unwrap();
        writeln!(
            stdin,
            "{{\"trial\": {}, \"value\": {}}}",
            asked["trial"],
            x * x
        )
        .unwrap();
    };
    let (mut a, mut a_in, mut a_out) = client();
    let first = read(&mut a_out);
    let (mut b, mut b_in, mut b_out) = client();
    let second = read(&mut b_out);
    assert_eq!(
        (first["trial"].as_u64(), second["trial"].as_u64()),
        (Some(0), Some(1))
    );
    tell(&mut a_in, &first);
    let third = read(&mut a_out);
    assert_eq!(third["trial"], 2);
    tell(&mut b_in, &second);
    let fourth = read(&mut b_out);
    assert_eq!(fourth["trial"], 3);
    // Four trials held (three told, one under way): the first client is done.
    tell(&mut a_in, &third);
    assert!(read(&mut a_out).get("best").is_some());
    tell(&mut b_in, &fourth);
    let end = read(&mut b_out);
    let values: Vec<f64> = [&first, &second, &third, &fourth]
        .iter()
        .map(|t| t["params"]["x"].as_f64().unwrap().powi(2))
        .collect();
    let best = values.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(end["best"]["value"].as_f64().unwrap(), best);
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let run = work.path().join("run");
    let (data_s, run_s) = (data.to_str().unwrap(), run.to_str().unwrap());
    prepare_sample(data_s, 2000);
    // Enough epochs that the signal, sent once the first is on disk, lands well before the
    // end (an epoch of this tiny model takes a fraction of a second).
    const EPOCHS: usize = 20;
    let epochs = EPOCHS.to_string();
    let args = [
        "train",
        "--prepared",
        data_s,
        "--out",
        run_s,
        "--epochs",
        &epochs,
        "--max-length",
        "32",
        "--vocab-size",
        "500",
        "--batch-size",
        "16",
    ];
    let child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the first epoch's evaluation (and so its checkpoint) is on disk.
    let first = run.join("metrics.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !first.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(first.exists(), "no checkpoint appeared");
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the run finished before the signal arrived: this test checked nothing\n{stderr}"
    );
    assert!(
        stderr.contains("interrupted: checkpoint saved in"),
        "{stderr}"
    );
    assert!(
        stderr.contains("resume with: cargo xtask train"),
        "{stderr}"
    );
    assert!(stderr.trim_end().ends_with("--resume"), "{stderr}");
    assert!(!stderr.contains("error:"), "{stderr}");
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    let mut resume = args.to_vec();
    resume.push("--resume");
    let resumed = xtask(&resume);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics.as_array().unwrap().len(), EPOCHS);
}

#[test]
fn pipeline_with_pruning_marks_trials() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("run");
    let output = xtask(&[
        "pipeline",
        "--out",
        out.to_str().unwrap(),
        "--sample",
        "600",
        "--trials",
        "4",
        "--epochs",
        "2",
        "--max-length",
        "32",
        "--vocab-size",
        "400",
        "--startup-trials",
        "2",
        "--prune",
        "--prune-startup-trials",
        "1",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let trials = study_trials(&out);
    assert_eq!(trials.len(), 4);
    for t in &trials {
        assert!(
            ["complete", "pruned"].contains(&t["state"].as_str().unwrap()),
            "{t}"
        );
        // Every finished epoch is recorded as an intermediate value.
        assert!(!t["intermediate"].as_object().unwrap().is_empty());
    }
    let pruned = trials.iter().filter(|t| t["state"] == "pruned").count();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.matches("pruned after epoch").count(),
        pruned,
        "{stdout}"
    );
}

#[test]
fn pipeline_runs_trials_in_parallel_one_per_device() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("run");
    let output = xtask(&[
        "pipeline",
        "--out",
        out.to_str().unwrap(),
        "--sample",
        "600",
        "--trials",
        "3",
        "--epochs",
        "1",
        "--max-length",
        "32",
        "--vocab-size",
        "400",
        "--devices",
        "2",
        "-q",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // -q: nothing but errors.
    assert!(
        output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let trials = study_trials(&out);
    assert_eq!(trials.len(), 3, "exactly the budget, no trial asked twice");
    let numbers: Vec<u64> = trials
        .iter()
        .map(|t| t["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [0, 1, 2]);
    assert!(
        trials.iter().all(|t| t["state"] == "complete"),
        "{trials:?}"
    );
    assert!(out.join("report.html").exists());
}

/// The trials of a pipeline's study (`study.db`) as {"number", "state", "intermediate"}, with
/// Optuna's state names in lower case and the intermediate values by step.
fn study_trials(out: &Path) -> Vec<serde_json::Value> {
    let db = rusqlite::Connection::open(out.join("study.db")).unwrap();
    let mut query = db
        .prepare("SELECT number, state FROM trials ORDER BY number")
        .unwrap();
    let mut steps = db
        .prepare(
            "SELECT v.step, v.intermediate_value FROM trial_intermediate_values v \
             JOIN trials t ON t.trial_id = v.trial_id WHERE t.number = ?1",
        )
        .unwrap();
    let trials: Vec<(i64, String)> = query
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    trials
        .into_iter()
        .map(|(number, state)| {
            let intermediate: serde_json::Map<String, serde_json::Value> = steps
                .query_map([number], |r| {
                    Ok((r.get::<_, i64>(0)?.to_string(), r.get::<_, f64>(1)?.into()))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            serde_json::json!({
                "number": number,
                "state": state.to_lowercase(),
                "intermediate": intermediate,
            })
        })
        .collect()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn a_storage_password_is_in_no_file_and_no_output() {
    let server = postgres_server::TestServer::start();
    // The test server trusts its socket, so the password is never checked: it only has to
    // be kept out of everything the run writes and prints.
    let url = server
        .database("secrets")
        .replacen("postgres@", "postgres:hunter2@", 1);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("run");
    let run = xtask(&[
        "pipeline",
        "--out",
        out.to_str().unwrap(),
        "--storage",
        &url,
        "--sample",
        "300",
        "--trials",
        "1",
        "--epochs",
        "1",
        "--max-length",
        "32",
        "--vocab-size",
        "400",
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
    let files = files_under(&out);
    assert!(files.iter().any(|f| f.ends_with("report.html")));
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(7).any(|w| w == b"hunter2"),
            "{} holds the password",
            file.display()
        );
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("--storage 'postgresql://postgres:***@/secrets?host="),
        "{report}"
    );

    // A refused storage's error names the URL without its password, even one holding a `/`
    // or a `?` (which a URL parser would take for the end of the host).
    for password in ["pa/ss", "pa?ss"] {
        let failed = xtask(&[
            "pipeline",
            "--out",
            work.path().join("refused").to_str().unwrap(),
            "--storage",
            &format!("postgresql://ann:{password}@127.0.0.1:1/x"),
            "--sample",
            "300",
        ]);
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert!(!failed.status.success());
        assert!(
            stderr.contains("postgresql://ann:***@127.0.0.1:1/x"),
            "{stderr}"
        );
        assert!(!stderr.contains(password), "{stderr}");
    }
}

#[test]
fn a_search_whose_trials_cannot_run_is_refused_or_stops() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("run");
    let base = [
        "pipeline",
        "--out",
        out.to_str().unwrap(),
        "--sample",
        "300",
        "--trials",
        "5",
        "--epochs",
        "1",
        "--max-length",
        "32",
        "--vocab-size",
        "400",
    ];
    // A space the trainer refuses at every point: refused before any trial.
    let refused = xtask(&[&base[..], &["--space", "learning_rate=float:-1e-3:-1e-4"]].concat());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("--space learning_rate: the trainer refuses learning_rate = -0.001"),
        "{stderr}"
    );
    assert!(!out.join("study.db").exists());
    // A batch size from a float range is refused too (it would be truncated).
    let refused = xtask(&[&base[..], &["--space", "batch_size=float:8:16"]].concat());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("a count takes whole numbers"), "{stderr}");

    // Trials that fail for a reason no check foresees (an out-of-memory on every trial, say;
    // here each trial's run folder holds a checkpoint of an unknown layout, which resuming
    // refuses): the worker stops after --max-consecutive-failures, with the last error.
    for trial in 0..5 {
        let dir = out.join(format!("trials/trial_{trial}"));
        std::fs::create_dir_all(dir.join("checkpoints/step-1")).unwrap();
        std::fs::write(dir.join("train_config.json"), "{}").unwrap();
        std::fs::write(
            dir.join("checkpoints/step-1/state.json"),
            r#"{"version": 0}"#,
        )
        .unwrap();
    }
    let run = xtask(&[&base[..], &["--max-consecutive-failures", "2"]].concat());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("2 trials in a row failed"), "{stderr}");
    assert!(stderr.contains("state.json"), "{stderr}");
    assert_eq!(study_trials(&out).len(), 2, "{stderr}");
}

/// The BERT family end to end on the tiny random BERT of `fixtures/model`: a bare `BertModel`
/// folder fine-tunes (a fresh head, named in transformers' terms) into a
/// `BertForSequenceClassification` folder that `predict` classifies with; the pipeline runs on
/// it; a `BertForMaskedLM` pre-trains further.
#[test]
fn bert_folders_fine_tune_predict_run_the_pipeline_and_pretrain() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/model");
    let (base, mlm) = (fixtures.join("bert-base"), fixtures.join("bert-mlm"));
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    prepare_sample(data.to_str().unwrap(), 600);
    let run = work.path().join("run");
    let trained = xtask(&[
        "train",
        "--prepared",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--pretrained",
        base.to_str().unwrap(),
        "--epochs",
        "1",
        "--max-length",
        "32",
    ]);
    let stderr = String::from_utf8_lossy(&trained.stderr);
    assert!(trained.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "newly initialised (not in the checkpoint): classifier.bias, classifier.weight"
        ),
        "{stderr}"
    );
    let best = run.join("best_model");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(best.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["model_type"], "bert");
    let predicted = xtask(&[
        "predict",
        "--model",
        best.to_str().unwrap(),
        "--json",
        "what a day",
    ]);
    assert!(
        predicted.status.success(),
        "{}",
        String::from_utf8_lossy(&predicted.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_slice(predicted.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["logits"].as_array().unwrap().len(), 2);

    let piped = xtask(&[
        "pipeline",
        "--out",
        work.path().join("pipe").to_str().unwrap(),
        "--pretrained",
        base.to_str().unwrap(),
        "--sample",
        "600",
        "--trials",
        "2",
        "--epochs",
        "1",
        "--max-length",
        "32",
    ]);
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert!(work.path().join("pipe/best_model/vocab.txt").exists());

    let pre = work.path().join("pretrain");
    let pretrained = xtask(&[
        "pretrain",
        "--input",
        data.join("train.parquet").to_str().unwrap(),
        "--out",
        pre.to_str().unwrap(),
        "--pretrained",
        mlm.to_str().unwrap(),
        "--max-steps",
        "6",
        "--max-length",
        "32",
    ]);
    assert!(
        pretrained.status.success(),
        "{}",
        String::from_utf8_lossy(&pretrained.stderr)
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pre.join("model/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "BertForMaskedLM");
}
