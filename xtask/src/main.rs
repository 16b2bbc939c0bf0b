//! The project's runner: the stage commands of `roberta-sentiment` (crates/cli, which this
//! binary runs as a library, allocator and Ctrl-C handling included) and what only developers
//! run: benchmarks, fixtures, parity against the references. `main` only parses the command
//! line and dispatches; each tool is a small struct with a `run` method in its own module.

mod bench;
mod fixtures;
mod flags;
mod parity;
mod synth;

use std::path::PathBuf;

use clap::Parser;

use flags::{BenchCommand, Command, Xtask};
pub use roberta_sentiment::{device, device_with_dtype};

fn main() -> std::process::ExitCode {
    roberta_sentiment::keep_freed_memory();
    match Xtask::parse().command {
        Command::Stage(command) => roberta_sentiment::main(command, "cargo xtask"),
        tool => roberta_sentiment::exit_code(run(tool)),
    }
}

/// Runs a developers' tool.
fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Stage(command) => roberta_sentiment::run(command),
        Command::Parity(args) => parity::Parity::from(args).run(),
        Command::Fixtures { check } => fixtures::Fixtures { check }.run(),
        Command::Bench { command } => match command {
            BenchCommand::Prepare(args) => bench::BenchPrepare::from(args).run(),
            BenchCommand::Tokenize(args) => bench::BenchTokenize::from(args).run(),
            BenchCommand::Model(args) => bench::BenchModel::from(args).run(),
            BenchCommand::ModelWorker(args) => bench::model_worker(&args),
            BenchCommand::Search(args) => bench::search(&args),
            BenchCommand::Pretrain(args) => bench::pretrain(&args),
            BenchCommand::Train(args) => bench::train(&args),
            BenchCommand::FullScale(args) => bench::full_scale(&args),
        },
    }
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
