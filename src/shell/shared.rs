//! What every connection of one edge instance needs ([`Shared`]): the proxy, the flow
//! table, the firewall, the limits in force, the call table, counters, drain and
//! shutdown. It owns neither the pool, the partners nor the relay.

use crate::sync::{MutexExt, RwLockExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::clock;
use super::flows::FlowTable;
use super::stats::Stats;
use crate::core::firewall::SourceGuard;
use crate::core::sip::calls::{CallHasher, Calls};
use crate::core::sip::pool_link::Answerable;
use crate::core::sip::proxy::Proxy;
use crate::core::sip::session::SessionLimits;
use crate::core::sip::token::FlowId;
use crate::core::sip::Why;
use crate::obs::LogLimiter;

/// Connection limits, resolved from the topology.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// What each connection's session applies.
    pub session: SessionLimits,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_handshakes: usize,
    /// A peer that does not take our bytes for this long is cut off (it does not read).
    pub write_timeout: Duration,
    /// Bytes other connections may queue for one connection before messages are refused.
    pub max_queued_bytes: usize,
}

/// What every connection of one edge instance needs.
pub struct Shared {
    pub proxy: Proxy,
    pub flows: FlowTable,
    /// Limits in force (a reload replaces them; read them through [`Shared::limits`]).
    pub(super) limits: std::sync::RwLock<Arc<ConnLimits>>,
    /// Per-source limits and bans of the external zone.
    pub guard: Arc<SourceGuard>,
    /// The A/V authentication service (pool ring + relay), when configured.
    pub credentials: Option<CredentialService>,
    pub shutdown: watch::Receiver<bool>,
    pub stats: Stats,
    /// SIP capture (`[capture]`): read per message, swapped whole by a reload.
    pub capture: super::capture::CaptureSwitch,
    /// Reject and refusal log lines, rate-limited so that a flood cannot fill the disk.
    pub reject_log: LogLimiter,
    /// Set by [`RunningEdge::drain`]: `/healthz` answers 503, listeners stop accepting, new
    /// work is refused.
    pub draining: watch::Receiver<bool>,
    /// Calls (INVITE dialogs) crossing the edge, bounded per source, per partner and in
    /// total: what a drain waits for. Read through [`Shared::calls`].
    pub(super) calls: std::sync::Mutex<Calls>,
    /// The call table's key hash, computed without its lock.
    pub call_hasher: CallHasher,
    pub(super) next_flow: AtomicU64,
}

/// What the A/V authentication service issues from.
#[derive(Clone, Debug)]
pub struct CredentialService {
    /// The pool ring, live (a rotation reaches new credentials at once).
    pub ring: super::ring::SharedRing,
    pub relay: crate::core::avauth::RelayInfo,
}

impl Shared {
    /// A flow id never used before in this process. Starts at a random point so ids do not
    /// reveal how many connections the edge has seen.
    pub fn next_flow_id(&self) -> FlowId {
        FlowId(self.next_flow.fetch_add(1, Ordering::Relaxed))
    }

    /// The limits in force now.
    pub fn limits(&self) -> Arc<ConnLimits> {
        self.limits.read_unpoisoned().clone()
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// The call table. Held for a hash-map operation at a time: never across I/O.
    pub fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        // A panic while holding it cannot leave a torn entry (each update is a few map
        // operations), so a poisoned lock is still usable.
        self.calls.lock_unpoisoned()
    }

    /// Calls crossing the edge now (expired ones dropped first).
    pub fn calls_in_progress(&self) -> usize {
        let mut calls = self.calls();
        calls.expire(clock::now());
        calls.len()
    }

    /// Answers a forwarded request in its next hop's place, outside any session (a request
    /// still queued for a member that went away, or waiting for a partner connection that
    /// could not be made): see `core::sip::session::answer_in_place_of`.
    pub fn answer_in_place_of(&self, answerable: &Answerable, why: Why) {
        let Some((answer, status)) = answerable.answer(why) else {
            return;
        };
        let _ = self
            .flows
            .send(answerable.origin, bytes::Bytes::from(answer));
        if let Some(key) = answerable.call {
            self.calls().answered(key, status, clock::now());
        }
    }
}
