//! `roberta-sentiment pretrain`: masked-LM pre-training on the text column of a CSV or Parquet file,
//! into a Hugging Face folder that `train` and `pipeline --pretrained` fine-tune.

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use sentiment_train::{PretrainConfig, PretrainOutcome};

use crate::flags::PretrainArgs;

/// A resolved pretrain command.
pub struct Pretrain {
    args: PretrainArgs,
    device: Device,
    config: PretrainConfig,
}

impl TryFrom<PretrainArgs> for Pretrain {
    type Error = anyhow::Error;

    fn try_from(args: PretrainArgs) -> Result<Self> {
        let device = crate::device(args.device.backend, args.device.device_index)?;
        let mut config = PretrainConfig {
            run: crate::flags::run_options(&args.batching, &args.trainer),
            ..PretrainConfig::default()
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
        if !(args.holdout > 0.0 && args.holdout < 1.0) {
            bail!("--holdout must be a fraction strictly between 0 and 1");
        }
        Ok(Self {
            args,
            device,
            config,
        })
    }
}

impl Pretrain {
    /// Reads, splits, tokenizes, pre-trains, prints the per-epoch table.
    pub fn run(self) -> Result<PretrainOutcome> {
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
        crate::train::replace_run(&a.out, "pretrain_config.json", a.folder.overwrite)?;
        let input = a.input.clone().map_or_else(crate::bundled_sample, Ok)?;
        let mut texts = sentiment_data::read_text_column(&input, &a.text_column)
            .map(|column| column.texts)
            .with_context(|| format!("reading the texts of {}", input.display()))?;
        let total = texts.len();
        texts.retain(|t| !t.trim().is_empty());
        let empty = total - texts.len();
        // A seeded shuffle, then the last --holdout share is held out.
        let usable = texts.len();
        let (texts, validation_texts) =
            sentiment_train::hold_out(texts, a.holdout, self.config.seed).with_context(|| {
                format!(
                    "{}: {usable} non-empty texts; pre-training needs at least two",
                    input.display()
                )
            })?;
        say!(
            "{}: {total} texts ({empty} empty skipped), {} for training, {} held out",
            input.display(),
            texts.len(),
            validation_texts.len()
        );
        let start = sentiment_pipeline::masked_lm_start(
            &sentiment_pipeline::StartOptions {
                data: &a.out,
                pretrained: a.pretrained.as_deref(),
                fresh_config: &a.config,
                tokenizer: a.tokenizer.as_deref(),
                vocab_size: a.vocab_size,
                max_length: a.max_length,
                seed: self.config.seed,
            },
            &texts,
            &self.device,
        )?;
        for note in &start.notes {
            eprintln!("note: {note}");
        }
        let (tokenizer, model, model_config) = (start.tokenizer, start.model, start.config);
        let (train, truncated) = tokenizer.encode_rows(&texts)?;
        let (validation, _) = tokenizer.encode_rows(&validation_texts)?;
        if truncated > 0 {
            say!(
                "{truncated} training texts were longer than {} tokens and were truncated",
                a.max_length
            );
        }
        say!(
            "pre-training a {}-layer, {}-wide masked LM: {} epochs, batch {}, learning rate {:e}",
            model_config.num_hidden_layers,
            model_config.hidden_size,
            self.config.epochs,
            self.config.batch_size,
            self.config.learning_rate
        );
        let outcome = sentiment_train::pretrain(
            model,
            &model_config,
            &tokenizer,
            &train,
            &validation,
            &self.config,
            &a.out,
            &self.device,
            a.folder.resume,
            &stop,
            &mut crate::train::progress_unless(quiet),
        )
        .with_context(|| format!("pre-training into {}", a.out.display()))?;
        say!("| epoch | train loss | held-out loss | held-out accuracy | samples/s |");
        say!("|---|---|---|---|---|");
        for e in &outcome.history {
            say!(
                "| {} | {:.4} | {:.4} | {:.4} | {:.0} |",
                e.epoch,
                e.train_loss,
                e.eval_loss,
                e.eval_accuracy,
                e.train_samples_per_second
            );
        }
        say!(
            "model: {}\nfine-tune it with: {} pipeline --pretrained {}",
            outcome.model_dir.display(),
            crate::invoked_as(),
            outcome.model_dir.display()
        );
        Ok(outcome)
    }
}
