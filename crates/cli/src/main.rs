//! `roberta-sentiment`: see the library's documentation.

use clap::Parser;

fn main() -> std::process::ExitCode {
    roberta_sentiment::keep_freed_memory();
    let cli = roberta_sentiment::flags::Cli::parse();
    roberta_sentiment::main(cli.command, "roberta-sentiment")
}
