//! `roberta-sentiment tokenize`: the tokenization stage on the command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use sentiment_tokenize::{
    BpeTrainingConfig, HubSettings, RobertaTokenizer, TRAINED_TOKENIZER_DIR, tokenize_splits,
    train_on_split,
};

use crate::flags::TokenizeArgs;

/// A resolved tokenize command.
pub struct Tokenize {
    data: PathBuf,
    tokenizer: Option<String>,
    training: BpeTrainingConfig,
    max_length: usize,
    quiet: bool,
}

impl From<TokenizeArgs> for Tokenize {
    fn from(args: TokenizeArgs) -> Self {
        Self {
            data: args.prepared,
            tokenizer: args.tokenizer,
            training: BpeTrainingConfig {
                vocab_size: args.vocab_size,
                min_frequency: args.min_frequency,
            },
            max_length: args.max_length,
            quiet: args.quiet,
        }
    }
}

impl Tokenize {
    /// Loads or trains the tokenizer, then encodes the three splits (reusing the cache).
    pub fn run(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let (tokenizer, origin) = self.tokenizer()?;
        let show_progress = !self.quiet && std::io::stderr().is_terminal();
        let outcomes = tokenize_splits(
            &self.data,
            &tokenizer,
            &origin,
            &mut |split, done, total| {
                if show_progress {
                    eprint!("\r{}: {done}/{total} ", split.name());
                    let _ = std::io::stderr().flush();
                }
            },
        )
        .with_context(|| format!("tokenizing {}", self.data.display()))?;
        if show_progress {
            eprintln!();
        }
        if self.quiet {
            return Ok(());
        }
        println!(
            "tokenizer: {origin} (vocabulary {}, max length {})",
            tokenizer.vocab_size(),
            tokenizer.max_length()
        );
        for outcome in &outcomes {
            let e = &outcome.entry;
            println!(
                "  {:<10} {:>9} rows  {:>7} truncated  {}  {}",
                e.split.name(),
                e.rows,
                e.truncated,
                if outcome.reused { "cached" } else { "encoded" },
                self.data.join(&e.file).display()
            );
        }
        println!("  done in {:.1} s", started.elapsed().as_secs_f64());
        Ok(())
    }

    fn tokenizer(&self) -> Result<(RobertaTokenizer, String)> {
        match &self.tokenizer {
            Some(name) => {
                let tokenizer = RobertaTokenizer::from_pretrained(
                    name,
                    self.max_length,
                    &HubSettings::from_env(),
                )
                .with_context(|| format!("loading tokenizer {name}"))?;
                Ok((tokenizer, name.clone()))
            }
            None => {
                let (tokenizer, reused) =
                    train_on_split(&self.data, &self.training, self.max_length)
                        .context("training a tokenizer on the train split")?;
                let folder = self.data.join(TRAINED_TOKENIZER_DIR);
                if !self.quiet {
                    println!(
                        "{} tokenizer in {} (vocab size {}, min frequency {})",
                        if reused { "reusing the" } else { "trained a" },
                        folder.display(),
                        self.training.vocab_size,
                        self.training.min_frequency
                    );
                }
                Ok((tokenizer, folder.display().to_string()))
            }
        }
    }
}
