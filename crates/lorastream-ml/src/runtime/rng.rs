//! The one seeded random number generator of the crate (splitmix64): sampling
//! in generation, the example order and replay draws of training, and reservoir
//! samples. The same seed gives the same sequence on every machine, which is
//! what makes an interrupted training run resume exactly.

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function on `x + golden`: a well-mixed 64-bit value
/// determined by `x` alone (deterministic draws from (seed, use)).
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(GOLDEN);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A splitmix64 stream.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        let out = mix(self.0);
        self.0 = self.0.wrapping_add(GOLDEN);
        out
    }

    /// Uniform in `[0, 1)`, 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A permutation of `0..n` determined by `key`.
pub fn shuffled(n: usize, key: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut state = key;
    for i in (1..n).rev() {
        state = mix(state);
        v.swap(i, (state % (i as u64 + 1)) as usize);
    }
    v
}

/// Reservoir sample of at most `cap` items, determined by `seed`.
pub fn reservoir<T>(items: impl IntoIterator<Item = T>, cap: usize, seed: u64) -> Vec<T> {
    let mut out = Vec::with_capacity(cap);
    let mut state = seed;
    for (i, item) in items.into_iter().enumerate() {
        if out.len() < cap {
            out.push(item);
        } else {
            state = mix(state ^ i as u64);
            let j = (state % (i as u64 + 1)) as usize;
            if j < cap {
                out[j] = item;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_and_reservoir_are_deterministic_permutations() {
        let a = shuffled(50, 7);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, shuffled(50, 7));
        assert_ne!(a, shuffled(50, 8));
        let r = reservoir(0..1000, 10, 3);
        assert_eq!(r.len(), 10);
        assert_eq!(r, reservoir(0..1000, 10, 3));
        assert!(r.iter().any(|&x| x >= 10), "later items must get in: {r:?}");
    }

    #[test]
    fn streams_are_seeded_and_uniform_enough() {
        let draw = |seed| {
            let mut r = Rng::new(seed);
            (0..1000).map(|_| r.next_f64()).collect::<Vec<_>>()
        };
        let a = draw(1);
        assert_eq!(a, draw(1));
        assert_ne!(a, draw(2));
        assert!(a.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
    }
}
