//! `roberta-sentiment predict`: label, probabilities and logits for texts, from any Hugging Face
//! RoBERTa sequence classifier.

use std::io::Write;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use roberta_burn::{Loaded, Pretrained, RobertaForSequenceClassification};
use sentiment_data::TextColumn;
use sentiment_tokenize::{DEFAULT_MAX_LENGTH, HubSettings, Padding, RobertaTokenizer};

use crate::flags::PredictArgs;

/// A resolved predict command.
pub struct Predict {
    model: String,
    tokenizer: String,
    texts: Vec<String>,
    /// The input's `row` column, when it has one.
    rows: Option<Vec<u64>>,
    max_length: Option<usize>,
    batch_size: usize,
    padding: Padding,
    device: Device,
    /// Mixed precision (the CPU backend's autocast).
    bf16: bool,
    json: bool,
}

impl TryFrom<PredictArgs> for Predict {
    type Error = anyhow::Error;

    fn try_from(args: PredictArgs) -> Result<Self> {
        let TextColumn { texts, rows } = match (&args.input, args.texts.as_slice()) {
            (Some(path), _) => sentiment_data::read_text_column(path, &args.text_column)
                .with_context(|| format!("reading {}", path.display()))?,
            // `-`: one text per line of standard input, as Unix tools read.
            (None, [dash]) if dash == "-" => TextColumn {
                texts: std::io::stdin()
                    .lines()
                    .collect::<std::io::Result<Vec<String>>>()
                    .context("reading texts from standard input")?,
                rows: None,
            },
            (None, []) => {
                bail!("give texts to classify, `-` to read them from stdin, or --input FILE")
            }
            (None, texts) => TextColumn {
                texts: texts.to_vec(),
                rows: None,
            },
        };
        if args.batch_size == 0 || args.pad_multiple == 0 {
            bail!("--batch-size and --pad-multiple must be at least 1");
        }
        if args.bf16 && args.device.backend != crate::flags::BackendFlag::Flex {
            bail!(
                "--bf16 is mixed precision on the CPU backend (flex); other backends compute in \
                 their device's float type"
            );
        }
        let support = roberta_burn::autocast::Bf16Support::detect();
        if args.bf16 && !support.faster_than_f32() {
            eprintln!("note: --bf16: {}", support.describe());
        }
        Ok(Self {
            tokenizer: args.tokenizer.clone().unwrap_or_else(|| args.model.clone()),
            model: args.model,
            texts,
            rows,
            max_length: args.max_length,
            batch_size: args.batch_size,
            padding: Padding {
                pad_to_max_length: args.pad_to_max_length,
                pad_to_multiple_of: args.pad_multiple,
            },
            device: crate::device(args.device.backend, args.device.device_index)?,
            bf16: args.bf16,
            json: args.json,
        })
    }
}

/// One classified text.
#[derive(serde::Serialize)]
struct Prediction<'a> {
    /// 0-based position of the text in the input (its data row, or line of stdin), so that
    /// results join back.
    index: usize,
    /// The input's `row` id (a prepared split's source line), when it has a `row` column.
    #[serde(skip_serializing_if = "Option::is_none")]
    row: Option<u64>,
    text: &'a str,
    label: String,
    probs: Vec<f32>,
    logits: Vec<f32>,
}

impl Predict {
    /// Loads the model and tokenizer, classifies every text, prints the results.
    pub fn run(&self) -> Result<()> {
        let hub = HubSettings::from_env();
        let loaded = RobertaForSequenceClassification::from_pretrained_with(
            &self.model,
            &self.device,
            &hub,
            |_| {},
        )
        .with_context(|| format!("loading the model {}", self.model))?;
        let max_length = self
            .max_length
            .unwrap_or_else(|| DEFAULT_MAX_LENGTH.min(loaded.config.max_sequence_length()));
        let tokenizer = RobertaTokenizer::from_pretrained(&self.tokenizer, max_length, &hub)
            .with_context(|| format!("loading the tokenizer of {}", self.tokenizer))?;
        sentiment_train::check_compatible(&loaded.config, &tokenizer, max_length)?;
        if !loaded.report.newly_initialized.is_empty() {
            eprintln!(
                "warning: {} has no trained classifier head ({} newly initialised): predictions \
                 are random",
                self.model,
                loaded.report.newly_initialized.join(", ")
            );
        }
        // In mixed precision each weight is packed once for all windows.
        roberta_burn::autocast::bf16(self.bf16, || {
            roberta_burn::autocast::reuse_weights(|| self.classify_all(&loaded, &tokenizer))
        })
    }

    /// Classifies every text with the loaded model and prints the results.
    fn classify_all(
        &self,
        loaded: &Loaded<RobertaForSequenceClassification>,
        tokenizer: &RobertaTokenizer,
    ) -> Result<()> {
        // Texts are classified in windows of 50 batches (each batched longest first, so it
        // pads little) and printed window by window, in their input order: output starts at
        // once and memory stays bounded whatever the input's size.
        let mut out = std::io::stdout().lock();
        for (w, window) in self.texts.chunks(self.batch_size * 50).enumerate() {
            let predicted = sentiment_train::classify(
                &loaded.model,
                &loaded.config,
                tokenizer,
                window,
                self.batch_size,
                self.padding,
                &self.device,
            )?;
            let num_labels = predicted.num_labels;
            for (i, text) in window.iter().enumerate() {
                let row = i * num_labels..(i + 1) * num_labels;
                let probs = predicted.probs[row.clone()].to_vec();
                let best = sentiment_metrics::argmax_rows(&probs, num_labels)?[0];
                let index = w * self.batch_size * 50 + i;
                let prediction = Prediction {
                    index,
                    row: self.rows.as_ref().map(|rows| rows[index]),
                    text,
                    label: loaded.config.label_name(best),
                    probs,
                    logits: predicted.logits[row].to_vec(),
                };
                let written = if self.json {
                    writeln!(out, "{}", serde_json::to_string(&prediction)?)
                } else {
                    writeln!(
                        out,
                        "{:<10} {:.3}  {}",
                        prediction.label,
                        prediction.probs[best],
                        text.replace('\n', " ")
                    )
                };
                match written {
                    // The reader went away (`| head`): stop quietly, as Unix tools do.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    other => other?,
                }
            }
        }
        Ok(())
    }
}
