//! Studies in Optuna 5's own SQLite schema, against `fixtures/search/optuna/study.db`, which
//! Optuna itself wrote (`fixtures/search/optuna/generate.py`): the schema table by table,
//! column by column; and a study Optuna wrote, read and continued by our TPE.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use sentiment_search::{
    Direction, Outcome, Sampler, SqliteStorage, Study, TpeConfig, TrialState, parse_space,
};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/search/optuna/study.db")
}

/// Every table, index and their SQL, as SQLite records them.
fn schema(path: &Path) -> Vec<(String, String, String, Option<String>)> {
    let db = Connection::open(path).unwrap();
    let mut statement = db
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
        .unwrap();
    statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The pipeline's default space, as the fixture's study has it.
fn notebook_space() -> sentiment_search::SearchSpace {
    parse_space(["learning_rate=float:2e-4:2e-3:log", "batch_size=cat:16,32"]).unwrap()
}

#[test]
fn our_schema_is_optunas() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.db");
    let mut study = Study::with_storage(
        Box::new(SqliteStorage::new(&path, "ours")),
        Direction::Maximize,
        notebook_space(),
        Sampler::Random,
        3,
    )
    .unwrap();
    let t = study.ask().unwrap();
    study.report(t.number, 1, f64::NAN).unwrap();
    study.tell(t.number, Outcome::Complete(0.5)).unwrap();
    let (ours, optunas) = (schema(&path), schema(&fixture()));
    assert_eq!(ours.len(), optunas.len());
    for (a, b) in ours.iter().zip(&optunas) {
        assert_eq!(a, b);
    }
    let db = Connection::open(&path).unwrap();
    let one = |sql: &str| -> String { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(one("SELECT version_num FROM alembic_version"), "v3.2.0.a");
    let version: i64 = db
        .query_row("SELECT schema_version FROM version_info", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 12);
    // Optuna's encodings: the direction, a categorical's index, NaN as a type.
    assert_eq!(one("SELECT direction FROM study_directions"), "MAXIMIZE");
    let index: f64 = db
        .query_row(
            "SELECT param_value FROM trial_params WHERE param_name = 'batch_size'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(index, t.internal["batch_size"]);
    assert_eq!(
        one("SELECT intermediate_value_type FROM trial_intermediate_values"),
        "NAN"
    );
    assert_eq!(one("SELECT value_type FROM trial_values"), "FINITE");
    let started = one("SELECT datetime_start FROM trials");
    assert!(
        chrono::NaiveDateTime::parse_from_str(&started, "%Y-%m-%d %H:%M:%S%.6f").is_ok(),
        "{started}"
    );
}

#[test]
fn a_study_optuna_wrote_is_read_and_continued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("study.db");
    std::fs::copy(fixture(), &path).unwrap();
    let open = |space| {
        Study::with_storage(
            Box::new(SqliteStorage::new(&path, "notebook")),
            Direction::Maximize,
            space,
            Sampler::Tpe(TpeConfig {
                n_startup_trials: 3,
                ..TpeConfig::default()
            }),
            11,
        )
    };
    // Another space than the trials' is refused, naming the parameter.
    let err =
        open(parse_space(["learning_rate=float:2e-4:2e-3:log", "batch_size=cat:8,16"]).unwrap())
            .unwrap_err();
    assert!(err.to_string().contains("batch_size"), "{err}");

    let mut study = open(notebook_space()).unwrap();
    let trials = study.trials().to_vec();
    let states: Vec<TrialState> = trials.iter().map(|t| t.state).collect();
    use TrialState::*;
    assert_eq!(
        states,
        [Complete, Complete, Pruned, Complete, Fail, Complete]
    );
    assert_eq!(trials[5].value, Some(0.8125));
    assert_eq!(trials[1].params["batch_size"], 32);
    assert_eq!(trials[1].params["learning_rate"], 0.0012);
    assert_eq!(trials[0].intermediate.get(&2), Some(&0.78));
    assert_eq!(trials[3].user_attrs["run_dir"], "trials/trial_3");
    assert_eq!(study.best_trial().unwrap().number, 5);

    // Our TPE continues it (four complete trials: past the startup count).
    let t = study.ask().unwrap();
    assert_eq!(t.number, 6);
    study.report(t.number, 1, 0.7).unwrap();
    study
        .set_user_attr(t.number, "run_dir", "trials/trial_6".into())
        .unwrap();
    study.tell(t.number, Outcome::Complete(0.79)).unwrap();

    // What we wrote reads as Optuna's own: the distribution of each new parameter equals the
    // one Optuna wrote for the same parameter.
    let db = Connection::open(&path).unwrap();
    let distribution = |trial: i64, name: &str| -> serde_json::Value {
        let text: String = db
            .query_row(
                "SELECT p.distribution_json FROM trial_params p JOIN trials t \
                 ON t.trial_id = p.trial_id WHERE t.number = ?1 AND p.param_name = ?2",
                rusqlite::params![trial, name],
                |r| r.get(0),
            )
            .unwrap();
        serde_json::from_str(&text).unwrap()
    };
    for name in ["learning_rate", "batch_size"] {
        assert_eq!(distribution(6, name), distribution(0, name), "{name}");
    }
    let count: i64 = db
        .query_row("SELECT COUNT(*) FROM trials", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 7);
    // The user attribute as Optuna writes its own: JSON text.
    let attr: String = db
        .query_row(
            "SELECT a.value_json FROM trial_user_attributes a JOIN trials t \
             ON t.trial_id = a.trial_id WHERE t.number = 6 AND a.key = 'run_dir'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(attr, "\"trials/trial_6\"");
    // Reopened, the study is ours now: its settings are recorded, the trials unchanged.
    let again = open(notebook_space()).unwrap();
    assert_eq!(again.trials().len(), 7);
    assert_eq!(&again.trials()[..6], &trials[..]);
}
