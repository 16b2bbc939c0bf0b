//! Where a run starts from: the tokenizer (pretrained, or a byte-level BPE trained on the
//! train split and cached next to it) and the classifier (a pretrained encoder with a fresh
//! head, or a fresh model from a preset or a `config.json`), checked against each other; and
//! where masked-LM pre-training starts from, likewise.

use burn::tensor::Device;
use roberta_burn::{
    Pretrained, RobertaConfig, RobertaForMaskedLM, RobertaForSequenceClassification,
};
use sentiment_data::Manifest;
use sentiment_tokenize::{BpeTrainingConfig, HubSettings, RobertaTokenizer, train_on_split};

use crate::PipelineError;

/// The model a run starts from, with its configuration and tokenizer: the classifier of
/// fine-tuning, or the masked LM of pre-training.
pub struct Start<M = RobertaForSequenceClassification> {
    /// The model (pretrained, or fresh).
    pub model: M,
    /// Its configuration (a classifier's with the data's classes).
    pub config: RobertaConfig,
    /// The tokenizer the splits are encoded with.
    pub tokenizer: RobertaTokenizer,
    /// Where the tokenizer came from.
    pub tokenizer_origin: String,
    /// What a user should know about the loading (weights newly initialised or unused).
    pub notes: Vec<String>,
}

/// Where a run starts from.
pub struct StartOptions<'a> {
    /// The folder a tokenizer trained here is kept in (its `tokenizer/`): for fine-tuning the
    /// prepared data folder, whose train split it is trained on; for pre-training the run
    /// folder, so that a resumed run encodes the same way.
    pub data: &'a std::path::Path,
    /// Pretrained folder or hub id.
    pub pretrained: Option<&'a str>,
    /// Preset or config file when training from scratch.
    pub fresh_config: &'a str,
    /// Tokenizer folder or hub id.
    pub tokenizer: Option<&'a str>,
    /// Vocabulary of a tokenizer trained here.
    pub vocab_size: usize,
    /// Sequence length.
    pub max_length: usize,
    /// Seed of the fresh initialisation.
    pub seed: u64,
}

/// Loads or creates the tokenizer and the model for the prepared data.
pub fn starting_point(options: &StartOptions<'_>, device: &Device) -> Result<Start, PipelineError> {
    let StartOptions {
        data,
        pretrained,
        fresh_config,
        tokenizer,
        vocab_size,
        max_length,
        seed,
    } = *options;
    let manifest = Manifest::load(data)?;
    let labels: Vec<String> = manifest.classes.iter().map(|c| c.name.clone()).collect();
    let hub = HubSettings::from_env();
    let mut notes = Vec::new();
    // A pre-training run folder stands for the model it exported (`cargo xtask pretrain`
    // prints the run folder, and `model/` is easy to miss).
    let pretrained_model = pretrained.map(|name| pretraining_output(name, &mut notes));
    let pretrained = pretrained_model.as_deref();
    let tokenizer_name = tokenizer.or(pretrained);
    let (tokenizer, origin) = match tokenizer_name {
        Some(name) => (
            RobertaTokenizer::from_pretrained(name, max_length, &hub)
                .map_err(PipelineError::stage(format!("loading tokenizer {name}")))?,
            name.to_string(),
        ),
        None => {
            let training = BpeTrainingConfig {
                vocab_size,
                min_frequency: 2,
            };
            let (tokenizer, _) = train_on_split(data, &training, max_length)?;
            let origin = data.join(sentiment_tokenize::TRAINED_TOKENIZER_DIR);
            (tokenizer, origin.display().to_string())
        }
    };
    device.seed(seed);
    let (model, config) = match pretrained {
        Some(name) => {
            let loaded =
                RobertaForSequenceClassification::from_pretrained_with(name, device, &hub, |c| {
                    *c = c.clone().with_labels(&labels)
                })
                .map_err(PipelineError::stage(format!(
                    "loading pretrained model {name}"
                )))?;
            notes.extend(load_notes(&loaded.report, true));
            (loaded.model, loaded.config)
        }
        None => {
            let config = fresh_config_for(fresh_config, &tokenizer)?.with_labels(&labels);
            config
                .validate()
                .map_err(|e| PipelineError::InvalidSetting(format!("model configuration: {e}")))?;
            (
                RobertaForSequenceClassification::new(&config, device),
                config,
            )
        }
    };
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(PipelineError::InvalidSetting(format!(
            "the tokenizer has {} tokens, more than the model's vocabulary of {}",
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    config.check_sequence_length(max_length)?;
    Ok(Start {
        model,
        config,
        tokenizer,
        tokenizer_origin: origin,
        notes,
    })
}

/// `name`, or the `model/` folder inside it when `name` is a pre-training run folder (it holds
/// `pretrain_config.json`), with a note saying so.
fn pretraining_output(name: &str, notes: &mut Vec<String>) -> String {
    let folder = std::path::Path::new(name);
    let model = folder.join("model");
    if folder.join("pretrain_config.json").is_file() && model.is_dir() {
        notes.push(format!(
            "{name} is a pre-training run folder: using the model it exported, {}",
            model.display()
        ));
        return model.display().to_string();
    }
    name.to_string()
}

/// A fresh model's configuration: a preset (`tiny`, `small`, `base`) sized to the tokenizer's
/// vocabulary and carrying its special ids, or a `config.json` as it is.
fn fresh_config_for(
    name: &str,
    tokenizer: &RobertaTokenizer,
) -> Result<RobertaConfig, PipelineError> {
    Ok(match name {
        "tiny" | "small" | "base" => {
            let special = tokenizer.special_tokens();
            let mut config = RobertaConfig::preset(name, tokenizer.vocab_size())?;
            config.pad_token_id = special.pad as usize;
            config.bos_token_id = Some(special.bos as usize);
            config.eos_token_id = Some(special.eos as usize);
            config
        }
        file => RobertaConfig::load(file.as_ref())?,
    })
}

/// Loads or creates the tokenizer (trained on `train_texts` when none is named) and the
/// masked LM.
pub fn masked_lm_start(
    options: &StartOptions<'_>,
    train_texts: &[String],
    device: &Device,
) -> Result<Start<RobertaForMaskedLM>, PipelineError> {
    let o = options;
    let hub = HubSettings::from_env();
    let mut notes = Vec::new();
    let kept = o.data.join(sentiment_tokenize::TRAINED_TOKENIZER_DIR);
    let (tokenizer, tokenizer_origin) = match o.tokenizer.or(o.pretrained) {
        Some(name) => (
            RobertaTokenizer::from_pretrained(name, o.max_length, &hub)
                .map_err(PipelineError::stage(format!("loading tokenizer {name}")))?,
            name.to_string(),
        ),
        None if kept.join("tokenizer.json").exists() => (
            RobertaTokenizer::from_folder(&kept, o.max_length)?,
            kept.display().to_string(),
        ),
        None => {
            notes.push(format!(
                "training a byte-level BPE of {} tokens on {} texts, kept in {}",
                o.vocab_size,
                train_texts.len(),
                kept.display()
            ));
            let training = BpeTrainingConfig {
                vocab_size: o.vocab_size,
                min_frequency: 2,
            };
            let tokenizer = RobertaTokenizer::train(train_texts, &training, o.max_length)?;
            tokenizer.save(&kept)?;
            (tokenizer, kept.display().to_string())
        }
    };
    device.seed(o.seed);
    let (model, config) = match o.pretrained {
        Some(name) => {
            let loaded = RobertaForMaskedLM::from_pretrained_with(name, device, &hub, |_| {})
                .map_err(PipelineError::stage(format!(
                    "loading pretrained model {name}"
                )))?;
            notes.extend(load_notes(&loaded.report, false));
            (loaded.model, loaded.config)
        }
        None => {
            let mut config = fresh_config_for(o.fresh_config, &tokenizer)?;
            // RoBERTa's positions start after the padding id: room for max_length of them.
            config.max_position_embeddings = config
                .max_position_embeddings
                .max(o.max_length + config.pad_token_id + 1);
            config
                .validate()
                .map_err(|e| PipelineError::InvalidSetting(format!("model configuration: {e}")))?;
            (RobertaForMaskedLM::new(&config, device), config)
        }
    };
    Ok(Start {
        model,
        config,
        tokenizer,
        tokenizer_origin,
        notes,
    })
}

/// What loading a checkpoint left out, for the user: the weights newly initialised and, for a
/// classifier (`unused`), the checkpoint's weights it does not use (a masked-LM head, say).
fn load_notes(report: &roberta_burn::LoadReport, unused: bool) -> Vec<String> {
    let mut notes = Vec::new();
    if !report.newly_initialized.is_empty() {
        notes.push(format!(
            "newly initialised (not in the checkpoint): {}",
            report.newly_initialized.join(", ")
        ));
    }
    if unused && !report.unused.is_empty() {
        notes.push(format!(
            "checkpoint weights not used by a classifier: {}",
            report.unused.join(", ")
        ));
    }
    notes
}
