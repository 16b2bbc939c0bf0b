//! Chaos: four pipeline workers share one PostgreSQL study (a real server, started here) while
//! one is killed (SIGKILL) and started again, another is frozen (SIGSTOP) past the grace
//! period and thawed, and the database server restarts under them. The study must end with
//! exactly the trials asked for, numbered without gaps; the final stage must run once, its
//! report naming the best trial the final stage used; no worker may panic.
//!
//! The moments are drawn from a seed printed at the start (`CHAOS_SEED` sets it), and tied
//! to what the workers print (a fault lands while a trial trains), so a failure can be
//! replayed as nearly as timing allows.

#[path = "../../crates/search/tests/support/postgres.rs"]
mod postgres_server;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sentiment_search::{Study, TrialState};

const TRIALS: usize = 8;
const GRACE_SECONDS: u64 = 3;

/// A worker process and everything it printed, read as it prints.
struct Worker {
    out: PathBuf,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Worker {
    fn start(out: &Path, url: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["pipeline", "--out", out.to_str().unwrap()])
            .args(["--storage", url, "--study-name", "chaos"])
            .args(["--trials", &TRIALS.to_string(), "--startup-trials", "2"])
            .args(["--sample", "4000", "--epochs", "2"])
            .args(["--max-length", "32", "--vocab-size", "400"])
            .args(["--heartbeat-interval", "1"])
            .args(["--grace-period", &GRACE_SECONDS.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |stream: Box<dyn std::io::Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let sink = Arc::clone(&text);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut sink = sink.lock().unwrap();
                    sink.push_str(&line);
                    sink.push('\n');
                }
            });
            text
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Self {
            out: out.to_path_buf(),
            child,
            stdout,
            stderr,
        }
    }

    fn printed(&self) -> String {
        format!(
            "{}\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// Waits until the worker has started `n` trials (its "search: trial" lines).
    fn wait_for_trials(&self, n: usize, deadline: Instant) {
        while self.stdout.lock().unwrap().matches("search: trial").count() < n {
            assert!(
                Instant::now() < deadline,
                "no trial started:\n{}",
                self.printed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill sends a signal to our own child process, by its id.
        let status = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(status, 0, "kill({}, {signal})", self.child.id());
    }
}

/// A small deterministic generator (xorshift) for the chaos moments.
struct Moments(u64);

impl Moments {
    fn millis(&mut self, below: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(self.0 % below)
    }
}

#[test]
fn workers_killed_frozen_and_cut_off_from_the_database_still_finish_one_study() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("CHAOS_SEED={seed}");
    let mut moments = Moments(seed);
    let server = postgres_server::TestServer::start();
    let url = server.database("chaos");
    let work = tempfile::tempdir().unwrap();
    let out = |i: usize| work.path().join(format!("worker_{i}"));
    let deadline = Instant::now() + Duration::from_secs(400);

    let mut workers: Vec<Worker> = (0..4).map(|i| Worker::start(&out(i), &url)).collect();
    let mut finished: Vec<Worker> = Vec::new();

    // Worker 0 is killed while it trains a trial, and started again on its folder.
    workers[0].wait_for_trials(1, deadline);
    std::thread::sleep(moments.millis(800));
    workers[0].child.kill().unwrap();
    workers[0].child.wait().unwrap();
    let killed = std::mem::replace(&mut workers[0], Worker::start(&out(0), &url));
    finished.push(killed);

    // Worker 1 is frozen while it trains, past the grace period: the others fail its trial
    // and retry it; thawed, it must log that and go on.
    workers[1].wait_for_trials(1, deadline);
    std::thread::sleep(moments.millis(800));
    workers[1].signal(libc::SIGSTOP);
    // The database restarts while worker 1 is frozen and the others train.
    std::thread::sleep(moments.millis(1500));
    server.restart();
    std::thread::sleep(Duration::from_secs(GRACE_SECONDS + 3));
    workers[1].signal(libc::SIGCONT);

    for mut worker in workers {
        loop {
            if let Some(status) = worker.child.try_wait().unwrap() {
                // Let the readers drain what it printed last.
                std::thread::sleep(Duration::from_millis(200));
                assert!(
                    status.success(),
                    "{}: {status}\n{}",
                    worker.out.display(),
                    worker.printed()
                );
                break;
            }
            if Instant::now() > deadline {
                let _ = worker.child.kill();
                panic!(
                    "{} did not finish:\n{}",
                    worker.out.display(),
                    worker.printed()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        finished.push(worker);
    }
    let everything: String = finished
        .iter()
        .map(|w| format!("=== {}\n{}", w.out.display(), w.printed()))
        .collect();
    assert!(!everything.contains("panicked"), "{everything}");
    if std::env::var_os("CHAOS_LOG").is_some() {
        println!("{everything}");
    }

    // Exactly the trials asked for are complete, numbered 0..n (reading refuses a gap).
    let storage = sentiment_search::storage(&url, "chaos").unwrap();
    let record = Study::read(storage.as_ref()).unwrap().unwrap();
    let complete = record
        .trials
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .count();
    assert_eq!(complete, TRIALS, "{everything}");
    assert!(
        record
            .trials
            .iter()
            .all(|t| matches!(t.state, TrialState::Complete | TrialState::Fail)),
        "{everything}"
    );

    // The final stage ran once, and its report names the trial it used.
    let reports: Vec<PathBuf> = (0..4)
        .map(|i| out(i).join("report.md"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(reports.len(), 1, "{everything}");
    let report = std::fs::read_to_string(&reports[0]).unwrap();
    let best = record
        .trials
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .fold(None::<&sentiment_search::Trial>, |best, t| match best {
            Some(b) if b.value >= t.value => Some(b),
            _ => Some(t),
        })
        .unwrap();
    assert!(
        report.contains(&format!("Best parameters (trial {},", best.number)),
        "best is trial {}:\n{report}",
        best.number
    );
    let final_worker = finished
        .iter()
        .rev()
        .find(|w| w.out.join("report.md") == reports[0])
        .unwrap();
    assert!(
        final_worker
            .printed()
            .contains(&format!("best trial {}:", best.number)),
        "{}",
        final_worker.printed()
    );
}
