//! One SIP connection, sans-IO: bytes and `Instant`s in, bytes to write and a close out.
//!
//! A [`Session`] owns everything one connection decides: framing and the header and idle
//! deadlines, the connection's own request budget, the admission of each message (the
//! source's rate and ban, a partner's rate, overload shedding and drain for whatever proves
//! no dialog), the proxy decision, the calls a message starts, answers or ends, and what to
//! answer when a message is refused or cannot be sent. What is shared by every connection —
//! the firewall's per-source table, the pool, the flow table, the partners, the call table,
//! counters — it asks of the [`Edge`] it is driven with; the session takes no lock and reads
//! no clock itself. The same session serves connections accepted on either listener and
//! those the edge opens to the pool and to partners; on a connection to a pool member it
//! also owns the member's probes and transaction timers ([`PoolLink`]) and answers 408 or
//! 503 in the member's place (`pool`).
//!
//! Submodules: `edge` (the [`Edge`] trait), `admission` (firewall, shedding, drain, calls),
//! `pool` (what only a pool member's session does).
//!
//! The shell's loop: hand what arrived to [`Session::receive`] and call
//! [`Session::handle_read`] (or both at once with [`Session::handle_input`]); give it what other connections queue for this
//! flow with [`Session::queue`]; call [`Session::handle_timeout`] at
//! [`Session::poll_timeout`]; after each of these write [`Session::transmit_with`] and stop
//! once [`Session::closed`] says so. Spurious timeouts do nothing.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::calls::{AtLimit, CallKey, Charge, Owner};
use super::federation::{discovered_key, PartnerId};
use super::frame::{Frame, FrameLimits, Framer};
use super::message::{Kind, Message, Method};
use super::parse::Head;
use super::pool_link::{Answerable, MemberEvent, PoolLink, PoolRequest};
use super::proxy::{Action, DiscoveredTarget, Flow, Proof, Proxy, Side};
use super::reject::{self, Why};
use super::token::FlowId;
use crate::core::firewall::{Gcra, Rate, Refusal, Strike};
use crate::core::net::SourceKey;

mod admission;
mod edge;
mod pool;

use admission::initial_invite;
pub use edge::{Direction, Edge, FlowRefused, PartnerRequest, PartnerTarget, PoolRefused};
pub use pool::answer_in_place_of;

/// The Retry-After of a 503 for a partner at its dialog limit.
pub const PARTNER_RETRY_AFTER_SECS: u32 = 30;

/// The limits a session applies (from the topology's `[limits]` and `[firewall]`; a
/// reload replaces them, and the next message sees the new ones).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    pub frame: FrameLimits,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    /// Requests (and responses) per external connection.
    pub connection_requests: Rate,
    /// Transactions in flight toward the pool above which new work from outside is shed.
    pub max_outstanding: usize,
    /// Calls one external source may hold at once (allow-listed sources: the total only).
    pub max_calls_per_source: usize,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Nothing arrived for `idle_timeout`.
    Idle,
    /// A header block (or body) did not complete within `header_timeout` (408 sent when
    /// it could be formed).
    HeaderTimeout,
    /// The stream cannot be framed any more (answered when possible).
    Framing(Why),
    /// The source was banned (by this connection's offences or another's).
    Banned,
}

/// One connection's state.
pub struct Session {
    flow: Flow,
    framer: Framer,
    inbuf: BytesMut,
    out: BytesMut,
    last_read: Instant,
    /// When the part of a message now in `inbuf` began to arrive.
    message_started: Option<Instant>,
    /// This connection's own budget (external connections only).
    requests: Gcra,
    closed: Option<CloseReason>,
    /// A connection to a pool member: the member's health and transactions.
    pool: Option<Box<PoolLink>>,
}

impl Session {
    pub fn new(flow: Flow, now: Instant) -> Session {
        Session {
            flow,
            framer: Framer::new(),
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
            last_read: now,
            message_started: None,
            requests: Gcra::default(),
            closed: None,
            pool: None,
        }
    }

    /// A session on a new connection to a pool member: it probes the member at once, and
    /// answers for the requests it hands over if the member fails them.
    pub fn to_member(flow: Flow, mut link: PoolLink, now: Instant) -> Session {
        link.health.handle_connected(now);
        link.probe_sent = None;
        Session {
            pool: Some(Box::new(link)),
            ..Session::new(flow, now)
        }
    }

    /// The pool member this session is connected to, if it is one.
    pub fn pool_link(&self) -> Option<&PoolLink> {
        self.pool.as_deref()
    }

    /// A request for the pool member at the other end (the shell's pool picked it): written,
    /// and its transaction timed.
    pub fn handle_pool_request<E: Edge>(
        &mut self,
        now: Instant,
        request: &PoolRequest,
        edge: &mut E,
    ) {
        if let Some(link) = &mut self.pool {
            link.record(now, request);
        }
        self.write(edge, &request.bytes);
    }

    /// The connection is over (whatever closed it): a pool member's transactions in flight
    /// are answered 503 in its place (RFC 3261 §16.9: whether it processed them is unknown,
    /// so they are not retried elsewhere), and the member is down. Returns the member's link
    /// for the next connection.
    pub fn finish<E: Edge>(&mut self, now: Instant, edge: &mut E) -> Option<PoolLink> {
        let mut link = *self.pool.take()?;
        let why = Why::PoolUnavailable {
            retry_after_secs: edge.retry_after_secs(),
        };
        for answerable in link.outstanding.drain().collect::<Vec<_>>() {
            answer_in_place_of(edge, &answerable, why, now);
        }
        if let Some(t) = link.disconnected() {
            edge.member_event(&link, MemberEvent::Transition(t), now);
        }
        Some(link)
    }

    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// Why the session ended, once it has: the shell writes what is pending and closes.
    pub fn closed(&self) -> Option<CloseReason> {
        self.closed
    }

    /// Bytes that arrived, kept for the next [`Session::handle_read`] (the shell hands over
    /// the plaintext of every record one read brought, then handles them at once).
    pub fn receive(&mut self, data: &[u8]) {
        self.inbuf.extend_from_slice(data);
    }

    /// Bytes that arrived, handled at once.
    pub fn handle_input<E: Edge>(&mut self, now: Instant, data: &[u8], edge: &mut E) {
        self.receive(data);
        self.handle_read(now, edge);
    }

    /// A message that another connection queued for this flow, to be written.
    pub fn queue<E: Edge>(&mut self, message: &[u8], edge: &mut E) {
        self.write(edge, message);
    }

    /// Every message this session writes goes through here (keep-alive answers do not:
    /// they are not messages), so that capture sees each once.
    fn write<E: Edge>(&mut self, edge: &mut E, message: &[u8]) {
        self.out.extend_from_slice(message);
        edge.capture(&self.flow, Direction::Sent, message);
    }

    /// Bytes to write now, if any.
    pub fn take_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// Bytes waiting to be written (the shell bounds its batches by it).
    pub fn pending_transmit(&self) -> usize {
        self.out.len()
    }

    /// Whether part of a message has arrived and waits for the rest.
    pub fn has_partial_input(&self) -> bool {
        !self.inbuf.is_empty()
    }

    /// Bytes to write now, for a shell that encrypts them in place: the buffer is given
    /// back (not kept for the next write) once `write` took them, so an idle connection
    /// holds none.
    pub fn transmit_with<T>(&mut self, write: impl FnOnce(&[u8]) -> T) -> Option<T> {
        if self.out.is_empty() {
            return None;
        }
        let written = write(&self.out);
        self.out = BytesMut::new();
        Some(written)
    }

    /// When [`Session::handle_timeout`] must be called next, under `limits`.
    pub fn poll_timeout(&self, limits: &SessionLimits) -> Instant {
        let idle = self.last_read + limits.idle_timeout;
        let own = match self.message_started {
            Some(t) => idle.min(t + limits.header_timeout),
            None => idle,
        };
        match &self.pool {
            Some(link) => own.min(link.next_deadline()),
            None => own,
        }
    }

    /// The deadlines: a header block or body that is late gets 408 (when an answer can be
    /// formed from what arrived) and the connection closes; an idle one closes.
    pub fn handle_timeout<E: Edge>(&mut self, now: Instant, edge: &mut E) {
        if self.closed.is_some() {
            return;
        }
        self.pool_timers(edge, now);
        let limits = edge.limits();
        let (header_timeout, idle_timeout) = (limits.header_timeout, limits.idle_timeout);
        if let Some(t) = self.message_started {
            if now >= t + header_timeout {
                let answer = reject::response_to_partial(&self.inbuf, 408, "Request Timeout");
                edge.rejected(&self.flow, Why::HeaderTimeout, None, answer.as_deref(), now);
                if let Some(answer) = answer {
                    self.write(edge, &answer);
                }
                // Slowloris is an offence like any malformed message.
                self.strike(edge, now);
                self.closed = Some(CloseReason::HeaderTimeout);
                return;
            }
        }
        if now >= self.last_read + idle_timeout {
            self.closed = Some(CloseReason::Idle);
        }
    }

    /// Handles what is in the read buffer: every complete message goes through.
    pub fn handle_read<E: Edge>(&mut self, now: Instant, edge: &mut E) {
        self.last_read = now;
        while self.closed.is_none() {
            let frame = match self.framer.check(&self.inbuf, &edge.limits().frame) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(why) => {
                    // The stream is unsynchronised: answer if we can, then close.
                    let answer = edge.proxy().answer(&self.inbuf, why, None);
                    edge.rejected(&self.flow, why, None, answer.as_deref(), now);
                    if let Some(answer) = answer {
                        self.write(edge, &answer);
                    }
                    self.strike(edge, now);
                    self.closed = Some(CloseReason::Framing(why));
                    return;
                }
            };
            match frame {
                Frame::Ping => {
                    let _ = self.inbuf.split_to(4);
                    self.out.extend_from_slice(b"\r\n");
                    edge.keepalive(&self.flow);
                }
                Frame::Pong => {
                    let _ = self.inbuf.split_to(2);
                }
                Frame::Message { head, len } => {
                    let raw = self.inbuf.split_to(len).freeze();
                    edge.capture(&self.flow, Direction::Received, &raw);
                    self.handle_message(edge, raw, head, now);
                }
            }
        }
        self.message_started = if self.framer.is_mid_message(&self.inbuf) {
            self.message_started.or(Some(now))
        } else {
            None
        };
        if self.inbuf.is_empty() {
            // Nothing pending: hold no buffer while idle (the messages split off keep
            // their own bytes).
            self.inbuf = BytesMut::new();
        }
    }

    fn handle_message<E: Edge>(&mut self, edge: &mut E, raw: Bytes, head: Head, now: Instant) {
        let msg = match Message::validate(raw.clone(), head) {
            Ok(msg) => msg,
            Err(why) => {
                self.reject(edge, &raw, why, None, now);
                self.strike(edge, now);
                return;
            }
        };
        if !msg.is_request() && self.probe_answered(edge, &msg, now) {
            return;
        }
        if self.flow.side == Side::External {
            if let Err(why) = self.admit(edge, &msg, now) {
                if self.closed.is_none() {
                    self.reject(edge, &msg.raw, why, Some(&msg), now);
                }
                return;
            }
        }
        let action = edge.proxy().handle(&self.flow, &msg);
        if let Some(why) = self.shed(edge, &msg, &action) {
            self.reject(edge, &msg.raw, why, Some(&msg), now);
            return;
        }
        let call = initial_invite(&msg, &action, self.flow.side)
            .map(|tag| edge.call_key(msg.bytes(msg.call_id), tag, self.flow.side));
        let new_call = match call.map(|key| self.begin_call(edge, key, &msg, &action, now)) {
            Some(Ok(true)) => call,
            None | Some(Ok(false)) => None,
            Some(Err(why)) => {
                self.reject(edge, &msg.raw, why, Some(&msg), now);
                return;
            }
        };
        let proof = action.proof();
        let sent = self.send(edge, &msg, action, call, now);
        match new_call {
            // Counted only once the next hop took it.
            Some(key) if !sent => edge.call_abort(key),
            _ => {}
        }
        if sent {
            self.track_call(edge, &msg, proof, now);
        }
    }

    /// Carries out the proxy's decision; whether the message went on.
    fn send<E: Edge>(
        &mut self,
        edge: &mut E,
        msg: &Message,
        action: Action,
        call: Option<CallKey>,
        now: Instant,
    ) -> bool {
        let side = self.flow.side;
        // Only what goes to the pool or a partner may have to be answered in their place.
        // The answer needs the request's header block only, copied: `msg.raw` is a slice of
        // the connection's read buffer and would keep all of it (up to the largest message
        // twice over) for as long as the transaction is outstanding (181 s for an INVITE).
        let answerable = || Answerable {
            origin: self.flow.id,
            raw: Bytes::copy_from_slice(msg.raw.get(..msg.body.start).unwrap_or(&msg.raw)),
            call,
        };
        match action {
            Action::ToPool { bytes, tx, .. } => match edge.to_pool(PoolRequest {
                bytes: Bytes::from(bytes),
                tx,
                answerable: answerable(),
            }) {
                Ok(()) => {
                    edge.forwarded(&self.flow, msg);
                    true
                }
                Err(PoolRefused) => {
                    // Members up but every queue full is overload, not an outage.
                    let retry_after_secs = edge.retry_after_secs();
                    let why = if edge.pool_any_up() {
                        Why::Overloaded { retry_after_secs }
                    } else {
                        Why::PoolUnavailable { retry_after_secs }
                    };
                    self.reject(edge, &msg.raw, why, Some(msg), now);
                    false
                }
            },
            Action::ToFlow {
                flow,
                bytes,
                completes,
                ..
            } => {
                if let (Some(key), Some(link)) = (completes, &mut self.pool) {
                    link.outstanding.complete(&key);
                }
                match edge.to_flow(flow, side, Bytes::from(bytes)) {
                    Ok(()) => {
                        edge.forwarded(&self.flow, msg);
                        true
                    }
                    Err(FlowRefused::SameZone) if msg.is_request() => {
                        self.reject(edge, &msg.raw, Why::InvalidFlowToken, Some(msg), now);
                        self.strike(edge, now);
                        false
                    }
                    Err(FlowRefused::SameZone) => {
                        edge.rejected(&self.flow, Why::StrayResponse, Some(msg), None, now);
                        self.strike(edge, now);
                        false
                    }
                    Err(FlowRefused::Gone) if msg.is_request() => {
                        self.reject(edge, &msg.raw, Why::FlowFailed, Some(msg), now);
                        false
                    }
                    Err(FlowRefused::Full) if msg.is_request() => {
                        let why = Why::Overloaded {
                            retry_after_secs: edge.retry_after_secs(),
                        };
                        self.reject(edge, &msg.raw, why, Some(msg), now);
                        false
                    }
                    Err(_) => {
                        edge.dropped_response(&self.flow, flow);
                        false
                    }
                }
            }
            Action::Reject(why) => {
                self.reject(edge, &msg.raw, why, Some(msg), now);
                if why.is_offence() {
                    self.strike(edge, now);
                }
                false
            }
            Action::ToPartner { partner, bytes, .. } => {
                let target = PartnerTarget::Listed(partner);
                let answerable = answerable();
                self.send_to_partner(edge, msg, target, bytes, answerable, now)
            }
            Action::ToDiscovered { target, bytes, .. } => {
                let target = PartnerTarget::Discovered(target);
                let answerable = answerable();
                self.send_to_partner(edge, msg, target, bytes, answerable, now)
            }
            Action::Credentials => {
                if let Some(answer) = edge.credentials(&self.flow, msg) {
                    self.write(edge, &answer);
                }
                false
            }
        }
    }

    fn send_to_partner<E: Edge>(
        &mut self,
        edge: &mut E,
        msg: &Message,
        target: PartnerTarget,
        bytes: Vec<u8>,
        answerable: Answerable,
        now: Instant,
    ) -> bool {
        let request = PartnerRequest {
            target,
            bytes: Bytes::from(bytes),
            answerable,
        };
        match edge.to_partner(request) {
            Ok(()) => {
                edge.forwarded(&self.flow, msg);
                true
            }
            Err(why) => {
                self.reject(edge, &msg.raw, why, Some(msg), now);
                false
            }
        }
    }

    /// Counts and logs a refusal and writes its answer (if one can be formed).
    fn reject<E: Edge>(
        &mut self,
        edge: &mut E,
        raw: &[u8],
        why: Why,
        msg: Option<&Message>,
        now: Instant,
    ) {
        let answer = edge.proxy().answer(raw, why, msg);
        edge.rejected(&self.flow, why, msg, answer.as_deref(), now);
        if let Some(answer) = answer {
            self.write(edge, &answer);
        }
    }

    /// Counts an offence against an external source; closes the session when that (or an
    /// earlier offence) banned it.
    fn strike<E: Edge>(&mut self, edge: &mut E, now: Instant) {
        if self.flow.side != Side::External || self.closed.is_some() {
            return;
        }
        let ip = self.flow.remote.ip();
        let banned = match edge.strike(ip, now) {
            Strike::Counted => false,
            Strike::Banned { .. } => true,
            Strike::Ignored => edge.is_banned(ip, now),
        };
        if banned {
            edge.banned_close(&self.flow, now);
            self.closed = Some(CloseReason::Banned);
        }
    }
}
