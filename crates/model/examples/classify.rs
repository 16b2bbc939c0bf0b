//! The model crate alone: load a Hugging Face `RobertaForSequenceClassification` folder,
//! tokenize with the `tokenizers` crate, print each text's logits and label.
//!
//! ```sh
//! cargo run --release -p roberta-burn --example classify -- fixtures/model/classifier "I love it"
//! ```
//!
//! With no argument it classifies two texts with the repository's small fixture classifier
//! (a tiny model made for the tests: its labels mean nothing; the code path is the real one).

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use roberta_burn::{Pretrained, RobertaForSequenceClassification, in_thread_pool};

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let folder = args.next().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/model/classifier"
        )
        .to_string()
    });
    let mut texts: Vec<String> = args.collect();
    if texts.is_empty() {
        texts = vec!["what a great day".into(), "worst service ever".into()];
    }

    let device = Device::flex();
    let loaded = RobertaForSequenceClassification::from_pretrained(&folder, &device)?;
    // transformers' tokenizer file, padded to the batch's longest text.
    let mut tokenizer = tokenizers::Tokenizer::from_file(format!("{folder}/tokenizer.json"))?;
    tokenizer.with_padding(Some(tokenizers::PaddingParams {
        pad_id: loaded.config.pad_token_id as u32,
        ..Default::default()
    }));
    let encodings = tokenizer.encode_batch(texts.clone(), true)?;
    let (rows, width) = (encodings.len(), encodings[0].get_ids().len());
    let column = |pick: fn(&tokenizers::Encoding) -> &[u32]| -> Tensor<2, Int> {
        let data: Vec<i64> = encodings
            .iter()
            .flat_map(|e| pick(e).iter().map(|&v| i64::from(v)))
            .collect();
        Tensor::from_data(TensorData::new(data, [rows, width]), &device)
    };
    // On the CPU backend, the forward pass as one job of the rayon pool: its parallel loops
    // then run on the pool's threads without handing each one over from this thread
    // (1.01-1.22x faster, docs/perf-notes/journal.md, "each step one job of the thread pool").
    let logits = in_thread_pool(&device, || {
        loaded.model.forward(
            column(tokenizers::Encoding::get_ids),
            column(tokenizers::Encoding::get_attention_mask),
        )
    });
    let probs: Vec<f32> = softmax(logits.clone(), 1)
        .into_data()
        .try_to_vec()
        .map_err(|e| format!("{e:?}"))?;
    let logits: Vec<f32> = logits
        .into_data()
        .try_to_vec()
        .map_err(|e| format!("{e:?}"))?;
    let labels = loaded.config.num_labels();
    for (i, text) in texts.iter().enumerate() {
        let row = &probs[i * labels..(i + 1) * labels];
        let best = (0..labels).fold(0, |b, k| if row[k] > row[b] { k } else { b });
        println!(
            "{:<10} {:.3}  logits {:?}  {text}",
            loaded.config.label_name(best),
            row[best],
            &logits[i * labels..(i + 1) * labels]
        );
    }
    Ok(())
}
