//! RoBERTa's modules, one struct per class of Hugging Face's `modeling_roberta.py`, with the
//! same field names, so checkpoint keys map onto module paths with two renames only (see
//! `loader.rs`). One code for every backend: the device the tensors live on picks it.
//!
//! Reference: <https://github.com/huggingface/transformers/blob/v4.46.0/src/transformers/models/roberta/modeling_roberta.py>

use burn::module::{Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::tensor::activation::{gelu, gelu_approximate};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Device, Int, Tensor};

use crate::RobertaConfig;

/// Added to the attention scores of padded keys; `exp` of it is 0 in f32 and f16 alike.
const MASKED_SCORE: f32 = -1.0e4;

/// Dropout where `layer` is in training mode on an autodiff device (where Burn's `Dropout`
/// applies), the identity elsewhere: [`crate::fused::dropout`], whose masks are drawn on the
/// device (in parallel on the CPU backend; PyTorch's `native_dropout` on libtorch), seeded by
/// `Device::seed`.
fn apply_dropout<const D: usize>(layer: &Dropout, x: Tensor<D>) -> Tensor<D> {
    if !layer.training.is_enabled() || !x.device().is_autodiff() || layer.prob == 0.0 {
        return x;
    }
    crate::fused::dropout(x, layer.prob)
}

fn linear(d_in: usize, d_out: usize, config: &RobertaConfig, device: &Device) -> Linear {
    // transformers' `_init_weights`: N(0, initializer_range) weights, zero biases.
    LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: config.initializer_range,
        })
        .init(device)
        .map_bias_zero(device)
}

trait ZeroBias {
    fn map_bias_zero(self, device: &Device) -> Self;
}

impl ZeroBias for Linear {
    fn map_bias_zero(mut self, device: &Device) -> Self {
        if let Some(bias) = &self.bias {
            let [n] = bias.val().dims();
            self.bias = Some(Param::from_tensor(Tensor::zeros([n], device)));
        }
        self
    }
}

fn layer_norm(config: &RobertaConfig, device: &Device) -> LayerNorm {
    LayerNormConfig::new(config.hidden_size)
        .with_epsilon(config.layer_norm_eps)
        .init(device)
}

/// `norm` applied to `x` as one operation with a closed-form backward pass
/// ([`crate::fused`]); half-precision inputs go through Burn's layer norm, which accumulates
/// in f32.
fn normalize<const D: usize>(norm: &LayerNorm, x: Tensor<D>, epsilon: f64) -> Tensor<D> {
    let beta = norm.beta.as_ref().map(|b| b.val());
    match (x.dtype(), beta) {
        (DType::F32 | DType::F64, Some(beta)) => {
            crate::fused::layer_norm(x, norm.gamma.val(), beta, epsilon)
        }
        _ => norm.forward(x),
    }
}

fn dropout(p: f64) -> Dropout {
    DropoutConfig::new(p).init()
}

/// An embedding table drawn from N(0, initializer_range) with the padding row zeroed, as
/// `nn.Embedding(padding_idx=…)` is initialised by transformers.
fn embedding(
    rows: usize,
    config: &RobertaConfig,
    padding_row: Option<usize>,
    device: &Device,
) -> Embedding {
    let mut table = EmbeddingConfig::new(rows, config.hidden_size)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: config.initializer_range,
        })
        .init(device);
    if let Some(row) = padding_row.filter(|&r| r < rows) {
        let zeros = Tensor::zeros([1, config.hidden_size], device);
        let weight = table
            .weight
            .val()
            .slice_assign([row..row + 1, 0..config.hidden_size], zeros)
            // A fresh leaf: on an autodiff device the assignment is otherwise a graph node,
            // which cannot be a parameter.
            .detach();
        table.weight = Param::from_tensor(weight);
    }
    table
}

/// `RobertaEmbeddings`: word + position + token type, LayerNorm, dropout; `BertEmbeddings`
/// with `positions_from_zero`.
#[derive(Module, Debug)]
pub struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    layer_norm_eps: f64,
    dropout: Dropout,
    pad_token_id: usize,
    /// BERT numbers every position from 0, pads included; RoBERTa counts real tokens from
    /// the padding index on.
    positions_from_zero: bool,
}

impl Embeddings {
    fn new(config: &RobertaConfig, device: &Device) -> Self {
        Self {
            word_embeddings: embedding(
                config.vocab_size,
                config,
                Some(config.pad_token_id),
                device,
            ),
            // BERT's position table has no padding row.
            position_embeddings: embedding(
                config.max_position_embeddings,
                config,
                (!config.is_bert()).then_some(config.pad_token_id),
                device,
            ),
            token_type_embeddings: embedding(config.type_vocab_size, config, None, device),
            layer_norm: layer_norm(config, device),
            layer_norm_eps: config.layer_norm_eps,
            dropout: dropout(config.hidden_dropout_prob),
            pad_token_id: config.pad_token_id,
            positions_from_zero: config.is_bert(),
        }
    }

    /// # Shapes
    /// - `input_ids`: `[batch, seq]`
    /// - returns `[batch, seq, hidden]`
    fn forward(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = input_ids.dims();
        let positions = if self.positions_from_zero {
            Tensor::<1, Int>::arange(0..seq as i64, &input_ids.device())
                .reshape([1, seq])
                .expand([batch, seq])
        } else {
            // RoBERTa numbers real tokens from pad + 1 and gives pads the padding position:
            // `cumsum(ids != pad) * (ids != pad) + pad`.
            let real = input_ids
                .clone()
                .not_equal_elem(self.pad_token_id as i64)
                .int();
            real.clone().cumsum(1) * real + self.pad_token_id as i64
        };
        // RoBERTa has one token type; BERT's single-sentence inputs use type 0 too.
        let token_types = Tensor::<2, Int>::zeros([batch, seq], &input_ids.device());
        let x = self.word_embeddings.forward(input_ids)
            + self.position_embeddings.forward(positions)
            + self.token_type_embeddings.forward(token_types);
        apply_dropout(
            &self.dropout,
            normalize(&self.layer_norm, x, self.layer_norm_eps),
        )
    }

    /// The word embedding table `[vocab, hidden]` (tied to the masked-LM decoder).
    pub fn word_embedding_weight(&self) -> Tensor<2> {
        self.word_embeddings.weight.val()
    }
}

/// `RobertaSelfAttention`: scaled dot-product attention over all heads.
#[derive(Module, Debug)]
pub struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    dropout: Dropout,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(config: &RobertaConfig, device: &Device) -> Self {
        let h = config.hidden_size;
        Self {
            query: linear(h, h, config, device),
            key: linear(h, h, config, device),
            value: linear(h, h, config, device),
            dropout: dropout(config.attention_probs_dropout_prob),
            num_heads: config.num_attention_heads,
            head_dim: config.head_dim(),
        }
    }

    /// `[batch, seq, hidden]` → `[batch, heads, seq, head_dim]`.
    fn split_heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [batch, seq, _] = x.dims();
        x.reshape([batch, seq, self.num_heads, self.head_dim])
            .swap_dims(1, 2)
    }

    /// Attention of the rows `queries` over the rows `x` (keys and values): `queries` is `x`
    /// itself, or the rows of `x` at the positions whose outputs alone are needed.
    ///
    /// # Shapes
    /// - `queries`: `[batch, seq_q, hidden]`
    /// - `x`: `[batch, seq, hidden]`
    /// - `key_bias`: `[batch, 1, 1, seq]`, added to the scores: 0 on real keys, [`MASKED_SCORE`]
    ///   on padded ones
    /// - returns `[batch, seq_q, hidden]`
    fn forward(&self, queries: Tensor<3>, x: Tensor<3>, key_bias: Tensor<4>) -> Tensor<3> {
        let [batch, seq_q, hidden] = queries.dims();
        let seq = x.dims()[1];
        let (device, dtype) = (x.device(), x.dtype());
        let dropout = if self.dropout.training.is_enabled() && device.is_autodiff() {
            self.dropout.prob
        } else {
            0.0
        };
        let scale = (self.head_dim as f64).sqrt().recip();
        let q = self.split_heads(crate::fused::linear(&self.query, queries));
        let k = self.split_heads(crate::fused::linear(&self.key, x.clone()));
        let v = self.split_heads(crate::fused::linear(&self.value, x));
        let merge_heads = |heads: Tensor<4>| heads.swap_dims(1, 2).reshape([batch, seq_q, hidden]);
        let fused = crate::fused::attention_available(&device, dtype, dropout, self.head_dim);
        if fused && !composed_attention_forced() {
            // One kernel each way, dropout included: the CPU backend's own (on the heads where
            // the projections leave them), libtorch's on CUDA (as transformers' SDPA).
            return merge_heads(crate::fused::attention(q, k, v, key_bias, dropout, scale));
        }
        if dropout == 0.0 && !composed_attention_forced() {
            // Without attention dropout (inference, or a model configured without it) the
            // backend's fused scaled-dot-product attention computes the same thing in one op
            // (flash attention on GPUs; half precision on the CPU backend). An additive bias
            // rather than a boolean mask: burn-tch 0.22 hands Burn's mask (true = masked) to
            // PyTorch, where true means "attend".
            let bias = key_bias.expand([batch, self.num_heads, seq_q, seq]);
            return merge_heads(attention(
                q,
                k,
                v,
                None,
                Some(bias),
                AttentionModuleOptions::default(),
            ));
        }
        let scores = q.matmul(k.swap_dims(2, 3)) * scale + key_bias;
        let probs = apply_dropout(&self.dropout, crate::fused::softmax(scores, 3));
        merge_heads(probs.matmul(v))
    }
}

#[cfg(test)]
thread_local! {
    /// Set by a test: attention composed from its parts (what training with attention dropout
    /// runs) even without dropout, so that path can be compared with transformers.
    static COMPOSED_ATTENTION: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a test asked this thread for the composed attention.
fn composed_attention_forced() -> bool {
    #[cfg(test)]
    return COMPOSED_ATTENTION.get();
    #[cfg(not(test))]
    false
}

/// `RobertaSelfOutput`: dense, dropout, residual, LayerNorm (post-LN).
#[derive(Module, Debug)]
pub struct SelfOutput {
    dense: Linear,
    layer_norm: LayerNorm,
    layer_norm_eps: f64,
    dropout: Dropout,
}

/// `RobertaOutput` (after the feed-forward) is `RobertaSelfOutput` with a 4H-wide input.
pub type Output = SelfOutput;

impl SelfOutput {
    fn new(d_input: usize, config: &RobertaConfig, device: &Device) -> Self {
        Self {
            dense: linear(d_input, config.hidden_size, config, device),
            layer_norm: layer_norm(config, device),
            layer_norm_eps: config.layer_norm_eps,
            dropout: dropout(config.hidden_dropout_prob),
        }
    }

    fn forward(&self, hidden: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        let x = apply_dropout(&self.dropout, crate::fused::linear(&self.dense, hidden));
        normalize(&self.layer_norm, x + residual, self.layer_norm_eps)
    }
}

/// `RobertaAttention`: self-attention and its output block.
#[derive(Module, Debug)]
pub struct Attention {
    self_attention: SelfAttention,
    output: SelfOutput,
}

/// `RobertaIntermediate`: dense H → 4H and GELU.
#[derive(Module, Debug)]
pub struct Intermediate {
    dense: Linear,
    approximate_gelu: bool,
}

impl Intermediate {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = crate::fused::linear(&self.dense, x);
        if self.approximate_gelu {
            gelu_approximate(x)
        } else {
            crate::fused::gelu(x)
        }
    }
}

/// `RobertaLayer`: attention then feed-forward.
#[derive(Module, Debug)]
pub struct Layer {
    attention: Attention,
    intermediate: Intermediate,
    output: Output,
}

impl Layer {
    fn new(config: &RobertaConfig, device: &Device) -> Self {
        Self {
            attention: Attention {
                self_attention: SelfAttention::new(config, device),
                output: SelfOutput::new(config.hidden_size, config, device),
            },
            intermediate: Intermediate {
                dense: linear(config.hidden_size, config.intermediate_size, config, device),
                approximate_gelu: config.gelu_is_approximate(),
            },
            output: Output::new(config.intermediate_size, config, device),
        }
    }

    /// The layer's output at every position: `[batch, seq, hidden]`.
    fn forward(&self, x: Tensor<3>, key_bias: Tensor<4>) -> Tensor<3> {
        self.forward_at(x.clone(), x, key_bias)
    }

    /// The layer's output at the positions of `queries` (`[batch, seq_q, hidden]`, rows of `x`
    /// at positions the caller chose): every row after attention is computed on its own, so
    /// the other positions' projections, feed-forward and layer norms are left out.
    fn forward_at(&self, queries: Tensor<3>, x: Tensor<3>, key_bias: Tensor<4>) -> Tensor<3> {
        let attended = self
            .attention
            .self_attention
            .forward(queries.clone(), x, key_bias);
        let x = self.attention.output.forward(attended, queries);
        let inner = self.intermediate.forward(x.clone());
        self.output.forward(inner, x)
    }
}

/// `RobertaEncoder`: the stack of layers.
#[derive(Module, Debug)]
pub struct Encoder {
    layer: Vec<Layer>,
}

/// `RobertaModel` without the pooler (the classifier and the masked-LM head do not use it).
#[derive(Module, Debug)]
pub struct RobertaModel {
    embeddings: Embeddings,
    encoder: Encoder,
}

impl RobertaModel {
    /// A randomly initialised model, as transformers initialises one.
    pub fn new(config: &RobertaConfig, device: &Device) -> Self {
        Self {
            embeddings: Embeddings::new(config, device),
            encoder: Encoder {
                layer: (0..config.num_hidden_layers)
                    .map(|_| Layer::new(config, device))
                    .collect(),
            },
        }
    }

    /// The last hidden state.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]`
    /// - `attention_mask`: `[batch, seq]`, 1 on real tokens, 0 on padding
    /// - returns `[batch, seq, hidden]`
    pub fn forward(&self, input_ids: Tensor<2, Int>, attention_mask: Tensor<2, Int>) -> Tensor<3> {
        let key_bias = key_bias(&attention_mask);
        let mut x = self.embeddings.forward(input_ids);
        for layer in &self.encoder.layer {
            x = layer.forward(x, key_bias.clone());
        }
        x
    }

    /// The last hidden state at the first position (`<s>`) alone, what the classification
    /// head reads: equal to `forward(…)` at position 0, through [`Self::forward_columns`].
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`: `[batch, seq]`
    /// - returns `[batch, hidden]`
    pub fn forward_first(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> Tensor<2> {
        let [batch, _] = attention_mask.dims();
        let first = self.forward_columns(input_ids, attention_mask, &vec![0; batch], 1);
        let hidden = first.dims()[2];
        first.reshape([batch, hidden])
    }

    /// The last hidden state at `per_row` chosen columns of each row: equal to `forward(…)`
    /// there, but the last layer computes those positions only (its keys and values still
    /// come from every position; everything after attention works row by row), which leaves
    /// out most of the last layer's query projection, attention output and feed-forward: for
    /// the classifier's `<s>` alone about a twelfth of roberta-base's work and a fifth of a
    /// four-layer model's. On the CPU backend, columns that are padding in every row and that
    /// no row asks for are cut first (see [`trim_padding`]).
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`: `[batch, seq]`
    /// - `columns`: `batch × per_row` column indices (below `seq`), row by row; `per_row` ≥ 1
    /// - returns `[batch, per_row, hidden]`
    pub fn forward_columns(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        columns: &[usize],
        per_row: usize,
    ) -> Tensor<3> {
        let [batch, seq] = attention_mask.dims();
        assert!(
            per_row > 0 && columns.len() == batch * per_row,
            "forward_columns: {} columns for {batch} rows of {per_row}",
            columns.len()
        );
        let keep = columns.iter().max().map_or(1, |&c| c + 1);
        assert!(keep <= seq, "forward_columns: column {} of {seq}", keep - 1);
        let (input_ids, attention_mask) = trim_padding(input_ids, attention_mask, keep);
        let key_bias = key_bias(&attention_mask);
        let mut x = self.embeddings.forward(input_ids);
        let [_, kept, hidden] = x.dims();
        let pick = |x: Tensor<3>| -> Tensor<3> {
            if per_row == 1 && columns.iter().all(|&c| c == 0) {
                return x.narrow(1, 0, 1);
            }
            let rows: Vec<i64> = columns
                .iter()
                .enumerate()
                .map(|(i, &c)| (i / per_row * kept + c) as i64)
                .collect();
            let rows = Tensor::from_data(
                burn::tensor::TensorData::new(rows, [batch * per_row]),
                &x.device(),
            );
            x.reshape([batch * kept, hidden])
                .select(0, rows)
                .reshape([batch, per_row, hidden])
        };
        let Some((last, layers)) = self.encoder.layer.split_last() else {
            return pick(x);
        };
        for layer in layers {
            x = layer.forward(x, key_bias.clone());
        }
        last.forward_at(pick(x.clone()), x, key_bias)
    }

    /// The embedding block (for the tied masked-LM decoder).
    pub fn embeddings(&self) -> &Embeddings {
        &self.embeddings
    }
}

/// The batch cut to its last column that is a real token in some row. The columns after it
/// change no real token's result (they are masked keys, and position ids count real tokens
/// from the left), so a batch padded to a multiple of 8, or to a fixed length as the notebook
/// pads, computes only as many positions as its longest row: with length-grouped batches of
/// tweets, about a tenth fewer. At least `keep` columns stay (the positions a caller reads).
/// On the CPU backend only (see [`crate::fused::any_shape`]): elsewhere the batch keeps the
/// shape its padding chose.
fn trim_padding(
    input_ids: Tensor<2, Int>,
    attention_mask: Tensor<2, Int>,
    keep: usize,
) -> (Tensor<2, Int>, Tensor<2, Int>) {
    if !crate::fused::any_shape(&attention_mask.device()) {
        return (input_ids, attention_mask);
    }
    let [_, seq] = attention_mask.dims();
    let Ok(mask) = attention_mask
        .clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
    else {
        return (input_ids, attention_mask);
    };
    let width = mask
        .chunks(seq.max(1))
        .filter_map(|row| row.iter().rposition(|&m| m != 0))
        .max()
        .map_or(1, |last| last + 1)
        .max(keep);
    if width >= seq {
        return (input_ids, attention_mask);
    }
    (
        input_ids.narrow(1, 0, width),
        attention_mask.narrow(1, 0, width),
    )
}

/// transformers' extended attention mask (`[batch, seq]`, 1 on real tokens) as the scores'
/// additive bias `[batch, 1, 1, seq]`: 0 on real keys, [`MASKED_SCORE`] on padded ones; made
/// once for all layers.
fn key_bias(attention_mask: &Tensor<2, Int>) -> Tensor<4> {
    let [batch, seq] = attention_mask.dims();
    attention_mask
        .clone()
        .equal_elem(0)
        .float()
        .mul_scalar(MASKED_SCORE)
        .reshape([batch, 1, 1, seq])
}

/// `RobertaClassificationHead`: on `<s>`: dropout, dense, tanh, dropout, projection. BERT's
/// head is the same computation on `[CLS]` without the first dropout: `BertPooler` (dense,
/// tanh) is `dense`, and `BertForSequenceClassification`'s dropout and `classifier` are
/// `dropout` and `out_proj` (the weight-name table maps the names).
#[derive(Module, Debug)]
pub struct ClassificationHead {
    dense: Linear,
    dropout: Dropout,
    out_proj: Linear,
    /// RoBERTa's dropout on the `<s>` state before `dense` (BERT has none there).
    dropout_first: bool,
}

/// `RobertaForSequenceClassification`: the encoder and a classification head on `<s>`.
#[derive(Module, Debug)]
pub struct RobertaForSequenceClassification {
    roberta: RobertaModel,
    classifier: ClassificationHead,
}

impl RobertaForSequenceClassification {
    /// A randomly initialised classifier with `config.num_labels()` classes.
    pub fn new(config: &RobertaConfig, device: &Device) -> Self {
        let p = config
            .classifier_dropout
            .unwrap_or(config.hidden_dropout_prob);
        Self {
            roberta: RobertaModel::new(config, device),
            classifier: ClassificationHead {
                dense: linear(config.hidden_size, config.hidden_size, config, device),
                dropout: dropout(p),
                out_proj: linear(config.hidden_size, config.num_labels(), config, device),
                dropout_first: !config.is_bert(),
            },
        }
    }

    /// Class logits.
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`: `[batch, seq]`
    /// - returns `[batch, num_labels]`
    pub fn forward(&self, input_ids: Tensor<2, Int>, attention_mask: Tensor<2, Int>) -> Tensor<2> {
        // The head reads `<s>` only: the last layer computes that position alone.
        let first = self.roberta.forward_first(input_ids, attention_mask);
        self.classify_first(first)
    }

    /// The head alone, on a last hidden state `[batch, seq, hidden]`.
    pub fn classify(&self, hidden: Tensor<3>) -> Tensor<2> {
        let [batch, _, width] = hidden.dims();
        self.classify_first(hidden.narrow(1, 0, 1).reshape([batch, width]))
    }

    /// The head on the last hidden state at `<s>`, `[batch, hidden]`.
    fn classify_first(&self, first: Tensor<2>) -> Tensor<2> {
        let head = &self.classifier;
        let x = if head.dropout_first {
            apply_dropout(&head.dropout, first)
        } else {
            first
        };
        let x = crate::fused::linear(&head.dense, x).tanh();
        let x = apply_dropout(&head.dropout, x);
        crate::fused::linear(&head.out_proj, x)
    }

    /// The encoder.
    pub fn roberta(&self) -> &RobertaModel {
        &self.roberta
    }
}

/// `RobertaLMHead`: dense, GELU, LayerNorm, then the decoder tied to the word embeddings.
#[derive(Module, Debug)]
pub struct LmHead {
    dense: Linear,
    layer_norm: LayerNorm,
    layer_norm_eps: f64,
    bias: Param<Tensor<1>>,
}

/// `RobertaForMaskedLM`: the encoder and a vocabulary head whose decoder is the word embedding
/// table itself (tied, as in transformers), plus its own bias.
#[derive(Module, Debug)]
pub struct RobertaForMaskedLM {
    roberta: RobertaModel,
    lm_head: LmHead,
}

impl RobertaForMaskedLM {
    /// A randomly initialised masked-LM model.
    pub fn new(config: &RobertaConfig, device: &Device) -> Self {
        Self {
            roberta: RobertaModel::new(config, device),
            lm_head: LmHead {
                dense: linear(config.hidden_size, config.hidden_size, config, device),
                layer_norm: layer_norm(config, device),
                layer_norm_eps: config.layer_norm_eps,
                bias: Param::from_tensor(Tensor::zeros([config.vocab_size], device)),
            },
        }
    }

    /// Vocabulary logits at every position.
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`: `[batch, seq]`
    /// - returns `[batch, seq, vocab]`
    pub fn forward(&self, input_ids: Tensor<2, Int>, attention_mask: Tensor<2, Int>) -> Tensor<3> {
        let hidden = self.roberta.forward(input_ids, attention_mask);
        let [batch, seq, width] = hidden.dims();
        let logits = self.vocabulary_logits(hidden.reshape([batch * seq, width]));
        let [_, vocab] = logits.dims();
        logits.reshape([batch, seq, vocab])
    }

    /// Vocabulary logits at the given positions only (row-major indices into `[batch, seq]`),
    /// what the masked-LM loss needs: the vocabulary projection, the largest matmul of a small
    /// model, then runs on the masked 15% of the tokens instead of all of them; so does the
    /// last layer ([`RobertaModel::forward_columns`]).
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`: `[batch, seq]`
    /// - `positions`: `[n]`
    /// - returns `[n, vocab]`
    pub fn forward_at(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        positions: Tensor<1, Int>,
    ) -> Tensor<2> {
        let multiple = if crate::fused::any_shape(&positions.device()) {
            1
        } else {
            crate::fused::SHAPE_MULTIPLE
        };
        self.forward_at_rows(input_ids, attention_mask, positions, multiple)
    }

    /// [`Self::forward_at`] with the last layer's positions per row rounded up to a multiple
    /// of `multiple`.
    fn forward_at_rows(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        positions: Tensor<1, Int>,
        multiple: usize,
    ) -> Tensor<2> {
        let [batch, seq] = attention_mask.dims();
        let device = positions.device();
        let indices: Vec<i64> = positions
            .into_data()
            .convert::<i64>()
            .try_to_vec()
            .expect("integer positions");
        // Each row's wanted columns, in the order asked; each position's slot among them.
        let mut wanted: Vec<Vec<usize>> = vec![Vec::new(); batch];
        let slots: Vec<(usize, usize)> = indices
            .iter()
            .map(|&p| {
                assert!(
                    (0..(batch * seq) as i64).contains(&p),
                    "forward_at: position {p} outside the [{batch}, {seq}] batch"
                );
                let (row, column) = (p as usize / seq, p as usize % seq);
                wanted[row].push(column);
                (row, wanted[row].len() - 1)
            })
            .collect();
        // The same number of columns in every row: short rows repeat one (computed, unread);
        // a multiple of `multiple`, where shapes should be few.
        let multiple = multiple.max(1);
        let per_row = wanted
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .max(1)
            .div_ceil(multiple)
            * multiple;
        let columns: Vec<usize> = wanted
            .iter()
            .flat_map(|row| (0..per_row).map(move |i| row.get(i).or(row.last()).map_or(0, |&c| c)))
            .collect();
        let hidden = self
            .roberta
            .forward_columns(input_ids, attention_mask, &columns, per_row);
        let width = hidden.dims()[2];
        let picks: Vec<i64> = slots
            .iter()
            .map(|&(row, slot)| (row * per_row + slot) as i64)
            .collect();
        let n = picks.len();
        let picked = hidden.reshape([batch * per_row, width]).select(
            0,
            Tensor::from_data(burn::tensor::TensorData::new(picks, [n]), &device),
        );
        self.vocabulary_logits(picked)
    }

    /// `RobertaLMHead` on hidden states `[n, hidden]`: `[n, vocab]`.
    fn vocabulary_logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        let head = &self.lm_head;
        let x = normalize(
            &head.layer_norm,
            gelu(crate::fused::linear(&head.dense, hidden)),
            head.layer_norm_eps,
        );
        let decoder = self
            .roberta
            .embeddings()
            .word_embedding_weight()
            .transpose();
        x.matmul(decoder) + head.bias.val().unsqueeze_dim(0)
    }

    /// The encoder.
    pub fn roberta(&self) -> &RobertaModel {
        &self.roberta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attention composed of Burn's operations (scores, fused softmax, dropout, values:
    /// what backends without a fused attention train with) and the CPU backend's fused one
    /// against transformers' last hidden states on the fixture classifier.
    #[test]
    fn the_composed_attention_matches_transformers() {
        use crate::{HubSettings, Pretrained, RobertaForSequenceClassification};
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/model");
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{fixtures}/reference.json")).unwrap(),
        )
        .unwrap();
        let column =
            |key: &str| -> Vec<serde_json::Value> { reference[key].as_array().unwrap().clone() };
        let (batch, seq) = (
            reference["batch"].as_u64().unwrap() as usize,
            reference["seq"].as_u64().unwrap() as usize,
        );
        let device = Device::flex();
        let ints = |key: &str| {
            let data: Vec<i64> = column(key).iter().map(|v| v.as_i64().unwrap()).collect();
            Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(data, [batch, seq]), &device)
        };
        let loaded = RobertaForSequenceClassification::from_pretrained_with(
            &format!("{fixtures}/classifier"),
            &device,
            &HubSettings::from_vars(|_| None),
            |_| {},
        )
        .unwrap();
        let hidden = |composed: bool| -> Vec<f32> {
            COMPOSED_ATTENTION.set(composed);
            let out = loaded
                .model
                .roberta()
                .forward(ints("input_ids"), ints("attention_mask"))
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            COMPOSED_ATTENTION.set(false);
            out
        };
        let (composed, fused) = (hidden(true), hidden(false));
        let expected: Vec<f64> = column("last_hidden_state")
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let worst = |got: &[f32]| {
            got.iter()
                .zip(&expected)
                .map(|(g, e)| (f64::from(*g) - e).abs())
                .fold(0.0, f64::max)
        };
        assert_eq!(composed.len(), expected.len());
        assert!(worst(&composed) < 1e-5, "composed: {}", worst(&composed));
        assert!(worst(&fused) < 1e-5, "fused: {}", worst(&fused));
    }

    /// The tiny preset without dropout, so that two forward passes give the same outputs.
    fn tiny_without_dropout() -> RobertaConfig {
        let mut config = RobertaConfig::preset("tiny", 50).unwrap();
        config.hidden_dropout_prob = 0.0;
        config.attention_probs_dropout_prob = 0.0;
        config
    }

    /// Token ids and attention mask of rows of `lengths` real tokens (`<s>`, ids below 43,
    /// `</s>`) padded to `seq`, row-major.
    fn padded_rows(lengths: &[usize], seq: usize) -> (Vec<i64>, Vec<i64>) {
        let ids = (0..lengths.len() * seq)
            .map(|i| match (i / seq, i % seq) {
                (_, 0) => 0,
                (r, c) if c + 1 == lengths[r] => 2,
                (r, c) if c >= lengths[r] => 1,
                _ => 3 + (i * 7 % 40) as i64,
            })
            .collect();
        let mask = (0..lengths.len() * seq)
            .map(|i| i64::from(i % seq < lengths[i / seq]))
            .collect();
        (ids, mask)
    }

    /// Each of `got` within 1e-5 (relative to the largest magnitude above 1) of the same
    /// output of `expected`, none of which is all zeros. (`fused`'s tests' `assert_close`
    /// wants references above 1e-2; a tiny random model's gradients are smaller.)
    fn assert_outputs_close(got: &[Vec<f32>], expected: &[Vec<f32>], what: &str) {
        assert_eq!(got.len(), expected.len());
        for (k, (a, b)) in got.iter().zip(expected).enumerate() {
            assert_eq!(a.len(), b.len(), "{what}, output {k}");
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            let largest = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(largest > 0.0, "{what}, output {k}: all zero");
            assert!(
                worst <= 1e-5 * largest.max(1.0),
                "{what}, output {k}: {worst} (largest {largest})"
            );
        }
    }

    /// The classifier's forward pass, whose last layer computes `<s>` alone (and which cuts
    /// columns that are padding in every row), gives the logits and the gradients of the head
    /// on the full last hidden state, on padded batches, with the fused attention and the
    /// composed one.
    #[test]
    fn the_last_layer_at_the_first_position_alone_gives_the_same_logits_and_gradients() {
        let _generator = crate::GENERATOR_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let device = Device::flex().autodiff();
        device.seed(7);
        let config = tiny_without_dropout();
        let model = RobertaForSequenceClassification::new(&config, &device);
        let seq = 9;
        // The longest row filling the batch, then two padded columns that can be cut.
        for lengths in [[9, 4, 6], [7, 4, 6]] {
            check_first_position_alone(&model, &lengths, seq, &device);
        }
    }

    /// The logits and gradients of `model`'s forward pass and of the head on the full last
    /// hidden state, on rows of `lengths` padded to `seq`.
    fn check_first_position_alone(
        model: &RobertaForSequenceClassification,
        lengths: &[usize],
        seq: usize,
        device: &Device,
    ) {
        let batch = lengths.len();
        let (ids, mask) = padded_rows(lengths, seq);
        let ints = |data: Vec<i64>| {
            Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(data, [batch, seq]), device)
        };
        let values = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
        let last = &model.roberta.encoder.layer[1];
        let weights = || {
            [
                last.attention.self_attention.query.weight.val(),
                last.attention.self_attention.key.weight.val(),
                last.intermediate.dense.weight.val(),
                model.roberta.encoder.layer[0].output.dense.weight.val(),
                model.classifier.dense.weight.val(),
            ]
        };
        let run = |first_only: bool| -> Vec<Vec<f32>> {
            let (ids, mask) = (ints(ids.clone()), ints(mask.clone()));
            let logits = if first_only {
                model.forward(ids, mask)
            } else {
                model.classify(model.roberta.forward(ids, mask))
            };
            // A loss that weighs each logit differently.
            let scale = Tensor::<2>::from_data(
                burn::tensor::TensorData::new(vec![1.0f32, -2.0, 0.5, 3.0, -1.0, 2.0], [3, 2]),
                device,
            );
            let grads = (logits.clone() * scale).sum().backward();
            let mut out = vec![values(logits)];
            out.extend(weights().map(|w| values(w.grad(&grads).unwrap())));
            out
        };
        for composed in [false, true] {
            COMPOSED_ATTENTION.set(composed);
            let (first, full) = (run(true), run(false));
            COMPOSED_ATTENTION.set(false);
            assert_outputs_close(
                &first,
                &full,
                &format!("lengths {lengths:?}, composed {composed}"),
            );
        }
    }

    /// Only the columns after every row's last real token are cut, wherever the padding is.
    #[test]
    fn trimming_cuts_the_columns_that_are_padding_in_every_row() {
        let device = Device::flex();
        let widths = |rows: &[[i64; 6]]| {
            let flat: Vec<i64> = rows.iter().flatten().copied().collect();
            let tensor = || {
                Tensor::<2, Int>::from_data(
                    burn::tensor::TensorData::new(flat.clone(), [rows.len(), 6]),
                    &device,
                )
            };
            let (ids, mask) = trim_padding(tensor() + 10, tensor(), 1);
            let kept: Vec<i64> = mask.into_data().convert::<i64>().try_to_vec().unwrap();
            let ids: Vec<i64> = ids.into_data().convert::<i64>().try_to_vec().unwrap();
            assert_eq!(ids, kept.iter().map(|m| m + 10).collect::<Vec<_>>());
            kept.len() / rows.len()
        };
        assert_eq!(widths(&[[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]), 3);
        assert_eq!(widths(&[[1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]]), 6);
        // Left padding and holes: up to the last real token of any row.
        assert_eq!(widths(&[[0, 0, 1, 1, 0, 0], [1, 0, 1, 0, 0, 0]]), 4);
        // No real token at all: one column stays.
        assert_eq!(widths(&[[0, 0, 0, 0, 0, 0]]), 1);
    }

    /// The masked-LM logits at chosen positions, and their gradients, equal the full forward
    /// pass's there: the last layer at those positions alone, rows asking for different
    /// numbers of them (none, a repeated one), the padded columns cut, also where a position
    /// lies in one.
    #[test]
    fn masked_lm_logits_at_positions_equal_the_full_forward() {
        let _generator = crate::GENERATOR_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let device = Device::flex().autodiff();
        device.seed(11);
        let config = tiny_without_dropout();
        let model = crate::RobertaForMaskedLM::new(&config, &device);
        let (batch, seq) = (3, 8);
        let (ids, mask) = padded_rows(&[5, 3, 4], seq);
        let ints = |data: Vec<i64>| {
            Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(data, [batch, seq]), &device)
        };
        let vocab = config.vocab_size;
        let values = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
        let last = &model.roberta.encoder.layer[1];
        let weights = || {
            [
                last.attention.self_attention.query.weight.val(),
                last.intermediate.dense.weight.val(),
                model.roberta.embeddings.word_embedding_weight(),
            ]
        };
        // Logits at `positions` and the gradients of a weighted sum of them, through
        // `forward_at` (the last layer's positions per row rounded up to a multiple, as on
        // the GPU backends, or not) or through the full forward pass.
        let run = |positions: &[i64], at: Option<usize>| -> Vec<Vec<f32>> {
            let n = positions.len();
            let positions = Tensor::<1, Int>::from_data(
                burn::tensor::TensorData::new(positions.to_vec(), [n]),
                &device,
            );
            let logits = if let Some(multiple) = at {
                model.forward_at_rows(ints(ids.clone()), ints(mask.clone()), positions, multiple)
            } else {
                model
                    .forward(ints(ids.clone()), ints(mask.clone()))
                    .reshape([batch * seq, vocab])
                    .select(0, positions)
            };
            let scale = Tensor::<2>::from_data(
                burn::tensor::TensorData::new(
                    (0..n * vocab)
                        .map(|i| (i % 7) as f32 - 3.0)
                        .collect::<Vec<_>>(),
                    [n, vocab],
                ),
                &device,
            );
            let grads = (logits.clone() * scale).sum().backward();
            let mut out = vec![values(logits)];
            out.extend(weights().map(|w| values(w.grad(&grads).unwrap())));
            out
        };
        // Real tokens only, in no order, the last row asking for none (cut to 5 columns);
        // then a repeated position and one in a padded column (cut to 7).
        for (positions, multiple) in [
            (vec![9i64, 1, 3, 10], 1),
            (vec![2, 8, 14, 8, 17], 1),
            (vec![2, 8, 14, 8, 17], 8),
        ] {
            let (at, full) = (run(&positions, Some(multiple)), run(&positions, None));
            assert_outputs_close(
                &at,
                &full,
                &format!("positions {positions:?}, multiple {multiple}"),
            );
        }
    }

    #[test]
    fn cpu_dropout_drops_its_share_scales_the_rest_and_follows_the_seed() {
        let _generator = crate::GENERATOR_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let device = Device::flex().autodiff();
        let layer = DropoutConfig::new(0.1).init();
        let draw = || {
            let x = Tensor::<1>::ones([200_000], &device);
            apply_dropout(&layer, x)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        device.seed(3);
        let (first, second) = (draw(), draw());
        device.seed(3);
        assert_eq!(draw(), first, "the same seed gives the same mask");
        assert_ne!(first, second, "every call draws a new mask");
        let dropped = first.iter().filter(|&&v| v == 0.0).count() as f64 / first.len() as f64;
        assert!((dropped - 0.1).abs() < 0.003, "dropped {dropped}");
        let kept = 1.0 / 0.9f32;
        assert!(first.iter().all(|&v| v == 0.0 || (v - kept).abs() < 1e-6));
        // Not training (no autodiff): the identity.
        let plain = Tensor::<1>::ones([10], &Device::flex());
        assert_eq!(
            apply_dropout(&layer, plain)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            vec![1.0; 10]
        );
    }
}
