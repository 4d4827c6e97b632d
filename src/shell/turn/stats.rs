//! The relay's counters, exported live on `/metrics`: packets and bytes each way, receive
//! batches, send errors, drops by reason, and TURN-over-TCP refusals and connections.
//!
//! The per-packet counters are kept per thread that relays (a shard per relay worker, one
//! for the runtime's tasks), each on cache lines of its own, and summed when read: workers
//! never write a line another worker writes (issue 16: no atomics contended per packet).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::turn::server::Dropped;

/// Drops beyond the core's reasons: a TCP client's queue full (packets or bytes).
pub(super) const QUEUE_FULL: usize = Dropped::ALL.len();

/// Why a TURN-over-TCP connection was refused or closed early, for `/metrics`.
pub const TCP_REFUSAL_LABELS: [&str; 6] = [
    "zone_full",
    "source_limit",
    "banned",
    "auth_timeout",
    "tls_handshake",
    "handshakes_full",
];
pub(super) const ZONE_FULL: usize = 0;
pub(super) const SOURCE_LIMIT: usize = 1;
pub(super) const BANNED: usize = 2;
pub(super) const AUTH_TIMEOUT: usize = 3;
/// TURN over TLS: the handshake failed or did not finish within `tcp_auth_timeout`.
pub(super) const TLS_HANDSHAKE: usize = 4;
/// TURN over TLS: as many handshakes in progress as the relay takes at once.
pub(super) const HANDSHAKES_FULL: usize = 5;

thread_local! {
    /// The shard of the thread: 0 for the runtime's threads, `i + 1` for relay worker `i`.
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Makes this thread count in shard `shard` (a relay worker's, at its start).
pub(super) fn count_in(shard: usize) {
    SHARD.with(|s| s.set(shard));
}

/// One thread's per-packet counters, alone on their cache lines.
#[derive(Default)]
#[repr(align(128))]
pub(super) struct Hot {
    client_packets: AtomicU64,
    peer_packets: AtomicU64,
    relayed_to_peers: AtomicU64,
    relayed_to_clients: AtomicU64,
    bytes_to_peers: AtomicU64,
    bytes_to_clients: AtomicU64,
    receive_calls: AtomicU64,
    send_errors: AtomicU64,
    dropped: [AtomicU64; QUEUE_FULL + 1],
}

impl Hot {
    pub(super) fn client_packets(&self, n: usize) {
        self.client_packets.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn peer_packets(&self, n: usize) {
        self.peer_packets.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn receive_call(&self) {
        self.receive_calls.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of the relay (exported on `/metrics`, live).
pub struct TurnStats {
    /// The runtime's threads' counters, then each relay worker's.
    tasks: Hot,
    workers: Box<[Hot]>,
    /// TURN-over-TCP connections refused or closed early, by [`TCP_REFUSAL_LABELS`].
    pub tcp_refused: [AtomicU64; 6],
    /// TURN-over-TCP connections up now.
    pub tcp_clients: AtomicU64,
    /// What the kernel path relayed (read back every second): packets and bytes to peers,
    /// then to clients. Counted in the totals too.
    kernel: [AtomicU64; 4],
}

impl Default for TurnStats {
    fn default() -> TurnStats {
        TurnStats::with_workers(0)
    }
}

impl TurnStats {
    /// Counters for the runtime's threads and `workers` relay workers.
    pub fn with_workers(workers: usize) -> TurnStats {
        TurnStats {
            tasks: Hot::default(),
            workers: (0..workers).map(|_| Hot::default()).collect(),
            tcp_refused: Default::default(),
            tcp_clients: AtomicU64::new(0),
            kernel: Default::default(),
        }
    }

    /// This thread's counters (a thread that is no worker of this relay's counts with the
    /// tasks).
    pub(super) fn hot(&self) -> &Hot {
        let shard = SHARD.with(Cell::get);
        shard
            .checked_sub(1)
            .and_then(|i| self.workers.get(i))
            .unwrap_or(&self.tasks)
    }

    fn shards(&self) -> impl Iterator<Item = &Hot> {
        std::iter::once(&self.tasks).chain(self.workers.iter())
    }

    fn sum(&self, counter: impl Fn(&Hot) -> &AtomicU64) -> u64 {
        self.shards()
            .map(|h| counter(h).load(Ordering::Relaxed))
            .sum()
    }

    /// Datagrams and frames received from clients.
    pub fn client_packets(&self) -> u64 {
        self.sum(|h| &h.client_packets)
    }

    /// Datagrams received from peers.
    pub fn peer_packets(&self) -> u64 {
        self.sum(|h| &h.peer_packets)
    }

    /// Packets relayed to peers and to clients, and their payload bytes (in user space
    /// and in the kernel).
    pub fn relayed_to_peers(&self) -> u64 {
        self.sum(|h| &h.relayed_to_peers) + self.kernel_count(0)
    }

    pub fn relayed_to_clients(&self) -> u64 {
        self.sum(|h| &h.relayed_to_clients) + self.kernel_count(2)
    }

    pub fn bytes_to_peers(&self) -> u64 {
        self.sum(|h| &h.bytes_to_peers) + self.kernel_count(1)
    }

    pub fn bytes_to_clients(&self) -> u64 {
        self.sum(|h| &h.bytes_to_clients) + self.kernel_count(3)
    }

    /// Of those, the packets the kernel path relayed: to peers, to clients.
    pub fn kernel_relayed_packets(&self) -> (u64, u64) {
        (self.kernel_count(0), self.kernel_count(2))
    }

    fn kernel_count(&self, i: usize) -> u64 {
        self.kernel.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Adds what the kernel relayed and dropped since it was last read.
    pub(super) fn kernel_relayed(&self, r: super::kernel::Relayed) {
        let add = [
            r.to_peers,
            r.bytes_to_peers,
            r.to_clients,
            r.bytes_to_clients,
        ];
        for (counter, n) in self.kernel.iter().zip(add) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
        if r.over_budget > 0 {
            if let Some(c) = self.tasks.dropped.get(Dropped::OverBandwidth.index()) {
                c.fetch_add(r.over_budget, Ordering::Relaxed);
            }
        }
    }

    /// System calls that received a batch (with the datagrams they carried, what batching
    /// saves).
    pub fn receive_calls(&self) -> u64 {
        self.sum(|h| &h.receive_calls)
    }

    /// Sends the kernel refused, a full socket buffer included (the datagram is dropped).
    pub fn send_errors(&self) -> u64 {
        self.sum(|h| &h.send_errors)
    }

    pub(super) fn drop(&self, why: Dropped) {
        self.count_drop(why.index());
    }

    pub(super) fn tcp_refusal(&self, index: usize) {
        if let Some(c) = self.tcp_refused.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn count_drop(&self, index: usize) {
        if let Some(c) = self.hot().dropped.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops by reason: the core's reasons, then `client_queue_full`.
    pub fn dropped(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Dropped::ALL
            .iter()
            .map(|d| d.label())
            .chain(["client_queue_full"])
            .enumerate()
            .map(|(i, label)| {
                let n = self
                    .shards()
                    .filter_map(|h| h.dropped.get(i))
                    .map(|c| c.load(Ordering::Relaxed))
                    .sum();
                (label, n)
            })
    }

    pub fn dropped_total(&self) -> u64 {
        self.shards()
            .flat_map(|h| h.dropped.iter())
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub(super) fn relayed(&self, to_peer: bool, packets: usize, bytes: usize) {
        let hot = self.hot();
        let (p, b) = if to_peer {
            (&hot.relayed_to_peers, &hot.bytes_to_peers)
        } else {
            (&hot.relayed_to_clients, &hot.bytes_to_clients)
        };
        p.fetch_add(packets as u64, Ordering::Relaxed);
        b.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Datagrams the kernel did not take (a full buffer, or refused): dropped.
    pub(super) fn unsent(&self, n: usize) {
        if n > 0 {
            self.hot()
                .send_errors
                .fetch_add(n as u64, Ordering::Relaxed);
        }
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
                self.hot().send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
