//! The next-hop (Director) pool: one persistent mutual-TLS connection per member, opened from
//! the internal interface; requests spread by least outstanding transactions over the
//! members that are up; OPTIONS probes decide up and down (`core::sip::health`); failover
//! when a member's connection is lost.
//!
//! Per message, picking a member reads a few atomics: no lock. Each member's transaction
//! table and health belong to its own task.

use crate::sync::{MutexExt, RwLockExt};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls_pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use super::clock;
use super::conn::{self, flush, Closed, ConnHooks, ShellEdge, QUEUE_LEN};
use super::Shared;
use crate::core::sip::health::{Health, ProbeConfig, Transition};
use crate::core::sip::message::{Message, Method};
use crate::core::sip::outstanding::{Outstanding, INVITE_TIMEOUT, NON_INVITE_TIMEOUT};
use crate::core::sip::parse::HeadLimits;
use crate::core::sip::proxy::{Action, Flow, Side, TxKey};
use crate::core::sip::token::FlowId;
use crate::core::sip::Why;

/// Reconnect back-off bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// TCP + TLS set-up toward a member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request on its way to a member.
#[derive(Debug)]
pub struct PoolMsg {
    pub bytes: Bytes,
    pub tx: Option<(TxKey, Method)>,
}

/// What the rest of the edge sees of one member.
pub struct Member {
    /// Stable for the life of the process (probe branches carry it), never reused.
    pub id: usize,
    pub addr: SocketAddr,
    /// Removed by a reload: takes no new work, and its task ends once its transactions are.
    retired: AtomicBool,
    up: AtomicBool,
    outstanding: AtomicUsize,
    tx: mpsc::Sender<PoolMsg>,
    probes: std::sync::Mutex<Probes>,
}

/// The last health probe of a member, for `/status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Probes {
    /// When the probe in flight was sent.
    sent: Option<Instant>,
    /// The last answer: when (Unix seconds), its status, and how long it took.
    pub last: Option<(u64, u16, Duration)>,
}

impl Member {
    /// The last probe answer: when (Unix seconds), status, round trip.
    pub fn last_probe(&self) -> Option<(u64, u16, Duration)> {
        self.probes.lock_unpoisoned().last
    }

    fn probe_sent(&self, now: Instant) {
        self.probes.lock_unpoisoned().sent = Some(now);
    }

    fn probe_answered(&self, status: u16, now: Instant) {
        let mut p = self.probes.lock_unpoisoned();
        if let Some(sent) = p.sent.take() {
            p.last = Some((
                clock::now_unix(),
                status,
                now.saturating_duration_since(sent),
            ));
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
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
pub type NewMember = (Arc<Member>, mpsc::Receiver<PoolMsg>);

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
                probes: std::sync::Mutex::new(Probes::default()),
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
    pub fn send(
        &self,
        bytes: Bytes,
        tx: Option<(TxKey, Method)>,
        exclude: Option<usize>,
    ) -> Result<usize, PoolMsg> {
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
        let mut msg = PoolMsg { bytes, tx };
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
    pub tls: TlsConnector,
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
    member: Arc<Member>,
    connector: Connector,
    mut rx: mpsc::Receiver<PoolMsg>,
) {
    let addr = member.addr;
    let mut health = Health::new(clock::now(), connector.probe);
    let mut backoff = RECONNECT_MIN;
    let mut shutdown = shared.shutdown.clone();
    loop {
        if *shutdown.borrow() || member.retired.load(Ordering::Relaxed) {
            member.up.store(false, Ordering::Relaxed);
            // Whatever reached its queue meanwhile goes to the members that stay.
            while let Ok(msg) = rx.try_recv() {
                fail_over(&shared, &member, msg);
            }
            return;
        }
        match connect(&connector, addr).await {
            Ok(stream) => {
                backoff = RECONNECT_MIN;
                tracing::info!(member = %addr, "connected to next hop");
                let closed =
                    serve_member(&shared, &member, &connector, stream, &mut rx, &mut health).await;
                tracing::warn!(member = %addr, reason = ?closed, "next-hop connection closed");
                if matches!(closed, Closed::Shutdown) {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(member = %addr, error = %e, "next hop unreachable");
            }
        }
        if health.handle_disconnected() == Some(Transition::WentDown) {
            tracing::warn!(member = %addr, "next hop down (connection lost)");
        }
        member.up.store(false, Ordering::Relaxed);
        // While disconnected, nothing may wait here: fail queued requests over.
        let deadline = tokio::time::Instant::from_std(clock::now() + backoff);
        loop {
            tokio::select! {
                Some(msg) = rx.recv() => fail_over(&shared, &member, msg),
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
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let attempt = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(connector.local_ip, 0))?;
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        connector
            .tls
            .connect(connector.server_name.clone(), tcp)
            .await
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))?
}

/// Sends a request that cannot go to `member` to another one, or answers 503.
fn fail_over(shared: &Shared, member: &Member, msg: PoolMsg) {
    member.outstanding.fetch_sub(1, Ordering::Relaxed);
    let PoolMsg { bytes, tx } = msg;
    if let Err(PoolMsg { bytes, .. }) = shared.pool.send(bytes, tx, Some(member.id)) {
        answer_unavailable(shared, &bytes);
    }
}

/// Answers a request that was already spliced for the pool with 503.
fn answer_unavailable(shared: &Shared, forwarded: &[u8]) {
    let why = Why::PoolUnavailable {
        retry_after_secs: shared.pool.retry_after_secs,
    };
    answer_for_pool(shared, forwarded, why);
}

/// Answers a request that was already spliced for the pool, through the normal response
/// path: the answer carries the edge's Via, so the proxy routes it to the client's flow.
fn answer_for_pool(shared: &Shared, forwarded: &[u8], why: Why) {
    let Some(answer) = shared.proxy.answer(forwarded, why, None) else {
        return;
    };
    let limits = HeadLimits {
        max_headers: usize::MAX,
        max_line_bytes: usize::MAX,
    };
    let Ok(msg) = Message::parse(Bytes::from(answer), &limits) else {
        return;
    };
    let internal = Flow::new(
        shared.proxy.keys(),
        FlowId(0),
        Side::Internal,
        SocketAddr::from(([0, 0, 0, 0], 0)),
    );
    if let Action::ToFlow { flow, bytes, .. } = shared.proxy.handle(&internal, &msg) {
        let _ = shared.flows.send(flow, Bytes::from(bytes));
    }
    if let Some((status, _)) = why.status() {
        shared.answered_by_edge(forwarded, status);
    }
}

/// What a next-hop connection adds to an accepted one: probe answers feed the member's
/// health, final responses complete its outstanding transactions.
struct MemberHooks<'a> {
    shared: &'a Shared,
    member: &'a Member,
    addr: SocketAddr,
    health: &'a mut Health,
    outstanding: &'a mut Outstanding<TxKey, Bytes>,
}

impl<'a> MemberHooks<'a> {
    fn new(
        shared: &'a Shared,
        member: &'a Member,
        health: &'a mut Health,
        outstanding: &'a mut Outstanding<TxKey, Bytes>,
    ) -> MemberHooks<'a> {
        MemberHooks {
            shared,
            member,
            addr: member.addr,
            health,
            outstanding,
        }
    }
}

impl ConnHooks for MemberHooks<'_> {
    fn intercept_response(&mut self, msg: &Message) -> bool {
        match self.shared.proxy.probe_answer(msg) {
            Some((member, seq, status)) if member == self.member.id => {
                self.member.probe_answered(status, clock::now());
                let transition = self.health.handle_answer(seq, status);
                log_transition(self.addr, transition);
                true
            }
            // An answer to a probe of another member's connection: not for anyone else.
            Some(_) => true,
            None => false,
        }
    }

    fn completed(&mut self, key: TxKey) {
        self.outstanding.complete(&key);
    }
}

fn log_transition(addr: SocketAddr, transition: Option<Transition>) {
    match transition {
        Some(Transition::WentUp) => tracing::info!(member = %addr, "next hop up"),
        Some(Transition::WentDown) => {
            tracing::warn!(member = %addr, "next hop down (probes failed)")
        }
        None => {}
    }
}

async fn serve_member(
    shared: &Arc<Shared>,
    member: &Arc<Member>,
    connector: &Connector,
    mut stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    rx: &mut mpsc::Receiver<PoolMsg>,
    health: &mut Health,
) -> Closed {
    let (mut session, mut flow_rx) =
        conn::register(shared, Side::Internal, member.addr, None, None);
    health.handle_connected(clock::now());
    let mut outstanding: Outstanding<TxKey, Bytes> = Outstanding::new();
    let mut shutdown = shared.shutdown.clone();
    let closed = loop {
        // Removed by a reload: once its transactions are done, the connection closes.
        if member.retired.load(Ordering::Relaxed) && outstanding.is_empty() {
            break Closed::Shutdown;
        }
        let limits = shared.limits();
        let now = clock::now();
        // Probes and transaction expiry.
        let (probe, transition) = health.handle_timeout(now);
        if let Some(seq) = probe {
            member.probe_sent(now);
            session.queue(
                &shared
                    .proxy
                    .probe(member.id, member.addr, seq, &connector.from_domain),
            );
        }
        log_transition(member.addr, transition);
        outstanding.expire(now, |forwarded| {
            answer_for_pool(shared, &forwarded, Why::RequestTimeout)
        });
        member
            .outstanding
            .store(outstanding.len(), Ordering::Relaxed);
        member.up.store(health.is_up(), Ordering::Relaxed);
        if let Err(closed) = flush(&mut stream, session.transmit_buf(), limits.write_timeout).await
        {
            break closed;
        }

        let mut wake = health
            .poll_timeout()
            .min(session.poll_timeout(&limits.session));
        if let Some(t) = outstanding.poll_timeout() {
            wake = wake.min(t);
        }
        tokio::select! {
            read = stream.read_buf(session.read_buf()) => match read {
                Ok(0) => break Closed::PeerClosed,
                Ok(_) => {
                    let mut hooks = MemberHooks::new(shared, member, health, &mut outstanding);
                    session.handle_read(
                        clock::now(),
                        &mut ShellEdge::new(shared, shared.limits(), &mut hooks),
                    );
                }
                Err(e) => break Closed::Io(e),
            },
            Some(msg) = rx.recv() => {
                let now = clock::now();
                let mut next = Some(msg);
                // Exact count from here on; the pool's optimistic increments are replaced.
                while let Some(PoolMsg { bytes, tx }) = next.take() {
                    if let Some((key, method)) = tx {
                        let timeout = if method == Method::Invite { INVITE_TIMEOUT } else { NON_INVITE_TIMEOUT };
                        outstanding.insert(now, key, timeout, bytes.clone());
                    }
                    session.queue(&bytes);
                    if session.pending_transmit() < 64 * 1024 {
                        next = rx.try_recv().ok();
                    }
                }
            }
            Some(bytes) = flow_rx.recv() => session.queue(&bytes),
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                let mut hooks = MemberHooks::new(shared, member, health, &mut outstanding);
                session.handle_timeout(
                    clock::now(),
                    &mut ShellEdge::new(shared, shared.limits(), &mut hooks),
                );
            }
            _ = shutdown.changed() => break Closed::Shutdown,
        }
        if let Err(closed) = flush(&mut stream, session.transmit_buf(), limits.write_timeout).await
        {
            break closed;
        }
        if let Some(reason) = session.closed() {
            break Closed::Session(reason);
        }
    };
    shared.flows.remove(session.flow().id);
    member.up.store(false, Ordering::Relaxed);
    // RFC 3261 §16.9: a transport error counts as a 503 from this hop. Whether the member
    // processed these requests is unknown, so they are answered, not retried elsewhere.
    for forwarded in outstanding.drain() {
        answer_unavailable(shared, &forwarded);
    }
    member.outstanding.store(0, Ordering::Relaxed);
    closed
}
