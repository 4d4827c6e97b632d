//! Bandwidth budgets of the relay (the Lync Edge's "3000 kbit/s per port, 10000 kbit/s per
//! user"): a byte-rate GCRA per allocation and per user, each direction apart (coturn's
//! `max-bps` treats input and output apart too). Excess packets are dropped, not queued:
//! late media is useless, and a queue would be memory an attacker controls.
//!
//! In a pool, a user's budget is shared by the members in proportion to the relays the user
//! holds on each ([`Meters::set_share`]): the sum over the pool stays within the budget, up
//! to how fresh each member's count of the others is (a second).
//!
//! The state is one atomic per meter, so the read-locked hot path can charge it from every
//! socket task at once without a lock or an allocation.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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

impl Budget {
    /// Bytes per second (0: nothing passes).
    pub fn bytes_per_sec(self) -> u64 {
        self.bytes_per_sec
    }

    /// How much of the rate one burst may take.
    pub fn burst(self) -> Duration {
        self.burst
    }

    /// This budget's share `parts` / [`Meters::FULL`] (the whole when `parts` is more).
    pub fn share(self, parts: u32) -> Budget {
        let parts = u64::from(parts.min(Meters::FULL));
        Budget {
            bytes_per_sec: u64::try_from(
                u128::from(self.bytes_per_sec) * u128::from(parts) / u128::from(Meters::FULL),
            )
            .unwrap_or(u64::MAX),
            burst: self.burst,
        }
    }
}

/// The two directions of a relay, each with its own meter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToPeer = 0,
    ToClient = 1,
}

/// One GCRA over bytes: `tat` is the theoretical arrival time of the next byte, in
/// nanoseconds since `epoch`. Alone on its cache line: the two directions of an allocation
/// may be charged by two relay workers at once, which must not write one line.
#[derive(Debug)]
#[repr(align(64))]
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

impl Meter {
    /// Counts `bytes` already spent on this budget elsewhere (the kernel fast path relays
    /// this allocation's channels with meters of its own): the next packets here wait for
    /// them as if they had passed here. Never refused and never capped at the burst: what
    /// was relayed is owed, and paid back before anything more passes here.
    pub fn record(&self, budget: Option<Budget>, bytes: u64, now: Instant) {
        let Some(budget) = budget else {
            return;
        };
        if budget.bytes_per_sec == 0 || bytes == 0 {
            return;
        }
        let now_ns = nanos(now.saturating_duration_since(self.epoch));
        let cost =
            u64::try_from(u128::from(bytes) * 1_000_000_000 / u128::from(budget.bytes_per_sec))
                .unwrap_or(u64::MAX);
        let _ = self
            .tat_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.max(now_ns).saturating_add(cost))
            });
    }
}

/// A meter per direction, and the share of the budget this member may spend (a user's
/// meters in a pool; the whole otherwise).
#[derive(Debug)]
pub struct Meters {
    meters: [Meter; 2],
    share: AtomicU32,
}

impl Meters {
    /// The whole budget, in parts of a share.
    pub const FULL: u32 = 1 << 16;

    pub fn new(epoch: Instant) -> Meters {
        Meters {
            meters: [Meter::new(epoch), Meter::new(epoch)],
            share: AtomicU32::new(Meters::FULL),
        }
    }

    /// The share of its budget this member spends: `here` relays of `here + elsewhere`.
    pub fn set_share(&self, here: usize, elsewhere: usize) {
        let total = here.saturating_add(elsewhere).max(1);
        let parts = u128::try_from(here.min(total)).unwrap_or(u128::MAX) * u128::from(Meters::FULL)
            / u128::try_from(total).unwrap_or(u128::MAX);
        self.share.store(
            u32::try_from(parts).unwrap_or(Meters::FULL),
            Ordering::Relaxed,
        );
    }

    /// `budget` as this member may spend it.
    pub fn budget(&self, budget: Option<Budget>) -> Option<Budget> {
        let parts = self.share.load(Ordering::Relaxed);
        if parts >= Meters::FULL {
            return budget;
        }
        budget.map(|b| b.share(parts))
    }

    pub fn get(&self, direction: Direction) -> &Meter {
        match direction {
            Direction::ToPeer => &self.meters[0],
            Direction::ToClient => &self.meters[1],
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
    fn bytes_spent_elsewhere_are_paid_back_before_more_passes_here() {
        let t0 = Instant::now();
        let meter = Meter::new(t0);
        let budget = Budget::kbit(800); // 100 000 bytes/s, a burst of as much
                                        // The kernel relayed two seconds' worth: the burst, and a second at the rate.
        meter.record(budget, 200_000, t0);
        let one = |at: Duration| meter.charge(budget, 1000, t0 + at);
        // Nothing passes until the debt beyond the burst is paid (1 s), and then only what
        // the rate has refilled since.
        assert!(!one(Duration::ZERO));
        assert!(!one(Duration::from_millis(999)));
        let passed = (0..1000)
            .filter(|_| one(Duration::from_millis(1500)))
            .count();
        assert_eq!(passed, 50, "half a second at the rate");
        // Unlimited and shut budgets record nothing; neither does nothing.
        let fresh = Meter::new(t0);
        fresh.record(None, u64::MAX, t0);
        fresh.record(Budget::kbit(800).map(|b| b.share(0)), u64::MAX, t0);
        fresh.record(budget, 0, t0);
        assert!(fresh.is_idle(t0));
        // The largest debt saturates rather than wrapping to "nothing owed".
        fresh.record(budget, u64::MAX, t0);
        fresh.record(budget, u64::MAX, t0);
        assert!(!fresh.charge(budget, 1, t0 + Duration::from_secs(3600 * 24 * 365)));
    }

    #[test]
    fn a_share_of_the_budget_passes_its_part_of_the_rate() {
        let t0 = Instant::now();
        let meters = Meters::new(t0);
        let budget = Budget::kbit(800); // 100 000 bytes/s
        assert_eq!(meters.budget(budget), budget);
        // One relay here, three elsewhere: a quarter here.
        meters.set_share(1, 3);
        let quarter = meters.budget(budget);
        let passed = (0..1000)
            .filter(|_| meters.get(Direction::ToPeer).charge(quarter, 100, t0))
            .count();
        assert_eq!(passed, 250);
        // The other members let go: the whole again.
        meters.set_share(2, 0);
        assert_eq!(meters.budget(budget), budget);
        // Nothing here and an absurd count elsewhere: no budget, no overflow, no panic.
        meters.set_share(0, usize::MAX);
        assert_eq!(meters.budget(budget), budget.map(|b| b.share(0)));
        meters.set_share(usize::MAX, usize::MAX);
        assert!(meters.budget(budget).is_some());
        assert_eq!(meters.budget(None), None);
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
