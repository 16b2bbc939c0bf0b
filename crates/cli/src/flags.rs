//! Command-line flags of every `roberta-sentiment` command (also `cargo xtask`'s stage
//! commands).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Fine-tune RoBERTa for tweet sentiment, from CSV to report, without Python.
#[derive(Debug, Parser)]
#[command(name = "roberta-sentiment", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The stages.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Turn a Sentiment140 CSV (raw or cleaned, optionally .gz) into stratified
    /// train/validation/test Parquet files and a manifest.
    Prepare(PrepareArgs),
    /// Tokenize the prepared splits (training a tokenizer on the train split unless one is
    /// given), cached next to them.
    Tokenize(TokenizeArgs),
    /// The notebook end to end: prepare, tokenize, search, final training, test evaluation,
    /// best_model, report. With no arguments: the bundled sample, a tiny model from scratch.
    Pipeline(PipelineArgs),
    /// Fine-tune a RoBERTa classifier on the prepared splits (from a pretrained folder or hub id,
    /// or from scratch), with per-epoch evaluation, keep-best checkpoints and a test evaluation.
    Train(TrainArgs),
    /// Masked-LM pre-training (RoBERTa's dynamic masking) on the text column of a CSV or
    /// Parquet file, into a Hugging Face folder that `train` and `pipeline --pretrained`
    /// fine-tune.
    Pretrain(PretrainArgs),
    /// Hyperparameter search tools.
    Search {
        /// Which tool.
        #[command(subcommand)]
        command: SearchCommand,
    },
    /// Classify texts with a fine-tuned RoBERTa (any Hugging Face
    /// RobertaForSequenceClassification folder or hub id, or one of our runs).
    Predict(PredictArgs),
}
/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatFlag {
    /// Detect from the first line.
    Auto,
    /// Sentiment140 release: no header, 6 columns, Windows-1252.
    Raw,
    /// A header with the text and label columns, UTF-8.
    Cleaned,
}

/// `--encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EncodingFlag {
    /// Windows-1252 (a Latin-1 superset).
    Cp1252,
    /// UTF-8.
    Utf8,
}

/// `--on-bad-row`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BadRowFlag {
    /// Stop at the first malformed row, naming its line.
    Error,
    /// Skip malformed rows and count them by reason in the manifest.
    Skip,
}

/// One `--normalize` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NormalizeFlag {
    /// Every step below.
    All,
    /// Decode HTML entities (&amp; → &).
    Html,
    /// @handle → @user.
    Mentions,
    /// Links → http.
    Urls,
    /// Collapse whitespace runs and trim.
    Whitespace,
}

/// Flags of `roberta-sentiment prepare`.
#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// Input CSV (.csv or .csv.gz). Default: the bundled synthetic sample.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output folder for train/validation/test.parquet and manifest.json.
    #[arg(long, default_value = "data/prepared")]
    pub out: PathBuf,
    /// How the input is read, sampled and split.
    #[command(flatten)]
    pub data: DataOptions,
    /// Seed of the sample and the split.
    #[arg(long, default_value_t = 734)]
    pub seed: u64,
    /// Print only errors.
    #[arg(long, short)]
    pub quiet: bool,
}

/// The backend and device a command runs on: the options every model command shares.
#[derive(Debug, Clone, Copy, Args)]
pub struct DeviceOptions {
    /// Backend: flex (CPU, the default); wgpu, vulkan, tch, tch-cuda in builds with their
    /// features.
    #[arg(long, value_enum, default_value_t = BackendFlag::Flex)]
    pub backend: BackendFlag,
    /// GPU index for GPU backends (the first, with several devices).
    #[arg(long, default_value_t = 0)]
    pub device_index: usize,
}

/// The optimizer and schedule flags `train` and `pretrain` share. Each left unset keeps the
/// library configuration's default (`TrainConfig::default()`, `PretrainConfig::default()`), so
/// the defaults are written once, in the library.
#[derive(Debug, Clone, Copy, Args)]
pub struct OptimizerOptions {
    /// Peak learning rate (default: for train 5e-5 from a pretrained model, 5e-4 from scratch;
    /// for pretrain 5e-4).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Rows per micro-batch (default 32).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Passes over the data (default 3).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Linear warmup steps (default 0).
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// AdamW weight decay (default: 0 for train, as the notebook; 0.01 for pretrain).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// AdamW beta1 (default 0.9).
    #[arg(long)]
    pub adam_beta1: Option<f64>,
    /// AdamW beta2 (default: 0.999 for train, 0.98 for pretrain).
    #[arg(long)]
    pub adam_beta2: Option<f64>,
    /// AdamW epsilon (default: 1e-8 for train, 1e-6 for pretrain).
    #[arg(long)]
    pub adam_epsilon: Option<f64>,
    /// Global gradient-norm bound, 0 for no clipping (default 1).
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Seed (default 42).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl OptimizerOptions {
    /// Sets what was given over a library configuration's fields.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &self,
        learning_rate: &mut f64,
        batch_size: &mut usize,
        epochs: &mut usize,
        warmup_steps: &mut usize,
        optimizer: &mut sentiment_train::AdamWSettings,
        seed: &mut u64,
    ) {
        fn set<T: Copy>(field: &mut T, flag: Option<T>) {
            if let Some(value) = flag {
                *field = value;
            }
        }
        set(learning_rate, self.learning_rate);
        set(batch_size, self.batch_size);
        set(epochs, self.epochs);
        set(warmup_steps, self.warmup_steps);
        set(&mut optimizer.weight_decay, self.weight_decay);
        set(&mut optimizer.beta1, self.adam_beta1);
        set(&mut optimizer.beta2, self.adam_beta2);
        set(&mut optimizer.epsilon, self.adam_epsilon);
        set(&mut optimizer.max_grad_norm, self.max_grad_norm);
        set(seed, self.seed);
    }
}

/// How batches are padded, and ordered in training: the options of every command that forms
/// batches.
#[derive(Debug, Clone, Copy, Args)]
pub struct BatchingOptions {
    /// Round each batch's padded length up to a multiple of N (each batch is padded to its
    /// longest text, as transformers' DataCollatorWithPadding does).
    #[arg(long, default_value_t = 8)]
    pub pad_multiple: usize,
    /// Pad every batch to --max-length, as the notebook did (for comparisons).
    #[arg(long)]
    pub pad_to_max_length: bool,
    /// Order each epoch's batches by length within mega-batches (the Trainer's
    /// group_by_length); `--group-by-length false` keeps the shuffled order.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub group_by_length: bool,
    /// Micro-batches of --batch-size per optimizer step (the loss normalised over all their
    /// rows, as one batch of K x --batch-size would be).
    #[arg(long, default_value_t = 1)]
    pub gradient_accumulation_steps: usize,
}

impl BatchingOptions {
    /// The padding these options ask for.
    pub fn padding(&self) -> sentiment_tokenize::Padding {
        sentiment_tokenize::Padding {
            pad_to_max_length: self.pad_to_max_length,
            pad_to_multiple_of: self.pad_multiple,
        }
    }
}

/// The Trainer's everyday switches every training command takes: how long to train, when to
/// evaluate and checkpoint, early stopping (as transformers' `EarlyStoppingCallback`) and where
/// metrics are reported.
#[derive(Debug, Clone, Args)]
pub struct TrainerOptions {
    /// Train for N optimizer steps in all, overriding --epochs (the Trainer's max_steps): the
    /// last pass over the data is cut short; the schedule decays to zero at step N.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Evaluate (and checkpoint) every N optimizer steps and after the last one, instead of
    /// after every epoch; the best checkpoint is chosen among these evaluations.
    #[arg(long)]
    pub eval_steps: Option<usize>,
    /// Also checkpoint every N optimizer steps between evaluations, to resume from (only the
    /// latest such checkpoint is kept).
    #[arg(long)]
    pub save_steps: Option<usize>,
    /// Stop after N evaluations without an improvement of the best metric (off by default).
    #[arg(long)]
    pub early_stopping_patience: Option<usize>,
    /// The improvement over the best so far that counts, for early stopping.
    #[arg(long, default_value_t = 0.0)]
    pub early_stopping_threshold: f64,
    /// Also report metrics to: `tensorboard` (event files under the run folder's tb/, by the
    /// Trainer's names: train/loss, eval/f1, …).
    #[arg(long, value_delimiter = ',')]
    pub report_to: Vec<String>,
    /// Mixed precision on the CPU backend (the Trainer's bf16): the linear layers' products
    /// from bf16 operands with f32 sums, everything else f32, in training and evaluation.
    /// Faster than f32 on CPUs with AVX512-BF16 and no AMX; elsewhere about as fast (a note
    /// says so).
    #[arg(long)]
    pub bf16: bool,
}

/// What to do with the run folder, and how much to print: the options of `train` and
/// `pretrain`.
#[derive(Debug, Clone, Copy, Args)]
pub struct RunFolderOptions {
    /// Continue the run in the run folder from its last checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace a run already in the run folder (deleting it) instead of refusing.
    #[arg(long)]
    pub overwrite: bool,
    /// Print only errors (no progress, no summary).
    #[arg(long, short)]
    pub quiet: bool,
}

/// The library's run options from the batching and Trainer flags; notes where `--bf16` is no
/// faster than f32 on this CPU (train.log says the same).
pub fn run_options(
    batching: &BatchingOptions,
    trainer: &TrainerOptions,
) -> sentiment_train::RunOptions {
    let support = roberta_burn::autocast::Bf16Support::detect();
    if trainer.bf16 && !support.faster_than_f32() {
        eprintln!("note: --bf16: {}", support.describe());
    }
    sentiment_train::RunOptions {
        padding: batching.padding(),
        group_by_length: batching.group_by_length,
        gradient_accumulation_steps: batching.gradient_accumulation_steps,
        max_steps: trainer.max_steps,
        eval_steps: trainer.eval_steps,
        save_steps: trainer.save_steps,
        early_stopping_patience: trainer.early_stopping_patience,
        early_stopping_threshold: trainer.early_stopping_threshold,
        report_to: trainer.report_to.clone(),
        bf16: trainer.bf16,
    }
}

/// How a CSV is read, sampled and split: the options `prepare` and `pipeline` share.
#[derive(Debug, Clone, Args)]
pub struct DataOptions {
    /// Input layout.
    #[arg(long, value_enum, default_value_t = FormatFlag::Auto)]
    pub format: FormatFlag,
    /// Text encoding (default: cp1252 for raw, utf8 for cleaned).
    #[arg(long, value_enum)]
    pub encoding: Option<EncodingFlag>,
    /// Text column of a cleaned file.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Label column of a cleaned file.
    #[arg(long, default_value = "sentiment")]
    pub label_column: String,
    /// Keep raw neutral rows (polarity 2) as a third class.
    #[arg(long)]
    pub keep_neutral: bool,
    /// Text normalisation steps, comma-separated (off by default).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub normalize: Vec<NormalizeFlag>,
    /// Remove exact duplicate texts and texts seen with conflicting labels.
    #[arg(long)]
    pub dedup: bool,
    /// Keep a stratified sample of N rows (the notebook used 10000).
    #[arg(long)]
    pub sample: Option<usize>,
    /// Train, validation and test ratios, comma-separated: `--ratios 0.7,0.15,0.15`.
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        default_values_t = [0.7, 0.15, 0.15]
    )]
    pub ratios: Vec<f64>,
    /// What to do with a malformed row.
    #[arg(long, value_enum, default_value_t = BadRowFlag::Error)]
    pub on_bad_row: BadRowFlag,
    /// Most bytes one record may hold (a tweet has a few hundred): a longer one is a
    /// malformed row, named by its line and never held whole in memory.
    #[arg(long, default_value_t = sentiment_data::DEFAULT_MAX_RECORD_BYTES, value_name = "BYTES")]
    pub max_record_bytes: usize,
}

/// Flags of `roberta-sentiment tokenize`.
#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// Folder written by `roberta-sentiment prepare` (`--data` is an older name of this flag).
    #[arg(long, alias = "data", default_value = "data/prepared")]
    pub prepared: PathBuf,
    /// A pretrained tokenizer: a local Hugging Face folder or a hub id (roberta-base).
    /// Without it, a byte-level BPE is trained on the train split and kept in
    /// PREPARED/tokenizer.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Vocabulary size of a trained tokenizer.
    #[arg(long, default_value_t = 8_000)]
    pub vocab_size: usize,
    /// Minimum pair frequency of a trained tokenizer.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Sequence length, `<s>` and `</s>` included.
    #[arg(long, default_value_t = 64)]
    pub max_length: usize,
    /// Print only errors.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendFlag {
    /// Pure-Rust CPU backend (always built).
    Flex,
    /// WebGPU on whichever graphics API the machine offers (WGSL shaders); needs
    /// `--features wgpu`.
    Wgpu,
    /// WebGPU pinned to Vulkan with the SPIR-V compiler; needs `--features vulkan`.
    Vulkan,
    /// libtorch on the CPU; needs `--features tch`.
    Tch,
    /// libtorch on CUDA GPU `--device-index`; needs `--features tch` built against a CUDA
    /// PyTorch.
    TchCuda,
}

/// `--dtype`: the float type of parameters and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DTypeFlag {
    /// 32-bit floats (every backend).
    F32,
    /// bfloat16: on GPU backends that support it, parameters and activations in bf16; on the
    /// CPU backend (flex), mixed precision as `torch.autocast("cpu", dtype=torch.bfloat16)`:
    /// f32 parameters, the linear layers' products from bf16 operands.
    Bf16,
    /// IEEE half precision (GPU backends that support it).
    F16,
}

/// Flags of `roberta-sentiment predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Model folder or hub id (with its tokenizer files).
    #[arg(long)]
    pub model: String,
    /// Tokenizer folder or hub id, when not beside the model.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Texts to classify; `-` reads them from standard input, one per line.
    #[arg(conflicts_with = "input")]
    pub texts: Vec<String>,
    /// A CSV (UTF-8, with a header) or Parquet file to classify instead.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Column of `--input` holding the texts.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Sequence length; longer texts are truncated (default: 64, or less if the model's
    /// positions allow less).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Round each batch's padded length up to a multiple of N (texts are batched by length).
    #[arg(long, default_value_t = 8)]
    pub pad_multiple: usize,
    /// Pad every batch to --max-length (for comparisons).
    #[arg(long)]
    pub pad_to_max_length: bool,
    /// Mixed precision on the CPU backend, as training's --bf16: the linear layers' products
    /// from bf16 operands with f32 sums, each weight packed once (faster than f32 on CPUs with
    /// AVX512-BF16 and no AMX). Other backends compute in their device's float type.
    #[arg(long)]
    pub bf16: bool,
    /// The backend and device.
    #[command(flatten)]
    pub device: DeviceOptions,
    /// Print JSON lines {"index", "row" (when the input has a `row` column), "text", "label",
    /// "probs", "logits"}.
    #[arg(long)]
    pub json: bool,
}

/// `--metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricFlag {
    /// F1 of the positive class.
    F1,
    /// Accuracy.
    Accuracy,
    /// Validation loss.
    Loss,
}

/// Flags of `roberta-sentiment train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Folder written by `roberta-sentiment prepare` (`--data` is an older name of this flag).
    #[arg(long, alias = "data", default_value = "data/prepared")]
    pub prepared: PathBuf,
    /// Run folder: checkpoints, metrics, best_model/ (`--run` is an older name of this flag).
    #[arg(long, alias = "run", default_value = "runs/train")]
    pub out: PathBuf,
    /// Start from a pretrained Hugging Face folder or hub id (roberta-base).
    #[arg(long, conflicts_with = "config")]
    pub pretrained: Option<String>,
    /// Train from scratch: a preset (tiny, small, base) or a config.json file.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Tokenizer folder or hub id (default: the pretrained model's, or one trained on the
    /// train split).
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Vocabulary of a tokenizer trained here.
    #[arg(long, default_value_t = 8_000)]
    pub vocab_size: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 64)]
    pub max_length: usize,
    /// Learning rate, batches, epochs, AdamW and seed (defaults: the Trainer's, a learning
    /// rate of 5e-5 from a pretrained model and 5e-4 from scratch).
    #[command(flatten)]
    pub optimizer: OptimizerOptions,
    /// Metric that picks the best checkpoint.
    #[arg(long, value_enum, default_value_t = MetricFlag::F1)]
    pub metric: MetricFlag,
    /// Checkpoints kept (the best and the latest).
    #[arg(long, default_value_t = 2)]
    pub save_total_limit: usize,
    /// Padding and length grouping.
    #[command(flatten)]
    pub batching: BatchingOptions,
    /// Early stopping on the validation metric (--metric), reporting.
    #[command(flatten)]
    pub trainer: TrainerOptions,
    /// Resume, overwrite, quiet.
    #[command(flatten)]
    pub folder: RunFolderOptions,
    /// The backend and device.
    #[command(flatten)]
    pub device: DeviceOptions,
}

/// Flags of `roberta-sentiment pretrain`.
#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// CSV (with a header, or raw Sentiment140) or Parquet file; labels are ignored. Default:
    /// the bundled sample (fixtures/sentiment140/sample.csv).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// The text column (of a file with a header).
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Run folder (checkpoints, metrics, tokenizer/, model/).
    #[arg(long, default_value = "runs/pretrain")]
    pub out: PathBuf,
    /// Continue pre-training a Hugging Face folder or hub id (roberta-base).
    #[arg(long, conflicts_with = "config")]
    pub pretrained: Option<String>,
    /// A fresh model: preset (tiny, small, base) or config.json.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Tokenizer folder or hub id (default: the pretrained model's, or one trained on the
    /// training texts and kept in OUT/tokenizer).
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Vocabulary of a tokenizer trained here.
    #[arg(long, default_value_t = 8_000)]
    pub vocab_size: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 64)]
    pub max_length: usize,
    /// Share of the texts held out for the per-epoch masked-LM loss and accuracy.
    #[arg(long, default_value_t = 0.05)]
    pub holdout: f64,
    /// Learning rate, batches, epochs (each with fresh masks), AdamW and seed (of the held-out
    /// split, initialisation, batch order, masks and dropout); defaults: RoBERTa's
    /// pre-training (AdamW 0.9 / 0.98 / 1e-6, weight decay 0.01), a learning rate of 5e-4.
    #[command(flatten)]
    pub optimizer: OptimizerOptions,
    /// Padding and length grouping.
    #[command(flatten)]
    pub batching: BatchingOptions,
    /// Early stopping on the held-out masked-LM loss, reporting.
    #[command(flatten)]
    pub trainer: TrainerOptions,
    /// Resume, overwrite, quiet.
    #[command(flatten)]
    pub folder: RunFolderOptions,
    /// The backend and device.
    #[command(flatten)]
    pub device: DeviceOptions,
}

/// Flags of `roberta-sentiment pipeline`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Sentiment140 CSV (raw or cleaned, optionally .gz). Default: the bundled sample.
    /// (`--data` is an older name of this flag.)
    #[arg(long, alias = "data")]
    pub input: Option<PathBuf>,
    /// How the CSV is read, sampled (`--sample 10000`, as the notebook) and split.
    #[command(flatten)]
    pub data_options: DataOptions,
    /// Run folder.
    #[arg(long, default_value = "runs/pipeline")]
    pub out: PathBuf,
    /// Discard a study in the run folder that other settings made (its trials would be
    /// retrained), instead of refusing.
    #[arg(long)]
    pub overwrite: bool,
    /// Print only errors (no progress, no summary).
    #[arg(long, short)]
    pub quiet: bool,
    /// Pretrained Hugging Face folder or hub id (roberta-base). Default: train from scratch.
    #[arg(long)]
    pub pretrained: Option<String>,
    /// From-scratch model: preset (tiny, small, base) or config.json.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Tokenizer folder or hub id (default: the pretrained model's, or trained on the data).
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Vocabulary of a tokenizer trained on the data.
    #[arg(long, default_value_t = 8_000)]
    pub vocab_size: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 64)]
    pub max_length: usize,
    /// Trials the study should hold, whoever runs them: complete or pruned, or under way
    /// (the notebook: 8). A rerun, or another worker on the same study, runs only what is
    /// missing; a larger count extends a finished study.
    #[arg(long, default_value_t = 4)]
    pub trials: usize,
    /// Where the study is kept (default: OUT/study.db). Workers on many machines share one
    /// study through PostgreSQL: start the same command, with the same --storage and
    /// --study-name, on each (docs/search.md).
    #[command(flatten)]
    pub study: StorageOptions,
    /// Seconds between the heartbeats of a running trial (Optuna's heartbeat_interval).
    #[arg(long, default_value_t = 60)]
    pub heartbeat_interval: u64,
    /// Seconds after its last heartbeat that a running trial is failed as dead (default:
    /// twice the interval, as Optuna).
    #[arg(long)]
    pub grace_period: Option<u64>,
    /// Queue a dead worker's trial again with its parameters (Optuna's
    /// RetryHeartbeatStaleTrialCallback): on by default; `--retry-failed false` turns it off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub retry_failed: bool,
    /// Ask no trial: run the final stage (best trial's model, test evaluation, report) on
    /// the study as it stands, here.
    #[arg(long)]
    pub final_only: bool,
    /// Stop this worker, with the last error, after this many of its trials failed in a row
    /// (a search whose every trial fails would otherwise never end).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub max_consecutive_failures: usize,
    /// Random trials before TPE (default: half the trials, at most 10, so TPE acts).
    #[arg(long)]
    pub startup_trials: Option<usize>,
    /// Epochs of every trial and of the final run (the notebook: 3).
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Padding and length grouping of every run.
    #[command(flatten)]
    pub batching: BatchingOptions,
    /// Early stopping of every run on its validation F1 (a trial stopped early is complete),
    /// reporting (TensorBoard: one run per trial).
    #[command(flatten)]
    pub trainer: TrainerOptions,
    /// Devices to run trials on in parallel, one trial per device (GPU indices from
    /// --device-index on; with the CPU backend the trials share the cores).
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    /// Stop trials whose validation F1 after an epoch is below the median of the other
    /// trials' at that epoch (Optuna's MedianPruner; off by default, as in the notebook).
    #[arg(long)]
    pub prune: bool,
    /// Complete trials needed before pruning starts.
    #[arg(long, default_value_t = 5)]
    pub prune_startup_trials: usize,
    /// Epochs never pruned at the start of each trial.
    #[arg(long, default_value_t = 0)]
    pub prune_warmup_epochs: usize,
    /// Search space as NAME=SPEC (default: learning_rate log-uniform, batch_size in {16, 32}).
    #[arg(long = "space", value_name = "NAME=SPEC")]
    pub space: Vec<String>,
    /// Seed of the split, the search and the training.
    #[arg(long, default_value_t = 734)]
    pub seed: u64,
    /// The backend and device.
    #[command(flatten)]
    pub device: DeviceOptions,
}

/// `roberta-sentiment search …`.
#[derive(Debug, Subcommand)]
pub enum SearchCommand {
    /// Drive a study over JSON lines: prints {"trial", "params"} per trial, reads
    /// {"trial", "value"} (or {"trial", "state": "fail"}) from stdin, prints {"best": …} at the end.
    AskTell(AskTellArgs),
}

/// `--direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DirectionFlag {
    /// Smaller is better.
    Minimize,
    /// Larger is better.
    Maximize,
}

/// `--sampler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamplerFlag {
    /// Tree-structured Parzen Estimator (Optuna 5's defaults).
    Tpe,
    /// Uniform random search.
    Random,
}

/// Flags of `roberta-sentiment search ask-tell`.
#[derive(Debug, Args)]
pub struct AskTellArgs {
    /// SPACE.json: an array of {"name", "type": "float"|"int"|"categorical", "low", "high",
    /// "log", "step", "choices"}.
    #[arg(long)]
    pub space: PathBuf,
    /// Trials the study should hold, whoever runs them: complete or pruned, or under way (a
    /// failed trial is asked again). With a shared --storage, each client asks only what is
    /// missing.
    #[arg(long)]
    pub trials: usize,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Optimisation direction.
    #[arg(long, value_enum)]
    pub direction: DirectionFlag,
    /// Sampler.
    #[arg(long, value_enum, default_value_t = SamplerFlag::Tpe)]
    pub sampler: SamplerFlag,
    /// Random startup trials of TPE (Optuna's default 10).
    #[arg(long, default_value_t = 10)]
    pub startup_trials: usize,
    /// Where the study is kept (default: in memory).
    #[command(flatten)]
    pub study: StorageOptions,
}

/// Where a study is kept, named as Optuna names it.
#[derive(Debug, Args)]
pub struct StorageOptions {
    /// An Optuna storage, resumable and shared by every worker that names it:
    /// `sqlite:///PATH`, `postgresql://USER@HOST:PORT/DB` (the password from the URL or
    /// PGPASSWORD; the rest may come from PGHOST, PGPORT, PGUSER, PGDATABASE), or the path of
    /// an SQLite file. `--study` is an older name of this flag.
    #[arg(long, alias = "study")]
    pub storage: Option<String>,
    /// The study's name in the storage (Optuna's `study_name`).
    #[arg(long, default_value = sentiment_search::DEFAULT_STUDY_NAME)]
    pub study_name: String,
}
