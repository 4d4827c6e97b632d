//! Outstanding transactions toward one next hop: what "least outstanding" balances on, and
//! what the edge answers for when the next hop does not.
//!
//! A request forwarded to a member is outstanding until its final response comes back, or
//! until the RFC 3261 transaction timeout passes (Timer F, 64*T1 = 32 s, for non-INVITE;
//! Timer C, more than 3 minutes, for INVITE). Each entry keeps a value (the shell keeps the
//! forwarded bytes, a reference-counted handle) so that the edge can answer 408 on expiry
//! and 503 when the connection to the member is lost (RFC 3261 §16.9: a transport error
//! is treated as a 503 from that hop). Owned by the member's connection task: no lock.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// RFC 3261 Timer F (64 * T1).
pub const NON_INVITE_TIMEOUT: Duration = Duration::from_secs(32);
/// RFC 3261 §16.6 Timer C: greater than 3 minutes.
pub const INVITE_TIMEOUT: Duration = Duration::from_secs(181);

/// The transactions in flight, with deadlines.
#[derive(Debug)]
pub struct Outstanding<K, V> {
    entries: HashMap<K, (Instant, V)>,
    /// Deadlines in insertion order, one queue per timeout (INVITE, non-INVITE): within
    /// one the deadlines come in order, so each expires from its front. (One queue for
    /// both would hold every non-INVITE behind an INVITE sent before it, 181 s instead of
    /// 32.) Entries already completed are skipped lazily.
    queues: Vec<(Duration, VecDeque<(Instant, K)>)>,
}

impl<K: Copy + Eq + Hash, V> Default for Outstanding<K, V> {
    fn default() -> Self {
        Outstanding {
            entries: HashMap::new(),
            queues: Vec::new(),
        }
    }
}

impl<K: Copy + Eq + Hash, V> Outstanding<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a forwarded request. A retransmission (same key) keeps its first deadline.
    pub fn insert(&mut self, now: Instant, key: K, timeout: Duration, value: V) {
        let deadline = now + timeout;
        if let std::collections::hash_map::Entry::Vacant(e) = self.entries.entry(key) {
            e.insert((deadline, value));
            let at = match self.queues.iter().position(|(t, _)| *t == timeout) {
                Some(at) => at,
                None => {
                    self.queues.push((timeout, VecDeque::new()));
                    self.queues.len() - 1
                }
            };
            if let Some((_, queue)) = self.queues.get_mut(at) {
                queue.push_back((deadline, key));
            }
        }
    }

    /// A final response arrived. Returns whether the key was outstanding.
    pub fn complete(&mut self, key: &K) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Removes the transactions whose deadline has passed and hands each to `expired`.
    pub fn expire(&mut self, now: Instant, mut expired: impl FnMut(V)) {
        for (_, queue) in &mut self.queues {
            while let Some((deadline, key)) = queue.front().copied() {
                if deadline > now {
                    break;
                }
                queue.pop_front();
                if self.entries.get(&key).is_some_and(|(d, _)| *d == deadline) {
                    if let Some((_, v)) = self.entries.remove(&key) {
                        expired(v);
                    }
                }
            }
        }
        // Completed entries linger in the queues until their deadline; bound the waste.
        let queued: usize = self.queues.iter().map(|(_, q)| q.len()).sum();
        if queued > 4 * self.entries.len() + 1024 {
            let live = &self.entries;
            for (_, queue) in &mut self.queues {
                queue.retain(|(d, k)| live.get(k).is_some_and(|(ld, _)| ld == d));
            }
        }
    }

    /// Removes every transaction (the connection is gone).
    pub fn drain(&mut self) -> impl Iterator<Item = V> + '_ {
        self.queues.clear();
        self.entries.drain().map(|(_, (_, v))| v)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The next deadline, for the shell's timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queues
            .iter()
            .filter_map(|(_, q)| q.front().map(|(d, _)| *d))
            .min()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests start simulated time from a real instant
mod tests {
    use super::*;

    #[test]
    fn complete_expire_and_drain() {
        let t0 = Instant::now();
        let mut o = Outstanding::new();
        o.insert(t0, 1u64, NON_INVITE_TIMEOUT, "a");
        o.insert(t0, 2u64, INVITE_TIMEOUT, "b");
        o.insert(t0, 1u64, NON_INVITE_TIMEOUT, "a again");
        o.insert(t0, 3u64, INVITE_TIMEOUT, "c");
        assert_eq!(o.len(), 3);
        assert!(o.complete(&2));
        assert!(!o.complete(&2));
        let mut gone = Vec::new();
        o.expire(t0 + Duration::from_secs(31), |v| gone.push(v));
        assert!(gone.is_empty());
        o.expire(t0 + Duration::from_secs(32), |v| gone.push(v));
        assert_eq!(gone, vec!["a"]);
        assert_eq!(o.drain().collect::<Vec<_>>(), vec!["c"]);
        assert!(o.is_empty());
        assert_eq!(o.poll_timeout(), None);
    }

    #[test]
    fn a_non_invite_expires_at_its_own_deadline_behind_an_earlier_invite() {
        // An INVITE left unanswered must not hold the MESSAGEs sent after it for its 181 s.
        let t0 = Instant::now();
        let mut o = Outstanding::new();
        o.insert(t0, 1u64, INVITE_TIMEOUT, "invite");
        o.insert(
            t0 + Duration::from_secs(1),
            2u64,
            NON_INVITE_TIMEOUT,
            "message",
        );
        assert_eq!(o.poll_timeout(), Some(t0 + Duration::from_secs(33)));
        let mut gone = Vec::new();
        o.expire(t0 + Duration::from_secs(33), |v| gone.push(v));
        assert_eq!(gone, vec!["message"]);
        assert_eq!(o.poll_timeout(), Some(t0 + INVITE_TIMEOUT));
        o.expire(t0 + INVITE_TIMEOUT, |v| gone.push(v));
        assert_eq!(gone, vec!["message", "invite"]);
        assert!(o.is_empty());
    }
}
