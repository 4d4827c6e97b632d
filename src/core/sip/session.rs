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
//! those the edge opens to the pool and to partners.
//!
//! The shell's loop: read into [`Session::read_buf`] and call [`Session::handle_read`] (or
//! hand bytes to [`Session::handle_input`]); give it what other connections queue for this
//! flow with [`Session::queue`]; call [`Session::handle_timeout`] at
//! [`Session::poll_timeout`]; after each of these write [`Session::take_transmit`] and stop
//! once [`Session::closed`] says so. Spurious timeouts do nothing.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::calls::{AtLimit, CallKey, Owner};
use super::federation::{discovered_key, PartnerId};
use super::frame::{Frame, FrameLimits, Framer};
use super::message::{Kind, Message, Method};
use super::parse::Head;
use super::proxy::{Action, DiscoveredTarget, Flow, Proof, Proxy, Side, TxKey};
use super::reject::{self, Why};
use super::token::FlowId;
use crate::core::firewall::{Gcra, Rate, Refusal, Strike};
use crate::core::net::SourceKey;

/// Largest read per call; TLS records are at most 16 KiB anyway.
pub const READ_CHUNK: usize = 16 * 1024;
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

/// Where a request for a partner goes (as the shell's partner table knows it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PartnerTarget {
    Listed(PartnerId),
    Discovered(DiscoveredTarget),
}

/// Why the pool did not take a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolRefused;

/// Why a flow did not take a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowRefused {
    /// No such flow: the connection is gone (430 Flow Failed for requests).
    Gone,
    /// Its queue is full: its peer does not read.
    Full,
    /// The flow is in the sender's own zone: no legitimate route does that.
    SameZone,
}

/// What a session asks of the edge around it. Every call returns at once: nothing here
/// waits for the network.
pub trait Edge {
    fn proxy(&self) -> &Proxy;
    /// The limits in force.
    fn limits(&self) -> &SessionLimits;

    // --- the firewall (external sources) ---
    /// One message from `ip`: the source's rate, or its ban.
    fn source_request(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal>;
    /// An offence by `ip`.
    fn strike(&mut self, ip: IpAddr, now: Instant) -> Strike;
    fn is_banned(&mut self, ip: IpAddr, now: Instant) -> bool;
    /// Exempt from per-source limits (`firewall.allow_sources`).
    fn is_allowed(&self, ip: IpAddr) -> bool;

    // --- partners ---
    /// A message from listed partner `p`: its rate; `None` when `p` is no partner any more.
    fn partner_admit(&mut self, p: PartnerId, now: Instant) -> Option<Result<(), Duration>>;
    /// A message from a discovered partner's `domain`: the discovery rate.
    fn discovered_admit(&mut self, domain: &[u8], now: Instant) -> Result<(), Duration>;
    /// The dialog limit of a partner: its key and how many dialogs it may hold.
    fn partner_dialog_limit(&self, target: &PartnerTarget) -> Option<(u64, usize)>;

    // --- the pool and the edge's state ---
    fn outstanding(&self) -> usize;
    fn pool_any_up(&self) -> bool;
    /// Retry-After of the pool's 503s.
    fn retry_after_secs(&self) -> u32;
    fn is_draining(&self) -> bool;

    // --- calls ---
    fn call_key(&self, call_id: &[u8], initiator_tag: &[u8]) -> CallKey;
    fn call_begin(
        &mut self,
        key: CallKey,
        owner: Owner,
        owner_limit: Option<usize>,
        now: Instant,
    ) -> Result<bool, AtLimit>;
    fn call_abort(&mut self, key: CallKey);
    fn call_answered(&mut self, key: CallKey, status: u16, now: Instant);
    fn call_ended(&mut self, key: CallKey);

    // --- sending (queues; never waits) ---
    fn to_pool(&mut self, bytes: Bytes, tx: Option<(TxKey, Method)>) -> Result<(), PoolRefused>;
    fn to_flow(&mut self, flow: FlowId, from: Side, bytes: Bytes) -> Result<(), FlowRefused>;
    /// To a partner's edge (waiting, bounded, while a connection opens); `origin` and `raw`
    /// let the edge answer 503 later if none can be opened.
    fn to_partner(
        &mut self,
        target: PartnerTarget,
        bytes: Bytes,
        origin: FlowId,
        raw: Bytes,
    ) -> Result<(), Why>;
    /// The A/V authentication service's answer to a credentials request from the inside.
    fn credentials(&mut self, flow: &Flow, msg: &Message) -> Option<Vec<u8>>;

    // --- what only a connection to a pool member does ---
    /// A response before the proxy sees it; `true` consumes it (an answer to a probe).
    fn intercept_response(&mut self, _msg: &Message) -> bool {
        false
    }
    /// A final response to a pool transaction passed through this connection.
    fn completed(&mut self, _key: TxKey) {}

    // --- counters and logs ---
    /// A message (or the stream) was refused; `answer` is what the session wrote back, if
    /// an answer could be formed.
    fn rejected(
        &mut self,
        flow: &Flow,
        why: Why,
        msg: Option<&Message>,
        answer: Option<&[u8]>,
        now: Instant,
    );
    /// A CRLF CRLF keep-alive was answered (RFC 5626 §3.5.1).
    fn keepalive(&mut self, _flow: &Flow) {}
    fn forwarded(&mut self, flow: &Flow, msg: &Message);
    fn refused(&mut self, refusal: Refusal);
    /// The connection closes because its source is banned.
    fn banned_close(&mut self, flow: &Flow, now: Instant);
    /// A response nobody could take (its flow gone or full).
    fn dropped_response(&mut self, flow: &Flow, target: FlowId);
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
        }
    }

    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// Why the session ended, once it has: the shell writes what is pending and closes.
    pub fn closed(&self) -> Option<CloseReason> {
        self.closed
    }

    /// The read buffer, with room for the next read (the shell reads straight into it).
    pub fn read_buf(&mut self) -> &mut BytesMut {
        if self.inbuf.capacity() - self.inbuf.len() < 1024 {
            self.inbuf.reserve(READ_CHUNK);
        }
        &mut self.inbuf
    }

    /// Bytes that arrived (tests and fuzzers; the shell reads into [`Session::read_buf`]).
    pub fn handle_input<E: Edge>(&mut self, now: Instant, data: &[u8], edge: &mut E) {
        self.inbuf.extend_from_slice(data);
        self.handle_read(now, edge);
    }

    /// Bytes that other connections queued for this flow, to be written.
    pub fn queue(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
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

    /// The write buffer, for a shell that writes it in place and clears it (no allocation
    /// per write).
    pub fn transmit_buf(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// When [`Session::handle_timeout`] must be called next, under `limits`.
    pub fn poll_timeout(&self, limits: &SessionLimits) -> Instant {
        let idle = self.last_read + limits.idle_timeout;
        match self.message_started {
            Some(t) => idle.min(t + limits.header_timeout),
            None => idle,
        }
    }

    /// The deadlines: a header block or body that is late gets 408 (when an answer can be
    /// formed from what arrived) and the connection closes; an idle one closes.
    pub fn handle_timeout<E: Edge>(&mut self, now: Instant, edge: &mut E) {
        if self.closed.is_some() {
            return;
        }
        let limits = edge.limits();
        let (header_timeout, idle_timeout) = (limits.header_timeout, limits.idle_timeout);
        if let Some(t) = self.message_started {
            if now >= t + header_timeout {
                let answer = reject::response_to_partial(&self.inbuf, 408, "Request Timeout");
                edge.rejected(&self.flow, Why::HeaderTimeout, None, answer.as_deref(), now);
                if let Some(answer) = answer {
                    self.out.extend_from_slice(&answer);
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
                        self.out.extend_from_slice(&answer);
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
                    self.handle_message(edge, raw, head, now);
                }
            }
        }
        self.message_started = if self.framer.is_mid_message(&self.inbuf) {
            self.message_started.or(Some(now))
        } else {
            None
        };
        if self.inbuf.is_empty() && self.inbuf.capacity() > READ_CHUNK {
            // Nothing pending: give a large buffer back rather than hold it while idle.
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
        if !msg.is_request() && edge.intercept_response(&msg) {
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
        let new_call = match self.begin_call(edge, &msg, &action, now) {
            Ok(call) => call,
            Err(why) => {
                self.reject(edge, &msg.raw, why, Some(&msg), now);
                return;
            }
        };
        let proof = action.proof();
        let sent = self.send(edge, &msg, action, now);
        match new_call {
            // Counted only once the next hop took it.
            Some(key) if !sent => edge.call_abort(key),
            _ => {}
        }
        if sent {
            self.track_call(edge, &msg, proof, now);
        }
    }

    /// The firewall's say on a message from outside (requests and responses alike): a
    /// partner's rate, or the connection's and the source's rates (503 + Retry-After) and
    /// the source's ban (close).
    fn admit<E: Edge>(&mut self, edge: &mut E, msg: &Message, now: Instant) -> Result<(), Why> {
        // A partner edge carries many users over few connections: its own rate applies,
        // not the per-connection and per-source ones (nor their strikes and bans).
        let partner_verdict = match self.flow.partner {
            Some(p) => edge.partner_admit(p, now),
            None => edge
                .proxy()
                .discovered_sender(&self.flow, msg)
                .map(|domain| domain.to_vec())
                .map(|domain| edge.discovered_admit(&domain, now)),
        };
        // (A partner a reload removed falls through: its connection is held to everyone's
        // limits, and the proxy refuses its requests.)
        if let Some(verdict) = partner_verdict {
            return verdict.map_err(|wait| Why::RateLimited {
                retry_after_secs: secs_at_least_1(wait),
            });
        }
        let ip = self.flow.remote.ip();
        if let Err(wait) = self.requests.take(edge.limits().connection_requests, now) {
            edge.refused(Refusal::RequestRate { retry_after: wait });
            self.strike(edge, now);
            return Err(Why::RateLimited {
                retry_after_secs: secs_at_least_1(wait),
            });
        }
        match edge.source_request(ip, now) {
            Ok(()) => Ok(()),
            Err(refusal @ Refusal::Banned { .. }) => {
                edge.refused(refusal);
                edge.banned_close(&self.flow, now);
                self.closed = Some(CloseReason::Banned);
                Err(Why::RateLimited {
                    retry_after_secs: refusal.retry_after_secs(),
                })
            }
            Err(refusal) => {
                edge.refused(refusal);
                Err(Why::RateLimited {
                    retry_after_secs: refusal.retry_after_secs(),
                })
            }
        }
    }

    /// Overload shedding and drain, for a request about to be forwarded that proves no
    /// dialog the edge recorded (a To tag proves nothing): while draining, new calls either
    /// way and any new request from outside get 503 so clients take their work to another
    /// pool member; above `max_outstanding`, new work from outside gets 503. ACK and CANCEL
    /// start nothing and always pass.
    fn shed<E: Edge>(&self, edge: &E, msg: &Message, action: &Action) -> Option<Why> {
        let method = msg.method()?;
        if matches!(action, Action::Reject(_) | Action::Credentials)
            || action.proof() == Proof::Dialog
            || matches!(method, Method::Ack | Method::Cancel)
        {
            return None;
        }
        let outside = self.flow.side == Side::External;
        if edge.is_draining() && (method == Method::Invite || outside) {
            return Some(Why::Draining {
                retry_after_secs: 1,
            });
        }
        if outside && edge.outstanding() >= edge.limits().max_outstanding {
            return Some(Why::Overloaded {
                retry_after_secs: edge.retry_after_secs(),
            });
        }
        None
    }

    /// An INVITE that starts a call (no To tag) about to be forwarded: counted against its
    /// owner's bound and the edge's. `Ok(Some(key))` for a new call, to be aborted if the
    /// send fails.
    fn begin_call<E: Edge>(
        &self,
        edge: &mut E,
        msg: &Message,
        action: &Action,
        now: Instant,
    ) -> Result<Option<CallKey>, Why> {
        if msg.method() != Some(Method::Invite)
            || msg.to_tag.is_some()
            || matches!(action, Action::Reject(_) | Action::Credentials)
        {
            return Ok(None);
        }
        let Some(tag) = msg.from_tag else {
            return Ok(None);
        };
        let key = edge.call_key(msg.bytes(msg.call_id), msg.bytes(tag));
        let (owner, limit) = self.call_owner(edge, msg, action);
        let partner = matches!(owner, Owner::Partner(_));
        match edge.call_begin(key, owner, limit, now) {
            Ok(true) => Ok(Some(key)),
            Ok(false) => Ok(None),
            Err(AtLimit::Owner | AtLimit::Taken) if partner => Err(Why::PartnerDialogs {
                retry_after_secs: PARTNER_RETRY_AFTER_SECS,
            }),
            Err(_) => Err(Why::CallLimit {
                retry_after_secs: edge.retry_after_secs(),
            }),
        }
    }

    /// Who a new call is charged to, and how many that owner may hold.
    fn call_owner<E: Edge>(
        &self,
        edge: &E,
        msg: &Message,
        action: &Action,
    ) -> (Owner, Option<usize>) {
        let partner = |target: PartnerTarget| match edge.partner_dialog_limit(&target) {
            Some((key, max)) => (Owner::Partner(key), Some(max)),
            None => (Owner::Inside, None),
        };
        match (self.flow.side, action) {
            (Side::Internal, Action::ToPartner { partner: p, .. }) => {
                partner(PartnerTarget::Listed(*p))
            }
            (Side::Internal, Action::ToDiscovered { target, .. }) => {
                partner(PartnerTarget::Discovered(target.clone()))
            }
            (Side::Internal, _) => (Owner::Inside, None),
            (Side::External, _) => {
                if let Some(p) = self.flow.partner {
                    return partner(PartnerTarget::Listed(p));
                }
                if let Some(domain) = edge.proxy().discovered_sender(&self.flow, msg) {
                    let domain = String::from_utf8_lossy(domain).to_ascii_lowercase();
                    return match edge.partner_dialog_limit(&PartnerTarget::Discovered(
                        DiscoveredTarget::Domain(domain.clone()),
                    )) {
                        Some((key, max)) => (Owner::Partner(key), Some(max)),
                        None => (Owner::Partner(discovered_key(domain.as_bytes())), Some(0)),
                    };
                }
                let ip = self.flow.remote.ip();
                let limit = (!edge.is_allowed(ip)).then_some(edge.limits().max_calls_per_source);
                (Owner::Source(SourceKey::of(ip)), limit)
            }
        }
    }

    /// What a forwarded message does to a call: a final answer to an INVITE answers it,
    /// a BYE of a dialog the edge recorded (or from the inside) ends it.
    fn track_call<E: Edge>(&self, edge: &mut E, msg: &Message, proof: Proof, now: Instant) {
        match msg.kind {
            Kind::Response { status }
                if status >= 200 && msg.bytes(msg.cseq_method) == b"INVITE" =>
            {
                if let Some(tag) = msg.from_tag {
                    let key = edge.call_key(msg.bytes(msg.call_id), msg.bytes(tag));
                    edge.call_answered(key, status, now);
                }
            }
            Kind::Request {
                method: Method::Bye,
                ..
            } if proof == Proof::Dialog || self.flow.side == Side::Internal => {
                for tag in [msg.from_tag, msg.to_tag].into_iter().flatten() {
                    let key = edge.call_key(msg.bytes(msg.call_id), msg.bytes(tag));
                    edge.call_ended(key);
                }
            }
            _ => {}
        }
    }

    /// Carries out the proxy's decision; whether the message went on.
    fn send<E: Edge>(&mut self, edge: &mut E, msg: &Message, action: Action, now: Instant) -> bool {
        let side = self.flow.side;
        match action {
            Action::ToPool { bytes, tx, .. } => match edge.to_pool(Bytes::from(bytes), tx) {
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
                if let Some(key) = completes {
                    edge.completed(key);
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
                self.send_to_partner(edge, msg, PartnerTarget::Listed(partner), bytes, now)
            }
            Action::ToDiscovered { target, bytes, .. } => {
                self.send_to_partner(edge, msg, PartnerTarget::Discovered(target), bytes, now)
            }
            Action::Credentials => {
                if let Some(answer) = edge.credentials(&self.flow, msg) {
                    self.out.extend_from_slice(&answer);
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
        now: Instant,
    ) -> bool {
        match edge.to_partner(target, Bytes::from(bytes), self.flow.id, msg.raw.clone()) {
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
            self.out.extend_from_slice(&answer);
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

fn secs_at_least_1(d: Duration) -> u32 {
    u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX)
}
