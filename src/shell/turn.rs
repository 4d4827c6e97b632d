//! The A/V Edge shell: TURN over UDP listeners in both zones, relayed UDP sockets, and the
//! expiry timer around the sans-IO `core::turn::server`. The state machine sits behind one
//! mutex held only for the call (never across an await); the packets it decides to send are
//! sent after the lock is released.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use super::clock;
use crate::core::keyring::Ring;
use crate::core::turn::auth::AuthContext;
use crate::core::turn::demux::{classify, PacketKind};
use crate::core::turn::nonce::Nonces;
use crate::core::turn::policy::Origin;
use crate::core::turn::server::{Arrival, FiveTuple, Output, Server, Transport, TurnConfig};

/// Largest datagram read (a UDP payload cannot be larger).
const MAX_DATAGRAM: usize = 65_535;
/// The ChannelData header the hot path writes in front of a peer's datagram.
const HEADER: usize = crate::core::turn::channel::HEADER_LEN;
/// Concurrent TURN-over-TCP clients per listener.
const MAX_TCP_CLIENTS: usize = 4096;
/// Packets queued for a TCP client before further ones are dropped.
const TCP_QUEUE: usize = 512;
/// A TCP client silent this long is closed (longer than the longest allocation lifetime
/// between Refreshes, which RFC 8656 clients send well before expiry).
const TCP_IDLE: Duration = Duration::from_secs(3600);

/// Counters of the relay.
#[derive(Default)]
pub struct TurnStats {
    pub client_packets: AtomicU64,
    pub peer_packets: AtomicU64,
    pub relayed_to_peers: AtomicU64,
    pub relayed_to_clients: AtomicU64,
    pub dropped: AtomicU64,
}

/// The running relay.
pub struct Turn {
    /// Read-locked on the relay's hot path (ChannelData both ways), write-locked for the
    /// rest: relayed media never waits behind other media.
    server: std::sync::RwLock<Server>,
    ring: Ring,
    nonces: Nonces,
    realm: String,
    max_credential_lifetime_secs: u64,
    /// Client-facing sockets by local address (a 5-tuple's server side).
    listeners: HashMap<SocketAddr, Arc<UdpSocket>>,
    /// Relayed sockets: read on every relayed packet, written only when one opens or closes.
    relays: std::sync::RwLock<HashMap<SocketAddr, (Arc<UdpSocket>, tokio::task::AbortHandle)>>,
    /// Writers of TURN-over-TCP clients, by 5-tuple.
    tcp_clients: Mutex<HashMap<FiveTuple, mpsc::Sender<Vec<u8>>>>,
    pub stats: TurnStats,
    tasks: Mutex<JoinSet<()>>,
}

impl Turn {
    fn lock_server(&self) -> std::sync::RwLockWriteGuard<'_, Server> {
        // A panic under the lock cannot leave the map half-updated in a way that matters
        // more than stopping the relay would.
        self.server.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_server(&self) -> std::sync::RwLockReadGuard<'_, Server> {
        self.server.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn allocations(&self) -> usize {
        self.read_server().allocations()
    }

    fn relay_socket(&self, relay: SocketAddr) -> Option<Arc<UdpSocket>> {
        self.relays
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&relay)
            .map(|(s, _)| s.clone())
    }

    async fn execute(self: &Arc<Self>, outputs: Vec<Output>) {
        let mut failed: Vec<SocketAddr> = Vec::new();
        for o in outputs {
            match o {
                Output::ToClient { tuple, bytes } => {
                    if failed.contains(&tuple.client) {
                        continue; // its relay could not be opened: it retransmits and retries
                    }
                    if tuple.transport == Transport::Tcp {
                        let tx = self
                            .tcp_clients
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(&tuple)
                            .cloned();
                        // A client that does not read loses packets, not the relay's memory.
                        if tx.is_some_and(|tx| tx.try_send(bytes).is_ok()) {
                            self.stats
                                .relayed_to_clients
                                .fetch_add(1, Ordering::Relaxed);
                        } else {
                            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if let Some(sock) = self.listeners.get(&tuple.server) {
                        let _ = sock.send_to(&bytes, tuple.client).await;
                        self.stats
                            .relayed_to_clients
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Output::ToPeer { relay, peer, bytes } => {
                    if let Some(sock) = self.relay_socket(relay) {
                        let _ = sock.send_to(&bytes, peer).await;
                        self.stats.relayed_to_peers.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Output::OpenRelay { relay } => match bind_relay(relay) {
                    Ok(sock) => {
                        let sock = Arc::new(sock);
                        let this = self.clone();
                        let reader = sock.clone();
                        let task = self
                            .tasks
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .spawn(this.relay_task(relay, reader));
                        self.relays
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(relay, (sock, task));
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
                    if let Some((_, task)) = self
                        .relays
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&relay)
                    {
                        task.abort();
                    }
                }
            }
        }
    }

    async fn client_loop(self: Arc<Self>, sock: Arc<UdpSocket>, origin: Origin) {
        let Ok(local) = sock.local_addr() else { return };
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            self.stats.client_packets.fetch_add(1, Ordering::Relaxed);
            let packet = buf.get(..n).unwrap_or_default();
            let tuple = FiveTuple {
                client: from,
                server: local,
                transport: Transport::Udp,
            };
            // The hot path: ChannelData from a client goes straight out of its relay socket,
            // from this receive buffer, under a read lock.
            if classify(packet) == PacketKind::ChannelData {
                let route = self
                    .read_server()
                    .channel_to_peer(&tuple, packet, clock::now());
                match route
                    .ok()
                    .and_then(|r| Some((self.relay_socket(r.relay)?, r)))
                {
                    Some((sock, r)) => {
                        let _ = sock
                            .send_to(packet.get(r.data).unwrap_or_default(), r.peer)
                            .await;
                        self.stats.relayed_to_peers.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
            let arrival = Arrival {
                tuple,
                origin,
                now: clock::now(),
                now_unix: clock::now_unix(),
            };
            let auth = AuthContext {
                ring: &self.ring,
                nonces: &self.nonces,
                realm: &self.realm,
                max_lifetime_secs: self.max_credential_lifetime_secs,
            };
            let mut out = Vec::new();
            let result = self
                .lock_server()
                .client_packet(&auth, arrival, packet, &mut out);
            if result.is_err() {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            self.execute(out).await;
        }
    }

    /// The relay loop, boxed with an explicit `Send`: it and `execute` call each other, and
    /// naming the type here ends the cycle the compiler cannot see through.
    fn relay_task(
        self: Arc<Self>,
        relay: SocketAddr,
        sock: Arc<UdpSocket>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(self.relay_loop(relay, sock))
    }

    async fn tcp_accept_loop(self: Arc<Self>, listener: TcpListener, origin: Origin) {
        let slots = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
        loop {
            let Ok((stream, client)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
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
            let task = this.tcp_client(stream, tuple, origin, slot);
            self.tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .spawn(task);
        }
    }

    /// One TURN-over-TCP client: STUN and ChannelData framed on the stream (RFC 8656 §12.5);
    /// its allocation ends with the connection.
    fn tcp_client(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        tuple: FiveTuple,
        origin: Origin,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let (mut reader, mut writer) = stream.into_split();
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
            self.tcp_clients
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(tuple, tx);
            let write = tokio::spawn(async move {
                while let Some(bytes) = rx.recv().await {
                    if writer.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            });
            let mut buf: Vec<u8> = Vec::with_capacity(4096);
            let mut chunk = vec![0u8; 16 * 1024];
            'read: loop {
                let n = match tokio::time::timeout(TCP_IDLE, reader.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => n,
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
                            let auth = AuthContext {
                                ring: &self.ring,
                                nonces: &self.nonces,
                                realm: &self.realm,
                                max_lifetime_secs: self.max_credential_lifetime_secs,
                            };
                            let mut out = Vec::new();
                            if self
                                .lock_server()
                                .client_packet(&auth, arrival, &frame, &mut out)
                                .is_err()
                            {
                                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            self.execute(out).await;
                        }
                        Ok(None) => break,
                        Err(_) => break 'read, // not TURN: close
                    }
                }
            }
            self.tcp_clients
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&tuple);
            let mut out = Vec::new();
            self.lock_server().client_closed(tuple, &mut out);
            self.execute(out).await;
            write.abort();
            drop(slot);
        })
    }

    async fn relay_loop(self: Arc<Self>, relay: SocketAddr, sock: Arc<UdpSocket>) {
        // Received 4 bytes in, so a ChannelData header can be written in front in place.
        let mut buf = vec![0u8; MAX_DATAGRAM + HEADER];
        loop {
            let Ok((n, peer)) = sock
                .recv_from(buf.get_mut(HEADER..).unwrap_or_default())
                .await
            else {
                continue;
            };
            self.stats.peer_packets.fetch_add(1, Ordering::Relaxed);
            // The hot path: a bound channel over UDP goes straight back to the client from
            // this buffer, under a read lock.
            let fast = self
                .read_server()
                .peer_to_channel(relay, peer, n, clock::now());
            match fast {
                Err(_) => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok((tuple, Some(header))) if tuple.transport == Transport::Udp => {
                    let client_sock = self.listeners.get(&tuple.server);
                    if let (Some(client_sock), Some(head)) = (client_sock, buf.get_mut(..HEADER)) {
                        head.copy_from_slice(&header);
                        let frame = buf.get(..HEADER + n).unwrap_or_default();
                        let _ = client_sock.send_to(frame, tuple.client).await;
                        self.stats
                            .relayed_to_clients
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                Ok(_) => {}
            }
            // Data indications and TCP clients: the general path.
            let data = buf.get(HEADER..HEADER + n).unwrap_or_default();
            let decided = self
                .lock_server()
                .peer_packet(relay, peer, data, clock::now());
            match decided {
                Ok(out) => self.execute(vec![out]).await,
                Err(_) => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    async fn expiry_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => {
                    self.tasks.lock().unwrap_or_else(|e| e.into_inner()).abort_all();
                    return;
                }
            }
            let mut out = Vec::new();
            self.lock_server().expire(clock::now(), &mut out);
            self.execute(out).await;
        }
    }
}

fn bind_relay(addr: SocketAddr) -> std::io::Result<UdpSocket> {
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
pub async fn start(
    cfg: TurnConfig,
    ring: Ring,
    listen: &[(SocketAddr, Origin)],
    listen_tcp: &[(SocketAddr, Origin)],
    shutdown: watch::Receiver<bool>,
    seed: u16,
) -> std::io::Result<(Arc<Turn>, Vec<SocketAddr>, Vec<SocketAddr>)> {
    let mut tcp = Vec::new();
    for &(addr, origin) in listen_tcp {
        tcp.push((super::listen::bind(addr)?, origin));
    }
    let mut sockets = Vec::new();
    for &(addr, origin) in listen {
        let sock = Arc::new(bind_relay(addr)?);
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
        let local = sock.local_addr()?;
        listeners.insert(local, sock.clone());
        bound.push(local);
    }
    let turn = Arc::new(Turn {
        server: std::sync::RwLock::new(Server::new(cfg, seed)),
        ring,
        nonces: Nonces::new(
            &nonce_key,
            &realm,
            crate::core::turn::nonce::DEFAULT_LIFETIME_SECS,
        ),
        realm,
        max_credential_lifetime_secs: max,
        listeners,
        relays: std::sync::RwLock::new(HashMap::new()),
        tcp_clients: Mutex::new(HashMap::new()),
        stats: TurnStats::default(),
        tasks: Mutex::new(JoinSet::new()),
    });
    {
        let mut tasks = turn.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for (sock, origin) in sockets {
            tasks.spawn(turn.clone().client_loop(sock, origin));
        }
    }
    let mut bound_tcp = Vec::new();
    for (listener, origin) in tcp {
        bound_tcp.push(listener.local_addr()?);
        let task = turn.clone().tcp_accept_loop(listener, origin);
        turn.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spawn(task);
    }
    tokio::spawn(turn.clone().expiry_loop(shutdown));
    Ok((turn, bound, bound_tcp))
}
