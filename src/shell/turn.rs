//! The A/V Edge shell: TURN over UDP and TCP listeners in both zones, relayed UDP sockets,
//! and the expiry timer around the sans-IO `core::turn::server`. The state machine sits
//! behind a read-write lock held only for the call (never across an await): the relay path
//! of established allocations reads, everything else writes; the packets it decides to send
//! are sent after the lock is released. UDP goes through [`super::udp`]'s batched I/O.
//!
//! Here: the relay ([`Turn`]), the core's outputs carried out, the expiry timer, and
//! [`start`]; `relay` has the UDP loops (client-facing and relayed sockets), `tcp` TURN
//! over TCP, `stats` the counters.

use crate::sync::{MutexExt, RwLockExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinSet;

use super::clock;
use super::ring::SharedRing;
use super::udp::{Bind, UdpPort};
use crate::core::firewall::SourceGuard;
use crate::core::keyring::Ring;
use crate::core::turn::auth::AuthContext;
use crate::core::turn::nonce::Nonces;
use crate::core::turn::policy::Origin;
use crate::core::turn::server::{
    Arrival, Dropped, FiveTuple, Output, PoolAsk, PoolReport, PoolVerdict, Server, Transport,
    TurnConfig, MAX_ASKS,
};

mod kernel;
mod relay;
mod stats;
mod tcp;
mod worker;

pub use stats::{TurnStats, TCP_REFUSAL_LABELS};
use tcp::TcpOut;
pub use tcp::{TcpLimits, TurnTls};
use worker::Workers;

/// The running relay.
pub struct Turn {
    /// Read-locked on the relay's hot path (ChannelData and Send/Data indications of
    /// established allocations), write-locked for the rest: relayed media never waits
    /// behind other media.
    server: std::sync::RwLock<Server>,
    /// The pool ring, live: credentials are checked against the keys in force.
    ring: SharedRing,
    nonces: Nonces,
    realm: String,
    max_credential_lifetime_secs: u64,
    /// The firewall's per-source table, shared with the SIP listeners: TURN-over-TCP
    /// connections count against the same per-source limits, and strangers who overdraw
    /// their answer budget over TCP earn strikes under the same ban rules.
    guard: Arc<SourceGuard>,
    tcp_limits: TcpLimits,
    /// TURN-over-TCP slots of each zone (external, internal), TLS clients included.
    tcp_slots: [Arc<Semaphore>; 2],
    /// TURN over TLS, when `relay.tls_port` is set.
    tls: Option<tcp::TurnTls>,
    /// Client-facing sockets by local address (a 5-tuple's server side).
    listeners: HashMap<SocketAddr, Arc<UdpPort>>,
    /// Relayed sockets: read on every relayed packet, written only when one opens or closes.
    relays: std::sync::RwLock<HashMap<SocketAddr, Arc<UdpPort>>>,
    /// The threads that read the relayed sockets (what peers send).
    workers: Workers,
    /// Writers of TURN-over-TCP clients, by 5-tuple.
    tcp_clients: std::sync::RwLock<HashMap<FiveTuple, Arc<TcpOut>>>,
    pub stats: TurnStats,
    tasks: Mutex<JoinSet<()>>,
    /// The deadline the expiry loop sleeps to, and its wake-up when a control message sets
    /// an earlier one (no periodic tick: the loop wakes for a deadline or for news).
    armed: Mutex<Option<Instant>>,
    earlier_deadline: Notify,
    /// Where asks for the pool go (the pool's task), when there is a pool.
    asks: Mutex<Option<mpsc::Sender<PoolAsk>>>,
    /// The kernel fast path, when asked for and the kernel took it.
    kernel: Option<kernel::KernelPath>,
    /// What `/status` says of it: "off", "on (interfaces)", or why it is unavailable.
    pub kernel_status: String,
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

    /// What this member tells the pool between asks (what users hold here).
    pub fn pool_report(&self) -> PoolReport {
        self.read_server().pool_report()
    }

    /// What the other members of the pool hold per user (counted in the user quota here,
    /// and sharing the users' bandwidth budgets).
    pub fn set_pool_holds(&self, holds: impl IntoIterator<Item = (Box<str>, usize)>) {
        self.lock_server().set_pool_holds(holds);
    }

    /// The asks for the pool (new holds while the pool is up), for the pool's task.
    pub fn pool_asks(&self) -> mpsc::Receiver<PoolAsk> {
        let (tx, rx) = mpsc::channel(MAX_ASKS);
        *self.asks.lock_unpoisoned() = Some(tx);
        rx
    }

    /// The pool is up (new holds are asked of it) or away (decided here, and so are the
    /// asks waiting).
    pub fn set_pool_up(&self, up: bool) {
        let mut out = Vec::new();
        self.lock_server().set_pool_asks(up, clock::now(), &mut out);
        self.execute(out);
    }

    /// The pool's answer to an ask.
    pub fn pool_answer(&self, id: u64, verdict: PoolVerdict) {
        let mut out = Vec::new();
        self.lock_server()
            .pool_answer(id, verdict, clock::now(), &mut out);
        self.execute(out);
    }

    /// Asks waiting for the pool's answer.
    pub fn pool_asks_waiting(&self) -> usize {
        self.read_server().pool_asks_waiting()
    }

    /// Quota asks decided, by how (granted or refused by the pool, or decided here).
    pub fn pool_asks_decided(&self) -> [(&'static str, u64); 3] {
        self.read_server().pool_asks_decided()
    }

    pub fn allocations(&self) -> usize {
        self.read_server().allocations()
    }

    /// Port reservations (EVEN-PORT R=1) waiting for their allocation.
    pub fn reservations(&self) -> usize {
        self.read_server().reservations()
    }

    fn relay_socket(&self, relay: SocketAddr) -> Option<Arc<UdpPort>> {
        self.relays.read_unpoisoned().get(&relay).cloned()
    }

    fn auth<'a>(&'a self, ring: &'a Ring) -> AuthContext<'a> {
        AuthContext {
            ring,
            nonces: &self.nonces,
            realm: &self.realm,
            max_lifetime_secs: self.max_credential_lifetime_secs,
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

    /// Carries out the core's outputs, without waiting (from a relay worker or a task);
    /// returns the clients whose relayed socket could not be bound (their allocation is
    /// gone and their answer withheld).
    fn execute(&self, outputs: Vec<Output>) -> Vec<SocketAddr> {
        let mut failed: Vec<SocketAddr> = Vec::new();
        // Closed last: the answer that removed the allocation (a Refresh with lifetime 0)
        // comes later in the same outputs, and is written first.
        let mut closing: Vec<FiveTuple> = Vec::new();
        let mut outputs = std::collections::VecDeque::from(outputs);
        while let Some(o) = outputs.pop_front() {
            match o {
                Output::AskPool(ask) => {
                    // To the pool's task; if it cannot take it, decided here and now.
                    let taken = self
                        .asks
                        .lock_unpoisoned()
                        .as_ref()
                        .is_some_and(|tx| tx.try_send(ask.clone()).is_ok());
                    if !taken {
                        let mut more = Vec::new();
                        self.lock_server().pool_answer(
                            ask.id,
                            PoolVerdict::Unknown,
                            clock::now(),
                            &mut more,
                        );
                        outputs.extend(more);
                    }
                }
                Output::ToClient { tuple, bytes } => {
                    if failed.contains(&tuple.client) {
                        continue; // its relay could not be opened: it retransmits and retries
                    }
                    if tuple.transport == Transport::Tcp {
                        self.to_tcp_client(&tuple, &[&bytes]);
                    } else if let Some(sock) = self.listeners.get(&tuple.server) {
                        let sent = sock.try_send(tuple.client, &bytes, None);
                        self.stats.sent(sent, false, 1, bytes.len());
                    }
                }
                Output::ToPeer { relay, peer, bytes } => {
                    if let Some(sock) = self.relay_socket(relay) {
                        let sent = sock.try_send(peer, &bytes, None);
                        self.stats.sent(sent, true, 1, bytes.len());
                    }
                }
                Output::OpenRelay { relay, allocation } => {
                    match UdpPort::bind(relay, Bind::default()) {
                        Ok(sock) => {
                            // Kept only if its allocation still holds it, checked and kept
                            // under the server's lock: it may have gone while the socket was
                            // bound here, its CloseRelay finding nothing to close. The table
                            // and the worker's registration change under the table's lock,
                            // so a close that follows cannot be overtaken by this add.
                            let server = self.read_server();
                            if server.holds_relay(allocation, relay) {
                                let mut relays = self.relays.write_unpoisoned();
                                let sock = Arc::new(sock);
                                relays.insert(relay, sock.clone());
                                self.workers.add(sock);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(%relay, error = %e, "cannot bind a relayed socket");
                            let client = self.lock_server().relay_failed(allocation, relay);
                            if let Some(c) = client {
                                failed.push(c);
                            }
                        }
                    }
                }
                Output::CloseRelay { relay } => {
                    let mut relays = self.relays.write_unpoisoned();
                    if relays.remove(&relay).is_some() {
                        self.workers.remove(relay);
                    }
                }
                Output::KernelChannel(k) => {
                    if let Some(kernel) = &self.kernel {
                        self.stats.kernel_relayed(kernel.install(&k));
                    }
                }
                Output::KernelChannelGone { tuple, channel } => {
                    if let Some(kernel) = &self.kernel {
                        self.stats.kernel_relayed(kernel.remove(tuple, channel));
                    }
                }
                Output::CloseClient { tuple } => closing.push(tuple),
            }
        }
        for tuple in &closing {
            self.close_tcp_client(tuple);
        }
        failed
    }

    /// A client's control message (anything but the hot path) through the core, under the
    /// write lock; wakes the expiry loop if it set a deadline earlier than the armed one.
    fn client_control(
        &self,
        arrival: Arrival,
        packet: &[u8],
        out: &mut Vec<Output>,
    ) -> Result<(), Dropped> {
        let (result, next) = {
            let mut server = self.lock_server();
            let ring = self.ring.get();
            let result = server.client_packet(&self.auth(&ring), arrival, packet, out);
            (result, server.poll_timeout())
        };
        // Read after the server lock is released; the loop arms under this lock while it
        // reads the server, so a deadline is either seen by the loop or compared here.
        if let Some(next) = next {
            if self
                .armed
                .lock_unpoisoned()
                .is_none_or(|armed| next < armed)
            {
                self.earlier_deadline.notify_one();
            }
        }
        result
    }

    /// The core's deadlines (allocation lifetimes, reservations): the loop sleeps until the
    /// next one is due, or until a control message sets an earlier one.
    /// Channels relayed in the kernel now (0 without the kernel path).
    pub fn kernel_channels(&self) -> u64 {
        self.kernel
            .as_ref()
            .map_or(0, |k| k.channels.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Every second: what the kernel relayed and dropped into the statistics and what it
    /// relayed charged to the budgets user space relays from, its expired channels out,
    /// its user meters at this member's share.
    async fn kernel_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if let Some(kernel) = &self.kernel {
                let now = clock::now();
                let relayed = kernel.sweep(
                    now,
                    |user| self.read_server().kernel_user_budget(user),
                    |allocation, bytes| self.read_server().kernel_spent(allocation, bytes, now),
                );
                self.stats.kernel_relayed(relayed);
            }
        }
    }

    async fn expiry_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next = {
                let mut armed = self.armed.lock_unpoisoned();
                *armed = self.read_server().poll_timeout();
                *armed
            };
            let due = async {
                match next {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = due => {}
                _ = self.earlier_deadline.notified() => continue,
                _ = shutdown.changed() => {
                    self.tasks.lock_unpoisoned().abort_all();
                    self.workers.stop();
                    return;
                }
            }
            let mut out = Vec::new();
            self.lock_server().expire(clock::now(), &mut out);
            self.execute(out);
        }
    }
}

/// The receive buffer of a client-facing UDP socket, where every client's media arrives:
/// a few milliseconds of a busy relay (the kernel caps it at `net.core.rmem_max`).
const LISTENER_RECV_BUFFER: usize = 4 << 20;

/// Binds the listeners and starts the relay. Returns it and the bound UDP, TCP and TLS
/// listener addresses.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    cfg: TurnConfig,
    ring: SharedRing,
    listen: &[(SocketAddr, Origin)],
    listen_tcp: &[(SocketAddr, Origin)],
    listen_tls: &[(SocketAddr, Origin)],
    tls: Option<tcp::TurnTls>,
    tcp_limits: TcpLimits,
    guard: Arc<SourceGuard>,
    shutdown: watch::Receiver<bool>,
    seed: u16,
    workers: usize,
    kernel_interfaces: &[String],
) -> std::io::Result<(Arc<Turn>, Vec<SocketAddr>, Vec<SocketAddr>, Vec<SocketAddr>)> {
    let mut cfg = cfg;
    // The kernel path, if asked for: where it cannot load, the relay runs as without it,
    // and says so once.
    let (kernel, kernel_status) = if cfg.kernel_offload {
        // Two entries per channel; a few channels per allocation on average.
        let channels = u32::try_from(cfg.max_allocations.saturating_mul(4)).unwrap_or(u32::MAX);
        match kernel::KernelPath::start(kernel_interfaces, channels) {
            Ok(k) => {
                let status = format!("on ({})", k.interfaces.join(", "));
                tracing::info!(interfaces = %k.interfaces.join(","), "the kernel relays established UDP channels (relay.kernel_offload)");
                (Some(k), status)
            }
            Err(why) => {
                tracing::warn!(%why, "relay.kernel_offload: the kernel path is unavailable; relaying in user space");
                cfg.kernel_offload = false;
                // The log has it all (a verifier's refusal runs to pages); /status the gist.
                let gist: String = why.chars().take(300).collect();
                (None, format!("unavailable: {gist}"))
            }
        }
    } else {
        (None, "off".to_string())
    };
    // The internal zone's listeners take only what comes in by the internal address's
    // interface: Linux delivers a datagram for any of the host's addresses by any
    // interface, and a host that routes to the internal address through the external one
    // (a DMZ neighbour) would otherwise get the internal zone's peer policy.
    let device = |addr: SocketAddr, origin: Origin| match origin {
        Origin::Internal => super::listen::interface_of(addr.ip()),
        Origin::External => None,
    };
    let mut tcp = Vec::new();
    for &(addr, origin) in listen_tcp {
        let on = device(addr, origin);
        tcp.push((super::listen::bind_on(addr, on.as_deref())?, origin, false));
    }
    if tls.is_some() {
        for &(addr, origin) in listen_tls {
            let on = device(addr, origin);
            tcp.push((super::listen::bind_on(addr, on.as_deref())?, origin, true));
        }
    }
    // One socket per worker and address (SO_REUSEPORT spreads the clients over them by
    // their address), the first one's port for the others when the port was left to the
    // kernel. Any of them sends from the address: the first is kept for that.
    let workers = workers.max(1);
    let mut sockets: Vec<(Vec<Arc<UdpPort>>, Origin)> = Vec::new();
    for &(addr, origin) in listen {
        let how = Bind {
            reuse_port: workers > 1,
            recv_buffer: Some(LISTENER_RECV_BUFFER),
            device: device(addr, origin),
        };
        let first = Arc::new(UdpPort::bind(addr, how.clone())?);
        let local = first.local_addr();
        let mut all = vec![first];
        for _ in 1..workers {
            all.push(Arc::new(UdpPort::bind(local, how.clone())?));
        }
        sockets.push((all, origin));
    }
    let now_unix = clock::now_unix();
    // The nonce key stays for the life of the process: a nonce outliving a rotation on
    // another member costs its client one 438 and a retry, no more.
    let nonce_key = ring
        .get()
        .signing_key(now_unix)
        .map(|k| k.derive(crate::core::keyring::Purpose::TurnNonce))
        .unwrap_or([0; 32]);
    let realm = cfg.realm.clone();
    let max = cfg.max_credential_lifetime_secs;
    let mut listeners = HashMap::new();
    let mut bound = Vec::new();
    for (all, _) in &sockets {
        if let Some(first) = all.first() {
            let local = first.local_addr();
            listeners.insert(local, first.clone());
            bound.push(local);
        }
    }
    let mut failed = None;
    let turn = Arc::new_cyclic(|weak| Turn {
        workers: Workers::start(workers, weak.clone()).unwrap_or_else(|e| {
            failed = Some(e);
            Workers::none()
        }),
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
        tls,
        tcp_slots: [
            Arc::new(Semaphore::new(tcp_limits.max_clients_per_zone)),
            Arc::new(Semaphore::new(tcp_limits.max_clients_per_zone)),
        ],
        listeners,
        relays: std::sync::RwLock::new(HashMap::new()),
        tcp_clients: std::sync::RwLock::new(HashMap::new()),
        stats: TurnStats::with_workers(workers),
        tasks: Mutex::new(JoinSet::new()),
        armed: Mutex::new(None),
        earlier_deadline: Notify::new(),
        asks: Mutex::new(None),
        kernel,
        kernel_status,
    });
    if let Some(e) = failed {
        return Err(e);
    }
    for (all, origin) in sockets {
        for (i, port) in all.into_iter().enumerate() {
            turn.workers.listen(i, port, origin);
        }
    }
    let (mut bound_tcp, mut bound_tls) = (Vec::new(), Vec::new());
    for (listener, origin, tls) in tcp {
        let bound = if tls { &mut bound_tls } else { &mut bound_tcp };
        bound.push(listener.local_addr()?);
        let task = turn.clone().tcp_accept_loop(listener, origin, tls);
        turn.tasks.lock_unpoisoned().spawn(task);
    }
    if turn.kernel.is_some() {
        tokio::spawn(turn.clone().kernel_loop(shutdown.clone()));
    }
    tokio::spawn(turn.clone().expiry_loop(shutdown));
    Ok((turn, bound, bound_tcp, bound_tls))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::turn::server::TurnConfig;
    use std::time::Duration;

    /// A relay on 127.0.0.1 with one UDP listener and nothing else.
    async fn loopback_relay() -> (Arc<Turn>, watch::Sender<bool>) {
        let (stop, shutdown) = watch::channel(false);
        let ring = Arc::new(super::super::ring::LiveRing::fixed(Ring::init(
            [7; 32],
            clock::now_unix(),
        )));
        let guard = Arc::new(SourceGuard::new(crate::fuzz_logic::sim::SimEdge::no_bans()));
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        let cfg = TurnConfig::new("sipedge.test", loopback, loopback, (49152, 65535));
        let (turn, ..) = start(
            cfg,
            ring,
            &[(SocketAddr::new(loopback, 0), Origin::External)],
            &[],
            &[],
            None,
            TcpLimits {
                max_clients_per_zone: 1,
                auth_timeout: Duration::from_secs(1),
                max_queued_bytes: 1024,
            },
            guard,
            shutdown,
            0,
            1,
            &[],
        )
        .await
        .unwrap();
        (turn, stop)
    }

    #[tokio::test]
    async fn a_relayed_socket_whose_allocation_went_while_it_was_bound_is_closed() {
        // The core's OpenRelay is carried out after the server's lock is released; a Refresh
        // with lifetime 0 (or a TCP close) on another thread may remove the allocation and
        // carry out its CloseRelay first, which finds nothing to close. The socket bound
        // then must not stay open with no allocation: its port is free again in the core,
        // and the next allocation given it could not bind it.
        let (turn, _stop) = loopback_relay().await;
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let failed = turn.execute(vec![Output::OpenRelay {
            relay: port,
            allocation: 42, // the core holds no such allocation (any more)
        }]);
        assert!(failed.is_empty());
        assert!(
            turn.relay_socket(port).is_none(),
            "kept without its allocation"
        );
        assert!(
            std::net::UdpSocket::bind(port).is_ok(),
            "the port is free for the next allocation"
        );
    }
}
