//! Quotas counted pool-wide at allocation time (issue: a user holding
//! `max_allocations_per_user` relays on each member of a pool): in a pool, a new hold is
//! asked of the pool before it is granted, the one place the relay waits for the network.
//!
//! The Allocate is checked (credentials, attributes, the quota as far as this member knows
//! it), then parked: its holds count here at once (so the user cannot race this member), an
//! [`Output::AskPool`] goes out, and the answer comes back through [`Server::pool_answer`].
//! One ask per user is in flight from a member at a time (the others queue behind it), so
//! each ask tells the pool exactly what the user holds here: what is established, plus the
//! ask's own (the pool keeps that count if it grants, the established one if it refuses);
//! and what this member reports between asks ([`Server::pool_report`]) is the established
//! count of users with no ask outstanding. The wait is bounded: an ask not answered by its
//! deadline is decided on what this member knows ([`PoolVerdict::Unknown`]: its own holds
//! and the other members' last reports), as is every ask when the pool is away.
//!
//! Bounds: at most [`MAX_ASKS`] asks wait at once (508 beyond: the client retries), one per
//! 5-tuple (a retransmission meanwhile is dropped: the answer will come), each for at most
//! `pool_ask_timeout`. What waits is the checked request, not the packet.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::allocate::AllocateRequest;
use super::{error_answer, FiveTuple, Output, Server, ALLOCATE};
use crate::core::turn::error::Refused;

/// Asks that may wait for the pool at once.
pub const MAX_ASKS: usize = 1024;

/// A question for the pool: may `user` hold `here` allocations and reservations on this
/// member (`more` of them new), given what it holds on the others, within `quota`? `seq`
/// orders this count among the member's others ([`Server::pool_report`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolAsk {
    pub id: u64,
    pub user: Arc<str>,
    pub here: usize,
    pub more: usize,
    pub quota: usize,
    pub seq: u64,
}

/// The pool's answer to a [`PoolAsk`]; `elsewhere` is what the user holds on the other
/// members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolVerdict {
    Granted {
        elsewhere: usize,
    },
    Refused {
        elsewhere: usize,
    },
    /// No answer in time, or the pool is away: decided here on what this member knows.
    Unknown,
}

/// What a member tells the pool between asks ([`Server::pool_report`]).
#[derive(Clone, Debug, Default)]
pub struct PoolReport {
    /// The number of this count among the member's changes.
    pub seq: u64,
    /// Users with no ask outstanding, and what each holds here.
    pub holds: Vec<(Arc<str>, usize)>,
    /// Users with an ask outstanding (their count is the asks' to keep).
    pub asking: Vec<Arc<str>>,
}

/// The asks waiting, and whether asking is on (the shell turns it on while the pool is up).
#[derive(Default)]
pub(super) struct PoolAsks {
    enabled: bool,
    waiting: HashMap<u64, AllocateRequest>,
    tuples: HashSet<FiveTuple>,
    /// Waiting asks whose client closed its TCP connection meanwhile: decided as the
    /// others (their holds given back, the user's next ask sent), but nothing is granted
    /// to a connection that is gone. At most one per waiting ask.
    closed: HashSet<FiveTuple>,
    /// Deadlines in order (asks answered before theirs linger here until it passes).
    deadlines: VecDeque<(Instant, u64)>,
    /// Each user's asks in order: the first is in flight, the others wait for its answer.
    queues: HashMap<Arc<str>, VecDeque<u64>>,
    next_id: u64,
    /// Asks decided so far: granted by the pool, refused by it, decided here.
    decided: [u64; 3],
}

impl PoolAsks {
    pub(super) fn waiting(&self) -> impl Iterator<Item = &AllocateRequest> {
        self.waiting.values()
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(t, _)| *t)
    }

    pub(super) fn mark_closed(&mut self, tuple: FiveTuple) {
        self.closed.insert(tuple);
    }

    pub(super) fn is_waiting(&self, tuple: &FiveTuple) -> bool {
        self.tuples.contains(tuple)
    }

    /// Users with an ask outstanding (their count in the pool is the asks' to keep).
    pub(super) fn asking(&self) -> impl Iterator<Item = &Arc<str>> {
        self.queues.keys()
    }

    /// Whether the users' queues hold exactly the asks waiting, each in its user's (and
    /// only waiting asks are marked closed).
    pub(super) fn queues_agree(&self) -> bool {
        let queued: usize = self.queues.values().map(VecDeque::len).sum();
        queued == self.waiting.len()
            && self.closed.iter().all(|t| self.tuples.contains(t))
            && self.queues.iter().all(|(user, q)| {
                !q.is_empty()
                    && q.iter()
                        .all(|id| self.waiting.get(id).is_some_and(|r| r.user == *user))
            })
    }

    /// The asks queued for the user.
    pub(super) fn queued(&self, user: &str) -> usize {
        self.queues.get(user).map_or(0, |q| q.len())
    }

    /// The holds the user's asks add, together.
    fn pending_holds(&self, user: &str) -> usize {
        self.queues.get(user).map_or(0, |q| {
            q.iter()
                .filter_map(|id| self.waiting.get(id))
                .map(AllocateRequest::holds)
                .sum()
        })
    }
}

impl Server {
    /// Whether new holds are asked of the pool.
    pub(super) fn asks_pool(&self) -> bool {
        self.asks.enabled
    }

    /// Asks waiting for the pool now.
    pub fn pool_asks_waiting(&self) -> usize {
        self.asks.waiting.len()
    }

    /// Asks decided so far, by how: the pool granted, the pool refused, decided here (no
    /// answer in time, or the pool away).
    pub fn pool_asks_decided(&self) -> [(&'static str, u64); 3] {
        let [granted, refused, here] = self.asks.decided;
        [("granted", granted), ("refused", refused), ("local", here)]
    }

    /// Turns asking the pool on (it is up) or off (it is away: what waits is decided here
    /// now, as new Allocates will be).
    pub fn set_pool_asks(&mut self, enabled: bool, now: Instant, out: &mut Vec<Output>) {
        self.asks.enabled = enabled;
        if !enabled {
            let ids: Vec<u64> = self.asks.waiting.keys().copied().collect();
            for id in ids {
                self.pool_answer(id, PoolVerdict::Unknown, now, out);
            }
            self.asks.deadlines.clear();
        }
    }

    /// Parks a checked Allocate and asks the pool about it; its holds count here meanwhile.
    pub(super) fn ask_pool(
        &mut self,
        request: AllocateRequest,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), Refused> {
        if self.asks.waiting.len() >= MAX_ASKS {
            return Err(Refused::InsufficientCapacity);
        }
        let more = request.holds();
        for _ in 0..more {
            self.charge_hold(&request.user, request.source, now);
        }
        self.asks.next_id += 1;
        let id = self.asks.next_id;
        let queue = self.asks.queues.entry(request.user.clone()).or_default();
        queue.push_back(id);
        let first = queue.len() == 1;
        self.asks.tuples.insert(request.tuple);
        self.asks
            .deadlines
            .push_back((now + self.cfg.pool_ask_timeout, id));
        let user = request.user.clone();
        self.asks.waiting.insert(id, request);
        if first {
            self.send_ask(&user, out);
        }
        // Answered asks linger in the queue until their deadline: keep it within a
        // constant factor of the waiting ones (amortised O(1), as the reservations' queue).
        if self.asks.deadlines.len() > 2 * self.asks.waiting.len() + 64 {
            let waiting = &self.asks.waiting;
            self.asks
                .deadlines
                .retain(|(_, id)| waiting.contains_key(id));
        }
        Ok(())
    }

    /// Asks the pool about the user's first ask: what the user holds here is what is
    /// established and this ask's own (the asks behind it are not the pool's to count yet).
    fn send_ask(&mut self, user: &Arc<str>, out: &mut Vec<Output>) {
        let Some(&id) = self.asks.queues.get(user).and_then(|q| q.front()) else {
            return;
        };
        let Some(more) = self.asks.waiting.get(&id).map(AllocateRequest::holds) else {
            return;
        };
        let held = self.per_user.get(user).map_or(0, |u| u.holds);
        let here = held.saturating_sub(self.asks.pending_holds(user)) + more;
        out.push(Output::AskPool(PoolAsk {
            id,
            user: user.clone(),
            here,
            more,
            quota: self.cfg.max_allocations_per_user,
            seq: self.holds_seq,
        }));
    }

    /// The pool's answer to ask `id` (nothing if it was decided already): the Allocate is
    /// granted or refused, its answer goes out, and the user's next ask, if any.
    pub fn pool_answer(
        &mut self,
        id: u64,
        verdict: PoolVerdict,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let Some(request) = self.asks.waiting.remove(&id) else {
            return;
        };
        self.asks.tuples.remove(&request.tuple);
        let gone = self.asks.closed.remove(&request.tuple);
        let mut next = false;
        if let Some(queue) = self.asks.queues.get_mut(&request.user) {
            next = queue.front() == Some(&id);
            queue.retain(|q| *q != id);
            if queue.is_empty() {
                self.asks.queues.remove(&request.user);
                next = false;
            }
        }
        let user = request.user.clone();
        let how = match verdict {
            PoolVerdict::Granted { .. } => 0,
            PoolVerdict::Refused { .. } => 1,
            PoolVerdict::Unknown => 2,
        };
        if let Some(n) = self.asks.decided.get_mut(how) {
            *n += 1;
        }
        for _ in 0..request.holds() {
            self.release_hold(&request.user, request.source);
        }
        if let PoolVerdict::Granted { elsewhere } | PoolVerdict::Refused { elsewhere } = verdict {
            self.set_pool_hold(&request.user, elsewhere);
        }
        let (tuple, transaction_id, sha256, key) = (
            request.tuple,
            request.transaction_id,
            request.sha256,
            request.key,
        );
        let result = match verdict {
            // The client's connection is gone: nobody to allocate for, nobody to answer.
            _ if gone => None,
            PoolVerdict::Refused { .. } => Some(Err(Refused::AllocationQuotaReached)),
            // Granted: this member's own checks still apply (its ports, its total).
            PoolVerdict::Granted { .. } | PoolVerdict::Unknown => {
                Some(self.grant(request, now, out))
            }
        };
        if let Some(result) = result {
            let bytes = result.unwrap_or_else(|refused| {
                error_answer(ALLOCATE, &transaction_id, refused, Some((&key, sha256)))
            });
            out.push(Output::ToClient { tuple, bytes });
        }
        if next && self.asks.enabled {
            self.send_ask(&user, out);
        }
    }

    /// Decides the asks past their deadline on what this member knows.
    pub(super) fn expire_asks(&mut self, now: Instant, out: &mut Vec<Output>) {
        while let Some(&(deadline, id)) = self.asks.deadlines.front() {
            if deadline > now {
                break;
            }
            self.asks.deadlines.pop_front();
            self.pool_answer(id, PoolVerdict::Unknown, now, out);
        }
    }
}
