//! The A/V Edge shell: TURN over UDP and TCP listeners in both zones, relayed UDP sockets,
//! and the expiry timer around the sans-IO `core::turn::server`. The state machine sits
//! behind a read-write lock held only for the call (never across an await): the relay path
//! of established allocations reads, everything else writes; the packets it decides to send
//! are sent after the lock is released. UDP goes through [`super::udp`]'s batched I/O.

use crate::sync::{MutexExt, RwLockExt};
use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use quinn_udp::RecvMeta;

use super::clock;
use super::udp::{self, BatchSocket, CLIENT_BATCH, MAX_DATAGRAM};
use crate::core::firewall::SourceGuard;
use crate::core::keyring::Ring;
use crate::core::turn::auth::AuthContext;
use crate::core::turn::channel;
use crate::core::turn::demux::{classify, PacketKind};
use crate::core::turn::nonce::Nonces;
use crate::core::turn::policy::Origin;
use crate::core::turn::server::{
    Arrival, Dropped, FiveTuple, Output, Route, Server, ToClient, Transport, TurnConfig, SEND,
};
use crate::core::turn::stun::{self, Class};

/// The ChannelData header the hot path writes in front of a peer's datagram.
const HEADER: usize = crate::core::turn::channel::HEADER_LEN;
/// Packets queued for a TCP client before further ones are dropped (bytes are bounded
/// apart, by [`TcpLimits::max_queued_bytes`]).
const TCP_QUEUE: usize = 512;
/// A TCP client silent this long is closed (longer than the longest allocation lifetime
/// between Refreshes, which RFC 8656 clients send well before expiry).
const TCP_IDLE: Duration = Duration::from_secs(3600);

/// Drops beyond the core's reasons: a TCP client's queue full (packets or bytes).
const QUEUE_FULL: usize = Dropped::ALL.len();

/// The bounds of TURN over TCP (from `[relay]`).
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    /// Connections per zone at once: the outside cannot starve the inside.
    pub max_clients_per_zone: usize,
    /// Time a connection has to authenticate (hold an allocation), else it is closed.
    pub auth_timeout: Duration,
    /// Bytes queued for one client that does not read.
    pub max_queued_bytes: usize,
}

/// Why a TURN-over-TCP connection was refused or closed early, for `/metrics`.
pub const TCP_REFUSAL_LABELS: [&str; 4] = ["zone_full", "source_limit", "banned", "auth_timeout"];
const ZONE_FULL: usize = 0;
const SOURCE_LIMIT: usize = 1;
const BANNED: usize = 2;
const AUTH_TIMEOUT: usize = 3;

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
    fn drop(&self, why: Dropped) {
        self.count_drop(why.index());
    }

    fn tcp_refusal(&self, index: usize) {
        if let Some(c) = self.tcp_refused.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count_drop(&self, index: usize) {
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

    fn relayed(&self, to_peer: bool, packets: usize, bytes: usize) {
        let (p, b) = if to_peer {
            (&self.relayed_to_peers, &self.bytes_to_peers)
        } else {
            (&self.relayed_to_clients, &self.bytes_to_clients)
        };
        p.fetch_add(packets as u64, Ordering::Relaxed);
        b.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn sent(&self, result: std::io::Result<()>, to_peer: bool, packets: usize, bytes: usize) {
        match result {
            Ok(()) => self.relayed(to_peer, packets, bytes),
            Err(_) => {
                self.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The running relay.
pub struct Turn {
    /// Read-locked on the relay's hot path (ChannelData and Send/Data indications of
    /// established allocations), write-locked for the rest: relayed media never waits
    /// behind other media.
    server: std::sync::RwLock<Server>,
    ring: Ring,
    nonces: Nonces,
    realm: String,
    max_credential_lifetime_secs: u64,
    /// The firewall's per-source table, shared with the SIP listeners: TURN-over-TCP
    /// connections count against the same per-source limits, and strangers who overdraw
    /// their answer budget over TCP earn strikes under the same ban rules.
    guard: Arc<SourceGuard>,
    tcp_limits: TcpLimits,
    /// TURN-over-TCP slots of each zone (external, internal).
    tcp_slots: [Arc<Semaphore>; 2],
    /// Client-facing sockets by local address (a 5-tuple's server side).
    listeners: HashMap<SocketAddr, Arc<BatchSocket>>,
    /// Relayed sockets: read on every relayed packet, written only when one opens or closes.
    relays: std::sync::RwLock<HashMap<SocketAddr, (Arc<BatchSocket>, tokio::task::AbortHandle)>>,
    /// Writers of TURN-over-TCP clients, by 5-tuple.
    tcp_clients: Mutex<HashMap<FiveTuple, TcpQueue>>,
    pub stats: TurnStats,
    tasks: Mutex<JoinSet<()>>,
}

/// The sending end of a TURN-over-TCP client's queue: bounded in packets by the channel
/// and in bytes by a counter the writer gives back.
#[derive(Clone)]
struct TcpQueue {
    tx: mpsc::Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl TcpQueue {
    fn try_send(&self, bytes: Vec<u8>) -> bool {
        let len = bytes.len();
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > self.max_bytes {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        if self.tx.try_send(bytes).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// A run of relayed payloads with one destination and one size, gathered for one GSO send.
struct Run {
    relay: SocketAddr,
    peer: SocketAddr,
    size: usize,
    count: usize,
}

impl Turn {
    fn lock_server(&self) -> std::sync::RwLockWriteGuard<'_, Server> {
        // A panic under the lock cannot leave the map half-updated in a way that matters
        // more than stopping the relay would.
        self.server.write_unpoisoned()
    }

    fn read_server(&self) -> std::sync::RwLockReadGuard<'_, Server> {
        self.server.read_unpoisoned()
    }

    pub fn allocations(&self) -> usize {
        self.read_server().allocations()
    }

    /// Port reservations (EVEN-PORT R=1) waiting for their allocation.
    pub fn reservations(&self) -> usize {
        self.read_server().reservations()
    }

    fn relay_socket(&self, relay: SocketAddr) -> Option<Arc<BatchSocket>> {
        self.relays
            .read_unpoisoned()
            .get(&relay)
            .map(|(s, _)| s.clone())
    }

    fn auth(&self) -> AuthContext<'_> {
        AuthContext {
            ring: &self.ring,
            nonces: &self.nonces,
            realm: &self.realm,
            max_lifetime_secs: self.max_credential_lifetime_secs,
        }
    }

    /// Queues bytes for a TCP client; a client that does not read loses packets, not the
    /// relay's memory.
    fn to_tcp_client(&self, tuple: &FiveTuple, bytes: Vec<u8>) {
        let tx = self.tcp_clients.lock_unpoisoned().get(tuple).cloned();
        let len = bytes.len();
        if tx.is_some_and(|tx| tx.try_send(bytes)) {
            self.stats.relayed(false, 1, len);
        } else {
            self.stats.count_drop(QUEUE_FULL);
        }
    }

    /// Counts a packet the core dropped; a stranger who overdraws its answer budget from
    /// outside over TCP earns a strike.
    fn dropped(&self, why: Dropped, client: SocketAddr, origin: Origin, transport: Transport) {
        self.stats.drop(why);
        // Only a source the transport proves: over UDP the overdrawing "source" of an
        // amplification attack is its victim, and striking it would let anyone get any
        // address banned by spoofing it. Over TCP the handshake proved it.
        if why == Dropped::StrangerBudget
            && origin == Origin::External
            && transport == Transport::Tcp
        {
            self.guard.strike(client.ip(), clock::now());
        }
    }

    /// Carries out the core's outputs; returns the clients whose relayed socket could not
    /// be bound (their allocation is gone and their answer withheld).
    async fn execute(self: &Arc<Self>, outputs: Vec<Output>) -> Vec<SocketAddr> {
        let mut failed: Vec<SocketAddr> = Vec::new();
        for o in outputs {
            match o {
                Output::ToClient { tuple, bytes } => {
                    if failed.contains(&tuple.client) {
                        continue; // its relay could not be opened: it retransmits and retries
                    }
                    if tuple.transport == Transport::Tcp {
                        self.to_tcp_client(&tuple, bytes);
                    } else if let Some(sock) = self.listeners.get(&tuple.server) {
                        let sent = sock.send(tuple.client, &bytes, None).await;
                        self.stats.sent(sent, false, 1, bytes.len());
                    }
                }
                Output::ToPeer { relay, peer, bytes } => {
                    if let Some(sock) = self.relay_socket(relay) {
                        let sent = sock.send(peer, &bytes, None).await;
                        self.stats.sent(sent, true, 1, bytes.len());
                    }
                }
                Output::OpenRelay { relay } => match bind_udp(relay).and_then(BatchSocket::new) {
                    Ok(sock) => {
                        let sock = Arc::new(sock);
                        let this = self.clone();
                        let reader = sock.clone();
                        let task = self
                            .tasks
                            .lock_unpoisoned()
                            .spawn(this.relay_task(relay, reader));
                        self.relays.write_unpoisoned().insert(relay, (sock, task));
                    }
                    Err(e) => {
                        tracing::warn!(%relay, error = %e, "cannot bind a relayed socket");
                        let tuple_client = self.lock_server().relay_failed_client(relay);
                        if let Some(c) = tuple_client {
                            failed.push(c);
                        }
                    }
                },
                Output::CloseRelay { relay } => {
                    if let Some((_, task)) = self.relays.write_unpoisoned().remove(&relay) {
                        task.abort();
                    }
                }
            }
        }
        failed
    }

    /// A client-facing UDP socket. Datagrams are read in batches (recvmmsg, GRO trains
    /// split); a run of relay-path packets (ChannelData, Send indications) is routed
    /// under one read lock and sent straight from the receive buffers, equal-sized payloads
    /// to one peer gathered into one GSO send; anything else takes the general path in
    /// arrival order.
    async fn client_loop(self: Arc<Self>, sock: Arc<BatchSocket>, origin: Origin) {
        let local = sock.local_addr();
        let mut storage = vec![0u8; CLIENT_BATCH * MAX_DATAGRAM];
        let mut bufs: Vec<IoSliceMut<'_>> = storage
            .chunks_mut(MAX_DATAGRAM)
            .map(IoSliceMut::new)
            .collect();
        let mut metas = vec![RecvMeta::default(); bufs.len()];
        // Reused from batch to batch: the relay path allocates nothing per packet.
        let mut datagrams: Vec<(usize, Range<usize>)> = Vec::with_capacity(4 * CLIENT_BATCH);
        let mut routes: Vec<(usize, Route)> = Vec::with_capacity(4 * CLIENT_BATCH);
        let mut gather: Vec<u8> = Vec::with_capacity(MAX_DATAGRAM);
        loop {
            let n = match sock.recv(&mut bufs, &mut metas).await {
                Ok(n) => n,
                Err(_) => continue, // ICMP errors surface here on some kernels
            };
            self.stats.receive_calls.fetch_add(1, Ordering::Relaxed);
            datagrams.clear();
            for (i, (buf, meta)) in bufs.iter().zip(&metas).take(n).enumerate() {
                datagrams.extend(udp::datagrams(buf, meta).map(|r| (i, r)));
            }
            self.stats
                .client_packets
                .fetch_add(datagrams.len() as u64, Ordering::Relaxed);
            let mut next = 0;
            while next < datagrams.len() {
                // Route the relay-path packets up to the next other one, under one read lock.
                routes.clear();
                {
                    let server = self.read_server();
                    let now = clock::now();
                    while let Some((i, r)) = datagrams.get(next) {
                        let (Some(buf), Some(meta)) = (bufs.get(*i), metas.get(*i)) else {
                            break;
                        };
                        let packet = buf.get(r.clone()).unwrap_or_default();
                        let tuple = FiveTuple {
                            client: meta.addr,
                            server: local,
                            transport: Transport::Udp,
                        };
                        let routed = match classify(packet) {
                            PacketKind::ChannelData => server.channel_to_peer(&tuple, packet, now),
                            PacketKind::Stun => match stun::check(packet) {
                                Ok(c) if c.class == Class::Indication && c.method == SEND => {
                                    server.send_to_peer(&tuple, packet, &c, now)
                                }
                                _ => break,
                            },
                            _ => break,
                        };
                        match routed {
                            Ok(mut route) => {
                                route.data = route.data.start + r.start..route.data.end + r.start;
                                routes.push((*i, route));
                            }
                            Err(why) => self.stats.drop(why),
                        }
                        next += 1;
                    }
                }
                self.send_to_peers(&bufs, &routes, &mut gather).await;
                // The general path for the packet that stopped the run.
                if let Some((i, r)) = datagrams.get(next) {
                    let (Some(buf), Some(meta)) = (bufs.get(*i), metas.get(*i)) else {
                        break;
                    };
                    let packet = buf.get(r.clone()).unwrap_or_default();
                    let arrival = Arrival {
                        tuple: FiveTuple {
                            client: meta.addr,
                            server: local,
                            transport: Transport::Udp,
                        },
                        origin,
                        now: clock::now(),
                        now_unix: clock::now_unix(),
                    };
                    let mut out = Vec::new();
                    let result =
                        self.lock_server()
                            .client_packet(&self.auth(), arrival, packet, &mut out);
                    if let Err(why) = result {
                        self.dropped(why, meta.addr, origin, Transport::Udp);
                    }
                    self.execute(out).await;
                    next += 1;
                }
            }
        }
    }

    /// Sends routed payloads to their peers: a run of equal-sized payloads to one peer as
    /// one GSO send (gathered), anything else straight from the receive buffer.
    async fn send_to_peers(
        &self,
        bufs: &[IoSliceMut<'_>],
        routes: &[(usize, Route)],
        gather: &mut Vec<u8>,
    ) {
        let payload = |(i, route): &(usize, Route)| -> &[u8] {
            bufs.get(*i)
                .and_then(|b| b.get(route.data.clone()))
                .unwrap_or_default()
        };
        let mut k = 0;
        while let Some(first) = routes.get(k) {
            let (_, head) = first;
            let Some(sock) = self.relay_socket(head.relay) else {
                self.stats.drop(Dropped::NoAllocation);
                k += 1;
                continue;
            };
            let mut run = Run {
                relay: head.relay,
                peer: head.peer,
                size: head.data.len(),
                count: 1,
            };
            let limit = sock.max_segments().min(MAX_DATAGRAM / run.size.max(1));
            while run.count < limit
                && routes.get(k + run.count).is_some_and(|(_, r)| {
                    r.relay == run.relay && r.peer == run.peer && r.data.len() == run.size
                })
            {
                run.count += 1;
            }
            let bytes = run.size * run.count;
            let sent = if run.count == 1 {
                sock.send(run.peer, payload(first), None).await
            } else {
                gather.clear();
                for r in routes.iter().skip(k).take(run.count) {
                    gather.extend_from_slice(payload(r));
                }
                sock.send(run.peer, gather, Some(run.size)).await
            };
            self.stats.sent(sent, true, run.count, bytes);
            k += run.count;
        }
    }

    /// The relay loop, boxed with an explicit `Send`: it and `execute` call each other, and
    /// naming the type here ends the cycle the compiler cannot see through.
    fn relay_task(
        self: Arc<Self>,
        relay: SocketAddr,
        sock: Arc<BatchSocket>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(self.relay_loop(relay, sock))
    }

    async fn tcp_accept_loop(self: Arc<Self>, listener: TcpListener, origin: Origin) {
        let [external, internal] = &self.tcp_slots;
        let slots = match origin {
            Origin::External => external.clone(),
            Origin::Internal => internal.clone(),
        };
        loop {
            let Ok((stream, client)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // The firewall first, as for SIP: per-source connection rate and count, bans.
            let ticket = if origin == Origin::External {
                match self.guard.connect(client.ip(), clock::now()) {
                    Ok(()) => Some(SourceTicket {
                        guard: self.guard.clone(),
                        ip: client.ip(),
                    }),
                    Err(refusal) => {
                        let label = match refusal {
                            crate::core::firewall::Refusal::Banned { .. } => BANNED,
                            _ => SOURCE_LIMIT,
                        };
                        self.stats.tcp_refusal(label);
                        continue;
                    }
                }
            } else {
                None
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                self.stats.tcp_refusal(ZONE_FULL);
                continue;
            };
            let Ok(server) = stream.local_addr() else {
                continue;
            };
            let tuple = FiveTuple {
                client,
                server,
                transport: Transport::Tcp,
            };
            let this = self.clone();
            let task = this.tcp_client(stream, tuple, origin, (slot, ticket));
            self.tasks.lock_unpoisoned().spawn(task);
        }
    }

    /// One TURN-over-TCP client: STUN and ChannelData framed on the stream (RFC 8656 §12.5);
    /// its allocation ends with the connection. Until it holds an allocation it has
    /// `auth_timeout`, then it is closed: nobody holds a slot without authenticating.
    fn tcp_client(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        tuple: FiveTuple,
        origin: Origin,
        held: (tokio::sync::OwnedSemaphorePermit, Option<SourceTicket>),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            self.stats.tcp_clients.fetch_add(1, Ordering::Relaxed);
            let (mut reader, mut writer) = stream.into_split();
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
            let queued = Arc::new(AtomicUsize::new(0));
            self.tcp_clients.lock_unpoisoned().insert(
                tuple,
                TcpQueue {
                    tx,
                    queued: queued.clone(),
                    max_bytes: self.tcp_limits.max_queued_bytes,
                },
            );
            let write = tokio::spawn(async move {
                while let Some(bytes) = rx.recv().await {
                    let len = bytes.len();
                    let ok = writer.write_all(&bytes).await.is_ok();
                    queued.fetch_sub(len, Ordering::Relaxed);
                    if !ok {
                        return;
                    }
                }
            });
            let auth_deadline = clock::now() + self.tcp_limits.auth_timeout;
            let mut authenticated = false;
            let mut buf: Vec<u8> = Vec::with_capacity(4096);
            let mut chunk = vec![0u8; 16 * 1024];
            'read: loop {
                let wait = if authenticated {
                    TCP_IDLE
                } else {
                    auth_deadline.saturating_duration_since(clock::now())
                };
                let n = match tokio::time::timeout(wait, reader.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => n,
                    Err(_) if !authenticated => {
                        self.stats.tcp_refusal(AUTH_TIMEOUT);
                        break;
                    }
                    _ => break,
                };
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                loop {
                    match crate::core::turn::channel::stream_frame_len(
                        &buf,
                        crate::core::turn::stun::MAX_MESSAGE,
                    ) {
                        Ok(Some(len)) => {
                            let frame: Vec<u8> = buf.drain(..len).collect();
                            self.stats.client_packets.fetch_add(1, Ordering::Relaxed);
                            let arrival = Arrival {
                                tuple,
                                origin,
                                now: clock::now(),
                                now_unix: clock::now_unix(),
                            };
                            // A relayed port another process holds costs the answer (the
                            // allocation is dropped): a UDP client retransmits, a TCP
                            // client does not, so the edge asks again for it (another port).
                            for _attempt in 0..3 {
                                let mut out = Vec::new();
                                let result = self.lock_server().client_packet(
                                    &self.auth(),
                                    arrival,
                                    &frame,
                                    &mut out,
                                );
                                if let Err(why) = result {
                                    self.dropped(why, tuple.client, origin, Transport::Tcp);
                                }
                                if !self.execute(out).await.contains(&tuple.client) {
                                    break;
                                }
                            }
                            authenticated =
                                authenticated || self.read_server().has_allocation(&tuple);
                        }
                        Ok(None) => break,
                        Err(_) => break 'read, // not TURN: close
                    }
                }
                if !authenticated && clock::now() >= auth_deadline {
                    self.stats.tcp_refusal(AUTH_TIMEOUT);
                    break;
                }
            }
            self.tcp_clients.lock_unpoisoned().remove(&tuple);
            let mut out = Vec::new();
            self.lock_server().client_closed(tuple, &mut out);
            self.execute(out).await;
            write.abort();
            self.stats.tcp_clients.fetch_sub(1, Ordering::Relaxed);
            drop(held);
        })
    }

    /// A relayed socket: what its peers send goes to the client. One buffer per read
    /// (an allocation has few peers; batching pays on the client-facing sockets), received
    /// `HEADER` bytes in so a ChannelData header is written in front in place; a GRO train
    /// goes out as one GSO send.
    async fn relay_loop(self: Arc<Self>, relay: SocketAddr, sock: Arc<BatchSocket>) {
        let mut storage = vec![0u8; HEADER + MAX_DATAGRAM];
        let mut meta = [RecvMeta::default()];
        let mut scratch: Vec<u8> = Vec::with_capacity(256);
        let mut gather: Vec<u8> = Vec::new();
        loop {
            let received = {
                let mut bufs = [IoSliceMut::new(
                    storage.get_mut(HEADER..).unwrap_or_default(),
                )];
                sock.recv(&mut bufs, &mut meta).await
            };
            if !matches!(received, Ok(1)) {
                continue;
            }
            self.stats.receive_calls.fetch_add(1, Ordering::Relaxed);
            let [meta] = meta;
            let peer = meta.addr;
            let body = storage.get(HEADER..).unwrap_or_default();
            let segments = udp::datagrams(body, &meta).count();
            self.stats
                .peer_packets
                .fetch_add(segments as u64, Ordering::Relaxed);
            if segments == 1 {
                self.one_to_client(relay, peer, meta.len, &mut storage, &mut scratch)
                    .await;
            } else {
                self.train_to_client(relay, peer, &storage, &meta, &mut scratch, &mut gather)
                    .await;
            }
        }
    }

    /// One datagram from a peer (at `storage[HEADER..HEADER + len]`) to its client.
    async fn one_to_client(
        &self,
        relay: SocketAddr,
        peer: SocketAddr,
        len: usize,
        storage: &mut [u8],
        scratch: &mut Vec<u8>,
    ) {
        let data = storage.get(HEADER..HEADER + len).unwrap_or_default();
        let decided = self
            .read_server()
            .peer_to_client(relay, peer, data, clock::now(), scratch);
        let (tuple, framing) = match decided {
            Ok(d) => d,
            Err(why) => return self.stats.drop(why),
        };
        let frame: &[u8] = match framing {
            ToClient::Channel(header) if tuple.transport == Transport::Udp => {
                if let Some(head) = storage.get_mut(..HEADER) {
                    head.copy_from_slice(&header);
                }
                storage.get(..HEADER + len).unwrap_or_default()
            }
            ToClient::Channel(header) => {
                // TCP: header, data and padding to 4, queued for the client's writer.
                return self.to_tcp_client(&tuple, channel::framed(&header, data, true));
            }
            ToClient::Indication if tuple.transport == Transport::Tcp => {
                return self.to_tcp_client(&tuple, scratch.clone());
            }
            ToClient::Indication => scratch,
        };
        if let Some(sock) = self.listeners.get(&tuple.server) {
            let sent = sock.send(tuple.client, frame, None).await;
            self.stats.sent(sent, false, 1, len);
        }
    }

    /// A GRO train from one peer (equal-sized datagrams, the last maybe shorter) to its
    /// client: each framed into `gather`, sent as one GSO send when every one went on a
    /// channel to a UDP client, one by one otherwise.
    async fn train_to_client(
        &self,
        relay: SocketAddr,
        peer: SocketAddr,
        storage: &[u8],
        meta: &RecvMeta,
        scratch: &mut Vec<u8>,
        gather: &mut Vec<u8>,
    ) {
        let body = storage.get(HEADER..).unwrap_or_default();
        gather.clear();
        let mut target: Option<FiveTuple> = None;
        let mut count = 0;
        let mut bytes = 0;
        for r in udp::datagrams(body, meta) {
            let data = body.get(r).unwrap_or_default();
            let decided =
                self.read_server()
                    .peer_to_client(relay, peer, data, clock::now(), scratch);
            match decided {
                Err(why) => self.stats.drop(why),
                Ok((tuple, ToClient::Channel(header))) if tuple.transport == Transport::Udp => {
                    gather.extend_from_slice(&header);
                    gather.extend_from_slice(data);
                    target = Some(tuple);
                    count += 1;
                    bytes += data.len();
                }
                Ok((tuple, ToClient::Channel(header))) => {
                    self.to_tcp_client(&tuple, channel::framed(&header, data, true));
                }
                Ok((tuple, ToClient::Indication)) => {
                    if tuple.transport == Transport::Tcp {
                        self.to_tcp_client(&tuple, scratch.clone());
                    } else if let Some(sock) = self.listeners.get(&tuple.server) {
                        let sent = sock.send(tuple.client, scratch, None).await;
                        self.stats.sent(sent, false, 1, data.len());
                    }
                }
            }
        }
        let Some(tuple) = target else { return };
        let Some(sock) = self.listeners.get(&tuple.server) else {
            return;
        };
        // Equal segments but maybe the last: GSO takes exactly that shape. A train with a
        // drop in the middle is still equal-sized, as every framed datagram but the last
        // has the stride's size.
        let segment = HEADER + meta.stride.max(1);
        let sent = if count > 1 && count <= sock.max_segments() {
            sock.send(tuple.client, gather, Some(segment)).await
        } else {
            let mut result = Ok(());
            for frame in gather.chunks(segment) {
                result = result.and(sock.send(tuple.client, frame, None).await);
            }
            result
        };
        self.stats.sent(sent, false, count, bytes);
    }

    /// The core's deadlines (allocation lifetimes, reservations): woken when the next one
    /// is due, or within a second (a new, earlier one may have come since).
    async fn expiry_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let now = clock::now();
            let next = self.read_server().poll_timeout();
            let wake = next.map_or(now + Duration::from_secs(1), |t| {
                t.min(now + Duration::from_secs(1))
            });
            tokio::select! {
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
                _ = shutdown.changed() => {
                    self.tasks.lock_unpoisoned().abort_all();
                    return;
                }
            }
            let mut out = Vec::new();
            self.lock_server().expire(clock::now(), &mut out);
            self.execute(out).await;
        }
    }
}

/// One TURN-over-TCP connection's place in its source's count, released on drop.
struct SourceTicket {
    guard: Arc<SourceGuard>,
    ip: std::net::IpAddr,
}

impl Drop for SourceTicket {
    fn drop(&mut self) {
        self.guard.disconnected(self.ip, clock::now());
    }
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Binds the listeners and starts the relay. Returns it and the bound UDP and TCP listener
/// addresses.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    cfg: TurnConfig,
    ring: Ring,
    listen: &[(SocketAddr, Origin)],
    listen_tcp: &[(SocketAddr, Origin)],
    tcp_limits: TcpLimits,
    guard: Arc<SourceGuard>,
    shutdown: watch::Receiver<bool>,
    seed: u16,
) -> std::io::Result<(Arc<Turn>, Vec<SocketAddr>, Vec<SocketAddr>)> {
    let mut tcp = Vec::new();
    for &(addr, origin) in listen_tcp {
        tcp.push((super::listen::bind(addr)?, origin));
    }
    let mut sockets = Vec::new();
    for &(addr, origin) in listen {
        let sock = Arc::new(BatchSocket::new(bind_udp(addr)?)?);
        sockets.push((sock, origin));
    }
    let now_unix = clock::now_unix();
    let nonce_key = ring
        .signing_key(now_unix)
        .map(|k| k.derive(crate::core::keyring::Purpose::TurnNonce))
        .unwrap_or([0; 32]);
    let realm = cfg.realm.clone();
    let max = cfg.max_credential_lifetime_secs;
    let mut listeners = HashMap::new();
    let mut bound = Vec::new();
    for (sock, _) in &sockets {
        let local = sock.local_addr();
        listeners.insert(local, sock.clone());
        bound.push(local);
    }
    let turn = Arc::new(Turn {
        server: std::sync::RwLock::new(Server::new(cfg, seed, clock::now())),
        ring,
        nonces: Nonces::new(
            &nonce_key,
            &realm,
            crate::core::turn::nonce::DEFAULT_LIFETIME_SECS,
        ),
        realm,
        max_credential_lifetime_secs: max,
        guard,
        tcp_limits,
        tcp_slots: [
            Arc::new(Semaphore::new(tcp_limits.max_clients_per_zone)),
            Arc::new(Semaphore::new(tcp_limits.max_clients_per_zone)),
        ],
        listeners,
        relays: std::sync::RwLock::new(HashMap::new()),
        tcp_clients: Mutex::new(HashMap::new()),
        stats: TurnStats::default(),
        tasks: Mutex::new(JoinSet::new()),
    });
    {
        let mut tasks = turn.tasks.lock_unpoisoned();
        for (sock, origin) in sockets {
            tasks.spawn(turn.clone().client_loop(sock, origin));
        }
    }
    let mut bound_tcp = Vec::new();
    for (listener, origin) in tcp {
        bound_tcp.push(listener.local_addr()?);
        let task = turn.clone().tcp_accept_loop(listener, origin);
        turn.tasks.lock_unpoisoned().spawn(task);
    }
    tokio::spawn(turn.clone().expiry_loop(shutdown));
    Ok((turn, bound, bound_tcp))
}
