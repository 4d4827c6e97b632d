//! What a stranger may draw from the relay: answers to requests that did not authenticate
//! (Binding responses, 401s with a nonce, errors before authentication) are bytes anyone can
//! make the relay send to any address it can spoof. Each source (IPv4 address, IPv6 /64)
//! has a byte budget per second for them; beyond it the request is dropped (and counted,
//! and the shell strikes the source under the firewall's ban rules).
//!
//! The table is bounded like the firewall's: idle entries are swept (at most once a second)
//! when it is full, and past that new sources share one overflow budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::bandwidth::{Budget, Meter};
use crate::core::net::SourceKey;

/// The budget of unauthenticated answer bytes per source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StrangerLimits {
    /// Bytes per second (0: nothing without authenticating).
    pub bytes_per_sec: u64,
    /// Sources tracked at once.
    pub max_sources: usize,
}

/// The per-source budgets.
#[derive(Debug)]
pub struct Strangers {
    limits: StrangerLimits,
    epoch: Instant,
    meters: HashMap<SourceKey, Meter>,
    last_sweep: Option<Instant>,
}

/// A burst of two seconds' worth: an ICE agent's checks come in waves.
const BURST: Duration = Duration::from_secs(2);

impl Strangers {
    pub fn new(limits: StrangerLimits, epoch: Instant) -> Strangers {
        Strangers {
            limits,
            epoch,
            meters: HashMap::new(),
            last_sweep: None,
        }
    }

    /// Whether `bytes` more may go to `client` at `now` (and counts them if so).
    pub fn allow(&mut self, client: IpAddr, bytes: usize, now: Instant) -> bool {
        let budget = Budget::bytes(self.limits.bytes_per_sec, BURST);
        let mut key = SourceKey::of(client);
        if !self.meters.contains_key(&key) && self.meters.len() >= self.limits.max_sources {
            let due = self
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
            if due {
                self.meters.retain(|_, m| !m.is_idle(now));
                self.last_sweep = Some(now);
            }
            if self.meters.len() >= self.limits.max_sources {
                key = SourceKey::Overflow;
            }
        }
        let epoch = self.epoch;
        self.meters
            .entry(key)
            .or_insert_with(|| Meter::new(epoch))
            .charge(Some(budget), bytes, now)
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.meters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meters.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests start simulated time from a real instant
mod tests {
    use super::*;

    #[test]
    fn a_source_draws_its_budget_then_nothing_and_others_are_apart() {
        let t0 = Instant::now();
        let mut s = Strangers::new(
            StrangerLimits {
                bytes_per_sec: 1000,
                max_sources: 4,
            },
            t0,
        );
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        // Two seconds' worth at once, then refused.
        let answers = (0..30).filter(|_| s.allow(a, 100, t0)).count();
        assert_eq!(answers, 20);
        // An IPv6 /64 is one source.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!((0..30).filter(|_| s.allow(v6a, 100, t0)).count(), 20);
        assert!(!s.allow(v6b, 100, t0));
        // A second later, a second's worth again.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..30).filter(|_| s.allow(a, 100, t1)).count(), 10);
        // The table is bounded: new sources beyond it share one budget.
        for i in 0..10u8 {
            s.allow(IpAddr::from([203, 0, 113, i]), 1, t1);
        }
        assert!(s.len() <= 5);
    }
}
