//! Classifying texts with a fine-tuned classifier: tokenized, batched longest first (padding
//! to each batch's longest), and the logits and probabilities given back in the texts' order.
//! `cargo xtask predict` prints what this returns.

use burn::tensor::Device;
use roberta_burn::{RobertaConfig, RobertaForSequenceClassification};
use sentiment_tokenize::{Padding, RobertaTokenizer};

use crate::TrainError;

/// The model's outputs for each text, `num_labels` per text, in the texts' order.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Classes per text.
    pub num_labels: usize,
    /// Logits.
    pub logits: Vec<f32>,
    /// Softmax of the logits.
    pub probs: Vec<f32>,
}

/// Refuses a tokenizer that does not belong with the model: ids beyond its embedding,
/// sequences beyond its positions, another padding id.
pub fn check_compatible(
    config: &RobertaConfig,
    tokenizer: &RobertaTokenizer,
    max_length: usize,
) -> Result<(), TrainError> {
    config.check_sequence_length(max_length)?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(TrainError::InvalidSetting(format!(
            "the tokenizer has {} tokens but the model's vocabulary only {}: they do not belong \
             together",
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    if tokenizer.special_tokens().pad as usize != config.pad_token_id {
        return Err(TrainError::InvalidSetting(format!(
            "the tokenizer pads with id {} but the model expects {}",
            tokenizer.special_tokens().pad,
            config.pad_token_id
        )));
    }
    Ok(())
}

/// Classifies `texts` with `model` (in validation mode), `batch_size` texts per forward pass.
pub fn classify(
    model: &RobertaForSequenceClassification,
    config: &RobertaConfig,
    tokenizer: &RobertaTokenizer,
    texts: &[String],
    batch_size: usize,
    padding: Padding,
    device: &Device,
) -> Result<Predictions, TrainError> {
    let (rows, _) = tokenizer.encode_rows(texts)?;
    let num_labels = config.num_labels();
    let logits = crate::logits(model, &rows, num_labels, batch_size, padding, device)?;
    let probs = logits
        .chunks(num_labels)
        .flat_map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            exp.into_iter().map(move |e| e / sum)
        })
        .collect();
    Ok(Predictions {
        num_labels,
        logits,
        probs,
    })
}
