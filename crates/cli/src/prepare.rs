//! `roberta-sentiment prepare`: the data stage on the command line.

use std::io::{IsTerminal, Write};

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sentiment_data::{
    BadRowPolicy, InputFormat, Manifest, Normalization, PrepareConfig, Progress, SplitRatios,
    TextEncoding,
};

use crate::flags::{BadRowFlag, DataOptions, EncodingFlag, FormatFlag, NormalizeFlag, PrepareArgs};

/// A resolved prepare command.
pub struct Prepare {
    config: PrepareConfig,
    quiet: bool,
}

impl TryFrom<PrepareArgs> for Prepare {
    type Error = anyhow::Error;

    fn try_from(args: PrepareArgs) -> Result<Self> {
        let input = match args.input {
            Some(input) => input,
            None => crate::bundled_sample()?,
        };
        let config = args.data.config(input, args.out, args.seed)?;
        Ok(Prepare {
            config,
            quiet: args.quiet,
        })
    }
}

impl DataOptions {
    /// The preparation of `input` into `out` with these options and `seed`.
    pub fn config(&self, input: PathBuf, out: PathBuf, seed: u64) -> Result<PrepareConfig> {
        let mut config = PrepareConfig::new(input, out);
        config.format = match self.format {
            FormatFlag::Auto => None,
            FormatFlag::Raw => Some(InputFormat::Raw),
            FormatFlag::Cleaned => Some(InputFormat::Cleaned),
        };
        config.encoding = self.encoding.map(|e| match e {
            EncodingFlag::Cp1252 => TextEncoding::Cp1252,
            EncodingFlag::Utf8 => TextEncoding::Utf8,
        });
        config.text_column = self.text_column.clone();
        config.label_column = self.label_column.clone();
        config.keep_neutral = self.keep_neutral;
        config.normalization = normalization(&self.normalize);
        config.dedup = self.dedup;
        config.sample = self.sample;
        config.seed = seed;
        let [train, validation, test] = self.ratios[..] else {
            bail!(
                "--ratios takes three comma-separated fractions (train,validation,test), e.g. \
                 --ratios 0.7,0.15,0.15; got {} value(s)",
                self.ratios.len()
            );
        };
        config.ratios = SplitRatios {
            train,
            validation,
            test,
        };
        config.on_bad_row = match self.on_bad_row {
            BadRowFlag::Error => BadRowPolicy::Error,
            BadRowFlag::Skip => BadRowPolicy::Skip,
        };
        if self.max_record_bytes == 0 {
            anyhow::bail!("--max-record-bytes must be at least 1");
        }
        config.max_record_bytes = self.max_record_bytes;
        Ok(config)
    }
}

fn normalization(steps: &[NormalizeFlag]) -> Normalization {
    let mut n = Normalization::default();
    for step in steps {
        match step {
            NormalizeFlag::All => n = Normalization::all(),
            NormalizeFlag::Html => n.html_unescape = true,
            NormalizeFlag::Mentions => n.mentions = true,
            NormalizeFlag::Urls => n.urls = true,
            NormalizeFlag::Whitespace => n.whitespace = true,
        }
    }
    n
}

impl Prepare {
    /// Runs the stage and prints a summary.
    pub fn run(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let show_progress = !self.quiet && std::io::stderr().is_terminal();
        let mut report = |p: Progress| {
            if show_progress {
                let percent = 100 * p.bytes / p.total_bytes.max(1);
                eprint!("\rpass {}/2: {percent:3}%  {} rows ", p.pass, p.rows);
                let _ = std::io::stderr().flush();
            }
        };
        let manifest = sentiment_data::prepare(&self.config, &mut report)
            .with_context(|| format!("preparing {}", self.config.input.display()))?;
        if show_progress {
            eprintln!();
        }
        if !self.quiet {
            print_summary(&manifest, &self.config, started.elapsed());
        }
        Ok(())
    }
}

fn print_summary(m: &Manifest, config: &PrepareConfig, elapsed: std::time::Duration) {
    println!(
        "{}: {:?} format, {} rows read, {} kept in {:.1} s",
        m.input.path,
        m.format,
        m.rows_read,
        m.rows_kept,
        elapsed.as_secs_f64()
    );
    for (reason, count) in &m.rows_dropped {
        println!("  dropped {count:>9}  {reason}");
    }
    if m.blank_lines > 0 {
        println!("  ({} blank lines skipped)", m.blank_lines);
    }
    let names: Vec<&str> = m.classes.iter().map(|c| c.name.as_str()).collect();
    println!("  classes: {}", names.join(", "));
    for split in &m.splits {
        let counts: Vec<String> = split.class_counts.iter().map(u64::to_string).collect();
        println!(
            "  {:<10} {:>9} rows  [{}]  {}",
            split.split.name(),
            split.rows,
            counts.join(" / "),
            config.out_dir.join(&split.file).display()
        );
    }
    println!(
        "  manifest: {}",
        config.out_dir.join(sentiment_data::MANIFEST_FILE).display()
    );
}
