//! `cargo xtask pretrain`: masked-LM pre-training on the text column of a CSV or Parquet file,
//! into a Hugging Face folder that `train` and `pipeline --pretrained` fine-tune.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use roberta_burn::{Pretrained, RobertaConfig, RobertaForMaskedLM};
use sentiment_tokenize::{BpeTrainingConfig, HubSettings, RobertaTokenizer, TokenizedRows};
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

/// Encoded texts as the trainer's rows (labels unused).
fn encode(tokenizer: &RobertaTokenizer, texts: &[String]) -> Result<(TokenizedRows, usize)> {
    let batch = tokenizer.encode_batch(texts)?;
    Ok((
        TokenizedRows::from_padded(
            tokenizer.max_length(),
            tokenizer.special_tokens().pad,
            (0..texts.len() as u64).collect(),
            vec![0; texts.len()],
            &batch.input_ids,
            &batch.attention_mask,
        ),
        batch.truncated,
    ))
}

impl Pretrain {
    fn tokenizer(&self, train_texts: &[String]) -> Result<RobertaTokenizer> {
        let a = &self.args;
        let hub = HubSettings::from_env();
        if let Some(name) = a.tokenizer.as_deref().or(a.pretrained.as_deref()) {
            return RobertaTokenizer::from_pretrained(name, a.max_length, &hub)
                .with_context(|| format!("loading tokenizer {name}"));
        }
        // A tokenizer trained here is kept in the run folder, so that a resumed run uses it.
        let dir = a.out.join("tokenizer");
        if dir.join("tokenizer.json").exists() {
            return RobertaTokenizer::from_folder(&dir, a.max_length)
                .with_context(|| format!("loading {}", dir.display()));
        }
        println!(
            "training a byte-level BPE of {} tokens on {} texts",
            a.vocab_size,
            train_texts.len()
        );
        let training = BpeTrainingConfig {
            vocab_size: a.vocab_size,
            min_frequency: 2,
        };
        let tokenizer = RobertaTokenizer::train(train_texts, &training, a.max_length)?;
        tokenizer.save(&dir)?;
        Ok(tokenizer)
    }

    fn model(&self, tokenizer: &RobertaTokenizer) -> Result<(RobertaForMaskedLM, RobertaConfig)> {
        let a = &self.args;
        self.device.seed(self.config.seed);
        if let Some(name) = a.pretrained.as_deref() {
            let hub = HubSettings::from_env();
            let loaded = RobertaForMaskedLM::from_pretrained(name, &self.device, &hub, |_| {})
                .with_context(|| format!("loading pretrained model {name}"))?;
            if !loaded.report.newly_initialized.is_empty() {
                eprintln!(
                    "note: newly initialised (not in the checkpoint): {}",
                    loaded.report.newly_initialized.join(", ")
                );
            }
            return Ok((loaded.model, loaded.config));
        }
        let special = tokenizer.special_tokens();
        let mut config = match a.config.as_str() {
            preset @ ("tiny" | "small" | "base") => {
                RobertaConfig::preset(preset, tokenizer.vocab_size())?
            }
            file => RobertaConfig::load(Path::new(file))?,
        };
        config.pad_token_id = special.pad as usize;
        config.bos_token_id = special.bos as usize;
        config.eos_token_id = special.eos as usize;
        config.max_position_embeddings = config
            .max_position_embeddings
            .max(a.max_length + config.pad_token_id + 1);
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("model configuration: {e}"))?;
        Ok((RobertaForMaskedLM::new(&config, &self.device), config))
    }

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
        let input = a
            .input
            .clone()
            .unwrap_or_else(|| crate::fixtures::data_fixtures_dir().join("sample.csv"));
        let mut texts = sentiment_data::read_text_column(&input, &a.text_column)
            .map(|column| column.texts)
            .with_context(|| format!("reading the texts of {}", input.display()))?;
        let total = texts.len();
        texts.retain(|t| !t.trim().is_empty());
        let empty = total - texts.len();
        if texts.len() < 2 {
            bail!(
                "{}: {} non-empty texts; pre-training needs at least two",
                input.display(),
                texts.len()
            );
        }
        // A seeded shuffle, then the last --holdout share is held out.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.config.seed);
        texts.shuffle(&mut rng);
        let held = ((texts.len() as f64 * a.holdout).round() as usize).clamp(1, texts.len() - 1);
        let validation_texts = texts.split_off(texts.len() - held);
        say!(
            "{}: {total} texts ({empty} empty skipped), {} for training, {held} held out",
            input.display(),
            texts.len()
        );
        let tokenizer = self.tokenizer(&texts)?;
        let (train, truncated) = encode(&tokenizer, &texts)?;
        let (validation, _) = encode(&tokenizer, &validation_texts)?;
        if truncated > 0 {
            say!(
                "{truncated} training texts were longer than {} tokens and were truncated",
                a.max_length
            );
        }
        let (model, model_config) = self.model(&tokenizer)?;
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
            "model: {}\nfine-tune it with: cargo xtask pipeline --pretrained {}",
            outcome.model_dir.display(),
            outcome.model_dir.display()
        );
        Ok(outcome)
    }
}
