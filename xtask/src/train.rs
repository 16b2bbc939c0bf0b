//! `cargo xtask train`: the fine-tuning stage on the command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use roberta_burn::{Pretrained, RobertaConfig, RobertaForSequenceClassification};
use sentiment_data::Manifest;
use sentiment_tokenize::{
    BpeTrainingConfig, HubSettings, RobertaTokenizer, read_tokenized, token_files, tokenize_splits,
    train_on_split,
};
use sentiment_train::{BestMetric, Progress, TrainConfig, TrainData, TrainOutcome};

use crate::flags::{MetricFlag, TrainArgs};

/// A resolved train command.
pub struct Train {
    args: TrainArgs,
    device: Device,
    config: TrainConfig,
}

impl TryFrom<TrainArgs> for Train {
    type Error = anyhow::Error;

    fn try_from(args: TrainArgs) -> Result<Self> {
        let device = crate::device(args.backend, args.device_index)?;
        let default_rate = if args.pretrained.is_some() {
            5e-5
        } else {
            5e-4
        };
        let config = TrainConfig {
            learning_rate: args.learning_rate.unwrap_or(default_rate),
            batch_size: args.batch_size,
            epochs: args.epochs,
            warmup_steps: args.warmup_steps,
            weight_decay: args.weight_decay,
            max_grad_norm: args.max_grad_norm,
            seed: args.seed,
            metric_for_best: match args.metric {
                MetricFlag::F1 => BestMetric::F1,
                MetricFlag::Accuracy => BestMetric::Accuracy,
                MetricFlag::Loss => BestMetric::Loss,
            },
            save_total_limit: args.save_total_limit,
            ..TrainConfig::default()
        };
        config.validate()?;
        Ok(Self {
            args,
            device,
            config,
        })
    }
}

/// The model a run starts from, with its configuration and tokenizer.
pub struct Start {
    /// The classifier (pretrained encoder, or fresh).
    pub model: RobertaForSequenceClassification,
    /// Its configuration, with the data's classes.
    pub config: RobertaConfig,
    /// The tokenizer the splits are encoded with.
    pub tokenizer: RobertaTokenizer,
    /// Where the tokenizer came from.
    pub tokenizer_origin: String,
}

/// Where a run starts from.
pub struct StartOptions<'a> {
    /// The prepared data folder.
    pub data: &'a std::path::Path,
    /// Pretrained folder or hub id.
    pub pretrained: Option<&'a str>,
    /// Preset or config file when training from scratch.
    pub fresh_config: &'a str,
    /// Tokenizer folder or hub id.
    pub tokenizer: Option<&'a str>,
    /// Vocabulary of a tokenizer trained here.
    pub vocab_size: usize,
    /// Sequence length.
    pub max_length: usize,
    /// Seed of the fresh initialisation.
    pub seed: u64,
}

/// Loads or creates the tokenizer and the model for the prepared data.
pub fn starting_point(options: &StartOptions<'_>, device: &Device) -> Result<Start> {
    let StartOptions {
        data,
        pretrained,
        fresh_config,
        tokenizer,
        vocab_size,
        max_length,
        seed,
    } = *options;
    let manifest = Manifest::load(data).context("reading the prepared data's manifest")?;
    let labels: Vec<String> = manifest.classes.iter().map(|c| c.name.clone()).collect();
    let hub = HubSettings::from_env();
    let tokenizer_name = tokenizer.or(pretrained);
    let (tokenizer, origin) = match tokenizer_name {
        Some(name) => (
            RobertaTokenizer::from_pretrained(name, max_length, &hub)
                .with_context(|| format!("loading tokenizer {name}"))?,
            name.to_string(),
        ),
        None => {
            let training = BpeTrainingConfig {
                vocab_size,
                min_frequency: 2,
            };
            let (tokenizer, _) = train_on_split(data, &training, max_length)?;
            let origin = data.join(sentiment_tokenize::TRAINED_TOKENIZER_DIR);
            (tokenizer, origin.display().to_string())
        }
    };
    device.seed(seed);
    let (model, config) = match pretrained {
        Some(name) => {
            let model_hub = roberta_burn::HubSettings {
                cache_dir: hub.cache_dir.clone(),
                offline: hub.offline,
            };
            let loaded =
                RobertaForSequenceClassification::from_pretrained(name, device, &model_hub, |c| {
                    *c = c.clone().with_labels(&labels)
                })
                .with_context(|| format!("loading pretrained model {name}"))?;
            if !loaded.report.newly_initialized.is_empty() {
                eprintln!(
                    "note: newly initialised (not in the checkpoint): {}",
                    loaded.report.newly_initialized.join(", ")
                );
            }
            if !loaded.report.unused.is_empty() {
                eprintln!(
                    "note: checkpoint weights not used by a classifier: {}",
                    loaded.report.unused.join(", ")
                );
            }
            (loaded.model, loaded.config)
        }
        None => {
            let config = match fresh_config {
                "tiny" | "small" | "base" => {
                    let mut c = RobertaConfig::preset(fresh_config, tokenizer.vocab_size())?;
                    c.pad_token_id = tokenizer.special_tokens().pad as usize;
                    c.bos_token_id = tokenizer.special_tokens().bos as usize;
                    c.eos_token_id = tokenizer.special_tokens().eos as usize;
                    c
                }
                file => RobertaConfig::load(file.as_ref())?,
            }
            .with_labels(&labels);
            config
                .validate()
                .map_err(|e| anyhow::anyhow!("model configuration: {e}"))?;
            (
                RobertaForSequenceClassification::new(&config, device),
                config,
            )
        }
    };
    if tokenizer.vocab_size() > config.vocab_size {
        bail!(
            "the tokenizer has {} tokens, more than the model's vocabulary of {}",
            tokenizer.vocab_size(),
            config.vocab_size
        );
    }
    config.check_sequence_length(max_length)?;
    Ok(Start {
        model,
        config,
        tokenizer,
        tokenizer_origin: origin,
    })
}

/// A terminal progress line: epoch, bar, loss, samples/s, ETA.
pub fn progress_printer() -> impl FnMut(Progress) {
    let interactive = std::io::stderr().is_terminal();
    let mut last = Instant::now();
    move |p: Progress| {
        let done = p.step_in_epoch == p.steps_per_epoch;
        if !interactive || (!done && last.elapsed().as_millis() < 200) {
            return;
        }
        last = Instant::now();
        let width = 30;
        let filled = width * p.step_in_epoch / p.steps_per_epoch.max(1);
        // Time left in this epoch plus the whole remaining epochs at this epoch's pace.
        let per_step = p.elapsed_seconds / p.step_in_epoch.max(1) as f64;
        let steps_left =
            (p.steps_per_epoch - p.step_in_epoch) + (p.epochs - p.epoch) * p.steps_per_epoch;
        let eta = per_step * steps_left as f64;
        eprint!(
            "\repoch {}/{} [{}{}] {}/{} loss {:.4} {:.0} samples/s ETA {:.0}s ",
            p.epoch,
            p.epochs,
            "#".repeat(filled),
            ".".repeat(width - filled),
            p.step_in_epoch,
            p.steps_per_epoch,
            p.loss,
            p.samples_per_second,
            eta
        );
        if done {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }
}

/// Prints the per-epoch table and the test metrics, like the notebook's last cells.
pub fn print_outcome(outcome: &TrainOutcome) {
    println!("| epoch | train loss | eval loss | accuracy | precision | recall | F1 | samples/s |");
    println!("|---|---|---|---|---|---|---|---|");
    for m in &outcome.history {
        println!(
            "| {}{} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.0} |",
            m.epoch,
            if m.epoch == outcome.best_epoch {
                " (best)"
            } else {
                ""
            },
            m.train_loss,
            m.eval_loss,
            m.accuracy,
            m.precision,
            m.recall,
            m.f1,
            m.train_samples_per_second
        );
    }
    if let Some(test) = &outcome.test {
        let b = &test.report.binary;
        println!(
            "test: accuracy {:.4}  precision {:.4}  recall {:.4}  F1 {:.4}  (loss {:.4})",
            b.accuracy, b.precision, b.recall, b.f1, test.loss
        );
    }
    println!("best model: {}", outcome.best_model_dir.display());
}

impl Train {
    /// Tokenizes (cached), builds the model, trains, prints the results.
    pub fn run(self) -> Result<()> {
        crate::checkpoint_on_ctrl_c();
        let a = &self.args;
        let start = starting_point(
            &StartOptions {
                data: &a.data,
                pretrained: a.pretrained.as_deref(),
                fresh_config: &a.config,
                tokenizer: a.tokenizer.as_deref(),
                vocab_size: a.vocab_size,
                max_length: a.max_length,
                seed: a.seed,
            },
            &self.device,
        )?;
        tokenize_splits(
            &a.data,
            &start.tokenizer,
            &start.tokenizer_origin,
            &mut |_, _, _| {},
        )?;
        let files = token_files(&a.data);
        let read = |split| -> Result<_> {
            let path: &PathBuf = &files[&split];
            read_tokenized(path).with_context(|| format!("reading {}", path.display()))
        };
        use sentiment_data::Split;
        let (train, validation, test) = (
            read(Split::Train)?,
            read(Split::Validation)?,
            read(Split::Test)?,
        );
        let data = TrainData {
            train: &train,
            validation: &validation,
            test: Some(&test),
        };
        println!(
            "training {} rows, validating on {}, {} epochs, batch {}, learning rate {:e}",
            train.len(),
            validation.len(),
            self.config.epochs,
            self.config.batch_size,
            self.config.learning_rate
        );
        let outcome = sentiment_train::train(
            start.model,
            &start.config,
            Some(&start.tokenizer),
            &data,
            &self.config,
            &a.run,
            &self.device,
            a.resume,
            &mut progress_printer(),
        )
        .with_context(|| format!("training into {}", a.run.display()))?;
        print_outcome(&outcome);
        Ok(())
    }
}
