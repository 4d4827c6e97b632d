//! The allocation tables' bookkeeping: what a user and a source hold against their quotas
//! and the total, reservations ended, allocations found by owner, removed, and expired in
//! the order of their deadlines (the work is what expired, not what is held).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::{Allocation, FiveTuple, Output, Server, Transport, UserShare};
use crate::core::net::SourceKey;
use crate::core::turn::bandwidth::Meters;
use crate::core::turn::error::Refused;

impl Server {
    /// Whether `user` and `source` may hold `more` allocations or reservations beyond what
    /// they hold, within the total too.
    pub(super) fn quota(&self, user: &str, source: SourceKey, more: usize) -> Result<(), Refused> {
        let of_user = self.per_user.get(user).map_or(0, |u| u.holds)
            + self.pool_holds.get(user).copied().unwrap_or(0);
        let of_source = self.per_source.get(&source).copied().unwrap_or(0);
        if of_user + more > self.cfg.max_allocations_per_user
            || of_source + more > self.cfg.max_allocations_per_source
        {
            return Err(Refused::AllocationQuotaReached);
        }
        if self.held + more > self.cfg.max_allocations {
            return Err(Refused::InsufficientCapacity);
        }
        Ok(())
    }

    /// Counts one allocation or reservation for `user` and `source`; returns the user's
    /// meters.
    pub(super) fn charge_hold(
        &mut self,
        user: &Arc<str>,
        source: SourceKey,
        now: Instant,
    ) -> Arc<Meters> {
        self.held += 1;
        self.holds_seq += 1;
        *self.per_source.entry(source).or_insert(0) += 1;
        let next_id = &mut self.next_id;
        let share = self.per_user.entry(user.clone()).or_insert_with(|| {
            // Users and allocations draw ids from one counter: the kernel path keys
            // both kinds of meters by them.
            let id = *next_id;
            *next_id += 1;
            UserShare {
                id,
                holds: 0,
                meters: Arc::new(Meters::new(now)),
            }
        });
        share.holds += 1;
        let elsewhere = self.pool_holds.get(&**user).copied().unwrap_or(0);
        share.meters.set_share(share.holds, elsewhere);
        share.meters.clone()
    }

    pub(super) fn release_hold(&mut self, user: &str, source: SourceKey) {
        self.held = self.held.saturating_sub(1);
        self.holds_seq += 1;
        if let Some(share) = self.per_user.get_mut(user) {
            share.holds = share.holds.saturating_sub(1);
            if share.holds == 0 {
                self.per_user.remove(user);
            } else {
                let elsewhere = self.pool_holds.get(user).copied().unwrap_or(0);
                share.meters.set_share(share.holds, elsewhere);
            }
        }
        if let Some(n) = self.per_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// Ends the reservation of `port`: its hold is released, and its port too when
    /// `free_port` (not when an Allocate claims it and takes the port over).
    pub(super) fn end_reservation(&mut self, port: u16, free_port: bool) {
        if let Some(r) = self.reservations.remove(&port) {
            self.reservation_tokens.remove(&r.token);
            if let Some(owner) = self
                .by_id
                .get(&r.owner)
                .and_then(|t| self.allocations.get_mut(t))
            {
                owner.reservation = None;
            }
            let user = r.user.clone();
            self.release_hold(&user, r.source);
            if free_port {
                self.ports.release(port);
            }
        }
    }

    pub(super) fn owned(
        &mut self,
        tuple: FiveTuple,
        username: &str,
    ) -> Result<&mut Allocation, Refused> {
        match self.allocations.get_mut(&tuple) {
            Some(a) if a.username == username => Ok(a),
            // RFC 8656 §7: a request for an allocation made with other credentials.
            Some(_) => Err(Refused::WrongCredentials),
            None => Err(Refused::AllocationMismatch),
        }
    }

    /// Removes what expired by `now`: allocations past their lifetime and reservations past
    /// theirs (each in order of its deadline: the work is what expired, not what is held).
    /// Expired permissions and channels are ignored where they are read and pruned when
    /// their allocation is next touched.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.expire_asks(now, out);
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.remove(&(deadline, id));
            if let Some(tuple) = self.by_id.get(&id).copied() {
                self.remove(tuple, out);
            }
        }
        while let Some(&(deadline, port)) = self.reservation_queue.front() {
            if deadline > now {
                break;
            }
            self.reservation_queue.pop_front();
            // Claimed or ended reservations linger in the queue: only a live one that is
            // due goes.
            if self
                .reservations
                .get(&port)
                .is_some_and(|r| r.expires <= now)
            {
                self.end_reservation(port, true);
            }
        }
    }

    /// When [`Server::expire`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let allocation = self.deadlines.first().map(|(t, _)| *t);
        let reservation = self.reservation_queue.front().map(|(t, _)| *t);
        [allocation, reservation, self.asks.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The shell could not bind the relayed socket: the allocation is dropped. Returns the
    /// client whose answer must then not be sent (it retransmits and gets another port).
    pub fn relay_failed(&mut self, allocation: u64, relay: SocketAddr) -> Option<SocketAddr> {
        // Only the allocation the socket was for: the port may have gone to another one
        // since, whose own socket is (or will be) bound.
        if !self.holds_relay(allocation, relay) {
            return None;
        }
        let tuple = self.by_id.get(&allocation).copied()?;
        let mut ignore = Vec::new();
        self.remove(tuple, &mut ignore);
        Some(tuple.client)
    }

    /// Whether the allocation `allocation` (its id) is still here and holds `relay`. The
    /// shell binds a relayed socket outside the server's lock; by then the allocation may
    /// be gone (a Refresh with lifetime 0, a TCP close, an expiry on another thread) and
    /// its `CloseRelay` carried out already, finding nothing to close: a socket bound for
    /// an allocation that does not hold it is closed at once, or it would stay open with
    /// no allocation (its port free again for the next one, which then cannot bind it).
    pub fn holds_relay(&self, allocation: u64, relay: SocketAddr) -> bool {
        self.by_id
            .get(&allocation)
            .and_then(|tuple| self.allocations.get(tuple))
            .is_some_and(|a| a.id == allocation && a.relay == relay)
    }

    /// The client's TCP connection closed: its allocation goes with it (RFC 8656 §3.1),
    /// and an Allocate of its still waiting for the pool's answer grants nothing.
    pub fn client_closed(&mut self, tuple: FiveTuple, out: &mut Vec<Output>) {
        if self.asks.is_waiting(&tuple) {
            self.asks.mark_closed(tuple);
        }
        self.remove(tuple, out);
    }

    pub(super) fn remove(&mut self, tuple: FiveTuple, out: &mut Vec<Output>) {
        let Some(a) = self.allocations.remove(&tuple) else {
            return;
        };
        self.by_relay.remove(&a.relay);
        self.by_id.remove(&a.id);
        self.deadlines.remove(&(a.expires, a.id));
        // Its reservation dies with it (RFC 8656 §7.1), port and all.
        if let Some(port) = a.reservation {
            self.end_reservation(port, true);
        }
        self.release_hold(&a.user, a.source);
        self.ports.release(a.relay.port());
        if self.cfg.kernel_offload {
            for &number in a.channels.keys() {
                out.push(Output::KernelChannelGone {
                    tuple,
                    channel: number,
                });
            }
        }
        out.push(Output::CloseRelay { relay: a.relay });
        if tuple.transport == Transport::Tcp {
            out.push(Output::CloseClient { tuple });
        }
    }
}
