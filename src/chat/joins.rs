//! How often one address, and one identity, may join: a client that
//! reconnects in a loop costs a handshake and a thread each time, and
//! fills its room with JOIN and LEAVE. One bucket per address and one per
//! token's `sub`; a full bucket is forgotten (it says nothing a new one
//! would not), so the maps hold only who joined within the last burst.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use super::rate::{Bucket, Rate};
use crate::lock;

/// Keys a map holds before its full buckets are swept out.
const SWEEP_AT: usize = 4096;
/// Keys a map holds at most (a few MiB): past it, every bucket in use, a
/// new key is refused until some fill up again.
const MAX_KEYS: usize = 1 << 16;

/// Which limit a join was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinLimited {
    Address,
    Identity,
}

impl JoinLimited {
    /// As `/metrics` labels it.
    pub fn label(self) -> &'static str {
        match self {
            JoinLimited::Address => "address",
            JoinLimited::Identity => "identity",
        }
    }
}

impl std::fmt::Display for JoinLimited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "join rate limit ({}): try again later", self.label())
    }
}

/// The join limits of one server.
pub struct JoinLimiter {
    address_rate: Rate,
    identity_rate: Rate,
    by_address: Mutex<HashMap<IpAddr, Bucket>>,
    by_identity: Mutex<HashMap<String, Bucket>>,
}

impl JoinLimiter {
    /// Limits per address and per identity; `per_second` 0 turns one off.
    pub fn new(address_rate: Rate, identity_rate: Rate) -> JoinLimiter {
        JoinLimiter {
            address_rate,
            identity_rate,
            by_address: Mutex::new(HashMap::new()),
            by_identity: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a join from `address` by `identity` (a verified name), if both
    /// limits allow it now.
    pub fn admit(
        &self,
        address: Option<IpAddr>,
        identity: Option<&str>,
    ) -> Result<(), JoinLimited> {
        let now = Instant::now();
        if let (Some(address), true) = (address, self.address_rate.per_second > 0) {
            take(&self.by_address, address, self.address_rate, now)
                .then_some(())
                .ok_or(JoinLimited::Address)?;
        }
        if let (Some(identity), true) = (identity, self.identity_rate.per_second > 0) {
            take(
                &self.by_identity,
                identity.to_owned(),
                self.identity_rate,
                now,
            )
            .then_some(())
            .ok_or(JoinLimited::Identity)?;
        }
        Ok(())
    }
}

/// Takes a token from `key`'s bucket in `map`, sweeping full buckets out as
/// the map grows.
fn take<K: Hash + Eq>(map: &Mutex<HashMap<K, Bucket>>, key: K, rate: Rate, now: Instant) -> bool {
    let mut buckets = lock(map);
    if buckets.len() >= SWEEP_AT && !buckets.contains_key(&key) {
        buckets.retain(|_, bucket| !bucket.is_full(now));
        if buckets.len() >= MAX_KEYS {
            return false;
        }
    }
    buckets
        .entry(key)
        .or_insert_with(|| Bucket::new(rate, now))
        .take(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_and_identity_has_its_own_burst() {
        let rate = Rate {
            per_second: 1,
            burst: 3,
        };
        let limiter = JoinLimiter::new(rate, Rate { burst: 2, ..rate });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(limiter.admit(Some(a), None), Ok(()));
        }
        assert_eq!(limiter.admit(Some(a), None), Err(JoinLimited::Address));
        assert_eq!(limiter.admit(Some(b), Some("ana")), Ok(()));
        assert_eq!(limiter.admit(None, Some("ana")), Ok(()));
        assert_eq!(
            limiter.admit(Some(b), Some("ana")),
            Err(JoinLimited::Identity)
        );
        assert_eq!(limiter.admit(Some(b), Some("bob")), Ok(()));
        let off = Rate {
            per_second: 0,
            burst: 0,
        };
        let off = JoinLimiter::new(off, off);
        assert!((0..100).all(|_| off.admit(Some(a), Some("ana")).is_ok()));
    }
}
