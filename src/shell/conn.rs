//! One SIP connection (accepted from outside, accepted from inside, or opened to a next hop):
//! read, frame, hand each message to the core, send what it decides; write what other
//! connections queue for this flow; enforce the idle and header timeouts.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::clock;
use super::flows::{self, FlowReceiver, SendError};
use super::partners::Target;
use super::Shared;
use crate::core::avauth;
use crate::core::limits::{Gcra, Refusal, Strike};
use crate::core::sip::dialogs::Event;
use crate::core::sip::federation::PartnerId;
use crate::core::sip::frame::{Frame, Framer};
use crate::core::sip::message::{Message, Method};
use crate::core::sip::proxy::{Action, DiscoveredTarget, Flow, Side, TxKey};
use crate::core::sip::token::FlowId;
use crate::core::sip::Why;

/// Largest read per call; TLS records are at most 16 KiB anyway.
const READ_CHUNK: usize = 16 * 1024;
/// Messages queued for one connection by others before further ones are dropped.
pub const QUEUE_LEN: usize = 256;

/// Hooks for what only a next-hop connection does with messages.
pub trait ConnHooks {
    /// Called for each response before the proxy sees it; `true` consumes it (a probe answer).
    fn intercept_response(&mut self, _msg: &Message) -> bool {
        false
    }
    /// A final response to a pool transaction passed through this connection.
    fn completed(&mut self, _key: TxKey) {}
}

/// No hooks: an accepted connection.
pub struct Accepted;
impl ConnHooks for Accepted {}

/// A live connection's state.
pub struct Conn {
    pub flow: Flow,
    framer: Framer,
    inbuf: BytesMut,
    /// Bytes to write (answers from this task, queued bytes from others).
    pub out: BytesMut,
    last_read: Instant,
    message_started: Option<Instant>,
    /// This connection's request budget (external connections only).
    requests: Gcra,
}

/// Why a connection ended.
#[derive(Debug)]
pub enum Closed {
    PeerClosed,
    Idle,
    HeaderTimeout,
    Framing(Why),
    Io(std::io::Error),
    WriteTimeout,
    Shutdown,
    /// The source was banned (by this connection's offences or another's).
    Banned,
}

impl Conn {
    /// Registers a new flow in the table and returns the connection and its queue.
    pub fn register(
        shared: &Shared,
        side: Side,
        remote: SocketAddr,
        partner: Option<PartnerId>,
        certificate: Option<std::sync::Arc<[String]>>,
    ) -> (Conn, FlowReceiver) {
        let id = shared.next_flow_id();
        let (handle, rx) = flows::queue(side, QUEUE_LEN, shared.limits().max_queued_bytes);
        shared.flows.insert(id, handle);
        let flow = Flow {
            id,
            side,
            remote,
            token: shared.proxy.keys().token(id),
            partner,
            certificate,
        };
        let now = clock::now();
        let conn = Conn {
            flow,
            framer: Framer::new(),
            inbuf: BytesMut::with_capacity(4096),
            out: BytesMut::new(),
            last_read: now,
            message_started: None,
            requests: Gcra::default(),
        };
        (conn, rx)
    }

    /// The read buffer, with room for the next read.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        if self.inbuf.capacity() - self.inbuf.len() < 1024 {
            self.inbuf.reserve(READ_CHUNK);
        }
        &mut self.inbuf
    }

    /// When the connection must next be checked for timeouts.
    pub fn deadline(&self, shared: &Shared) -> Instant {
        let idle = self.last_read + shared.limits().idle_timeout;
        match self.message_started {
            Some(t) => idle.min(t + shared.limits().header_timeout),
            None => idle,
        }
    }

    /// Checks the timeouts.
    pub fn check_timeouts(&self, shared: &Shared, now: Instant) -> Result<(), Closed> {
        if let Some(t) = self.message_started {
            if now >= t + shared.limits().header_timeout {
                return Err(Closed::HeaderTimeout);
            }
        }
        if now >= self.last_read + shared.limits().idle_timeout {
            return Err(Closed::Idle);
        }
        Ok(())
    }

    /// Handles freshly read bytes: every complete message goes through the core.
    pub fn handle_input(
        &mut self,
        shared: &Shared,
        hooks: &mut dyn ConnHooks,
        now: Instant,
    ) -> Result<(), Closed> {
        self.last_read = now;
        loop {
            let frame = match self.framer.check(&self.inbuf, &shared.limits().frame) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(why) => {
                    // The stream is unsynchronised: answer if we can, then close.
                    shared.stats.reject(why, self.flow.side);
                    tracing::debug!(flow = self.flow.id.0, remote = %self.flow.remote, reason = why.label(), "framing error");
                    if let Some(answer) = shared.proxy.answer(&self.inbuf, why, None) {
                        self.out.extend_from_slice(&answer);
                    }
                    let _ = self.strike(shared, now);
                    return Err(Closed::Framing(why));
                }
            };
            match frame {
                Frame::Ping => {
                    let _ = self.inbuf.split_to(4);
                    self.out.extend_from_slice(b"\r\n");
                }
                Frame::Pong => {
                    let _ = self.inbuf.split_to(2);
                }
                Frame::Message { head, len } => {
                    let raw = self.inbuf.split_to(len).freeze();
                    self.handle_message(shared, hooks, raw, head, now)?;
                }
            }
        }
        self.message_started = if self.framer.is_mid_message(&self.inbuf) {
            self.message_started.or(Some(now))
        } else {
            None
        };
        Ok(())
    }

    fn handle_message(
        &mut self,
        shared: &Shared,
        hooks: &mut dyn ConnHooks,
        raw: Bytes,
        head: crate::core::sip::parse::Head,
        now: Instant,
    ) -> Result<(), Closed> {
        let msg = match Message::validate(raw.clone(), head) {
            Ok(msg) => msg,
            Err(why) => {
                self.reject(shared, &raw, why, None);
                return self.strike(shared, now);
            }
        };
        if !msg.is_request() && hooks.intercept_response(&msg) {
            return Ok(());
        }
        if msg.is_request() && self.flow.side == Side::External {
            if let Err(why) = self.admit(shared, &msg, now)? {
                self.reject(shared, &msg.raw, why, Some(&msg));
                return Ok(());
            }
        }
        if let Some(why) = refused_while_draining(shared, &msg, self.flow.side) {
            self.reject(shared, &msg.raw, why, Some(&msg));
            return Ok(());
        }
        let action = shared.proxy.handle(&self.flow, &msg);
        if let Err(why) = self.track_dialog(shared, &msg, &action, now) {
            self.reject(shared, &msg.raw, why, Some(&msg));
            return Ok(());
        }
        match action {
            Action::ToPool { bytes, tx } => {
                if shared.pool.send(Bytes::from(bytes), tx, None).is_err() {
                    // Members up but every queue full is overload, not an outage.
                    let retry_after_secs = shared.pool.retry_after_secs;
                    let why = if shared.pool.any_up() {
                        Why::Overloaded { retry_after_secs }
                    } else {
                        Why::PoolUnavailable { retry_after_secs }
                    };
                    self.reject(shared, &msg.raw, why, Some(&msg));
                } else {
                    shared.stats.forwarded_message(self.flow.side, &msg);
                }
            }
            Action::ToFlow {
                flow,
                bytes,
                completes,
            } => {
                if let Some(key) = completes {
                    hooks.completed(key);
                }
                self.send_to_flow(shared, &msg, flow, Bytes::from(bytes))?;
            }
            Action::Reject(why) => {
                self.reject(shared, &msg.raw, why, Some(&msg));
                if why.is_offence() {
                    return self.strike(shared, now);
                }
            }
            Action::ToPartner { partner, bytes } => {
                self.send_to_partner(shared, &msg, Target::Listed(partner), Bytes::from(bytes));
            }
            Action::ToDiscovered { target, bytes } => {
                self.send_to_partner(shared, &msg, Target::Discovered(target), Bytes::from(bytes));
            }
            Action::Credentials => self.issue_credentials(shared, &msg),
        }
        Ok(())
    }

    /// The firewall's say on a request from outside: the connection's and the source's
    /// request rates (503 + Retry-After), the source's ban (close), and overload toward the
    /// pool (new transactions outside a dialog get 503; in-dialog requests still flow).
    fn admit(
        &mut self,
        shared: &Shared,
        msg: &Message,
        now: Instant,
    ) -> Result<Result<(), Why>, Closed> {
        // A partner edge carries many users over few connections: its own rate applies,
        // not the per-connection and per-source ones (nor their strikes and bans).
        if let Some(partners) = &shared.partners {
            let verdict = match self.flow.partner {
                Some(p) if partners.federation().get(p).is_some() => Some(partners.admit(p, now)),
                // A partner a reload removed: its connection is held to everyone's limits
                // (and its requests are refused).
                Some(_) => None,
                None => shared
                    .proxy
                    .discovered_sender(&self.flow, msg)
                    .map(|domain| partners.admit_discovered(domain, now)),
            };
            if let Some(verdict) = verdict {
                return Ok(verdict.map_err(|wait| Why::RateLimited {
                    retry_after_secs: secs_at_least_1(wait),
                }));
            }
        }
        let ip = self.flow.remote.ip();
        if let Err(wait) = self.requests.take(shared.limits().connection_requests, now) {
            shared
                .stats
                .refused(Refusal::RequestRate { retry_after: wait });
            self.strike(shared, now)?;
            return Ok(Err(Why::RateLimited {
                retry_after_secs: secs_at_least_1(wait),
            }));
        }
        match shared.guard.request(ip, now) {
            Ok(()) => {}
            Err(refusal @ Refusal::Banned { .. }) => {
                shared.stats.refused(refusal);
                shared.stats.banned_closes.fetch_add(1, Ordering::Relaxed);
                self.log_ban(shared, now);
                return Err(Closed::Banned);
            }
            Err(refusal) => {
                shared.stats.refused(refusal);
                return Ok(Err(Why::RateLimited {
                    retry_after_secs: refusal.retry_after_secs(),
                }));
            }
        }
        let in_dialog = msg.to_tag.is_some();
        let method = msg.method();
        let starts_work = !in_dialog && !matches!(method, Some(Method::Ack | Method::Cancel));
        if starts_work && shared.pool.outstanding() >= shared.limits().max_outstanding {
            return Ok(Err(Why::Overloaded {
                retry_after_secs: shared.pool.retry_after_secs,
            }));
        }
        Ok(Ok(()))
    }

    /// Counts an offence against an external source; `Err` when that (or an earlier
    /// offence) banned it: the connection closes.
    fn strike(&mut self, shared: &Shared, now: Instant) -> Result<(), Closed> {
        if self.flow.side != Side::External {
            return Ok(());
        }
        let ip = self.flow.remote.ip();
        match shared.guard.strike(ip, now) {
            Strike::Counted => Ok(()),
            Strike::Banned { .. } => {
                shared.stats.banned_closes.fetch_add(1, Ordering::Relaxed);
                self.log_ban(shared, now);
                Err(Closed::Banned)
            }
            Strike::Ignored if shared.guard.banned(ip, now).is_some() => {
                shared.stats.banned_closes.fetch_add(1, Ordering::Relaxed);
                Err(Closed::Banned)
            }
            Strike::Ignored => Ok(()),
        }
    }

    fn log_ban(&self, shared: &Shared, now: Instant) {
        if let Some(suppressed) = shared.reject_log.allow(now) {
            let remote = crate::obs::redact::pii(self.flow.remote);
            tracing::warn!(%remote, zone = "external", suppressed, "source banned: closing its connection");
        }
    }

    /// Routes by flow token. Every legitimate route crosses zones (outside to inside or back),
    /// so a token naming a flow in the sender's own zone is refused: otherwise a remote user
    /// who saw another user's token (in a Record-Route) could write to that user's
    /// connection without passing the Director.
    /// The A/V authentication service (a SERVICE from the inside).
    fn issue_credentials(&mut self, shared: &Shared, msg: &Message) {
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
                tracing::info!(flow = self.flow.id.0, %identity, lifetime_secs, "relay credentials issued");
            }
            avauth::Outcome::Malformed(why) => {
                shared
                    .stats
                    .credentials_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(flow = self.flow.id.0, reason = %why, "credentials request refused");
            }
            avauth::Outcome::NoService => {
                shared
                    .stats
                    .credentials_refused
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(answer) = answer {
            self.out.extend_from_slice(&answer);
        }
    }

    /// Dialog counts: every call crossing the edge (what a drain waits for), and
    /// federation's per-partner limit: an INVITE to or from a partner at its limit is
    /// refused.
    fn track_dialog(
        &self,
        shared: &Shared,
        msg: &Message,
        action: &Action,
        now: Instant,
    ) -> Result<(), Why> {
        // Most messages start, answer or end no dialog: no lock for them.
        let Some(event) = Event::of(msg) else {
            return Ok(());
        };
        if matches!(action, Action::Reject(_) | Action::Credentials) {
            return Ok(());
        }
        {
            let mut calls = shared.calls.lock().unwrap_or_else(|e| e.into_inner());
            let call_id = msg.bytes(msg.call_id);
            match event {
                Event::Begin => {
                    let _ = calls.begin(super::CALLS, call_id, usize::MAX, now);
                }
                Event::End => calls.ended(None, call_id),
                Event::Answered(status) => calls.answered(None, call_id, status, now),
            }
        }
        let Some(partners) = &shared.partners else {
            return Ok(());
        };
        let (with, from_partner) = match action {
            Action::Reject(_) | Action::Credentials => return Ok(()),
            Action::ToPartner { partner, .. } => {
                (partners.dialog_limit(&Target::Listed(*partner)), false)
            }
            Action::ToDiscovered { target, .. } => (
                partners.dialog_limit(&Target::Discovered(target.clone())),
                false,
            ),
            _ if self.flow.side == Side::External => {
                let with = match self.flow.partner {
                    Some(p) => partners.dialog_limit(&Target::Listed(p)),
                    None => shared
                        .proxy
                        .discovered_sender(&self.flow, msg)
                        .and_then(|domain| {
                            let domain = String::from_utf8_lossy(domain).to_ascii_lowercase();
                            partners
                                .dialog_limit(&Target::Discovered(DiscoveredTarget::Domain(domain)))
                        }),
                };
                (with, true)
            }
            _ => (None, false),
        };
        partners.track_dialog(msg, event, with, from_partner, now)
    }

    fn send_to_partner(&mut self, shared: &Shared, msg: &Message, partner: Target, bytes: Bytes) {
        let sent = match &shared.partners {
            Some(partners) => partners.send(shared, partner, bytes, self.flow.id, msg.raw.clone()),
            None => Err(Why::NoRoute),
        };
        match sent {
            Ok(()) => shared.stats.forwarded_message(self.flow.side, msg),
            Err(why) => self.reject(shared, &msg.raw, why, Some(msg)),
        }
    }

    fn send_to_flow(
        &mut self,
        shared: &Shared,
        msg: &Message,
        flow: FlowId,
        bytes: Bytes,
    ) -> Result<(), Closed> {
        match shared.flows.send_across(flow, self.flow.side, bytes) {
            Ok(()) => shared.stats.forwarded_message(self.flow.side, msg),
            Err(SendError::SameZone) if msg.is_request() => {
                self.reject(shared, &msg.raw, Why::InvalidFlowToken, Some(msg));
                return self.strike(shared, clock::now());
            }
            Err(SendError::SameZone) => {
                shared.stats.reject(Why::StrayResponse, self.flow.side);
                return self.strike(shared, clock::now());
            }
            Err(SendError::Gone) if msg.is_request() => {
                self.reject(shared, &msg.raw, Why::FlowFailed, Some(msg))
            }
            Err(SendError::Full) if msg.is_request() => self.reject(
                shared,
                &msg.raw,
                Why::Overloaded {
                    retry_after_secs: shared.pool.retry_after_secs,
                },
                Some(msg),
            ),
            Err(e) => {
                shared.stats.dropped_response();
                tracing::debug!(flow = self.flow.id.0, target = flow.0, error = ?e, "response dropped");
            }
        }
        Ok(())
    }

    fn reject(&mut self, shared: &Shared, raw: &[u8], why: Why, msg: Option<&Message>) {
        shared.stats.reject(why, self.flow.side);
        if let Some(suppressed) = shared.reject_log.allow(clock::now()) {
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
                flow = self.flow.id.0,
                remote = %crate::obs::redact::pii(self.flow.remote),
                zone = self.flow.side.label(),
                reason = why.label(),
                status = %why,
                %call_id,
                suppressed,
                "rejected"
            );
        }
        if let Some(answer) = shared.proxy.answer(raw, why, msg) {
            self.out.extend_from_slice(&answer);
        }
    }

    /// Drives the connection until it closes. `extra` lets a next-hop connection add its
    /// own events (pool messages, probes) through `hooks`; accepted connections pass none.
    pub async fn run<S>(
        mut self,
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
            let deadline = tokio::time::Instant::from_std(self.deadline(&shared));
            tokio::select! {
                read = stream.read_buf(self.read_buf()) => match read {
                    Ok(0) => break Closed::PeerClosed,
                    Ok(_) => {
                        if let Err(closed) = self.handle_input(&shared, hooks, clock::now()) {
                            let _ = flush(&mut stream, &mut self.out, shared.limits().write_timeout).await;
                            break closed;
                        }
                    }
                    Err(e) => break Closed::Io(e),
                },
                Some(bytes) = rx.recv() => {
                    self.out.extend_from_slice(&bytes);
                    // Take what else is queued, to write it in one go.
                    while let Some(more) = rx.try_recv() {
                        self.out.extend_from_slice(&more);
                        if self.out.len() > 64 * 1024 { break; }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let now = clock::now();
                    if let Err(closed) = self.check_timeouts(&shared, now) {
                        if matches!(closed, Closed::HeaderTimeout) {
                            // Slowloris is an offence like any malformed message.
                            let _ = self.strike(&shared, now);
                        }
                        break closed;
                    }
                }
                _ = shutdown.changed() => break Closed::Shutdown,
            }
            if let Err(closed) =
                flush(&mut stream, &mut self.out, shared.limits().write_timeout).await
            {
                break closed;
            }
        };
        shared.flows.remove(self.flow.id);
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        closed
    }
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

fn secs_at_least_1(d: Duration) -> u32 {
    u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX)
}

/// While draining: new calls (out-of-dialog INVITEs, either way) and any new out-of-dialog
/// request from outside get 503 with Retry-After, so that clients take their work to another
/// pool member; requests within dialogs, ACK and CANCEL still flow.
fn refused_while_draining(shared: &Shared, msg: &Message, side: Side) -> Option<Why> {
    if !shared.is_draining() || msg.to_tag.is_some() {
        return None;
    }
    let method = msg.method()?;
    let new_work = match method {
        Method::Ack | Method::Cancel => false,
        Method::Invite => true,
        _ => side == Side::External,
    };
    new_work.then_some(Why::Draining {
        retry_after_secs: 1,
    })
}
