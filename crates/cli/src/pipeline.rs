//! `roberta-sentiment pipeline`: the flags of the `sentiment-pipeline` library, its messages and
//! progress on the terminal, and the summary at the end.

use anyhow::{Context, Result};
use std::time::Duration;

use sentiment_pipeline::{
    Observer, Pipeline as Stages, PipelineConfig, PruneSettings, StudySettings,
};
use sentiment_search::parse_space;
use sentiment_train::Progress;

use crate::flags::PipelineArgs;
use crate::train::print_outcome;

/// A resolved pipeline command.
pub struct Pipeline {
    stages: Stages,
    bundled_sample: bool,
    quiet: bool,
}

impl TryFrom<PipelineArgs> for Pipeline {
    type Error = anyhow::Error;

    fn try_from(args: PipelineArgs) -> Result<Self> {
        let bundled_sample = args.input.is_none();
        let input = match &args.input {
            Some(input) => input.clone(),
            None => crate::bundled_sample()?,
        };
        let space = if args.space.is_empty() {
            PipelineConfig::default_space(args.pretrained.is_some())
        } else {
            parse_space(args.space.iter().map(String::as_str))?
        };
        if args.devices == 0 {
            anyhow::bail!("--devices must be at least 1");
        }
        // On the CPU every "device" is another worker with its own model, optimizer and
        // batches on the same cores: past one per core it only multiplies memory.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if matches!(args.device.backend, crate::flags::BackendFlag::Flex) && args.devices > cores {
            anyhow::bail!(
                "--devices {}: with the CPU backend, trials in parallel share this machine's \
                 {cores} cores; at most {cores}",
                args.devices
            );
        }
        let devices = (0..args.devices)
            .map(|i| crate::device(args.device.backend, args.device.device_index + i))
            .collect::<Result<_>>()?;
        let config = PipelineConfig {
            prepare: args
                .data_options
                .config(input, args.out.join("data"), args.seed)?,
            out: args.out,
            pretrained: args.pretrained,
            model_config: args.config,
            tokenizer: args.tokenizer,
            vocab_size: args.vocab_size,
            max_length: args.max_length,
            trials: args.trials,
            startup_trials: args.startup_trials,
            epochs: args.epochs,
            run: crate::flags::run_options(&args.batching, &args.trainer),
            prune: args.prune.then_some(PruneSettings {
                startup_trials: args.prune_startup_trials,
                warmup_epochs: args.prune_warmup_epochs,
            }),
            space,
            seed: args.seed,
            study: StudySettings {
                storage: args.study.storage,
                name: args.study.study_name,
                heartbeat_interval: Duration::from_secs(args.heartbeat_interval),
                grace_period: args.grace_period.map(Duration::from_secs),
                retry_failed: args.retry_failed,
                final_only: args.final_only,
                max_consecutive_failures: args.max_consecutive_failures,
            },
            overwrite: args.overwrite,
            command: reproduce_command(),
        };
        Ok(Self {
            stages: Stages::new(config, devices)?,
            bundled_sample,
            quiet: args.quiet,
        })
    }
}

/// This pipeline command with every flag this run was given, credentials masked: what the
/// report says reproduces it.
fn reproduce_command() -> String {
    format!(
        "{} {}",
        crate::invoked_as(),
        crate::shown_command_line().join(" ")
    )
}

/// Prints the pipeline's messages on stdout, warnings on stderr, progress as a terminal bar;
/// with `-q` only the warnings.
struct Terminal {
    quiet: bool,
}

impl Observer for Terminal {
    fn message(&self, line: &str) {
        if !self.quiet {
            println!("{line}");
        }
    }

    fn warning(&self, line: &str) {
        eprintln!("warning: {line}");
    }

    fn progress(&self) -> Box<dyn FnMut(Progress) + '_> {
        crate::train::progress_unless(self.quiet)
    }
}

impl Pipeline {
    /// Runs every stage and prints the summary.
    pub fn run(self) -> Result<()> {
        let stop = crate::checkpoint_on_ctrl_c();
        let terminal = Terminal { quiet: self.quiet };
        let done = self.stages.run(&stop, &terminal).map_err(|e| {
            if e.is_interrupted() {
                anyhow::Error::new(e)
                    .context("pipeline interrupted: run the same command to resume")
            } else {
                anyhow::Error::new(e)
            }
        })?;
        // Another worker sharing the study runs the final stage (the library said which).
        let Some(done) = done else {
            return Ok(());
        };
        if self.quiet {
            return Ok(());
        }
        println!();
        println!(
            "Best parameters: {}",
            serde_json::to_string(&done.best.params).context("printing the parameters")?
        );
        print_outcome(&done.outcome);
        if self.bundled_sample {
            println!();
            println!(
                "This ran on the bundled synthetic sample with a tiny model trained from scratch. \
                 The notebook's recipe on real data:\n  {} pipeline --input \
                 training.1600000.processed.noemoticon.csv --sample 10000 --pretrained roberta-base \
                 --trials 8 --epochs 3\n(see docs/pipeline.md)",
                crate::invoked_as()
            );
        }
        Ok(())
    }
}
