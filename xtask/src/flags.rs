//! Command-line flags of `cargo xtask`: the stage commands of `roberta-sentiment`
//! ([`roberta_sentiment::flags::Command`]) and what only developers run.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use roberta_sentiment::flags::{BackendFlag, DTypeFlag, DeviceOptions};

/// Fine-tune RoBERTa for tweet sentiment, from CSV to report, without Python: the stages
/// (as the `roberta-sentiment` binary runs them) and the developers' tools.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about)]
pub struct Xtask {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The stages and the developers' tools.
#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the stage flags does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// The stages.
    #[command(flatten)]
    Stage(roberta_sentiment::flags::Command),
    /// Check a backend against the transformers / PyTorch references: the fixture models'
    /// logits and six training steps (what the parity tests check on the default backend).
    Parity(ParityArgs),
    /// Regenerate the bundled data fixtures (or check them with --check).
    Fixtures {
        /// Fail if a bundled fixture differs from what the generator makes.
        #[arg(long)]
        check: bool,
    },
    /// Benchmarks against the Python reference.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        command: BenchCommand,
    },
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Data preparation of a Sentiment140-shaped file against pandas + scikit-learn + pyarrow.
    Prepare(BenchPrepareArgs),
    /// Batch encoding of tweets against Python `tokenizers` and `transformers`.
    Tokenize(BenchTokenizeArgs),
    /// Model inference (batch 32, length 64) against PyTorch + transformers on the same threads.
    Model(BenchModelArgs),
    /// Our TPE against Optuna's (and random search) on test functions, through ask/tell.
    Search(BenchSearchArgs),
    /// Validation F1 after fine-tuning with and without masked-LM pre-training, at about the
    /// same CPU time, on the bundled sample.
    Pretrain(BenchPretrainArgs),
    /// The whole `train` command against transformers' Trainer `train()` on the same rows from
    /// the same initial weights, with the notebook's batching and with length-aware batching.
    Train(BenchTrainArgs),
    /// A Sentiment140-sized run in bounded memory: prepare, tokenize and `train` a fixed
    /// number of steps with --eval-steps on a synthetic 1.6M-row file, each stage's peak RSS
    /// against the same training on a small sample (the model's own footprint).
    FullScale(BenchFullScaleArgs),
    /// One timed side of `bench model` (run by it in a child process).
    #[command(hide = true)]
    ModelWorker(ModelWorkerArgs),
}

/// Flags of `cargo xtask bench pretrain`.
#[derive(Debug, Args)]
pub struct BenchPretrainArgs {
    /// Sentiment140 CSV (raw or cleaned). Default: the bundled sample.
    #[arg(long, alias = "data")]
    pub input: Option<PathBuf>,
    /// Stratified sample of N rows of it.
    #[arg(long)]
    pub sample: Option<usize>,
    /// Work folder (cleared first).
    #[arg(long, default_value = "target/bench/pretrain")]
    pub work_dir: PathBuf,
    /// Fine-tuning epochs of the run from scratch.
    #[arg(long, default_value_t = 8)]
    pub baseline_epochs: usize,
    /// Pre-training epochs of the other run.
    #[arg(long, default_value_t = 3)]
    pub pretrain_epochs: usize,
    /// Its fine-tuning epochs.
    #[arg(long, default_value_t = 4)]
    pub finetune_epochs: usize,
    /// Fine-tuning learning rate of both runs.
    #[arg(long, default_value_t = 5e-4)]
    pub learning_rate: f64,
    /// Seed of everything.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Flags of `cargo xtask bench train`.
#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Sentiment140 CSV (raw or cleaned). Default: the bundled sample.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Stratified sample of N rows of it.
    #[arg(long)]
    pub sample: Option<usize>,
    /// The initial weights of both sides: a Hugging Face folder. Default: a model of
    /// `--config` that our `train` initialises randomly (one step, so that it writes the
    /// folder) with a tokenizer trained on the split.
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// Model preset of the default initial model.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Epochs of each run.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Learning rate of each run (a randomly initialised tiny model learns nothing in three
    /// epochs at the Trainer's 5e-5; pass that with `--pretrained`).
    #[arg(long, default_value_t = 5e-4)]
    pub learning_rate: f64,
    /// Threads of each side.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Seed of every run.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Python with torch, transformers, accelerate and pyarrow.
    #[arg(long, env = "BENCH_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// Work folder (cleared first).
    #[arg(long, default_value = "target/bench/train")]
    pub work_dir: PathBuf,
}

/// Flags of `cargo xtask bench full-scale`.
#[derive(Debug, Args)]
pub struct BenchFullScaleArgs {
    /// Rows of the synthetic Sentiment140-shaped input.
    #[arg(long, default_value_t = 1_600_000)]
    pub rows: usize,
    /// Rows of the sample that measures the model's own training footprint.
    #[arg(long, default_value_t = 20_000)]
    pub footprint_rows: usize,
    /// Model preset.
    #[arg(long, default_value = "small")]
    pub config: String,
    /// Optimizer steps of each training run.
    #[arg(long, default_value_t = 40)]
    pub max_steps: usize,
    /// Evaluation interval of each training run.
    #[arg(long, default_value_t = 20)]
    pub eval_steps: usize,
    /// Train, validation and test ratios (small held-out splits keep the evaluations of the
    /// small model short; the training split is what memory must not grow with).
    #[arg(long, value_delimiter = ',', default_values_t = [0.98, 0.01, 0.01])]
    pub ratios: Vec<f64>,
    /// Work folder (kept: the generated input is reused).
    #[arg(long, default_value = "target/bench/full-scale")]
    pub work_dir: PathBuf,
}

/// Flags of `cargo xtask parity`.
#[derive(Debug, Args)]
pub struct ParityArgs {
    /// The backend and device.
    #[command(flatten)]
    pub device: DeviceOptions,
}

/// Flags of `cargo xtask bench prepare`.
#[derive(Debug, Args)]
pub struct BenchPrepareArgs {
    /// Rows of the generated Sentiment140-shaped input.
    #[arg(long, default_value_t = 1_600_000)]
    pub rows: usize,
    /// Timed runs of each side; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Python with pandas, pyarrow and scikit-learn for the reference side.
    #[arg(long, env = "BENCH_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// Work folder for the input and outputs.
    #[arg(long, default_value = "target/bench/prepare")]
    pub work_dir: PathBuf,
}

/// Flags of `cargo xtask bench tokenize`.
#[derive(Debug, Args)]
pub struct BenchTokenizeArgs {
    /// Tweets to encode.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Timed runs of each side; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Threads for both sides (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Python with `tokenizers` and `transformers` for the reference side.
    #[arg(long, env = "BENCH_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// Work folder.
    #[arg(long, default_value = "target/bench/tokenize")]
    pub work_dir: PathBuf,
}

/// How the CPU backend's bf16 products run (`bench model-worker --bf16-products`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Bf16ProductsFlag {
    /// AVX512-BF16's `vdpbf16ps` (refused on a CPU without it).
    Native,
    /// `vdpbf16ps`'s order of sums in plain Rust.
    Portable,
    /// f32 products of the bf16-rounded operands.
    RoundedF32,
    /// AMX's tile products (refused on a CPU without AMX, or where the operating system does
    /// not grant its tile state).
    Amx,
}

impl From<Bf16ProductsFlag> for roberta_burn::kernels::Bf16Products {
    fn from(flag: Bf16ProductsFlag) -> Self {
        match flag {
            Bf16ProductsFlag::Native => Self::Native,
            Bf16ProductsFlag::Portable => Self::Portable,
            Bf16ProductsFlag::RoundedF32 => Self::RoundedF32,
            Bf16ProductsFlag::Amx => Self::Amx,
        }
    }
}

/// Model shapes of the benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShapeFlag {
    /// Hidden 64, 2 layers, 2 heads, FFN 256, vocabulary 1,000: so little arithmetic that a
    /// step's time is the per-operation overhead (dispatch, autodiff bookkeeping), which is what
    /// bounds a GPU step when its kernels are small.
    Tiny,
    /// Hidden 256, 4 layers, 4 heads, FFN 1024, vocabulary 8,000.
    Small,
    /// roberta-base: 768, 12, 12, 3,072, vocabulary 50,265.
    Base,
}

/// Flags of `cargo xtask bench model`.
#[derive(Debug, Args)]
pub struct BenchModelArgs {
    /// Shapes to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [ShapeFlag::Small, ShapeFlag::Base])]
    pub shapes: Vec<ShapeFlag>,
    /// Thread counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2])]
    pub threads: Vec<usize>,
    /// Python with torch and transformers for the reference side.
    #[arg(long, env = "BENCH_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// Time training steps (forward, backward, clipping, AdamW) instead of inference.
    #[arg(long)]
    pub train: bool,
    /// The backend and device.
    #[command(flatten)]
    pub device: DeviceOptions,
    /// Float type on both sides (PyTorch: autocast for bf16 / f16, as the Trainer does).
    #[arg(long, value_enum, default_value_t = DTypeFlag::F32)]
    pub dtype: DTypeFlag,
    /// Timed iterations (default: a few seconds of CPU work per shape).
    #[arg(long)]
    pub iters: Option<usize>,
    /// PyTorch's device: `cpu`, or `cuda` to compare with a GPU backend.
    #[arg(long, default_value = "cpu")]
    pub python_device: String,
    /// Sequences per step (the notebook's 32). Small batches of the tiny shape make a step's
    /// time the per-operation overhead, the regime of a GPU.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Text lengths: every row 64 tokens, or drawn from real tweets' distribution (mean 32 of
    /// 64), which times fixed and dynamic padding side by side on both sides.
    #[arg(long, value_enum, default_value_t = LengthsFlag::Fixed)]
    pub lengths: LengthsFlag,
    /// Rounds per row, the sides run in turn in each: every cell is the median of its rounds
    /// (peak RSS the largest), so that a neighbour's load during one side's run moves the
    /// ratio less.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
}

/// `--lengths` of `bench model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LengthsFlag {
    /// Every row fills the 64 tokens.
    Fixed,
    /// Lengths drawn from real tweets' distribution (mean 31.8, median 32, 90th percentile 46,
    /// 99th 59, 0.25% cut at 64).
    Tweets,
}

/// `--padding` of the hidden `bench model-worker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PaddingFlag {
    /// Every batch padded to 64 in the shuffled order (the notebook).
    Fixed,
    /// Batches length-grouped and padded to their longest row, rounded up to 8.
    Dynamic,
}

/// Flags of the hidden `bench model-worker`.
#[derive(Debug, Args)]
pub struct ModelWorkerArgs {
    /// Shape.
    #[arg(long, value_enum)]
    pub shape: ShapeFlag,
    /// A model's `config.json` to time instead of the shape's preset (`bench train` times the
    /// step alone on the model its `train` runs).
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Timed iterations.
    #[arg(long)]
    pub iters: usize,
    /// Time training steps instead of inference.
    #[arg(long)]
    pub train: bool,
    /// The backend and device.
    #[command(flatten)]
    pub device: DeviceOptions,
    /// Float type.
    #[arg(long, value_enum, default_value_t = DTypeFlag::F32)]
    pub dtype: DTypeFlag,
    /// Parts of a training step to time, to see where its time goes.
    #[arg(long, value_enum, default_value_t = StepParts::Full)]
    pub parts: StepParts,
    /// The optimizer of a training step.
    #[arg(long, value_enum, default_value_t = OptimizerFlag::Flat)]
    pub optimizer: OptimizerFlag,
    /// Sequences per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Burn's linear, layer norm, softmax and dropout instead of the model's fused operations
    /// (A/B).
    #[arg(long)]
    pub composed_ops: bool,
    /// Burn's attention (its scaled-dot-product attention, or composed from its operations
    /// under autodiff) instead of the fused kernels, the CPU backend's or libtorch's (A/B).
    #[arg(long)]
    pub composed_attention: bool,
    /// How `--dtype bf16`'s products run on the CPU backend (A/B; default: as this CPU's do).
    #[arg(long, value_enum)]
    pub bf16_products: Option<Bf16ProductsFlag>,
    /// A JSON list of row lengths (an epoch): `--iters` batches spread over it are timed
    /// instead of `--iters` copies of one full batch.
    #[arg(long)]
    pub lengths_file: Option<PathBuf>,
    /// `tweets`: the epoch of real tweets' lengths that `bench model --lengths tweets` draws
    /// for this shape and batch, as if given with `--lengths-file` (to profile a row of its
    /// table alone).
    #[arg(long, value_enum, default_value_t = LengthsFlag::Fixed, conflicts_with = "lengths_file")]
    pub lengths: LengthsFlag,
    /// How the rows of `--lengths-file` are batched.
    #[arg(long, value_enum, default_value_t = PaddingFlag::Dynamic)]
    pub padding: PaddingFlag,
}

/// `--optimizer`: which AdamW `bench model-worker --train` steps with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerFlag {
    /// `sentiment_train::FlatAdamW`, clipping included (what the trainer uses).
    Flat,
    /// Burn's per-tensor `AdamW` after `sentiment_train::clip_grad_norm` (the trainer's until
    /// run version 2).
    Burn,
}

/// `--parts`: how much of a training step `bench model-worker --train` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StepParts {
    /// Forward and backward only.
    ForwardBackward,
    /// Forward, backward and gradient clipping (with `--optimizer burn`; the flat optimizer
    /// clips inside its step).
    Clip,
    /// Forward, backward, clipping and the AdamW step (what the trainer does).
    Full,
}

/// Flags of `cargo xtask bench search`.
#[derive(Debug, Args)]
pub struct BenchSearchArgs {
    /// Seeds per problem and sampler.
    #[arg(long, default_value_t = 30)]
    pub seeds: usize,
    /// Python with optuna for the reference side.
    #[arg(long, env = "BENCH_PYTHON", default_value = "python3")]
    pub python: PathBuf,
}
