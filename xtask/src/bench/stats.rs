//! The one median and percentile of the benchmarks: nearest rank over samples of seconds (`f64`) or `Duration`s.
//! Pure; must not know what was measured or how it is printed.

use std::cmp::Ordering;
use std::time::Duration;

/// A measured value the statistics can rank.
pub(super) trait Sample: Copy {
    /// The statistic of no samples at all: NaN for seconds (printed as such), zero for a `Duration`.
    const NONE: Self;
    fn order(a: &Self, b: &Self) -> Ordering;
}

impl Sample for f64 {
    const NONE: Self = f64::NAN;
    fn order(a: &Self, b: &Self) -> Ordering {
        a.total_cmp(b)
    }
}

impl Sample for Duration {
    const NONE: Self = Duration::ZERO;
    fn order(a: &Self, b: &Self) -> Ordering {
        a.cmp(b)
    }
}

/// The sample at rank `round((n - 1) · p)` of the sorted samples (nearest rank, no interpolation): `p = 0.5` is the
/// median (of an even count, the upper of the two middle samples), `1.0` the largest, `0.0` the smallest. `p` is
/// clamped to 0..=1; the samples need not be sorted.
pub(super) fn percentile<T: Sample>(samples: &[T], p: f64) -> T {
    if samples.is_empty() {
        return T::NONE;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(T::order);
    let rank = ((sorted.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// [`percentile`] at 0.5.
pub(super) fn median<T: Sample>(samples: &[T]) -> T {
    percentile(samples, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts_unsorted() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0, "even count: the upper middle sample");
        assert_eq!(median(&[7.5]), 7.5);
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(median(&[ms(30), ms(10), ms(20), ms(40)]), ms(30));
    }

    #[test]
    fn percentile_is_the_nearest_rank() {
        let v: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 1.0), 20.0);
        // (20 - 1) · 0.95 = 18.05 → rank 18, the 19th smallest.
        assert_eq!(percentile(&v, 0.95), 19.0);
        // (20 - 1) · 0.99 = 18.81 → rank 19.
        assert_eq!(percentile(&v, 0.99), 20.0);
        // (17 - 1) · 0.95 = 15.2 → rank 15: what the backup benchmark's 17 pause runs report as p95.
        let seventeen: Vec<f64> = (0..17).map(f64::from).collect();
        assert_eq!(percentile(&seventeen, 0.95), 15.0);
        assert_eq!(percentile(&v, 2.0), 20.0, "p above 1 is the largest");
        assert_eq!(percentile(&v, -1.0), 1.0, "p below 0 is the smallest");
    }

    #[test]
    fn no_samples_is_nan_or_zero_never_a_panic() {
        assert!(median::<f64>(&[]).is_nan());
        assert_eq!(percentile::<Duration>(&[], 0.99), Duration::ZERO);
    }

    #[test]
    fn nan_sorts_last() {
        assert_eq!(percentile(&[f64::NAN, 1.0, 2.0], 0.0), 1.0);
        assert!(percentile(&[f64::NAN, 1.0, 2.0], 1.0).is_nan());
    }
}
