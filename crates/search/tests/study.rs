//! Studies: resume, shared workers, TPE against random search, pruning, the trials table.

use sentiment_search::{
    Direction, Outcome, Sampler, SearchError, Study, TpeConfig, TrialState, parse_space,
};

fn space() -> sentiment_search::SearchSpace {
    parse_space([
        "x=float:-5:5",
        "y=float:1e-3:1e1:log",
        "k=int:1:8",
        "c=cat:a,b,c",
    ])
    .unwrap()
}

/// A mixed objective with its minimum 0 at x = 1, y = 0.1, k = 3, c = b.
fn objective(p: &std::collections::BTreeMap<String, serde_json::Value>) -> f64 {
    let x = p["x"].as_f64().unwrap();
    let y = p["y"].as_f64().unwrap();
    let k = p["k"].as_i64().unwrap();
    let c = if p["c"] == "b" { 0.0 } else { 1.0 };
    (x - 1.0).powi(2) + (y.log10() + 1.0).powi(2) + ((k - 3) as f64).powi(2) * 0.2 + c
}

fn best_after(sampler: Sampler, seed: u64, n: usize) -> f64 {
    let mut study = Study::in_memory(Direction::Minimize, space(), sampler, seed);
    for _ in 0..n {
        let t = study.ask().unwrap();
        let v = objective(&t.params);
        study.tell(t.number, Outcome::Complete(v)).unwrap();
    }
    study.best_trial().unwrap().value.unwrap()
}

#[test]
fn tpe_beats_random_search_on_a_mixed_problem() {
    let seeds = 0..15u64;
    let mut tpe: Vec<f64> = seeds
        .clone()
        .map(|s| best_after(Sampler::Tpe(TpeConfig::default()), s, 50))
        .collect();
    let mut random: Vec<f64> = seeds.map(|s| best_after(Sampler::Random, s, 50)).collect();
    tpe.sort_by(f64::total_cmp);
    random.sort_by(f64::total_cmp);
    let (mt, mr) = (tpe[tpe.len() / 2], random[random.len() / 2]);
    assert!(mt < mr, "median best: TPE {mt} vs random {mr}");
}

#[test]
fn an_sqlite_study_resumes_is_shared_by_workers_and_can_be_queried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("studies.db");
    resumes_and_is_shared_by_workers(&path);
    // The tables are Optuna's RDB schema (tests/optuna.rs), for users' own queries.
    let db = rusqlite::Connection::open(&path).unwrap();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'"),
        14
    );
    assert_eq!(count("SELECT COUNT(*) FROM trials WHERE state = 'FAIL'"), 1);
    assert_eq!(
        count("SELECT COUNT(*) FROM trial_params WHERE param_name = 'x'"),
        15
    );
    let name: String = db
        .query_row("SELECT study_name FROM studies", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, sentiment_search::DEFAULT_STUDY_NAME);
    // A second study in the same file is independent of the first.
    let other = sentiment_search::SqliteStorage::new(&path, "second");
    let mut second = Study::with_storage(
        Box::new(other),
        Direction::Maximize,
        space(),
        Sampler::Random,
        1,
    )
    .unwrap();
    let t = second.ask().unwrap();
    second.report(t.number, 0, 0.5).unwrap();
    second.tell(t.number, Outcome::Complete(1.0)).unwrap();
    assert_eq!(count("SELECT COUNT(*) FROM studies"), 2);
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM trial_intermediate_values v \
             JOIN trials t ON t.trial_id = v.trial_id \
             JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = 'second'"
        ),
        1
    );
    let reopened = Study::with_storage(
        Box::new(sentiment_search::SqliteStorage::new(&path, "second")),
        Direction::Maximize,
        space(),
        Sampler::Random,
        1,
    )
    .unwrap();
    assert_eq!(reopened.trials(), second.trials());
}

fn resumes_and_is_shared_by_workers(path: &std::path::Path) {
    let path = path.to_path_buf();
    let sampler = Sampler::Tpe(TpeConfig {
        n_startup_trials: 3,
        ..TpeConfig::default()
    });
    {
        let mut study = Study::open(&path, Direction::Minimize, space(), sampler, 7).unwrap();
        for _ in 0..4 {
            let t = study.ask().unwrap();
            study
                .tell(t.number, Outcome::Complete(objective(&t.params)))
                .unwrap();
        }
        // "Killed" while trial 4 runs.
        study.ask().unwrap();
    }
    let mut resumed = Study::open(&path, Direction::Minimize, space(), sampler, 7).unwrap();
    assert_eq!(resumed.trials().len(), 5);
    assert_eq!(resumed.trials()[4].state, TrialState::Running);
    resumed.tell(4, Outcome::Fail).unwrap();

    // Two workers on one file never share a trial number.
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut study =
                    Study::open(&path, Direction::Minimize, space(), sampler, 7).unwrap();
                let mut mine = Vec::new();
                for _ in 0..5 {
                    let t = study.ask().unwrap();
                    study
                        .tell(t.number, Outcome::Complete(objective(&t.params)))
                        .unwrap();
                    mine.push(t.number);
                }
                mine
            })
        })
        .collect();
    let mut numbers: Vec<usize> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (5..15).collect::<Vec<_>>());
    let mut study = Study::open(&path, Direction::Minimize, space(), sampler, 7).unwrap();
    study.refresh().unwrap();
    assert_eq!(study.trials().len(), 15);
    assert!(
        study
            .trials()
            .iter()
            .all(|t| t.state != TrialState::Running)
    );

    // Another definition is refused.
    let err = Study::open(&path, Direction::Maximize, space(), sampler, 7).unwrap_err();
    assert!(
        err.to_string()
            .contains("the study minimizes, this run asks to maximize"),
        "{err}"
    );
    let other_space = parse_space([
        "x=float:-5:5",
        "y=float:1e-3:1e1:log",
        "k=int:1:8",
        "c=cat:a,b",
    ])
    .unwrap();
    let err = Study::open(&path, Direction::Minimize, other_space, sampler, 8).unwrap_err();
    let err = err.to_string();
    assert!(
        err.contains("the study was created with c in {a, b, c}; this run asks for {a, b}"),
        "{err}"
    );
    assert!(
        err.contains("the study was created with seed 7; this run asks for 8"),
        "{err}"
    );
}

#[test]
fn tell_and_report_are_checked() {
    let mut study = Study::in_memory(Direction::Maximize, space(), Sampler::Random, 0);
    let t = study.ask().unwrap();
    assert!(matches!(
        study.tell(9, Outcome::Complete(1.0)),
        Err(SearchError::UnknownTrial(9))
    ));
    assert!(study.tell(t.number, Outcome::Complete(f64::NAN)).is_err());
    study.report(t.number, 1, 0.5).unwrap();
    study.tell(t.number, Outcome::Complete(0.5)).unwrap();
    // A finished trial (told already, or failed by another worker) takes no more: the error
    // says so in a form a worker can act on.
    assert!(matches!(
        study.tell(t.number, Outcome::Complete(0.6)),
        Err(SearchError::Finished {
            number: 0,
            state: TrialState::Complete
        })
    ));
    assert!(matches!(
        study.report(t.number, 2, 0.7),
        Err(SearchError::Finished { .. })
    ));
    let csv = study.trials_csv();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "number,value,state,datetime_start,datetime_complete,duration,params_c,params_k,params_x,params_y"
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with("0,0.5,complete,"), "{row}");
    // Times in ISO 8601 with the zone's offset, to the millisecond.
    let start = row.split(',').nth(3).unwrap();
    let parsed = chrono::DateTime::parse_from_rfc3339(start).unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!((parsed.timestamp() - now).abs() < 600, "{start}");
    assert_eq!(start.split('.').nth(1).map(|f| f.len()), Some(9), "{start}");
}

#[test]
fn median_pruner_stops_trials_below_the_median() {
    let mut study = Study::in_memory(Direction::Maximize, space(), Sampler::Random, 0);
    for value in [0.8, 0.7, 0.9] {
        let t = study.ask().unwrap();
        study.report(t.number, 1, value).unwrap();
        study.tell(t.number, Outcome::Complete(value)).unwrap();
    }
    let bad = study.ask().unwrap();
    study.report(bad.number, 1, 0.5).unwrap();
    assert!(study.median_prunes(bad.number, 1, 3, 0));
    assert!(
        !study.median_prunes(bad.number, 1, 4, 0),
        "too few complete trials"
    );
    assert!(!study.median_prunes(bad.number, 1, 3, 2), "warmup");
    let good = study.ask().unwrap();
    study.report(good.number, 1, 0.85).unwrap();
    assert!(!study.median_prunes(good.number, 1, 3, 0));
}

#[test]
fn samples_follow_the_space() {
    let mut study = Study::in_memory(
        Direction::Minimize,
        space(),
        Sampler::Tpe(TpeConfig::default()),
        3,
    );
    for _ in 0..25 {
        let t = study.ask().unwrap();
        let x = t.params["x"].as_f64().unwrap();
        let y = t.params["y"].as_f64().unwrap();
        let k = t.params["k"].as_i64().unwrap();
        assert!((-5.0..=5.0).contains(&x) && (1e-3..=10.0).contains(&y) && (1..=8).contains(&k));
        assert!(["a", "b", "c"].contains(&t.params["c"].as_str().unwrap()));
        study
            .tell(t.number, Outcome::Complete(objective(&t.params)))
            .unwrap();
    }
}

/// A storage of our own, as a server database would be: the study's code does not change.
#[derive(Debug, Clone, Default)]
struct SharedMemory(std::sync::Arc<std::sync::Mutex<Option<sentiment_search::StudyRecord>>>);

impl sentiment_search::StudyStorage for SharedMemory {
    fn transact(
        &self,
        change: &mut sentiment_search::StudyChange<'_>,
    ) -> Result<sentiment_search::StudyRecord, SearchError> {
        let mut stored = self.0.lock().unwrap();
        let (record, write) = change(stored.clone())?;
        if write {
            *stored = Some(record.clone());
        }
        Ok(record)
    }

    fn heartbeat(&self, _: usize) -> Result<(), SearchError> {
        Err(SearchError::Storage(
            "no heartbeats in shared memory".into(),
        ))
    }

    fn describe(&self) -> String {
        "shared memory".into()
    }
}

#[test]
fn studies_run_on_any_storage() {
    let storage = SharedMemory::default();
    let open = || {
        Study::with_storage(
            Box::new(storage.clone()),
            Direction::Minimize,
            space(),
            Sampler::Random,
            1,
        )
        .unwrap()
    };
    let (mut a, mut b) = (open(), open());
    let first = a.ask().unwrap();
    let second = b.ask().unwrap();
    assert_eq!((first.number, second.number), (0, 1));
    a.tell(1, Outcome::Complete(2.0)).unwrap();
    b.tell(0, Outcome::Complete(1.0)).unwrap();
    a.refresh().unwrap();
    assert_eq!(a.best_trial().unwrap().number, 0);
}

#[test]
fn trials_csv_quotes_a_choice_that_holds_a_comma() {
    let space = sentiment_search::parse_space(["optim=cat:adamw,sgd"]).unwrap();
    let mut space = space;
    if let Some(sentiment_search::Distribution::Categorical { choices }) = space.get_mut("optim") {
        choices[0] = serde_json::json!("adamw, fused");
    }
    let mut study = Study::in_memory(Direction::Maximize, space, Sampler::Random, 3);
    let mut asked = Vec::new();
    for _ in 0..6 {
        let t = study.ask().unwrap();
        study.tell(t.number, Outcome::Complete(0.5)).unwrap();
        asked.push(t.params["optim"].as_str().unwrap().to_string());
    }
    let csv = study.trials_csv();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let column = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "params_optim")
        .unwrap();
    let read: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[column].to_string())
        .collect();
    assert_eq!(read, asked);
    assert!(asked.iter().any(|a| a.contains(',')), "{asked:?}");
}

#[test]
fn storages_are_named_as_optuna_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("named.db");
    let url = format!("sqlite:///{}", path.display());
    let mut study = Study::with_storage(
        sentiment_search::storage(&url, "mine").unwrap(),
        Direction::Minimize,
        space(),
        Sampler::Random,
        1,
    )
    .unwrap();
    let t = study.ask().unwrap();
    study.tell(t.number, Outcome::Complete(1.0)).unwrap();
    let db = rusqlite::Connection::open(&path).unwrap();
    let name: String = db
        .query_row("SELECT study_name FROM studies", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "mine");
    let postgres = sentiment_search::storage("postgresql+psycopg2://me:pw@db:5432/studies", "s")
        .unwrap()
        .describe();
    assert_eq!(
        postgres,
        "postgresql+psycopg2://me:***@db:5432/studies (study \"s\")"
    );
    for (url, name, needle) in [
        ("ftp://host/x.db", "s", "unknown scheme ftp://"),
        ("study.json", "default", "not JSON"),
    ] {
        let err = sentiment_search::storage(url, name)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{url}: {err}");
    }
}

/// The study `s` of the SQLite file `path`, in this file's space, minimised, seed 1.
fn open_sqlite(path: &std::path::Path, sampler: Sampler) -> Result<Study, SearchError> {
    Study::with_storage(
        Box::new(sentiment_search::SqliteStorage::new(path, "s")),
        Direction::Minimize,
        space(),
        sampler,
        1,
    )
}

/// A study's rows come from a database others write: rows that no study of ours or Optuna's
/// holds are refused with what is wrong, never a panic and never read as another value.
#[test]
fn hostile_study_rows_are_refused_not_misread() {
    let edits = [
        (
            "UPDATE trial_params SET distribution_json = \
             '{\"name\": \"CategoricalDistribution\", \"attributes\": {\"choices\": []}}' \
             WHERE param_name = 'c'",
            "no choices",
        ),
        (
            "UPDATE trial_params SET param_value = 7 WHERE param_name = 'c'",
            "a choice index past the choices",
        ),
        (
            "UPDATE trials SET number = -1 WHERE number = 0",
            "no trial number >= 0",
        ),
        (
            "UPDATE trials SET number = 5 WHERE number = 1",
            "not 0 to 1 in order",
        ),
    ];
    for (edit, expected) in edits {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("study.db");
        let open = || open_sqlite(&path, Sampler::Random);
        let mut study = open().unwrap();
        for _ in 0..2 {
            let t = study.ask().unwrap();
            study.tell(t.number, Outcome::Complete(1.0)).unwrap();
        }
        drop(study);
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(edit, [])
            .unwrap();
        let err = match open() {
            Ok(_) => panic!("{edit}: the study opened"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expected), "{edit}: {err}");
    }
}

#[test]
fn ranges_whose_width_overflows_are_refused() {
    for spec in [
        "w=float:-1e308:1e308",
        "n=int:-9223372036854775807:9223372036854775807",
    ] {
        let err = parse_space([spec]).unwrap_err().to_string();
        assert!(err.contains("too far apart"), "{spec}: {err}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Study rows with arbitrary values where a writer could put them (a parameter's value
    /// and distribution, a trial's number, state and value): the study opens and asks, or
    /// refuses; it never panics.
    #[test]
    fn arbitrary_study_rows_open_or_are_refused(
        value in proptest::num::f64::ANY,
        number in proptest::num::i64::ANY,
        state in "[A-Z]{0,9}",
        which in 0usize..5,
        low in proptest::num::f64::ANY,
        high in proptest::num::f64::ANY,
        choices in proptest::collection::vec(0u8..3, 0..3),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("study.db");
        let open = || {
            open_sqlite(
                &path,
                Sampler::Tpe(TpeConfig { n_startup_trials: 1, ..TpeConfig::default() }),
            )
        };
        let mut study = open().unwrap();
        for _ in 0..3 {
            let t = study.ask().unwrap();
            study.tell(t.number, Outcome::Complete(objective(&t.params))).unwrap();
        }
        drop(study);
        let db = rusqlite::Connection::open(&path).unwrap();
        let float = |v: f64| if v.is_finite() { v.to_string() } else { "1e999".into() };
        let distribution = format!(
            r#"{{"name": "FloatDistribution", "attributes": {{"low": {}, "high": {}, "log": false, "step": null}}}}"#,
            float(low),
            float(high)
        );
        let categorical = format!(
            r#"{{"name": "CategoricalDistribution", "attributes": {{"choices": {choices:?}}}}}"#
        );
        let (sql, parameter): (&str, rusqlite::types::Value) = match which {
            0 => ("UPDATE trial_params SET param_value = ?1 WHERE param_name = 'c'", value.into()),
            1 => ("UPDATE trials SET number = ?1 WHERE number = 1", number.into()),
            2 => ("UPDATE trials SET state = ?1 WHERE number = 2", state.clone().into()),
            3 => ("UPDATE trial_params SET distribution_json = ?1 WHERE param_name = 'x'", distribution.into()),
            _ => ("UPDATE trial_params SET distribution_json = ?1 WHERE param_name = 'c'", categorical.into()),
        };
        db.execute(sql, [parameter]).unwrap();
        drop(db);
        let result = std::panic::catch_unwind(|| {
            if let Ok(mut study) = open() {
                let _ = study.ask();
            }
            let _ = Study::read(&sentiment_search::SqliteStorage::new(&path, "s"));
        });
        proptest::prop_assert!(result.is_ok(), "{sql}: panicked");
    }
}

/// A storage whose every transaction commits and is then run again, as PostgreSQL's is when
/// the connection is lost at COMMIT (the first attempt may have committed; the client cannot
/// know and retries).
#[derive(Debug, Default, Clone)]
struct CommitTwice(SharedMemory);

impl sentiment_search::StudyStorage for CommitTwice {
    fn transact(
        &self,
        change: &mut sentiment_search::StudyChange<'_>,
    ) -> Result<sentiment_search::StudyRecord, SearchError> {
        self.0.transact(change)?;
        self.0.transact(change)
    }

    fn heartbeat(&self, number: usize) -> Result<(), SearchError> {
        self.0.heartbeat(number)
    }

    fn describe(&self) -> String {
        "commit twice".into()
    }
}

#[test]
fn a_write_retried_after_it_committed_is_applied_once() {
    let storage = CommitTwice::default();
    let mut study = Study::with_storage(
        Box::new(storage.clone()),
        Direction::Minimize,
        space(),
        Sampler::Random,
        1,
    )
    .unwrap();
    let first = study.ask_within(5, Some("w:1")).unwrap().unwrap();
    let second = study.ask().unwrap();
    // One trial a request, not a second one left running without a worker.
    assert_eq!((first.number, second.number), (0, 1));
    assert_eq!(study.trials().len(), 2);
    // A tell retried after it committed finds its own result: done, not "already Complete".
    study.tell(0, Outcome::Complete(1.5)).unwrap();
    study.tell(1, Outcome::Fail).unwrap();
    let states: Vec<TrialState> = study.trials().iter().map(|t| t.state).collect();
    assert_eq!(states, [TrialState::Complete, TrialState::Fail]);
    // A different result for a finished trial is still refused.
    assert!(matches!(
        study.tell(0, Outcome::Complete(2.0)),
        Err(SearchError::Finished { .. })
    ));
}
