//! RoBERTa tokenization identical to Hugging Face's: byte-level BPE loaded from a local folder
//! or the hub cache, or trained on the training split; `<s> … </s>` truncated and padded to a
//! fixed length; the splits encoded on every core and cached next to them.
//!
//! ```no_run
//! use sentiment_tokenize::{HubSettings, RobertaTokenizer};
//!
//! let tokenizer = RobertaTokenizer::from_pretrained("roberta-base", 64, &HubSettings::from_env())?;
//! let batch = tokenizer.encode_batch(&["I love this!", "worst day ever"])?;
//! assert_eq!(batch.ids(0)[0], tokenizer.special_tokens().bos);
//! assert_eq!(batch.ids(0).len(), 64);
//! # Ok::<(), sentiment_tokenize::TokenizeError>(())
//! ```

mod cache;
mod error;
mod padding;
mod rows;
mod tokenizer;

use std::path::Path;

pub use cache::{
    SplitOutcome, TOKENS_INDEX, TOKENS_VERSION, TRAINED_TOKENIZER_DIR, TokenizedSplit, TokensIndex,
    read_tokenized, sha256_file, token_files, tokenize_splits, tokens_file_name, train_on_split,
};
pub use error::TokenizeError;
pub use padding::{Padding, by_length, gather_rows, group_by_length, row_length};
pub use rows::TokenizedRows;
pub use sentiment_hub::{HubSettings, resolve_pretrained};
pub use tokenizer::{
    BpeTrainingConfig, DEFAULT_MAX_LENGTH, EncodedBatch, RobertaTokenizer, SPECIAL_TOKENS,
    SpecialTokenIds, SpecialTokenNames,
};

/// Writes a file atomically (temporary sibling, then rename).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TokenizeError> {
    sentiment_data::write_file_atomic(path, bytes).map_err(TokenizeError::from)
}
