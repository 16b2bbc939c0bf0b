//! The normal distribution pieces a truncated-normal Parzen estimator needs: Φ, log Φ, the
//! log-mass of an interval computed stably (Optuna's `_log_gauss_mass`), and sampling a truncated
//! normal by its inverse CDF.

use std::f64::consts::{FRAC_1_SQRT_2, PI};

/// Φ(x), the standard normal CDF.
pub fn ndtr(x: f64) -> f64 {
    0.5 * libm::erfc(-x * FRAC_1_SQRT_2)
}

/// log Φ(x), accurate far into the left tail (asymptotic series below −20, as scipy does).
pub fn log_ndtr(x: f64) -> f64 {
    if x > 6.0 {
        // Φ(x) = 1 − Φ(−x) with Φ(−x) tiny: log1p keeps the digits.
        return (-ndtr(-x)).ln_1p();
    }
    if x > -20.0 {
        return ndtr(x).ln();
    }
    // log φ(x) − log(−x) + log(1 − 1/x² + 3/x⁴ − 15/x⁶ + 105/x⁸)
    let x2 = x * x;
    let series =
        1.0 - 1.0 / x2 + 3.0 / (x2 * x2) - 15.0 / (x2 * x2 * x2) + 105.0 / (x2 * x2 * x2 * x2);
    -0.5 * x2 - 0.5 * (2.0 * PI).ln() - (-x).ln() + series.ln()
}

/// log(Φ(b) − Φ(a)) for a < b, stable in both tails and in the middle.
pub fn log_gauss_mass(a: f64, b: f64) -> f64 {
    if b <= 0.0 {
        // Left tail: log Φ(b) + log(1 − Φ(a)/Φ(b)).
        let (la, lb) = (log_ndtr(a), log_ndtr(b));
        return lb + (-(la - lb).exp()).ln_1p();
    }
    if a > 0.0 {
        // Right tail, by symmetry.
        return log_gauss_mass(-b, -a);
    }
    // Central: 1 − Φ(a) − Φ(−b), both small terms.
    (-ndtr(a) - ndtr(-b)).ln_1p()
}

/// Inverse of Φ: Acklam's rational approximation refined by one Halley step (full double
/// precision on (0, 1)).
pub fn ndtri(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let low = 0.02425;
    let x = if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    // Halley refinement on Φ(x) − p.
    let e = ndtr(x) - p;
    let u = e * (2.0 * PI).sqrt() * (0.5 * x * x).exp();
    x - u / (1.0 + 0.5 * x * u)
}

/// The point of quantile `q` ∈ [0, 1) of N(0, 1) truncated to [a, b].
pub fn truncnorm_ppf(q: f64, a: f64, b: f64) -> f64 {
    if a > 0.0 {
        // Work in the left tail, where Φ keeps its precision.
        return -truncnorm_ppf(1.0 - q, -b, -a);
    }
    let log_mass = log_gauss_mass(a, b);
    // log(Φ(a) + q (Φ(b) − Φ(a)))
    let la = log_ndtr(a);
    let lq = q.max(f64::MIN_POSITIVE).ln() + log_mass;
    let log_p = if la > lq {
        la + (lq - la).exp().ln_1p()
    } else {
        lq + (la - lq).exp().ln_1p()
    };
    ndtri(log_p.exp().min(1.0)).clamp(a, b)
}

/// log of the truncated-normal density of N(mu, sigma) on [low, high] at x.
pub fn truncnorm_log_pdf(x: f64, mu: f64, sigma: f64, low: f64, high: f64) -> f64 {
    let z = (x - mu) / sigma;
    let log_phi = -0.5 * z * z - 0.5 * (2.0 * PI).ln();
    log_phi - sigma.ln() - log_gauss_mass((low - mu) / sigma, (high - mu) / sigma)
}

/// log(e^a + e^b + …) without overflow.
pub fn logsumexp(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    /// scipy's values, from `fixtures/search/math_reference.json` (made by
    /// `fixtures/search/generate_math_reference.py`).
    #[test]
    fn normal_functions_match_scipy() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/search/math_reference.json"
        );
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let pairs = |key: &str| -> Vec<(f64, f64)> {
            serde_json::from_value(reference[key].clone()).unwrap()
        };
        for (x, want) in pairs("ndtr") {
            assert_abs_diff_eq!(ndtr(x), want, epsilon = 1e-15);
        }
        for (x, want) in pairs("log_ndtr") {
            assert_abs_diff_eq!(log_ndtr(x), want, epsilon = 1e-9);
        }
        for (p, want) in pairs("ndtri") {
            assert_abs_diff_eq!(ndtri(p), want, epsilon = 1e-9);
        }
        for p in [1e-300, 1e-12, 0.01, 0.3, 0.5, 0.9, 0.999_999] {
            assert_abs_diff_eq!(ndtr(ndtri(p)), p, epsilon = p * 1e-9);
        }
    }

    #[test]
    fn gauss_mass_is_stable_in_every_region() {
        assert_abs_diff_eq!(
            log_gauss_mass(-1.0, 1.0),
            (ndtr(1.0) - ndtr(-1.0)).ln(),
            epsilon = 1e-14
        );
        assert_abs_diff_eq!(
            log_gauss_mass(30.0, 31.0),
            log_gauss_mass(-31.0, -30.0),
            epsilon = 1e-12
        );
        assert!(log_gauss_mass(-40.0, -39.0).is_finite());
        assert!(log_gauss_mass(39.0, 40.0).is_finite());
    }

    #[test]
    fn truncated_ppf_inverts_the_truncated_cdf_and_is_monotone() {
        for (a, b) in [(-1.0, 2.0), (3.0, 8.0), (-9.0, -4.0), (-0.5, 0.5)] {
            let mut previous = f64::NEG_INFINITY;
            for i in 0..=100 {
                let q = i as f64 / 100.0 * 0.999_999;
                let x = truncnorm_ppf(q, a, b);
                // The truncated CDF at x, (Φ(x) − Φ(a)) / (Φ(b) − Φ(a)), gives q back.
                let cdf = (log_gauss_mass(a, x) - log_gauss_mass(a, b)).exp();
                assert!(
                    (cdf - q).abs() < 1e-7,
                    "[{a}, {b}]: cdf({x}) = {cdf}, not {q}"
                );
                assert!(x >= previous - 1e-12);
                previous = x;
            }
        }
        // The median of N(0,1) on [-1, 1] is 0.
        assert_abs_diff_eq!(truncnorm_ppf(0.5, -1.0, 1.0), 0.0, epsilon = 1e-12);
    }
}
