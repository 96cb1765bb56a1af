//! How sure a decision can be: the ratio of two versions' perplexities on
//! the same examples, with a paired bootstrap interval. Each cell of the
//! matrix keeps (NLL sum, tokens) per example; resampling the examples (the
//! same draw for both versions) and recomputing `exp(ΔNLL / tokens)` gives
//! the spread a different evaluation set of the same size would show.

use crate::learn::records::Estimate;

/// How a bootstrap is run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bootstrap {
    /// Resamples drawn (0: point estimates only).
    pub resamples: usize,
    /// The interval's coverage (0.95: from the 2.5th to the 97.5th percentile).
    pub confidence: f64,
}

/// `ppl(b) / ppl(a)` over the examples both measured (`a`, `b`: (NLL sum,
/// tokens) per example, in the same order; the longer cut to the shorter),
/// with a paired bootstrap interval. `None` when they share no examples.
pub fn ratio(a: &[(f64, i64)], b: &[(f64, i64)], how: Bootstrap) -> Option<Estimate> {
    // Samples of a stream are prefixes of one order: compare on the shorter.
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    if n == 0 || a.iter().zip(b).any(|(x, y)| x.1 != y.1) {
        return None;
    }
    // Per example: the NLL difference and its tokens.
    let diffs: Vec<(f64, f64)> = a
        .iter()
        .zip(b)
        .map(|(x, y)| (y.0 - x.0, x.1 as f64))
        .collect();
    let of = |sum: (f64, f64)| {
        if sum.1 > 0.0 {
            (sum.0 / sum.1).exp()
        } else {
            f64::NAN
        }
    };
    let total = diffs.iter().fold((0.0, 0.0), |s, d| (s.0 + d.0, s.1 + d.1));
    let value = of(total);
    if how.resamples == 0 || !value.is_finite() {
        return Some(Estimate::point(value));
    }
    // A fixed seed: the same cells give the same interval, every time.
    let mut rng = fastrand::Rng::with_seed(0x5eed_1e55);
    let n = diffs.len();
    let mut draws: Vec<f64> = (0..how.resamples)
        .map(|_| {
            let sum = (0..n).fold((0.0, 0.0), |s, _| {
                let d = diffs[rng.usize(..n)];
                (s.0 + d.0, s.1 + d.1)
            });
            of(sum)
        })
        .filter(|x| x.is_finite())
        .collect();
    if draws.is_empty() {
        return Some(Estimate::point(value));
    }
    draws.sort_by(f64::total_cmp);
    let tail = (1.0 - how.confidence.clamp(0.0, 1.0)) / 2.0;
    let at = |q: f64| draws[((q * (draws.len() - 1) as f64).round() as usize).min(draws.len() - 1)];
    Some(Estimate {
        value,
        lo: at(tail),
        hi: at(1.0 - tail),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::records::Side;

    const HOW: Bootstrap = Bootstrap {
        resamples: 1000,
        confidence: 0.95,
    };

    /// `n` examples of 20 tokens whose NLL per token is `base` + `shift`,
    /// with per-example noise of `noise`.
    type Cell = Vec<(f64, i64)>;

    fn cells(n: usize, shift: f64, noise: f64) -> (Cell, Cell) {
        let mut rng = fastrand::Rng::with_seed(7);
        let a: Vec<(f64, i64)> = (0..n).map(|_| ((2.0 + rng.f64()) * 20.0, 20)).collect();
        let b = a
            .iter()
            .map(|&(x, t)| (x + (shift + noise * (rng.f64() - 0.5)) * t as f64, t))
            .collect();
        (a, b)
    }

    #[test]
    fn a_clear_change_is_tight_and_a_noisy_one_is_wide() {
        let (a, b) = cells(200, -0.2, 0.05);
        let r = ratio(&a, &b, HOW).unwrap();
        assert!((r.value - (-0.2f64).exp()).abs() < 0.01, "{r:?}");
        assert!(
            r.lo <= r.value && r.value <= r.hi && r.hi - r.lo < 0.01,
            "{r:?}"
        );
        let (a, b) = cells(12, -0.02, 1.0);
        let noisy = ratio(&a, &b, HOW).unwrap();
        assert!(noisy.hi - noisy.lo > 0.05, "{noisy:?}");
        // The same cells, the same interval.
        assert_eq!(ratio(&a, &b, HOW), Some(noisy));
    }

    #[test]
    fn mismatched_cells_have_no_ratio_and_no_resamples_is_a_point() {
        let (a, b) = cells(10, 0.1, 0.1);
        // A sample is a prefix: compared on the first 9.
        assert_eq!(ratio(&a, &b[..9], HOW), ratio(&a[..9], &b[..9], HOW));
        assert_eq!(ratio(&a, &[], HOW), None);
        assert_eq!(ratio(&[], &[], HOW), None);
        let p = ratio(
            &a,
            &b,
            Bootstrap {
                resamples: 0,
                confidence: 0.95,
            },
        )
        .unwrap();
        assert_eq!((p.lo, p.hi), (p.value, p.value));
        let gain = p.map_down(|r| 1.0 - r);
        assert!(gain.value < 0.0 && gain.lo == gain.hi);
        assert_eq!(Estimate::point(0.05).against(0.02), Side::Above);
        let e = Estimate {
            value: 0.017,
            lo: -0.007,
            hi: 0.041,
        };
        assert_eq!(e.against(0.02), Side::Straddles);
        assert_eq!(e.pct(), "+1.7% ± 2.4%");
    }
}
