//! Per-identity limits on issuing leases: a token bucket per (issuer, subject) for the rate, and
//! a cap on the leases an identity holds at once (counted in the state database by the store).
//!
//! The buckets live in this process: behind a load balancer each instance allows the rate on its
//! own. The cap on live leases is shared, since it is counted where the leases are.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets tracked before full ones (identities idle long enough to refill) are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// What an identity may do: `rate` leases per minute after a `burst`, at most `max_active` live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssueLimits {
    pub rate_per_minute: u32,
    pub burst: u32,
    pub max_active: u32,
}

pub const DEFAULT_ISSUE_LIMITS: IssueLimits = IssueLimits {
    rate_per_minute: 60,
    burst: 20,
    max_active: 100,
};

impl Default for IssueLimits {
    fn default() -> IssueLimits {
        DEFAULT_ISSUE_LIMITS
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The rate half of [`IssueLimits`].
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

impl RateLimiter {
    pub fn new(limits: IssueLimits) -> RateLimiter {
        RateLimiter {
            per_second: f64::from(limits.rate_per_minute.max(1)) / 60.0,
            burst: f64::from(limits.burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one lease's worth from the identity's bucket, or says how long until one is there.
    pub fn take(&self, issuer: &str, subject: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() > PRUNE_ABOVE {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let b = buckets
            .entry((issuer.to_string(), subject.to_string()))
            .or_insert(Bucket {
                tokens: self.burst,
                at: now,
            });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate_per_minute: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(IssueLimits {
            rate_per_minute,
            burst,
            max_active: 1,
        })
    }

    #[test]
    fn burst_then_the_rate() {
        let l = limiter(60, 3);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.take("i", "a", t).is_ok());
        }
        let wait = l.take("i", "a", t).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        // Another identity has its own bucket.
        assert!(l.take("i", "b", t).is_ok());
        // One per second comes back, never more than the burst.
        assert!(l.take("i", "a", t + Duration::from_secs(1)).is_ok());
        assert!(l.take("i", "a", t + Duration::from_secs(1)).is_err());
        let later = t + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(l.take("i", "a", later).is_ok());
        }
        assert!(l.take("i", "a", later).is_err());
    }

    #[test]
    fn issuer_and_subject_are_one_key() {
        let l = limiter(1, 1);
        let t = Instant::now();
        assert!(l.take("https://a", "x", t).is_ok());
        assert!(l.take("https://b", "x", t).is_ok());
        let wait = l.take("https://a", "x", t).unwrap_err();
        assert!(wait > Duration::from_secs(59));
    }
}
