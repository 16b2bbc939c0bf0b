//! Search-space parameters: float and int (optionally log-scaled or stepped) and categorical,
//! written in JSON (`SPACE.json`) or on the command line (`learning_rate=float:1e-5:5e-5:log`).

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::SearchError;

/// One parameter's distribution. Internally every value is an `f64`: the number itself for
/// float and int, the choice's index for categorical.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Distribution {
    /// A real number in `[low, high]`.
    Float {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
        /// Sample uniformly in log space (needs `low > 0`).
        #[serde(default)]
        log: bool,
        /// Grid step (not with `log`).
        #[serde(default)]
        step: Option<f64>,
    },
    /// An integer in `[low, high]`.
    Int {
        /// Lower bound.
        low: i64,
        /// Upper bound.
        high: i64,
        /// Sample in log space (needs `low >= 1`).
        #[serde(default)]
        log: bool,
        /// Grid step (1 by default; not with `log`).
        #[serde(default)]
        step: Option<i64>,
    },
    /// One of a list of values (numbers, strings, booleans).
    Categorical {
        /// The choices, in order.
        choices: Vec<serde_json::Value>,
    },
}

/// A named parameter, as `SPACE.json` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Param {
    /// Name passed to the objective.
    pub name: String,
    /// Its distribution.
    #[serde(flatten)]
    pub distribution: Distribution,
}

/// Parameters by name (sorted, so every trial sees them in one order).
pub type SearchSpace = BTreeMap<String, Distribution>;

impl Distribution {
    /// Checks bounds and options; the message names the parameter.
    pub fn validate(&self, name: &str) -> Result<(), SearchError> {
        let bad = |detail: String| Err(SearchError::InvalidSpace(format!("`{name}`: {detail}")));
        match *self {
            Distribution::Float {
                low,
                high,
                log,
                step,
            } => {
                if !(low.is_finite() && high.is_finite()) || low > high {
                    return bad(format!("bounds [{low}, {high}] are not an interval"));
                }
                // The samplers work on the width: one that overflows is no range to sample.
                if !(high - low).is_finite() {
                    return bad(format!("bounds [{low}, {high}] are too far apart"));
                }
                if log && low <= 0.0 {
                    return bad(format!("log scale needs low > 0 (got {low})"));
                }
                if let Some(s) = step {
                    if log {
                        return bad("step and log cannot be combined".into());
                    }
                    if s.is_nan() || s <= 0.0 {
                        return bad(format!("step {s} must be positive"));
                    }
                }
            }
            Distribution::Int {
                low,
                high,
                log,
                step,
            } => {
                if low > high {
                    return bad(format!("bounds [{low}, {high}] are not an interval"));
                }
                if high.checked_sub(low).is_none() {
                    return bad(format!("bounds [{low}, {high}] are too far apart"));
                }
                if log && low < 1 {
                    return bad(format!("log scale needs low >= 1 (got {low})"));
                }
                if let Some(s) = step {
                    if log && s != 1 {
                        return bad("step and log cannot be combined".into());
                    }
                    if s < 1 {
                        return bad(format!("step {s} must be at least 1"));
                    }
                }
            }
            Distribution::Categorical { ref choices } => {
                if choices.is_empty() {
                    return bad("no choices".into());
                }
            }
        }
        Ok(())
    }

    /// Whether `internal` is a value this distribution can hold in Optuna's internal form (a
    /// finite number; a categorical's choice index): a stored row that is not one is refused
    /// rather than read as another value.
    pub fn holds_internal(&self, internal: f64) -> bool {
        match self {
            Distribution::Float { .. } | Distribution::Int { .. } => internal.is_finite(),
            Distribution::Categorical { choices } => {
                internal.fract() == 0.0 && internal >= 0.0 && internal < choices.len() as f64
            }
        }
    }

    /// True when only one value is possible (such parameters are not searched).
    pub fn is_single(&self) -> bool {
        match self {
            Distribution::Float { low, high, .. } => low == high,
            Distribution::Int { low, high, .. } => low == high,
            Distribution::Categorical { choices } => choices.len() == 1,
        }
    }

    /// The external value of an internal one (choice for categorical, integer for int).
    pub fn to_external(&self, internal: f64) -> serde_json::Value {
        match self {
            Distribution::Float { .. } => serde_json::json!(internal),
            Distribution::Int { .. } => serde_json::json!(internal.round() as i64),
            Distribution::Categorical { choices } => {
                choices[(internal as usize).min(choices.len() - 1)].clone()
            }
        }
    }

    /// The internal value of an external one, if it belongs to the distribution.
    pub fn to_internal(&self, external: &serde_json::Value) -> Option<f64> {
        match self {
            Distribution::Float { .. } | Distribution::Int { .. } => external.as_f64(),
            Distribution::Categorical { choices } => {
                choices.iter().position(|c| c == external).map(|i| i as f64)
            }
        }
    }

    /// Optuna's `distribution_json` of this distribution (the `trial_params` column): the
    /// JSON Optuna 5 writes and reads back (`json_to_distribution`), compactly spaced.
    pub fn to_optuna_json(&self) -> String {
        let value = match self {
            Distribution::Float {
                low,
                high,
                log,
                step,
            } => serde_json::json!({
                "name": "FloatDistribution",
                "attributes": {"step": step, "low": low, "high": high, "log": log},
            }),
            Distribution::Int {
                low,
                high,
                log,
                step,
            } => serde_json::json!({
                "name": "IntDistribution",
                "attributes": {"log": log, "step": step.unwrap_or(1), "low": low, "high": high},
            }),
            Distribution::Categorical { choices } => serde_json::json!({
                "name": "CategoricalDistribution",
                "attributes": {"choices": choices},
            }),
        };
        value.to_string()
    }

    /// A distribution from Optuna's `distribution_json`.
    pub fn from_optuna_json(text: &str) -> Result<Self, SearchError> {
        let bad =
            |detail: &str| SearchError::InvalidSpace(format!("distribution {text}: {detail}"));
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
        let a = &value["attributes"];
        let float = |key: &str| a[key].as_f64().ok_or_else(|| bad(&format!("no `{key}`")));
        let int = |key: &str| a[key].as_i64().ok_or_else(|| bad(&format!("no `{key}`")));
        let log = a["log"].as_bool().unwrap_or(false);
        Ok(match value["name"].as_str() {
            Some("FloatDistribution") => Distribution::Float {
                low: float("low")?,
                high: float("high")?,
                log,
                step: a["step"].as_f64(),
            },
            Some("IntDistribution") => Distribution::Int {
                low: int("low")?,
                high: int("high")?,
                log,
                step: match a["step"].as_i64() {
                    Some(1) | None => None,
                    step => step,
                },
            },
            Some("CategoricalDistribution") => Distribution::Categorical {
                choices: a["choices"]
                    .as_array()
                    .cloned()
                    .ok_or_else(|| bad("no `choices`"))?,
            },
            _ => return Err(bad("not a Float, Int or Categorical distribution")),
        })
    }

    /// A uniform draw in the transformed space, as Optuna's `RandomSampler`.
    pub fn sample_uniform(&self, rng: &mut impl Rng) -> f64 {
        match *self {
            Distribution::Float {
                low,
                high,
                log,
                step,
            } => match (log, step) {
                (true, _) => {
                    let x = rng.random_range(low.ln()..=high.ln()).exp();
                    x.min(high)
                }
                (false, Some(s)) => snap(
                    rng.random_range(low - s / 2.0..=high + s / 2.0),
                    low,
                    high,
                    s,
                ),
                (false, None) if low == high => low,
                (false, None) => rng.random_range(low..high),
            },
            Distribution::Int {
                low,
                high,
                log,
                step,
            } => {
                let (low, high) = (low as f64, high as f64);
                if log {
                    let x = rng.random_range((low - 0.5).ln()..=(high + 0.5).ln()).exp();
                    x.round().clamp(low, high)
                } else {
                    let s = step.unwrap_or(1) as f64;
                    snap(
                        rng.random_range(low - s / 2.0..=high + s / 2.0),
                        low,
                        high,
                        s,
                    )
                }
            }
            Distribution::Categorical { ref choices } => rng.random_range(0..choices.len()) as f64,
        }
    }

    /// Parses `float:LOW:HIGH[:log][:step=S]`, `int:LOW:HIGH[:log][:step=S]` or
    /// `cat:A,B,C` (numbers stay numbers).
    pub fn parse(spec: &str) -> Result<Self, SearchError> {
        let bad = || {
            SearchError::InvalidSpace(format!(
                "`{spec}`: expected float:LOW:HIGH[:log][:step=S], int:LOW:HIGH[:log][:step=S] \
                 or cat:A,B,…"
            ))
        };
        let (kind, rest) = spec.split_once(':').ok_or_else(bad)?;
        match kind {
            "cat" | "categorical" => Ok(Distribution::Categorical {
                choices: rest
                    .split(',')
                    .map(|c| {
                        serde_json::from_str::<serde_json::Value>(c)
                            .ok()
                            .filter(|v| v.is_number() || v.is_boolean())
                            .unwrap_or_else(|| serde_json::Value::String(c.to_string()))
                    })
                    .collect(),
            }),
            "float" | "int" => {
                let mut parts = rest.split(':');
                let low = parts.next().ok_or_else(bad)?;
                let high = parts.next().ok_or_else(bad)?;
                let mut log = false;
                let mut step = None;
                for option in parts {
                    match option.split_once('=') {
                        None if option == "log" => log = true,
                        Some(("step", s)) => step = Some(s),
                        _ => return Err(bad()),
                    }
                }
                if kind == "float" {
                    Ok(Distribution::Float {
                        low: low.parse().map_err(|_| bad())?,
                        high: high.parse().map_err(|_| bad())?,
                        log,
                        step: step.map(str::parse).transpose().map_err(|_| bad())?,
                    })
                } else {
                    Ok(Distribution::Int {
                        low: low.parse().map_err(|_| bad())?,
                        high: high.parse().map_err(|_| bad())?,
                        log,
                        step: step.map(str::parse).transpose().map_err(|_| bad())?,
                    })
                }
            }
            _ => Err(bad()),
        }
    }
}

/// Snaps `x` to the grid `low + k·step` (round half to even, as numpy), clipped to the bounds.
pub fn snap(x: f64, low: f64, high: f64, step: f64) -> f64 {
    let k = ((x - low) / step).round_ties_even();
    (low + k * step).clamp(low, high)
}

/// Reads `NAME=SPEC` pairs into a search space, validated.
pub fn parse_space<'a>(
    pairs: impl IntoIterator<Item = &'a str>,
) -> Result<SearchSpace, SearchError> {
    let mut space = SearchSpace::new();
    for pair in pairs {
        let (name, spec) = pair
            .split_once('=')
            .ok_or_else(|| SearchError::InvalidSpace(format!("`{pair}`: expected NAME=SPEC")))?;
        let distribution = Distribution::parse(spec)?;
        distribution.validate(name)?;
        space.insert(name.to_string(), distribution);
    }
    Ok(space)
}

/// Reads `SPACE.json` (an array of parameters) into a search space, validated.
pub fn space_from_json(text: &str) -> Result<SearchSpace, SearchError> {
    let params: Vec<Param> = serde_json::from_str(text)
        .map_err(|e| SearchError::InvalidSpace(format!("SPACE.json: {e}")))?;
    let mut space = SearchSpace::new();
    for p in params {
        p.distribution.validate(&p.name)?;
        if space.insert(p.name.clone(), p.distribution).is_some() {
            return Err(SearchError::InvalidSpace(format!(
                "`{}` appears twice",
                p.name
            )));
        }
    }
    if space.is_empty() {
        // A trial with no parameter would be asked, trained and compared with nothing.
        return Err(SearchError::InvalidSpace(
            "SPACE.json lists no parameter".into(),
        ));
    }
    Ok(space)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn parses_the_notebook_space() {
        let space =
            parse_space(["learning_rate=float:1e-5:5e-5:log", "batch_size=cat:16,32"]).unwrap();
        assert_eq!(
            space["learning_rate"],
            Distribution::Float {
                low: 1e-5,
                high: 5e-5,
                log: true,
                step: None
            }
        );
        assert_eq!(
            space["batch_size"],
            Distribution::Categorical {
                choices: vec![16.into(), 32.into()]
            }
        );
        assert!(parse_space(["x=float:2:1"]).is_err());
        assert!(parse_space(["x=float:0:1:log"]).is_err());
        assert!(parse_space(["x=gauss:0:1"]).is_err());
        let json = r#"[{"name": "n", "type": "int", "low": 1, "high": 10, "log": true},
                       {"name": "opt", "type": "categorical", "choices": ["adam", "sgd"]}]"#;
        let space = space_from_json(json).unwrap();
        assert_eq!(space.len(), 2);
        assert!(space_from_json(r#"[{"name": "x", "type": "float", "low": 1}]"#).is_err());
        let err = space_from_json("[]").unwrap_err().to_string();
        assert!(err.contains("no parameter"), "{err}");
    }

    #[test]
    fn uniform_draws_respect_bounds_and_grids() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let stepped = Distribution::Float {
            low: 0.0,
            high: 1.0,
            log: false,
            step: Some(0.25),
        };
        let int_log = Distribution::Int {
            low: 1,
            high: 100,
            log: true,
            step: None,
        };
        for _ in 0..1000 {
            let x = stepped.sample_uniform(&mut rng);
            assert!((0.0..=1.0).contains(&x) && (x * 4.0).fract() == 0.0);
            let n = int_log.sample_uniform(&mut rng);
            assert!((1.0..=100.0).contains(&n) && n.fract() == 0.0);
        }
        assert_eq!(snap(0.375, 0.0, 1.0, 0.25), 0.5, "half to even");
    }
}
