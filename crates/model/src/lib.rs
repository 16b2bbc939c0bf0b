//! RoBERTa in [Burn](https://burn.dev), interchangeable with Hugging Face transformers.
//!
//! - [`RobertaConfig`] reads a transformers `config.json` as is (same field names).
//! - [`RobertaModel`], [`RobertaForSequenceClassification`] and [`RobertaForMaskedLM`] mirror
//!   `modeling_roberta.py` class for class: RoBERTa's position ids, post-LayerNorm layers, exact
//!   GELU, the head on `<s>`, the masked-LM decoder tied to the word embeddings. Dropout acts
//!   only on an autodiff device (training).
//! - [`Pretrained::from_pretrained`] loads a local folder or a hub id (through the Hugging Face
//!   cache) from `model.safetensors`, sharded safetensors or `pytorch_model.bin`;
//!   [`Pretrained::save_pretrained`] writes a folder that `from_pretrained` in transformers loads.
//! - [`autocast::bf16`] runs the CPU backend's linear layers in mixed bf16 precision, as
//!   `torch.autocast("cpu", dtype=torch.bfloat16)` does PyTorch's.
//!
//! One model code runs on every backend: the [`Device`](burn::tensor::Device) picks it
//! (`Device::flex()` on the CPU by default; `wgpu` behind the feature of that name).
//!
//! ```no_run
//! use burn::tensor::{Device, Int, Tensor, TensorData, activation::softmax};
//! use roberta_burn::{Pretrained, RobertaForSequenceClassification, in_thread_pool};
//!
//! let device = Device::flex();
//! let loaded = RobertaForSequenceClassification::from_pretrained("path/to/finetuned-roberta", &device)?;
//! // `<s> I love it </s>` in roberta-base's vocabulary, no padding.
//! let ids = [0i64, 100, 657, 24, 2];
//! let input_ids = Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [1, 5]), &device);
//! let mask = Tensor::<2, Int>::ones([1, 5], &device);
//! // On the CPU backend, run the model as one job of the rayon pool (its parallel loops then
//! // stay on the pool's threads: up to 1.2x faster than from the caller's thread).
//! let logits = in_thread_pool(&device, || loaded.model.forward(input_ids, mask));
//! let probs = softmax(logits, 1);
//! println!("{}: {:?}", loaded.config.label_name(1), probs.into_data());
//! # Ok::<(), roberta_burn::ModelError>(())
//! ```

pub mod autocast;
mod config;
mod cpu;
mod error;
mod fused;
#[cfg(feature = "bench")]
pub mod kernels;
#[cfg(not(feature = "bench"))]
mod kernels;
mod loader;
mod model;

pub use config::RobertaConfig;
pub use error::ModelError;
pub use fused::in_thread_pool;

/// Held by the unit tests that draw from Burn's generator: it is one per process and tests run
/// in parallel, so a test that seeds it and expects a sequence must not meet another's draws.
#[cfg(test)]
pub(crate) static GENERATOR_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
pub use loader::{LoadReport, Loaded, Pretrained};
// The layer structs (embeddings, attention, …) stay inside `model`: the three models are the
// API, and their layers can change without breaking it.
pub use model::{RobertaForMaskedLM, RobertaForSequenceClassification, RobertaModel};
pub use sentiment_hub::HubSettings;
