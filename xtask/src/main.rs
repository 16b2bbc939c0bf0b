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
mod report;
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
        Err(error) => {
            // `{:#}` prints the whole context chain on one line, without a backtrace.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
        Command::Prepare(args) => prepare::Prepare::from(args).run(),
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
        },
    }
}

extern "C" fn on_sigint(_: libc::c_int) {
    // One atomic store: async-signal-safe. The trainer checkpoints at the next step.
    sentiment_train::request_stop();
    // A second Ctrl-C ends the process at once.
    // SAFETY: restoring the default disposition is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

/// Makes the first Ctrl-C save a checkpoint and stop training cleanly.
pub fn checkpoint_on_ctrl_c() {
    // SAFETY: installs a handler that only performs async-signal-safe operations.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
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
