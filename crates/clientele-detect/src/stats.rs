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
    fn mad_of_constant_is_zero() {
        assert_eq!(mad(&mut [4.0, 4.0, 4.0, 40.0]), Some(0.0));
        let m = mad(&mut [1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert!((m - 1.4826).abs() < 1e-9);
    }
}
