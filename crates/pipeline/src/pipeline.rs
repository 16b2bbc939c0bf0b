//! The pipeline itself: prepare → tokenize → search → final training → test evaluation →
//! best_model → report, each stage reusing what an earlier run made only when everything that
//! determined it is unchanged ([`crate::stages`]), so that a killed pipeline resumes with the
//! same command and a changed one never mixes old results with new.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use burn::tensor::Device;
use sentiment_data::{Manifest, PrepareConfig, Split};
use sentiment_search::{
    Direction, Outcome, Sampler, SearchSpace, Study, TpeConfig, Trial, TrialState, parse_space,
};
use sentiment_tokenize::{TokenizedRows, read_tokenized, token_files, tokenize_splits};
use sentiment_train::{
    EpochMetrics, Progress, RunOptions, StopToken, TrainConfig, TrainData, TrainHooks, TrainOutcome,
};

use crate::PipelineError;
use crate::report::{self, ReportInput};
use crate::stages::{DataKey, SearchKey, StageRecord, show_numbers};
use crate::start::{StartOptions, starting_point};
use crate::trial::{PruneSettings, TRIAL_PARAMETERS, TrialHooks, trial_config};

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
    /// Trials the study should hold.
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
    /// Discard a study (and its trials) that other settings made, instead of refusing.
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
        Ok(Self {
            data_dir: config.out.join("data"),
            config,
            devices,
        })
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

    fn trial_dir(&self, number: usize) -> PathBuf {
        self.config
            .out
            .join("trials")
            .join(format!("trial_{number}"))
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
            space: c.space.clone(),
            startup_trials: c.startup_trials,
            prune: c.prune.map(|p| (p.startup_trials, p.warmup_epochs)),
            seed: c.seed,
        }
    }

    fn study_path(&self) -> PathBuf {
        // A run folder from before the SQLite storage keeps its JSON study.
        let legacy = self.config.out.join("study.json");
        if legacy.exists() {
            legacy
        } else {
            self.config.out.join("study.db")
        }
    }

    /// Checks the study in OUT against this run's settings before anything is written:
    /// reused when they are equal; refused when they differ and trials would be lost (unless
    /// `overwrite`); otherwise its outputs are removed so that they are made afresh.
    fn check_study(&self, key: &SearchKey, observer: &dyn Observer) -> Result<(), PipelineError> {
        let out = &self.config.out;
        let study_path = self.study_path();
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
        let stored = match Study::read(&study_path) {
            Ok(stored) => stored,
            Err(e) if self.config.overwrite => {
                observer.message(&format!("discarding the study: {e}"));
                return self.discard_search_outputs();
            }
            Err(e) => return Err(e.into()),
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

    /// One search worker: claims trials (a left-over running one first, else a new one while
    /// the budget allows) and trains them on `device`, until none is left.
    #[allow(clippy::too_many_arguments)]
    fn search_worker(
        &self,
        device: &Device,
        mut study: Study,
        claims: &Mutex<Claims>,
        splits: &[TokenizedRows; 3],
        quiet: bool,
        stop: &StopToken,
        observer: &dyn Observer,
    ) -> Result<(), PipelineError> {
        loop {
            let trial = {
                let mut claims = claims.lock().unwrap_or_else(|e| e.into_inner());
                match claims.resumable.pop() {
                    Some(t) => t,
                    None if claims.asked < self.config.trials => {
                        claims.asked += 1;
                        study.ask()?
                    }
                    None => return Ok(()),
                }
            };
            observer.message(&format!(
                "[3/5] search: trial {} of {} {}",
                trial.number,
                self.config.trials,
                serde_json::to_string(&trial.params).expect("serialisable")
            ));
            // One seed for every trial, as the notebook's Trainer: trials differ by their
            // parameters only, and the best one is the final run.
            let config = trial_config(&trial.params, &self.base_config())?;
            let run_dir = self.trial_dir(trial.number);
            // Where the trial's checkpoints, metrics and TensorBoard events are, for Optuna's
            // tools (a user attribute, as Optuna's integrations record theirs).
            if !trial.user_attrs.contains_key("run_dir") {
                let shown = run_dir.strip_prefix(&self.config.out).unwrap_or(&run_dir);
                study.set_user_attr(trial.number, "run_dir", shown.display().to_string().into())?;
            }
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
            if let Some(e) = error {
                return Err(e);
            }
            match result {
                Ok(outcome) if pruned => {
                    observer.message(&format!(
                        "      trial {} pruned after epoch {} (below the median of earlier trials)",
                        trial.number,
                        outcome.stopped_early.unwrap_or(0)
                    ));
                    study.tell(trial.number, Outcome::Pruned)?;
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
                    study.tell(trial.number, Outcome::Complete(best))?;
                }
                // Ctrl-C: the trial stays running and continues on the next run.
                Err(e) if e.is_interrupted() => return Err(e),
                Err(e) => {
                    observer.warning(&format!("trial {} failed: {e}", trial.number));
                    study.tell(trial.number, Outcome::Fail)?;
                }
            }
        }
    }

    /// Runs every stage. A request on `stop` checkpoints the running trials and returns the
    /// interruption; the same call resumes.
    pub fn run(
        &self,
        stop: &StopToken,
        observer: &dyn Observer,
    ) -> Result<PipelineOutcome, PipelineError> {
        let started = Instant::now();
        let out = &self.config.out;
        std::fs::create_dir_all(out).map_err(PipelineError::io(out))?;
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
        let study_path = self.study_path();
        let stored_startup = match Study::read(&study_path)? {
            Some(record) if self.config.startup_trials.is_none() => match record.sampler {
                Sampler::Tpe(tpe) => Some(tpe.n_startup_trials),
                Sampler::Random => None,
            },
            _ => None,
        };
        let startup = stored_startup.unwrap_or_else(|| self.config.startup_trials());
        if startup >= self.config.trials {
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
        let open = || {
            Study::open(
                &study_path,
                Direction::Maximize,
                self.config.space.clone(),
                sampler,
                self.config.seed,
            )
        };
        let mut study = open()?;
        // The record goes next to the study as soon as the study exists: its trials are the
        // ones these settings made.
        StageRecord {
            version: crate::stages::STAGES_VERSION,
            search: search_key,
        }
        .save(out)?;
        // Trials a killed pipeline left running are continued, not asked again.
        let claims = Mutex::new(Claims {
            resumable: study
                .trials()
                .iter()
                .filter(|t| t.state == TrialState::Running)
                .cloned()
                .collect(),
            asked: study.trials().len(),
        });
        let parallel = self.devices.len() > 1;
        std::thread::scope(|scope| -> Result<(), PipelineError> {
            let workers: Vec<_> = self
                .devices
                .iter()
                .map(|device| {
                    let study = open()?;
                    let (claims, splits) = (&claims, &splits);
                    Ok(scope.spawn(move || {
                        self.search_worker(device, study, claims, splits, parallel, stop, observer)
                    }))
                })
                .collect::<Result<_, PipelineError>>()?;
            for worker in workers {
                worker.join().expect("search workers do not panic")?;
            }
            Ok(())
        })?;
        study.refresh()?;
        let trials_csv = out.join("trials.csv");
        sentiment_data::write_file_atomic(&trials_csv, study.trials_csv().as_bytes())?;
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
        let best_dir = self.trial_dir(best.number);
        let outcome = match read_outcome(&best_dir).filter(|_| config_matches(&best_dir, &config)) {
            Some(done) => {
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
                let path = self.trial_dir(t.number).join("metrics.json");
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
        sentiment_data::write_file_atomic(&out.join("report.md"), markdown.as_bytes())?;
        let report_path = out.join("report.html");
        sentiment_data::write_file_atomic(
            &report_path,
            report::html(&markdown, &charts).as_bytes(),
        )?;
        observer.message(&format!("[5/5] report: {}", report_path.display()));
        Ok(PipelineOutcome {
            best,
            outcome: shown,
            report: report_path,
        })
    }
}

/// Which trials the search workers of this process may take.
struct Claims {
    /// Running trials left by an interrupted pipeline.
    resumable: Vec<Trial>,
    /// Trials in the study, finished or not: new ones are asked while below the budget.
    asked: usize,
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
