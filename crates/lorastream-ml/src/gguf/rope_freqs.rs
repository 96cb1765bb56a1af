//! llama.cpp's `rope_freqs` tensor back into `rope_scaling`. For a Llama 3.1+
//! checkpoint (`rope_type` llama3) llama.cpp's converter stores, instead of
//! the scaling's four numbers, the divisor it gives each rotary frequency:
//! 1 for short wavelengths, `factor` for long ones, a blend between. The
//! blend is linear in the frequency, so two of its points give the rest:
//! `factor` is the largest divisor, and with `low_freq_factor` 1 (Llama
//! 3.1's; only the ratios of the three others are fixed by the divisors)
//! `high_freq_factor` and `original_max_position_embeddings` follow. The
//! result is checked to give back every stored divisor.

use std::f64::consts::PI;

use crate::nn::rope::Llama3;

/// The llama3 scaling that gives `divisors` (one per frequency of
/// `theta` over `head_dim`); None when no such scaling gives all of them.
pub(super) fn llama3(divisors: &[f64], theta: f64, head_dim: usize) -> Option<Llama3> {
    let freqs: Vec<f64> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
        .collect();
    if freqs.len() != divisors.len() || divisors.iter().any(|d| !d.is_finite() || *d < 1.0) {
        return None;
    }
    let factor = divisors.iter().copied().fold(1.0, f64::max);
    // In the blend, smooth = (1/d − 1/factor) / (1 − 1/factor) = a·f − b.
    let blend: Vec<(f64, f64)> = freqs
        .iter()
        .zip(divisors)
        .filter(|(_, d)| **d > 1.0 + 1e-6 && **d < factor - 1e-6)
        .map(|(f, d)| (*f, (1.0 / d - 1.0 / factor) / (1.0 - 1.0 / factor)))
        .collect();
    let l3 = match blend.as_slice() {
        [(f1, s1), .., (f2, s2)] => {
            let a = (s1 - s2) / (f1 - f2);
            let b = a * f1 - s1;
            // smooth = (old · f / 2π − low) / (high − low), low = 1.
            let high = 1.0 + 1.0 / b;
            Llama3 {
                factor,
                low: 1.0,
                high,
                old: 2.0 * PI * a * (high - 1.0),
            }
        }
        // Too few points to tell: Llama 3.1's own blend, if it fits.
        _ => Llama3 {
            factor,
            low: 1.0,
            high: 4.0,
            old: 8192.0,
        },
    };
    let fits = freqs
        .iter()
        .zip(divisors)
        .all(|(f, d)| (l3.divisor(*f) - d).abs() <= 1e-4 * d);
    (fits && l3.high > 1.0 && l3.old.is_finite() && l3.old > 0.0).then_some(l3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_3_1s_scaling_comes_back_from_its_divisors() {
        let real = Llama3 {
            factor: 8.0,
            low: 1.0,
            high: 4.0,
            old: 8192.0,
        };
        let (theta, hd) = (500_000.0, 128);
        let divisors: Vec<f64> = (0..hd / 2)
            .map(|i| real.divisor(1.0 / f64::powf(theta, (2 * i) as f64 / hd as f64)))
            .collect();
        let got = llama3(&divisors, theta, hd).unwrap();
        assert!((got.factor - 8.0).abs() < 1e-9 && (got.high - 4.0).abs() < 1e-6);
        assert!((got.old - 8192.0).abs() < 1e-3, "{got:?}");
        // Divisors no llama3 scaling gives are not read as one.
        let mut bad = divisors.clone();
        bad[3] = 5.0;
        assert_eq!(llama3(&bad, theta, hd), None);
        assert_eq!(llama3(&divisors[1..], theta, hd), None);
    }
}
