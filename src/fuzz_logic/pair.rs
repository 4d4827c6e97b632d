//! A simulated pair, in the manner of quinn-proto's `Pair`: a remote user's connection and
//! the connection to a pool member, each a real [`Session`], joined by a [`SimEdge`], on
//! simulated time. The remote user and the Director at the ends are byte buffers driven by
//! the test: what the user sends goes through the user's session, the pool, the member's
//! session and out to the Director; the Director's answers come back the same way.
//! Drain, timeouts, overload, pool failure and flow-token proofs are tested on it without a
//! socket, a task or a clock.
//!
//! The Director answers the edge's OPTIONS probes itself while [`Pair::director_alive`].

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::golden;
use super::sim::{SimEdge, SimEvent};
use crate::core::sip::calls::CallLimits;
use crate::core::sip::frame::{Frame, Framer};
use crate::core::sip::health::ProbeConfig;
use crate::core::sip::pool_link::{PoolLink, PoolRequest};
use crate::core::sip::proxy::{Flow, Side};
use crate::core::sip::session::{CloseReason, Session};
use crate::core::sip::token::FlowId;

/// The remote user's first flow (a reconnection gets the next) and the pool member's.
pub const USER: FlowId = FlowId(1);
pub const MEMBER: FlowId = FlowId(1000);

/// How the edge probes the simulated Director.
pub const PROBE: ProbeConfig = ProbeConfig {
    interval: Duration::from_secs(5),
    timeout: Duration::from_secs(2),
    rise: 2,
    fall: 2,
};

/// A remote user, the edge, and one pool member's Director.
pub struct Pair {
    pub edge: SimEdge,
    pub now: Instant,
    pub user: Session,
    /// The user's connection's flow now.
    pub user_flow: FlowId,
    /// The session to the pool member; `None` after [`Pair::member_connection_lost`].
    pub member: Option<Session>,
    /// The member's link while no connection is up.
    pub link: Option<PoolLink>,
    /// What the remote user received, not yet read by the test.
    pub to_user: Vec<u8>,
    /// What the Director received (probes aside), not yet read by the test.
    pub to_director: Vec<u8>,
    /// Whether the Director answers probes.
    pub director_alive: bool,
    /// Probes the Director answered.
    pub probes_answered: usize,
    /// With `edge.capturing`: every byte each end wrote on each connection, kept (what
    /// capture's copies are checked against).
    pub wire: Wire,
    /// How the edge would answer each request it handed the pool, in its place (kept for
    /// the tests; a fuzz run's pair is short-lived).
    pub answerables: Vec<crate::core::sip::pool_link::Answerable>,
}

/// Every byte written on the two connections, by whom (kept only while capturing).
#[derive(Default)]
pub struct Wire {
    pub user_to_edge: Vec<u8>,
    pub edge_to_user: Vec<u8>,
    pub director_to_edge: Vec<u8>,
    pub edge_to_director: Vec<u8>,
}

impl Pair {
    /// The loopback names of the golden files; the member comes up after its first
    /// `rise` probes are answered.
    #[allow(clippy::disallowed_methods)] // simulated time starts from a real instant
    pub fn new() -> Pair {
        let now = Instant::now();
        let proxy = golden::proxy();
        let mut edge = SimEdge::new(
            proxy,
            SimEdge::lenient_limits(golden::limits()),
            SimEdge::no_bans(),
            CallLimits {
                max_calls: 1000,
                max_duration: Duration::from_secs(3600),
            },
        );
        edge.flows.insert(USER, Side::External);
        edge.flows.insert(MEMBER, Side::Internal);
        let user_flow = user_flow(&edge, USER);
        let member_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 5070));
        let member_flow = Flow::new(&edge.proxy.keys(), MEMBER, Side::Internal, member_addr);
        let link = PoolLink::new(0, member_addr, "sipedge.test".into(), PROBE, now);
        let mut pair = Pair {
            edge,
            now,
            user: Session::new(user_flow, now),
            user_flow: USER,
            member: Some(Session::to_member(member_flow, link, now)),
            link: None,
            to_user: Vec::new(),
            to_director: Vec::new(),
            director_alive: true,
            probes_answered: 0,
            wire: Wire::default(),
            answerables: Vec::new(),
        };
        pair.drive();
        pair
    }

    /// A pair whose member is up (its first probes answered).
    pub fn up() -> Pair {
        let mut pair = Pair::new();
        for _ in 0..PROBE.rise {
            if pair.edge.pool_up {
                break;
            }
            pair.advance(PROBE.interval);
        }
        pair
    }

    /// The remote user sends `bytes`.
    pub fn user_sends(&mut self, bytes: &[u8]) {
        if self.edge.capturing {
            self.wire.user_to_edge.extend_from_slice(bytes);
        }
        self.user.handle_input(self.now, bytes, &mut self.edge);
        self.drive();
    }

    /// The Director sends `bytes` on the member's connection.
    pub fn director_sends(&mut self, bytes: &[u8]) {
        if let Some(member) = &mut self.member {
            if self.edge.capturing {
                self.wire.director_to_edge.extend_from_slice(bytes);
            }
            member.handle_input(self.now, bytes, &mut self.edge);
        }
        self.drive();
    }

    /// Time passes: every deadline due on the way is handled when it falls due.
    pub fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        loop {
            // Closed sessions have no deadlines: the shell stops driving them.
            let open = |s: &Session| s.closed().is_none();
            let user = Some(&self.user)
                .filter(|s| open(s))
                .map(|s| s.poll_timeout(&self.edge.limits));
            let member = self
                .member
                .as_ref()
                .filter(|s| open(s))
                .map(|s| s.poll_timeout(&self.edge.limits));
            let calls = self.edge.calls.poll_timeout();
            let Some(next) = user
                .into_iter()
                .chain(member)
                .chain(calls)
                .min()
                .filter(|t| *t <= until)
            else {
                break;
            };
            self.now = self.now.max(next);
            // The shell's call-table timer.
            self.edge.calls.expire(self.now);
            if user.is_some_and(|t| t <= self.now) {
                self.user.handle_timeout(self.now, &mut self.edge);
            }
            if let (Some(m), Some(t)) = (&mut self.member, member) {
                if t <= self.now {
                    m.handle_timeout(self.now, &mut self.edge);
                }
            }
            self.drive();
        }
        self.now = until;
    }

    /// The connection to the member is lost: what it held is answered in its place.
    pub fn member_connection_lost(&mut self) {
        if let Some(mut member) = self.member.take() {
            self.edge.flows.remove(&MEMBER);
            self.link = member.finish(self.now, &mut self.edge);
        }
        self.drive();
    }

    /// The connection to the member is made again, with the member's link.
    pub fn member_reconnects(&mut self) {
        let Some(link) = self.link.take() else {
            return;
        };
        self.edge.flows.insert(MEMBER, Side::Internal);
        let flow = Flow::new(&self.edge.proxy.keys(), MEMBER, Side::Internal, link.addr);
        self.member = Some(Session::to_member(flow, link, self.now));
        self.drive();
    }

    /// The user connects again (the old connection's flow is gone): a new flow.
    pub fn user_reconnects(&mut self) {
        self.edge.flows.remove(&self.user_flow);
        self.user_flow = FlowId(self.user_flow.0 + 1);
        self.edge.flows.insert(self.user_flow, Side::External);
        self.user = Session::new(user_flow(&self.edge, self.user_flow), self.now);
        self.to_user.clear();
    }

    /// Why the user's connection closed, if it did.
    pub fn user_closed(&self) -> Option<CloseReason> {
        self.user.closed()
    }

    /// The messages the user received since the last call, as text.
    pub fn user_received(&mut self) -> Vec<String> {
        split(&std::mem::take(&mut self.to_user))
    }

    /// The messages the Director received since the last call, as text.
    pub fn director_received(&mut self) -> Vec<String> {
        split(&std::mem::take(&mut self.to_director))
    }

    /// Delivers what the edge did until nothing is left to deliver.
    fn drive(&mut self) {
        loop {
            let events = self.edge.take_events();
            let mut moved = !events.is_empty();
            for event in events {
                self.deliver(event);
            }
            if let Some(bytes) = self.user.take_transmit() {
                if self.edge.capturing {
                    self.wire.edge_to_user.extend_from_slice(&bytes);
                }
                self.to_user.extend_from_slice(&bytes);
            }
            if let Some(bytes) = self.member.as_mut().and_then(Session::take_transmit) {
                if self.edge.capturing {
                    self.wire.edge_to_director.extend_from_slice(&bytes);
                }
                moved |= self.director_reads(&bytes);
            }
            self.observe_member();
            // A member session that closed (idle, framing) ends like a lost connection.
            if self.member.as_ref().is_some_and(|m| m.closed().is_some()) {
                if let Some(mut member) = self.member.take() {
                    self.edge.flows.remove(&MEMBER);
                    self.link = member.finish(self.now, &mut self.edge);
                }
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }

    fn deliver(&mut self, event: SimEvent) {
        match event {
            SimEvent::ToPool {
                bytes,
                tx,
                answerable,
                ..
            } => {
                self.answerables.push(answerable.clone());
                let request = PoolRequest {
                    bytes,
                    tx,
                    answerable,
                };
                match &mut self.member {
                    Some(member) => member.handle_pool_request(self.now, &request, &mut self.edge),
                    // Nobody took it: the shell's pool answers in its place.
                    None => crate::core::sip::session::answer_in_place_of(
                        &mut self.edge,
                        &request.answerable,
                        crate::core::sip::Why::PoolUnavailable {
                            retry_after_secs: 30,
                        },
                        self.now,
                    ),
                }
            }
            SimEvent::ToFlow { flow, bytes, .. } if flow == self.user_flow => {
                self.user.queue(&bytes, &mut self.edge)
            }
            SimEvent::ToFlow { flow, bytes, .. } if flow == MEMBER => {
                if let Some(member) = &mut self.member {
                    member.queue(&bytes, &mut self.edge);
                }
            }
            _ => {}
        }
    }

    /// The Director reads what the member's session wrote: probes it answers itself (when
    /// alive), the rest the test reads. Whether it answered anything.
    fn director_reads(&mut self, bytes: &[u8]) -> bool {
        let mut answered = false;
        for msg in split(bytes) {
            if msg.starts_with("OPTIONS ") && msg.contains("branch=z9hG4bKprobe") {
                if self.director_alive {
                    if let Some(answer) =
                        crate::core::sip::reject::response(msg.as_bytes(), 200, "OK", b"")
                    {
                        self.probes_answered += 1;
                        if let Some(member) = &mut self.member {
                            if self.edge.capturing {
                                self.wire.director_to_edge.extend_from_slice(&answer);
                            }
                            member.handle_input(self.now, &answer, &mut self.edge);
                            answered = true;
                        }
                    }
                }
                continue;
            }
            self.to_director.extend_from_slice(msg.as_bytes());
        }
        answered
    }

    /// What the shell's pool reads of its member (`Member::observe`).
    fn observe_member(&mut self) {
        let link = self.member.as_ref().and_then(Session::pool_link);
        self.edge.pool_up = link.is_some_and(|l| l.is_up());
        self.edge.outstanding = link.map_or(0, |l| l.outstanding());
    }
}

impl Default for Pair {
    fn default() -> Self {
        Pair::new()
    }
}

/// The remote user's connection `id`, from a fixed address.
fn user_flow(edge: &SimEdge, id: FlowId) -> Flow {
    let remote = std::net::SocketAddr::from(([203, 0, 113, 7], 40000));
    Flow::new(&edge.proxy.keys(), id, Side::External, remote)
}

/// Splits a byte stream into whole messages (text), as the framer does.
pub fn split(mut bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let limits = golden::limits();
    let mut framer = Framer::new();
    while !bytes.is_empty() {
        match framer.check(bytes, &limits) {
            Ok(Some(Frame::Message { len, .. })) => {
                let (msg, rest) = bytes.split_at(len.min(bytes.len()));
                out.push(String::from_utf8_lossy(msg).into_owned());
                bytes = rest;
            }
            Ok(Some(Frame::Ping)) => bytes = bytes.get(4..).unwrap_or_default(),
            Ok(Some(Frame::Pong)) => bytes = bytes.get(2..).unwrap_or_default(),
            Ok(None) | Err(_) => {
                out.push(String::from_utf8_lossy(bytes).into_owned());
                break;
            }
        }
    }
    out
}

/// The Director's answer to `request` (as it arrived at the Director): its Vias, From,
/// To with a tag, Call-ID, CSeq, and for a dialog its Record-Route and a Contact.
pub fn director_answer(request: &str, status: u16, reason: &str) -> Bytes {
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    for line in request.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "from" | "call-id" | "cseq" | "record-route" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "to" if line.contains(";tag=") || status < 200 => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "to" => {
                out.push_str(line);
                out.push_str(";tag=director1\r\n");
            }
            _ => {}
        }
    }
    out.push_str("Contact: <sip:bob@10.0.0.5:5061;transport=tls>\r\nContent-Length: 0\r\n\r\n");
    Bytes::from(out)
}

mod walk;
pub use walk::{run, walk};

#[cfg(test)]
mod tests;
