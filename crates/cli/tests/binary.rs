//! The installed binary on its own: the default pipeline (here shortened) runs from any folder,
//! its run written under that folder, and what it tells the user to run names the binary.

use std::process::Command;

#[test]
fn the_pipeline_runs_from_any_folder_into_it() {
    let folder = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_roberta-sentiment"))
        .current_dir(folder.path())
        .args([
            "pipeline",
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
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let run = folder.path().join("runs/pipeline");
    for file in [
        "report.md",
        "report.html",
        "best_model/config.json",
        "study.db",
    ] {
        assert!(
            run.join(file).is_file(),
            "{file} missing under {}",
            run.display()
        );
    }
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(
        report.contains("roberta-sentiment pipeline --sample 600"),
        "the report's command to reproduce should name the binary:\n{report}"
    );
    assert!(
        stdout.contains("roberta-sentiment pipeline --input"),
        "the closing hint should name the binary:\n{stdout}"
    );
}

#[test]
fn a_bad_flag_is_refused_with_the_binarys_name() {
    let output = Command::new(env!("CARGO_BIN_EXE_roberta-sentiment"))
        .args(["pipeline", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("roberta-sentiment pipeline"), "{stderr}");
}
