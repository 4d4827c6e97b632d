//! What the kernel fast path may relay on its own (`relay.kernel_offload`): the policy
//! stays here, the kernel only carries it out. A channel is handed over when the core would
//! relay its ChannelData itself — a live binding over UDP, a live permission for its peer,
//! a live allocation — and only until the first of those three deadlines: a kernel that
//! hears nothing more stops by itself, so an expiry never waits for user space. Each
//! request that extends one of them hands the channels over again with the new deadline;
//! an allocation that goes takes its channels out of the kernel before its socket closes.
//! The bandwidth budgets go with them: the kernel charges the same rates per allocation
//! and per user (this member's share of it in a pool). One budget for both paths: what
//! the kernel relayed is charged here too, every second ([`Server::kernel_spent`]), so a
//! client that mixes channels in the kernel with what user space relays (Send
//! indications, a channel not handed over) gets the budget once, not once per path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::{FiveTuple, Output, Server, Transport};
use crate::core::turn::bandwidth::{Budget, Direction};

/// A channel the kernel may relay both ways until `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelChannel {
    pub tuple: FiveTuple,
    pub channel: u16,
    pub peer: SocketAddr,
    pub relay: SocketAddr,
    pub until: Instant,
    /// The allocation's id and its user's: they name the meters (ids from one counter).
    pub allocation: u64,
    pub user_id: u64,
    pub user: Arc<str>,
    /// The budgets charged, per direction: the allocation's, and the user's share here.
    pub allocation_budget: Option<Budget>,
    pub user_budget: Option<Budget>,
}

impl Server {
    /// Hands the channels of `tuple`'s allocation that the core would relay now to the
    /// kernel (nothing without `kernel_offload`, over TCP, or when none is live).
    pub(super) fn kernel_channels(&self, tuple: FiveTuple, now: Instant, out: &mut Vec<Output>) {
        if !self.cfg.kernel_offload || tuple.transport != Transport::Udp {
            return;
        }
        let Some(a) = self.allocations.get(&tuple) else {
            return;
        };
        let Some(user_id) = self.per_user.get(&a.user).map(|u| u.id) else {
            return;
        };
        for (&channel, &(peer, bound_until)) in &a.channels {
            let Some(&permitted_until) = a.permissions.get(&peer.ip()) else {
                continue;
            };
            let until = bound_until.min(permitted_until).min(a.expires);
            // Relay to relay (another allocation on the relay's own address) stays in user
            // space: the kernel path sends by the route out of an interface, and the edge's
            // own address is no next hop. (On loopback it delivers up the stack: tests.)
            let relay_to_relay =
                self.cfg.policy.is_relayed_ip(peer.ip()) && !peer.ip().is_loopback();
            if until <= now || relay_to_relay {
                continue;
            }
            out.push(Output::KernelChannel(KernelChannel {
                tuple,
                channel,
                peer,
                relay: a.relay,
                until,
                allocation: a.id,
                user_id,
                user: a.user.clone(),
                allocation_budget: self.cfg.bandwidth_per_allocation,
                user_budget: a.user_meters.budget(self.cfg.bandwidth_per_user),
            }));
        }
    }

    /// Charges what the kernel relayed for the allocation `allocation` (its id), to the
    /// peer and to the client, to its meters here and its user's: user space then relays
    /// only what the budget has left. The kernel's own meters see only the kernel's
    /// traffic, so the kernel path goes first; the sum of both paths stays within the
    /// budget, give or take what the kernel relayed since the last call (a second's worth
    /// and a burst). An allocation gone by now is owed nothing.
    pub fn kernel_spent(&self, allocation: u64, bytes: [u64; 2], now: Instant) {
        let Some(a) = self
            .by_id
            .get(&allocation)
            .and_then(|tuple| self.allocations.get(tuple))
        else {
            return;
        };
        let user_budget = a.user_meters.budget(self.cfg.bandwidth_per_user);
        for (direction, bytes) in [Direction::ToPeer, Direction::ToClient]
            .into_iter()
            .zip(bytes)
        {
            a.meters
                .get(direction)
                .record(self.cfg.bandwidth_per_allocation, bytes, now);
            a.user_meters.get(direction).record(user_budget, bytes, now);
        }
    }

    /// The budget the kernel charges `user`'s channels now (this member's share of
    /// `max_kbps_per_user` in a pool; it changes as the pool's counts do): `None` when the
    /// user holds nothing here any more, `Some(None)` when unlimited.
    pub fn kernel_user_budget(&self, user: &str) -> Option<Option<Budget>> {
        let share = self.per_user.get(user)?;
        Some(share.meters.budget(self.cfg.bandwidth_per_user))
    }
}
