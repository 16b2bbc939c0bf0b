//! `roberta-sentiment train`: the fine-tuning stage on the command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::Device;
use sentiment_pipeline::{StartOptions, starting_point};
use sentiment_tokenize::{read_tokenized, token_files, tokenize_splits};
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
        let device = crate::device(args.device.backend, args.device.device_index)?;
        let mut config = TrainConfig {
            // TrainConfig's 5e-5 is fine-tuning's; a model from scratch learns at 5e-4.
            learning_rate: if args.pretrained.is_some() {
                TrainConfig::default().learning_rate
            } else {
                5e-4
            },
            metric_for_best: match args.metric {
                MetricFlag::F1 => BestMetric::F1,
                MetricFlag::Accuracy => BestMetric::Accuracy,
                MetricFlag::Loss => BestMetric::Loss,
            },
            save_total_limit: args.save_total_limit,
            run: crate::flags::run_options(&args.batching, &args.trainer),
            ..TrainConfig::default()
        };
        let c = &mut config;
        args.optimizer.apply(
            &mut c.learning_rate,
            &mut c.batch_size,
            &mut c.epochs,
            &mut c.warmup_steps,
            &mut c.optimizer,
            &mut c.seed,
        );
        config.validate()?;
        Ok(Self {
            args,
            device,
            config,
        })
    }
}

/// With `--overwrite`, deletes the run in `dir` (a folder holding `config_file`) so that a
/// fresh one can start there; a folder that holds no run is left alone.
pub fn replace_run(dir: &std::path::Path, config_file: &str, overwrite: bool) -> Result<()> {
    if overwrite && dir.join(config_file).exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        eprintln!("removed the run in {} (--overwrite)", dir.display());
    }
    Ok(())
}

/// Progress of a training run on stderr: on a terminal, a bar per epoch redrawn in place
/// (indicatif's); elsewhere (a pipe, `nohup`, CI) a plain line every 30 seconds and at the end
/// of every epoch, so a log shows how far a run got even if it is killed.
pub fn progress_printer() -> Box<dyn FnMut(Progress)> {
    if std::io::stderr().is_terminal() {
        Box::new(progress_bar())
    } else {
        Box::new(progress_lines(std::time::Duration::from_secs(30), |line| {
            let _ = std::io::stderr().write_all(line.as_bytes());
            let _ = std::io::stderr().flush();
        }))
    }
}

/// [`progress_printer`], or nothing with `-q`.
pub fn progress_unless(quiet: bool) -> Box<dyn FnMut(Progress)> {
    if quiet {
        Box::new(|_| {})
    } else {
        progress_printer()
    }
}

/// Whether `p` ends its epoch (or the run).
fn ends_epoch(p: &Progress) -> bool {
    p.step_in_epoch == p.steps_per_epoch || p.step == p.total_steps
}

/// The step's numbers after its position: loss, speed and the run's remaining time at this
/// epoch's pace.
fn numbers(p: &Progress) -> String {
    let per_step = p.elapsed_seconds / p.step_in_epoch.max(1) as f64;
    let eta = per_step * p.total_steps.saturating_sub(p.step) as f64;
    format!(
        "loss {:.4} {:.0} samples/s ETA {:.0}s",
        p.loss, p.samples_per_second, eta
    )
}

/// One indicatif bar per epoch on stderr, left on screen when its epoch ends.
fn progress_bar() -> impl FnMut(Progress) {
    let style =
        indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("#>.");
    let mut current: Option<(usize, indicatif::ProgressBar)> = None;
    move |p: Progress| {
        if current.as_ref().is_none_or(|(epoch, _)| *epoch != p.epoch) {
            if let Some((_, bar)) = current.take() {
                bar.finish();
            }
            let bar = indicatif::ProgressBar::new(p.steps_per_epoch as u64)
                .with_style(style.clone())
                .with_prefix(format!("{}/{}", p.epoch, p.epochs));
            current = Some((p.epoch, bar));
        }
        if let Some((_, bar)) = &current {
            bar.set_position(p.step_in_epoch as u64);
            bar.set_message(numbers(&p));
            if ends_epoch(&p) {
                bar.finish();
            }
        }
    }
}

/// The progress lines of a run without a terminal, written through `write`: one every `every`
/// and one at each epoch's end.
fn progress_lines(every: std::time::Duration, mut write: impl FnMut(&str)) -> impl FnMut(Progress) {
    let mut last = Instant::now();
    move |p: Progress| {
        if !ends_epoch(&p) && last.elapsed() < every {
            return;
        }
        last = Instant::now();
        write(&format!(
            "epoch {}/{} step {}/{} {}\n",
            p.epoch,
            p.epochs,
            p.step_in_epoch,
            p.steps_per_epoch,
            numbers(&p)
        ));
    }
}

/// Prints the table of evaluations and the test metrics, like the notebook's last cells.
pub fn print_outcome(outcome: &TrainOutcome) {
    println!(
        "| epoch | step | train loss | eval loss | accuracy | precision | recall | F1 | samples/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for m in &outcome.history {
        println!(
            "| {} | {}{} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.0} |",
            m.epoch,
            m.step,
            if m.step == outcome.best_step {
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
        let stop = crate::checkpoint_on_ctrl_c();
        let a = &self.args;
        let quiet = a.folder.quiet;
        // Everything but errors, unless -q.
        macro_rules! say {
            ($($t:tt)*) => {
                if !quiet {
                    println!($($t)*);
                }
            };
        }
        replace_run(&a.out, "train_config.json", a.folder.overwrite)?;
        let start = starting_point(
            &StartOptions {
                data: &a.prepared,
                pretrained: a.pretrained.as_deref(),
                fresh_config: &a.config,
                tokenizer: a.tokenizer.as_deref(),
                vocab_size: a.vocab_size,
                max_length: a.max_length,
                seed: self.config.seed,
            },
            &self.device,
        )?;
        for note in &start.notes {
            eprintln!("note: {note}");
        }
        tokenize_splits(
            &a.prepared,
            &start.tokenizer,
            &start.tokenizer_origin,
            &mut |_, _, _| {},
        )?;
        let files = token_files(&a.prepared);
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
        say!(
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
            &a.out,
            &self.device,
            a.folder.resume,
            &stop,
            &mut crate::train::progress_unless(quiet),
        )
        .with_context(|| format!("training into {}", a.out.display()))?;
        if !quiet {
            print_outcome(&outcome);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(step: usize) -> Progress {
        Progress {
            epoch: 1,
            epochs: 2,
            step_in_epoch: step,
            steps_per_epoch: 4,
            step,
            total_steps: 8,
            loss: 0.5,
            samples_per_second: 100.0,
            elapsed_seconds: step as f64,
        }
    }

    #[test]
    fn without_a_terminal_progress_is_plain_lines_each_interval_and_epoch() {
        let mut lines = Vec::new();
        {
            let mut printer =
                progress_lines(std::time::Duration::ZERO, |l| lines.push(l.to_string()));
            for step in 1..=4 {
                printer(progress(step));
            }
        }
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            "epoch 1/2 step 1/4 loss 0.5000 100 samples/s ETA 7s\n"
        );
        assert!(lines.iter().all(|l| !l.contains('\r')));
        let mut lines = Vec::new();
        {
            let mut printer = progress_lines(std::time::Duration::from_secs(3600), |l| {
                lines.push(l.to_string())
            });
            for step in 1..=4 {
                printer(progress(step));
            }
        }
        assert_eq!(
            lines,
            ["epoch 1/2 step 4/4 loss 0.5000 100 samples/s ETA 4s\n"]
        );
    }
}
