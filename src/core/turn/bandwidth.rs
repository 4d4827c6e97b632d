//! Bandwidth budgets of the relay (the Lync Edge's "3000 kbit/s per port, 10000 kbit/s per
//! user"): a byte-rate GCRA per allocation and per user, each direction apart (coturn's
//! `max-bps` treats input and output apart too). Excess packets are dropped, not queued:
//! late media is useless, and a queue would be memory an attacker controls.
//!
//! The state is one atomic per meter, so the read-locked hot path can charge it from every
//! socket task at once without a lock or an allocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A rate in bytes per second with a burst of `burst` worth of it; `None` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    bytes_per_sec: u64,
    burst: Duration,
}

/// How much of the rate a burst may take at once: one second's worth (a video key frame
/// at the per-port rate fits in it; a sustained excess does not).
pub const BURST: Duration = Duration::from_secs(1);

impl Budget {
    /// `bytes_per_sec` bytes per second with a burst of `burst` worth of it.
    pub fn bytes(bytes_per_sec: u64, burst: Duration) -> Budget {
        Budget {
            bytes_per_sec,
            burst,
        }
    }

    /// `kbit_per_sec` kilobits (1000 bits) per second; 0 means unlimited.
    pub fn kbit(kbit_per_sec: u64) -> Option<Budget> {
        (kbit_per_sec > 0).then_some(Budget {
            bytes_per_sec: kbit_per_sec.saturating_mul(1000) / 8,
            burst: BURST,
        })
    }
}

/// The two directions of a relay, each with its own meter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToPeer = 0,
    ToClient = 1,
}

/// One GCRA over bytes: `tat` is the theoretical arrival time of the next byte, in
/// nanoseconds since `epoch`.
#[derive(Debug)]
pub struct Meter {
    epoch: Instant,
    tat_ns: AtomicU64,
}

impl Meter {
    pub fn new(epoch: Instant) -> Meter {
        Meter {
            epoch,
            tat_ns: AtomicU64::new(0),
        }
    }

    /// Whether the bucket is full again at `now`: the meter holds no history worth keeping.
    pub fn is_idle(&self, now: Instant) -> bool {
        self.tat_ns.load(Ordering::Relaxed) <= nanos(now.saturating_duration_since(self.epoch))
    }

    /// Charges `bytes` at `now`: `true` when they fit the budget (and are counted), `false`
    /// when the packet must be dropped (nothing is counted).
    pub fn charge(&self, budget: Option<Budget>, bytes: usize, now: Instant) -> bool {
        let Some(budget) = budget else {
            return true;
        };
        if budget.bytes_per_sec == 0 {
            return false;
        }
        let now_ns = nanos(now.saturating_duration_since(self.epoch));
        let cost = u64::try_from(
            u128::try_from(bytes).unwrap_or(u128::MAX) * 1_000_000_000
                / u128::from(budget.bytes_per_sec),
        )
        .unwrap_or(u64::MAX);
        let limit = now_ns.saturating_add(nanos(budget.burst));
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now_ns).saturating_add(cost);
            if next > limit {
                return false;
            }
            match self
                .tat_ns
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }
}

/// A meter per direction.
#[derive(Debug)]
pub struct Meters([Meter; 2]);

impl Meters {
    pub fn new(epoch: Instant) -> Meters {
        Meters([Meter::new(epoch), Meter::new(epoch)])
    }

    pub fn get(&self, direction: Direction) -> &Meter {
        match direction {
            Direction::ToPeer => &self.0[0],
            Direction::ToClient => &self.0[1],
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests start simulated time from a real instant
mod tests {
    use super::*;

    #[test]
    fn a_rate_passes_its_burst_then_its_rate_and_drops_the_excess() {
        let t0 = Instant::now();
        let meter = Meter::new(t0);
        // 3000 kbit/s = 375 000 bytes/s; 172-byte packets: 2180 fit in the 1 s burst.
        let budget = Budget::kbit(3000);
        let passed = (0..3000).filter(|_| meter.charge(budget, 172, t0)).count();
        assert_eq!(passed, 375_000 / 172);
        // Dropped packets cost nothing: 100 ms later, 100 ms worth passes again.
        let later = t0 + Duration::from_millis(100);
        let passed = (0..1000)
            .filter(|_| meter.charge(budget, 172, later))
            .count();
        assert_eq!(passed, 218); // 37 500 bytes and the crumbs of the burst
    }

    #[test]
    fn a_steady_stream_under_the_rate_never_loses_a_packet() {
        let t0 = Instant::now();
        let meter = Meter::new(t0);
        // 64 kbit/s of audio (172 bytes every 20 ms = 68.8 kbit/s) under a 100 kbit/s budget.
        let budget = Budget::kbit(100);
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_millis(20) * i;
            assert!(meter.charge(budget, 172, now), "packet {i}");
        }
        // The same stream under 50 kbit/s loses about a quarter once the burst is spent.
        let meter = Meter::new(t0);
        let budget = Budget::kbit(50);
        let lost = (0..10_000u32)
            .filter(|i| !meter.charge(budget, 172, t0 + Duration::from_millis(20) * *i))
            .count();
        let expected = 10_000 - (50_000 * 200 / 8 + 6250) / 172;
        assert!(
            lost.abs_diff(expected) <= 2,
            "lost {lost}, expected {expected}"
        );
    }

    #[test]
    fn unlimited_and_extreme_inputs() {
        let t0 = Instant::now();
        let meter = Meter::new(t0);
        assert_eq!(Budget::kbit(0), None);
        assert!(meter.charge(None, usize::MAX, t0));
        // A packet larger than the whole burst never passes, and saturates nothing.
        assert!(!meter.charge(Budget::kbit(8), 2000, t0));
        assert!(meter.charge(Budget::kbit(8), 1000, t0));
        // The largest rate saturates instead of overflowing: 2.3e18 bytes/s.
        let huge = Budget::kbit(u64::MAX);
        let fresh = Meter::new(t0);
        assert!(!fresh.charge(huge, usize::MAX / 2, t0)); // 4 s worth
        assert!(fresh.charge(huge, 1 << 60, t0)); // 0.5 s worth
                                                  // Time before the epoch counts as the epoch.
        let early = Meter::new(t0 + Duration::from_secs(5));
        assert!(early.charge(Budget::kbit(8), 1000, t0));
        assert!(!early.charge(Budget::kbit(8), 1, t0));
    }

    #[test]
    fn many_threads_charging_one_meter_never_pass_more_than_the_budget() {
        let t0 = Instant::now();
        let meter = std::sync::Arc::new(Meter::new(t0));
        let budget = Budget::kbit(800); // 100 000 bytes in the burst
        let passed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let meter = meter.clone();
                    s.spawn(move || (0..1000).filter(|_| meter.charge(budget, 100, t0)).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(passed, 1000);
    }
}
