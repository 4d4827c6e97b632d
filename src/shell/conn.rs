//! One SIP connection in the shell: the read/write/timer loop around a core session
//! (`core::sip::session`), whatever the connection (accepted on either listener, opened to
//! a partner), and [`ShellEdge`], which answers the session's questions from the edge's
//! shared state. Every decision is the session's; this module only moves bytes.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::clock;
use super::flows::{self, FlowReceiver, SendError};
use super::shared::{ConnLimits, Shared};
use super::tls_stream::{ReadOutcome, TlsSide, TlsStream};
use crate::core::avauth;
use crate::core::firewall::{Refusal, Strike};
use crate::core::sip::calls::{AtLimit, CallKey, Charge};
use crate::core::sip::federation::PartnerId;
use crate::core::sip::health::Transition;
use crate::core::sip::message::Message;
use crate::core::sip::pool_link::{MemberEvent, PoolLink, PoolRequest};
use crate::core::sip::proxy::{Flow, Proxy, Side};
use crate::core::sip::session::{
    CloseReason, Direction, Edge, FlowRefused, PartnerRequest, PartnerTarget, PoolRefused, Session,
    SessionLimits,
};
use crate::core::sip::token::FlowId;
use crate::core::sip::Why;

/// Messages queued for one connection by others before further ones are dropped.
pub const QUEUE_LEN: usize = 256;

/// Why a connection ended.
#[derive(Debug)]
pub enum Closed {
    PeerClosed,
    /// The session closed it (idle, header timeout, framing, ban).
    Session(CloseReason),
    Io(std::io::Error),
    WriteTimeout,
    Shutdown,
}

/// Where messages go beyond the connection they arrived on — the next-hop pool and the
/// federation partners — as a connection sees it. The edge's `Routes` implements it; the
/// pool's members and the partners' connections run connections that take it, so this
/// trait is what keeps the connection loop from depending on them.
pub trait Routing: Send + Sync {
    /// Hands a request to the least loaded pool member that is up (not `exclude`): the
    /// member it went to, or the request back when none took it.
    fn to_pool(&self, request: PoolRequest, exclude: Option<usize>) -> Result<usize, PoolRequest>;
    /// Transactions in flight toward the pool.
    fn pool_outstanding(&self) -> usize;
    fn pool_any_up(&self) -> bool;
    /// The Retry-After of the pool's 503s.
    fn pool_retry_after_secs(&self) -> u32;
    /// A message from listed partner `p`: its rate (`None`: no such partner any more).
    fn partner_admit(&self, p: PartnerId, now: Instant) -> Option<Result<(), Duration>>;
    /// A message from a discovered partner's domain: the discovery rate.
    fn discovered_admit(&self, domain: &[u8], now: Instant) -> Result<(), Duration>;
    fn partner_dialog_limit(&self, target: &PartnerTarget) -> Option<(u64, usize)>;
    /// To a partner's edge, on a connection that is up or once one is opened (which runs
    /// with `routes`, these routes).
    fn to_partner(
        &self,
        shared: &Arc<Shared>,
        routes: &Arc<dyn Routing>,
        request: PartnerRequest,
    ) -> Result<(), Why>;
}

/// What the pool keeps of a member whose connection this loop runs.
pub trait MemberState: Sync {
    /// The member's session changed: its health and outstanding transactions.
    fn observe(&self, link: &PoolLink);
    /// Removed by a reload: the connection closes once its transactions are done.
    fn is_retired(&self) -> bool;
    fn probe_answered(&self, status: u16, rtt: Duration);
}

/// What a connection to a pool member reads besides its socket and flow queue: the
/// requests the pool hands the member; and whose state it keeps current.
pub struct MemberIo<'a> {
    pub member: &'a dyn MemberState,
    pub requests: &'a mut mpsc::Receiver<PoolRequest>,
}

/// A new flow in the table for a connection, and the flow's queue.
fn new_flow(shared: &Shared, side: Side, remote: SocketAddr) -> (Flow, FlowReceiver) {
    let id = shared.next_flow_id();
    let (handle, rx) = flows::queue(side, QUEUE_LEN, shared.limits().max_queued_bytes);
    shared.flows.insert(id, handle);
    (Flow::new(&shared.proxy.keys(), id, side, remote), rx)
}

/// A new session for an accepted connection or one to a partner (`partner`, proven by
/// `certificate`), its flow in the table, and the flow's queue.
pub fn register(
    shared: &Shared,
    side: Side,
    remote: SocketAddr,
    partner: Option<PartnerId>,
    certificate: Option<Arc<[String]>>,
) -> (Box<Session>, FlowReceiver) {
    let (flow, rx) = new_flow(shared, side, remote);
    let flow = Flow {
        partner,
        certificate,
        ..flow
    };
    (Box::new(Session::new(flow, clock::now())), rx)
}

/// A new session for a connection to a pool member (internal zone), carrying its link.
pub fn register_member(shared: &Shared, link: PoolLink) -> (Box<Session>, FlowReceiver) {
    let (flow, rx) = new_flow(shared, Side::Internal, link.addr);
    (Box::new(Session::to_member(flow, link, clock::now())), rx)
}

/// Drives a session until its connection closes, for every kind of connection: accepted,
/// to a partner, or to a pool member (`member`). Returns why it closed and, for a pool
/// member's connection, the member's link for the next connection. While the connection
/// is idle the loop holds no buffer: it waits for readability, and the stream reads into
/// its thread's scratch buffer (`tls_stream`). The session and the stream come boxed: the
/// connection's task then holds each once, on the heap, rather than copies of them in
/// every state of its future.
pub async fn run<C: TlsSide>(
    mut session: Box<Session>,
    shared: &Arc<Shared>,
    routes: &Arc<dyn Routing>,
    mut stream: Box<TlsStream<C>>,
    mut rx: FlowReceiver,
    mut member: Option<MemberIo<'_>>,
) -> (Closed, Option<PoolLink>) {
    let mut shutdown = shared.shutdown.clone();
    let member_ref = member.as_ref().map(|m| m.member);
    // For capture: the edge's end of the connection (the peer's is the flow's).
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0));
    let edge = |shared, routes| ShellEdge::new(shared, routes, member_ref, local);
    let mut peer_closed = false;
    let closed = loop {
        let deadline =
            tokio::time::Instant::from_std(session.poll_timeout(&shared.limits().session));
        let pool_request = async {
            match member.as_mut() {
                Some(m) => m.requests.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ready = stream.readable() => {
                if let Err(e) = ready {
                    break Closed::Io(e);
                }
                match stream.read(&mut |plaintext| session.receive(plaintext)) {
                    // The limits in force when the bytes arrived (a reload applies at once).
                    Ok(ReadOutcome::Data) => session.handle_read(
                        clock::now(),
                        &mut edge(shared, routes),
                    ),
                    Ok(ReadOutcome::WouldBlock) => {}
                    Ok(ReadOutcome::Closed) => {
                        // What came with the close is still handled (and answered).
                        if session.has_partial_input() {
                            session.handle_read(
                                clock::now(),
                                &mut edge(shared, routes),
                            );
                        }
                        peer_closed = true;
                    }
                    Err(e) => break Closed::Io(e),
                }
            }
            Some(bytes) = rx.recv() => {
                let mut edge = edge(shared, routes);
                session.queue(&bytes, &mut edge);
                // Take what else is queued, to write it in one go.
                while let Some(more) = rx.try_recv() {
                    session.queue(&more, &mut edge);
                    if session.pending_transmit() > 64 * 1024 { break; }
                }
            }
            Some(request) = pool_request => {
                let now = clock::now();
                let mut edge = edge(shared, routes);
                session.handle_pool_request(now, &request, &mut edge);
                if let Some(m) = member.as_mut() {
                    while session.pending_transmit() < 64 * 1024 {
                        let Ok(more) = m.requests.try_recv() else { break };
                        session.handle_pool_request(now, &more, &mut edge);
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => session.handle_timeout(
                clock::now(),
                &mut edge(shared, routes),
            ),
            _ = shutdown.changed() => break Closed::Shutdown,
        }
        if let (Some(m), Some(link)) = (member_ref, session.pool_link()) {
            m.observe(link);
            // Removed by a reload: once its transactions are done, the connection closes.
            if m.is_retired() && link.outstanding() == 0 {
                break Closed::Shutdown;
            }
        }
        if let Some(Err(e)) = session.transmit_with(|bytes| stream.send(bytes)) {
            break Closed::Io(e);
        }
        if let Err(e) = stream.flush(shared.limits().write_timeout).await {
            break match e.kind() {
                std::io::ErrorKind::TimedOut => Closed::WriteTimeout,
                _ => Closed::Io(e),
            };
        }
        if let Some(reason) = session.closed() {
            break Closed::Session(reason);
        }
        if peer_closed {
            break Closed::PeerClosed;
        }
    };
    shared.flows.remove(session.flow().id);
    let link = session.finish(clock::now(), &mut edge(shared, routes));
    stream.shutdown(Duration::from_secs(1)).await;
    (closed, link)
}

/// The edge as one session sees it: the shared state, the routes, the limits in force when
/// the event arrived (read at its first use), and on a pool member's connection the member.
pub struct ShellEdge<'a> {
    shared: &'a Arc<Shared>,
    routes: &'a Arc<dyn Routing>,
    /// Read when the session first asks (an event that never does, such as a message
    /// queued by another connection, costs no read of the shared lock).
    limits: std::cell::OnceCell<Arc<ConnLimits>>,
    member: Option<&'a dyn MemberState>,
    /// The edge's end of the connection (the peer's is the flow's), for capture.
    local: SocketAddr,
}

impl<'a> ShellEdge<'a> {
    pub fn new(
        shared: &'a Arc<Shared>,
        routes: &'a Arc<dyn Routing>,
        member: Option<&'a dyn MemberState>,
        local: SocketAddr,
    ) -> ShellEdge<'a> {
        ShellEdge {
            shared,
            routes,
            limits: std::cell::OnceCell::new(),
            member,
            local,
        }
    }

    fn log_ban(&self, flow: &Flow, now: Instant) {
        if let Some(suppressed) = self.shared.reject_log.allow(now) {
            let remote = crate::obs::redact::pii(flow.remote);
            tracing::warn!(%remote, zone = "external", suppressed, "source banned: closing its connection");
        }
    }
}

impl Edge for ShellEdge<'_> {
    fn proxy(&self) -> &Proxy {
        &self.shared.proxy
    }

    fn limits(&self) -> &SessionLimits {
        &self.limits.get_or_init(|| self.shared.limits()).session
    }

    fn source_request(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        self.shared.guard.request(ip, now)
    }

    fn strike(&mut self, ip: IpAddr, now: Instant) -> Strike {
        self.shared.guard.strike(ip, now)
    }

    fn is_banned(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.shared.guard.banned(ip, now).is_some()
    }

    fn is_allowed(&self, ip: IpAddr) -> bool {
        self.shared.guard.allowed(ip)
    }

    fn partner_admit(&mut self, p: PartnerId, now: Instant) -> Option<Result<(), Duration>> {
        self.routes.partner_admit(p, now)
    }

    fn discovered_admit(&mut self, domain: &[u8], now: Instant) -> Result<(), Duration> {
        self.routes.discovered_admit(domain, now)
    }

    fn partner_dialog_limit(&self, target: &PartnerTarget) -> Option<(u64, usize)> {
        self.routes.partner_dialog_limit(target)
    }

    fn outstanding(&self) -> usize {
        self.routes.pool_outstanding()
    }

    fn pool_any_up(&self) -> bool {
        self.routes.pool_any_up()
    }

    fn retry_after_secs(&self) -> u32 {
        self.routes.pool_retry_after_secs()
    }

    fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    fn call_key(&self, call_id: &[u8], initiator_tag: &[u8], entered: Side) -> CallKey {
        self.shared.call_hasher.key(call_id, initiator_tag, entered)
    }

    fn call_begin(&mut self, key: CallKey, charge: Charge, now: Instant) -> Result<bool, AtLimit> {
        self.shared.calls().begin_for(key, charge, now)
    }

    fn call_abort(&mut self, key: CallKey) {
        self.shared.calls().abort(key);
    }

    fn call_answered(&mut self, key: CallKey, status: u16, now: Instant) {
        self.shared.calls().answered(key, status, now);
    }

    fn call_ended(&mut self, key: CallKey) {
        self.shared.calls().ended(key);
    }

    fn to_pool(&mut self, request: PoolRequest) -> Result<(), PoolRefused> {
        self.routes
            .to_pool(request, None)
            .map(|_| ())
            .map_err(|_| PoolRefused)
    }

    fn to_flow(&mut self, flow: FlowId, from: Side, bytes: Bytes) -> Result<(), FlowRefused> {
        self.shared
            .flows
            .send_across(flow, from, bytes)
            .map_err(|e| match e {
                SendError::Gone => FlowRefused::Gone,
                SendError::Full => FlowRefused::Full,
                SendError::SameZone => FlowRefused::SameZone,
            })
    }

    fn to_partner(&mut self, request: PartnerRequest) -> Result<(), Why> {
        self.routes.to_partner(self.shared, self.routes, request)
    }

    fn credentials(&mut self, flow: &Flow, msg: &Message) -> Option<Vec<u8>> {
        let shared = self.shared;
        let ring = shared.credentials.as_ref().map(|c| c.ring.get());
        let service = shared
            .credentials
            .as_ref()
            .zip(ring.as_deref())
            .map(|(c, ring)| (ring, &c.relay));
        let (answer, outcome) = avauth::answer(msg, service, clock::now_unix());
        match &outcome {
            avauth::Outcome::Issued {
                identity,
                lifetime_secs,
            } => {
                shared
                    .stats
                    .credentials_issued
                    .fetch_add(1, Ordering::Relaxed);
                let identity = crate::obs::redact::pii(identity.escape_default());
                tracing::info!(flow = flow.id.0, %identity, lifetime_secs, "relay credentials issued");
            }
            avauth::Outcome::Malformed(why) => {
                shared
                    .stats
                    .credentials_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(flow = flow.id.0, reason = %why, "credentials request refused");
            }
            avauth::Outcome::NoService => {
                shared
                    .stats
                    .credentials_refused
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        answer
    }

    fn member_event(&mut self, link: &PoolLink, event: MemberEvent, _now: Instant) {
        let Some(member) = self.member else {
            return;
        };
        match event {
            MemberEvent::ProbeSent => {}
            MemberEvent::ProbeAnswered { status, rtt } => member.probe_answered(status, rtt),
            MemberEvent::Transition(Transition::WentUp) => {
                tracing::info!(member = %link.addr, "next hop up")
            }
            MemberEvent::Transition(Transition::WentDown) => {
                let why = if link.is_connected() {
                    "probes failed"
                } else {
                    "connection lost"
                };
                tracing::warn!(member = %link.addr, why, "next hop down")
            }
        }
    }

    fn rejected(
        &mut self,
        flow: &Flow,
        why: Why,
        msg: Option<&Message>,
        _answer: Option<&[u8]>,
        now: Instant,
    ) {
        self.shared.stats.reject(why, flow.side);
        if let Some(suppressed) = self.shared.reject_log.allow(now) {
            // The Call-ID is the sender's bytes: escaped, and cut short, before it is logged.
            let call_id = msg.map(|m| {
                m.bytes(m.call_id)
                    .escape_ascii()
                    .to_string()
                    .chars()
                    .take(128)
                    .collect::<String>()
            });
            let call_id = crate::obs::redact::pii(call_id.as_deref().unwrap_or("-"));
            tracing::info!(
                flow = flow.id.0,
                remote = %crate::obs::redact::pii(flow.remote),
                zone = flow.side.label(),
                reason = why.label(),
                status = %why,
                %call_id,
                suppressed,
                "rejected"
            );
        }
    }

    fn forwarded(&mut self, flow: &Flow, msg: &Message) {
        self.shared.stats.forwarded_message(flow.side, msg);
    }

    fn refused(&mut self, refusal: Refusal) {
        self.shared.stats.refused(refusal);
    }

    fn banned_close(&mut self, flow: &Flow, now: Instant) {
        self.shared
            .stats
            .banned_closes
            .fetch_add(1, Ordering::Relaxed);
        self.log_ban(flow, now);
    }

    fn capture(&mut self, flow: &Flow, direction: Direction, message: &[u8]) {
        if let Some(tap) = self.shared.capture.tap() {
            tap.record(flow.side, self.local, flow.remote, direction, message);
        }
    }

    fn dropped_response(&mut self, flow: &Flow, target: FlowId) {
        self.shared.stats.dropped_response();
        tracing::debug!(flow = flow.id.0, target = target.0, "response dropped");
    }
}
