//! The calls crossing the edge (INVITE dialogs), sans-IO: what a drain waits for, what
//! `/status` shows, and the bound on how many calls a source, a partner and the edge may
//! hold at once.
//!
//! A call is counted when its INVITE is about to go to the next hop (the caller aborts it
//! if the send fails), until a final failure answers it, a BYE of the dialog
//! crosses, or it outlives its bound on a timer: [`UNANSWERED`] without a final answer
//! (RFC 3261 §16.6 Timer C), `max_duration` once answered (a peer that never sends BYE
//! must not hold a slot for ever). Entries are keyed by a keyed hash of the Call-ID and the
//! initiator's tag, so a table entry is a few dozen bytes whatever the sender wrote, and
//! nobody can aim collisions at another caller's entry.
//!
//! Every operation is O(log n) in the number of calls: deadlines sit in an ordered set
//! beside the map, and expiry pops only what is due.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hasher;
use std::time::{Duration, Instant};

use siphasher::sip::SipHasher24;

use super::proxy::Side;

use crate::core::net::SourceKey;

/// How long an INVITE may wait for its final answer (RFC 3261 §16.6 Timer C: > 3 min).
pub const UNANSWERED: Duration = Duration::from_secs(181);

/// Who a call is charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A remote user's source address (IPv4 address or IPv6 /64).
    Source(SourceKey),
    /// A federation partner (listed: its key; discovered: its domain's key), both
    /// directions together.
    Partner(u64),
    /// Calls the inside places to remote users: bounded by the total only.
    Inside,
}

/// Who a new call is charged to, and how many calls that owner may hold at once (`None`:
/// only the total applies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge {
    pub owner: Owner,
    pub limit: Option<usize>,
}

/// The bounds of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallLimits {
    /// Calls at once, every owner together.
    pub max_calls: usize,
    /// How long an answered call is counted without a BYE.
    pub max_duration: Duration,
}

/// Which bound refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtLimit {
    /// The edge holds `max_calls`.
    Total,
    /// The owner holds as many as it may.
    Owner,
    /// The Call-ID and tag name another owner's call: counting it would move that call.
    Taken,
}

/// A call's identity in the table (a keyed hash of its Call-ID and initiator's tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(u64);

#[derive(Clone, Copy, Debug)]
struct Call {
    owner: Owner,
    established: bool,
    until: Instant,
}

/// How a call's key is made: a keyed hash of its Call-ID and initiator tag, fixed for the
/// table's life, so callers compute keys without the table's lock.
#[derive(Clone, Copy, Debug)]
pub struct CallHasher((u64, u64));

impl CallHasher {
    /// The key of the call leg with this Call-ID and initiator tag whose INVITE entered
    /// the edge on side `entered`. A call between two remote users crosses the edge twice
    /// (in to the Director, out to the callee) with the same Call-ID and tags: each
    /// crossing is a leg of its own, charged to its own owner (the caller's source, then
    /// the inside or the partner it goes to).
    pub fn key(&self, call_id: &[u8], initiator_tag: &[u8], entered: Side) -> CallKey {
        let mut h = SipHasher24::new_with_keys(self.0 .0, self.0 .1);
        h.write_u64(call_id.len() as u64);
        h.write(call_id);
        h.write_u8(u8::from(entered == Side::Internal));
        h.write(initiator_tag);
        CallKey(h.finish())
    }
}

/// The calls, bounded and on timers.
#[derive(Debug)]
pub struct Calls {
    limits: CallLimits,
    hasher: CallHasher,
    by_key: HashMap<CallKey, Call>,
    per_owner: HashMap<Owner, usize>,
    deadlines: BTreeSet<(Instant, CallKey)>,
}

impl Calls {
    /// `key` keys the hash of Call-IDs (random per process in the shell).
    pub fn new(limits: CallLimits, key: (u64, u64)) -> Calls {
        Calls {
            limits,
            hasher: CallHasher(key),
            by_key: HashMap::new(),
            per_owner: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    /// New bounds (a reload); calls counted so far stay.
    pub fn set_limits(&mut self, limits: CallLimits) {
        self.limits = limits;
    }

    pub fn limits(&self) -> CallLimits {
        self.limits
    }

    /// The key of the call with this Call-ID and initiator tag.
    pub fn key(&self, call_id: &[u8], initiator_tag: &[u8], entered: Side) -> CallKey {
        self.hasher.key(call_id, initiator_tag, entered)
    }

    /// How this table's keys are made (for callers that hash outside its lock).
    pub fn hasher(&self) -> CallHasher {
        self.hasher
    }

    /// [`Calls::begin`] for `charge`'s owner and limit.
    pub fn begin_for(
        &mut self,
        key: CallKey,
        charge: Charge,
        now: Instant,
    ) -> Result<bool, AtLimit> {
        self.begin(key, charge.owner, charge.limit, now)
    }

    /// An INVITE that starts a call for `owner`, which may hold `owner_limit` at once
    /// (`None`: only the total applies). `Ok(true)` when a new call is counted (the caller
    /// must [`Calls::abort`] it if the next hop does not take the request), `Ok(false)`
    /// for a retransmission of one counted already.
    pub fn begin(
        &mut self,
        key: CallKey,
        owner: Owner,
        owner_limit: Option<usize>,
        now: Instant,
    ) -> Result<bool, AtLimit> {
        self.expire(now);
        if let Some(call) = self.by_key.get(&key) {
            return if call.owner == owner {
                Ok(false)
            } else {
                Err(AtLimit::Taken)
            };
        }
        if self.by_key.len() >= self.limits.max_calls {
            return Err(AtLimit::Total);
        }
        if owner_limit.is_some_and(|max| self.count(owner) >= max) {
            return Err(AtLimit::Owner);
        }
        let until = now + UNANSWERED;
        self.by_key.insert(
            key,
            Call {
                owner,
                established: false,
                until,
            },
        );
        self.deadlines.insert((until, key));
        *self.per_owner.entry(owner).or_insert(0) += 1;
        Ok(true)
    }

    /// The next hop did not take the INVITE of a call [`Calls::begin`] counted: it is no
    /// call.
    pub fn abort(&mut self, key: CallKey) {
        self.remove(key);
    }

    /// A final response to the call's INVITE: 2xx establishes it for `max_duration`;
    /// a failure before any 2xx ends it (after a 2xx, from another fork, it changes
    /// nothing).
    pub fn answered(&mut self, key: CallKey, status: u16, now: Instant) {
        let Some(call) = self.by_key.get_mut(&key) else {
            return;
        };
        match status {
            200..=299 if !call.established => {
                self.deadlines.remove(&(call.until, key));
                call.established = true;
                call.until = now + self.limits.max_duration;
                self.deadlines.insert((call.until, key));
            }
            300.. if !call.established => self.remove(key),
            _ => {}
        }
    }

    /// A BYE of the dialog crossed: the call is over.
    pub fn ended(&mut self, key: CallKey) {
        self.remove(key);
    }

    fn remove(&mut self, key: CallKey) {
        if let Some(call) = self.by_key.remove(&key) {
            self.deadlines.remove(&(call.until, key));
            if let Some(n) = self.per_owner.get_mut(&call.owner) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_owner.remove(&call.owner);
                }
            }
        }
    }

    /// Drops every call whose bound passed; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(&(until, key)) = self.deadlines.first() {
            if until > now {
                break;
            }
            self.remove(key);
            n += 1;
        }
        n
    }

    /// When the next call's bound passes.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Calls charged to `owner`.
    pub fn count(&self, owner: Owner) -> usize {
        self.per_owner.get(&owner).copied().unwrap_or(0)
    }

    /// Calls counted now.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests start simulated time from a real instant
mod tests {
    use super::*;

    const LIMITS: CallLimits = CallLimits {
        max_calls: 4,
        max_duration: Duration::from_secs(3600),
    };

    fn calls() -> Calls {
        Calls::new(LIMITS, (1, 2))
    }

    const ALICE: Owner = Owner::Source(SourceKey::V4(0xc000_0201));
    const BOB: Owner = Owner::Source(SourceKey::V4(0xc000_0202));

    #[test]
    fn bounded_per_owner_and_in_total() {
        let t0 = Instant::now();
        let mut c = calls();
        let keys: Vec<CallKey> = (0..6)
            .map(|i: u32| c.key(format!("call{i}").as_bytes(), b"tag", Side::External))
            .collect();
        let k = |i: usize| keys[i];
        assert_eq!(c.begin(k(1), ALICE, Some(2), t0), Ok(true));
        assert_eq!(c.begin(k(1), ALICE, Some(2), t0), Ok(false), "counted once");
        assert_eq!(c.begin(k(2), ALICE, Some(2), t0), Ok(true));
        assert_eq!(c.begin(k(3), ALICE, Some(2), t0), Err(AtLimit::Owner));
        assert_eq!(
            c.begin(k(1), BOB, Some(2), t0),
            Err(AtLimit::Taken),
            "another owner's call is not moved"
        );
        assert_eq!(c.begin(k(3), BOB, Some(2), t0), Ok(true));
        assert_eq!(c.begin(k(4), Owner::Inside, None, t0), Ok(true));
        assert_eq!(c.begin(k(5), Owner::Inside, None, t0), Err(AtLimit::Total));
        assert_eq!(c.len(), 4);
        c.abort(k(4));
        assert_eq!(c.begin(k(5), Owner::Inside, None, t0), Ok(true));
        assert_eq!(c.count(ALICE), 2);
    }

    /// A remote user calling another crosses the edge twice with the same Call-ID and tags:
    /// in (charged to the caller's source) and back out (charged to the inside). Keyed by
    /// leg, both are counted; keyed by Call-ID alone the second was `Taken` and the call
    /// refused with 503 Call Limit.
    #[test]
    fn a_call_between_two_remote_users_is_two_legs_not_a_taken_key() {
        let t0 = Instant::now();
        let mut c = calls();
        let inbound = c.key(b"hairpin", b"a1", Side::External);
        let outbound = c.key(b"hairpin", b"a1", Side::Internal);
        assert_ne!(inbound, outbound);
        assert_eq!(c.begin(inbound, ALICE, Some(2), t0), Ok(true));
        assert_eq!(c.begin(outbound, Owner::Inside, None, t0), Ok(true));
        assert_eq!((c.len(), c.count(ALICE)), (2, 1));
        // Someone else with the same Call-ID and tag from outside is still refused.
        assert_eq!(c.begin(inbound, BOB, Some(2), t0), Err(AtLimit::Taken));
        c.ended(inbound);
        c.ended(outbound);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn answers_and_byes_end_calls_and_timers_expire_the_rest() {
        let t0 = Instant::now();
        let mut c = calls();
        let a = c.key(b"a", b"t", Side::External);
        let b = c.key(b"b", b"t", Side::External);
        let d = c.key(b"d", b"t", Side::External);
        c.begin(a, ALICE, None, t0).unwrap();
        c.begin(b, ALICE, None, t0).unwrap();
        c.begin(d, ALICE, None, t0).unwrap();
        c.answered(a, 486, t0);
        assert_eq!(c.len(), 2, "a failure ends an unanswered call");
        c.answered(b, 200, t0);
        c.answered(b, 486, t0);
        assert_eq!(
            c.len(),
            2,
            "a late failure does not end an established call"
        );
        assert_eq!(c.poll_timeout(), Some(t0 + UNANSWERED));
        assert_eq!(
            c.expire(t0 + UNANSWERED),
            1,
            "Timer C for the unanswered one"
        );
        assert_eq!(c.poll_timeout(), Some(t0 + LIMITS.max_duration));
        assert_eq!(
            c.expire(t0 + LIMITS.max_duration - Duration::from_secs(1)),
            0
        );
        c.ended(b);
        assert!(c.is_empty());
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.count(ALICE), 0);
    }
}
