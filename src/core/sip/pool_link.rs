//! What a session to a next-hop pool member owns beyond an accepted connection's: the
//! member's health (OPTIONS probes, [`Health`]) and the transactions it was handed, each
//! with its RFC 3261 timer ([`Outstanding`]), and the answers the edge gives in the
//! member's place — 408 when a transaction times out, 503 when the connection is lost
//! (RFC 3261 §16.9) — built from what the client sent, never by parsing an answer again.
//!
//! A [`PoolLink`] outlives the connections to its member (health streaks carry over a
//! reconnection): the shell hands it to each new session and takes it back when the
//! session ends ([`super::session::Session::finish`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::calls::CallKey;
use super::health::{Health, ProbeConfig, Transition};
use super::message::Method;
use super::outstanding::{Outstanding, INVITE_TIMEOUT, NON_INVITE_TIMEOUT};
use super::proxy::TxKey;
use super::reject::{self, Why};
use super::token::FlowId;

/// A request the edge forwarded and may yet have to answer itself, should the next hop fail
/// it: to whom (`origin`), what they sent (`raw`, answered as every refusal is), and the
/// call it starts, if any (a failure ends that call).
#[derive(Clone, Debug)]
pub struct Answerable {
    pub origin: FlowId,
    pub raw: Bytes,
    pub call: Option<CallKey>,
}

impl Answerable {
    /// The edge's answer in the next hop's place, and the status it gives the call.
    pub fn answer(&self, why: Why) -> Option<(Vec<u8>, u16)> {
        let (status, _) = why.status()?;
        Some((reject::answer(&self.raw, why, None)?, status))
    }
}

/// A request on its way to a pool member: the bytes to write, its transaction (requests
/// that expect a final response; ACK does not), and how to answer it if the member fails.
#[derive(Clone, Debug)]
pub struct PoolRequest {
    pub bytes: Bytes,
    pub tx: Option<(TxKey, Method)>,
    pub answerable: Answerable,
}

/// Something about the member worth recording or logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// A probe went out.
    ProbeSent,
    /// A probe was answered with `status` after `rtt`.
    ProbeAnswered { status: u16, rtt: Duration },
    /// The member went up or down.
    Transition(Transition),
}

/// One pool member as the sessions to it see it.
#[derive(Debug)]
pub struct PoolLink {
    /// The member's id (its probes' branches carry it).
    pub id: usize,
    pub addr: SocketAddr,
    /// Domain in the probes' From.
    pub from_domain: String,
    pub(super) health: Health,
    pub(super) outstanding: Outstanding<TxKey, Answerable>,
    /// When the probe in flight was sent.
    pub(super) probe_sent: Option<Instant>,
}

impl PoolLink {
    pub fn new(
        id: usize,
        addr: SocketAddr,
        from_domain: String,
        probe: ProbeConfig,
        now: Instant,
    ) -> PoolLink {
        PoolLink {
            id,
            addr,
            from_domain,
            health: Health::new(now, probe),
            outstanding: Outstanding::new(),
            probe_sent: None,
        }
    }

    /// Whether requests may be sent to the member.
    pub fn is_up(&self) -> bool {
        self.health.is_up()
    }

    /// Whether a connection to the member is up.
    pub fn is_connected(&self) -> bool {
        self.health.is_connected()
    }

    /// Transactions handed to the member and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Records a request handed to the member (retransmissions keep their first timer).
    pub(super) fn record(&mut self, now: Instant, request: &PoolRequest) {
        if let Some((key, method)) = request.tx {
            let timeout = if method == Method::Invite {
                INVITE_TIMEOUT
            } else {
                NON_INVITE_TIMEOUT
            };
            self.outstanding
                .insert(now, key, timeout, request.answerable.clone());
        }
    }

    /// The connection to the member is lost, or could not be made: down at once.
    pub fn disconnected(&mut self) -> Option<Transition> {
        self.probe_sent = None;
        self.health.handle_disconnected()
    }

    pub(super) fn next_deadline(&self) -> Instant {
        let health = self.health.poll_timeout();
        match self.outstanding.poll_timeout() {
            Some(t) => health.min(t),
            None => health,
        }
    }
}
