//! Hugging Face checkpoints in and out: `model.safetensors`, sharded safetensors with their
//! index, `pytorch_model.bin` (read by burn-store's pickle reader, which executes no code), and
//! `config.json`.
//!
//! # The weight-name table
//!
//! Our modules carry transformers' field names, so a checkpoint key is the module path but for
//! the renames in [`WEIGHT_NAMES`], the one table that loading, saving and the error messages
//! (which name checkpoint keys) all read:
//!
//! | Hugging Face key | Burn module path | why |
//! |---|---|---|
//! | `embeddings.…`, `encoder.…` (bare `RobertaModel` files) | `roberta.embeddings.…`, `roberta.encoder.…` | our heads hold the encoder under `roberta` |
//! | `….attention.self.…` | `….attention.self_attention.…` | `self` is a Rust keyword |
//! | `roberta.….LayerNorm.…` | `roberta.….layer_norm.…` | Rust field names are snake case |
//! | `lm_head.decoder.bias` (when `lm_head.bias` is absent) | `lm_head.bias` | the two are one tensor in transformers |
//!
//! PyTorch's `Linear.weight` is `[out, in]` and Burn's `[in, out]`; LayerNorm's `weight`/`bias`
//! are Burn's `gamma`/`beta`: burn-store's PyTorch adapters do both, in each direction.
//! `lm_head.decoder.weight` is never read or written: the decoder is the word embedding (tied).
//!
//! The BERT family (`model_type: bert`) shares the encoder and the heads' computations and
//! has a table of its own, [`BERT_WEIGHT_NAMES`]:
//!
//! | Hugging Face key (BERT) | Burn module path | why |
//! |---|---|---|
//! | `bert.…` (`embeddings.…`, `encoder.…` in bare `BertModel` files) | `roberta.…` | one encoder field for both families |
//! | `bert.pooler.dense.…` (`pooler.dense.…`) | `classifier.dense.…` | `BertPooler` is RoBERTa's head's dense + tanh on the first token |
//! | `classifier.weight` / `.bias` | `classifier.out_proj.…` | the final projection |
//! | `cls.predictions.transform.dense.…`, `….LayerNorm.…`, `cls.predictions.bias` | `lm_head.dense.…`, `lm_head.layer_norm.…`, `lm_head.bias` | `BertLMPredictionHead` is `RobertaLMHead` |

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use burn_store::{
    ApplyError, ApplyResult, BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter,
    PytorchStore, SafetensorsStore,
};
use serde::Deserialize;

use crate::model::{RobertaForMaskedLM, RobertaForSequenceClassification, RobertaModel};
use crate::{ModelError, RobertaConfig};
use sentiment_hub::{HubSettings, fetch_files, resolve_choosing};

/// One rename between checkpoint keys and module paths, in both directions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WeightName {
    /// Checkpoint key pattern (regex) → module path replacement, applied when loading.
    pub load: (&'static str, &'static str),
    /// Module path pattern (regex) → checkpoint key replacement, applied when saving and when
    /// naming a module path as its key; None for a rename that only reads other layouts.
    pub save: Option<(&'static str, &'static str)>,
}

/// The renames between RoBERTa checkpoint keys and our module paths, in order.
pub(crate) const WEIGHT_NAMES: &[WeightName] = &[
    // Bare `RobertaModel` files: our heads hold the encoder under `roberta`; we save heads.
    WeightName {
        load: (r"^(embeddings|encoder)\.", "roberta.${1}."),
        save: None,
    },
    // `self` is a Rust keyword.
    WeightName {
        load: (r"\.attention\.self\.", ".attention.self_attention."),
        save: Some((r"\.attention\.self_attention\.", ".attention.self.")),
    },
    // Rust field names are snake case; the masked-LM head's is already `layer_norm`.
    WeightName {
        load: (r"^roberta\.(.+)\.LayerNorm\.", "roberta.${1}.layer_norm."),
        save: Some((r"^roberta\.(.+)\.layer_norm\.", "roberta.${1}.LayerNorm.")),
    },
];

/// The renames between BERT checkpoint keys and our module paths, in order (the module
/// documentation's second table).
pub(crate) const BERT_WEIGHT_NAMES: &[WeightName] = &[
    // `BertPooler` is the head's dense + tanh; `classifier` its final projection.
    WeightName {
        load: (r"^(?:bert\.)?pooler\.dense\.", "classifier.dense."),
        save: Some((r"^classifier\.dense\.", "bert.pooler.dense.")),
    },
    WeightName {
        load: (r"^classifier\.(weight|bias)$", "classifier.out_proj.${1}"),
        save: Some((r"^classifier\.out_proj\.", "classifier.")),
    },
    // `BertLMPredictionHead`: transform (dense, GELU, LayerNorm), then the tied decoder.
    WeightName {
        load: (r"^cls\.predictions\.transform\.dense\.", "lm_head.dense."),
        save: Some((r"^lm_head\.dense\.", "cls.predictions.transform.dense.")),
    },
    WeightName {
        load: (
            r"^cls\.predictions\.transform\.LayerNorm\.",
            "lm_head.layer_norm.",
        ),
        save: Some((
            r"^lm_head\.layer_norm\.",
            "cls.predictions.transform.LayerNorm.",
        )),
    },
    WeightName {
        load: (r"^cls\.predictions\.bias$", "lm_head.bias"),
        save: Some((r"^lm_head\.bias$", "cls.predictions.bias")),
    },
    // Bare `BertModel` files.
    WeightName {
        load: (r"^(embeddings|encoder)\.", "bert.${1}."),
        save: None,
    },
    // One encoder field for both families.
    WeightName {
        load: (r"^bert\.", "roberta."),
        save: Some((r"^roberta\.", "bert.")),
    },
    WeightName {
        load: (r"\.attention\.self\.", ".attention.self_attention."),
        save: Some((r"\.attention\.self_attention\.", ".attention.self.")),
    },
    WeightName {
        load: (r"^roberta\.(.+)\.LayerNorm\.", "roberta.${1}.layer_norm."),
        save: Some((r"^bert\.(.+)\.layer_norm\.", "bert.${1}.LayerNorm.")),
    },
];

/// The family's weight-name table.
fn weight_names(bert: bool) -> &'static [WeightName] {
    if bert {
        BERT_WEIGHT_NAMES
    } else {
        WEIGHT_NAMES
    }
}

/// The load direction of a family's table, as burn-store's key remappings.
fn load_names(bert: bool) -> impl Iterator<Item = (&'static str, &'static str)> {
    weight_names(bert).iter().map(|n| n.load)
}

/// The save direction of a family's table.
fn save_names(bert: bool) -> impl Iterator<Item = (&'static str, &'static str)> {
    weight_names(bert).iter().filter_map(|n| n.save)
}

/// Files a model folder may hold.
pub const CONFIG_FILE: &str = "config.json";
/// Single-file safetensors weights.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// Index of sharded safetensors weights.
pub const SAFETENSORS_INDEX_FILE: &str = "model.safetensors.index.json";
/// PyTorch pickle weights.
pub const PYTORCH_FILE: &str = "pytorch_model.bin";

/// What loading a checkpoint did, in transformers' terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// The weight files read.
    pub files: Vec<PathBuf>,
    /// Tensors loaded.
    pub loaded: usize,
    /// Weights the checkpoint lacks, freshly initialised (a new classification head): what
    /// transformers warns about as "newly initialized".
    pub newly_initialized: Vec<String>,
    /// Checkpoint tensors this model does not use (the pooler, `lm_head` for a classifier).
    pub unused: Vec<String>,
}

/// A model built from a pretrained folder.
#[derive(Debug)]
pub struct Loaded<M> {
    /// The model, on the requested device.
    pub model: M,
    /// Its configuration.
    pub config: RobertaConfig,
    /// What was loaded, initialised and ignored.
    pub report: LoadReport,
    /// The folder the files came from (a hub snapshot for hub ids).
    pub folder: PathBuf,
}

/// A RoBERTa or BERT model that reads and writes Hugging Face folders.
pub trait Pretrained: Sized + ModuleSnapshot {
    /// transformers' class name after the family's prefix (`ForSequenceClassification`),
    /// written to `config.json`'s `architectures` as `RobertaFor…` or `BertFor…`.
    const ARCHITECTURE_SUFFIX: &'static str;
    /// Key prefixes a checkpoint may lack (heads that are initialised fresh, as transformers
    /// does); any other missing key is an error.
    const OPTIONAL_PREFIXES: &'static [&'static str];

    /// A randomly initialised model.
    fn init(config: &RobertaConfig, device: &Device) -> Self;

    /// Loads a local folder, or a hub id through the Hugging Face cache (downloading only
    /// where `HF_HUB_OFFLINE` and friends allow: [`HubSettings::from_env`]), onto `device`.
    fn from_pretrained(name_or_path: &str, device: &Device) -> Result<Loaded<Self>, ModelError> {
        Self::from_pretrained_with(name_or_path, device, &HubSettings::from_env(), |_| {})
    }

    /// [`Pretrained::from_pretrained`] with the hub's settings given, and `adjust` changing
    /// the configuration before the model is built (for example the classes of a new head).
    fn from_pretrained_with(
        name_or_path: &str,
        device: &Device,
        hub: &HubSettings,
        adjust: impl FnOnce(&mut RobertaConfig),
    ) -> Result<Loaded<Self>, ModelError> {
        // One weight format is fetched from the hub, the first it has; a sharded model's
        // shards once its index names them.
        let folder = resolve_choosing(
            name_or_path,
            &[
                &[CONFIG_FILE],
                &[SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE, PYTORCH_FILE],
            ],
            hub,
        )?;
        if !folder.join(SAFETENSORS_FILE).is_file() && folder.join(SAFETENSORS_INDEX_FILE).is_file()
        {
            let shards: Vec<String> = weight_files(&folder)?
                .iter()
                .filter_map(|p| Some(p.file_name()?.to_str()?.to_string()))
                .collect();
            let names: Vec<&str> = shards.iter().map(String::as_str).collect();
            fetch_files(name_or_path, &names, hub)?;
        }
        let mut config = RobertaConfig::load(&folder.join(CONFIG_FILE))?;
        adjust(&mut config);
        config
            .validate()
            .map_err(|detail| ModelError::InvalidConfig {
                source_name: folder.join(CONFIG_FILE).display().to_string(),
                detail,
            })?;
        // The weight files, read once for the size bound and the load.
        let files = weight_files(&folder)?;
        check_config_fits_weights(&config, &folder, &files)?;
        let mut model = Self::init(&config, device);
        let report = load_weights(&mut model, files, Self::OPTIONAL_PREFIXES, config.is_bert())?;
        Ok(Loaded {
            model,
            config,
            report,
            folder,
        })
    }

    /// Writes `config.json` (with `architectures`) and `model.safetensors` into `dir`, so that
    /// transformers' `from_pretrained(dir)` loads the model.
    fn save_pretrained(&self, config: &RobertaConfig, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(ModelError::io(dir))?;
        save_weights(self, &dir.join(SAFETENSORS_FILE), config.is_bert())?;
        let mut config = config.clone();
        let family = if config.is_bert() { "Bert" } else { "Roberta" };
        config.architectures = Some(vec![format!("{family}{}", Self::ARCHITECTURE_SUFFIX)]);
        Self::complete_config(&mut config);
        let mut json = serde_json::to_vec_pretty(&config).expect("configs serialise");
        json.push(b'\n');
        write_atomic(&dir.join(CONFIG_FILE), &json)
    }

    /// Fills what this model's `config.json` needs beyond the encoder's (a classifier's
    /// class names); nothing by default.
    fn complete_config(_config: &mut RobertaConfig) {}
}

impl Pretrained for RobertaForSequenceClassification {
    const ARCHITECTURE_SUFFIX: &'static str = "ForSequenceClassification";
    const OPTIONAL_PREFIXES: &'static [&'static str] = &["classifier."];
    fn init(config: &RobertaConfig, device: &Device) -> Self {
        Self::new(config, device)
    }

    /// Class names, `LABEL_<id>` where none were given, as transformers writes them.
    fn complete_config(config: &mut RobertaConfig) {
        if config.id2label.is_none() {
            let names: Vec<String> = (0..config.num_labels())
                .map(|i| config.label_name(i))
                .collect();
            *config = config.clone().with_labels(&names);
        }
    }
}

impl Pretrained for RobertaForMaskedLM {
    const ARCHITECTURE_SUFFIX: &'static str = "ForMaskedLM";
    const OPTIONAL_PREFIXES: &'static [&'static str] = &["lm_head."];
    fn init(config: &RobertaConfig, device: &Device) -> Self {
        Self::new(config, device)
    }
}

impl Pretrained for RobertaModel {
    const ARCHITECTURE_SUFFIX: &'static str = "Model";
    const OPTIONAL_PREFIXES: &'static [&'static str] = &[];
    fn init(config: &RobertaConfig, device: &Device) -> Self {
        Self::new(config, device)
    }
}

/// Refuses a `config.json` whose sizes describe more weights than the folder's weight files
/// hold, before a model of that size is allocated (`vocab_size: 1e12` would abort the process
/// on allocation). The bound counts the encoder's matrices alone (the heads may be fresh), at
/// two bytes a weight (half-precision checkpoints exist): a real checkpoint always fits it.
/// The message names the key whose term is largest.
fn check_config_fits_weights(
    config: &RobertaConfig,
    folder: &Path,
    files: &[PathBuf],
) -> Result<(), ModelError> {
    let mut held: u64 = 0;
    for file in files {
        held += std::fs::metadata(file).map_err(ModelError::io(file))?.len();
    }
    let h = config.hidden_size as u128;
    let terms = [
        ("vocab_size", config.vocab_size as u128 * h),
        (
            "max_position_embeddings",
            config.max_position_embeddings as u128 * h,
        ),
        ("type_vocab_size", config.type_vocab_size as u128 * h),
        (
            "num_hidden_layers",
            config.num_hidden_layers as u128
                * (4 * h * h + 2 * h * config.intermediate_size as u128),
        ),
    ];
    let weights: u128 = terms.iter().map(|(_, n)| n).sum();
    if weights * 2 <= u128::from(held) {
        return Ok(());
    }
    let (key, _) = terms.iter().max_by_key(|(_, n)| *n).expect("four terms");
    let value = match *key {
        "vocab_size" => config.vocab_size,
        "max_position_embeddings" => config.max_position_embeddings,
        "type_vocab_size" => config.type_vocab_size,
        _ => config.num_hidden_layers,
    };
    Err(ModelError::InvalidConfig {
        source_name: folder.join(CONFIG_FILE).display().to_string(),
        detail: format!(
            "`{key}` {value} (with `hidden_size` {}) describes at least {weights} weights, \
             {} bytes even in half precision, but the weight files hold {held} bytes: the \
             configuration does not describe these weights",
            config.hidden_size,
            weights * 2
        ),
    })
}

/// Writes `bytes` to `path` atomically and durably: a temporary file beside it (`tempfile`),
/// flushed to disk, renamed over `path`, then the folder flushed so that the rename survives a
/// crash, as `sentiment_data::write_file_atomic` does. (The pipeline's crates share that one;
/// this crate is a library used alone and depends on none of them.)
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    file.write_all(bytes)
        .and_then(|()| file.as_file().sync_all())
        .map_err(io)?;
    file.persist(path).map_err(|e| io(e.error))?;
    // On Windows a folder cannot be opened to flush it, and a rename is durable once done.
    if cfg!(windows) {
        return Ok(());
    }
    std::fs::File::open(dir)
        .and_then(|folder| folder.sync_all())
        .map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Names of the tensors in a safetensors file, from its header (burn-store reads the tensors'
/// data lazily, so listing them reads the header alone).
fn safetensors_keys(path: &Path) -> Result<BTreeSet<String>, ModelError> {
    use burn_store::ModuleStore;
    let keys = SafetensorsStore::from_file(path)
        .keys()
        .map_err(|e| ModelError::BadWeights {
            file: path.to_path_buf(),
            detail: format!("not a readable safetensors file: {e}"),
        })?;
    Ok(keys.into_iter().collect())
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// The weight files of a folder, in load order.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join(SAFETENSORS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(SAFETENSORS_INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(ModelError::io(&index))?;
        let parsed: ShardIndex =
            serde_json::from_str(&text).map_err(|e| ModelError::BadWeights {
                file: index.clone(),
                detail: e.to_string(),
            })?;
        let shards: BTreeSet<&String> = parsed.weight_map.values().collect();
        // A shard is a file of this folder: a name that climbs out of it or is absolute would
        // read (or, through the hub, fetch) a file elsewhere.
        if let Some(bad) = shards.iter().find(|s| {
            let mut parts = Path::new(s.as_str()).components();
            !matches!(
                (parts.next(), parts.next()),
                (Some(std::path::Component::Normal(_)), None)
            )
        }) {
            return Err(ModelError::BadWeights {
                file: index,
                detail: format!("shard {bad:?} is not a file name in the model's folder"),
            });
        }
        return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
    }
    let pickle = dir.join(PYTORCH_FILE);
    if pickle.is_file() {
        return Ok(vec![pickle]);
    }
    Err(ModelError::NoWeights {
        dir: dir.to_path_buf(),
    })
}

/// Refuses a pickle any tensor of which holds more bytes than the whole file. burn-store reads
/// a tensor's data before its shape is compared with the model's, and a view saved with
/// stride 0 (`torch.zeros(1).expand(10**9)`) takes a few bytes in the file and gigabytes once
/// read; no real checkpoint's tensor is larger than its file (tied tensors share a storage,
/// each no larger than it). The shapes come from the pickle alone, without reading any data.
fn check_pickle_sizes(file: &Path) -> Result<(), ModelError> {
    let file_len = std::fs::metadata(file).map_err(ModelError::io(file))?.len();
    let reader = pytorch_reader::PytorchReader::new(file).map_err(|e| ModelError::BadWeights {
        file: file.to_path_buf(),
        detail: format!("not a readable PyTorch checkpoint: {e}"),
    })?;
    for (name, tensor) in reader.tensors() {
        let bytes = tensor
            .shape()
            .iter()
            .try_fold(tensor.dtype().size(), |acc, &d| acc.checked_mul(d));
        if bytes.is_none_or(|b| b as u64 > file_len) {
            return Err(ModelError::BadWeights {
                file: file.to_path_buf(),
                detail: format!(
                    "tensor `{name}` of shape {:?} would take {} bytes, more than the whole \
                     file ({file_len} bytes): a broadcast view (stride 0) or a corrupt file; \
                     it is not read",
                    tensor.shape(),
                    bytes.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string())
                ),
            });
        }
    }
    Ok(())
}

/// A module path shown as the checkpoint key it comes from: the save renames, then the layer
/// norms' parameter names as PyTorch has them (burn-store's adapters rename those).
fn checkpoint_name(path: &str, bert: bool) -> String {
    let mut key = path.to_string();
    for (pattern, replacement) in save_names(bert) {
        let pattern = regex::Regex::new(pattern).expect("the weight-name table's regexes parse");
        key = pattern.replace(&key, replacement).into_owned();
    }
    match key.rsplit_once('.') {
        Some((layer, "gamma")) => format!("{layer}.weight"),
        Some((layer, "beta")) => format!("{layer}.bias"),
        _ => key,
    }
}

/// Loads the weight files `files` (a folder's, [`weight_files`]) into `model`. Missing keys under `optional_prefixes` keep
/// their fresh initialisation and are reported; other missing keys and shape mismatches are
/// errors naming the key.
pub(crate) fn load_weights<M: ModuleSnapshot>(
    model: &mut M,
    files: Vec<PathBuf>,
    optional_prefixes: &[&str],
    bert: bool,
) -> Result<LoadReport, ModelError> {
    let mut loaded: BTreeSet<String> = BTreeSet::new();
    let mut missing_everywhere: Option<BTreeSet<String>> = None;
    let mut unused: BTreeSet<String> = BTreeSet::new();
    for file in &files {
        let unreadable = |e: &dyn std::fmt::Display| ModelError::BadWeights {
            file: file.clone(),
            detail: e.to_string(),
        };
        let result = if file.extension().is_some_and(|e| e == "bin") {
            check_pickle_sizes(file)?;
            let mut store = PytorchStore::from_file(file)
                .allow_partial(true)
                .validate(false);
            for (from, to) in load_names(bert) {
                store = store.with_key_remapping(from, to);
            }
            model.load_from(&mut store).map_err(|e| unreadable(&e))?
        } else {
            let keys = safetensors_keys(file)?;
            let mut store = SafetensorsStore::from_file(file)
                .with_from_adapter(PyTorchToBurnAdapter)
                .allow_partial(true)
                .validate(false);
            for (from, to) in load_names(bert) {
                store = store.with_key_remapping(from, to);
            }
            // The decoder's bias is the head's own (one tensor in transformers), saved under
            // either name.
            for (decoder, head) in [
                ("lm_head.decoder.bias", "lm_head.bias"),
                ("cls.predictions.decoder.bias", "cls.predictions.bias"),
            ] {
                if keys.contains(decoder) && !keys.contains(head) {
                    let pattern = format!("^{}$", regex::escape(decoder));
                    store = store.with_key_remapping(&pattern, "lm_head.bias");
                }
            }
            model.load_from(&mut store).map_err(|e| unreadable(&e))?
        };
        check_errors(file, &result, bert)?;
        loaded.extend(result.applied.iter().cloned());
        unused.extend(result.unused.iter().cloned());
        let missing: BTreeSet<String> = result.missing.iter().map(|(p, _)| p.clone()).collect();
        missing_everywhere = Some(match missing_everywhere {
            None => missing,
            Some(before) => before.intersection(&missing).cloned().collect(),
        });
    }
    let missing = missing_everywhere.unwrap_or_default();
    let (optional, required): (Vec<String>, Vec<String>) = missing
        .into_iter()
        .partition(|p| optional_prefixes.iter().any(|prefix| p.starts_with(prefix)));
    if !required.is_empty() {
        let keys: Vec<String> = required.iter().map(|p| checkpoint_name(p, bert)).collect();
        return Err(ModelError::MissingWeights {
            file: files[0].clone(),
            keys: keys.join(", "),
        });
    }
    let unused = unused
        .into_iter()
        .filter(|k| !loaded.contains(k))
        // The tied decoder is the word embedding, read under its own name.
        .filter(|k| {
            !matches!(
                k.as_str(),
                "lm_head.decoder.weight"
                    | "lm_head.decoder.bias"
                    | "cls.predictions.decoder.weight"
                    | "cls.predictions.decoder.bias"
            )
        })
        .map(|k| checkpoint_name(&k, bert))
        .collect();
    Ok(LoadReport {
        files,
        loaded: loaded.len(),
        newly_initialized: optional.iter().map(|p| checkpoint_name(p, bert)).collect(),
        unused,
    })
}

fn check_errors(file: &Path, result: &ApplyResult, bert: bool) -> Result<(), ModelError> {
    match result.errors.first() {
        None => Ok(()),
        Some(ApplyError::ShapeMismatch {
            path,
            expected,
            found,
        }) => {
            let key = checkpoint_name(path, bert);
            // The adapter has turned a linear layer's `[out, in]` weight into Burn's
            // `[in, out]` before comparing: report both shapes in the file's own layout.
            let linear =
                key.ends_with(".weight") && !key.ends_with("embeddings.weight") && found.len() == 2;
            let stored = |shape: &[usize]| {
                let mut shape = shape.to_vec();
                if linear {
                    shape.reverse();
                }
                shape
            };
            Err(ModelError::ShapeMismatch {
                file: file.to_path_buf(),
                key,
                expected: stored(expected),
                found: stored(found),
            })
        }
        Some(other) => Err(ModelError::BadWeights {
            file: file.to_path_buf(),
            detail: other.to_string(),
        }),
    }
}

/// Writes `model`'s weights as a transformers-compatible `model.safetensors`, under the
/// family's names.
pub(crate) fn save_weights<M: ModuleSnapshot>(
    model: &M,
    path: &Path,
    bert: bool,
) -> Result<(), ModelError> {
    let mut store = SafetensorsStore::from_file(path)
        .with_to_adapter(BurnToPyTorchAdapter)
        .clear_metadata()
        // transformers refuses safetensors files whose format is not "pt".
        .metadata("format", "pt")
        .overwrite(true);
    for (from, to) in save_names(bert) {
        store = store.with_key_remapping(from, to);
    }
    model
        .save_into(&mut store)
        .map_err(|e| ModelError::BadWeights {
            file: path.to_path_buf(),
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths_are_named_as_their_checkpoint_keys() {
        for (path, key) in [
            (
                "roberta.encoder.layer.0.attention.self_attention.query.weight",
                "roberta.encoder.layer.0.attention.self.query.weight",
            ),
            (
                "roberta.embeddings.layer_norm.gamma",
                "roberta.embeddings.LayerNorm.weight",
            ),
            (
                "roberta.encoder.layer.1.output.layer_norm.beta",
                "roberta.encoder.layer.1.output.LayerNorm.bias",
            ),
            // The masked-LM head's layer norm is `layer_norm` in transformers too.
            ("lm_head.layer_norm.beta", "lm_head.layer_norm.bias"),
            ("classifier.dense.weight", "classifier.dense.weight"),
        ] {
            assert_eq!(checkpoint_name(path, false), key);
        }
    }

    /// Saving then loading gives every module path back: the two directions of the table are
    /// inverse.
    #[test]
    fn the_table_reads_back_what_it_writes() {
        let apply = |names: &mut dyn Iterator<Item = (&str, &str)>, path: &str| {
            names.fold(path.to_string(), |key, (pattern, replacement)| {
                regex::Regex::new(pattern)
                    .unwrap()
                    .replace(&key, replacement)
                    .into_owned()
            })
        };
        for bert in [false, true] {
            for path in [
                "roberta.encoder.layer.0.attention.self_attention.key.bias",
                "roberta.encoder.layer.0.attention.output.layer_norm.gamma",
                "roberta.embeddings.word_embeddings.weight",
                "roberta.embeddings.layer_norm.beta",
                "lm_head.layer_norm.gamma",
                "lm_head.dense.weight",
                "lm_head.bias",
                "classifier.dense.weight",
                "classifier.out_proj.bias",
            ] {
                let key = apply(&mut save_names(bert), path);
                assert_eq!(apply(&mut load_names(bert), &key), path, "{key}");
            }
        }
        // BERT's keys as transformers names them.
        for (path, key) in [
            (
                "roberta.encoder.layer.0.attention.self_attention.query.weight",
                "bert.encoder.layer.0.attention.self.query.weight",
            ),
            (
                "roberta.embeddings.layer_norm.gamma",
                "bert.embeddings.LayerNorm.weight",
            ),
            ("classifier.dense.bias", "bert.pooler.dense.bias"),
            ("classifier.out_proj.weight", "classifier.weight"),
            (
                "lm_head.layer_norm.beta",
                "cls.predictions.transform.LayerNorm.bias",
            ),
            ("lm_head.bias", "cls.predictions.bias"),
        ] {
            assert_eq!(checkpoint_name(path, true), key);
        }
    }
}
