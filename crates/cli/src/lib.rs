//! `roberta-sentiment`: the notebook's workflow (Sentiment140 to a fine-tuned RoBERTa, with a
//! hyperparameter search) as one installable command, one subcommand per stage. `main` parses
//! the command line ([`flags::Cli`]) and calls [`main`]; `cargo xtask` runs the same stage
//! commands through this library beside the developers' tools (benchmarks, fixtures, parity).
//!
//! The binary owns what a library must not decide for its callers: the allocator (mimalloc,
//! keeping freed memory: [`keep_freed_memory`]), the Ctrl-C handling (a checkpoint, then
//! resume: [`checkpoint_on_ctrl_c`]), the choice of device from `--backend`, and the bundled
//! sample that every command falls back to without `--input` ([`bundled_sample`]).

pub mod flags;
mod pipeline;
mod predict;
mod prepare;
mod pretrain;
mod search;
mod tokenize;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use flags::{BackendFlag, Command, DTypeFlag, SearchCommand};

/// Runs one stage command.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Prepare(args) => prepare::Prepare::try_from(args)?.run(),
        Command::Pipeline(args) => pipeline::Pipeline::try_from(args)?.run(),
        Command::Train(args) => train::Train::try_from(args)?.run(),
        Command::Search { command } => match command {
            SearchCommand::AskTell(args) => search::AskTell::from(args).run(),
        },
        Command::Pretrain(args) => pretrain::Pretrain::try_from(args)?.run().map(drop),
        Command::Predict(args) => predict::Predict::try_from(args)?.run(),
        Command::Tokenize(args) => tokenize::Tokenize::from(args).run(),
    }
}

/// How this process was invoked, for the commands it tells the user to run next (a resume
/// after Ctrl-C, the report's "Reproduce" line): `roberta-sentiment` or `cargo xtask`.
static INVOKED_AS: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// The words that run this program: `roberta-sentiment` unless [`main`] was told otherwise.
pub fn invoked_as() -> &'static str {
    INVOKED_AS.get().copied().unwrap_or("roberta-sentiment")
}

/// Runs a stage command as a program's `main` does: the error and its causes on one line,
/// exit status 1 on an error, and on Ctrl-C where the checkpoint is and the command that
/// resumes, with the status a shell expects of a process ended by SIGINT (130). `invoked_as`
/// is how the user runs this program (`roberta-sentiment`, `cargo xtask`).
pub fn main(command: Command, invoked_as: &'static str) -> ExitCode {
    let _ = INVOKED_AS.set(invoked_as);
    exit_code(run(command))
}

/// The exit status of a command's result, after saying what went wrong (see [`main`]).
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => match interrupted(&error) {
            Some(checkpoint) => {
                // Ctrl-C is not a failure: say where the work is and how to go on.
                let mut command = shown_command_line();
                let pipeline = command.first().is_some_and(|c| c == "pipeline");
                if !pipeline && !command.iter().any(|a| a == "--resume") {
                    command.push("--resume".into());
                }
                eprintln!(
                    "interrupted: checkpoint saved in {checkpoint}\nresume with: {} {}",
                    invoked_as(),
                    command.join(" ")
                );
                ExitCode::from(130)
            }
            None => {
                eprintln!("error: {}", error_chain(&error));
                ExitCode::FAILURE
            }
        },
    }
}

/// This command's words after the program's name, with the credentials of any URL masked (a
/// report or a terminal's scrollback is shared; a `--storage` password must not be) and
/// quoted for a POSIX shell where needed.
fn shown_command_line() -> Vec<String> {
    let args = std::env::args().skip(1);
    // `cargo xtask` runs the xtask binary with the words after `xtask`.
    sentiment_search::redact_args(args)
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
pub fn error_chain(error: &anyhow::Error) -> String {
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

/// mimalloc instead of the system's allocator. glibc maps every block above 32 MiB (its limit
/// for the heap) afresh from the kernel and unmaps it when freed, so a roberta-base training
/// step, whose embedding gradients and optimizer buffers are hundreds of MiB, spent nearly half
/// its time in the kernel zeroing and faulting pages in (docs/perf-notes/journal.md: 1.8x
/// faster with mimalloc keeping freed memory). Declared here, so that every binary that runs
/// these commands (`roberta-sentiment`, `xtask`) runs them on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3's `mi_option_purge_delay`: its position in `mi_option_e` (mimalloc.h of the
/// pinned libmimalloc-sys), for which the crate has no constant.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the kernel (its default returns it after
/// 10 ms, which still cost a roberta-base step a fifth of its time in page faults): a training
/// process's footprint is its peak anyway. `MIMALLOC_PURGE_DELAY` in the environment is
/// overridden. Call it first thing in `main`, before any other thread exists.
pub fn keep_freed_memory() {
    // SAFETY: sets an allocator option (an integer in mimalloc's option table); the caller
    // runs it before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// The process's stop flag, which the signal handlers set, made once.
static CTRL_C: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// Makes the first Ctrl-C or SIGTERM save a checkpoint and stop training cleanly (and an
/// ask/tell session fail its open trial), and a second one end the process at once (status
/// 130): returns the token the runs of this process are handed, which the first signal
/// requests. The handlers only set an atomic flag (signal-hook's, async-signal-safe).
pub fn checkpoint_on_ctrl_c() -> sentiment_train::StopToken {
    let flag = CTRL_C.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Registered first, so it sees the flag as the previous signal left it: set means
            // this is the second signal. Registration fails only for signals that cannot be
            // handled, which these are not.
            signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&flag))
                .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&flag)))
                .expect("SIGINT and SIGTERM can be handled");
        }
        flag
    });
    sentiment_train::StopToken::from_flag(Arc::clone(flag))
}

/// The device for a `--backend` flag.
pub fn device(backend: BackendFlag, index: usize) -> anyhow::Result<burn::tensor::Device> {
    #[cfg(not(feature = "wgpu"))]
    if matches!(backend, BackendFlag::Wgpu) {
        anyhow::bail!(
            "this build has no wgpu backend: build with `--features wgpu`, e.g. \
             `cargo install --path crates/cli --features wgpu`"
        );
    }
    #[cfg(not(feature = "vulkan"))]
    if matches!(backend, BackendFlag::Vulkan) {
        anyhow::bail!(
            "this build has no vulkan backend: build with `--features vulkan`, e.g. \
             `cargo install --path crates/cli --features vulkan`"
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
    backend: BackendFlag,
    index: usize,
    dtype: DTypeFlag,
) -> anyhow::Result<burn::tensor::Device> {
    use burn::tensor::FloatDType;
    let mut device = device(backend, index)?;
    let float = match dtype {
        DTypeFlag::F32 => return Ok(device),
        DTypeFlag::Bf16 => FloatDType::BF16,
        DTypeFlag::F16 => FloatDType::F16,
    };
    device
        .configure(float)
        .map_err(|e| anyhow::anyhow!("{backend:?} cannot compute in {dtype:?}: {e:?}"))?;
    Ok(device)
}

/// The bundled sample (8,000 Sentiment140-shaped rows, `fixtures/sentiment140/sample.csv`),
/// which `prepare`, `pipeline` and `pretrain` read without `--input`. It is compiled into the
/// binary, so an installed `roberta-sentiment` needs no checkout: the checkout's file where it
/// is (the same bytes), else a copy written once (atomically) in the system's temporary
/// folder and reused while its bytes are the same.
pub static BUNDLED_SAMPLE: &[u8] = include_bytes!("../../../fixtures/sentiment140/sample.csv");

/// Where the bundled sample can be read as a file (see [`BUNDLED_SAMPLE`]).
pub fn bundled_sample() -> anyhow::Result<PathBuf> {
    let checkout =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sentiment140/sample.csv");
    sample_file(&checkout, &std::env::temp_dir())
}

/// The bundled sample as a file: `checkout` if it holds its bytes, else its copy in `temp`,
/// written there first unless a copy with the same bytes is there already.
fn sample_file(checkout: &Path, temp: &Path) -> anyhow::Result<PathBuf> {
    let same = |path: &Path| std::fs::read(path).is_ok_and(|bytes| bytes == BUNDLED_SAMPLE);
    if same(checkout) {
        return Ok(checkout.to_path_buf());
    }
    let copy = temp.join(format!(
        "roberta-sentiment-{}-sample.csv",
        env!("CARGO_PKG_VERSION")
    ));
    if !same(&copy) {
        sentiment_data::write_file_atomic(&copy, BUNDLED_SAMPLE)?;
    }
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the checkout the sample is copied into the temporary folder once, reused while
    /// its bytes are the sample's, and written again when they are not.
    #[test]
    fn the_bundled_sample_needs_no_checkout() {
        let temp = tempfile::tempdir().unwrap();
        let missing = temp.path().join("no-checkout/sample.csv");
        let copy = sample_file(&missing, temp.path()).unwrap();
        assert!(copy.starts_with(temp.path()), "{}", copy.display());
        assert_eq!(std::fs::read(&copy).unwrap(), BUNDLED_SAMPLE);
        let written = std::fs::metadata(&copy).unwrap().modified().unwrap();
        assert_eq!(sample_file(&missing, temp.path()).unwrap(), copy);
        assert_eq!(
            std::fs::metadata(&copy).unwrap().modified().unwrap(),
            written
        );
        std::fs::write(&copy, b"polarity,text\n").unwrap();
        assert_eq!(sample_file(&missing, temp.path()).unwrap(), copy);
        assert_eq!(std::fs::read(&copy).unwrap(), BUNDLED_SAMPLE);
        // The checkout's file is used where it holds the same bytes.
        let checkout = temp.path().join("sample.csv");
        std::fs::write(&checkout, BUNDLED_SAMPLE).unwrap();
        assert_eq!(sample_file(&checkout, temp.path()).unwrap(), checkout);
    }
}
