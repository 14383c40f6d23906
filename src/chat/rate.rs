//! A token bucket: at most `per_second` messages on average, `burst` at once.
//! One per member (and per connection for unary `SendMessage`), so that one
//! member's burst cannot fill every other member's queue and evict the
//! slower readers.

use std::time::Instant;

/// A rate limit; `per_second` 0 turns it off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// A bucket of `burst` tokens refilled at `per_second`; each message takes one.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            rate,
            tokens: f64::from(rate.burst.max(1)),
            at: now,
        }
    }

    /// Takes a token if there is one (always, when the limit is off).
    pub fn take(&mut self, now: Instant) -> bool {
        if self.rate.per_second == 0 {
            return true;
        }
        let burst = f64::from(self.rate.burst.max(1));
        let refill = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + refill * f64::from(self.rate.per_second)).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again: nothing is lost by forgetting it.
    pub fn is_full(&self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + refill * f64::from(self.rate.per_second) >= f64::from(self.rate.burst.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(
            Rate {
                per_second: 10,
                burst: 3,
            },
            t0,
        );
        assert!((0..3).all(|_| bucket.take(t0)), "the burst");
        assert!(!bucket.take(t0), "then nothing at once");
        assert!(!bucket.is_full(t0));
        let later = t0 + Duration::from_millis(100);
        assert!(bucket.take(later), "one more per 100 ms");
        assert!(!bucket.take(later));
        // Refilled to the burst, no further.
        let much_later = t0 + Duration::from_secs(60);
        assert!(bucket.is_full(much_later));
        assert_eq!((0..10).filter(|_| bucket.take(much_later)).count(), 3);
    }

    #[test]
    fn zero_is_off() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(
            Rate {
                per_second: 0,
                burst: 0,
            },
            t0,
        );
        assert!((0..10_000).all(|_| bucket.take(t0)));
    }
}
