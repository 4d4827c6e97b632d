//! Pool-wide state on Redis (`[pool]` in the topology; Valkey speaks the same protocol):
//! the bans each member's strikes cause are published, so that a source banned on one
//! member is refused by every member within a second, for what is left of its ban.
//!
//! Nothing on the per-message or per-packet path waits for Redis: a strike that bans puts a
//! [`BanNotice`] in the firewall's bounded outbox and goes on; this task publishes the
//! outbox every 100 ms and applies what other members publish. Each ban is also kept in
//! Redis as a key that expires with it (`<prefix>:ban:<source>`), so a member that joins,
//! or comes back after Redis was away, takes the bans in force (`SCAN`) and publishes its
//! own. Redis down, slow (a PING a second, bounded by `pool.timeout`) or answering garbage
//! is not an outage: members enforce alone, `/status` says `degraded`, it is logged once,
//! and the task reconnects with back-off and resynchronises.
//!
//! Per-source request rates are shared approximately by counter exchange: every
//! [`RATES_EVERY`] each member publishes how many requests it admitted from each source
//! since the last report, and every other member charges them to that source's request
//! budget (the token bucket of `firewall.request_rate`), if it knows the source. The error
//! bound: with N members, a source spread over all of them gets at most its burst on each
//! member, plus, each second, the rate once and, from every other member, what that member
//! admitted before its report arrived (a report period and the Redis round trip, ~0.3 s of
//! the rate): at most `N * burst + rate * t * (1 + (N - 1) * 0.3)` requests in `t` seconds,
//! against `N * (burst + rate * t)` without the pool.
//!
//! Per-user relay quotas (`relay.max_allocations_per_user`) are counted pool-wide at
//! allocation time, the one place the relay waits for the network: each user has a hash in
//! Redis (`<prefix>:holds:<user>`, a field per member: its count and the end of its lease),
//! and a new hold is granted by a script that sums the other members' live counts and
//! takes this member's, atomically (`ASK_SCRIPT`). The wait is bounded by `pool.timeout`;
//! an ask not answered by then is decided on what this member knows (its own holds and the
//! others' counts from the last refresh), as is every ask while Redis is away. Each member
//! refreshes its counts every [`HOLDS_EVERY`] (a lease of [`HOLDS_LEASE`], so a member
//! that dies is forgotten), and learns the others' from the same script: that count also
//! shares each user's bandwidth budget (`relay.max_kbps_per_user`) between the members in
//! proportion to the relays the user holds on each. The error bound, Redis up: none for
//! the quota (each grant is checked against every other member's count in one step); the
//! bandwidth shares follow the counts within a refresh period.
//!
//! What crosses Redis is a source's key (an IPv4 address or an IPv6 /64, as hex), a member
//! id, a remaining time, and the names of users holding relays with their counts: no
//! secret, no personal data beyond the address a ban is about and who holds a relay.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::{mpsc, watch};

use std::collections::HashSet;

use super::clock;
use super::turn::Turn;
use crate::core::firewall::{BanNotice, SourceGuard, MAX_POOL_BAN};
use crate::core::net::SourceKey;
use crate::core::turn::server::{PoolAsk, PoolVerdict};
use crate::topology::PoolConfig;

/// How often the outbox is published.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// How often each member refreshes what each user holds on its relay.
pub const HOLDS_EVERY: Duration = Duration::from_secs(1);
/// How long a member's count stands without a refresh (then it is as if it held nothing).
pub const HOLDS_LEASE: Duration = Duration::from_secs(3);
/// Users refreshed in one script call (the hashes it touches).
const HOLDS_BATCH: usize = 500;
/// Users whose counts are kept here, at most (a refresh covers only the users held here).
const HOLDS_MAX: usize = 100_000;

/// The sum of the other members' live counts in the hash `KEYS[i]`, removing those whose
/// lease ended; and this member's write, unless Redis holds a newer count of its own. A
/// count is `"<n> <lease end, ms> <seq>"`: `seq` numbers the member's changes of its holds,
/// so a refresh overtaken by an ask (or the other way round) cannot put back an older count.
const OTHERS_LUA: &str = r"
local function write(key, me, n, seq, now, lease)
  local old = redis.call('HGET', key, me)
  local old_seq = old and tonumber(string.match(old, '^%d+ %d+ (%d+)$'))
  if old_seq and old_seq > seq then return end
  redis.call('HSET', key, me, n .. ' ' .. (now + lease) .. ' ' .. seq)
  redis.call('PEXPIRE', key, lease)
end
local function others(key, me, now)
  local sum = 0
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    if all[i] ~= me then
      local n, ends = string.match(all[i + 1], '^(%d+) (%d+) %d+$')
      if n and tonumber(ends) > now then
        sum = sum + tonumber(n)
      else
        redis.call('HDEL', key, all[i])
      end
    end
  end
  return sum
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// An ask: KEYS[1] the user's hash; ARGV member, here (with the new holds), more, quota,
/// lease ms, seq. Returns {granted 1/0, the others' count}; this member's count is set to
/// what it holds after the answer.
const ASK_LUA: &str = r"
local me, here, more, quota, lease, seq = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local elsewhere = others(KEYS[1], me, now)
local granted = elsewhere + here <= quota
local mine = here
if not granted then mine = here - more end
write(KEYS[1], me, mine, seq, now, lease)
if granted then return {1, elsewhere} end
return {0, elsewhere}
";

/// A refresh: KEYS the users' hashes; ARGV member, lease ms, seq, then a count per key (0:
/// this member holds none any more; the lease then clears it). Returns the others' count
/// per key.
const REFRESH_LUA: &str = r"
local me, lease, seq = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i, key in ipairs(KEYS) do
  write(key, me, tonumber(ARGV[i + 3]), seq, now, lease)
  out[i] = others(key, me, now)
end
return out
";

/// What this member holds per user, in Redis: the asks at allocation time and the
/// refreshes.
#[derive(Clone)]
struct Holds {
    prefix: Arc<str>,
    member: Arc<str>,
    timeout: Duration,
    ask_script: Arc<str>,
    refresh_script: Arc<str>,
}

impl Holds {
    fn new(cfg: &PoolConfig, member: &str) -> Holds {
        Holds {
            prefix: format!("{}:holds:", cfg.key_prefix).into(),
            member: member.into(),
            timeout: cfg.timeout,
            ask_script: scripts().0.into(),
            refresh_script: scripts().1.into(),
        }
    }

    fn key(&self, user: &str) -> String {
        format!("{}{user}", self.prefix)
    }

    fn lease_ms() -> u64 {
        u64::try_from(HOLDS_LEASE.as_millis()).unwrap_or(u64::MAX)
    }

    /// The pool's verdict on an ask: [`PoolVerdict::Unknown`] if Redis does not answer
    /// in time or answers nonsense.
    async fn ask(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        ask: &PoolAsk,
    ) -> PoolVerdict {
        let mut call = redis::cmd("EVAL");
        call.arg(&*self.ask_script)
            .arg(1)
            .arg(self.key(&ask.user))
            .arg(&*self.member)
            .arg(ask.here)
            .arg(ask.more)
            .arg(ask.quota)
            .arg(Holds::lease_ms())
            .arg(ask.seq);
        match tokio::time::timeout(self.timeout, call.query_async::<(i64, i64)>(conn)).await {
            Ok(Ok((granted, elsewhere))) => verdict(granted, elsewhere),
            _ => PoolVerdict::Unknown,
        }
    }

    /// Tells Redis what each user holds here (and that those held before and not now hold
    /// nothing), and gives the relay what they hold on the other members.
    async fn refresh(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        turn: &Turn,
        reported: &mut HashSet<Box<str>>,
    ) -> Result<(), String> {
        let report = turn.pool_report();
        let seq = report.seq;
        let mut counts: Vec<(Box<str>, usize)> = report
            .holds
            .into_iter()
            .take(HOLDS_MAX)
            .map(|(user, n)| (Box::from(&*user), n))
            .collect();
        // Users whose asks keep their count now are not written, but remembered: if they
        // end up holding nothing here, the next refresh says so.
        let mut held: HashSet<Box<str>> = counts.iter().map(|(user, _)| user.clone()).collect();
        held.extend(report.asking.iter().map(|user| Box::from(&**user)));
        counts.extend(
            reported
                .iter()
                .filter(|user| !held.contains(*user))
                .map(|user| (user.clone(), 0)),
        );
        let mut elsewhere = Vec::new();
        for batch in counts.chunks(HOLDS_BATCH) {
            let mut call = redis::cmd("EVAL");
            call.arg(&*self.refresh_script).arg(batch.len());
            for (user, _) in batch {
                call.arg(self.key(user));
            }
            call.arg(&*self.member).arg(Holds::lease_ms()).arg(seq);
            for (_, n) in batch {
                call.arg(*n);
            }
            let others: Vec<i64> = tokio::time::timeout(self.timeout, call.query_async(conn))
                .await
                .map_err(|_| "EVAL: no answer within the timeout".to_string())?
                .map_err(|e| e.to_string())?;
            if others.len() != batch.len() {
                return Err(format!(
                    "EVAL answered {} counts for {}",
                    others.len(),
                    batch.len()
                ));
            }
            for ((user, n), o) in batch.iter().zip(others) {
                if let (true, Ok(o @ 1..)) = (*n > 0, usize::try_from(o)) {
                    elsewhere.push((user.clone(), o));
                }
            }
        }
        *reported = held;
        turn.set_pool_holds(elsewhere);
        Ok(())
    }
}

/// The ask and refresh scripts as sent to Redis (for the tests that run them).
pub fn scripts() -> (String, String) {
    (
        format!("{OTHERS_LUA}{ASK_LUA}"),
        format!("{OTHERS_LUA}{REFRESH_LUA}"),
    )
}

/// What an ask's script answered, as a verdict (nonsense is no answer).
pub fn verdict(granted: i64, elsewhere: i64) -> PoolVerdict {
    match (granted, usize::try_from(elsewhere)) {
        (1, Ok(elsewhere)) => PoolVerdict::Granted { elsewhere },
        (0, Ok(elsewhere)) => PoolVerdict::Refused { elsewhere },
        _ => PoolVerdict::Unknown,
    }
}
/// How often request counts are exchanged.
pub const RATES_EVERY: Duration = Duration::from_millis(250);
/// Sources in one report, at most (the busiest first).
const RATES_MAX: usize = 5000;
/// How often Redis is asked whether it is there.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Reconnect back-off bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Bans taken in one resynchronisation, at most (a bounded walk of the key space).
const RESYNC_MAX: usize = 100_000;

/// Where the pool's state stands, for `/status` and `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolStatus {
    /// Not connected yet since start.
    Connecting,
    Up,
    /// Redis is away: this member enforces alone.
    Degraded,
}

impl PoolStatus {
    pub fn label(self) -> &'static str {
        match self {
            PoolStatus::Connecting => "connecting",
            PoolStatus::Up => "up",
            PoolStatus::Degraded => "degraded",
        }
    }
}

/// The pool's state as the rest of the edge reads it.
pub struct PoolState {
    /// This member's id in the pool (its own messages come back to it and are skipped).
    pub member: String,
    status: AtomicU8,
    pub bans_published: AtomicU64,
    pub bans_received: AtomicU64,
    /// Requests other members admitted, charged here (the sum of the counts received).
    pub requests_charged: AtomicU64,
    /// Times Redis went away (or could not be reached at start).
    pub outages: AtomicU64,
    /// Messages from Redis that were not a ban notice or a rate report (ignored).
    pub garbage: AtomicU64,
}

impl PoolState {
    pub fn new(member: String) -> PoolState {
        PoolState {
            member,
            status: AtomicU8::new(0),
            bans_published: AtomicU64::new(0),
            bans_received: AtomicU64::new(0),
            requests_charged: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            garbage: AtomicU64::new(0),
        }
    }

    pub fn status(&self) -> PoolStatus {
        match self.status.load(Ordering::Relaxed) {
            0 => PoolStatus::Connecting,
            1 => PoolStatus::Up,
            _ => PoolStatus::Degraded,
        }
    }

    fn set(&self, status: PoolStatus) -> PoolStatus {
        let code = match status {
            PoolStatus::Connecting => 0,
            PoolStatus::Up => 1,
            PoolStatus::Degraded => 2,
        };
        match self.status.swap(code, Ordering::Relaxed) {
            0 => PoolStatus::Connecting,
            1 => PoolStatus::Up,
            _ => PoolStatus::Degraded,
        }
    }
}

/// Keeps the pool's state until shutdown: connect, resynchronise, publish and apply bans;
/// on any failure, degrade, reconnect with back-off.
pub async fn run(
    cfg: PoolConfig,
    guard: Arc<SourceGuard>,
    turn: Option<Arc<Turn>>,
    state: Arc<PoolState>,
    mut shutdown: watch::Receiver<bool>,
) {
    guard.publish_bans();
    let mut asks = turn.as_ref().map(|t| t.pool_asks());
    let mut backoff = RECONNECT_MIN;
    loop {
        let failed = tokio::select! {
            r = serve(&cfg, &guard, turn.as_ref(), asks.as_mut(), &state) => r.err().unwrap_or_default(),
            _ = shutdown.changed() => return,
        };
        // Alone again: only what this member holds counts, and nothing is asked.
        if let Some(turn) = &turn {
            turn.set_pool_holds([]);
            turn.set_pool_up(false);
        }
        if state.set(PoolStatus::Degraded) == PoolStatus::Degraded {
            backoff = (backoff * 2).min(RECONNECT_MAX);
        } else {
            // Once per outage, not once per attempt.
            state.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %failed, "pool: Redis unavailable; enforcing locally until it returns");
            backoff = RECONNECT_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One connection to Redis, until it fails. Returns why.
async fn serve(
    cfg: &PoolConfig,
    guard: &SourceGuard,
    turn: Option<&Arc<Turn>>,
    mut asks: Option<&mut mpsc::Receiver<PoolAsk>>,
    state: &PoolState,
) -> Result<(), String> {
    let client = redis::Client::open(connection_url(cfg)?).map_err(|e| e.to_string())?;
    let bounded = |what: &'static str| move |_| format!("{what}: no answer within the timeout");
    let mut conn = tokio::time::timeout(cfg.timeout, client.get_multiplexed_async_connection())
        .await
        .map_err(bounded("connect"))?
        .map_err(|e| e.to_string())?;
    let mut pubsub = tokio::time::timeout(cfg.timeout, client.get_async_pubsub())
        .await
        .map_err(bounded("subscribe"))?
        .map_err(|e| e.to_string())?;
    let channel = format!("{}:bans", cfg.key_prefix);
    let rates = format!("{}:rates", cfg.key_prefix);
    tokio::time::timeout(cfg.timeout, pubsub.subscribe(&[&channel, &rates]))
        .await
        .map_err(bounded("subscribe"))?
        .map_err(|e| e.to_string())?;
    let mut messages = pubsub.into_on_message();

    // Resynchronise: the bans in force in the pool, then this member's own.
    resync(cfg, &mut conn, guard, state).await?;
    for notice in guard.active_bans(clock::now()) {
        publish(cfg, &mut conn, &channel, &state.member, notice).await?;
        state.bans_published.fetch_add(1, Ordering::Relaxed);
    }
    if state.set(PoolStatus::Up) != PoolStatus::Up {
        tracing::info!(redis = %redacted(&cfg.redis), member = %state.member, "pool: connected to Redis; bans are shared");
    }
    let holds = Holds::new(cfg, &state.member);
    let mut reported = HashSet::new();
    if let Some(turn) = turn {
        // Asks waiting from before Redis went away were decided then: drain them.
        if let Some(asks) = asks.as_deref_mut() {
            while asks.try_recv().is_ok() {}
        }
        holds.refresh(&mut conn, turn, &mut reported).await?;
        turn.set_pool_up(true);
    }

    let mut publish_tick = tokio::time::interval(PUBLISH_EVERY);
    let mut rates_tick = tokio::time::interval(RATES_EVERY);
    let mut holds_tick = tokio::time::interval(HOLDS_EVERY);
    // What was admitted while Redis was away is old news.
    let _ = guard.take_request_counts();
    let mut ping_tick = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else {
                    return Err("the subscription ended".into());
                };
                if msg.get_channel_name() == rates {
                    match parse_rates(msg.get_payload_bytes()) {
                        Some((member, _)) if member == state.member => {}
                        Some((_, counts)) => {
                            let now = clock::now();
                            for (key, n) in counts {
                                guard.charge_from_pool(key, n, now);
                                state.requests_charged.fetch_add(u64::from(n), Ordering::Relaxed);
                            }
                        }
                        None => {
                            state.garbage.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    continue;
                }
                match parse_notice(msg.get_payload_bytes()) {
                    Some((member, _)) if member == state.member => {}
                    Some((_, notice)) => {
                        if guard.ban_from_pool(notice, clock::now()) {
                            state.bans_received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        state.garbage.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ = publish_tick.tick() => {
                for notice in guard.take_bans() {
                    publish(cfg, &mut conn, &channel, &state.member, notice).await?;
                    state.bans_published.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(ask) = async { asks.as_deref_mut()?.recv().await }, if asks.is_some() => {
                // Each ask on its own: they go out together on the multiplexed connection,
                // each bounded by the timeout, and the loop goes on meanwhile.
                if let Some(turn) = turn {
                    let (turn, holds, mut conn) = (turn.clone(), holds.clone(), conn.clone());
                    tokio::spawn(async move {
                        let verdict = holds.ask(&mut conn, &ask).await;
                        turn.pool_answer(ask.id, verdict);
                    });
                }
            }
            _ = holds_tick.tick(), if turn.is_some() => {
                if let Some(turn) = turn {
                    holds.refresh(&mut conn, turn, &mut reported).await?;
                }
            }
            _ = rates_tick.tick() => {
                let mut counts = guard.take_request_counts();
                if counts.is_empty() {
                    continue;
                }
                counts.sort_unstable_by_key(|c| std::cmp::Reverse(c.1));
                counts.truncate(RATES_MAX);
                let mut report = state.member.clone();
                for (key, n) in counts {
                    if let Some(key) = key.to_wire() {
                        report.push_str(&format!(" {key}={n}"));
                    }
                }
                tokio::time::timeout(
                    cfg.timeout,
                    redis::cmd("PUBLISH").arg(&rates).arg(report).query_async::<i64>(&mut conn),
                )
                .await
                .map_err(bounded("PUBLISH"))?
                .map_err(|e| e.to_string())?;
            }
            _ = ping_tick.tick() => {
                let pong = tokio::time::timeout(
                    cfg.timeout,
                    redis::cmd("PING").query_async::<String>(&mut conn),
                )
                .await
                .map_err(bounded("PING"))?
                .map_err(|e| e.to_string())?;
                if pong != "PONG" {
                    return Err(format!("PING answered {pong:?}"));
                }
            }
        }
    }
}

/// Takes the bans kept in Redis (keys that expire with their ban).
async fn resync(
    cfg: &PoolConfig,
    conn: &mut redis::aio::MultiplexedConnection,
    guard: &SourceGuard,
    state: &PoolState,
) -> Result<(), String> {
    let prefix = format!("{}:ban:", cfg.key_prefix);
    let pattern = format!("{prefix}*");
    let mut cursor: u64 = 0;
    let mut seen = 0usize;
    loop {
        let (next, keys): (u64, Vec<String>) = tokio::time::timeout(
            cfg.timeout,
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(conn),
        )
        .await
        .map_err(|_| "SCAN: no answer within the timeout".to_string())?
        .map_err(|e| e.to_string())?;
        for key in keys {
            seen += 1;
            let Some(source) = key.strip_prefix(&prefix).and_then(SourceKey::from_wire) else {
                continue;
            };
            let ttl: i64 =
                tokio::time::timeout(cfg.timeout, redis::cmd("PTTL").arg(&key).query_async(conn))
                    .await
                    .map_err(|_| "PTTL: no answer within the timeout".to_string())?
                    .map_err(|e| e.to_string())?;
            let Ok(ms) = u64::try_from(ttl) else {
                continue; // gone meanwhile, or no expiry (not ours)
            };
            let notice = BanNotice {
                key: source,
                remaining: Duration::from_millis(ms).min(MAX_POOL_BAN),
            };
            if guard.ban_from_pool(notice, clock::now()) {
                state.bans_received.fetch_add(1, Ordering::Relaxed);
            }
        }
        cursor = next;
        if cursor == 0 || seen >= RESYNC_MAX {
            return Ok(());
        }
    }
}

/// Keeps a ban in Redis for as long as it lasts, and tells the members now.
async fn publish(
    cfg: &PoolConfig,
    conn: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    member: &str,
    notice: BanNotice,
) -> Result<(), String> {
    let Some(key) = notice.key.to_wire() else {
        return Ok(());
    };
    let ms = u64::try_from(notice.remaining.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(format!("{}:ban:{key}", cfg.key_prefix))
        .arg(member)
        .arg("PX")
        .arg(ms)
        .ignore()
        .cmd("PUBLISH")
        .arg(channel)
        .arg(format!("{member} {key} {ms}"))
        .ignore();
    tokio::time::timeout(cfg.timeout, pipe.query_async::<()>(conn))
        .await
        .map_err(|_| "PUBLISH: no answer within the timeout".to_string())?
        .map_err(|e| e.to_string())
}

/// The parsers of what members publish, for the fuzz target.
pub mod parse {
    pub use super::parse_notice as notice;
    pub use super::parse_rates as rates;
}

/// A ban notice as members publish it: `<member> <source key> <remaining ms>`.
pub fn parse_notice(payload: &[u8]) -> Option<(&str, BanNotice)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.split(' ');
    let (Some(member), Some(key), Some(ms), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let ms: u64 = ms.parse().ok()?;
    // A ban longer than a day from the pool is not one this edge's policies would write.
    if ms == 0 || ms > 86_400_000 || member.is_empty() {
        return None;
    }
    Some((
        member,
        BanNotice {
            key: SourceKey::from_wire(key)?,
            remaining: Duration::from_millis(ms),
        },
    ))
}

/// A rate report as members publish it: `<member> <source key>=<count> ...`.
pub fn parse_rates(payload: &[u8]) -> Option<(&str, Vec<(SourceKey, u32)>)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.split(' ');
    let member = parts.next().filter(|m| !m.is_empty())?;
    let mut counts = Vec::new();
    for part in parts {
        let (key, n) = part.split_once('=')?;
        let n: u32 = n.parse().ok().filter(|n| *n > 0)?;
        counts.push((SourceKey::from_wire(key)?, n));
        if counts.len() > RATES_MAX {
            return None;
        }
    }
    (!counts.is_empty()).then_some((member, counts))
}

/// The URL with the ACL user and password put in (they never sit in the topology).
fn connection_url(cfg: &PoolConfig) -> Result<String, String> {
    let mut url = url::Url::parse(&cfg.redis).map_err(|e| format!("pool.redis: {e}"))?;
    if let Some(user) = &cfg.username {
        url.set_username(user)
            .map_err(|()| "pool.username cannot go in this URL".to_string())?;
    }
    if let Some(password) = &cfg.password {
        url.set_password(Some(&**password))
            .map_err(|()| "pool password cannot go in this URL".to_string())?;
    }
    Ok(url.into())
}

/// The URL as logged: host, port and database only.
fn redacted(redis: &str) -> String {
    url::Url::parse(redis)
        .map(|u| {
            format!(
                "{}://{}:{}{}",
                u.scheme(),
                u.host_str().unwrap_or("?"),
                u.port().unwrap_or(6379),
                u.path()
            )
        })
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn notices_parse_strictly() {
        let (member, n) = parse_notice(b"edge1/3fa2 4:c0000201 60000").unwrap();
        assert_eq!(member, "edge1/3fa2");
        assert_eq!(n.key, SourceKey::from_wire("4:c0000201").unwrap());
        assert_eq!(n.remaining, Duration::from_secs(60));
        for bad in [
            &b""[..],
            b"edge1 4:c0000201",
            b"edge1 4:c0000201 60000 extra",
            b"edge1 4:zz 60000",
            b"edge1 4:c0000201 0",
            b"edge1 4:c0000201 -5",
            b"edge1 4:c0000201 999999999999",
            b" 4:c0000201 60000",
            b"\xff\xfe 4:c0000201 60000",
        ] {
            assert!(parse_notice(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn rate_reports_parse_strictly() {
        let (member, counts) =
            parse_rates(b"edge1/3fa2 4:c0000201=7 6:20010db800010002=1").unwrap();
        assert_eq!(member, "edge1/3fa2");
        assert_eq!(counts.len(), 2);
        assert_eq!(counts[0], (SourceKey::from_wire("4:c0000201").unwrap(), 7));
        for bad in [
            &b"edge1"[..],
            b"edge1 4:c0000201",
            b"edge1 4:c0000201=0",
            b"edge1 4:c0000201=-1",
            b"edge1 4:zz=3",
            b"edge1 4:c0000201=3 junk",
            b" 4:c0000201=3",
        ] {
            assert!(parse_rates(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn credentials_go_into_the_url_and_never_into_the_log() {
        let cfg = PoolConfig {
            redis: "rediss://redis.internal:6380/2".into(),
            key_prefix: "sipedge".into(),
            username: Some("edge".into()),
            password: Some("s3cr:t@/".into()),
            timeout: Duration::from_millis(500),
        };
        let url = connection_url(&cfg).unwrap();
        assert!(
            url.starts_with("rediss://edge:s3cr%3At%40%2F@redis.internal:6380/2"),
            "{url}"
        );
        assert_eq!(redacted(&url), "rediss://redis.internal:6380/2");
    }
}
