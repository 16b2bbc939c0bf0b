//! [`RobertaTokenizer`]: a byte-level BPE tokenizer set up exactly as `transformers` sets up
//! RoBERTa's, loaded from Hugging Face files or trained here, encoding to fixed-length ids.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, Model, ModelWrapper, NormalizerWrapper, PaddingDirection, PaddingParams,
    PaddingStrategy, Tokenizer, TokenizerBuilder, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::{TokenizeError, write_atomic};
use sentiment_hub::{HubSettings, resolve_pretrained};

/// RoBERTa's special tokens, in the id order a trained vocabulary gives them (0..=4).
pub const SPECIAL_TOKENS: [&str; 5] = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"];

/// The default sequence length: the notebook's `max_length=64`.
pub const DEFAULT_MAX_LENGTH: usize = 64;

/// Ids of the special tokens in a vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokenIds {
    /// `<s>`, the classification token.
    pub bos: u32,
    /// `<pad>`.
    pub pad: u32,
    /// `</s>`.
    pub eos: u32,
    /// `<unk>`.
    pub unk: u32,
    /// `<mask>`, for masked-LM pre-training.
    pub mask: u32,
}

/// Settings for training a byte-level BPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpeTrainingConfig {
    /// Vocabulary size including the 256 byte symbols and the 5 special tokens.
    pub vocab_size: usize,
    /// A pair must occur at least this often to be merged.
    pub min_frequency: u64,
}

impl Default for BpeTrainingConfig {
    /// 8,000 tokens (enough for tweets; roberta-base has 50,265) and a minimum frequency of 2,
    /// as `ByteLevelBPETokenizer.train` defaults.
    fn default() -> Self {
        Self {
            vocab_size: 8_000,
            min_frequency: 2,
        }
    }
}

/// Fixed-length encodings of a batch: row-major `[texts, max_length]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedBatch {
    /// Sequence length of every row.
    pub max_length: usize,
    /// Token ids, `<s> … </s>` then `<pad>`.
    pub input_ids: Vec<u32>,
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<u8>,
    /// Texts that were cut to fit `max_length` (their extra tokens are dropped, as with
    /// `truncation=True`).
    pub truncated: usize,
}

impl EncodedBatch {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.input_ids.len() / self.max_length.max(1)
    }

    /// True when the batch has no row.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// The ids of row `i`.
    pub fn ids(&self, i: usize) -> &[u32] {
        &self.input_ids[i * self.max_length..(i + 1) * self.max_length]
    }

    /// The attention mask of row `i`.
    pub fn mask(&self, i: usize) -> &[u8] {
        &self.attention_mask[i * self.max_length..(i + 1) * self.max_length]
    }
}

/// The special tokens of a vocabulary by their text: RoBERTa's `<s> </s> <pad> <unk> <mask>`,
/// BERT's `[CLS] [SEP] [PAD] [UNK] [MASK]`, or whatever `tokenizer_config.json` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokenNames {
    /// The classification token the sequence starts with (`cls_token`, else `bos_token`).
    pub cls: String,
    /// The token that ends the sequence (`sep_token`, else `eos_token`).
    pub sep: String,
    /// Padding.
    pub pad: String,
    /// Unknown.
    pub unk: String,
    /// Masked-LM's mask.
    pub mask: String,
}

impl SpecialTokenNames {
    /// RoBERTa's.
    pub fn roberta() -> Self {
        Self {
            cls: "<s>".into(),
            sep: "</s>".into(),
            pad: "<pad>".into(),
            unk: "<unk>".into(),
            mask: "<mask>".into(),
        }
    }

    /// BERT's.
    pub fn bert() -> Self {
        Self {
            cls: "[CLS]".into(),
            sep: "[SEP]".into(),
            pad: "[PAD]".into(),
            unk: "[UNK]".into(),
            mask: "[MASK]".into(),
        }
    }
}

/// A RoBERTa or BERT tokenizer (byte-level BPE, WordPiece, or whatever `tokenizer.json`
/// defines): `<s> … </s>` (`[CLS] … [SEP]`), truncated and padded to `max_length`.
#[derive(Clone)]
pub struct RobertaTokenizer {
    tokenizer: Tokenizer,
    special: SpecialTokenIds,
    names: SpecialTokenNames,
    max_length: usize,
    content_hash: String,
}

impl std::fmt::Debug for RobertaTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RobertaTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("max_length", &self.max_length)
            .field("special", &self.special)
            .field("content_hash", &self.content_hash)
            .finish()
    }
}

/// The subset of `tokenizer_config.json` (and `special_tokens_map.json`) that changes how
/// text is tokenized: the prefix space and the special tokens, each a plain string or an
/// `AddedToken` object (`{"content": …}`).
#[derive(Debug, Default, Deserialize)]
struct TokenizerConfigFile {
    #[serde(default)]
    add_prefix_space: Option<bool>,
    /// A plain string, or an `AddedToken` object whose `lstrip` we honour.
    #[serde(default)]
    mask_token: Option<serde_json::Value>,
    #[serde(default)]
    cls_token: Option<serde_json::Value>,
    #[serde(default)]
    bos_token: Option<serde_json::Value>,
    #[serde(default)]
    sep_token: Option<serde_json::Value>,
    #[serde(default)]
    eos_token: Option<serde_json::Value>,
    #[serde(default)]
    pad_token: Option<serde_json::Value>,
    #[serde(default)]
    unk_token: Option<serde_json::Value>,
}

/// A special token's text, from a plain string or an `AddedToken` object.
fn token_text(value: &Option<serde_json::Value>) -> Option<String> {
    match value.as_ref()? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => other.get("content")?.as_str().map(str::to_string),
    }
}

impl TokenizerConfigFile {
    /// The special tokens this file names, over `fallback` (the family's, chosen from the
    /// vocabulary) for those it does not.
    fn special_names(&self, fallback: SpecialTokenNames) -> SpecialTokenNames {
        let pick =
            |first: &Option<serde_json::Value>, second: &Option<serde_json::Value>, or: String| {
                token_text(first)
                    .or_else(|| token_text(second))
                    .unwrap_or(or)
            };
        SpecialTokenNames {
            cls: pick(&self.cls_token, &self.bos_token, fallback.cls),
            sep: pick(&self.sep_token, &self.eos_token, fallback.sep),
            pad: pick(&self.pad_token, &None, fallback.pad),
            unk: pick(&self.unk_token, &None, fallback.unk),
            mask: pick(&self.mask_token, &None, fallback.mask),
        }
    }

    /// Whether `<mask>` swallows the space before it. `transformers` 5 builds it without
    /// `lstrip` from vocab and merges unless the config says otherwise (roberta-base's
    /// `tokenizer.json` has `lstrip: true`, and is used as is when present).
    fn mask_lstrip(&self) -> bool {
        self.mask_token
            .as_ref()
            .and_then(|m| m.get("lstrip"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }
}

impl RobertaTokenizer {
    /// Loads a local folder or a hub id (`roberta-base`) through the Hugging Face cache.
    pub fn from_pretrained(
        name_or_path: &str,
        max_length: usize,
        hub: &HubSettings,
    ) -> Result<Self, TokenizeError> {
        let folder = resolve_pretrained(
            name_or_path,
            &[
                "tokenizer.json",
                "vocab.json",
                "merges.txt",
                "tokenizer_config.json",
            ],
            hub,
        )?;
        Self::from_folder(&folder, max_length)
    }

    /// Loads `tokenizer.json` from `dir`, or builds the tokenizer from `vocab.json` and
    /// `merges.txt` the way `transformers` converts a slow RoBERTa tokenizer.
    pub fn from_folder(dir: &Path, max_length: usize) -> Result<Self, TokenizeError> {
        check_max_length(max_length)?;
        let tokenizer_json = dir.join("tokenizer.json");
        let tokenizer = if tokenizer_json.is_file() {
            Tokenizer::from_file(&tokenizer_json).map_err(|e| TokenizeError::BadFile {
                path: tokenizer_json.clone(),
                detail: e.to_string(),
            })?
        } else {
            let vocab = dir.join("vocab.json");
            let merges = dir.join("merges.txt");
            for file in [&vocab, &merges] {
                if !file.is_file() {
                    return Err(TokenizeError::MissingFile {
                        path: file.clone(),
                        detail: "a tokenizer folder needs tokenizer.json, or vocab.json and \
                                 merges.txt"
                            .into(),
                    });
                }
            }
            let config = read_tokenizer_config(dir)?;
            from_vocab_and_merges(
                &vocab,
                &merges,
                config.add_prefix_space.unwrap_or(false),
                config.mask_lstrip(),
            )?
        };
        // The special tokens: those the folder's configuration names, else the family's
        // whose classification token the vocabulary holds.
        let family =
            if tokenizer.token_to_id("<s>").is_none() && tokenizer.token_to_id("[CLS]").is_some() {
                SpecialTokenNames::bert()
            } else {
                SpecialTokenNames::roberta()
            };
        let mut names = read_tokenizer_config(dir)?.special_names(family.clone());
        let map = dir.join("special_tokens_map.json");
        if map.is_file() && !dir.join("tokenizer_config.json").is_file() {
            let text = std::fs::read_to_string(&map).map_err(TokenizeError::io(&map))?;
            let parsed: TokenizerConfigFile =
                serde_json::from_str(&text).map_err(|e| TokenizeError::BadFile {
                    path: map.clone(),
                    detail: e.to_string(),
                })?;
            names = parsed.special_names(family);
        }
        Self::with_names(tokenizer, max_length, &dir.display().to_string(), names)
    }

    /// Trains a byte-level BPE on `texts` with RoBERTa's special tokens as ids 0–4, as
    /// `tokenizers.ByteLevelBPETokenizer().train_from_iterator` does.
    pub fn train(
        texts: &[String],
        config: &BpeTrainingConfig,
        max_length: usize,
    ) -> Result<Self, TokenizeError> {
        check_max_length(max_length)?;
        if config.vocab_size < 256 + SPECIAL_TOKENS.len() {
            return Err(TokenizeError::InvalidSetting(format!(
                "vocab size {} is below the 261 symbols a byte-level BPE starts with",
                config.vocab_size
            )));
        }
        // As roberta-base's tokenizer.json: <mask> swallows the space before it.
        let special_tokens: Vec<AddedToken> = special_added_tokens(true);
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(config.vocab_size)
            .min_frequency(config.min_frequency)
            .special_tokens(special_tokens)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .show_progress(false)
            .build();
        let mut tokenizer = TokenizerBuilder::<
            BPE,
            NormalizerWrapper,
            ByteLevel,
            RobertaProcessing,
            ByteLevel,
        >::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
        .with_post_processor(Some(
            RobertaProcessing::new(("</s>".into(), 2), ("<s>".into(), 0))
                .add_prefix_space(false)
                .trim_offsets(true),
        ))
        .with_decoder(Some(ByteLevel::default()))
        .build()
        .map_err(|e| TokenizeError::Training(e.to_string()))?;
        tokenizer
            .train(&mut trainer, texts.iter())
            .map_err(|e| TokenizeError::Training(e.to_string()))?;
        Self::with_names(
            Tokenizer::from(tokenizer),
            max_length,
            "trained tokenizer",
            SpecialTokenNames::roberta(),
        )
    }

    fn with_names(
        mut tokenizer: Tokenizer,
        max_length: usize,
        origin: &str,
        names: SpecialTokenNames,
    ) -> Result<Self, TokenizeError> {
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| TokenizeError::MissingSpecialToken {
                    origin: origin.to_string(),
                    token: token.to_string(),
                })
        };
        let special = SpecialTokenIds {
            bos: id(&names.cls)?,
            pad: id(&names.pad)?,
            eos: id(&names.sep)?,
            unk: id(&names.unk)?,
            mask: id(&names.mask)?,
        };
        // Settings that are part of `max_length`, not of the tokenizer, are reset so the
        // content hash depends on the vocabulary and pipeline only.
        tokenizer
            .with_truncation(None)
            .map_err(|e| TokenizeError::InvalidSetting(e.to_string()))?;
        tokenizer.with_padding(None);
        let mut canonical = tokenizer
            .to_string(false)
            .map_err(|e| TokenizeError::InvalidSetting(e.to_string()))?;
        // The special tokens may come from another file than tokenizer.json (the padding id
        // of the encodings with them).
        if names != SpecialTokenNames::roberta() {
            canonical.push_str(&serde_json::to_string(&names).expect("names serialise"));
        }
        let content_hash = hex(&Sha256::digest(canonical.as_bytes()));
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| TokenizeError::InvalidSetting(e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: special.pad,
            pad_type_id: 0,
            pad_token: names.pad.clone(),
        }));
        Ok(Self {
            tokenizer,
            special,
            names,
            max_length,
            content_hash,
        })
    }

    /// The special tokens' texts.
    pub fn special_token_names(&self) -> &SpecialTokenNames {
        &self.names
    }

    /// Sequence length of every encoding.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Vocabulary size including added tokens (the model's `vocab_size` must be at least this).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Ids of the special tokens.
    pub fn special_tokens(&self) -> SpecialTokenIds {
        self.special
    }

    /// SHA-256 of the tokenizer's canonical JSON (vocabulary, merges, pipeline), without the
    /// length settings: the cache key of tokenized splits.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// `texts` as rows to batch (row ids 0, 1, …, labels 0), and how many were truncated.
    pub fn encode_rows<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
    ) -> Result<(crate::TokenizedRows, usize), TokenizeError> {
        let batch = self.encode_batch(texts)?;
        let rows = crate::TokenizedRows::from_padded(
            self.max_length(),
            self.special_tokens().pad,
            (0..texts.len() as u64).collect(),
            vec![0; texts.len()],
            &batch.input_ids,
            &batch.attention_mask,
        );
        Ok((rows, batch.truncated))
    }

    /// Encodes a batch on every core: `<s> … </s>`, truncated and padded to `max_length`.
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
    ) -> Result<EncodedBatch, TokenizeError> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = self
            .tokenizer
            .encode_batch_fast(inputs, true)
            .map_err(|e| TokenizeError::Encoding(e.to_string()))?;
        let mut batch = EncodedBatch {
            max_length: self.max_length,
            input_ids: Vec::with_capacity(texts.len() * self.max_length),
            attention_mask: Vec::with_capacity(texts.len() * self.max_length),
            truncated: 0,
        };
        for encoding in &encodings {
            batch.input_ids.extend_from_slice(encoding.get_ids());
            batch
                .attention_mask
                .extend(encoding.get_attention_mask().iter().map(|&m| m as u8));
            batch.truncated += usize::from(!encoding.get_overflowing().is_empty());
        }
        Ok(batch)
    }

    /// Writes `tokenizer.json`, `vocab.json`, `merges.txt`, `tokenizer_config.json` and
    /// `special_tokens_map.json` into `dir`, so `AutoTokenizer.from_pretrained(dir)` loads it.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>, TokenizeError> {
        std::fs::create_dir_all(dir).map_err(TokenizeError::io(dir))?;
        let mut plain = self.tokenizer.clone();
        plain
            .with_truncation(None)
            .map_err(|e| TokenizeError::InvalidSetting(e.to_string()))?;
        plain.with_padding(None);
        let mut written = Vec::new();
        let json = plain
            .to_string(false)
            .map_err(|e| TokenizeError::InvalidSetting(e.to_string()))?;
        let path = dir.join("tokenizer.json");
        write_atomic(&path, json.as_bytes())?;
        written.push(path);
        // vocab.json and merges.txt, for tools that read the slow format.
        let staging = tempfile_dir(dir)?;
        let files = plain
            .get_model()
            .save(&staging, None)
            .map_err(|e| TokenizeError::BadFile {
                path: staging.clone(),
                detail: e.to_string(),
            })?;
        for file in files {
            let name = file.file_name().expect("model files have names");
            let target = dir.join(name);
            std::fs::rename(&file, &target).map_err(TokenizeError::io(&target))?;
            written.push(target);
        }
        let _ = std::fs::remove_dir_all(&staging);
        let names = &self.names;
        // transformers' class for the model: a byte-level BPE is RoBERTa's, WordPiece BERT's
        // (its lower-casing as the normaliser has it); anything else loads through
        // tokenizer.json alone.
        let (extra, mask_lstrip) = match plain.get_model() {
            ModelWrapper::BPE(_) => (
                serde_json::json!({
                    "tokenizer_class": "RobertaTokenizer",
                    "add_prefix_space": false,
                    "trim_offsets": true,
                    "errors": "replace",
                    "model_max_length": 512,
                }),
                true,
            ),
            ModelWrapper::WordPiece(_) => {
                let lowercase = serde_json::to_value(plain.get_normalizer())
                    .ok()
                    .and_then(|n| n.get("lowercase").and_then(serde_json::Value::as_bool))
                    .unwrap_or(false);
                (
                    serde_json::json!({
                        "tokenizer_class": "BertTokenizer",
                        "do_lower_case": lowercase,
                        "model_max_length": 512,
                    }),
                    false,
                )
            }
            _ => (
                serde_json::json!({
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "model_max_length": 512,
                }),
                false,
            ),
        };
        let mask = serde_json::json!({
            "content": names.mask, "lstrip": mask_lstrip, "normalized": false,
            "rstrip": false, "single_word": false, "special": true
        });
        let specials = serde_json::json!({
            "bos_token": names.cls, "eos_token": names.sep, "unk_token": names.unk,
            "sep_token": names.sep, "pad_token": names.pad, "cls_token": names.cls,
            "mask_token": mask,
        });
        let mut config = specials.clone();
        for (k, v) in extra.as_object().expect("object") {
            config[k] = v.clone();
        }
        for (name, value) in [
            ("tokenizer_config.json", config),
            ("special_tokens_map.json", specials),
        ] {
            let path = dir.join(name);
            let text = serde_json::to_string_pretty(&value).expect("JSON values serialise");
            write_atomic(&path, text.as_bytes())?;
            written.push(path);
        }
        Ok(written)
    }
}

fn check_max_length(max_length: usize) -> Result<(), TokenizeError> {
    if max_length < 2 {
        return Err(TokenizeError::InvalidSetting(format!(
            "max_length {max_length} leaves no room for <s> and </s>; it must be at least 2"
        )));
    }
    Ok(())
}

fn special_added_tokens(mask_lstrip: bool) -> Vec<AddedToken> {
    SPECIAL_TOKENS
        .iter()
        .map(|&t| AddedToken::from(t, true).lstrip(mask_lstrip && t == "<mask>"))
        .collect()
}

fn read_tokenizer_config(dir: &Path) -> Result<TokenizerConfigFile, TokenizeError> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(TokenizerConfigFile::default());
    }
    let text = std::fs::read_to_string(&path).map_err(TokenizeError::io(&path))?;
    serde_json::from_str(&text).map_err(|e| TokenizeError::BadFile {
        path,
        detail: e.to_string(),
    })
}

/// The tokenizer `transformers` builds from a slow RoBERTa tokenizer's files
/// (`convert_slow_tokenizer.RobertaConverter`).
fn from_vocab_and_merges(
    vocab: &Path,
    merges: &Path,
    add_prefix_space: bool,
    mask_lstrip: bool,
) -> Result<Tokenizer, TokenizeError> {
    let vocab_text = std::fs::read_to_string(vocab).map_err(TokenizeError::io(vocab))?;
    let _: HashMap<String, u32> =
        serde_json::from_str(&vocab_text).map_err(|e| TokenizeError::BadFile {
            path: vocab.to_path_buf(),
            detail: format!("not a JSON map of token to id: {e}"),
        })?;
    let model = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .build()
        .map_err(|e| TokenizeError::BadFile {
            path: merges.to_path_buf(),
            detail: e.to_string(),
        })?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(
        ByteLevel::default().add_prefix_space(add_prefix_space),
    ));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let sep = ("</s>".to_string(), model_id(&tokenizer, "</s>", vocab)?);
    let cls = ("<s>".to_string(), model_id(&tokenizer, "<s>", vocab)?);
    tokenizer.with_post_processor(Some(
        RobertaProcessing::new(sep, cls)
            .add_prefix_space(add_prefix_space)
            .trim_offsets(true),
    ));
    tokenizer.add_special_tokens(&special_added_tokens(mask_lstrip));
    Ok(tokenizer)
}

fn model_id(tokenizer: &Tokenizer, token: &str, vocab: &Path) -> Result<u32, TokenizeError> {
    tokenizer
        .token_to_id(token)
        .ok_or_else(|| TokenizeError::MissingSpecialToken {
            origin: vocab.display().to_string(),
            token: token.into(),
        })
}

fn tempfile_dir(dir: &Path) -> Result<PathBuf, TokenizeError> {
    let staging = dir.join(format!(".save-{}", std::process::id()));
    std::fs::create_dir_all(&staging).map_err(TokenizeError::io(&staging))?;
    Ok(staging)
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
