//! Workers sharing a study: dead workers' trials are failed and retried in their run folders
//! (a process of this machine that ended, at once; a worker elsewhere, once its heartbeat is
//! older than the grace period), and pipelines on a shared PostgreSQL study (a real server,
//! started by the test) split the trials, run the final stage once and refuse other settings.

mod common;
#[path = "../../search/tests/support/postgres.rs"]
mod postgres_server;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{config, own_study, run, run_worker};
use sentiment_pipeline::PipelineError;
use sentiment_search::{Study, TrialState, WORKER_ATTRIBUTE};

/// This machine's host name, as workers record it.
fn host() -> String {
    let output = Command::new("uname").arg("-n").output().unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The id of a process that has ended.
fn ended_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn dead_workers_trials_are_failed_and_retried_in_their_run_folders() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("p");
    let mut settings = config(&out, 300, 1);
    settings.trials = 1;
    run(settings.clone()).0.unwrap();

    // Two trials left running: one by a pipeline of this machine whose process ended, one by
    // a worker elsewhere that stopped beating.
    let mut study = common::reopen_own_study(&out);
    let here = format!("{}:{}", host(), ended_pid());
    let a = study.ask().unwrap();
    study
        .set_system_attr(a.number, WORKER_ATTRIBUTE, here.clone().into())
        .unwrap();
    // Where the pid is valid: this boot and pid namespace, as the pipeline records it.
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let namespace = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let place = format!("{}/{}", boot.trim(), namespace.display());
    study
        .set_system_attr(a.number, "sentiment:process", place.into())
        .unwrap();
    study
        .set_user_attr(a.number, "run_dir", "trials/trial_1".into())
        .unwrap();
    let b = study.ask().unwrap();
    study
        .set_system_attr(b.number, WORKER_ATTRIBUTE, "elsewhere:1".into())
        .unwrap();
    study.heartbeat(b.number).unwrap();
    drop(study);
    settings.trials = 3;
    settings.study.heartbeat_interval = Duration::from_secs(1);
    // The heartbeats are in whole seconds (SQLite's clock): older than the 2 s grace period.
    std::thread::sleep(Duration::from_millis(3200));
    let (done, messages) = run(settings);
    done.unwrap();
    assert!(
        messages.contains(&format!(
            "trial 1 of {here} failed: its process has ended; queued again as trial 3"
        )),
        "{messages}"
    );
    assert!(
        messages.contains("trial 2 of elsewhere:1 failed: its last heartbeat is"),
        "{messages}"
    );
    assert!(messages.contains("queued again as trial 4"), "{messages}");
    assert!(
        messages.contains("search: trial 3 of 3 (retry of trial 1)"),
        "{messages}"
    );

    let record = Study::read(&own_study(&out)).unwrap().unwrap();
    let states: Vec<TrialState> = record.trials.iter().map(|t| t.state).collect();
    use TrialState::*;
    assert_eq!(states, [Complete, Fail, Fail, Complete, Complete]);
    assert_eq!(record.trials[3].params, a.params);
    assert_eq!(record.trials[4].params, b.params);
    // The retry trained in its original's run folder (where it would resume from its
    // checkpoints), and each retry records the worker that ran it.
    assert_eq!(record.trials[3].user_attrs["run_dir"], "trials/trial_1");
    assert!(out.join("trials/trial_1/metrics.json").exists());
    assert!(record.trials[3].worker().is_some_and(|w| w != here));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let retry = &report["trials"][3];
    assert_eq!(retry["retried_from"], 1, "{retry}");
    assert_eq!(retry["state"], "complete", "{retry}");
}

#[test]
fn pipelines_on_a_shared_postgres_study_split_it_and_run_the_final_stage_once() {
    let server = postgres_server::TestServer::start();
    let url = server.database("shared");
    let work = tempfile::tempdir().unwrap();
    let worker = |name: &str| {
        let mut settings = config(&work.path().join(name), 300, 1);
        settings.trials = 3;
        settings.study.storage = Some(url.clone());
        settings.study.name = "tweets".into();
        settings
    };
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| run_worker(worker("a")));
        let b = scope.spawn(|| run_worker(worker("b")));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, messages_a) = (a.0.unwrap(), a.1);
    let (b, messages_b) = (b.0.unwrap(), b.1);
    let finals = [&a, &b].iter().filter(|o| o.is_some()).count();
    assert_eq!(finals, 1, "A:\n{messages_a}\n\nB:\n{messages_b}");
    let (done, other) = if a.is_some() {
        (work.path().join("a"), work.path().join("b"))
    } else {
        (work.path().join("b"), work.path().join("a"))
    };
    assert!(done.join("report.html").exists());
    assert!(!other.join("report.html").exists());

    let storage = sentiment_search::storage(&url, "tweets").unwrap();
    let record = Study::read(storage.as_ref()).unwrap().unwrap();
    let numbers: Vec<usize> = record.trials.iter().map(|t| t.number).collect();
    assert_eq!(numbers, [0, 1, 2]);
    assert!(
        record
            .trials
            .iter()
            .all(|t| t.state == TrialState::Complete && t.worker().is_some())
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(done.join("report.json")).unwrap()).unwrap();
    for (trial, shown) in record
        .trials
        .iter()
        .zip(report["trials"].as_array().unwrap())
    {
        assert_eq!(shown["worker"].as_str(), trial.worker(), "{shown}");
    }

    // A worker with other settings is refused, saying what differs.
    let mut stranger = worker("c");
    stranger.epochs = 2;
    let (refused, _) = run_worker(stranger);
    match refused {
        Err(PipelineError::Refused(message)) => {
            assert!(message.contains("--epochs 2 (was 1)"), "{message}");
            assert!(!message.contains("password"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The same settings again: nothing left to run; the final stage is run here on request.
    let mut again = worker("c");
    again.study.final_only = true;
    let (done, messages) = run_worker(again);
    assert!(done.unwrap().is_some(), "{messages}");
    assert!(!messages.contains("search: trial"), "{messages}");
    assert!(Path::new(&work.path().join("c/report.html")).exists());
}

/// At the first training step, fails the study's running trial from outside, as a peer does
/// when this worker's heartbeats stall past the grace period (a suspended laptop, a network
/// cut); its retry inherits a run folder that a living process holds (the lock taken here, as
/// the still-running original would hold its own).
struct PeerFailsTheTrial {
    out: std::path::PathBuf,
    messages: common::Messages,
    held: std::sync::Mutex<Option<std::fs::File>>,
}

impl sentiment_pipeline::Observer for PeerFailsTheTrial {
    fn message(&self, line: &str) {
        sentiment_pipeline::Observer::message(&self.messages, line);
    }

    fn progress(&self) -> Box<dyn FnMut(sentiment_train::Progress) + '_> {
        Box::new(move |_| {
            let mut held = self.held.lock().unwrap();
            if held.is_some() {
                return;
            }
            let busy = self.out.join("trials/busy");
            std::fs::create_dir_all(&busy).unwrap();
            let lock = std::fs::File::create(busy.join(".lock")).unwrap();
            lock.try_lock().unwrap();
            *held = Some(lock);
            let mut study = common::reopen_own_study(&self.out);
            let failed = study
                .fail_stale(|t| t.state == TrialState::Running, true)
                .unwrap();
            let retry = failed[0].1.unwrap();
            study
                .set_user_attr(retry, "run_dir", "trials/busy".into())
                .unwrap();
        })
    }
}

#[test]
fn a_trial_failed_by_a_peer_is_logged_and_its_retry_avoids_a_busy_folder() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("p");
    let mut settings = config(&out, 300, 1);
    settings.trials = 2;
    let observer = PeerFailsTheTrial {
        out: out.clone(),
        messages: common::Messages::default(),
        held: std::sync::Mutex::new(None),
    };
    let pipeline =
        sentiment_pipeline::Pipeline::new(settings, vec![burn::tensor::Device::flex()]).unwrap();
    let done = pipeline.run(&sentiment_train::StopToken::new(), &observer);
    let messages = observer.messages.all();
    // The worker goes on: the trial it ran is the study's failure, not its own.
    done.unwrap();
    assert!(
        messages.contains("trial 0: another worker marked it Fail while it ran here"),
        "{messages}"
    );
    assert!(
        messages.contains("trials/busy is in use") && messages.contains("starts afresh in"),
        "{messages}"
    );
    let record = Study::read(&own_study(&out)).unwrap().unwrap();
    let states: Vec<TrialState> = record.trials.iter().map(|t| t.state).collect();
    use TrialState::*;
    assert_eq!(states, [Fail, Complete, Complete], "{messages}");
    assert_eq!(record.trials[1].retried_from(), Some(0));
    assert_eq!(record.trials[1].user_attrs["run_dir"], "trials/trial_1");
    assert!(out.join("trials/trial_1/outcome.json").exists());
    // Nothing was written into the busy folder but its lock.
    let names: Vec<_> = std::fs::read_dir(out.join("trials/busy"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [".lock"]);
}
