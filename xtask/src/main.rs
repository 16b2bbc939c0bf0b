//! The project's runner. `main` only parses the command line and dispatches; each command is
//! a small struct with a `run` method in its own module.

mod bench;
mod fixtures;
mod flags;
mod parity;
mod pipeline;
mod predict;
mod prepare;
mod pretrain;
mod search;
mod synth;
mod tokenize;
mod train;

use std::path::PathBuf;

use clap::Parser;

use flags::{BenchCommand, Command, SearchCommand, Xtask};

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    match run(Xtask::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) if interrupted(&error).is_some() => {
            // Ctrl-C is not a failure: say where the work is and how to go on, and exit as a
            // shell expects of a process ended by SIGINT (128 + 2).
            let checkpoint = interrupted(&error).unwrap_or_default();
            let mut command = shown_command_line();
            let pipeline = command.first().is_some_and(|c| c == "pipeline");
            if !pipeline && !command.iter().any(|a| a == "--resume") {
                command.push("--resume".into());
            }
            eprintln!(
                "interrupted: checkpoint saved in {checkpoint}\nresume with: cargo xtask {}",
                command.join(" ")
            );
            std::process::ExitCode::from(130)
        }
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// This command's words after `cargo xtask`, with the credentials of any URL masked (a report
/// or a terminal's scrollback is shared; a `--storage` password must not be) and quoted for a
/// POSIX shell where needed.
fn shown_command_line() -> Vec<String> {
    sentiment_search::redact_args(std::env::args().skip(1))
        .into_iter()
        .map(|arg| {
            if !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=./,:@+".contains(c))
            {
                arg
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect()
}

/// The error and its causes on one line, as anyhow's `{:#}` prints them, but without a cause
/// that the message before it already ends with: our errors name their file and then quote
/// the underlying error (`data.csv: No such file or directory (os error 2)`), which is also
/// their source.
fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The checkpoint folder of a run stopped by Ctrl-C, if that is what `error` is.
fn interrupted(error: &anyhow::Error) -> Option<String> {
    error.chain().find_map(|cause| {
        let train = cause
            .downcast_ref::<sentiment_train::TrainError>()
            .or_else(
                || match cause.downcast_ref::<sentiment_pipeline::PipelineError>() {
                    Some(sentiment_pipeline::PipelineError::Train(e)) => Some(e),
                    _ => None,
                },
            )?;
        match train {
            sentiment_train::TrainError::Interrupted { checkpoint } => {
                Some(checkpoint.display().to_string())
            }
            _ => None,
        }
    })
}

/// mimalloc instead of glibc's allocator. glibc maps every block above 32 MiB (its limit for
/// the heap) afresh from the kernel and unmaps it when freed, so a roberta-base training step,
/// whose embedding gradients and optimizer buffers are hundreds of MiB, spent nearly half its
/// time in the kernel zeroing and faulting pages in (docs/BENCHMARKS.md: 1.8x faster with
/// mimalloc keeping freed memory). Smaller buffers were already kept, through glibc's
/// `mallopt`, before this replaced it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3's `mi_option_purge_delay`: its position in `mi_option_e` (mimalloc.h of the
/// pinned libmimalloc-sys), for which the crate has no constant.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the kernel (its default returns it after
/// 10 ms, which still cost a roberta-base step a fifth of its time in page faults): a training
/// process's footprint is its peak anyway. `MIMALLOC_PURGE_DELAY` in the environment is
/// overridden.
fn keep_freed_memory() {
    // SAFETY: sets an allocator option (an integer in mimalloc's option table); called before
    // any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn run(xtask: Xtask) -> anyhow::Result<()> {
    match xtask.command {
        Command::Prepare(args) => prepare::Prepare::try_from(args)?.run(),
        Command::Pipeline(args) => pipeline::Pipeline::try_from(args)?.run(),
        Command::Train(args) => train::Train::try_from(args)?.run(),
        Command::Search { command } => match command {
            SearchCommand::AskTell(args) => search::AskTell::from(args).run(),
        },
        Command::Pretrain(args) => pretrain::Pretrain::try_from(args)?.run().map(drop),
        Command::Predict(args) => predict::Predict::try_from(args)?.run(),
        Command::Tokenize(args) => tokenize::Tokenize::from(args).run(),
        Command::Parity(args) => parity::Parity::from(args).run(),
        Command::Fixtures { check } => fixtures::Fixtures { check }.run(),
        Command::Bench { command } => match command {
            BenchCommand::Prepare(args) => bench::BenchPrepare::from(args).run(),
            BenchCommand::Tokenize(args) => bench::BenchTokenize::from(args).run(),
            BenchCommand::Model(args) => bench::BenchModel::from(args).run(),
            BenchCommand::ModelWorker(args) => bench::model_worker(&args),
            BenchCommand::Search(args) => bench::search(&args),
            BenchCommand::Pretrain(args) => bench::pretrain(&args),
            BenchCommand::FullScale(args) => bench::full_scale(&args),
        },
    }
}

/// The process's Ctrl-C token, set before the handler is installed, so the handler only reads
/// it (an atomic load) and requests the stop (an atomic store).
static CTRL_C: std::sync::OnceLock<sentiment_train::StopToken> = std::sync::OnceLock::new();

extern "C" fn on_stop_signal(signal: libc::c_int) {
    // Atomic operations only: async-signal-safe. The runs checkpoint at the next step.
    if let Some(token) = CTRL_C.get() {
        token.request();
    }
    // A second Ctrl-C (or SIGTERM) ends the process at once.
    // SAFETY: restoring the default disposition is async-signal-safe.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

/// Makes the first Ctrl-C or SIGTERM save a checkpoint and stop training cleanly (and an
/// ask/tell session fail its open trial): returns the token the runs of this process are
/// handed, which the handler requests.
pub fn checkpoint_on_ctrl_c() -> sentiment_train::StopToken {
    let token = CTRL_C.get_or_init(sentiment_train::StopToken::new).clone();
    // SAFETY: installs a handler that only performs async-signal-safe operations.
    unsafe {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            libc::signal(signal, on_stop_signal as *const () as libc::sighandler_t);
        }
    }
    token
}

/// The device for a `--backend` flag.
pub fn device(backend: flags::BackendFlag, index: usize) -> anyhow::Result<burn::tensor::Device> {
    use flags::BackendFlag;
    #[cfg(not(feature = "wgpu"))]
    if matches!(backend, BackendFlag::Wgpu) {
        anyhow::bail!(
            "this build has no wgpu backend: build with `--features wgpu`, e.g. \
             `cargo run --release -p xtask --features wgpu -- …`"
        );
    }
    #[cfg(not(feature = "vulkan"))]
    if matches!(backend, BackendFlag::Vulkan) {
        anyhow::bail!(
            "this build has no vulkan backend: build with `--features vulkan`, e.g. \
             `cargo run --release -p xtask --features vulkan -- …`"
        );
    }
    #[cfg(not(feature = "tch"))]
    if matches!(backend, BackendFlag::Tch | BackendFlag::TchCuda) {
        anyhow::bail!(
            "this build has no tch backend: build with `--features tch` against the PyTorch \
             that the tch crate expects (docs/model.md)"
        );
    }
    let _ = index;
    Ok(match backend {
        BackendFlag::Flex => burn::tensor::Device::flex(),
        #[cfg(feature = "wgpu")]
        BackendFlag::Wgpu => burn::tensor::Device::wgpu(wgpu_adapter(index)),
        #[cfg(feature = "vulkan")]
        BackendFlag::Vulkan => burn::tensor::Device::vulkan(wgpu_adapter(index)),
        // burn-tch is deprecated upstream but still the way to run on libtorch.
        #[cfg(feature = "tch")]
        #[allow(deprecated)]
        BackendFlag::Tch => burn::tensor::Device::libtorch(),
        #[cfg(feature = "tch")]
        #[allow(deprecated)]
        BackendFlag::TchCuda => burn::tensor::Device::libtorch_cuda(index),
        #[allow(unreachable_patterns)]
        _ => unreachable!("refused above"),
    })
}

/// The WebGPU adapter for `--device-index`: 0 is the best one found (a discrete GPU first;
/// `CUBECL_WGPU_DEFAULT_DEVICE=Cpu` picks a software Vulkan such as lavapipe, for testing
/// without a GPU), N > 0 the N-th discrete GPU.
#[cfg(feature = "wgpu")]
fn wgpu_adapter(index: usize) -> burn::tensor::DeviceKind {
    match index {
        0 => burn::tensor::DeviceKind::DefaultDevice,
        n => burn::tensor::DeviceKind::DiscreteGpu(n),
    }
}

/// The device for `--backend` with its default float type set to `--dtype`.
pub fn device_with_dtype(
    backend: flags::BackendFlag,
    index: usize,
    dtype: flags::DTypeFlag,
) -> anyhow::Result<burn::tensor::Device> {
    use burn::tensor::FloatDType;
    let mut device = device(backend, index)?;
    let float = match dtype {
        flags::DTypeFlag::F32 => return Ok(device),
        flags::DTypeFlag::Bf16 => FloatDType::BF16,
        flags::DTypeFlag::F16 => FloatDType::F16,
    };
    device
        .configure(float)
        .map_err(|e| anyhow::anyhow!("{backend:?} cannot compute in {dtype:?}: {e:?}"))?;
    Ok(device)
}

/// The workspace root (the parent of `xtask/`), whatever the current directory.
///
/// A binary copied to another machine (a GPU box without a Rust toolchain) no longer finds the
/// folder it was built in; it then uses the current directory or the nearest parent that holds
/// `xtask/Cargo.toml`.
pub fn project_root() -> PathBuf {
    let built_in = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf();
    if built_in.join("xtask/Cargo.toml").is_file() {
        return built_in;
    }
    std::env::current_dir()
        .ok()
        .and_then(|dir| {
            dir.ancestors()
                .find(|d| d.join("xtask/Cargo.toml").is_file())
                .map(PathBuf::from)
        })
        .unwrap_or(built_in)
}
