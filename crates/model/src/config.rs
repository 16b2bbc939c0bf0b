//! [`RobertaConfig`]: Hugging Face's `config.json` for RoBERTa, read and written as is.
//!
//! Plain serde rather than Burn's `#[derive(Config)]`: `config.json` files carry many fields we do
//! not model (`torch_dtype`, `transformers_version`, …), which are kept in `extra` so a config
//! written back loses nothing.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ModelError;

fn default_vocab_size() -> usize {
    50_265
}
fn default_hidden_size() -> usize {
    768
}
fn default_layers() -> usize {
    12
}
fn default_heads() -> usize {
    12
}
fn default_intermediate() -> usize {
    3_072
}
fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_positions() -> usize {
    514
}
fn default_type_vocab() -> usize {
    1
}
fn default_init_range() -> f64 {
    0.02
}
fn default_eps() -> f64 {
    1e-5
}
fn default_pad() -> usize {
    1
}
fn default_bos() -> Option<usize> {
    Some(0)
}
fn default_eos() -> Option<usize> {
    Some(2)
}
fn default_model_type() -> String {
    "roberta".into()
}

/// RoBERTa's hyperparameters under Hugging Face's names; defaults are roberta-base's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobertaConfig {
    /// Rows of the word embedding (50,265 for roberta-base).
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// Width of every hidden state.
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// Encoder layers.
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer; must divide `hidden_size`.
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer (4 × hidden).
    #[serde(default = "default_intermediate")]
    pub intermediate_size: usize,
    /// Feed-forward activation: `gelu` (exact, erf) or `gelu_new` / `gelu_pytorch_tanh`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Dropout on embeddings and sub-layer outputs, in training only.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities, in training only.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Rows of the position embedding: RoBERTa offsets positions by `pad_token_id + 1`, so
    /// 514 allows 512 tokens.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Rows of the token type embedding (1 for RoBERTa).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// Standard deviation of the normal initialisation of new weights.
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Id of `<pad>`, also RoBERTa's position padding index.
    #[serde(default = "default_pad")]
    pub pad_token_id: usize,
    /// Id of `<s>` (`null` in BERT's configurations, which start with `[CLS]` instead).
    #[serde(default = "default_bos")]
    pub bos_token_id: Option<usize>,
    /// Id of `</s>` (`null` in BERT's).
    #[serde(default = "default_eos")]
    pub eos_token_id: Option<usize>,
    /// Dropout of the classification head; `None` means `hidden_dropout_prob`.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    /// Class names by id (`{"0": "negative", "1": "positive"}`); its size is the label count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    /// Class ids by name, the inverse of `id2label`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, usize>>,
    /// Label count when `id2label` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
    /// Model classes this checkpoint holds (`RobertaForSequenceClassification`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// The family: `roberta`, or `bert` (the BERT family: bert-base, MiniLM, domain models),
    /// which shares RoBERTa's encoder but numbers positions from 0 and names its weights and
    /// heads as `modeling_bert.py` does.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// `absolute` is the only position embedding RoBERTa uses (and the only one supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_embedding_type: Option<String>,
    /// Every other field of `config.json`, kept for writing back.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for RobertaConfig {
    /// roberta-base.
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl RobertaConfig {
    /// A named size for training from scratch: `tiny` (hidden 64, 2 layers, 2 heads),
    /// `small` (256, 4, 4: the speed-benchmark shape) or `base` (roberta-base's 768, 12, 12).
    pub fn preset(name: &str, vocab_size: usize) -> Result<Self, ModelError> {
        let (hidden, layers, heads) = match name {
            "tiny" => (64, 2, 2),
            "small" => (256, 4, 4),
            "base" => (768, 12, 12),
            other => {
                return Err(ModelError::InvalidConfig {
                    source_name: "preset".into(),
                    detail: format!("unknown preset `{other}` (expected tiny, small or base)"),
                });
            }
        };
        Ok(Self {
            vocab_size,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * hidden,
            ..Self::default()
        })
    }

    /// Reads and validates a `config.json`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(ModelError::io(path))?;
        let config: Self = serde_json::from_str(&text).map_err(|e| ModelError::InvalidConfig {
            source_name: path.display().to_string(),
            detail: e.to_string(),
        })?;
        config
            .validate()
            .map_err(|detail| ModelError::InvalidConfig {
                source_name: path.display().to_string(),
                detail,
            })?;
        Ok(config)
    }

    /// Number of classes of a sequence classifier: `id2label`'s size, else `num_labels`, else 2
    /// (transformers' default).
    pub fn num_labels(&self) -> usize {
        self.id2label
            .as_ref()
            .map(BTreeMap::len)
            .or(self.num_labels)
            .unwrap_or(2)
    }

    /// Sets the classes (ids in order), filling `id2label`, `label2id` and `num_labels`.
    pub fn with_labels(mut self, names: &[String]) -> Self {
        self.id2label = Some(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (i.to_string(), n.clone()))
                .collect(),
        );
        self.label2id = Some(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect(),
        );
        self.num_labels = Some(names.len());
        self
    }

    /// The name of class `id` (`LABEL_<id>` when unnamed, as transformers does).
    pub fn label_name(&self, id: usize) -> String {
        self.id2label
            .as_ref()
            .and_then(|m| m.get(&id.to_string()).cloned())
            .unwrap_or_else(|| format!("LABEL_{id}"))
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Whether the model is of the BERT family (`model_type: bert`).
    pub fn is_bert(&self) -> bool {
        self.model_type == "bert"
    }

    /// Longest input sequence the position embedding allows (512 for roberta-base and
    /// bert-base: RoBERTa's positions start after the padding index, BERT's at 0).
    pub fn max_sequence_length(&self) -> usize {
        if self.is_bert() {
            return self.max_position_embeddings;
        }
        self.max_position_embeddings
            .saturating_sub(self.pad_token_id + 1)
    }

    /// Whether the feed-forward GELU is the tanh approximation.
    pub fn gelu_is_approximate(&self) -> bool {
        matches!(
            self.hidden_act.as_str(),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast"
        )
    }

    /// Checks the fields against each other; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("`{name}` must be at least 1"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.pad_token_id >= self.vocab_size {
            return Err(format!(
                "`pad_token_id` {} is not below `vocab_size` {}",
                self.pad_token_id, self.vocab_size
            ));
        }
        if !matches!(self.model_type.as_str(), "roberta" | "bert") {
            return Err(format!(
                "`model_type` {:?} is not supported: the RoBERTa and BERT families load \
                 (roberta, bert)",
                self.model_type
            ));
        }
        if !self.is_bert() && self.max_position_embeddings < self.pad_token_id + 2 {
            return Err(format!(
                "`max_position_embeddings` {} leaves no position after the padding offset {}",
                self.max_position_embeddings,
                self.pad_token_id + 1
            ));
        }
        if !matches!(
            self.hidden_act.as_str(),
            "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast"
        ) {
            return Err(format!(
                "`hidden_act` {:?} is not supported (gelu, gelu_new)",
                self.hidden_act
            ));
        }
        if let Some(kind) = &self.position_embedding_type
            && kind != "absolute"
        {
            return Err(format!(
                "`position_embedding_type` {kind:?} is not supported (only absolute)"
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
            ("classifier_dropout", self.classifier_dropout.unwrap_or(0.0)),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("`{name}` {p} is not in [0, 1)"));
            }
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(format!(
                "`layer_norm_eps` {} must be finite and positive (transformers: 1e-5)",
                self.layer_norm_eps
            ));
        }
        if !(self.initializer_range.is_finite() && self.initializer_range >= 0.0) {
            return Err(format!(
                "`initializer_range` {} must be finite and >= 0 (transformers: 0.02)",
                self.initializer_range
            ));
        }
        if self.num_labels() == 0 {
            return Err("`id2label` / `num_labels` gives no class".into());
        }
        Ok(())
    }

    /// Checks that sequences of `length` tokens fit the position embedding.
    pub fn check_sequence_length(&self, length: usize) -> Result<(), ModelError> {
        if length > self.max_sequence_length() {
            return Err(ModelError::SequenceTooLong {
                length,
                max: self.max_sequence_length(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_settings_must_be_finite_and_in_range() {
        let dir = tempfile::tempdir().unwrap();
        for (key, value, needle) in [
            (
                "layer_norm_eps",
                "-1",
                "`layer_norm_eps` -1 must be finite and positive",
            ),
            ("initializer_range", "-0.5", "`initializer_range` -0.5"),
            (
                "hidden_dropout_prob",
                "1.5",
                "`hidden_dropout_prob` 1.5 is not in [0, 1)",
            ),
        ] {
            let mut json = serde_json::to_value(RobertaConfig::default()).unwrap();
            json[key] = serde_json::from_str(value).unwrap();
            let path = dir.path().join(format!("{key}.json"));
            std::fs::write(&path, json.to_string()).unwrap();
            let err = RobertaConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
            assert!(
                err.contains(&format!("{key}.json")),
                "names the file: {err}"
            );
        }
    }

    #[test]
    fn defaults_are_roberta_base() {
        let c = RobertaConfig::default();
        assert_eq!(
            (c.vocab_size, c.hidden_size, c.num_hidden_layers),
            (50_265, 768, 12)
        );
        assert_eq!(c.max_sequence_length(), 512);
        assert_eq!(c.num_labels(), 2);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn round_trips_unknown_fields() {
        let json = r#"{"hidden_size": 64, "num_attention_heads": 2, "torch_dtype": "float32",
                       "id2label": {"0": "neg", "1": "pos"}}"#;
        let c: RobertaConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.extra["torch_dtype"], "float32");
        assert_eq!(c.label_name(1), "pos");
        let back: RobertaConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = RobertaConfig::preset("tiny", 100).unwrap();
        c.num_attention_heads = 3;
        assert!(c.validate().unwrap_err().contains("num_attention_heads"));
        let mut c = RobertaConfig::preset("tiny", 100).unwrap();
        c.hidden_act = "relu".into();
        assert!(c.validate().unwrap_err().contains("hidden_act"));
        let mut c = RobertaConfig::preset("tiny", 100).unwrap();
        c.pad_token_id = 100;
        assert!(c.validate().unwrap_err().contains("pad_token_id"));
        assert!(RobertaConfig::preset("huge", 100).is_err());
        let c = RobertaConfig::preset("tiny", 100).unwrap();
        assert!(c.check_sequence_length(512).is_ok());
        assert!(c.check_sequence_length(513).is_err());
    }
}
