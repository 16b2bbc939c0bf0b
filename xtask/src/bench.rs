//! `cargo xtask bench …`: our stages against the Python reference, in the same run, as ratios.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::flags::BenchPrepareArgs;
use crate::synth::{Layout, TweetGenerator};

/// Wall time and peak resident memory of one child process.
#[derive(Debug, Clone, Copy)]
pub struct Measurement {
    /// Elapsed wall-clock time.
    pub wall: Duration,
    /// Peak resident set size in bytes.
    pub peak_rss: u64,
    /// User plus system CPU time.
    pub cpu: Duration,
}

/// Runs `command` to completion and measures it (peak RSS from `wait4`, so per child).
pub fn measure(command: &mut Command) -> Result<Measurement> {
    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain old data; wait4 fills it for our own child `pid`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    if waited != pid {
        bail!(
            "wait4 on {command:?} failed: {}",
            std::io::Error::last_os_error()
        );
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{command:?} failed with status {status}");
    }
    let seconds = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Measurement {
        wall,
        peak_rss: usage.ru_maxrss as u64 * 1024,
        cpu: seconds(usage.ru_utime) + seconds(usage.ru_stime),
    })
}

fn median(mut runs: Vec<Measurement>) -> Measurement {
    runs.sort_by_key(|m| m.wall);
    let wall = runs[runs.len() / 2].wall;
    let peak_rss = runs.iter().map(|m| m.peak_rss).max().unwrap_or_default();
    let cpu = runs[runs.len() / 2].cpu;
    Measurement {
        wall,
        peak_rss,
        cpu,
    }
}

/// `cargo xtask bench prepare`.
pub struct BenchPrepare {
    rows: usize,
    repeat: usize,
    python: PathBuf,
    work_dir: PathBuf,
}

impl From<BenchPrepareArgs> for BenchPrepare {
    fn from(args: BenchPrepareArgs) -> Self {
        Self {
            rows: args.rows,
            repeat: args.repeat.max(1),
            python: args.python,
            work_dir: args.work_dir,
        }
    }
}

impl BenchPrepare {
    /// Generates the input (once), times both sides alternately, prints a Markdown table.
    pub fn run(&self) -> Result<()> {
        print_cpu();
        std::fs::create_dir_all(&self.work_dir)?;
        let input = self
            .work_dir
            .join(format!("sentiment140_{}.csv", self.rows));
        if !input.exists() {
            eprintln!("generating {} ({} rows)…", input.display(), self.rows);
            generate_raw(&input, self.rows)?;
        }
        let bytes = std::fs::metadata(&input)?.len();
        let script = crate::project_root().join("xtask/bench/prepare_reference.py");
        let ours_out = self.work_dir.join("out-rust");
        let python_out = self.work_dir.join("out-python");
        let exe = std::env::current_exe()?;
        let mut ours = Vec::new();
        let mut python = Vec::new();
        for run in 1..=self.repeat {
            eprintln!("run {run}/{}", self.repeat);
            ours.push(measure(
                Command::new(&exe)
                    .args(["prepare", "--quiet", "--input"])
                    .arg(&input)
                    .arg("--out")
                    .arg(&ours_out),
            )?);
            python.push(measure(
                Command::new(&self.python)
                    .arg(&script)
                    .arg("--input")
                    .arg(&input)
                    .arg("--out")
                    .arg(&python_out)
                    .stdout(std::process::Stdio::null()),
            )?);
        }
        let (ours, python) = (median(ours), median(python));
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!(
            "input: {} rows, {:.0} MiB; median of {} runs each; {} cores",
            self.rows,
            mib(bytes),
            self.repeat,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        println!("| side | wall s | peak RSS MiB |");
        println!("|---|---|---|");
        println!(
            "| ours (`cargo xtask prepare`) | {:.2} | {:.0} |",
            ours.wall.as_secs_f64(),
            mib(ours.peak_rss)
        );
        println!(
            "| pandas + scikit-learn + pyarrow | {:.2} | {:.0} |",
            python.wall.as_secs_f64(),
            mib(python.peak_rss)
        );
        println!(
            "| ratio (Python time / ours) | {:.2}x | {:.2}x less memory |",
            python.wall.as_secs_f64() / ours.wall.as_secs_f64(),
            python.peak_rss as f64 / ours.peak_rss.max(1) as f64
        );
        Ok(())
    }
}

/// Writes a raw-layout Sentiment140-shaped file: balanced classes, no neutral row, like the
/// real training file.
fn generate_raw(path: &Path, rows: usize) -> Result<()> {
    let temp = path.with_extension("csv.partial");
    let mut out = BufWriter::new(std::fs::File::create(&temp)?);
    TweetGenerator::new(1_600_000, Layout::Raw, 0.0).write_rows(&mut out, rows)?;
    out.flush()?;
    drop(out);
    std::fs::rename(&temp, path)?;
    Ok(())
}

/// `cargo xtask bench tokenize`.
pub struct BenchTokenize {
    rows: usize,
    repeat: usize,
    threads: usize,
    python: PathBuf,
    work_dir: PathBuf,
}

impl From<crate::flags::BenchTokenizeArgs> for BenchTokenize {
    fn from(args: crate::flags::BenchTokenizeArgs) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            rows: args.rows,
            repeat: args.repeat.max(1),
            threads: args.threads.unwrap_or(cores),
            python: args.python,
            work_dir: args.work_dir,
        }
    }
}

impl BenchTokenize {
    /// Generates tweets and a tokenizer (once), then times both sides on the same threads.
    pub fn run(&self) -> Result<()> {
        use sentiment_tokenize::{BpeTrainingConfig, RobertaTokenizer};
        print_cpu();
        std::fs::create_dir_all(&self.work_dir)?;
        let texts_path = self.work_dir.join(format!("tweets_{}.txt", self.rows));
        let tokenizer_dir = self.work_dir.join("tokenizer");
        let mut generator = TweetGenerator::new(1_000_000, Layout::Cleaned, 0.0);
        let texts: Vec<String> = (0..self.rows).map(|_| generator.tweet().1).collect();
        if !texts_path.exists() {
            let mut joined = texts.join("\n");
            joined.push('\n');
            std::fs::write(&texts_path, joined)?;
        }
        if !tokenizer_dir.join("tokenizer.json").exists() {
            eprintln!("training an 8,000-token BPE on 100,000 of the tweets…");
            let sample = &texts[..texts.len().min(100_000)];
            RobertaTokenizer::train(sample, &BpeTrainingConfig::default(), 64)?
                .save(&tokenizer_dir)?;
        }
        let tokenizer = RobertaTokenizer::from_folder(&tokenizer_dir, 64)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads)
            .build()?;
        let mut ours = Vec::new();
        let mut python: Vec<serde_json::Value> = Vec::new();
        let script = crate::project_root().join("xtask/bench/tokenize_reference.py");
        for run in 1..=self.repeat {
            eprintln!("run {run}/{}", self.repeat);
            let started = Instant::now();
            let encoded = pool.install(|| tokenizer.encode_batch(&texts))?;
            ours.push(started.elapsed().as_secs_f64());
            assert_eq!(encoded.len(), texts.len());
            let output = Command::new(&self.python)
                .arg(&script)
                .arg("--texts")
                .arg(&texts_path)
                .arg("--tokenizer")
                .arg(&tokenizer_dir)
                .env("RAYON_NUM_THREADS", self.threads.to_string())
                .env("TOKENIZERS_PARALLELISM", "true")
                .output()
                .with_context(|| format!("running {}", self.python.display()))?;
            if !output.status.success() {
                bail!(
                    "reference failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            python.push(serde_json::from_slice(&output.stdout)?);
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let ours = median(ours);
        println!(
            "{} tweets, max length 64, vocabulary {}, {} threads, median of {} runs",
            self.rows,
            tokenizer.vocab_size(),
            self.threads,
            self.repeat
        );
        println!("| side | seconds | tweets/s | ratio (their time / ours) |");
        println!("|---|---|---|---|");
        println!(
            "| ours (`RobertaTokenizer::encode_batch`) | {ours:.2} | {:.0} | 1.00x |",
            self.rows as f64 / ours
        );
        for key in [
            "tokenizers_encode_batch_fast",
            "tokenizers_encode_batch",
            "transformers_call",
        ] {
            let times: Vec<f64> = python.iter().filter_map(|p| p[key].as_f64()).collect();
            if times.is_empty() {
                continue;
            }
            let t = median(times);
            println!(
                "| Python `{key}` | {t:.2} | {:.0} | {:.2}x |",
                self.rows as f64 / t,
                t / ours
            );
        }
        Ok(())
    }
}

/// Sequence length of the model benchmarks (the notebook's; `--batch` defaults to its 32).
const BENCH_SEQ: usize = 64;

fn shape_config(shape: crate::flags::ShapeFlag) -> roberta_burn::RobertaConfig {
    use crate::flags::ShapeFlag;
    let (name, vocab) = match shape {
        ShapeFlag::Tiny => ("tiny", 1_000),
        ShapeFlag::Small => ("small", 8_000),
        ShapeFlag::Base => ("base", 50_265),
    };
    let mut config = roberta_burn::RobertaConfig::preset(name, vocab).expect("known preset");
    config.max_position_embeddings = BENCH_SEQ + 2;
    config
}

fn shape_name(shape: crate::flags::ShapeFlag) -> &'static str {
    match shape {
        crate::flags::ShapeFlag::Tiny => "tiny",
        crate::flags::ShapeFlag::Small => "small",
        crate::flags::ShapeFlag::Base => "base",
    }
}

/// Timed iterations per shape, enough for a few seconds of work on one core.
fn iterations(shape: crate::flags::ShapeFlag) -> usize {
    match shape {
        crate::flags::ShapeFlag::Tiny => 200,
        crate::flags::ShapeFlag::Small => 20,
        crate::flags::ShapeFlag::Base => 3,
    }
}

/// `bench model-worker`: times our inference in this process and prints one JSON line.
pub fn model_worker(args: &crate::flags::ModelWorkerArgs) -> Result<()> {
    // The A/B switches: which of the model's kernels this worker's model runs.
    let kernels = roberta_burn::kernels::Kernels {
        fused_ops: !args.composed_ops,
        fused_attention: !args.composed_attention,
        bf16_products: args.bf16_products.map(Into::into),
    };
    roberta_burn::kernels::with(kernels, || model_worker_with(args)).map_err(|reason| {
        anyhow::anyhow!(
            "--bf16-products {}: this CPU cannot run it: {reason} ({})",
            args.bf16_products.map(flag_name).unwrap_or_default(),
            roberta_burn::autocast::Bf16Support::detect().describe()
        )
    })?
}

/// [`model_worker`] inside its choice of kernels.
fn model_worker_with(args: &crate::flags::ModelWorkerArgs) -> Result<()> {
    let config = match &args.config_file {
        Some(path) => roberta_burn::RobertaConfig::load(path)?,
        None => shape_config(args.shape),
    };
    // bf16 on the CPU backend is mixed precision, as PyTorch's autocast on the other side: f32
    // parameters, the linear layers' products from bf16 operands.
    let autocast = args.device.backend == crate::flags::BackendFlag::Flex
        && args.dtype == crate::flags::DTypeFlag::Bf16;
    if autocast {
        let device = crate::device(args.device.backend, args.device.device_index)?;
        // Inference packs each weight once, as PyTorch's autocast keeps its bf16 weights for
        // the whole timed loop; training steps take no part in it (they run on autodiff).
        return roberta_burn::autocast::bf16(true, || {
            roberta_burn::autocast::reuse_weights(|| time_model(&config, args, device))
        });
    }
    let device =
        crate::device_with_dtype(args.device.backend, args.device.device_index, args.dtype)?;
    time_model(&config, args, device)
}

/// The timing of [`model_worker`] on `device`.
fn time_model(
    config: &roberta_burn::RobertaConfig,
    args: &crate::flags::ModelWorkerArgs,
    device: burn::tensor::Device,
) -> Result<()> {
    if args.train {
        let device = device.autodiff();
        let batches = worker_batches(config, args, 3, &device)?;
        return train_worker(config, &batches, args, device);
    }
    let model = roberta_burn::RobertaForSequenceClassification::new(config, &device);
    let batches = worker_batches(config, args, 2, &device)?;
    // `into_scalar` waits for the device, so GPU work is timed to its end.
    let run = |batch: &BenchBatch| -> Result<f32> {
        let logits = model.forward(batch.ids.clone(), batch.mask.clone());
        Ok(logits.sum().into_scalar())
    };
    // All batches in one job of the CPU backend's thread pool, as the trainer's evaluation
    // runs them.
    let run_all = |batches: &[BenchBatch]| {
        roberta_burn::in_thread_pool(&device, || {
            batches.iter().try_for_each(|b| run(b).map(drop))
        })
    };
    run_all(&batches.warmup)?;
    let started = Instant::now();
    run_all(&batches.timed)?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({ "samples_per_s": batches.rows as f64 / elapsed })
    );
    Ok(())
}

/// One batch of a worker, on its device.
#[derive(Clone)]
struct BenchBatch {
    ids: burn::tensor::Tensor<2, burn::tensor::Int>,
    mask: burn::tensor::Tensor<2, burn::tensor::Int>,
    labels: burn::tensor::Tensor<1, burn::tensor::Int>,
}

/// What a worker runs: warm-up batches, then the timed ones, which hold `rows` rows in all.
struct WorkerBatches {
    warmup: Vec<BenchBatch>,
    timed: Vec<BenchBatch>,
    rows: usize,
}

/// The `k`-th of the batches a benchmark times out of `n`: the fractional part of `k` times the
/// golden ratio, scaled to `n` (0 first); `xtask/bench/model_reference.py` picks the same.
fn spread(k: usize, n: usize) -> usize {
    const GOLDEN: f64 = 0.618_033_988_749_894_9;
    ((k as f64 * GOLDEN).fract() * n as f64) as usize
}

/// Random token rows for a worker. Without `--lengths-file`: one full batch of 64-token rows,
/// `warmup` then `--iters` times. With it: one pass over rows of those lengths (`<s> … </s>`
/// then `<pad>`), in a seeded shuffled order padded to 64 (`--padding fixed`), or length-grouped
/// and padded to each batch's longest row rounded up to 8 (`--padding dynamic`), through the
/// same functions the trainer uses.
fn worker_batches(
    config: &roberta_burn::RobertaConfig,
    args: &crate::flags::ModelWorkerArgs,
    warmup: usize,
    device: &burn::tensor::Device,
) -> Result<WorkerBatches> {
    use burn::tensor::{Int, Tensor, TensorData};
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use sentiment_tokenize::{Padding, gather_rows, group_by_length};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let vocab = config.vocab_size as u32;
    let tensors = |ids: Vec<i64>, mask: Vec<i64>, rows: usize, width: usize| BenchBatch {
        ids: Tensor::<2, Int>::from_data(TensorData::new(ids, [rows, width]), device),
        mask: Tensor::<2, Int>::from_data(TensorData::new(mask, [rows, width]), device),
        labels: Tensor::<1, Int>::from_data(
            TensorData::new((0..rows as i64).map(|i| i % 2).collect::<Vec<_>>(), [rows]),
            device,
        ),
    };
    let lengths = match (&args.lengths_file, args.lengths) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let lengths: Vec<usize> = serde_json::from_str(&text)
                .with_context(|| format!("{}: expected a JSON list of lengths", path.display()))?;
            anyhow::ensure!(!lengths.is_empty(), "{}: no lengths", path.display());
            Some(lengths)
        }
        (None, crate::flags::LengthsFlag::Tweets) => Some(tweet_epoch(args.shape, args.batch)),
        (None, crate::flags::LengthsFlag::Fixed) => None,
    };
    let Some(lengths) = lengths else {
        let mut ids: Vec<i64> = (0..args.batch * BENCH_SEQ)
            .map(|_| i64::from(rng.random_range(3..vocab)))
            .collect();
        for row in ids.chunks_mut(BENCH_SEQ) {
            row[0] = 0;
            row[BENCH_SEQ - 1] = 2;
        }
        let batch = tensors(ids, vec![1; args.batch * BENCH_SEQ], args.batch, BENCH_SEQ);
        return Ok(WorkerBatches {
            warmup: vec![batch.clone(); warmup],
            timed: vec![batch; args.iters],
            rows: args.batch * args.iters,
        });
    };
    let n = lengths.len();
    let mut input_ids = vec![1u32; n * BENCH_SEQ];
    let mut attention = vec![0u8; n * BENCH_SEQ];
    for (r, &length) in lengths.iter().enumerate() {
        let length = length.clamp(2, BENCH_SEQ);
        for j in 0..length {
            input_ids[r * BENCH_SEQ + j] = match j {
                0 => 0,
                j if j == length - 1 => 2,
                _ => rng.random_range(3..vocab),
            };
            attention[r * BENCH_SEQ + j] = 1;
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let padding = match args.padding {
        crate::flags::PaddingFlag::Fixed => Padding::FIXED,
        crate::flags::PaddingFlag::Dynamic => {
            order = group_by_length(&order, &lengths, args.batch);
            Padding::default()
        }
    };
    // The epoch's batches, of which `--iters` are timed: a sample of a whole epoch's widths
    // (the first, longest, batch included) without timing every step. Picked at the golden
    // ratio's multiples rather than a fixed stride, which could fall on the same place in each
    // sorted mega-batch (a stride of 50 batches: always the longest).
    let all: Vec<&[usize]> = order.chunks(args.batch).collect();
    let picked: Vec<&[usize]> = (0..args.iters.min(all.len()))
        .map(|k| all[spread(k, all.len())])
        .collect();
    let batches: Vec<BenchBatch> = picked
        .iter()
        .map(|rows| {
            let width = padding.width(rows.iter().map(|&i| lengths[i]), BENCH_SEQ);
            let (ids, mask) = gather_rows(&input_ids, &attention, BENCH_SEQ, rows, width);
            tensors(ids, mask, rows.len(), width)
        })
        .collect();
    Ok(WorkerBatches {
        warmup: batches.iter().take(warmup).cloned().collect(),
        rows: picked.iter().map(|b| b.len()).sum(),
        timed: batches,
    })
}

/// Times training steps: forward, backward, global-norm clipping and AdamW, as the trainer does
/// (or the parts `args.parts` names, with the optimizer `args.optimizer` names).
fn train_worker(
    config: &roberta_burn::RobertaConfig,
    batches: &WorkerBatches,
    args: &crate::flags::ModelWorkerArgs,
    device: burn::tensor::Device,
) -> Result<()> {
    use crate::flags::{OptimizerFlag, StepParts};
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::optim::AdamWConfig;
    let parts = args.parts;
    if parts == StepParts::Clip && args.optimizer == OptimizerFlag::Flat {
        bail!("--parts clip needs --optimizer burn: the flat optimizer clips inside its step");
    }
    let mut model = roberta_burn::RobertaForSequenceClassification::new(config, &device);
    let mut burn_adamw = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.0)
        .init();
    let mut flat_adamw = sentiment_train::FlatAdamW::new(sentiment_train::AdamWSettings {
        max_grad_norm: 1.0,
        ..Default::default()
    });
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let loss = |model: &roberta_burn::RobertaForSequenceClassification, batch: &BenchBatch| {
        loss_fn.forward(
            model.forward(batch.ids.clone(), batch.mask.clone()),
            batch.labels.clone(),
        )
    };
    let mut step =
        |model: roberta_burn::RobertaForSequenceClassification, batch: &BenchBatch| -> Result<_> {
            let items = batch.labels.dims()[0];
            let batches = vec![sentiment_train::MicroBatch { items, batch }];
            if parts == StepParts::Full && args.optimizer == OptimizerFlag::Flat {
                // The trainer's own step.
                let (model, stepped) =
                    sentiment_train::train_step(model, &mut flat_adamw, 2e-5, batches, loss)?;
                // As the trainer does: the loss is read once the step is queued, which on a
                // GPU waits for the step to finish (PyTorch's side reads it at the same point).
                let _ = stepped.map(|stepped| stepped.loss());
                return Ok(model);
            }
            // Parts of a step, or Burn's AdamW, for A/B: the trainer's gradients.
            let (mut grads, losses) =
                sentiment_train::gradients(&model, batches, loss).expect("one batch");
            let model = if parts == StepParts::ForwardBackward {
                model
            } else if args.optimizer == OptimizerFlag::Flat {
                flat_adamw.step(2e-5, model, grads)?.0
            } else {
                sentiment_train::clip_grad_norm(&model, &mut grads, 1.0);
                if parts == StepParts::Clip {
                    model
                } else {
                    burn_adamw.step(2e-5, model, grads)
                }
            };
            let _: f32 = losses[0].clone().into_scalar();
            Ok(model)
        };
    // Each step is one job of the CPU backend's thread pool, as the trainer runs it.
    let mut step = |model, batch| roberta_burn::in_thread_pool(&device, || step(model, batch));
    // Warm-up: allocation pools and, on GPU backends, kernel compilation and autotuning.
    for batch in &batches.warmup {
        model = step(model, batch)?;
    }
    let started = Instant::now();
    for batch in &batches.timed {
        model = step(model, batch)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(model);
    println!(
        "{}",
        serde_json::json!({ "samples_per_s": batches.rows as f64 / elapsed })
    );
    Ok(())
}

/// The epoch of real tweets' lengths that `--lengths tweets` times for `shape`: 400 batches,
/// mega-batches of 50 batches as the Trainer's sampler forms them on any real data set.
fn tweet_epoch(shape: crate::flags::ShapeFlag, batch: usize) -> Vec<usize> {
    crate::synth::tweet_lengths(400 * batch, shape as u64, BENCH_SEQ)
}

/// Runs `command`, measuring it, and parses the JSON line it prints.
fn measure_json(command: &mut Command) -> Result<(Measurement, serde_json::Value)> {
    let out = tempfile::Builder::new().prefix("bench-out-").tempfile()?;
    let measurement = measure(command.stdout(out.reopen()?))?;
    let text = std::fs::read_to_string(out.path())?;
    let line = text.lines().last().unwrap_or_default();
    let value = serde_json::from_str(line)
        .with_context(|| format!("parsing the output of {command:?}: {text:?}"))?;
    Ok((measurement, value))
}

/// A flag value as it is written on the command line.
fn flag_name(value: impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

/// Each side's median samples/s over `runs` (a round each: every side's measurement and JSON
/// line) and its largest peak RSS in MiB.
fn medians<const N: usize>(runs: &[[(Measurement, serde_json::Value); N]]) -> [(f64, f64); N] {
    std::array::from_fn(|side| {
        let mut rates: Vec<f64> = runs
            .iter()
            .map(|run| run[side].1["samples_per_s"].as_f64().unwrap_or(f64::NAN))
            .collect();
        rates.sort_by(f64::total_cmp);
        let peak = runs.iter().map(|run| run[side].0.peak_rss).max();
        (
            rates.get(rates.len() / 2).copied().unwrap_or(f64::NAN),
            peak.unwrap_or_default() as f64 / (1024.0 * 1024.0),
        )
    })
}

/// `cargo xtask bench model`.
pub struct BenchModel {
    shapes: Vec<crate::flags::ShapeFlag>,
    threads: Vec<usize>,
    python: PathBuf,
    train: bool,
    backend: crate::flags::BackendFlag,
    device_index: usize,
    dtype: crate::flags::DTypeFlag,
    iters: Option<usize>,
    python_device: String,
    batch: usize,
    lengths: crate::flags::LengthsFlag,
    rounds: usize,
}

impl From<crate::flags::BenchModelArgs> for BenchModel {
    fn from(args: crate::flags::BenchModelArgs) -> Self {
        Self {
            shapes: args.shapes,
            threads: args.threads,
            python: args.python,
            train: args.train,
            backend: args.device.backend,
            device_index: args.device.device_index,
            dtype: args.dtype,
            iters: args.iters,
            python_device: args.python_device,
            batch: args.batch,
            lengths: args.lengths,
            rounds: args.rounds as usize,
        }
    }
}

impl BenchModel {
    /// Times ours and PyTorch's inference back to back per shape and thread count.
    pub fn run(&self) -> Result<()> {
        print_cpu();
        if self.dtype == crate::flags::DTypeFlag::Bf16
            && self.backend == crate::flags::BackendFlag::Flex
        {
            // Which kernel ran the products decides the bf16 rows as much as the CPU does.
            println!(
                "{}",
                roberta_burn::autocast::Bf16Support::detect().describe()
            );
        }
        if self.lengths == crate::flags::LengthsFlag::Tweets {
            return self.run_tweet_lengths();
        }
        let (backend, dtype) = (flag_name(self.backend), flag_name(self.dtype));
        println!(
            "{}, batch {}, length {BENCH_SEQ}, random weights, {dtype}; samples/s (peak RSS \
             MiB){}",
            self.what(),
            self.batch,
            self.rounds_note()
        );
        println!(
            "| shape | threads | ours ({backend}) | PyTorch eager ({}) | ratio ours / PyTorch |",
            self.python_device
        );
        println!("|---|---|---|---|---|");
        for &shape in &self.shapes {
            for &threads in &self.threads {
                let iters = self.iterations(shape);
                let [(a, ours_mib), (b, py_mib)] = self.in_rounds(|| {
                    Ok([
                        measure_json(&mut self.ours(shape, iters, threads)?)?,
                        measure_json(&mut self.pytorch(shape, iters, threads))?,
                    ])
                })?;
                println!(
                    "| {} | {threads} | {a:.1} ({ours_mib:.0}) | {b:.1} ({py_mib:.0}) | {:.2}x |",
                    shape_name(shape),
                    a / b
                );
            }
        }
        Ok(())
    }
}

impl BenchModel {
    /// Runs `sides` (each side's measurement and JSON line) for every round and returns each
    /// side's median samples/s and largest peak RSS in MiB.
    fn in_rounds<const N: usize>(
        &self,
        mut sides: impl FnMut() -> Result<[(Measurement, serde_json::Value); N]>,
    ) -> Result<[(f64, f64); N]> {
        let mut runs = Vec::with_capacity(self.rounds);
        for round in 1..=self.rounds {
            if self.rounds > 1 {
                eprintln!("round {round}/{}", self.rounds);
            }
            runs.push(sides()?);
        }
        Ok(medians(&runs))
    }

    /// The tables' note on `--rounds`: empty for one.
    fn rounds_note(&self) -> String {
        if self.rounds > 1 {
            format!(
                "; median of {} rounds, the sides run in turn in each",
                self.rounds
            )
        } else {
            String::new()
        }
    }

    /// What is timed, for the table's heading.
    fn what(&self) -> &'static str {
        if self.train {
            "training steps (forward, backward, clipping, AdamW)"
        } else {
            "inference"
        }
    }

    /// Timed iterations of `shape`: `--iters`, or a few seconds of CPU work.
    fn iterations(&self, shape: crate::flags::ShapeFlag) -> usize {
        self.iters.unwrap_or(if self.train {
            (iterations(shape) / 4).max(2)
        } else {
            iterations(shape)
        })
    }

    /// Our side: `bench model-worker` on `threads` threads.
    fn ours(
        &self,
        shape: crate::flags::ShapeFlag,
        iters: usize,
        threads: usize,
    ) -> Result<Command> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["bench", "model-worker", "--shape", shape_name(shape)])
            .args(["--iters", &iters.to_string()])
            .args(if self.train { &["--train"][..] } else { &[] })
            .args(["--batch", &self.batch.to_string()])
            .args(["--backend", &flag_name(self.backend)])
            .args(["--dtype", &flag_name(self.dtype)])
            .args(["--device-index", &self.device_index.to_string()])
            .env("RAYON_NUM_THREADS", threads.to_string())
            // libtorch's own pool, for `--backend tch`: the same count as PyTorch's.
            .env("OMP_NUM_THREADS", threads.to_string())
            .env("OMP_WAIT_POLICY", "PASSIVE");
        Ok(command)
    }

    /// PyTorch's side: `xtask/bench/model_reference.py` with the same threads.
    fn pytorch(&self, shape: crate::flags::ShapeFlag, iters: usize, threads: usize) -> Command {
        let mut command = Command::new(&self.python);
        command
            .arg(crate::project_root().join("xtask/bench/model_reference.py"))
            .args(if self.train { &["--train"][..] } else { &[] })
            .args(["--shape", shape_name(shape), "--iters", &iters.to_string()])
            .args(["--batch", &self.batch.to_string()])
            .args(["--threads", &threads.to_string()])
            .args([
                "--device",
                &self.python_device,
                "--dtype",
                &flag_name(self.dtype),
            ])
            .env("OMP_NUM_THREADS", threads.to_string())
            .env("OMP_WAIT_POLICY", "PASSIVE")
            .stderr(std::process::Stdio::null());
        command
    }

    /// `--lengths tweets`: an epoch of rows of real tweets' lengths, fixed and dynamic padding
    /// on both sides, `iters` batches spread over it timed (the Python side batches the
    /// same rows with transformers' own `LengthGroupedSampler` and `DataCollatorWithPadding`).
    fn run_tweet_lengths(&self) -> Result<()> {
        println!(
            "{}, batch {}, real tweets' lengths (mean 32 of {BENCH_SEQ} tokens), random \
             weights, {}; samples/s (peak RSS MiB){}; fixed: padded to {BENCH_SEQ} in a \
             shuffled order (the notebook); dynamic: length-grouped, padded to each batch's \
             longest rounded up to 8; our classifier cuts the columns that are padding in \
             every row, PyTorch's computes them",
            self.what(),
            self.batch,
            flag_name(self.dtype),
            self.rounds_note()
        );
        println!(
            "| shape | threads | ours fixed | ours dynamic | PyTorch fixed (notebook) | PyTorch \
             dynamic | ours dynamic / ours fixed | ours / PyTorch, dynamic | ours dynamic / \
             notebook |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for &shape in &self.shapes {
            for &threads in &self.threads {
                let iters = self.iterations(shape);
                let lengths = tweet_epoch(shape, self.batch);
                let lengths_file = tempfile::Builder::new()
                    .prefix("bench-lengths-")
                    .suffix(".json")
                    .tempfile()?;
                std::fs::write(lengths_file.path(), serde_json::to_string(&lengths)?)?;
                let row = self.in_rounds(|| {
                    let ours = |padding| {
                        measure_json(
                            self.ours(shape, iters, threads)?
                                .arg("--lengths-file")
                                .arg(lengths_file.path())
                                .args(["--padding", padding]),
                        )
                    };
                    let pytorch = |padding| {
                        measure_json(
                            self.pytorch(shape, iters, threads)
                                .arg("--lengths-file")
                                .arg(lengths_file.path())
                                .args(["--padding", padding]),
                        )
                    };
                    Ok([
                        ours("fixed")?,
                        ours("dynamic")?,
                        pytorch("fixed")?,
                        pytorch("dynamic")?,
                    ])
                })?;
                let rate = |i: usize| row[i].0;
                let cells: Vec<String> = row
                    .iter()
                    .map(|(rate, mib)| format!("{rate:.1} ({mib:.0})"))
                    .collect();
                println!(
                    "| {} | {threads} | {} | {:.2}x | {:.2}x | {:.2}x |",
                    shape_name(shape),
                    cells.join(" | "),
                    rate(1) / rate(0),
                    rate(1) / rate(3),
                    rate(1) / rate(2),
                );
            }
        }
        Ok(())
    }
}

/// The machine a benchmark ran on, printed above its table: CPU model and vendor, the flags
/// that pick our kernels and PyTorch's (AVX2, AVX-512, BF16, AMX), caches, and the cores this
/// process may use. CPUs of one cloud machine kind differ, and so do the ratios.
pub fn print_cpu() {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    let flags = field("flags");
    let wanted = [
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_bf16",
        "amx_tile",
    ];
    let present: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    let mut caches = Vec::new();
    for index in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{index}");
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok();
        if let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) {
            let kind = match kind.trim() {
                "Data" => "d",
                "Instruction" => "i",
                _ => "",
            };
            caches.push(format!("L{}{kind} {}", level.trim(), size.trim()));
        }
    }
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "CPU: {} ({}), {cores} cores available; {}; caches per core {}",
        field("model name"),
        field("vendor_id"),
        if present.is_empty() {
            "no AVX2".to_string()
        } else {
            present.join(" ")
        },
        caches.join(", ")
    );
}

/// `cargo xtask bench search`: runs the Python driver, which talks to our ask/tell command.
pub fn search(args: &crate::flags::BenchSearchArgs) -> Result<()> {
    print_cpu();
    let script = crate::project_root().join("xtask/bench/tpe_vs_optuna.py");
    let status = Command::new(&args.python)
        .arg(&script)
        .arg("--exe")
        .arg(std::env::current_exe()?)
        .arg("--seeds")
        .arg(args.seeds.to_string())
        .status()
        .with_context(|| format!("running {}", args.python.display()))?;
    if !status.success() {
        bail!("the search benchmark failed");
    }
    Ok(())
}

/// The flags of a quiet `prepare` into `out` of `input` (the bundled sample without one),
/// sampled to `sample` rows if given.
fn prepare_flags(out: &str, input: Option<&Path>, sample: Option<usize>) -> Vec<String> {
    let mut flags: Vec<String> = ["prepare", "--quiet", "--out", out]
        .map(String::from)
        .to_vec();
    if let Some(input) = input {
        flags.extend(["--input".into(), input.to_string_lossy().into_owned()]);
    }
    if let Some(rows) = sample {
        flags.extend(["--sample".into(), rows.to_string()]);
    }
    flags
}

/// `cargo xtask bench pretrain`: validation F1 after fine-tuning a tiny model from scratch,
/// against pre-training it on the train split's texts first and fine-tuning for fewer epochs,
/// at about the same CPU time.
pub fn pretrain(args: &crate::flags::BenchPretrainArgs) -> Result<()> {
    print_cpu();
    let exe = std::env::current_exe()?;
    let work = &args.work_dir;
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("clearing {}", work.display()))?;
    }
    let path = |name: &str| work.join(name).to_string_lossy().into_owned();
    let run = |what: &str, extra: &[&str]| -> Result<Measurement> {
        println!("running {what}…");
        measure(
            Command::new(&exe)
                .args(extra)
                .stdout(std::process::Stdio::null()),
        )
    };
    let prepare = prepare_flags(&path("data"), args.input.as_deref(), args.sample);
    run(
        "prepare",
        &prepare.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let seed = args.seed.to_string();
    let rate = format!("{:e}", args.learning_rate);
    let fine_tune = |run_dir: &str, epochs: usize, pretrained: Option<&str>| {
        let epochs = epochs.to_string();
        let mut flags = vec![
            "train",
            "--prepared",
            &path("data"),
            "--out",
            run_dir,
            "--epochs",
            &epochs,
            "--learning-rate",
            &rate,
            "--seed",
            &seed,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if let Some(model) = pretrained {
            flags.extend(["--pretrained".into(), model.into()]);
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        run(&format!("fine-tuning into {run_dir}"), &flags)
    };
    let scratch = fine_tune(&path("scratch"), args.baseline_epochs, None)?;
    let pretrain_epochs = args.pretrain_epochs.to_string();
    let pre = run(
        "pre-training",
        &[
            "pretrain",
            "--input",
            &path("data/train.parquet"),
            "--out",
            &path("pretrain"),
            "--epochs",
            &pretrain_epochs,
            "--seed",
            &seed,
        ],
    )?;
    let tuned = fine_tune(
        &path("tuned"),
        args.finetune_epochs,
        Some(&path("pretrain/model")),
    )?;
    let outcome = |run_dir: &str| -> Result<sentiment_train::TrainOutcome> {
        let file = Path::new(run_dir).join("outcome.json");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        Ok(serde_json::from_str(&text)?)
    };
    let held_out: Vec<sentiment_train::PretrainEpoch> = serde_json::from_str(
        &std::fs::read_to_string(work.join("pretrain/metrics.json"))
            .context("reading the pre-training metrics")?,
    )?;
    let row = |name: &str, cpu: f64, o: &sentiment_train::TrainOutcome| {
        let best = o.best();
        let test = o.test.as_ref().map_or(f64::NAN, |t| t.report.binary.f1);
        println!(
            "| {name} | {cpu:.0} | {:.4} (epoch {}) | {test:.4} |",
            best.f1, o.best_epoch
        );
    };
    println!("| run | CPU seconds | best validation F1 | test F1 |");
    println!("|---|---|---|---|");
    let scratch_outcome = outcome(&path("scratch"))?;
    row(
        &format!("from scratch, {} epochs", args.baseline_epochs),
        scratch.cpu.as_secs_f64(),
        &scratch_outcome,
    );
    let tuned_outcome = outcome(&path("tuned"))?;
    let last = held_out.last().context("no pre-training epoch")?;
    row(
        &format!(
            "pre-trained {} epochs (held-out MLM loss {:.3}, accuracy {:.3}) + fine-tuned {}",
            args.pretrain_epochs, last.eval_loss, last.eval_accuracy, args.finetune_epochs
        ),
        (pre.cpu + tuned.cpu).as_secs_f64(),
        &tuned_outcome,
    );
    Ok(())
}

/// `cargo xtask bench full-scale`: the stages of a Sentiment140-sized run, each a child process
/// whose peak RSS is measured, and the same training on a small sample for the model's own
/// footprint; the training split is the 1.6M-row file's, so the ratio says what the row count
/// costs in memory.
pub fn full_scale(args: &crate::flags::BenchFullScaleArgs) -> Result<()> {
    print_cpu();
    let work = &args.work_dir;
    std::fs::create_dir_all(work)?;
    let input = work.join(format!("sentiment140_{}.csv", args.rows));
    if !input.exists() {
        eprintln!("generating {} ({} rows)…", input.display(), args.rows);
        generate_raw(&input, args.rows)?;
    }
    let exe = std::env::current_exe()?;
    let ratios = args
        .ratios
        .iter()
        .map(f64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let (steps, eval_steps) = (args.max_steps.to_string(), args.eval_steps.to_string());
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    // prepare → tokenize → train, into `dir`, on `sample` rows of the input (all if None).
    let stages = |dir: &Path, sample: Option<usize>| -> Result<Vec<(&str, Measurement)>> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        let (data, run) = (dir.join("data"), dir.join("run"));
        let mut prepare = Command::new(&exe);
        prepare
            .args(["prepare", "--quiet", "--ratios", &ratios, "--input"])
            .arg(&input)
            .arg("--out")
            .arg(&data);
        if let Some(rows) = sample {
            prepare.args(["--sample", &rows.to_string()]);
        }
        let mut tokenize = Command::new(&exe);
        tokenize
            .args(["tokenize", "--quiet", "--prepared"])
            .arg(&data);
        let mut train = Command::new(&exe);
        train
            .args(["train", "--prepared"])
            .arg(&data)
            .arg("--out")
            .arg(&run)
            .args(["--config", &args.config, "--max-steps", &steps])
            .args(["--eval-steps", &eval_steps, "--save-steps", &eval_steps])
            .stdout(std::process::Stdio::null());
        let mut out = Vec::new();
        for (name, command) in [
            ("prepare", &mut prepare),
            ("tokenize", &mut tokenize),
            ("train", &mut train),
        ] {
            eprintln!("{}: {name}…", dir.display());
            let m = measure(command)?;
            out.push((name, m));
        }
        let rows = sentiment_data::Manifest::load(&data)?;
        eprintln!(
            "{}: {} rows kept, train split {}",
            dir.display(),
            rows.rows_kept,
            rows.splits[0].rows
        );
        Ok(out)
    };
    let footprint = stages(&work.join("footprint"), Some(args.footprint_rows))?;
    let full = stages(&work.join("full"), None)?;
    println!(
        "`train --config {} --max-steps {} --eval-steps {} --save-steps {}`, ratios {ratios}; \
         peak RSS MiB of each stage (wall s)",
        args.config, args.max_steps, args.eval_steps, args.eval_steps
    );
    println!(
        "| stage | {} rows | {} rows | ratio |",
        args.footprint_rows, args.rows
    );
    println!("|---|---|---|---|");
    for ((name, small), (_, big)) in footprint.iter().zip(&full) {
        println!(
            "| {name} | {:.0} ({:.0}) | {:.0} ({:.0}) | {:.2}x |",
            mib(small.peak_rss),
            small.wall.as_secs_f64(),
            mib(big.peak_rss),
            big.wall.as_secs_f64(),
            big.peak_rss as f64 / small.peak_rss.max(1) as f64
        );
    }
    Ok(())
}

/// `cargo xtask bench train`: the whole `train` command, as users run it (reading the
/// prepared split, tokenizing, batching, training, the evaluation after every epoch, the test
/// and the export), against transformers' Trainer `train()` and its test evaluation
/// (`xtask/bench/finetune_trainer.py`), on the same rows, from the same initial weights, with
/// the same learning rate, epochs, batch size (32) and threads; once with the notebook's
/// batching (every row padded to 64, shuffled) and once length-aware (the Trainer's
/// `group_by_length` and padding to a multiple of 8; our defaults). Prints the training
/// samples/s (every epoch's rows over the training time, evaluations included, as the
/// Trainer's `train_samples_per_second`), each process's wall time and the test F1.
pub fn train(args: &crate::flags::BenchTrainArgs) -> Result<()> {
    print_cpu();
    let exe = std::env::current_exe()?;
    let work = &args.work_dir;
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(work)?;
    let path = |name: &str| work.join(name).to_string_lossy().into_owned();
    let threads = args.threads.to_string();
    let ours = |flags: &[String]| -> Result<Measurement> {
        measure(
            Command::new(&exe)
                .args(flags)
                .env("RAYON_NUM_THREADS", &threads)
                .stdout(std::process::Stdio::null()),
        )
    };
    ours(&prepare_flags(
        &path("data"),
        args.input.as_deref(),
        args.sample,
    ))?;
    let seed = args.seed.to_string();
    // The command's batch size, which the step alone takes too (finetune_trainer.py's is 32).
    const BATCH: usize = 32;
    let batch = BATCH.to_string();
    let train_flags = |out: &str| -> Vec<String> {
        [
            "train",
            "--prepared",
            &path("data"),
            "--out",
            out,
            "--seed",
            &seed,
            "--max-length",
            "64",
            "--batch-size",
            &batch,
            "--quiet",
        ]
        .map(String::from)
        .to_vec()
    };
    let initial = match &args.pretrained {
        Some(folder) => folder.to_string_lossy().into_owned(),
        None => {
            println!(
                "initial model: {} preset, random weights after one step",
                args.config
            );
            let mut flags = train_flags(&path("init"));
            flags.extend([
                "--config".into(),
                args.config.clone(),
                "--max-steps".into(),
                "1".into(),
            ]);
            ours(&flags)?;
            path("init/best_model")
        }
    };
    let epochs = args.epochs.to_string();
    let rate = format!("{:e}", args.learning_rate);
    println!(
        "train, {} epochs at learning rate {rate}, batch 32, {threads} threads each side; samples/s \
         (training time, evaluations included), wall s of the whole process, test F1",
        args.epochs
    );
    println!(
        "| batching | ours samples/s | Trainer samples/s | ratio | ours wall s | Trainer wall s | ratio | test F1 ours / Trainer |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // Per batching: where each side's training time went, printed after the table.
    let mut split = Vec::new();
    for (name, our_flags, mode) in [
        (
            "notebook (padded to 64, shuffled)",
            &["--pad-to-max-length", "--group-by-length", "false"][..],
            "notebook",
        ),
        ("length-aware (grouped, multiple of 8)", &[][..], "dynamic"),
    ] {
        let out = path(&format!("ours-{mode}"));
        let mut flags = train_flags(&out);
        flags.extend([
            "--pretrained".into(),
            initial.clone(),
            "--epochs".into(),
            epochs.clone(),
        ]);
        flags.extend(["--learning-rate".into(), rate.clone()]);
        flags.extend(our_flags.iter().map(|f| f.to_string()));
        let our_run = ours(&flags)?;
        let our = our_train_figures(Path::new(&out), &path("data"))?;
        let (trainer_run, trainer) = measure_json(
            Command::new(&args.python)
                .arg(crate::project_root().join("xtask/bench/finetune_trainer.py"))
                .args([
                    &path("data"),
                    &initial,
                    &seed,
                    &path(&format!("trainer-{mode}")),
                ])
                .args([
                    "--mode",
                    mode,
                    "--epochs",
                    &epochs,
                    "--learning-rate",
                    &rate,
                ])
                .args(["--threads", &threads])
                .env("OMP_NUM_THREADS", &threads)
                .env("OMP_WAIT_POLICY", "PASSIVE")
                .stderr(std::process::Stdio::null()),
        )?;
        let number = |key: &str| {
            trainer[key]
                .as_f64()
                .with_context(|| format!("the Trainer's {key} in {trainer}"))
        };
        let trainer_speed = number("train_samples_per_second")?;
        println!(
            "| {name} | {:.1} | {trainer_speed:.1} | {:.2}x | {:.1} | {:.1} | {:.2}x | {:.4} / {:.4} |",
            our.samples_per_second(),
            our.samples_per_second() / trainer_speed,
            our_run.wall.as_secs_f64(),
            trainer_run.wall.as_secs_f64(),
            trainer_run.wall.as_secs_f64() / our_run.wall.as_secs_f64(),
            our.test_f1,
            number("test_f1")?
        );
        split.push((name, our, number("train_seconds")?, number("eval_seconds")?));
    }
    // The step alone, as `bench model --train` times it, on this model and these training
    // rows' lengths, every batch of an epoch: what the command's steps cost without the command.
    let tokens = Path::new(&path("data")).join(sentiment_tokenize::tokens_file_name(
        sentiment_data::Split::Train,
    ));
    let lengths = sentiment_tokenize::read_tokenized(&tokens)?.lengths();
    let lengths_file = work.join("train-lengths.json");
    std::fs::write(&lengths_file, serde_json::to_string(&lengths)?)?;
    let mut alone = Vec::new();
    for padding in ["fixed", "dynamic"] {
        let (_, worker) = measure_json(
            Command::new(&exe)
                .args(["bench", "model-worker", "--train", "--shape", "tiny"])
                .arg("--config-file")
                .arg(Path::new(&initial).join("config.json"))
                .arg("--lengths-file")
                .arg(&lengths_file)
                .args(["--padding", padding, "--batch", &batch])
                .args(["--iters", &lengths.len().div_ceil(BATCH).to_string()])
                .env("RAYON_NUM_THREADS", &threads),
        )?;
        alone.push(
            worker["samples_per_s"]
                .as_f64()
                .with_context(|| format!("the worker's samples_per_s in {worker}"))?,
        );
    }
    println!(
        "\nwhere the training time went (seconds over {} epochs; ours: the steps with their \
         batches, the evaluations, and what runs between them; the step alone: `bench \
         model-worker --train` on this model and these rows' lengths, every batch of an epoch)",
        args.epochs
    );
    println!(
        "| batching | ours steps | ours evaluations | ours between | ours steps samples/s | the step alone samples/s | Trainer train_runtime | Trainer evaluations |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for ((name, our, trainer_total, trainer_eval), alone) in split.iter().zip(&alone) {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {alone:.1} | {trainer_total:.1} | {trainer_eval:.1} |",
            our.step_seconds,
            our.eval_seconds,
            our.seconds - our.step_seconds - our.eval_seconds,
            our.rows / our.step_seconds.max(1e-9),
        );
    }
    if let [
        (_, notebook, notebook_total, _),
        (_, grouped, grouped_total, _),
    ] = &split[..]
    {
        println!(
            "length-aware over notebook batching: ours {:.2}x (its steps {:.2}x; the step alone \
             {:.2}x), the Trainer's {:.2}x",
            notebook.seconds / grouped.seconds,
            notebook.step_seconds / grouped.step_seconds,
            alone[1] / alone[0],
            notebook_total / grouped_total
        );
    }
    Ok(())
}

/// What a `train` run's records say of its speed (metrics.json) and its test F1.
#[derive(Clone, Copy, Debug)]
struct TrainFigures {
    /// Training rows over all epochs.
    rows: f64,
    /// The training time: the steps, the evaluations and what runs between them.
    seconds: f64,
    /// The time in the steps (each one's batches built, forward, backward, optimizer).
    step_seconds: f64,
    /// The evaluations' time.
    eval_seconds: f64,
    test_f1: f64,
}

impl TrainFigures {
    /// Every epoch's training rows over the training time, the evaluations included, as the
    /// Trainer's `train_samples_per_second`.
    fn samples_per_second(&self) -> f64 {
        self.rows / self.seconds.max(1e-9)
    }
}

/// The figures of the `train` run in `run`, on the prepared data in `data`.
fn our_train_figures(run: &Path, data: &str) -> Result<TrainFigures> {
    let read = |path: PathBuf| -> Result<serde_json::Value> {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    };
    let history = read(run.join("metrics.json"))?;
    let manifest = read(Path::new(data).join("manifest.json"))?;
    let outcome = read(run.join("outcome.json"))?;
    let train_rows = manifest["splits"]
        .as_array()
        .and_then(|splits| splits.iter().find(|s| s["split"] == "train"))
        .and_then(|s| s["rows"].as_f64())
        .context("the manifest's train rows")?;
    let records = history
        .as_array()
        .context("metrics.json: a list of records")?;
    let sum = |f: &dyn Fn(&serde_json::Value) -> Option<f64>| -> Result<f64> {
        records
            .iter()
            .map(|m| f(m).with_context(|| format!("metrics.json: {m}")))
            .sum()
    };
    // Every record is one epoch's (the benchmark evaluates after each).
    let rows = train_rows * records.len() as f64;
    let seconds = sum(&|m| m["seconds"].as_f64())?;
    let test_f1 = outcome["test"]["report"]["binary"]["f1"]
        .as_f64()
        .context("the test F1 in outcome.json")?;
    Ok(TrainFigures {
        rows,
        seconds,
        step_seconds: sum(&|m| Some(train_rows / m["train_samples_per_second"].as_f64()?))?,
        eval_seconds: sum(&|m| m["eval_runtime"].as_f64())?,
        test_f1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round's measurement of one side: its rate and peak RSS.
    fn run(rate: f64, peak_mib: u64) -> (Measurement, serde_json::Value) {
        let measurement = Measurement {
            wall: Duration::from_secs(1),
            peak_rss: peak_mib << 20,
            cpu: Duration::from_secs(1),
        };
        (measurement, serde_json::json!({ "samples_per_s": rate }))
    }

    #[test]
    fn each_side_gets_its_median_rate_and_largest_peak() {
        let runs = [
            [run(30.0, 100), run(5.0, 700)],
            [run(10.0, 300), run(7.0, 600)],
            [run(20.0, 200), run(6.0, 900)],
        ];
        assert_eq!(medians(&runs), [(20.0, 300.0), (6.0, 900.0)]);
        assert_eq!(medians(&runs[..1]), [(30.0, 100.0), (5.0, 700.0)]);
    }

    /// A run's figures split its time from its records: 100 rows per epoch, steps at 50 and
    /// 25 rows/s (2 s and 4 s), evaluations of 0.5 s, 7 s and 5 s in all.
    #[test]
    fn train_figures_split_the_time_by_records() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, value: serde_json::Value| {
            std::fs::write(dir.path().join(name), value.to_string()).expect("written");
        };
        write(
            "manifest.json",
            serde_json::json!({ "splits": [{ "split": "test", "rows": 9 }, { "split": "train", "rows": 100 }] }),
        );
        write(
            "metrics.json",
            serde_json::json!([
                { "train_samples_per_second": 50.0, "eval_runtime": 0.5, "seconds": 3.0 },
                { "train_samples_per_second": 25.0, "eval_runtime": 0.5, "seconds": 4.0 },
            ]),
        );
        write(
            "outcome.json",
            serde_json::json!({ "test": { "report": { "binary": { "f1": 0.75 } } } }),
        );
        let data = dir.path().to_string_lossy().into_owned();
        let figures = our_train_figures(dir.path(), &data).expect("figures");
        assert_eq!(figures.rows, 200.0);
        assert_eq!(figures.seconds, 7.0);
        assert_eq!(figures.step_seconds, 6.0);
        assert_eq!(figures.eval_seconds, 1.0);
        assert!((figures.samples_per_second() - 200.0 / 7.0).abs() < 1e-12);
        assert_eq!(figures.test_f1, 0.75);
        // A record without the evaluation's time (one written before it was kept) is an error,
        // not a zero.
        write(
            "metrics.json",
            serde_json::json!([{ "train_samples_per_second": 50.0, "seconds": 3.0 }]),
        );
        let error = our_train_figures(dir.path(), &data).expect_err("no eval_runtime");
        assert!(format!("{error:#}").contains("metrics.json"), "{error:#}");
    }
}
