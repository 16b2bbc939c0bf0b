//! `cargo xtask pipeline`: prepare → tokenize → search → final training → test evaluation →
//! best_model → report, each stage reusing what an earlier run already made, so a killed
//! pipeline resumes with the same command.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use sentiment_data::{Manifest, PrepareConfig, Split};
use sentiment_search::{
    Direction, Outcome, Sampler, SearchSpace, Study, TpeConfig, TrialState, parse_space,
};
use sentiment_tokenize::{TokenizedRows, read_tokenized, token_files, tokenize_splits};
use sentiment_train::{BestMetric, TrainConfig, TrainData, TrainHooks, TrainOutcome};
use serde::{Deserialize, Serialize};

use crate::flags::PipelineArgs;
use crate::report::{self, ReportInput};
use crate::train::{StartOptions, print_outcome, progress_printer, starting_point};

/// A resolved pipeline command.
pub struct Pipeline {
    args: PipelineArgs,
    input: PathBuf,
    data_dir: PathBuf,
    /// One search worker per device; the first also runs the single-device stages.
    devices: Vec<Device>,
    space: SearchSpace,
}

/// What the prepare stage was run with; a change means preparing again.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct PrepareKey {
    input: String,
    input_bytes: u64,
    sample: Option<usize>,
    seed: u64,
}

impl TryFrom<PipelineArgs> for Pipeline {
    type Error = anyhow::Error;

    fn try_from(args: PipelineArgs) -> Result<Self> {
        let input = args
            .data
            .clone()
            .unwrap_or_else(|| crate::fixtures::data_fixtures_dir().join("sample.csv"));
        let space = if args.space.is_empty() {
            let rates = if args.pretrained.is_some() {
                "float:1e-5:5e-5:log"
            } else {
                "float:2e-4:2e-3:log"
            };
            parse_space([
                format!("learning_rate={rates}").as_str(),
                "batch_size=cat:16,32",
            ])?
        } else {
            parse_space(args.space.iter().map(String::as_str))?
        };
        for name in space.keys() {
            if !matches!(
                name.as_str(),
                "learning_rate" | "batch_size" | "warmup_steps" | "weight_decay"
            ) {
                bail!(
                    "--space parameter `{name}` is not one the trainer takes (learning_rate, batch_size, warmup_steps, weight_decay)"
                );
            }
        }
        if args.trials == 0 || args.epochs == 0 {
            bail!("--trials and --epochs must be at least 1");
        }
        Ok(Self {
            devices: (0..args.devices.max(1))
                .map(|i| crate::device(args.backend, args.device_index + i))
                .collect::<Result<_>>()?,
            data_dir: args.out.join("data"),
            input,
            space,
            args,
        })
    }
}

fn read_splits(data: &Path) -> Result<[TokenizedRows; 3]> {
    let files = token_files(data);
    let read = |s: Split| -> Result<TokenizedRows> {
        read_tokenized(&files[&s]).with_context(|| format!("reading {}", files[&s].display()))
    };
    Ok([
        read(Split::Train)?,
        read(Split::Validation)?,
        read(Split::Test)?,
    ])
}

impl Pipeline {
    /// Stage 1: prepare, unless the same input and options were prepared already.
    fn prepare(&self) -> Result<Manifest> {
        let data = &self.data_dir;
        let bytes = std::fs::metadata(&self.input)
            .with_context(|| format!("reading {}", self.input.display()))?
            .len();
        let key = PrepareKey {
            input: self.input.display().to_string(),
            input_bytes: bytes,
            sample: self.args.sample,
            seed: self.args.seed,
        };
        let key_path = data.join("pipeline_prepare.json");
        let previous: Option<PrepareKey> = std::fs::read_to_string(&key_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if previous.as_ref() == Some(&key)
            && let Ok(manifest) = Manifest::load(data)
        {
            println!("[1/5] prepare: reusing {}", data.display());
            return Ok(manifest);
        }
        let mut config = PrepareConfig::new(&self.input, data);
        config.sample = self.args.sample;
        config.seed = self.args.seed;
        let manifest = sentiment_data::prepare(&config, &mut |_| {})
            .with_context(|| format!("preparing {}", self.input.display()))?;
        sentiment_data::write_file_atomic(&key_path, serde_json::to_string(&key)?.as_bytes())?;
        println!(
            "[1/5] prepare: {} rows read, {} kept ({})",
            manifest.rows_read,
            manifest.rows_kept,
            manifest
                .splits
                .iter()
                .map(|s| format!("{} {}", s.split.name(), s.rows))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(manifest)
    }

    fn trial_dir(&self, number: usize) -> PathBuf {
        self.args.out.join("trials").join(format!("trial_{number}"))
    }

    fn start_options(&self) -> StartOptions<'_> {
        StartOptions {
            data: &self.data_dir,
            pretrained: self.args.pretrained.as_deref(),
            fresh_config: &self.args.config,
            tokenizer: self.args.tokenizer.as_deref(),
            vocab_size: self.args.vocab_size,
            max_length: self.args.max_length,
            seed: self.args.seed,
        }
    }

    fn train_config(
        &self,
        params: &std::collections::BTreeMap<String, serde_json::Value>,
        seed: u64,
    ) -> Result<TrainConfig> {
        let mut config = TrainConfig {
            epochs: self.args.epochs,
            seed,
            metric_for_best: BestMetric::F1,
            save_total_limit: 2,
            learning_rate: 5e-5,
            ..TrainConfig::default()
        };
        for (name, value) in params {
            let number = value
                .as_f64()
                .with_context(|| format!("parameter {name} = {value} is not a number"))?;
            match name.as_str() {
                "learning_rate" => config.learning_rate = number,
                "batch_size" => config.batch_size = number as usize,
                "warmup_steps" => config.warmup_steps = number as usize,
                "weight_decay" => config.weight_decay = number,
                _ => {}
            }
        }
        Ok(config)
    }

    /// One training run into `run_dir`, resumed if it was interrupted.
    fn run_training(
        &self,
        device: &Device,
        config: &TrainConfig,
        run_dir: &Path,
        splits: &[TokenizedRows; 3],
        hooks: &mut dyn TrainHooks,
    ) -> Result<TrainOutcome> {
        let start = starting_point(
            &StartOptions {
                seed: config.seed,
                ..self.start_options()
            },
            device,
        )?;
        let resume = run_dir.join("checkpoints").exists();
        let outcome = sentiment_train::train(
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
            hooks,
        )?;
        Ok(outcome)
    }

    /// One search worker: claims trials (a left-over running one first, else a new one while
    /// the budget allows) and trains them on `device`, until none is left.
    fn search_worker(
        &self,
        device: &Device,
        mut study: Study,
        claims: &Mutex<Claims>,
        splits: &[TokenizedRows; 3],
        quiet: bool,
    ) -> Result<()> {
        loop {
            let trial = {
                let mut claims = claims.lock().unwrap_or_else(|e| e.into_inner());
                match claims.resumable.pop() {
                    Some(t) => t,
                    None if claims.asked < self.args.trials => {
                        claims.asked += 1;
                        study.ask()?
                    }
                    None => return Ok(()),
                }
            };
            println!(
                "[3/5] search: trial {}/{} {}",
                trial.number + 1,
                self.args.trials,
                serde_json::to_string(&trial.params)?
            );
            // One seed for every trial, as the notebook's Trainer: trials differ by their
            // parameters only, and the best one is the final run.
            let config = self.train_config(&trial.params, self.args.seed)?;
            let run_dir = self.trial_dir(trial.number);
            let printer: Box<dyn FnMut(sentiment_train::Progress)> = if quiet {
                Box::new(|_| {})
            } else {
                Box::new(progress_printer())
            };
            let mut hooks = TrialHooks {
                study: &mut study,
                number: trial.number,
                prune: self.args.prune.then_some((
                    self.args.prune_startup_trials,
                    self.args.prune_warmup_epochs,
                )),
                printer,
                pruned: false,
                error: None,
            };
            let result = self.run_training(device, &config, &run_dir, splits, &mut hooks);
            let (pruned, error) = (hooks.pruned, hooks.error.take());
            if let Some(e) = error {
                return Err(e.context("recording the trial's epochs in the study"));
            }
            match result {
                Ok(outcome) if pruned => {
                    println!(
                        "      trial {} pruned after epoch {} (below the median of earlier trials)",
                        trial.number,
                        outcome.stopped_early.unwrap_or(0)
                    );
                    study.tell(trial.number, Outcome::Pruned)?;
                }
                Ok(outcome) => {
                    let best = outcome.history[outcome.best_epoch - 1].f1;
                    println!("      trial {}: validation F1 {best:.4}", trial.number);
                    study.tell(trial.number, Outcome::Complete(best))?;
                }
                // Ctrl-C: the trial stays running and continues on the next run.
                Err(e)
                    if matches!(
                        e.downcast_ref::<sentiment_train::TrainError>(),
                        Some(sentiment_train::TrainError::Interrupted { .. })
                    ) =>
                {
                    return Err(e.context("pipeline interrupted: run the same command to resume"));
                }
                Err(e) => {
                    eprintln!("      trial {} failed: {e:#}", trial.number);
                    study.tell(trial.number, Outcome::Fail)?;
                }
            }
        }
    }

    /// Runs every stage and prints the summary.
    pub fn run(self) -> Result<()> {
        crate::checkpoint_on_ctrl_c();
        let started = Instant::now();
        std::fs::create_dir_all(&self.args.out)?;
        let manifest = self.prepare()?;

        // Stage 2: tokenizer and token files (cached by content).
        let data_dir = &self.data_dir;
        let start = starting_point(&self.start_options(), &self.devices[0])?;
        let outcomes = tokenize_splits(
            data_dir,
            &start.tokenizer,
            &start.tokenizer_origin,
            &mut |_, _, _| {},
        )?;
        let reused = outcomes.iter().all(|o| o.reused);
        println!(
            "[2/5] tokenize: {} (vocabulary {}, max length {})",
            if reused { "cached" } else { "encoded" },
            start.tokenizer.vocab_size(),
            self.args.max_length
        );
        drop(start);
        let splits = read_splits(data_dir)?;

        // Stage 3: the search, resumable through the study file.
        let startup = self
            .args
            .startup_trials
            .unwrap_or_else(|| self.args.trials.div_ceil(2).min(10));
        if startup >= self.args.trials {
            eprintln!(
                "warning: {} startup trials of {} in all: every trial is random and TPE never acts; \
                 lower --startup-trials or raise --trials",
                startup, self.args.trials
            );
        }
        let sampler = Sampler::Tpe(TpeConfig {
            n_startup_trials: startup,
            ..TpeConfig::default()
        });
        // SQLite, queryable like Optuna's storage; a run folder from before keeps its JSON study.
        let legacy = self.args.out.join("study.json");
        let study_path = if legacy.exists() {
            legacy
        } else {
            self.args.out.join("study.db")
        };
        let open = || {
            Study::open(
                &study_path,
                Direction::Maximize,
                self.space.clone(),
                sampler,
                self.args.seed,
            )
        };
        let mut study = open()?;
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
        let this = &self;
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = this
                .devices
                .iter()
                .map(|device| {
                    let study = open()?;
                    let claims = &claims;
                    let splits = &splits;
                    Ok(scope
                        .spawn(move || this.search_worker(device, study, claims, splits, parallel)))
                })
                .collect::<Result<_>>()?;
            for worker in workers {
                worker.join().expect("search workers do not panic")?;
            }
            Ok(())
        })?;
        study.refresh()?;
        std::fs::write(self.args.out.join("trials.csv"), study.trials_csv())?;
        let best = study
            .best_trial()
            .context("no trial completed: see the errors above")?
            .clone();
        println!(
            "      best trial {}: F1 {:.4} with {}",
            best.number,
            best.value.unwrap_or(f64::NAN),
            serde_json::to_string(&best.params)?
        );

        // Stage 4: final training with the best parameters, then the test evaluation. Every
        // trial trains with the pipeline's seed (as the notebook's Trainer did), so the final run
        // is the best trial's run itself: its outputs are reused rather than computed again.
        let config = self.train_config(&best.params, self.args.seed)?;
        let best_dir = self.trial_dir(best.number);
        let outcome = match std::fs::read_to_string(best_dir.join("outcome.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<TrainOutcome>(&t).ok())
            .filter(|_| final_config_matches(&best_dir, &config))
        {
            Some(done) => {
                println!(
                    "[4/5] final training: reusing trial {} (same parameters and seed) in {}",
                    best.number,
                    best_dir.display()
                );
                done
            }
            None => {
                let final_dir = self.args.out.join("final");
                println!(
                    "[4/5] final training with the best parameters into {}",
                    final_dir.display()
                );
                self.run_training(
                    &self.devices[0],
                    &config,
                    &final_dir,
                    &splits,
                    &mut progress_printer(),
                )?
            }
        };
        let best_model = self.args.out.join("best_model");
        copy_dir(&outcome.best_model_dir, &best_model)?;

        // Stage 5: the report.
        let curves: Vec<(usize, Vec<sentiment_train::EpochMetrics>)> = study
            .trials()
            .iter()
            .filter_map(|t| {
                let path = self.trial_dir(t.number).join("metrics.json");
                let text = std::fs::read_to_string(path).ok()?;
                Some((t.number, serde_json::from_str(&text).ok()?))
            })
            .collect();
        let mut shown = outcome.clone();
        shown.best_model_dir = best_model.clone();
        let input = ReportInput {
            manifest: &manifest,
            trials: study.trials(),
            curves: &curves,
            outcome: &shown,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            objective: "validation F1",
            seconds: started.elapsed().as_secs_f64(),
        };
        let charts = report::charts(&input);
        let markdown = report::markdown(&input);
        for (name, svg) in &charts {
            std::fs::write(self.args.out.join(name), svg)?;
        }
        std::fs::write(self.args.out.join("report.md"), &markdown)?;
        std::fs::write(
            self.args.out.join("report.html"),
            report::html(&markdown, &charts),
        )?;
        println!(
            "[5/5] report: {}",
            self.args.out.join("report.html").display()
        );
        println!();
        println!("Best parameters: {}", serde_json::to_string(&best.params)?);
        print_outcome(&shown);
        if self.args.data.is_none() {
            println!();
            println!(
                "This ran on the bundled synthetic sample with a tiny model trained from scratch. \
                 The notebook's recipe on real data:\n  cargo xtask pipeline --data \
                 training.1600000.processed.noemoticon.csv --sample 10000 --pretrained roberta-base \
                 --trials 8 --epochs 3\n(see docs/pipeline.md)"
            );
        }
        Ok(())
    }
}

/// Which trials the search workers of this process may take.
struct Claims {
    /// Running trials left by an interrupted pipeline.
    resumable: Vec<sentiment_search::Trial>,
    /// Trials in the study, finished or not: new ones are asked while below the budget.
    asked: usize,
}

/// A trial's hooks: progress on the terminal, each epoch's F1 into the study, and the median
/// pruner's decision when `--prune` is on.
struct TrialHooks<'a, P> {
    study: &'a mut Study,
    number: usize,
    /// (complete trials before pruning, epochs never pruned).
    prune: Option<(usize, usize)>,
    printer: P,
    pruned: bool,
    error: Option<anyhow::Error>,
}

impl<P: FnMut(sentiment_train::Progress)> TrainHooks for TrialHooks<'_, P> {
    fn on_step(&mut self, progress: sentiment_train::Progress) {
        (self.printer)(progress);
    }

    fn on_epoch(&mut self, metrics: &sentiment_train::EpochMetrics) -> bool {
        if let Err(e) = self.study.report(self.number, metrics.epoch, metrics.f1) {
            self.error = Some(e.into());
            return false;
        }
        if let Some((startup, warmup)) = self.prune
            && self
                .study
                .median_prunes(self.number, metrics.epoch, startup, warmup)
        {
            self.pruned = true;
            return false;
        }
        true
    }
}

fn final_config_matches(dir: &Path, config: &TrainConfig) -> bool {
    // train_config.json holds (training settings, model configuration).
    std::fs::read_to_string(dir.join("train_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<(TrainConfig, serde_json::Value)>(&t).ok())
        .is_some_and(|(saved, _)| saved == *config)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let temp = to.with_extension("tmp");
    if temp.exists() {
        std::fs::remove_dir_all(&temp)?;
    }
    std::fs::create_dir_all(&temp)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        std::fs::copy(entry.path(), temp.join(entry.file_name()))?;
    }
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::rename(&temp, to)?;
    Ok(())
}
