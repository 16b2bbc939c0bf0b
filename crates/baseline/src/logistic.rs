//! L2-regularised logistic regression with the semantics of scikit-learn's
//! `LogisticRegression()` (lbfgs): a single weight vector for two classes, multinomial
//! (softmax) for more, intercepts not penalised, started at zero.

use std::cell::RefCell;

use argmin::core::{CostFunction, Executor, Gradient, State, TerminationReason};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;

use crate::BaselineError;
use crate::sparse::{SparseRows, dot};

/// The settings, by scikit-learn's names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogisticRegression {
    /// Inverse regularisation strength (`C`): the penalty is `‖w‖² / 2C` against the summed
    /// log loss.
    pub c: f64,
    /// L-BFGS iterations at most (`max_iter`).
    pub max_iter: u64,
    /// Convergence: the gradient's Euclidean norm of the mean-scaled objective (`tol`).
    pub tol: f64,
}

impl Default for LogisticRegression {
    /// scikit-learn's `C = 1`, solved to convergence: scikit-learn's own default stops after
    /// 100 iterations at `tol = 1e-4`, often before convergence on text (its
    /// `ConvergenceWarning`); the optimum, not where a budget ran out, is what is comparable.
    fn default() -> Self {
        Self {
            c: 1.0,
            max_iter: 1_000,
            tol: 1e-6,
        }
    }
}

/// A fitted model.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticModel {
    classes: usize,
    features: usize,
    /// One block of `features` weights and an intercept per output: one output for two
    /// classes (the positive class's log-odds), one per class otherwise.
    params: Vec<f64>,
    /// L-BFGS iterations run.
    pub iterations: u64,
    /// Whether L-BFGS stopped within `max_iter` iterations because the gradient fell below
    /// `tol` or the objective stopped changing (by less than the float epsilon).
    pub converged: bool,
}

/// The number of linear outputs for `classes` classes.
fn outputs(classes: usize) -> usize {
    if classes == 2 { 1 } else { classes }
}

impl LogisticRegression {
    /// Fits `labels` (class ids below `classes`) from `rows`, whose columns are below
    /// `features`.
    pub fn fit(
        &self,
        rows: &SparseRows,
        labels: &[usize],
        classes: usize,
        features: usize,
    ) -> Result<LogisticModel, BaselineError> {
        let valid = self.c.is_finite() && self.c > 0.0 && self.tol.is_finite() && self.tol >= 0.0;
        if !valid {
            return Err(BaselineError::Settings(format!(
                "C must be finite and positive and tol finite and non-negative (C {}, tol {})",
                self.c, self.tol
            )));
        }
        if rows.len() != labels.len() {
            return Err(BaselineError::LengthMismatch {
                rows: rows.len(),
                labels: labels.len(),
            });
        }
        if rows.is_empty() {
            return Err(BaselineError::NoRows);
        }
        if classes < 2 {
            return Err(BaselineError::Settings(format!(
                "{classes} classes: a classifier needs at least two"
            )));
        }
        if let Some((row, &label)) = labels.iter().enumerate().find(|(_, l)| **l >= classes) {
            return Err(BaselineError::LabelOutOfRange {
                row,
                label,
                classes,
            });
        }
        let objective = Objective {
            rows,
            labels,
            classes,
            features,
            alpha: 1.0 / (self.c * rows.len() as f64),
            last: RefCell::new(None),
        };
        let start = vec![0.0; outputs(classes) * (features + 1)];
        // scipy's L-BFGS-B, which scikit-learn calls, keeps 10 correction pairs too.
        let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
            .with_tolerance_grad(self.tol)
            .map_err(|e| BaselineError::Settings(e.to_string()))?;
        let result = Executor::new(objective, solver)
            .configure(|state| state.param(start).max_iters(self.max_iter))
            .run()
            .map_err(|e| BaselineError::Optimizer(e.to_string()))?;
        let state = result.state();
        let params = state
            .get_best_param()
            .cloned()
            .ok_or_else(|| BaselineError::Optimizer("no parameters came back".into()))?;
        Ok(LogisticModel {
            classes,
            features,
            params,
            iterations: state.get_iter(),
            converged: state.get_termination_reason() == Some(&TerminationReason::SolverConverged),
        })
    }
}

impl LogisticModel {
    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The weights of output `k` (scikit-learn's `coef_[k]`): the positive class's for two
    /// classes, class `k`'s otherwise.
    pub fn coef(&self, k: usize) -> &[f64] {
        let block = k * (self.features + 1);
        &self.params[block..block + self.features]
    }

    /// The intercept of output `k` (scikit-learn's `intercept_[k]`).
    pub fn intercept(&self, k: usize) -> f64 {
        self.params[k * (self.features + 1) + self.features]
    }

    /// Class probabilities of every row, `classes` per row (scikit-learn's `predict_proba`).
    pub fn predict_proba(&self, rows: &SparseRows) -> Vec<f64> {
        let mut out = Vec::with_capacity(rows.len() * self.classes);
        let mut z = vec![0.0; outputs(self.classes)];
        for row in rows.rows() {
            self.logits(row, &mut z);
            if self.classes == 2 {
                let p = sigmoid(z[0]);
                out.extend([1.0 - p, p]);
            } else {
                let lse = log_sum_exp(&z);
                out.extend(z.iter().map(|v| (v - lse).exp()));
            }
        }
        out
    }

    /// The most probable class of every row (the first on ties, as scikit-learn's `predict`).
    pub fn predict(&self, rows: &SparseRows) -> Vec<usize> {
        self.predict_proba(rows)
            .chunks(self.classes)
            .map(|p| {
                p.iter()
                    .enumerate()
                    .fold((0, f64::NEG_INFINITY), |best, (k, &v)| {
                        if v > best.1 { (k, v) } else { best }
                    })
                    .0
            })
            .collect()
    }

    fn logits(&self, row: (&[u32], &[f64]), z: &mut [f64]) {
        logits(&self.params, self.features, row, z);
    }
}

/// `z[k] = row · w_k + b_k` for every output `k`.
fn logits(params: &[f64], features: usize, row: (&[u32], &[f64]), z: &mut [f64]) {
    for (k, z) in z.iter_mut().enumerate() {
        let block = &params[k * (features + 1)..(k + 1) * (features + 1)];
        *z = dot(row, &block[..features]) + block[features];
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `log(1 + exp(z))` without overflow.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

fn log_sum_exp(z: &[f64]) -> f64 {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// The mean log loss plus `alpha ‖w‖² / 2` (scikit-learn's objective divided by `C n`: the
/// same optimum, with a gradient whose size does not grow with the data).
struct Objective<'a> {
    rows: &'a SparseRows,
    labels: &'a [usize],
    classes: usize,
    features: usize,
    alpha: f64,
    /// The last point evaluated: L-BFGS asks for the cost and the gradient of the same point
    /// one after the other, and one pass over the data gives both.
    last: RefCell<Option<Evaluated>>,
}

/// A point, the objective there and its gradient.
type Evaluated = (Vec<f64>, f64, Vec<f64>);

impl Objective<'_> {
    fn evaluate(&self, params: &[f64]) -> (f64, Vec<f64>) {
        if let Some((at, cost, gradient)) = self.last.borrow().as_ref()
            && at.as_slice() == params
        {
            return (*cost, gradient.clone());
        }
        let (outputs, width) = (outputs(self.classes), self.features + 1);
        let n = self.rows.len() as f64;
        let mut gradient = vec![0.0; params.len()];
        let mut loss = 0.0;
        let mut z = vec![0.0; outputs];
        for (row, &label) in self.rows.rows().zip(self.labels) {
            logits(params, self.features, row, &mut z);
            // d loss / d z_k, per output.
            if outputs == 1 {
                let y = (label == 1) as u8 as f64;
                loss += softplus(z[0]) - y * z[0];
                z[0] = sigmoid(z[0]) - y;
            } else {
                let lse = log_sum_exp(&z);
                loss += lse - z[label];
                for (k, v) in z.iter_mut().enumerate() {
                    *v = (*v - lse).exp() - (k == label) as u8 as f64;
                }
            }
            for (k, &d) in z.iter().enumerate() {
                let block = &mut gradient[k * width..(k + 1) * width];
                for (&c, &v) in row.0.iter().zip(row.1) {
                    block[c as usize] += d * v;
                }
                block[self.features] += d;
            }
        }
        let mut penalty = 0.0;
        for k in 0..outputs {
            let (w, g) = (
                &params[k * width..k * width + self.features],
                &mut gradient[k * width..k * width + self.features],
            );
            for (g, &w) in g.iter_mut().zip(w) {
                *g = *g / n + self.alpha * w;
                penalty += w * w;
            }
            gradient[k * width + self.features] /= n;
        }
        let cost = loss / n + 0.5 * self.alpha * penalty;
        *self.last.borrow_mut() = Some((params.to_vec(), cost, gradient.clone()));
        (cost, gradient)
    }
}

impl CostFunction for Objective<'_> {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, params: &Vec<f64>) -> Result<f64, argmin::core::Error> {
        Ok(self.evaluate(params).0)
    }
}

impl Gradient for Objective<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;

    fn gradient(&self, params: &Vec<f64>) -> Result<Vec<f64>, argmin::core::Error> {
        Ok(self.evaluate(params).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The analytic gradient against central differences, for two and three classes.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut rows = SparseRows::default();
        rows.push(&[(0, 1.0), (2, 2.0)]);
        rows.push(&[(1, 1.0)]);
        rows.push(&[(0, 3.0), (1, 1.0), (2, 1.0)]);
        for (classes, labels) in [(2, vec![1, 0, 1]), (3, vec![2, 0, 1])] {
            let objective = Objective {
                rows: &rows,
                labels: &labels,
                classes,
                features: 3,
                alpha: 0.3,
                last: RefCell::new(None),
            };
            let params: Vec<f64> = (0..outputs(classes) * 4)
                .map(|i| (i as f64 * 0.37).sin())
                .collect();
            let (_, gradient) = objective.evaluate(&params);
            for i in 0..params.len() {
                let h = 1e-6;
                let mut plus = params.clone();
                plus[i] += h;
                let mut minus = params.clone();
                minus[i] -= h;
                let numeric =
                    (objective.evaluate(&plus).0 - objective.evaluate(&minus).0) / (2.0 * h);
                assert!(
                    (numeric - gradient[i]).abs() < 1e-7,
                    "{classes} classes, parameter {i}: {numeric} vs {}",
                    gradient[i]
                );
            }
        }
    }

    #[test]
    fn separable_data_is_learnt_and_bad_labels_refused() {
        let mut rows = SparseRows::default();
        for i in 0..20 {
            rows.push(&[((i % 2) as u32, 1.0)]);
        }
        let labels: Vec<usize> = (0..20).map(|i| i % 2).collect();
        let model = LogisticRegression::default()
            .fit(&rows, &labels, 2, 2)
            .unwrap();
        assert!(model.converged);
        assert_eq!(model.predict(&rows), labels);
        let err = LogisticRegression::default()
            .fit(&rows, &[0, 2].repeat(10), 2, 2)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "row 1 has label 2, but there are 2 classes"
        );
    }
}
