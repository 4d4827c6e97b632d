//! The application firewall's per-source bookkeeping: per-source connection and request
//! rates, concurrent connections per source, strikes and bans, and an allow-list exempt from
//! all of them. Sans-IO: every call takes `now`; the shell owns the clock.
//!
//! Sources are keyed by IPv4 address and by IPv6 /64 (one host usually owns a whole /64, so
//! per-address limits would be trivially evaded). The table is bounded: when it is full
//! after sweeping idle entries, new sources share one overflow entry, so a flood from many
//! addresses degrades into one shared budget instead of unbounded memory.

use crate::core::net::{Prefix, SourceKey};
use crate::sync::{MutexExt, RwLockExt};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate: `per_sec` sustained, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: u32,
}

/// GCRA (generic cell rate algorithm): a token bucket in one `Instant`, exact and
/// allocation-free. `tat` is the theoretical arrival time of the next conforming event.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gcra {
    tat: Option<Instant>,
}

impl Gcra {
    /// Whether the bucket is full again at `now` (no history left worth keeping).
    pub fn is_idle(&self, now: Instant) -> bool {
        self.tat.is_none_or(|t| t <= now)
    }

    /// Charges `n` events that happened elsewhere (other pool members admitted them) as if
    /// they had been taken here at `now`: the bucket fills up to a minute's debt at most.
    pub fn charge(&mut self, rate: Rate, n: u32, now: Instant) {
        if rate.per_sec == 0 || n == 0 {
            return;
        }
        let interval = Duration::from_secs(1) / rate.per_sec;
        let tat = self.tat.map_or(now, |t| t.max(now));
        let most = now + Duration::from_secs(60);
        self.tat = Some(
            tat.checked_add(interval.saturating_mul(n))
                .map_or(most, |t| t.min(most)),
        );
    }

    /// Takes one token if the rate allows it at `now`; otherwise returns how long until it would.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        if rate.per_sec == 0 {
            return Err(Duration::from_secs(1));
        }
        let interval = Duration::from_secs(1) / rate.per_sec;
        let tolerance = interval * rate.burst.saturating_sub(1);
        let tat = self.tat.map_or(now, |t| t.max(now));
        let earliest = tat.checked_sub(tolerance).unwrap_or(now);
        if earliest > now {
            return Err(earliest - now);
        }
        self.tat = Some(tat + interval);
        Ok(())
    }
}

/// Per-source limits (from the topology's `[limits]`).
#[derive(Clone, Debug, PartialEq)]
pub struct SourcePolicy {
    /// New connections (each a TLS handshake) per source.
    pub connect_rate: Rate,
    /// Concurrent connections per source.
    pub max_connections: u32,
    /// SIP requests per source, across its connections.
    pub request_rate: Rate,
    /// Strikes (refusals and rejected messages) within `strike_window` that ban a source.
    pub ban_after: u32,
    pub strike_window: Duration,
    pub ban_time: Duration,
    /// Sources exempt from per-source limits and bans (NAT'd offices, partners, monitors).
    pub allow: Vec<Prefix>,
    /// Most sources tracked at once.
    pub max_sources: usize,
}

/// Why a source was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Banned { remaining: Duration },
    ConnectRate { retry_after: Duration },
    TooManyConnections,
    RequestRate { retry_after: Duration },
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Banned { .. } => "banned",
            Refusal::ConnectRate { .. } => "connect_rate",
            Refusal::TooManyConnections => "connections_per_source",
            Refusal::RequestRate { .. } => "request_rate",
        }
    }

    /// Seconds for a Retry-After header (at least 1).
    pub fn retry_after_secs(&self) -> u32 {
        let d = match *self {
            Refusal::Banned { remaining } => remaining,
            Refusal::ConnectRate { retry_after } | Refusal::RequestRate { retry_after } => {
                retry_after
            }
            Refusal::TooManyConnections => Duration::from_secs(1),
        };
        u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX)
    }
}

/// A ban the pool hears of: whom, and for how much longer. Members publish the bans their
/// strikes cause and take the ones others publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanNotice {
    pub key: SourceKey,
    pub remaining: Duration,
}

/// The longest ban taken from the pool (a day; `firewall.ban_time` is at most that).
pub const MAX_POOL_BAN: Duration = Duration::from_secs(86_400);

/// Bans waiting for the pool's task to publish them; past this many the oldest go (a
/// member that reconnects publishes every ban still in force anyway).
const OUTBOX: usize = 1024;

/// What happened when a strike was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strike {
    Counted,
    /// This strike banned the source until the given time.
    Banned {
        until: Instant,
    },
    /// Allow-listed or already banned: nothing changes.
    Ignored,
}

#[derive(Debug)]
struct Source {
    connections: u32,
    connect: Gcra,
    requests: Gcra,
    strikes: u32,
    window_start: Instant,
    banned_until: Option<Instant>,
    last_seen: Instant,
    /// Requests admitted since the pool's task last asked (only counted with a pool).
    admitted: u32,
}

impl Source {
    fn new(now: Instant) -> Source {
        Source {
            connections: 0,
            connect: Gcra::default(),
            requests: Gcra::default(),
            strikes: 0,
            window_start: now,
            banned_until: None,
            last_seen: now,
            admitted: 0,
        }
    }

    fn ban_remaining(&self, now: Instant) -> Option<Duration> {
        self.banned_until.filter(|&t| t > now).map(|t| t - now)
    }

    fn idle(&self, now: Instant) -> bool {
        self.connections == 0
            && self.ban_remaining(now).is_none()
            && now.saturating_duration_since(self.last_seen) >= IDLE
    }
}

const SHARDS: usize = 32;
/// A source with no connections and no ban is forgotten after this long.
const IDLE: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Shard {
    map: HashMap<SourceKey, Source>,
    last_sweep: Option<Instant>,
}

/// The per-source table, sharded so that no global lock sits on the per-connection path.
pub struct SourceGuard {
    /// Replaced whole by a reload; the per-source state stays.
    policy: std::sync::RwLock<std::sync::Arc<SourcePolicy>>,
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    bans: AtomicU64,
    /// Bans to publish to the pool, once a pool is there to hear them.
    outbox: Mutex<std::collections::VecDeque<BanNotice>>,
    publishing: std::sync::atomic::AtomicBool,
    /// Bans taken from other members.
    pool_bans: AtomicU64,
}

/// A connection's place in its source's count ([`SourceGuard::connect`]): the entry it was
/// counted on (none for an allow-listed source), to give it back to that same entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "hand it back to SourceGuard::disconnected when the connection ends"]
pub struct Counted(Option<SourceKey>);

impl SourceGuard {
    pub fn new(policy: SourcePolicy) -> SourceGuard {
        SourceGuard {
            policy: std::sync::RwLock::new(std::sync::Arc::new(policy)),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            bans: AtomicU64::new(0),
            outbox: Mutex::new(std::collections::VecDeque::new()),
            publishing: std::sync::atomic::AtomicBool::new(false),
            pool_bans: AtomicU64::new(0),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> std::sync::Arc<SourcePolicy> {
        self.policy_now()
    }

    /// Puts a new policy in force (reload): rates, bans and the allow-list apply from the
    /// next event; what each source has done so far is kept.
    pub fn set_policy(&self, policy: SourcePolicy) {
        *self.policy.write_unpoisoned() = std::sync::Arc::new(policy);
    }

    /// The policy in force (no lock is held while it is used).
    fn policy_now(&self) -> std::sync::Arc<SourcePolicy> {
        self.policy.read_unpoisoned().clone()
    }

    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.policy_now().allow.iter().any(|p| p.contains(ip))
    }

    /// Runs `f` on the source's entry, creating it (or falling back to the overflow entry
    /// when the table is full).
    fn with<R>(
        &self,
        ip: IpAddr,
        now: Instant,
        f: impl FnOnce(&mut Source, &SourcePolicy) -> R,
    ) -> R {
        self.with_key(ip, now, |s, p, _| f(s, p))
    }

    /// [`Self::with`], and `f` is told which entry it got (the source's, or the overflow).
    fn with_key<R>(
        &self,
        ip: IpAddr,
        now: Instant,
        f: impl FnOnce(&mut Source, &SourcePolicy, SourceKey) -> R,
    ) -> R {
        let mut key = SourceKey::of(ip);
        let policy = self.policy_now();
        let per_shard = (policy.max_sources / SHARDS).max(1);
        let mut shard = self.lock(self.shard_of(key));
        if !shard.map.contains_key(&key) && shard.map.len() >= per_shard {
            // Sweeping is O(entries): at most once a second per shard, so a flood of new
            // sources cannot turn it into a CPU sink.
            if shard
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
            {
                shard.map.retain(|_, s| !s.idle(now));
                shard.last_sweep = Some(now);
            }
            if shard.map.len() >= per_shard {
                drop(shard);
                key = SourceKey::Overflow;
                shard = self.lock(self.shard_of(key));
            }
        }
        let source = shard.map.entry(key).or_insert_with(|| Source::new(now));
        source.last_seen = now;
        f(source, &policy, key)
    }

    /// The shard a key lives in. Keyed (random per process): a flooder cannot aim its
    /// addresses at one shard.
    fn shard_of(&self, key: SourceKey) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn lock(&self, i: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards
            .get(i)
            .unwrap_or_else(|| unreachable!())
            .lock_unpoisoned()
    }

    /// A new connection from `ip`. On `Ok` the caller must hand the [`Counted`] back to
    /// [`Self::disconnected`] when it ends. Refusals count as strikes.
    pub fn connect(&self, ip: IpAddr, now: Instant) -> Result<Counted, Refusal> {
        if self.allowed(ip) {
            return Ok(Counted(None));
        }
        let mut counted_on = None;
        self.admit(ip, now, |s, p, key| {
            if s.connections >= p.max_connections {
                return Some(Refusal::TooManyConnections);
            }
            if let Err(retry_after) = s.connect.take(p.connect_rate, now) {
                return Some(Refusal::ConnectRate { retry_after });
            }
            s.connections += 1;
            counted_on = Some(key);
            None
        })?;
        Ok(Counted(counted_on))
    }

    /// A connection [`Self::connect`] counted has ended: given back to the entry it was
    /// counted on. Worked out again from the address, it could land elsewhere: a connection
    /// counted on the overflow entry while the table was full, ending once there is room,
    /// would leave the overflow's count up for good (it is never idle, so never swept) and
    /// take one off a fresh entry of its own.
    pub fn disconnected(&self, counted: Counted, _now: Instant) {
        let Counted(Some(key)) = counted else {
            return;
        };
        // An entry with connections is never swept: it is there.
        if let Some(s) = self.lock(self.shard_of(key)).map.get_mut(&key) {
            s.connections = s.connections.saturating_sub(1);
        }
    }

    /// A SIP request from `ip`. Refusals count as strikes.
    pub fn request(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let counting = self.publishing.load(Ordering::Relaxed);
        self.admit(ip, now, |s, p, _| {
            let refusal = s
                .requests
                .take(p.request_rate, now)
                .err()
                .map(|retry_after| Refusal::RequestRate { retry_after });
            if refusal.is_none() && counting {
                s.admitted = s.admitted.saturating_add(1);
            }
            refusal
        })
    }

    /// What [`Self::connect`] and [`Self::request`] share: allow-listed sources pass, banned
    /// ones are refused, the others by `limit`; a refusal other than the ban is a strike.
    fn admit(
        &self,
        ip: IpAddr,
        now: Instant,
        limit: impl FnOnce(&mut Source, &SourcePolicy, SourceKey) -> Option<Refusal>,
    ) -> Result<(), Refusal> {
        if self.allowed(ip) {
            return Ok(());
        }
        let refusal = self.with_key(ip, now, |s, p, key| match s.ban_remaining(now) {
            Some(remaining) => Some(Refusal::Banned { remaining }),
            None => limit(s, p, key),
        });
        match refusal {
            None => Ok(()),
            Some(r) => {
                if !matches!(r, Refusal::Banned { .. }) {
                    self.strike(ip, now);
                }
                Err(r)
            }
        }
    }

    /// Whether `ip` is banned now (existing connections of a banned source are closed).
    pub fn banned(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.allowed(ip) {
            return None;
        }
        self.with(ip, now, |s, _| s.ban_remaining(now))
    }

    /// Counts one offence (a refused connection or request, a rejected message); enough of
    /// them within the window ban the source.
    pub fn strike(&self, ip: IpAddr, now: Instant) -> Strike {
        if self.allowed(ip) || self.policy_now().ban_after == 0 {
            return Strike::Ignored;
        }
        let strike = self.with(ip, now, |s, p| {
            if s.ban_remaining(now).is_some() {
                return Strike::Ignored;
            }
            if now.saturating_duration_since(s.window_start) >= p.strike_window {
                s.window_start = now;
                s.strikes = 0;
            }
            s.strikes += 1;
            if s.strikes >= p.ban_after {
                let until = now + p.ban_time;
                s.banned_until = Some(until);
                s.strikes = 0;
                Strike::Banned { until }
            } else {
                Strike::Counted
            }
        });
        if matches!(strike, Strike::Banned { .. }) {
            self.bans.fetch_add(1, Ordering::Relaxed);
            if self.publishing.load(Ordering::Relaxed) {
                let notice = BanNotice {
                    key: SourceKey::of(ip),
                    remaining: self.policy_now().ban_time,
                };
                let mut outbox = self.outbox.lock_unpoisoned();
                if outbox.len() >= OUTBOX {
                    outbox.pop_front();
                }
                outbox.push_back(notice);
            }
        }
        strike
    }

    /// From now on, bans are kept for the pool's task ([`Self::take_bans`]).
    pub fn publish_bans(&self) {
        self.publishing.store(true, Ordering::Relaxed);
    }

    /// The bans this member's strikes caused since the last call, to publish.
    pub fn take_bans(&self) -> Vec<BanNotice> {
        self.outbox.lock_unpoisoned().drain(..).collect()
    }

    /// A ban another member published: the source is refused here too until it ends (a
    /// longer ban already in force stays). Allow-listed sources are not tracked by key, so
    /// the allow-list still wins when they connect. `false` when the table is full even
    /// after sweeping (the ban is then not kept here; the member that banned still holds it).
    pub fn ban_from_pool(&self, notice: BanNotice, now: Instant) -> bool {
        if notice.key == SourceKey::Overflow || notice.remaining.is_zero() {
            return false;
        }
        let policy = self.policy_now();
        let per_shard = (policy.max_sources / SHARDS).max(1);
        let mut shard = self.lock(self.shard_of(notice.key));
        if !shard.map.contains_key(&notice.key) && shard.map.len() >= per_shard {
            shard.map.retain(|_, s| !s.idle(now));
            shard.last_sweep = Some(now);
            if shard.map.len() >= per_shard {
                return false;
            }
        }
        let source = shard
            .map
            .entry(notice.key)
            .or_insert_with(|| Source::new(now));
        // What another member says is bounded here too: no ban from the pool outlasts the
        // longest this edge's own policy could write, and no sum overflows the clock.
        let remaining = notice.remaining.min(MAX_POOL_BAN);
        let until = now.checked_add(remaining).unwrap_or(now);
        source.banned_until = Some(source.banned_until.map_or(until, |t| t.max(until)));
        self.pool_bans.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Every ban in force at `now` (what a member publishes when it joins the pool again).
    pub fn active_bans(&self, now: Instant) -> Vec<BanNotice> {
        (0..SHARDS)
            .flat_map(|i| {
                self.lock(i)
                    .map
                    .iter()
                    .filter(|(k, _)| **k != SourceKey::Overflow)
                    .filter_map(|(k, s)| {
                        s.ban_remaining(now)
                            .map(|remaining| BanNotice { key: *k, remaining })
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The requests each source had admitted here since the last call (sources that had
    /// none are left out; the overflow entry is nobody and stays here): what this member
    /// tells the pool, so that every member charges them to the source's request rate.
    pub fn take_request_counts(&self) -> Vec<(SourceKey, u32)> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            for (key, source) in self.lock(i).map.iter_mut() {
                if source.admitted > 0 && *key != SourceKey::Overflow {
                    out.push((*key, source.admitted));
                }
                source.admitted = 0;
            }
        }
        out
    }

    /// Requests another member admitted for `key`: charged to the source's request rate
    /// here, if this member knows the source (one it has never seen has nothing here to
    /// charge, and an entry is not made for it: the table stays this member's).
    pub fn charge_from_pool(&self, key: SourceKey, requests: u32, now: Instant) {
        if key == SourceKey::Overflow {
            return;
        }
        let policy = self.policy_now();
        let mut shard = self.lock(self.shard_of(key));
        if let Some(source) = shard.map.get_mut(&key) {
            source.requests.charge(policy.request_rate, requests, now);
        }
    }

    /// Bans taken from other members so far (metrics).
    pub fn pool_bans_total(&self) -> u64 {
        self.pool_bans.load(Ordering::Relaxed)
    }

    /// Bans so far (metrics).
    pub fn bans_total(&self) -> u64 {
        self.bans.load(Ordering::Relaxed)
    }

    /// Sources currently tracked (metrics).
    pub fn tracked(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).map.len()).sum()
    }

    /// Sources banned at `now` (metrics).
    pub fn banned_count(&self, now: Instant) -> usize {
        (0..SHARDS)
            .map(|i| {
                self.lock(i)
                    .map
                    .values()
                    .filter(|s| s.ban_remaining(now).is_some())
                    .count()
            })
            .sum()
    }

    /// Forgets idle sources, and gives back the memory of a table that emptied (the shell
    /// calls this every few seconds: after a crowd of sources has gone, the edge returns
    /// to its size).
    pub fn sweep(&self, now: Instant) {
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            shard.map.retain(|_, s| !s.idle(now));
            shard.last_sweep = Some(now);
            shrink_sparse(&mut shard.map);
        }
    }

    /// The table's capacity in entries (what its memory is sized for).
    pub fn capacity(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).map.capacity()).sum()
    }
}

/// Shrinks a map that holds under a quarter of its capacity to twice its size: memory
/// comes back after a crowd has gone, and the cost is paid once per many removals.
pub fn shrink_sparse<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests start simulated time from a real instant
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy() -> SourcePolicy {
        SourcePolicy {
            connect_rate: Rate {
                per_sec: 2,
                burst: 3,
            },
            max_connections: 4,
            request_rate: Rate {
                per_sec: 10,
                burst: 10,
            },
            ban_after: 5,
            strike_window: Duration::from_secs(10),
            ban_time: Duration::from_secs(60),
            allow: vec![
                Prefix::parse("10.0.0.0/8").unwrap(),
                Prefix::parse("2001:db8::/32").unwrap(),
            ],
            max_sources: 64,
        }
    }

    #[test]
    fn request_counts_cross_the_pool_and_charge_the_rate_there() {
        let here = SourceGuard::new(policy());
        let there = SourceGuard::new(policy());
        let t0 = Instant::now();
        let a = ip("203.0.113.9");
        here.request(a, t0).unwrap();
        assert!(
            here.take_request_counts().is_empty(),
            "counted only with a pool"
        );
        here.publish_bans();
        for _ in 0..4 {
            here.request(a, t0).unwrap();
        }
        let counts = here.take_request_counts();
        assert_eq!(counts, [(SourceKey::of(a), 4)]);
        assert!(here.take_request_counts().is_empty(), "taken once");

        // Unknown there: nothing to charge, and no entry is made.
        there.charge_from_pool(SourceKey::of(a), 4, t0);
        assert_eq!(there.tracked(), 0);
        // Known there: its burst (10) shrinks by what the other member admitted.
        there.request(a, t0).unwrap();
        there.charge_from_pool(SourceKey::of(a), 4, t0);
        let admitted = (0..20).filter(|_| there.request(a, t0).is_ok()).count();
        assert_eq!(admitted, 10 - 1 - 4);
    }

    #[test]
    fn bans_go_to_the_pool_and_come_from_it() {
        let here = SourceGuard::new(policy());
        let there = SourceGuard::new(policy());
        let t0 = Instant::now();
        let a = ip("203.0.113.1");
        // Nothing is kept for a pool until one listens.
        for _ in 0..5 {
            here.strike(a, t0);
        }
        assert!(here.take_bans().is_empty());
        let b = ip("203.0.113.2");
        here.publish_bans();
        for _ in 0..5 {
            here.strike(b, t0);
        }
        let notices = here.take_bans();
        assert_eq!(
            notices,
            [BanNotice {
                key: SourceKey::of(b),
                remaining: Duration::from_secs(60)
            }]
        );
        assert!(here.take_bans().is_empty(), "taken once");

        // Another member takes it: the source is refused there at once, until it ends.
        assert_eq!(there.request(b, t0), Ok(()));
        assert!(there.ban_from_pool(notices[0], t0));
        assert!(matches!(there.request(b, t0), Err(Refusal::Banned { .. })));
        assert!(matches!(there.connect(b, t0), Err(Refusal::Banned { .. })));
        assert_eq!(there.pool_bans_total(), 1);
        assert_eq!(there.bans_total(), 0, "not this member's own ban");
        assert_eq!(there.active_bans(t0).len(), 1);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(there.request(b, later), Ok(()));
        assert!(there.active_bans(later).is_empty());
        // A shorter ban from the pool does not cut a longer one short.
        assert!(there.ban_from_pool(notices[0], t0));
        let short = BanNotice {
            remaining: Duration::from_secs(1),
            ..notices[0]
        };
        assert!(there.ban_from_pool(short, t0));
        assert!(there.banned(b, t0 + Duration::from_secs(30)).is_some());
        // A ban from the pool is held to a day, and an absurd one cannot overflow the clock.
        let c = ip("203.0.113.3");
        let forever = BanNotice {
            key: SourceKey::of(c),
            remaining: Duration::MAX,
        };
        assert!(there.ban_from_pool(forever, t0));
        assert!(there
            .banned(c, t0 + MAX_POOL_BAN - Duration::from_secs(1))
            .is_some());
        assert!(there
            .banned(c, t0 + MAX_POOL_BAN + Duration::from_secs(1))
            .is_none());
        // The overflow entry is nobody: it never crosses the pool.
        let overflow = BanNotice {
            key: SourceKey::Overflow,
            remaining: Duration::from_secs(60),
        };
        assert!(!there.ban_from_pool(overflow, t0));
    }

    #[test]
    fn gcra_allows_burst_then_the_rate() {
        let t0 = Instant::now();
        let rate = Rate {
            per_sec: 10,
            burst: 5,
        };
        let mut g = Gcra::default();
        for _ in 0..5 {
            assert!(g.take(rate, t0).is_ok());
        }
        let wait = g.take(rate, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(g.take(rate, t0 + Duration::from_millis(100)).is_ok());
        assert!(g.take(rate, t0 + Duration::from_millis(100)).is_err());
        // After a long pause the full burst is back, never more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(g.take(rate, later).is_ok());
        }
        assert!(g.take(rate, later).is_err());
        assert!(Gcra::default()
            .take(
                Rate {
                    per_sec: 0,
                    burst: 5
                },
                t0
            )
            .is_err());
    }

    #[test]
    fn connect_rate_concurrency_and_release() {
        let g = SourceGuard::new(policy());
        let t0 = Instant::now();
        let a = ip("203.0.113.1");
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(g.connect(a, t0).unwrap());
        }
        assert!(matches!(g.connect(a, t0), Err(Refusal::ConnectRate { .. })));
        let t1 = t0 + Duration::from_secs(1);
        assert!(g.connect(a, t1).is_ok());
        assert_eq!(
            g.connect(a, t1 + Duration::from_secs(5)),
            Err(Refusal::TooManyConnections)
        );
        g.disconnected(held.pop().unwrap(), t1);
        assert!(g.connect(a, t1 + Duration::from_secs(5)).is_ok());
        // Another source is unaffected.
        assert!(g.connect(ip("203.0.113.2"), t0).is_ok());
    }

    #[test]
    fn strikes_ban_for_ban_time_then_expire() {
        let g = SourceGuard::new(policy());
        let t0 = Instant::now();
        let a = ip("203.0.113.1");
        for i in 0..4 {
            assert_eq!(g.strike(a, t0 + Duration::from_secs(i)), Strike::Counted);
        }
        let until = t0 + Duration::from_secs(4) + Duration::from_secs(60);
        assert_eq!(
            g.strike(a, t0 + Duration::from_secs(4)),
            Strike::Banned { until }
        );
        let during = t0 + Duration::from_secs(30);
        assert!(matches!(g.connect(a, during), Err(Refusal::Banned { .. })));
        assert!(matches!(g.request(a, during), Err(Refusal::Banned { .. })));
        assert_eq!(g.strike(a, during), Strike::Ignored);
        assert!(g.banned(a, during).is_some());
        assert_eq!(g.banned_count(during), 1);
        assert!(g.banned(a, until).is_none());
        assert!(g.connect(a, until).is_ok());
    }

    #[test]
    fn strikes_outside_the_window_do_not_add_up() {
        let g = SourceGuard::new(policy());
        let t0 = Instant::now();
        let a = ip("203.0.113.1");
        for i in 0..20 {
            // One strike every 3 s: at most 4 in any 10 s window, never 5.
            assert_eq!(
                g.strike(a, t0 + Duration::from_secs(3 * i)),
                Strike::Counted
            );
            assert!(g.banned(a, t0 + Duration::from_secs(3 * i)).is_none());
        }
    }

    #[test]
    fn refusals_are_strikes_so_a_flooder_gets_banned() {
        let g = SourceGuard::new(policy());
        let t0 = Instant::now();
        let a = ip("203.0.113.1");
        let mut results = Vec::new();
        for _ in 0..30 {
            results.push(g.request(a, t0));
        }
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10);
        assert!(matches!(results.last(), Some(Err(Refusal::Banned { .. }))));
    }

    #[test]
    fn allow_listed_sources_are_never_limited_or_banned() {
        let g = SourceGuard::new(policy());
        let t0 = Instant::now();
        for a in [ip("10.1.2.3"), ip("2001:db8::7"), ip("::ffff:10.9.9.9")] {
            for _ in 0..1000 {
                assert_eq!(g.connect(a, t0), Ok(Counted(None)));
                assert_eq!(g.request(a, t0), Ok(()));
                assert_eq!(g.strike(a, t0), Strike::Ignored);
            }
            assert!(g.banned(a, t0).is_none());
        }
        assert_eq!(g.tracked(), 0, "allow-listed sources take no table space");
    }

    #[test]
    fn a_connection_counted_on_the_overflow_entry_is_given_back_to_it() {
        // Counted on the overflow entry while the table was full, ending once the table
        // has room again: worked out again from its address it would be taken off a fresh
        // entry of its own, and the overflow's count (never idle, so never swept) would stay
        // up for good; enough of that and every source arriving at a full table is refused.
        let mut p = policy();
        p.max_sources = SHARDS; // one entry per shard
        p.max_connections = 1000;
        p.connect_rate = Rate {
            per_sec: 1000,
            burst: 1000,
        };
        let g = SourceGuard::new(p);
        let t0 = Instant::now();
        let overflow_connections = || {
            g.lock(g.shard_of(SourceKey::Overflow))
                .map
                .get(&SourceKey::Overflow)
                .map_or(0, |s| s.connections)
        };
        let mut held = Vec::new();
        let mut late = None;
        for i in 0..10_000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0xC633_0000 + i));
            let counted = g.connect(a, t0).unwrap();
            if counted == Counted(Some(SourceKey::Overflow)) {
                late = Some(counted);
                break;
            }
            held.push(counted);
        }
        let late = late.expect("the table filled up");
        assert_eq!(overflow_connections(), 1);
        // The crowd leaves and is swept: room again. Then the late one leaves.
        for counted in held {
            g.disconnected(counted, t0);
        }
        let later = t0 + IDLE + Duration::from_secs(1);
        g.sweep(later);
        g.disconnected(late, later);
        assert_eq!(
            overflow_connections(),
            0,
            "given back to the overflow entry"
        );
        g.sweep(later + IDLE);
        assert_eq!(g.tracked(), 0, "nothing left counted anywhere");
    }

    #[test]
    fn the_table_is_bounded_and_overflow_shares_one_budget() {
        let mut p = policy();
        p.max_sources = SHARDS; // one entry per shard
        p.request_rate = Rate {
            per_sec: 1,
            burst: 1,
        };
        let g = SourceGuard::new(p);
        let t0 = Instant::now();
        let mut refused = 0;
        for i in 0..10_000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0xC633_0000 + i));
            if g.request(a, t0).is_err() {
                refused += 1;
            }
        }
        assert!(g.tracked() <= SHARDS + 1, "tracked {}", g.tracked());
        assert!(
            refused > 9_000,
            "overflow sources share one budget: refused {refused}"
        );
        // Idle entries are swept, making room again.
        let later = t0 + IDLE + Duration::from_secs(300);
        g.sweep(later);
        assert_eq!(g.tracked(), 0);
    }

    #[test]
    fn a_sweep_after_a_crowd_has_gone_gives_the_table_memory_back() {
        let mut p = policy();
        p.max_sources = 100_000;
        p.max_connections = 1;
        let g = SourceGuard::new(p);
        let t0 = Instant::now();
        for i in 0..20_000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0B00_0000 + i));
            let counted = g.connect(a, t0).expect("first connection of a new source");
            g.disconnected(counted, t0);
        }
        assert_eq!(g.tracked(), 20_000);
        let crowd = g.capacity();
        assert!(crowd >= 20_000);
        // Not yet idle long enough: remembered (a source's rate and strikes outlive its
        // connection).
        g.sweep(t0 + Duration::from_secs(1));
        assert_eq!(g.tracked(), 20_000);
        g.sweep(t0 + IDLE + Duration::from_secs(1));
        assert_eq!(g.tracked(), 0);
        assert!(
            g.capacity() <= SHARDS * 64,
            "capacity {} after the crowd (was {crowd})",
            g.capacity()
        );
    }
}
