//! Robust statistics on small samples: medians and quantiles, the building blocks of baselines
//! that an anomaly in the history cannot drag along.

/// The median, or `None` for an empty sample. Reorders `values`.
pub fn median(values: &mut [f64]) -> Option<f64> {
    quantile(values, 0.5)
}

/// The `q` quantile (0..=1) with linear interpolation between order statistics, or `None` for
/// an empty sample. Reorders `values`. NaNs sort last.
pub fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let (a, b) = (values[lo], values[hi]);
    Some(a + (b - a) * (pos - lo as f64))
}

/// The median absolute deviation from the median, scaled (×1.4826) to estimate a standard
/// deviation for normal data.
pub fn mad(values: &mut [f64]) -> Option<f64> {
    let m = median(values)?;
    let mut dev: Vec<f64> = values.iter().map(|v| (v - m).abs()).collect();
    median(&mut dev).map(|d| d * 1.4826)
}

/// The standard normal upper tail, P(Z > z), from the complementary error function
/// (Numerical Recipes' `erfcc`, relative error under 1.2e-7 everywhere, tails included).
pub fn normal_upper(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    let erfc = if x >= 0.0 { erfc } else { 2.0 - erfc };
    erfc / 2.0
}

/// The z a one-sided test at level `alpha` must reach: the inverse of [`normal_upper`], by
/// bisection (it runs once per evaluation, not per test).
pub fn critical_z(alpha: f64) -> f64 {
    let alpha = alpha.clamp(1e-300, 0.5);
    let (mut lo, mut hi) = (0.0, 40.0);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if normal_upper(mid) > alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// The signed root of the Poisson deviance of `observed` against `expected`: positive when
/// there are more than expected. Close to a standard normal under the null even for a handful
/// of counts, unlike (x - e) / sqrt(e), which is why quiet consumers can be judged with it.
pub fn poisson_z(observed: f64, expected: f64) -> f64 {
    let e = expected.max(1e-9);
    let x = observed.max(0.0);
    let dev = if x > 0.0 {
        2.0 * (x * (x / e).ln() - (x - e))
    } else {
        2.0 * e
    };
    dev.max(0.0).sqrt().copysign(x - e)
}

/// The signed root of the binomial deviance of `k` successes in `n` trials against a rate `p`:
/// positive when the observed rate is above `p`.
pub fn binomial_z(k: u64, n: u64, p: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    let (k, n) = (k.min(n) as f64, n as f64);
    let term = |obs: f64, exp: f64| {
        if obs > 0.0 {
            obs * (obs / exp).ln()
        } else {
            0.0
        }
    };
    let dev = 2.0 * (term(k, n * p) + term(n - k, n * (1.0 - p)));
    dev.max(0.0).sqrt().copysign(k - n * p)
}

/// The `q` quantile (0..=1) by selection rather than a sort, nearest rank: for the
/// percentiles of noise computed for every consumer at every evaluation.
pub fn select_quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let i = ((values.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    let (_, v, _) = values.select_nth_unstable_by(i, |a, b| a.total_cmp(b));
    Some(*v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_ignores_an_outlier() {
        assert_eq!(median(&mut [1.0, 2.0, 3.0, 1000.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [1.0, 3.0]), Some(2.0));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn quantiles_interpolate() {
        let mut v: Vec<f64> = (0..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.99), Some(99.0));
        assert_eq!(quantile(&mut v, 0.0), Some(0.0));
        assert_eq!(quantile(&mut [5.0], 0.3), Some(5.0));
    }

    #[test]
    fn normal_tail_and_its_inverse() {
        assert!((normal_upper(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_upper(1.959_964) - 0.025).abs() < 1e-6);
        // Far tails keep their relative accuracy: P(Z > 6) = 9.866e-10.
        assert!((normal_upper(6.0) / 9.865_876e-10 - 1.0).abs() < 1e-4);
        assert!((critical_z(0.025) - 1.959_964).abs() < 1e-4);
        assert!((critical_z(1e-6) - 4.753_424).abs() < 1e-3);
    }

    #[test]
    fn deviance_tests_are_signed_and_sized() {
        assert_eq!(poisson_z(10.0, 10.0), 0.0);
        assert!(poisson_z(0.0, 20.0) < -6.0);
        assert!(poisson_z(3.0, 20.0) < -4.0 && poisson_z(3.0, 20.0) > -5.0);
        assert!(poisson_z(60.0, 20.0) > 7.0);
        // 15 errors in 100 calls against a 1% baseline is unmistakable; 2 in 100 is not.
        assert!(binomial_z(15, 100, 0.01) > 7.0);
        assert!(binomial_z(2, 100, 0.01) < 1.5);
        assert!(binomial_z(0, 100, 0.01) < 0.0);
        assert_eq!(binomial_z(0, 0, 0.5), 0.0);
    }

    #[test]
    fn selection_matches_sorting() {
        let mut v: Vec<f64> = (0..=100).rev().map(f64::from).collect();
        assert_eq!(select_quantile(&mut v, 0.99), Some(99.0));
        assert_eq!(select_quantile(&mut v, 0.5), Some(50.0));
        assert_eq!(select_quantile(&mut [], 0.5), None);
    }

    #[test]
    fn mad_of_constant_is_zero() {
        assert_eq!(mad(&mut [4.0, 4.0, 4.0, 40.0]), Some(0.0));
        let m = mad(&mut [1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert!((m - 1.4826).abs() < 1e-9);
    }
}
