//! One SIP connection in the shell: the read/write/timer loop around a core session
//! (`core::sip::session`), whatever the connection (accepted on either listener, opened to
//! a partner), and [`ShellEdge`], which answers the session's questions from the edge's
//! shared state. Every decision is the session's; this module only moves bytes.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::clock;
use super::flows::{self, FlowReceiver, SendError};
use super::{ConnLimits, Shared};
use crate::core::avauth;
use crate::core::firewall::{Refusal, Strike};
use crate::core::sip::calls::{AtLimit, CallKey, Owner};
use crate::core::sip::federation::PartnerId;
use crate::core::sip::message::{Message, Method};
use crate::core::sip::proxy::{Flow, Proxy, Side, TxKey};
use crate::core::sip::session::{
    CloseReason, Edge, FlowRefused, PartnerTarget, PoolRefused, Session, SessionLimits,
};
use crate::core::sip::token::FlowId;
use crate::core::sip::Why;

/// Messages queued for one connection by others before further ones are dropped.
pub const QUEUE_LEN: usize = 256;

/// What only a next-hop connection does with messages (see [`Edge::intercept_response`]).
pub trait ConnHooks {
    fn intercept_response(&mut self, _msg: &Message) -> bool {
        false
    }
    fn completed(&mut self, _key: TxKey) {}
}

/// No hooks: an accepted connection, or one to a partner.
pub struct Accepted;
impl ConnHooks for Accepted {}

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

/// A new session for a connection, its flow in the table, and the flow's queue.
pub fn register(
    shared: &Shared,
    side: Side,
    remote: SocketAddr,
    partner: Option<PartnerId>,
    certificate: Option<Arc<[String]>>,
) -> (Session, FlowReceiver) {
    let id = shared.next_flow_id();
    let (handle, rx) = flows::queue(side, QUEUE_LEN, shared.limits().max_queued_bytes);
    shared.flows.insert(id, handle);
    let flow = Flow {
        partner,
        certificate,
        ..Flow::new(shared.proxy.keys(), id, side, remote)
    };
    (Session::new(flow, clock::now()), rx)
}

/// Drives a session until its connection closes.
pub async fn run<S>(
    mut session: Session,
    shared: Arc<Shared>,
    mut stream: S,
    mut rx: FlowReceiver,
    hooks: &mut (dyn ConnHooks + Send),
) -> Closed
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut shutdown = shared.shutdown.clone();
    let closed = loop {
        let deadline =
            tokio::time::Instant::from_std(session.poll_timeout(&shared.limits().session));
        tokio::select! {
            read = stream.read_buf(session.read_buf()) => match read {
                Ok(0) => break Closed::PeerClosed,
                // The limits in force when the bytes arrived (a reload applies at once).
                Ok(_) => session.handle_read(
                    clock::now(),
                    &mut ShellEdge::new(&shared, shared.limits(), &mut *hooks),
                ),
                Err(e) => break Closed::Io(e),
            },
            Some(bytes) = rx.recv() => {
                session.queue(&bytes);
                // Take what else is queued, to write it in one go.
                while let Some(more) = rx.try_recv() {
                    session.queue(&more);
                    if session.pending_transmit() > 64 * 1024 { break; }
                }
            }
            _ = tokio::time::sleep_until(deadline) => session.handle_timeout(
                clock::now(),
                &mut ShellEdge::new(&shared, shared.limits(), &mut *hooks),
            ),
            _ = shutdown.changed() => break Closed::Shutdown,
        }
        let write_timeout = shared.limits().write_timeout;
        if let Err(closed) = flush(&mut stream, session.transmit_buf(), write_timeout).await {
            break closed;
        }
        if let Some(reason) = session.closed() {
            break Closed::Session(reason);
        }
    };
    shared.flows.remove(session.flow().id);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    closed
}

/// Writes everything pending, with a deadline: a peer that stops reading is cut off.
pub async fn flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut BytesMut,
    deadline: Duration,
) -> Result<(), Closed> {
    if out.is_empty() {
        return Ok(());
    }
    let write = async {
        stream.write_all(out).await?;
        stream.flush().await
    };
    match tokio::time::timeout(deadline, write).await {
        Ok(Ok(())) => {
            out.clear();
            Ok(())
        }
        Ok(Err(e)) => Err(Closed::Io(e)),
        Err(_) => Err(Closed::WriteTimeout),
    }
}

/// The edge as one session sees it: the shared state, the limits in force when the event
/// arrived, and the hooks of a next-hop connection.
pub struct ShellEdge<'a> {
    shared: &'a Shared,
    limits: Arc<ConnLimits>,
    hooks: &'a mut (dyn ConnHooks + Send),
}

impl<'a> ShellEdge<'a> {
    pub fn new(
        shared: &'a Shared,
        limits: Arc<ConnLimits>,
        hooks: &'a mut (dyn ConnHooks + Send),
    ) -> ShellEdge<'a> {
        ShellEdge {
            shared,
            limits,
            hooks,
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
        &self.limits.session
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
        let partners = self.shared.partners.as_ref()?;
        partners.federation().get(p)?;
        Some(partners.admit(p, now))
    }

    fn discovered_admit(&mut self, domain: &[u8], now: Instant) -> Result<(), Duration> {
        match &self.shared.partners {
            Some(partners) => partners.admit_discovered(domain, now),
            None => Ok(()),
        }
    }

    fn partner_dialog_limit(&self, target: &PartnerTarget) -> Option<(u64, usize)> {
        self.shared.partners.as_ref()?.dialog_limit(target)
    }

    fn outstanding(&self) -> usize {
        self.shared.pool.outstanding()
    }

    fn pool_any_up(&self) -> bool {
        self.shared.pool.any_up()
    }

    fn retry_after_secs(&self) -> u32 {
        self.shared.pool.retry_after_secs
    }

    fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    fn call_key(&self, call_id: &[u8], initiator_tag: &[u8]) -> CallKey {
        self.shared.call_hasher.key(call_id, initiator_tag)
    }

    fn call_begin(
        &mut self,
        key: CallKey,
        owner: Owner,
        owner_limit: Option<usize>,
        now: Instant,
    ) -> Result<bool, AtLimit> {
        self.shared.calls().begin(key, owner, owner_limit, now)
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

    fn to_pool(&mut self, bytes: Bytes, tx: Option<(TxKey, Method)>) -> Result<(), PoolRefused> {
        self.shared
            .pool
            .send(bytes, tx, None)
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

    fn to_partner(
        &mut self,
        target: PartnerTarget,
        bytes: Bytes,
        origin: FlowId,
        raw: Bytes,
    ) -> Result<(), Why> {
        match &self.shared.partners {
            Some(partners) => partners.send(self.shared, target, bytes, origin, raw),
            None => Err(Why::NoRoute),
        }
    }

    fn credentials(&mut self, flow: &Flow, msg: &Message) -> Option<Vec<u8>> {
        let shared = self.shared;
        let service = shared.credentials.as_ref().map(|c| (&c.ring, &c.relay));
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

    fn intercept_response(&mut self, msg: &Message) -> bool {
        self.hooks.intercept_response(msg)
    }

    fn completed(&mut self, key: TxKey) {
        self.hooks.completed(key);
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

    fn dropped_response(&mut self, flow: &Flow, target: FlowId) {
        self.shared.stats.dropped_response();
        tracing::debug!(flow = flow.id.0, target = target.0, "response dropped");
    }
}
