//! `cargo xtask search ask-tell`: any program can be the objective, over JSON lines.

use std::io::{BufRead, Write};

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
        let mut study = match &a.study {
            Some(path) => Study::open(path, direction, space, sampler, a.seed)?,
            None => Study::in_memory(direction, space, sampler, a.seed),
        };
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        let mut stdout = std::io::stdout().lock();
        let mut line_number = 0;
        for _ in 0..a.trials {
            let trial = study.ask()?;
            writeln!(
                stdout,
                "{}",
                json!({"trial": trial.number, "params": trial.params})
            )?;
            stdout.flush()?;
            let line = loop {
                line_number += 1;
                match lines.next() {
                    None => bail!("stdin closed before trial {} was told", trial.number),
                    Some(line) => {
                        let line = line?;
                        if !line.trim().is_empty() {
                            break line;
                        }
                    }
                }
            };
            let (number, outcome) =
                parse_tell(&line).with_context(|| format!("stdin line {line_number}: {line:?}"))?;
            if number != trial.number {
                bail!(
                    "stdin line {line_number}: trial {number} is not the one asked (trial {})",
                    trial.number
                );
            }
            study.tell(number, outcome)?;
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
