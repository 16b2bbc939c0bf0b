//! `roberta-sentiment search ask-tell`: any program can be the objective, over JSON lines.

use std::io::{BufRead, Write};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sentiment_search::{Direction, Outcome, Sampler, Study, TpeConfig, space_from_json};
use serde_json::{Value, json};

use crate::flags::{AskTellArgs, DirectionFlag, SamplerFlag};

/// A resolved ask/tell session.
pub struct AskTell {
    args: AskTellArgs,
}

impl From<AskTellArgs> for AskTell {
    fn from(args: AskTellArgs) -> Self {
        Self { args }
    }
}

impl AskTell {
    /// Runs the protocol on stdin / stdout.
    pub fn run(&self) -> Result<()> {
        let a = &self.args;
        let text = std::fs::read_to_string(&a.space)
            .with_context(|| format!("reading {}", a.space.display()))?;
        let space = space_from_json(&text).with_context(|| a.space.display().to_string())?;
        let direction = match a.direction {
            DirectionFlag::Minimize => Direction::Minimize,
            DirectionFlag::Maximize => Direction::Maximize,
        };
        let sampler = match a.sampler {
            SamplerFlag::Tpe => {
                if a.trials <= a.startup_trials {
                    eprintln!(
                        "warning: {} trials do not exceed the {} startup trials: every trial is \
                         random (lower --startup-trials)",
                        a.trials, a.startup_trials
                    );
                }
                Sampler::Tpe(TpeConfig {
                    n_startup_trials: a.startup_trials,
                    ..TpeConfig::default()
                })
            }
            SamplerFlag::Random => Sampler::Random,
        };
        let mut study = match &a.study.storage {
            Some(url) => Study::with_storage(
                sentiment_search::storage(url, &a.study.study_name)?,
                direction,
                space,
                sampler,
                a.seed,
            )?,
            None => Study::in_memory(direction, space, sampler, a.seed),
        };
        // Stdin is read on its own thread so that a Ctrl-C or SIGTERM is noticed while a
        // trial waits for its value.
        let stop = crate::checkpoint_on_ctrl_c();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdout = std::io::stdout().lock();
        let mut line_number = 0;
        while let Some(trial) = study.ask_within(a.trials, None)? {
            writeln!(
                stdout,
                "{}",
                json!({"trial": trial.number, "params": trial.params})
            )?;
            stdout.flush()?;
            let told = (|| -> Result<(usize, Outcome)> {
                loop {
                    if stop.is_requested() {
                        bail!("interrupted");
                    }
                    let line = match receiver.recv_timeout(Duration::from_millis(100)) {
                        Ok(line) => line?,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => {
                            bail!("stdin closed before trial {} was told", trial.number)
                        }
                    };
                    line_number += 1;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let (number, outcome) = parse_tell(&line)
                        .with_context(|| format!("stdin line {line_number}: {line:?}"))?;
                    if number != trial.number {
                        bail!(
                            "stdin line {line_number}: trial {number} is not the one asked \
                             (trial {})",
                            trial.number
                        );
                    }
                    return Ok((number, outcome));
                }
            })();
            match told {
                Ok((number, outcome)) => study.tell(number, outcome)?,
                // A trial asked and never told ends as FAIL (as Optuna's `study.optimize`
                // fails the trial its objective raised in), never left RUNNING in the study.
                Err(error) => {
                    study.tell(trial.number, Outcome::Fail)?;
                    if stop.is_requested() {
                        eprintln!("interrupted: trial {} marked FAIL", trial.number);
                        std::process::exit(130);
                    }
                    return Err(error.context(format!("trial {} marked FAIL", trial.number)));
                }
            }
        }
        let best = study
            .best_trial()
            .map(|t| json!({"trial": t.number, "params": t.params, "value": t.value}));
        writeln!(stdout, "{}", json!({ "best": best }))?;
        Ok(())
    }
}

/// Parses `{"trial": k, "value": v}` or `{"trial": k, "state": "fail"|"pruned"}`.
fn parse_tell(line: &str) -> Result<(usize, Outcome)> {
    let value: Value = serde_json::from_str(line).context("not a JSON object")?;
    let number = value
        .get("trial")
        .and_then(Value::as_u64)
        .context("no \"trial\" number")? as usize;
    if let Some(state) = value.get("state") {
        return match state.as_str() {
            Some("fail") => Ok((number, Outcome::Fail)),
            Some("pruned") => Ok((number, Outcome::Pruned)),
            _ => bail!("\"state\" must be \"fail\" or \"pruned\", not {state}"),
        };
    }
    let v = value
        .get("value")
        .context("neither \"value\" nor \"state\"")?;
    let v = v
        .as_f64()
        .with_context(|| format!("\"value\" {v} is not a number"))?;
    if !v.is_finite() {
        bail!("\"value\" {v} is not finite");
    }
    Ok((number, Outcome::Complete(v)))
}
