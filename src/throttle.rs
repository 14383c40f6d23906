//! A warning a peer can trigger, said at most once per [`INTERVAL`]: a
//! peer in a loop must not flood the log. What is held back is counted,
//! and the next warning says how many there were.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lock;

/// At most one warning of a kind per this long.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// One kind of warning: when it was last said, and how often it happened
/// since.
pub struct Throttle(Mutex<(Option<Instant>, u64)>);

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle(Mutex::new((None, 0)))
    }

    /// Counts one occurrence. `Some(n)`: say it now, for the `n` times it
    /// happened since it was last said (this one included).
    pub fn occurred(&self) -> Option<u64> {
        let mut state = lock(&self.0);
        state.1 = state.1.saturating_add(1);
        if state.0.is_some_and(|said| said.elapsed() < INTERVAL) {
            return None;
        }
        let times = state.1;
        *state = (Some(Instant::now()), 0);
        Some(times)
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_said_then_the_rest_of_the_interval_is_counted() {
        let throttle = Throttle::new();
        assert_eq!(throttle.occurred(), Some(1));
        for _ in 0..5 {
            assert_eq!(throttle.occurred(), None);
        }
        // As if the interval had passed: the next one says all six.
        lock(&throttle.0).0 = Instant::now().checked_sub(INTERVAL);
        assert_eq!(throttle.occurred(), Some(6));
        assert_eq!(throttle.occurred(), None);
    }
}
