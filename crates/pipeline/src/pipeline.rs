//! The pipeline itself: prepare → tokenize → search → final training → test evaluation →
//! best_model → report, each stage reusing what an earlier run made only when everything that
//! determined it is unchanged ([`crate::stages`]), so that a killed pipeline resumes with the
//! same command and a changed one never mixes old results with new.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use sentiment_data::{Manifest, PrepareConfig, Split};
use sentiment_search::{
    DEFAULT_STUDY_NAME, Direction, Outcome, Sampler, SearchError, SearchSpace, SqliteStorage,
    Study, StudyStorage, TpeConfig, Trial, TrialState, parse_space,
};
use sentiment_tokenize::{TokenizedRows, read_tokenized, token_files, tokenize_splits};
use sentiment_train::{
    EpochMetrics, Progress, RunOptions, StopToken, TrainConfig, TrainData, TrainHooks, TrainOutcome,
};

use crate::PipelineError;
use crate::lock::FolderLock;
use crate::report::{self, ReportInput};
use crate::stages::{DataKey, SearchKey, StageRecord, show_numbers};
use crate::start::{StartOptions, starting_point};
use crate::trial::{PruneSettings, TRIAL_PARAMETERS, TrialHooks, check_space, trial_config};
use crate::worker::{PROCESS_ATTRIBUTE, Worker};

/// The study system attribute holding the pipeline's settings ([`SearchKey`]): every worker
/// sharing the study must run its trials with the same ones.
const SETTINGS_ATTRIBUTE: &str = "sentiment:pipeline";
/// The study system attribute naming the worker that runs the final stage, and for how many
/// finished trials.
const FINAL_ATTRIBUTE: &str = "sentiment:final";

/// Where the study lives and how the workers that share it behave: Optuna's storage, study
/// name, heartbeats and retries.
#[derive(Debug, Clone, PartialEq)]
pub struct StudySettings {
    /// An Optuna storage (`sqlite:///PATH`, `postgresql://USER@HOST:PORT/DB`) or the path of
    /// an SQLite file, shared by every worker; None keeps the study in `OUT/study.db`, the
    /// pipeline's own.
    pub storage: Option<String>,
    /// The study's name in the storage.
    pub name: String,
    /// How often a running trial's worker records that it is alive.
    pub heartbeat_interval: Duration,
    /// How old a running trial's heartbeat may be before the trial is failed (None: twice the
    /// interval, as Optuna).
    pub grace_period: Option<Duration>,
    /// Queue a dead worker's trial again with its parameters (Optuna's
    /// `RetryHeartbeatStaleTrialCallback`); it resumes from its checkpoints when its run
    /// folder is on this machine.
    pub retry_failed: bool,
    /// Ask no trial: train the best trial's parameters, evaluate and report on the study as
    /// it stands.
    pub final_only: bool,
    /// A worker stops, with the last trial's error, after this many of its trials failed in a
    /// row (an out-of-memory on every trial, a broken model folder): a search whose every
    /// trial fails would otherwise never end.
    pub max_consecutive_failures: usize,
}

impl Default for StudySettings {
    fn default() -> Self {
        Self {
            storage: None,
            name: DEFAULT_STUDY_NAME.to_string(),
            heartbeat_interval: Duration::from_secs(60),
            grace_period: None,
            retry_failed: true,
            final_only: false,
            max_consecutive_failures: 3,
        }
    }
}

impl StudySettings {
    /// The grace period in force.
    pub fn grace(&self) -> Duration {
        self.grace_period.unwrap_or(2 * self.heartbeat_interval)
    }
}

/// Everything a pipeline run is given.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The output folder: `data/`, `study.db`, `trials/`, `final/`, `best_model/`, the report.
    pub out: PathBuf,
    /// How the data is prepared: the input and every option (its `out_dir` is ignored: the
    /// data goes to `OUT/data`).
    pub prepare: PrepareConfig,
    /// A pretrained model (Hugging Face folder or hub id) to fine-tune; None trains from
    /// scratch.
    pub pretrained: Option<String>,
    /// Preset (`tiny`, `small`, `base`) or `config.json` of a model trained from scratch.
    pub model_config: String,
    /// A pretrained tokenizer; None uses the pretrained model's, or trains one on the data.
    pub tokenizer: Option<String>,
    /// Vocabulary of a tokenizer trained here.
    pub vocab_size: usize,
    /// Sequence length.
    pub max_length: usize,
    /// Trials the study should hold, whoever runs them: complete or pruned, or under way
    /// (failed ones do not count). A rerun or another worker runs only what is missing; a
    /// larger count extends a finished study.
    pub trials: usize,
    /// Random trials before TPE acts (None: half the budget, at most 10).
    pub startup_trials: Option<usize>,
    /// Epochs of every trial and of the final run.
    pub epochs: usize,
    /// The Trainer's switches of every run: padding, length grouping, accumulation (the
    /// searched `batch_size` is a micro-batch's), `max_steps`, evaluation and checkpoint steps,
    /// early stopping on validation F1 (a trial stopped early is complete, with its best
    /// value), and reporting (`tensorboard`: `trials/trial_N/tb`, one TensorBoard run per
    /// trial, side by side under `tensorboard --logdir OUT/trials`).
    pub run: RunOptions,
    /// Median pruning, if on.
    pub prune: Option<PruneSettings>,
    /// The search space (see [`PipelineConfig::default_space`]).
    pub space: SearchSpace,
    /// Seed of the data split, the sampler and every run.
    pub seed: u64,
    /// Where the study lives and how workers share it.
    pub study: StudySettings,
    /// Discard a study (and its trials) that other settings made, instead of refusing (the
    /// pipeline's own study in OUT only: a shared one is never deleted).
    pub overwrite: bool,
    /// The command that reproduces the run, shown in the report.
    pub command: String,
}

impl PipelineConfig {
    /// The notebook's space: a log-uniform learning rate (fine-tuning's range with a
    /// pretrained model, a higher one from scratch) and a batch size of 16 or 32.
    pub fn default_space(pretrained: bool) -> SearchSpace {
        let rates = if pretrained {
            "float:1e-5:5e-5:log"
        } else {
            "float:2e-4:2e-3:log"
        };
        parse_space([
            format!("learning_rate={rates}").as_str(),
            "batch_size=cat:16,32",
        ])
        .expect("the default space parses")
    }

    /// Refuses settings that cannot run, naming the flag.
    pub fn validate(&self) -> Result<(), PipelineError> {
        let bad = |m: String| Err(PipelineError::InvalidSetting(m));
        if self.trials == 0 || self.epochs == 0 {
            return bad("--trials and --epochs must be at least 1".into());
        }
        if self.space.is_empty() {
            return bad("--space: the search space is empty".into());
        }
        self.run.validate()?;
        if self.study.max_consecutive_failures == 0 {
            return bad("--max-consecutive-failures must be at least 1".into());
        }
        if self.study.heartbeat_interval.is_zero() {
            return bad("--heartbeat-interval must be at least 1 second".into());
        }
        if self.study.grace() <= self.study.heartbeat_interval {
            return bad(format!(
                "--grace-period {} s must be longer than --heartbeat-interval {} s, or live \
                 trials would be failed",
                self.study.grace().as_secs(),
                self.study.heartbeat_interval.as_secs()
            ));
        }
        for name in self.space.keys() {
            if !TRIAL_PARAMETERS.contains(&name.as_str()) {
                return bad(format!(
                    "--space parameter `{name}` is not one the trainer takes ({})",
                    TRIAL_PARAMETERS.join(", ")
                ));
            }
        }
        Ok(())
    }

    fn startup_trials(&self) -> usize {
        self.startup_trials
            .unwrap_or_else(|| self.trials.div_ceil(2).min(10))
    }
}

/// Where a pipeline's messages and progress go (the command line prints them).
pub trait Observer: Sync {
    /// A line about a stage: what it reused, did or found.
    fn message(&self, line: &str);
    /// A warning the user should act on.
    fn warning(&self, line: &str) {
        self.message(&format!("warning: {line}"));
    }
    /// A printer for the step progress of one training run.
    fn progress(&self) -> Box<dyn FnMut(Progress) + '_>;
}

/// What a finished pipeline produced.
#[derive(Debug, Clone)]
pub struct PipelineOutcome {
    /// The best trial.
    pub best: Trial,
    /// The final run (the best trial's own when it is reusable), with `best_model_dir` at
    /// `OUT/best_model`.
    pub outcome: TrainOutcome,
    /// `OUT/report.html`.
    pub report: PathBuf,
}

/// A pipeline ready to run on its devices.
pub struct Pipeline {
    config: PipelineConfig,
    data_dir: PathBuf,
    /// One search worker per device; the first also runs the single-device stages.
    devices: Vec<Device>,
    /// This process, as trials record it.
    worker: Worker,
}

impl Pipeline {
    /// A pipeline with `config`, training on `devices` (one search worker each; at least one).
    pub fn new(config: PipelineConfig, devices: Vec<Device>) -> Result<Self, PipelineError> {
        config.validate()?;
        if devices.is_empty() {
            return Err(PipelineError::InvalidSetting(
                "--devices must be at least 1".into(),
            ));
        }
        let pipeline = Self {
            data_dir: config.out.join("data"),
            config,
            devices,
            worker: Worker::this(),
        };
        check_space(&pipeline.config.space, &pipeline.base_config())?;
        Ok(pipeline)
    }

    /// The training settings every trial starts from: the Trainer's defaults (best by F1, two
    /// checkpoints kept), the pipeline's epochs, seed and batching.
    fn base_config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.config.epochs,
            seed: self.config.seed,
            run: self.config.run.clone(),
            ..TrainConfig::default()
        }
    }

    /// A trial's run folder: the one its `run_dir` user attribute names (a retried trial
    /// inherits its failed original's, and resumes from its checkpoints), else
    /// `trials/trial_N`. The attribute comes from a study others may write: only a relative
    /// path that stays inside the output folder is taken, since training writes and deletes
    /// checkpoints there.
    fn trial_dir(&self, trial: &Trial) -> Result<PathBuf, PipelineError> {
        let Some(dir) = trial.user_attrs.get("run_dir") else {
            return Ok(self.own_trial_dir(trial.number));
        };
        match dir.as_str() {
            Some(d)
                if !d.is_empty()
                    && Path::new(d)
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_))) =>
            {
                Ok(self.config.out.join(d))
            }
            _ => Err(PipelineError::Refused(format!(
                "trial {}: its run_dir user attribute {dir} is not a relative path inside \
                 --out {}; no run is trained or deleted there",
                trial.number,
                self.config.out.display()
            ))),
        }
    }

    /// `trials/trial_N`: the run folder of a trial started here.
    fn own_trial_dir(&self, number: usize) -> PathBuf {
        self.config
            .out
            .join("trials")
            .join(format!("trial_{number}"))
    }

    /// Who holds a lock this process takes, as the lock file records it.
    fn lock_holder(&self) -> String {
        format!("pid {} on {}", self.worker.pid, self.worker.host)
    }

    fn start_options(&self, seed: u64) -> StartOptions<'_> {
        StartOptions {
            data: &self.data_dir,
            pretrained: self.config.pretrained.as_deref(),
            fresh_config: &self.config.model_config,
            tokenizer: self.config.tokenizer.as_deref(),
            vocab_size: self.config.vocab_size,
            max_length: self.config.max_length,
            seed,
        }
    }

    /// The data key of this run: hashes the input.
    fn data_key(&self) -> Result<DataKey, PipelineError> {
        let input = &self.config.prepare.input;
        let sha = sentiment_data::sha256_file(input)?;
        Ok(DataKey::of_config(&self.config.prepare, sha))
    }

    fn search_key(&self, data: DataKey) -> SearchKey {
        let c = &self.config;
        SearchKey {
            data,
            pretrained: c.pretrained.clone(),
            model_config: c.model_config.clone(),
            tokenizer: c.tokenizer.clone(),
            vocab_size: c.vocab_size,
            max_length: c.max_length,
            epochs: c.epochs,
            padding: c.run.padding,
            group_by_length: c.run.group_by_length,
            gradient_accumulation_steps: c.run.gradient_accumulation_steps,
            early_stopping: c.run.early_stopping(),
            max_steps: c.run.max_steps,
            eval_steps: c.run.eval_steps,
            bf16: c.run.bf16,
            space: c.space.clone(),
            startup_trials: c.startup_trials,
            prune: c.prune.map(|p| (p.startup_trials, p.warmup_epochs)),
            seed: c.seed,
        }
    }

    /// The study's storage: the one given, else `OUT/study.db`.
    fn storage(&self) -> Result<Box<dyn StudyStorage>, PipelineError> {
        let name = &self.config.study.name;
        Ok(match &self.config.study.storage {
            Some(url) => sentiment_search::storage(url, name)?,
            None => Box::new(SqliteStorage::new(self.config.out.join("study.db"), name)),
        })
    }

    /// Checks the study in OUT against this run's settings before anything is written:
    /// reused when they are equal; refused when they differ and trials would be lost (unless
    /// `overwrite`); otherwise its outputs are removed so that they are made afresh.
    fn check_study(&self, key: &SearchKey, observer: &dyn Observer) -> Result<(), PipelineError> {
        // A shared study is checked against the settings it records, when it is opened.
        if self.config.study.storage.is_some() {
            return Ok(());
        }
        let out = &self.config.out;
        let study_path = out.join("study.db");
        let record = StageRecord::load(out);
        let changes = match (&record, study_path.exists()) {
            (Ok(Some(record)), _) => key.changes_since(&record.search),
            (Ok(None), false) => Vec::new(),
            (Ok(None), true) => vec![format!(
                "{} was made by an earlier version that did not record its settings",
                study_path.display()
            )],
            (Err(e), _) if self.config.overwrite => vec![e.to_string()],
            (Err(_), _) => return record.map(drop),
        };
        // A study this version cannot read (the layout of an earlier version, say) is
        // discarded with --overwrite and refused, with the reason, otherwise.
        let stored = match study_path
            .exists()
            .then(|| self.storage().and_then(|s| Ok(Study::read(s.as_ref())?)))
            .transpose()
        {
            Ok(stored) => stored.flatten(),
            Err(e) if self.config.overwrite => {
                observer.message(&format!("discarding the study: {e}"));
                return self.discard_search_outputs();
            }
            Err(e) => return Err(e),
        };
        if changes.is_empty() {
            return Ok(());
        }
        let numbers: Vec<usize> = stored
            .map(|record| record.trials.iter().map(|t| t.number).collect())
            .unwrap_or_default();
        let what = changes.join("; ");
        if !numbers.is_empty() && !self.config.overwrite {
            return Err(PipelineError::Refused(format!(
                "{}: the search there was run with other settings: {what}. Its trials ({}) \
                 would have to be retrained: rerun with --overwrite to discard them, or choose \
                 another --out",
                out.display(),
                show_numbers(&numbers)
            )));
        }
        if numbers.is_empty() {
            observer.message(&format!("settings changed: {what}"));
        } else {
            observer.message(&format!(
                "{what}; trials {} will be retrained",
                show_numbers(&numbers)
            ));
        }
        self.discard_search_outputs()
    }

    /// Removes the study and everything made from it.
    fn discard_search_outputs(&self) -> Result<(), PipelineError> {
        let out = &self.config.out;
        for name in [
            "study.db",
            "study.db-wal",
            "study.db-shm",
            "study.json",
            "pipeline.json",
            "trials.csv",
            "report.json",
            "report.md",
            "report.html",
        ] {
            let path = out.join(name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(PipelineError::io(&path))?;
            }
        }
        for name in ["trials", "final", "best_model"] {
            let path = out.join(name);
            if path.exists() {
                std::fs::remove_dir_all(&path).map_err(PipelineError::io(&path))?;
            }
        }
        for entry in std::fs::read_dir(out).map_err(PipelineError::io(out))? {
            let path = entry.map_err(PipelineError::io(out))?.path();
            if path.extension().is_some_and(|e| e == "svg") {
                std::fs::remove_file(&path).map_err(PipelineError::io(&path))?;
            }
        }
        Ok(())
    }

    /// Stage 1: prepare, unless the data folder was prepared with the same input content and
    /// options.
    fn prepare(&self, key: &DataKey, observer: &dyn Observer) -> Result<Manifest, PipelineError> {
        let data = &self.data_dir;
        if let Ok(manifest) = Manifest::load(data) {
            let changes = key.changes_since(&DataKey::of_manifest(&manifest));
            if changes.is_empty() {
                observer.message(&format!("[1/5] prepare: reusing {}", data.display()));
                return Ok(manifest);
            }
            observer.message(&format!(
                "[1/5] prepare: data changed: {}; preparing again",
                changes.join(", ")
            ));
        }
        let mut config = self.config.prepare.clone();
        config.out_dir = data.clone();
        let manifest = sentiment_data::prepare(&config, &mut |_| {}).map_err(
            PipelineError::stage(format!("preparing {}", config.input.display())),
        )?;
        observer.message(&format!(
            "[1/5] prepare: {} rows read, {} kept ({})",
            manifest.rows_read,
            manifest.rows_kept,
            manifest
                .splits
                .iter()
                .map(|s| format!("{} {}", s.split.name(), s.rows))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(manifest)
    }

    /// One training run into `run_dir`, resumed if it was interrupted.
    #[allow(clippy::too_many_arguments)]
    fn run_training(
        &self,
        device: &Device,
        config: &TrainConfig,
        run_dir: &Path,
        splits: &[TokenizedRows; 3],
        stop: &StopToken,
        hooks: &mut dyn TrainHooks,
        observer: &dyn Observer,
    ) -> Result<TrainOutcome, PipelineError> {
        let start = starting_point(&self.start_options(config.seed), device)?;
        for note in &start.notes {
            observer.message(&format!("note: {note}"));
        }
        // A run folder with its configuration resumes (from its last checkpoint, or afresh
        // when it was killed before the first one).
        let resume = run_dir.join("train_config.json").exists();
        Ok(sentiment_train::train(
            start.model,
            &start.config,
            Some(&start.tokenizer),
            &TrainData {
                train: &splits[0],
                validation: &splits[1],
                test: Some(&splits[2]),
            },
            config,
            run_dir,
            device,
            resume,
            stop,
            hooks,
        )?)
    }

    /// Whether a running trial's worker is dead: its heartbeat is older than the grace
    /// period, or it ran on this machine in a process that has ended (a pipeline killed or
    /// interrupted here: its trial is retried at once, and resumes from its checkpoints).
    fn is_dead(&self, trial: &Trial) -> bool {
        let grace = self.config.study.grace().as_secs_f64();
        trial.heartbeat_age.is_some_and(|age| age > grace)
            || match trial.worker().and_then(|name| {
                let place = trial
                    .system_attrs
                    .get(PROCESS_ATTRIBUTE)
                    .and_then(|p| p.as_str());
                Worker::parse(name, place)
            }) {
                Some(worker) => self.worker.knows_ended(&worker),
                // In the pipeline's own study, a trial without worker or heartbeat was left
                // by an earlier version of the pipeline, which nothing runs any more.
                None => self.config.study.storage.is_none() && trial.heartbeat_age.is_none(),
            }
    }

    /// Fails the study's dead trials and, with `retry_failed`, queues them again, saying so.
    fn fail_dead_trials(
        &self,
        study: &mut Study,
        observer: &dyn Observer,
    ) -> Result<(), PipelineError> {
        let failed = study.fail_stale(|t| self.is_dead(t), self.config.study.retry_failed)?;
        for (number, retry) in failed {
            let trial = &study.trials()[number];
            let worker = trial.worker().unwrap_or("an unknown worker");
            let why = match trial.heartbeat_age {
                Some(age) if age > self.config.study.grace().as_secs_f64() => {
                    format!("its last heartbeat is {age:.0} s old")
                }
                _ => "its process has ended".to_string(),
            };
            let then = retry.map_or_else(
                || " (--retry-failed is off)".to_string(),
                |r| format!("; queued again as trial {r}"),
            );
            observer.message(&format!(
                "      trial {number} of {worker} failed: {why}{then}"
            ));
        }
        Ok(())
    }

    /// One search worker: fails dead workers' trials, then takes a trial (a queued retry
    /// first, else a new one while the study holds fewer than `--trials`) and trains it on
    /// `device`, beating its heartbeat, until the study has its count.
    #[allow(clippy::too_many_arguments)]
    fn search_worker(
        &self,
        device: &Device,
        device_index: Option<usize>,
        mut study: Study,
        splits: &[TokenizedRows; 3],
        quiet: bool,
        stop: &StopToken,
        observer: &dyn Observer,
    ) -> Result<(), PipelineError> {
        let worker = self.worker.name(device_index);
        let mut failed_in_a_row = 0;
        loop {
            if stop.is_requested() {
                return Ok(());
            }
            self.fail_dead_trials(&mut study, observer)?;
            let Some(trial) = study.ask_within(self.config.trials, Some(&worker))? else {
                return Ok(());
            };
            // Where this worker's pid is valid, for the liveness check of other workers of
            // this machine (until it is written, only the heartbeat counts).
            if let Some(place) = &self.worker.place {
                study.set_system_attr(trial.number, PROCESS_ATTRIBUTE, place.clone().into())?;
            }
            let retry = trial
                .retried_from()
                .map(|f| format!(" (retry of trial {f})"))
                .unwrap_or_default();
            observer.message(&format!(
                "[3/5] search: trial {} of {}{retry} {}",
                trial.number,
                self.config.trials,
                serde_json::to_string(&trial.params).expect("serialisable")
            ));
            // One seed for every trial, as the notebook's Trainer: trials differ by their
            // parameters only, and the best one is the final run.
            let config = trial_config(&trial.params, &self.base_config())?;
            let mut run_dir = self.trial_dir(&trial)?;
            // One live run per folder: a retry whose original still runs (its heartbeats were
            // late, it was not dead) starts afresh in a folder of its own.
            let _run_lock = match FolderLock::take(&run_dir, &self.lock_holder())? {
                Ok(lock) => lock,
                Err(held) => {
                    let own = self.own_trial_dir(trial.number);
                    observer.warning(&format!(
                        "trial {}: {} is in use ({}): its original still runs there; this \
                         trial starts afresh in {}",
                        trial.number,
                        run_dir.display(),
                        if held.holder.is_empty() {
                            "locked"
                        } else {
                            &held.holder
                        },
                        own.display()
                    ));
                    run_dir = own;
                    let shown = run_dir.strip_prefix(&self.config.out).unwrap_or(&run_dir);
                    study.set_user_attr(
                        trial.number,
                        "run_dir",
                        shown.display().to_string().into(),
                    )?;
                    FolderLock::take(&run_dir, &self.lock_holder())?.map_err(|held| {
                        PipelineError::Refused(format!(
                            "trial {}: {} is in use ({})",
                            trial.number,
                            run_dir.display(),
                            held.holder
                        ))
                    })?
                }
            };
            // Where the trial's checkpoints, metrics and TensorBoard events are, for Optuna's
            // tools (a user attribute, as Optuna's integrations record theirs).
            if !trial.user_attrs.contains_key("run_dir") {
                let shown = run_dir.strip_prefix(&self.config.out).unwrap_or(&run_dir);
                study.set_user_attr(trial.number, "run_dir", shown.display().to_string().into())?;
            }
            let heartbeat_error = Arc::new(Mutex::new(None));
            let beats = {
                let slot = Arc::clone(&heartbeat_error);
                study.heartbeats(
                    trial.number,
                    self.config.study.heartbeat_interval,
                    move |e| *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e),
                )
            };
            let printer: Box<dyn FnMut(Progress)> = if quiet {
                Box::new(|_| {})
            } else {
                observer.progress()
            };
            let mut hooks = TrialHooks {
                study: &mut study,
                number: trial.number,
                prune: self.config.prune,
                by_step: self.config.run.eval_steps.is_some(),
                printer,
                pruned: false,
                error: None,
            };
            let result = self.run_training(
                device, &config, &run_dir, splits, stop, &mut hooks, observer,
            );
            let (pruned, error) = (hooks.pruned, hooks.error.take());
            drop(hooks);
            drop(beats);
            if let Some(e) = heartbeat_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                observer.warning(&format!(
                    "trial {}: a heartbeat could not be recorded ({e}); other workers may have \
                     failed the trial",
                    trial.number
                ));
            }
            let taken_over = |state: TrialState| {
                observer.warning(&format!(
                    "trial {}: another worker marked it {state:?} while it ran here (its \
                     heartbeats were later than the grace period: a suspended machine, a \
                     network cut); the study keeps its retry, and this run's result stays in {}",
                    trial.number,
                    run_dir.display()
                ));
            };
            match error {
                Some(PipelineError::Search(SearchError::Finished { state, .. })) => {
                    taken_over(state);
                    continue;
                }
                Some(e) => return Err(e),
                None => {}
            }
            let (told, failure) = match result {
                Ok(outcome) if pruned => {
                    observer.message(&format!(
                        "      trial {} pruned after epoch {} (below the median of earlier trials)",
                        trial.number,
                        outcome.stopped_early.unwrap_or(0)
                    ));
                    (Outcome::Pruned, None)
                }
                Ok(outcome) => {
                    let best = outcome.best().f1;
                    let stopped = outcome
                        .early_stopped
                        .map(|e| format!(" (stopped early after epoch {e})"))
                        .unwrap_or_default();
                    observer.message(&format!(
                        "      trial {}: validation F1 {best:.4}{stopped}",
                        trial.number
                    ));
                    (Outcome::Complete(best), None)
                }
                // Ctrl-C: the trial stays running; the next run here finds its process ended,
                // fails it and retries it from its checkpoints.
                Err(e) if e.is_interrupted() => return Err(e),
                Err(e) => {
                    observer.warning(&format!("trial {} failed: {e}", trial.number));
                    (Outcome::Fail, Some(e))
                }
            };
            match study.tell(trial.number, told) {
                Ok(()) => {}
                Err(SearchError::Finished { state, .. }) => taken_over(state),
                Err(e) => return Err(e.into()),
            }
            match failure {
                None => failed_in_a_row = 0,
                Some(last) => {
                    failed_in_a_row += 1;
                    let limit = self.config.study.max_consecutive_failures;
                    if failed_in_a_row >= limit {
                        return Err(PipelineError::TrialsFailing {
                            count: failed_in_a_row,
                            last: Box::new(last),
                        });
                    }
                }
            }
        }
    }

    /// Records the pipeline's settings in the study, or checks them against those it holds:
    /// workers sharing a study run its trials alike.
    fn check_settings(&self, study: &mut Study, key: &SearchKey) -> Result<(), PipelineError> {
        let value = serde_json::to_value(key).expect("the settings serialise");
        let changes = study.update(|record| {
            Ok(match record.system_attrs.get(SETTINGS_ATTRIBUTE) {
                None => {
                    record
                        .system_attrs
                        .insert(SETTINGS_ATTRIBUTE.into(), value.clone());
                    Vec::new()
                }
                Some(stored) => match serde_json::from_value::<SearchKey>(stored.clone()) {
                    Ok(stored) => key.changes_since(&stored),
                    Err(e) => vec![format!("its recorded settings are unreadable ({e})")],
                },
            })
        })?;
        if changes.is_empty() {
            return Ok(());
        }
        Err(PipelineError::Refused(format!(
            "{}: the study's trials were run with other settings: {}. Run with the study's \
             settings, choose another --study-name, or delete the study (optuna delete-study \
             --storage URL --study-name NAME)",
            study.describe(),
            changes.join("; ")
        )))
    }

    /// Whether this worker runs the final stage: the study has no trial under way (else the
    /// worker that finishes the last one does), and, in a shared study, no other worker has
    /// claimed the final stage of these trials (the claim is recorded in the study).
    fn claims_final(
        &self,
        study: &mut Study,
        observer: &dyn Observer,
    ) -> Result<bool, PipelineError> {
        let busy: Vec<&Trial> = study
            .trials()
            .iter()
            .filter(|t| matches!(t.state, TrialState::Running | TrialState::Waiting))
            .collect();
        if !busy.is_empty() {
            let shown: Vec<String> = busy
                .iter()
                .map(|t| format!("{} on {}", t.number, t.worker().unwrap_or("a worker")))
                .collect();
            observer.message(&format!(
                "      trials under way elsewhere: {}. The worker that finishes the last runs \
                 the final stage (or run this command with --final-only when they are done)",
                shown.join(", ")
            ));
            return Ok(false);
        }
        if self.config.study.storage.is_none() {
            return Ok(true);
        }
        // Named by machine and output folder: a rerun here is the same worker.
        let out = std::fs::canonicalize(&self.config.out).unwrap_or(self.config.out.clone());
        let me = format!("{}:{}", self.worker.host, out.display());
        let finished = study.trials().iter().filter(|t| t.is_finished()).count();
        let claim = serde_json::json!({"worker": me, "trials": finished});
        let other = study.update(|record| {
            let held = record.system_attrs.get(FINAL_ATTRIBUTE);
            if let Some(held) = held
                && held["trials"] == finished
                && held["worker"] != me.as_str()
            {
                return Ok(held["worker"].as_str().map(str::to_string));
            }
            record
                .system_attrs
                .insert(FINAL_ATTRIBUTE.into(), claim.clone());
            Ok(None)
        })?;
        if let Some(other) = other {
            observer.message(&format!(
                "      the final stage of these {finished} trials is run by {other} (run this \
                 command with --final-only to run it here too)"
            ));
            return Ok(false);
        }
        Ok(true)
    }

    /// Runs every stage. A request on `stop` checkpoints the running trials and returns the
    /// interruption; the same call resumes. None when this worker's search is done but the
    /// final stage is another's (trials still run elsewhere, or another worker claimed it):
    /// the observer is told which.
    pub fn run(
        &self,
        stop: &StopToken,
        observer: &dyn Observer,
    ) -> Result<Option<PipelineOutcome>, PipelineError> {
        let started = Instant::now();
        let out = &self.config.out;
        // One pipeline per output folder: two would both claim the final stage and overwrite
        // each other's outputs. (Workers sharing a study each have their own --out.)
        let _out_lock = FolderLock::take(out, &self.lock_holder())?.map_err(|held| {
            PipelineError::Refused(format!(
                "{} is in use by another pipeline ({}; {}): wait for it to end, or choose \
                 another --out",
                out.display(),
                if held.holder.is_empty() {
                    "its holder is starting"
                } else {
                    &held.holder
                },
                held.path.display()
            ))
        })?;
        // Every key before anything is written: a refusal leaves the folder as it was.
        let data_key = self.data_key()?;
        let search_key = self.search_key(data_key.clone());
        self.check_study(&search_key, observer)?;
        let manifest = self.prepare(&data_key, observer)?;

        // Stage 2: tokenizer and token files (cached by content).
        let start = starting_point(&self.start_options(self.config.seed), &self.devices[0])?;
        let outcomes = tokenize_splits(
            &self.data_dir,
            &start.tokenizer,
            &start.tokenizer_origin,
            &mut |_, _, _| {},
        )?;
        let reused = outcomes.iter().all(|o| o.reused);
        observer.message(&format!(
            "[2/5] tokenize: {} (vocabulary {}, max length {})",
            if reused { "cached" } else { "encoded" },
            start.tokenizer.vocab_size(),
            self.config.max_length
        ));
        drop(start);
        let splits = read_splits(&self.data_dir)?;

        // Stage 3: the search, resumable through the study file. Without --startup-trials, a
        // study that exists keeps the startup count it was created with (the default depends
        // on --trials, and a larger --trials extends the study rather than changing it).
        let stored_startup = match Study::read(self.storage()?.as_ref())? {
            Some(record) if self.config.startup_trials.is_none() => match record.sampler {
                Sampler::Tpe(tpe) => Some(tpe.n_startup_trials),
                Sampler::Random => None,
            },
            _ => None,
        };
        let startup = stored_startup.unwrap_or_else(|| self.config.startup_trials());
        if startup >= self.config.trials && !self.config.study.final_only {
            observer.warning(&format!(
                "{startup} startup trials of {} in all: every trial is random and TPE never \
                 acts; lower --startup-trials or raise --trials",
                self.config.trials
            ));
        }
        let sampler = Sampler::Tpe(TpeConfig {
            n_startup_trials: startup,
            ..TpeConfig::default()
        });
        let open = || -> Result<Study, PipelineError> {
            Ok(Study::with_storage(
                self.storage()?,
                Direction::Maximize,
                self.config.space.clone(),
                sampler,
                self.config.seed,
            )?)
        };
        let mut study = open()?;
        self.check_settings(&mut study, &search_key)?;
        if self.config.study.storage.is_some() {
            observer.message(&format!(
                "[3/5] search: study {} as worker {}",
                study.describe(),
                self.worker.name(None)
            ));
        }
        // The record goes next to the study as soon as the study exists: its trials are the
        // ones these settings made.
        StageRecord {
            version: crate::stages::STAGES_VERSION,
            search: search_key,
        }
        .save(out)?;
        if self.config.study.final_only {
            self.fail_dead_trials(&mut study, observer)?;
        } else {
            let parallel = self.devices.len() > 1;
            std::thread::scope(|scope| -> Result<(), PipelineError> {
                let workers: Vec<_> = self
                    .devices
                    .iter()
                    .enumerate()
                    .map(|(i, device)| {
                        let study = open()?;
                        let splits = &splits;
                        let index = parallel.then_some(i);
                        Ok(scope.spawn(move || {
                            self.search_worker(
                                device, index, study, splits, parallel, stop, observer,
                            )
                        }))
                    })
                    .collect::<Result<_, PipelineError>>()?;
                // A panic in one worker (a bug, or a value no check foresaw) ends the run with
                // an error, as any other failure: the study and the other workers' trials stay
                // consistent, and the process is not aborted.
                for worker in workers {
                    worker.join().map_err(|panic| {
                        let message = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        PipelineError::WorkerPanicked(message)
                    })??;
                }
                Ok(())
            })?;
            if stop.is_requested() {
                return Err(PipelineError::Interrupted);
            }
        }
        study.refresh()?;
        let trials_csv = out.join("trials.csv");
        sentiment_data::write_file_atomic(&trials_csv, study.trials_csv().as_bytes())?;
        if !self.config.study.final_only && !self.claims_final(&mut study, observer)? {
            return Ok(None);
        }
        let best = study
            .best_trial()
            .ok_or(PipelineError::NoCompleteTrial)?
            .clone();
        observer.message(&format!(
            "      best trial {}: F1 {:.4} with {}",
            best.number,
            best.value.unwrap_or(f64::NAN),
            serde_json::to_string(&best.params).expect("serialisable")
        ));

        // Stage 4: final training with the best parameters, then the test evaluation. Every
        // trial trains with the pipeline's seed (as the notebook's Trainer did), so the final
        // run is the best trial's run itself: its outputs are reused rather than computed
        // again.
        let config = trial_config(&best.params, &self.base_config())?;
        let best_dir = self.trial_dir(&best)?;
        let outcome = match read_outcome(&best_dir).filter(|_| config_matches(&best_dir, &config)) {
            Some(mut done) => {
                // The trainer writes the best model in the run folder; the path recorded in
                // outcome.json is not followed (a folder moved, or edited, would point
                // elsewhere).
                done.best_model_dir = best_dir.join(sentiment_train::BEST_MODEL_DIR);
                observer.message(&format!(
                    "[4/5] final training: reusing trial {} (same parameters and seed) in {}",
                    best.number,
                    best_dir.display()
                ));
                done
            }
            None => {
                let final_dir = out.join("final");
                // A final run made for another best trial is not this one's.
                if final_dir.exists() && !config_matches(&final_dir, &config) {
                    std::fs::remove_dir_all(&final_dir).map_err(PipelineError::io(&final_dir))?;
                }
                observer.message(&format!(
                    "[4/5] final training with the best parameters into {}",
                    final_dir.display()
                ));
                let mut printer = observer.progress();
                self.run_training(
                    &self.devices[0],
                    &config,
                    &final_dir,
                    &splits,
                    stop,
                    &mut printer,
                    observer,
                )?
            }
        };
        let best_model = out.join("best_model");
        copy_dir(&outcome.best_model_dir, &best_model)?;

        // Stage 5: the report, from this run's study, trials and final run only.
        let curves: Vec<(usize, Vec<EpochMetrics>)> = study
            .trials()
            .iter()
            .filter_map(|t| {
                let path = self.trial_dir(t).ok()?.join("metrics.json");
                let text = std::fs::read_to_string(path).ok()?;
                Some((t.number, serde_json::from_str(&text).ok()?))
            })
            .collect();
        let mut shown = outcome;
        shown.best_model_dir = best_model;
        let baseline = match &shown.test {
            Some(test) => {
                observer.message("[5/5] fitting the bag-of-words baseline");
                Some(crate::baseline::bag_of_words(
                    &self.data_dir,
                    manifest.classes.len(),
                    test.report.positive_class,
                )?)
            }
            None => None,
        };
        let input = ReportInput {
            manifest: &manifest,
            trials: study.trials(),
            curves: &curves,
            best_trial: best.number,
            outcome: &shown,
            baseline: baseline.as_ref(),
            command: self.config.command.clone(),
            objective: "validation F1",
            seconds: started.elapsed().as_secs_f64(),
        };
        let charts = report::charts(&input);
        let markdown = report::markdown(&input);
        for (name, svg) in &charts {
            sentiment_data::write_file_atomic(&out.join(name), svg.as_bytes())?;
        }
        let mut json =
            serde_json::to_vec_pretty(&report::json(&input)).expect("JSON values serialise");
        json.push(b'\n');
        sentiment_data::write_file_atomic(&out.join("report.json"), &json)?;
        sentiment_data::write_file_atomic(&out.join("report.md"), markdown.as_bytes())?;
        let report_path = out.join("report.html");
        sentiment_data::write_file_atomic(
            &report_path,
            report::html(&markdown, &charts).as_bytes(),
        )?;
        observer.message(&format!("[5/5] report: {}", report_path.display()));
        Ok(Some(PipelineOutcome {
            best,
            outcome: shown,
            report: report_path,
        }))
    }
}

fn read_splits(data: &Path) -> Result<[TokenizedRows; 3], PipelineError> {
    let files = token_files(data);
    let read = |s: Split| -> Result<TokenizedRows, PipelineError> {
        read_tokenized(&files[&s]).map_err(PipelineError::stage(format!(
            "reading {}",
            files[&s].display()
        )))
    };
    Ok([
        read(Split::Train)?,
        read(Split::Validation)?,
        read(Split::Test)?,
    ])
}

fn read_outcome(dir: &Path) -> Option<TrainOutcome> {
    std::fs::read_to_string(dir.join("outcome.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
}

/// Whether the run in `dir` was made with `config` (its `train_config.json` holds the training
/// settings and the model configuration).
fn config_matches(dir: &Path, config: &TrainConfig) -> bool {
    std::fs::read_to_string(dir.join("train_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<(TrainConfig, serde_json::Value)>(&t).ok())
        .is_some_and(|(saved, _)| saved == *config)
}

/// Copies the files of `from` into a fresh `to`, through a temporary sibling and a rename.
fn copy_dir(from: &Path, to: &Path) -> Result<(), PipelineError> {
    let temp = to.with_extension("tmp");
    if temp.exists() {
        std::fs::remove_dir_all(&temp).map_err(PipelineError::io(&temp))?;
    }
    std::fs::create_dir_all(&temp).map_err(PipelineError::io(&temp))?;
    for entry in std::fs::read_dir(from).map_err(PipelineError::io(from))? {
        let entry = entry.map_err(PipelineError::io(from))?;
        let target = temp.join(entry.file_name());
        std::fs::copy(entry.path(), &target).map_err(PipelineError::io(&target))?;
    }
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(PipelineError::io(to))?;
    }
    std::fs::rename(&temp, to).map_err(PipelineError::io(to))
}
