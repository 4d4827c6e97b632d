//! The next-hop (Director) pool: one persistent mutual-TLS connection per member, opened from
//! the internal interface; requests spread by least outstanding transactions over the
//! members that are up; OPTIONS probes decide up and down (`core::sip::health`); failover
//! when a member's connection is lost.
//!
//! Per message, picking a member reads a few atomics: no lock. Each member's transaction
//! table and health belong to the session of its connection (`core::sip::pool_link`),
//! driven by the same loop as every other connection ([`conn::run`]); this module owns
//! picking, reconnecting with back-off, and failing over what a member could not take.

use crate::sync::{MutexExt, RwLockExt};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpSocket;
use tokio::sync::mpsc;

use super::clock;
use super::conn::{self, Closed, MemberIo, MemberState, Routing, QUEUE_LEN};
use super::shared::Shared;
use super::tls_stream::{self, TlsStream};
use crate::core::sip::health::{ProbeConfig, Transition};
use crate::core::sip::pool_link::{PoolLink, PoolRequest};
use crate::core::sip::Why;
use rustls::client::UnbufferedClientConnection;

/// Reconnect back-off bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// TCP + TLS set-up toward a member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the rest of the edge sees of one member.
pub struct Member {
    /// Stable for the life of the process (probe branches carry it), never reused.
    pub id: usize,
    pub addr: SocketAddr,
    /// Removed by a reload: takes no new work, and its task ends once its transactions are.
    retired: AtomicBool,
    up: AtomicBool,
    outstanding: AtomicUsize,
    tx: mpsc::Sender<PoolRequest>,
    /// The last probe answer: when (Unix seconds), its status, and how long it took.
    last_probe: std::sync::Mutex<Option<(u64, u16, Duration)>>,
}

impl Member {
    /// The last probe answer: when (Unix seconds), status, round trip.
    pub fn last_probe(&self) -> Option<(u64, u16, Duration)> {
        *self.last_probe.lock_unpoisoned()
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
}

impl MemberState for Member {
    fn probe_answered(&self, status: u16, rtt: Duration) {
        *self.last_probe.lock_unpoisoned() = Some((clock::now_unix(), status, rtt));
    }

    /// The state of the member's session, made visible to the pool's picks.
    fn observe(&self, link: &PoolLink) {
        self.up.store(link.is_up(), Ordering::Relaxed);
        // Exact from here on: the pool's optimistic increments are replaced.
        self.outstanding
            .store(link.outstanding(), Ordering::Relaxed);
    }

    /// Removed by a reload.
    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }
}

/// The members and how to pick one. The list is replaced whole by a reload.
pub struct Pool {
    members: std::sync::RwLock<Arc<[Arc<Member>]>>,
    next: AtomicUsize,
    next_id: AtomicUsize,
    /// Members removed by a reload whose transactions are still in flight.
    retiring: std::sync::Mutex<Vec<Arc<Member>>>,
    pub retry_after_secs: u32,
}

/// A new member and the receiving end of its queue, for its task.
pub type NewMember = (Arc<Member>, mpsc::Receiver<PoolRequest>);

impl Pool {
    pub fn new(addrs: &[SocketAddr], retry_after_secs: u32) -> (Pool, Vec<NewMember>) {
        let pool = Pool {
            members: std::sync::RwLock::new(Arc::from(Vec::new())),
            next: AtomicUsize::new(0),
            next_id: AtomicUsize::new(0),
            retiring: std::sync::Mutex::new(Vec::new()),
            retry_after_secs,
        };
        let added = pool.set_members(addrs);
        (pool, added)
    }

    /// The members now (a snapshot).
    pub fn members(&self) -> Arc<[Arc<Member>]> {
        self.members.read_unpoisoned().clone()
    }

    /// The member with this id, retiring ones included.
    pub fn member(&self, id: usize) -> Option<Arc<Member>> {
        self.members()
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .or_else(|| {
                self.retiring
                    .lock_unpoisoned()
                    .iter()
                    .find(|m| m.id == id)
                    .cloned()
            })
    }

    /// Makes `addrs` the members (a reload): members that stay keep their connection and
    /// state; new ones are returned for their tasks to be started; removed ones take no new
    /// work and end once their transactions are done.
    pub fn set_members(&self, addrs: &[SocketAddr]) -> Vec<NewMember> {
        let old = self.members();
        let mut list = Vec::with_capacity(addrs.len());
        let mut added = Vec::new();
        for &addr in addrs {
            if let Some(m) = old.iter().find(|m| m.addr == addr) {
                list.push(m.clone());
                continue;
            }
            let (tx, rx) = mpsc::channel(QUEUE_LEN * 4);
            let member = Arc::new(Member {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                addr,
                retired: AtomicBool::new(false),
                up: AtomicBool::new(false),
                outstanding: AtomicUsize::new(0),
                tx,
                last_probe: std::sync::Mutex::new(None),
            });
            list.push(member.clone());
            added.push((member, rx));
        }
        let mut retiring = self.retiring.lock_unpoisoned();
        for m in old.iter().filter(|m| !addrs.contains(&m.addr)) {
            m.retired.store(true, Ordering::Relaxed);
            retiring.push(m.clone());
        }
        retiring.retain(|m| m.outstanding() > 0);
        *self.members.write_unpoisoned() = Arc::from(list);
        added
    }

    /// Transactions in flight toward the pool (overload protection, drain), retiring
    /// members included.
    pub fn outstanding(&self) -> usize {
        let retiring: usize = self
            .retiring
            .lock_unpoisoned()
            .iter()
            .map(|m| m.outstanding())
            .sum();
        self.members()
            .iter()
            .map(|m| m.outstanding())
            .sum::<usize>()
            + retiring
    }

    /// Whether any member is up (for /healthz).
    pub fn any_up(&self) -> bool {
        self.members().iter().any(|m| m.is_up())
    }

    /// Sends to the up member with the fewest outstanding transactions (ties rotate), trying
    /// the next best if a queue is full or closed. `exclude` skips a member by id (failover).
    /// Returns the id of the member it went to.
    pub fn send(&self, request: PoolRequest, exclude: Option<usize>) -> Result<usize, PoolRequest> {
        let members = self.members();
        let n = members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<(usize, usize)> = (0..n)
            .map(|k| (start.wrapping_add(k)) % n.max(1))
            .filter_map(|i| {
                members
                    .get(i)
                    .filter(|m| m.is_up() && Some(m.id) != exclude)
                    .map(|m| (m.outstanding(), i))
            })
            .collect();
        // Stable sort keeps the rotation among equals.
        order.sort_by_key(|&(load, _)| load);
        let mut msg = request;
        for (_, i) in order {
            let Some(member) = members.get(i) else {
                continue;
            };
            match member.tx.try_send(msg) {
                Ok(()) => {
                    // Count it now, so the next pick sees it before the member task does.
                    member.outstanding.fetch_add(1, Ordering::Relaxed);
                    return Ok(member.id);
                }
                Err(mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) => {
                    msg = m
                }
            }
        }
        Err(msg)
    }
}

/// Everything a member task needs to connect.
#[derive(Clone)]
pub struct Connector {
    pub tls: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
    /// The internal interface address connections leave from.
    pub local_ip: IpAddr,
    pub probe: ProbeConfig,
    /// Domain in the probes' From.
    pub from_domain: String,
}

/// Runs a member until shutdown, or until a reload removed it and its transactions are
/// done: connect, serve, reconnect with back-off.
pub async fn run_member(
    shared: Arc<Shared>,
    routes: Arc<dyn Routing>,
    member: Arc<Member>,
    connector: Connector,
    mut rx: mpsc::Receiver<PoolRequest>,
) {
    let addr = member.addr;
    let mut link = PoolLink::new(
        member.id,
        addr,
        connector.from_domain.clone(),
        connector.probe,
        clock::now(),
    );
    let mut backoff = RECONNECT_MIN;
    let mut shutdown = shared.shutdown.clone();
    loop {
        if *shutdown.borrow() || member.is_retired() {
            member.up.store(false, Ordering::Relaxed);
            // Whatever reached its queue meanwhile goes to the members that stay.
            while let Ok(request) = rx.try_recv() {
                fail_over(&shared, &*routes, &member, request);
            }
            return;
        }
        match connect(&connector, addr).await {
            Ok(stream) => {
                backoff = RECONNECT_MIN;
                tracing::info!(member = %addr, "connected to next hop");
                let (session, flow_rx) = conn::register_member(&shared, link);
                let io = MemberIo {
                    member: &*member,
                    requests: &mut rx,
                };
                let (closed, back) =
                    conn::run(session, &shared, &routes, stream, flow_rx, Some(io)).await;
                member.up.store(false, Ordering::Relaxed);
                member.outstanding.store(0, Ordering::Relaxed);
                tracing::warn!(member = %addr, reason = ?closed, "next-hop connection closed");
                // A member session always hands its link back; a fresh one only if not.
                link = back.unwrap_or_else(|| {
                    PoolLink::new(
                        member.id,
                        addr,
                        connector.from_domain.clone(),
                        connector.probe,
                        clock::now(),
                    )
                });
                if matches!(closed, Closed::Shutdown) {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(member = %addr, error = %e, "next hop unreachable");
            }
        }
        if link.disconnected() == Some(Transition::WentDown) {
            tracing::warn!(member = %addr, "next hop down (connection lost)");
        }
        member.up.store(false, Ordering::Relaxed);
        // While disconnected, nothing may wait here: fail queued requests over.
        let deadline = tokio::time::Instant::from_std(clock::now() + backoff);
        loop {
            tokio::select! {
                Some(request) = rx.recv() => fail_over(&shared, &*routes, &member, request),
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.changed() => return,
            }
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

async fn connect(
    connector: &Connector,
    addr: SocketAddr,
) -> std::io::Result<Box<TlsStream<UnbufferedClientConnection>>> {
    let attempt = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(connector.local_ip, 0))?;
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        tls_stream::connect(tcp, connector.tls.clone(), connector.server_name.clone()).await
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))?
}

/// Sends a request that cannot go to `member` to another one, or answers 503 in the pool's
/// place.
fn fail_over(shared: &Shared, routes: &dyn Routing, member: &Member, request: PoolRequest) {
    // Saturating: the member's count may have been reset when its connection closed.
    let _ = member
        .outstanding
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_sub(1))
        });
    if let Err(request) = routes.to_pool(request, Some(member.id)) {
        let why = Why::PoolUnavailable {
            retry_after_secs: routes.pool_retry_after_secs(),
        };
        shared.answer_in_place_of(&request.answerable, why);
    }
}
