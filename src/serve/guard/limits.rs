//! Per-identity limits: requests per minute (a token bucket refilled at
//! `rpm / 60` a second, holding at most `rpm`) and requests in flight (a
//! counter; a [`Permit`] gives its place back when dropped, which for a
//! stream is when its body ends or its client goes).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// Why a request was refused: 429 with `Retry-After` seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Rate { rpm: u32, retry_after: u64 },
    Concurrency { max: u32 },
}

#[derive(Debug)]
pub struct Limiter {
    rpm: Option<u32>,
    bucket: Mutex<(f64, Instant)>,
    max_concurrent: Option<u32>,
    in_flight: Arc<AtomicU32>,
}

/// A place among an identity's requests in flight.
#[derive(Debug)]
pub struct Permit(Arc<AtomicU32>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limiter {
    pub fn new(rpm: Option<u32>, max_concurrent: Option<u32>) -> Limiter {
        Limiter {
            rpm,
            bucket: Mutex::new((f64::from(rpm.unwrap_or(0)), Instant::now())),
            max_concurrent,
            in_flight: Arc::new(AtomicU32::new(0)),
        }
    }

    /// `(rpm, max_concurrent)`.
    pub fn settings(&self) -> (Option<u32>, Option<u32>) {
        (self.rpm, self.max_concurrent)
    }

    /// Admits one request now, or says why not.
    pub fn admit(&self) -> Result<Permit, Refused> {
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let permit = Permit(Arc::clone(&self.in_flight));
        if let Some(max) = self.max_concurrent
            && n > max
        {
            return Err(Refused::Concurrency { max });
        }
        if let Some(rpm) = self.rpm {
            let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let per_sec = f64::from(rpm) / 60.0;
            let now = Instant::now();
            let tokens =
                (b.0 + now.duration_since(b.1).as_secs_f64() * per_sec).min(f64::from(rpm));
            if tokens < 1.0 {
                *b = (tokens, now);
                let retry_after = ((1.0 - tokens) / per_sec).ceil().max(1.0) as u64;
                return Err(Refused::Rate { rpm, retry_after });
            }
            *b = (tokens - 1.0, now);
        }
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_gets_rpm_requests_then_waits() {
        let l = Limiter::new(Some(10), None);
        let admitted = (0..50).filter(|_| l.admit().is_ok()).count();
        assert_eq!(admitted, 10);
        match l.admit() {
            Err(Refused::Rate { retry_after, .. }) => assert!((1..=6).contains(&retry_after)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn permits_bound_requests_in_flight_and_come_back() {
        let l = Limiter::new(None, Some(2));
        let a = l.admit().unwrap();
        let _b = l.admit().unwrap();
        assert_eq!(l.admit().unwrap_err(), Refused::Concurrency { max: 2 });
        drop(a);
        assert!(l.admit().is_ok());
    }
}
