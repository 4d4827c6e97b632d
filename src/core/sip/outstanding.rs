//! Outstanding transactions toward one next hop: what "least outstanding" balances on.
//!
//! A request forwarded to a member is outstanding until its final response comes back, or
//! until the RFC 3261 transaction timeout passes (Timer F, 64*T1 = 32 s, for non-INVITE;
//! Timer C, more than 3 minutes, for INVITE), so a lost answer cannot inflate the count
//! forever. Owned by the member's connection task: no lock.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// RFC 3261 Timer F (64 * T1).
pub const NON_INVITE_TIMEOUT: Duration = Duration::from_secs(32);
/// RFC 3261 §16.6 Timer C: greater than 3 minutes.
pub const INVITE_TIMEOUT: Duration = Duration::from_secs(181);

/// The transactions in flight, with deadlines.
#[derive(Debug)]
pub struct Outstanding<K> {
    deadlines: HashMap<K, Instant>,
    /// Deadlines in insertion order; entries already completed are skipped lazily.
    queue: VecDeque<(Instant, K)>,
}

impl<K: Copy + Eq + Hash> Default for Outstanding<K> {
    fn default() -> Self {
        Outstanding {
            deadlines: HashMap::new(),
            queue: VecDeque::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> Outstanding<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a forwarded request. A retransmission (same key) keeps its first deadline.
    pub fn insert(&mut self, now: Instant, key: K, timeout: Duration) {
        let deadline = now + timeout;
        if self.deadlines.insert(key, deadline).is_none() {
            self.queue.push_back((deadline, key));
        }
    }

    /// A final response arrived. Returns whether the key was outstanding.
    pub fn complete(&mut self, key: &K) -> bool {
        self.deadlines.remove(key).is_some()
    }

    /// Forgets transactions whose deadline has passed; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut expired = 0;
        while let Some((deadline, key)) = self.queue.front().copied() {
            if deadline > now {
                break;
            }
            self.queue.pop_front();
            if self.deadlines.get(&key) == Some(&deadline) {
                self.deadlines.remove(&key);
                expired += 1;
            }
        }
        // Completed entries linger in the queue until their deadline; bound the waste.
        if self.queue.len() > 4 * self.deadlines.len() + 1024 {
            let live = &self.deadlines;
            self.queue.retain(|(d, k)| live.get(k) == Some(d));
        }
        expired
    }

    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }

    /// The next deadline, for the shell's timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.front().map(|(d, _)| *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_and_expire() {
        let t0 = Instant::now();
        let mut o = Outstanding::new();
        o.insert(t0, 1u64, NON_INVITE_TIMEOUT);
        o.insert(t0, 2u64, INVITE_TIMEOUT);
        o.insert(t0, 1u64, NON_INVITE_TIMEOUT);
        assert_eq!(o.len(), 2);
        assert!(o.complete(&2));
        assert!(!o.complete(&2));
        assert_eq!(o.expire(t0 + Duration::from_secs(31)), 0);
        assert_eq!(o.expire(t0 + Duration::from_secs(32)), 1);
        assert!(o.is_empty());
        assert_eq!(o.expire(t0 + Duration::from_secs(500)), 0);
        assert_eq!(o.poll_timeout(), None);
    }
}
