//! The project's runner. `main` only parses the command line and dispatches; each command is
//! a small struct with a `run` method in its own module.

mod bench;
mod fixtures;
mod flags;
mod pipeline;
mod predict;
mod prepare;
mod report;
mod search;
mod synth;
mod tokenize;
mod train;

use std::path::PathBuf;

use clap::Parser;

use flags::{BenchCommand, Command, SearchCommand, Xtask};

fn main() -> std::process::ExitCode {
    match run(Xtask::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line, without a backtrace.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(xtask: Xtask) -> anyhow::Result<()> {
    match xtask.command {
        Command::Prepare(args) => prepare::Prepare::from(args).run(),
        Command::Pipeline(args) => pipeline::Pipeline::try_from(args)?.run(),
        Command::Train(args) => train::Train::try_from(args)?.run(),
        Command::Search { command } => match command {
            SearchCommand::AskTell(args) => search::AskTell::from(args).run(),
        },
        Command::Predict(args) => predict::Predict::try_from(args)?.run(),
        Command::Tokenize(args) => tokenize::Tokenize::from(args).run(),
        Command::Fixtures { check } => fixtures::Fixtures { check }.run(),
        Command::Bench { command } => match command {
            BenchCommand::Prepare(args) => bench::BenchPrepare::from(args).run(),
            BenchCommand::Tokenize(args) => bench::BenchTokenize::from(args).run(),
            BenchCommand::Model(args) => bench::BenchModel::from(args).run(),
            BenchCommand::ModelWorker(args) => bench::model_worker(&args),
            BenchCommand::Search(args) => bench::search(&args),
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
    match backend {
        flags::BackendFlag::Flex => {
            let _ = index;
            Ok(burn::tensor::Device::flex())
        }
        #[cfg(feature = "wgpu")]
        flags::BackendFlag::Wgpu => Ok(burn::tensor::Device::wgpu(
            burn::tensor::DeviceKind::DiscreteGpu(index),
        )),
        #[cfg(not(feature = "wgpu"))]
        flags::BackendFlag::Wgpu => anyhow::bail!(
            "this build has no wgpu backend: run `cargo xtask` with `--features wgpu`, e.g. \
             `cargo run --release -p xtask --features wgpu -- …`"
        ),
        // burn-tch is deprecated upstream but still the way to run on libtorch.
        #[cfg(feature = "tch")]
        #[allow(deprecated)]
        flags::BackendFlag::Tch => Ok(if index == 0 {
            burn::tensor::Device::libtorch()
        } else {
            burn::tensor::Device::libtorch_cuda(index - 1)
        }),
        #[cfg(not(feature = "tch"))]
        flags::BackendFlag::Tch => anyhow::bail!(
            "this build has no tch backend: build with `--features tch` against PyTorch 2.9.0 \
             (docs/model.md)"
        ),
    }
}

/// The workspace root (the parent of `xtask/`), whatever the current directory.
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}
