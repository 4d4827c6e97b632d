//! The relay's counters, exported live on `/metrics`: packets and bytes each way, receive
//! batches, send errors, drops by reason, and TURN-over-TCP refusals and connections.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::turn::server::Dropped;

/// Drops beyond the core's reasons: a TCP client's queue full (packets or bytes).
pub(super) const QUEUE_FULL: usize = Dropped::ALL.len();

/// Why a TURN-over-TCP connection was refused or closed early, for `/metrics`.
pub const TCP_REFUSAL_LABELS: [&str; 4] = ["zone_full", "source_limit", "banned", "auth_timeout"];
pub(super) const ZONE_FULL: usize = 0;
pub(super) const SOURCE_LIMIT: usize = 1;
pub(super) const BANNED: usize = 2;
pub(super) const AUTH_TIMEOUT: usize = 3;

/// Counters of the relay (exported on `/metrics`, live).
#[derive(Default)]
pub struct TurnStats {
    /// Datagrams and frames received from clients and from peers.
    pub client_packets: AtomicU64,
    pub peer_packets: AtomicU64,
    /// Packets relayed, and their payload bytes, each way.
    pub relayed_to_peers: AtomicU64,
    pub relayed_to_clients: AtomicU64,
    pub bytes_to_peers: AtomicU64,
    pub bytes_to_clients: AtomicU64,
    /// System calls that received a batch, and the datagrams they carried (their ratio is
    /// what batching saves).
    pub receive_calls: AtomicU64,
    /// Sends the kernel refused (not counting a full buffer, which is waited out).
    pub send_errors: AtomicU64,
    dropped: [AtomicU64; QUEUE_FULL + 1],
    /// TURN-over-TCP connections refused or closed early, by [`TCP_REFUSAL_LABELS`].
    pub tcp_refused: [AtomicU64; 4],
    /// TURN-over-TCP connections up now.
    pub tcp_clients: AtomicU64,
}

impl TurnStats {
    pub(super) fn drop(&self, why: Dropped) {
        self.count_drop(why.index());
    }

    pub(super) fn tcp_refusal(&self, index: usize) {
        if let Some(c) = self.tcp_refused.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn count_drop(&self, index: usize) {
        if let Some(c) = self.dropped.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops by reason: the core's reasons, then `client_queue_full`.
    pub fn dropped(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Dropped::ALL
            .iter()
            .map(|d| d.label())
            .chain(["client_queue_full"])
            .zip(self.dropped.iter().map(|c| c.load(Ordering::Relaxed)))
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub(super) fn relayed(&self, to_peer: bool, packets: usize, bytes: usize) {
        let (p, b) = if to_peer {
            (&self.relayed_to_peers, &self.bytes_to_peers)
        } else {
            (&self.relayed_to_clients, &self.bytes_to_clients)
        };
        p.fetch_add(packets as u64, Ordering::Relaxed);
        b.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(super) fn sent(
        &self,
        result: std::io::Result<()>,
        to_peer: bool,
        packets: usize,
        bytes: usize,
    ) {
        match result {
            Ok(()) => self.relayed(to_peer, packets, bytes),
            Err(_) => {
                self.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
