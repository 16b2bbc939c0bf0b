//! Samplers: [`TpeSampler`] (bookkeeping, the below/above split and the acquisition; the
//! estimator itself is in `parzen.rs`) and [`RandomSampler`].

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::parzen::{ParzenConfig, ParzenEstimator};
use crate::space::{Distribution, SearchSpace};
use crate::trial::{Direction, TpeConfig, Trial, TrialState};

/// Internal parameter values by name.
pub type Params = BTreeMap<String, f64>;

/// Optuna's default γ: the `min(ceil(0.1 n), 25)` best trials form l(x).
pub fn default_gamma(n: usize) -> usize {
    n.div_ceil(10).min(25)
}

/// A deterministic generator for trial `number` of a study with `seed`: the same whatever the
/// process, so a resumed or shared study draws what a single run would.
fn trial_rng(seed: u64, number: usize, purpose: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((number as u64) << 8 | purpose);
    rng
}

/// Uniform draws for every parameter.
#[derive(Debug, Clone, Copy)]
pub struct RandomSampler;

impl RandomSampler {
    /// Draws the parameters of trial `number`.
    pub fn sample(space: &SearchSpace, seed: u64, number: usize) -> Params {
        let mut rng = trial_rng(seed, number, 1);
        space
            .iter()
            .map(|(name, d)| (name.clone(), d.sample_uniform(&mut rng)))
            .collect()
    }
}

/// The Tree-structured Parzen Estimator with Optuna 5's semantics.
#[derive(Debug, Clone, Copy)]
pub struct TpeSampler {
    /// Settings.
    pub config: TpeConfig,
}

impl TpeSampler {
    /// Draws the parameters of trial `number` given the study's other `trials`.
    pub fn sample(
        &self,
        space: &SearchSpace,
        trials: &[Trial],
        direction: Direction,
        seed: u64,
        number: usize,
    ) -> Params {
        let finished = trials
            .iter()
            .filter(|t| matches!(t.state, TrialState::Complete | TrialState::Pruned))
            .count();
        if finished < self.config.n_startup_trials {
            return RandomSampler::sample(space, seed, number);
        }
        let mut rng = trial_rng(seed, number, 2);
        let searchable: Vec<&String> = space
            .iter()
            .filter(|(_, d)| !d.is_single())
            .map(|(n, _)| n)
            .collect();
        let mut params = Params::new();
        if self.config.multivariate {
            params.extend(self.sample_joint(
                space,
                &searchable,
                trials,
                direction,
                number,
                &mut rng,
            ));
        } else {
            for name in &searchable {
                params.extend(self.sample_joint(
                    space,
                    &[*name],
                    trials,
                    direction,
                    number,
                    &mut rng,
                ));
            }
        }
        // Single-valued parameters have nothing to search.
        for (name, d) in space {
            params
                .entry(name.clone())
                .or_insert_with(|| d.sample_uniform(&mut rng));
        }
        params
    }

    fn sample_joint(
        &self,
        space: &SearchSpace,
        names: &[&String],
        trials: &[Trial],
        direction: Direction,
        number: usize,
        rng: &mut ChaCha8Rng,
    ) -> Params {
        let (below, above) = split(trials, direction, number, self.config.constant_liar);
        let distributions: Vec<&Distribution> = names.iter().map(|n| &space[*n]).collect();
        let observations = |set: &[&Trial]| -> Vec<Vec<f64>> {
            // A trial counts only if it has every parameter of the set.
            let usable: Vec<&&Trial> = set
                .iter()
                .filter(|t| names.iter().all(|n| t.internal.contains_key(*n)))
                .collect();
            names
                .iter()
                .map(|n| usable.iter().map(|t| t.internal[*n]).collect())
                .collect()
        };
        let parzen = ParzenConfig {
            prior_weight: self.config.prior_weight,
            consider_magic_clip: self.config.consider_magic_clip,
            consider_endpoints: self.config.consider_endpoints,
        };
        let l = ParzenEstimator::new(&distributions, &observations(&below), &parzen);
        let g = ParzenEstimator::new(&distributions, &observations(&above), &parzen);
        let candidates = l.sample(rng, self.config.n_ei_candidates.max(1));
        let (log_l, log_g) = (l.log_pdf(&candidates), g.log_pdf(&candidates));
        let mut best = 0;
        for i in 1..candidates.len() {
            if log_l[i] - log_g[i] > log_l[best] - log_g[best] {
                best = i;
            }
        }
        names
            .iter()
            .zip(&candidates[best])
            .map(|(n, &v)| ((*n).clone(), v))
            .collect()
    }
}

/// Splits the trials into the good set (l) and the rest (g), both in trial-number order.
fn split(
    trials: &[Trial],
    direction: Direction,
    current: usize,
    constant_liar: bool,
) -> (Vec<&Trial>, Vec<&Trial>) {
    let considered: Vec<&Trial> = trials
        .iter()
        .filter(|t| match t.state {
            TrialState::Complete | TrialState::Pruned => true,
            TrialState::Running => constant_liar && t.number != current,
            // Optuna's TPE leaves out queued trials, even with their parameters set.
            TrialState::Fail | TrialState::Waiting => false,
        })
        .collect();
    let n = considered
        .iter()
        .filter(|t| t.state != TrialState::Running)
        .count();
    let n_below = default_gamma(n);
    let sign = match direction {
        Direction::Minimize => 1.0,
        Direction::Maximize => -1.0,
    };
    let mut complete: Vec<&Trial> = considered
        .iter()
        .copied()
        .filter(|t| t.state == TrialState::Complete)
        .collect();
    complete.sort_by(|a, b| {
        let (va, vb) = (
            sign * a.value.unwrap_or(f64::NAN),
            sign * b.value.unwrap_or(f64::NAN),
        );
        va.total_cmp(&vb)
    });
    let mut below: Vec<&Trial> = complete.iter().take(n_below).copied().collect();
    // Then pruned trials, those that got furthest and best first.
    let mut pruned: Vec<&Trial> = considered
        .iter()
        .copied()
        .filter(|t| t.state == TrialState::Pruned)
        .collect();
    pruned.sort_by(|a, b| {
        let key = |t: &Trial| match t.intermediate.iter().next_back() {
            Some((step, v)) => (
                -(*step as f64),
                if v.is_nan() { f64::INFINITY } else { sign * v },
            ),
            None => (1.0, 0.0),
        };
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
    });
    for t in pruned {
        if below.len() >= n_below {
            break;
        }
        below.push(t);
    }
    let below_numbers: Vec<usize> = below.iter().map(|t| t.number).collect();
    let mut above: Vec<&Trial> = considered
        .into_iter()
        .filter(|t| !below_numbers.contains(&t.number))
        .collect();
    below.sort_by_key(|t| t.number);
    above.sort_by_key(|t| t.number);
    (below, above)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The below / above split, constant liar included, against Optuna 5's `TPESampler` on
    /// 40 random studies (`fixtures/search/split_reference.json`, made by
    /// `fixtures/search/generate_split_reference.py`).
    #[test]
    fn split_matches_optuna() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/search/split_reference.json"
        );
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let numbers = |v: &serde_json::Value| -> Vec<usize> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_u64().unwrap() as usize)
                .collect()
        };
        let cases = reference["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 40);
        for (i, case) in cases.iter().enumerate() {
            let trials: Vec<Trial> = case["trials"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| Trial {
                    number: t["number"].as_u64().unwrap() as usize,
                    state: match t["state"].as_str().unwrap() {
                        "complete" => TrialState::Complete,
                        "pruned" => TrialState::Pruned,
                        "running" => TrialState::Running,
                        _ => TrialState::Fail,
                    },
                    params: BTreeMap::new(),
                    internal: BTreeMap::new(),
                    value: t["value"].as_f64(),
                    intermediate: t["intermediate"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.parse().unwrap(), v.as_f64().unwrap()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    started: 0.0,
                    finished: None,
                    user_attrs: BTreeMap::new(),
                    system_attrs: BTreeMap::new(),
                    heartbeat_age: None,
                })
                .collect();
            let direction = match case["direction"].as_str().unwrap() {
                "minimize" => Direction::Minimize,
                _ => Direction::Maximize,
            };
            let (below, above) = split(
                &trials,
                direction,
                case["current"].as_u64().unwrap() as usize,
                case["constant_liar"].as_bool().unwrap(),
            );
            let got = |set: Vec<&Trial>| set.iter().map(|t| t.number).collect::<Vec<_>>();
            assert_eq!(got(below), numbers(&case["below"]), "case {i}: below");
            assert_eq!(got(above), numbers(&case["above"]), "case {i}: above");
        }
    }

    #[test]
    fn gamma_matches_optuna() {
        assert_eq!(
            (
                default_gamma(1),
                default_gamma(10),
                default_gamma(11),
                default_gamma(1000)
            ),
            (1, 1, 2, 25)
        );
    }
}
