//! The project's runner. `main` only parses the command line and dispatches; each command is
//! a small struct with a `run` method in its own module.

mod bench;
mod fixtures;
mod flags;
mod prepare;
mod synth;
mod tokenize;

use std::path::PathBuf;

use clap::Parser;

use flags::{BenchCommand, Command, Xtask};

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
        Command::Tokenize(args) => tokenize::Tokenize::from(args).run(),
        Command::Fixtures { check } => fixtures::Fixtures { check }.run(),
        Command::Bench { command } => match command {
            BenchCommand::Prepare(args) => bench::BenchPrepare::from(args).run(),
            BenchCommand::Tokenize(args) => bench::BenchTokenize::from(args).run(),
        },
    }
}

/// The workspace root (the parent of `xtask/`), whatever the current directory.
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}
