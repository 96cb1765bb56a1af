//! The one exponential backoff of the daemon: the HTTP client's retries
//! (with jitter), a failed stage's restart, a degraded publish target, the
//! generation worker's model reload.

use std::time::Duration;

/// A delay that doubles from `first` with each failure in a row, up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max }
    }

    /// The delay after `failures` failures in a row (the first: `first`).
    pub fn delay(&self, failures: u32) -> Duration {
        self.first
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(self.max)
    }

    /// [`Backoff::delay`] with full jitter: uniform in [delay/10, delay], so
    /// many clients retrying at once spread out yet never hammer the server.
    pub fn jittered(&self, failures: u32) -> Duration {
        let ms = self.delay(failures).as_millis() as u64;
        Duration::from_millis(ms / 10 + fastrand::u64(0..=ms - ms / 10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_jitters_within_the_step() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let secs: Vec<u64> = [0, 1, 2, 5, 12, 100]
            .iter()
            .map(|&n| b.delay(n).as_secs())
            .collect();
        assert_eq!(secs, [1, 1, 2, 16, 300, 300]);
        let j = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for n in 1..10 {
            let d = j.jittered(n);
            assert!(d >= j.delay(n) / 10 && d <= j.delay(n), "{d:?}");
        }
    }
}
