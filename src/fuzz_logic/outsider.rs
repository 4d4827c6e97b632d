//! The outsider: generated sequences of what Internet clients can send to the edge — using
//! tokens, Vias, Call-IDs and tags they learned from everything the edge sent them, on their
//! own connection or another — against real sessions around a [`SimEdge`] with an honest
//! Director inside. After every step the trust boundary's properties must hold:
//!
//! 1. nothing reaches the inside for a Request-URI that is neither a served domain nor the
//!    edge's external listener, nor with a Route beyond the edge's own, unless the request
//!    belongs to a dialog the edge recorded for that very connection (the oracle keeps its
//!    own book of those);
//! 2. no response reaches the inside unless it answers a request the Director sent to that
//!    connection;
//! 3. the call table stays within its bounds, per source and in total;
//! 4. nothing panics, and whatever reaches the inside parses again.
//!
//! The same world runs under `cargo fuzz` (`sip_session`: the input chooses the steps) and
//! in `tests/outsider.rs` (a seeded generator, deterministic).
//!
//! Here: the world (its connections, the Director's, and what everyone learned) and its
//! steps; `choices` has where the choices come from, `clients` what the outsiders learn and
//! write, `director` the honest Director, and `oracle` the book and the properties.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::sim::{SimEdge, SimEvent};
use crate::core::sip::calls::CallLimits;
use crate::core::sip::parse::HeadLimits;
use crate::core::sip::proxy::{Flow, Side};
use crate::core::sip::session::Session;
use crate::core::sip::token::FlowId;
use choices::one;

mod choices;
mod clients;
mod director;
mod oracle;

pub use choices::{Choices, FromInput, Seeded};

/// Outside connections (flows 1..=CLIENTS), two of them from one address.
const CLIENTS: u64 = 4;
/// The Director's connection.
const DIRECTOR: FlowId = FlowId(100);
pub const MAX_CALLS: usize = 8;
pub const MAX_CALLS_PER_SOURCE: usize = 3;

const REPARSE: HeadLimits = HeadLimits {
    max_headers: 4096,
    max_line_bytes: 1 << 20,
};

/// A header line's name, lower-cased.
fn header_name(line: &str) -> String {
    line.split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// A dialog as the oracle books it: the connection, the Call-ID, the initiator's tag, and
/// whether the outside initiated it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Booked {
    flow: FlowId,
    call_id: String,
    initiator_tag: String,
    outside_initiated: bool,
}

/// A request that reached the Director and waits for its answer.
struct Pending {
    text: String,
}

/// A dialog the Director can send in: its route set and tags.
#[derive(Clone)]
struct DirectorDialog {
    call_id: String,
    local_tag: String,
    remote_tag: String,
    route: Vec<String>,
}

/// The world: outside connections, the Director, and what everyone learned.
pub struct World {
    edge: SimEdge,
    /// Each outside connection's session, by client number; a client that is closed comes
    /// back on a new flow (the edge never reuses a flow id).
    sessions: BTreeMap<u64, Session>,
    next_flow: u64,
    director: Session,
    now: Instant,
    /// What the outside saw: tokens, Via lines, Call-IDs, tags.
    tokens: Vec<String>,
    vias: Vec<Vec<String>>,
    call_ids: Vec<String>,
    tags: Vec<String>,
    /// The oracle: dialogs recorded per connection; requests the Director sent to each
    /// connection (Call-ID, the Director's branch).
    booked: BTreeSet<Booked>,
    sent_out: BTreeSet<(FlowId, String, String)>,
    pending: Vec<Pending>,
    director_dialogs: Vec<DirectorDialog>,
    /// A REGISTER's Path per connection.
    paths: BTreeMap<u64, String>,
    /// What each client remembers of its own: dialogs it started (Call-ID, its tag), tokens
    /// that reached it, requests the Director sent it (to answer honestly).
    own_dialogs: BTreeMap<u64, Vec<(String, String)>>,
    own_tokens: BTreeMap<u64, Vec<String>>,
    inbox: BTreeMap<u64, Vec<String>>,
    counter: u64,
    /// Steps taken (for reports).
    pub steps: usize,
    /// Messages that reached the Director so far.
    pub reached_director: usize,
    /// Of those, requests for a Request-URI the out-of-dialog rules refuse, let in by a
    /// proven dialog (the oracle's other side is exercised too).
    pub proven_elsewhere: usize,
    /// Responses from outside that reached the Director.
    pub responses_in: usize,
}

fn client_addr(conn: u64) -> SocketAddr {
    // Connections 1 and 2 share an address: per-source limits count them together.
    let host = if conn <= 2 { 7 } else { conn as u8 + 10 };
    SocketAddr::from(([203, 0, 113, host], 40000 + conn as u16))
}

impl World {
    pub fn new() -> World {
        let proxy = super::golden::proxy();
        let mut limits = super::sim::SimEdge::lenient_limits(super::golden::limits());
        limits.max_calls_per_source = MAX_CALLS_PER_SOURCE;
        limits.max_outstanding = 64;
        let mut edge = SimEdge::new(
            proxy,
            limits,
            SimEdge::no_bans(),
            CallLimits {
                max_calls: MAX_CALLS,
                max_duration: Duration::from_secs(3600),
            },
        );
        #[allow(clippy::disallowed_methods)] // the world starts simulated time somewhere
        let now = Instant::now();
        let mut sessions = BTreeMap::new();
        for conn in 1..=CLIENTS {
            edge.flows.insert(FlowId(conn), Side::External);
            let flow = Flow::new(
                &edge.proxy.keys(),
                FlowId(conn),
                Side::External,
                client_addr(conn),
            );
            sessions.insert(conn, Session::new(flow, now));
        }
        edge.flows.insert(DIRECTOR, Side::Internal);
        let flow = Flow::new(
            &edge.proxy.keys(),
            DIRECTOR,
            Side::Internal,
            SocketAddr::from(([127, 0, 0, 1], 5070)),
        );
        World {
            edge,
            sessions,
            next_flow: 1000,
            director: Session::new(flow, now),
            now,
            tokens: Vec::new(),
            vias: Vec::new(),
            call_ids: vec!["c0".into()],
            tags: vec!["t0".into()],
            booked: BTreeSet::new(),
            sent_out: BTreeSet::new(),
            pending: Vec::new(),
            director_dialogs: Vec::new(),
            paths: BTreeMap::new(),
            own_dialogs: BTreeMap::new(),
            own_tokens: BTreeMap::new(),
            inbox: BTreeMap::new(),
            counter: 0,
            steps: 0,
            reached_director: 0,
            proven_elsewhere: 0,
            responses_in: 0,
        }
    }

    fn fresh(&mut self, what: &str) -> String {
        self.counter += 1;
        format!("{what}{}", self.counter)
    }

    /// Refusals by reason so far.
    pub fn rejects(&self) -> &BTreeMap<&'static str, u64> {
        &self.edge.rejects
    }

    /// Runs steps until the choices run out (or `max` steps).
    pub fn run(&mut self, c: &mut dyn Choices, max: usize) {
        while c.more() && self.steps < max {
            self.step(c);
            self.check();
            self.steps += 1;
        }
    }

    fn step(&mut self, c: &mut dyn Choices) {
        let conn = 1 + c.pick(CLIENTS as usize) as u64;
        match c.pick(14) {
            0..=2 => {
                let msg = self.client_request(c, conn);
                self.on_client_bytes(conn, msg.as_bytes());
            }
            3 => {
                let msg = self.new_dialog(c, conn);
                self.on_client_bytes(conn, msg.as_bytes());
            }
            4 | 5 => {
                if let Some(msg) = self.in_own_dialog(c, conn) {
                    self.on_client_bytes(conn, msg.as_bytes());
                }
            }
            6 => {
                if let Some(msg) = self.client_response(c, conn) {
                    self.on_client_bytes(conn, msg.as_bytes());
                }
            }
            7 => {
                if let Some(msg) = self.honest_response(c, conn) {
                    self.on_client_bytes(conn, msg.as_bytes());
                }
            }
            8..=10 => self.director_answers(c),
            11 => self.director_request(c),
            12 => {
                let conn = 1 + c.pick(CLIENTS as usize) as u64;
                let raw = c.bytes(300);
                self.on_client_bytes(conn, &raw);
            }
            _ => {
                let secs = one(c, &[1u64, 5, 30, 200, 4000]);
                self.tick(Duration::from_secs(secs));
            }
        }
    }

    fn tick(&mut self, by: Duration) {
        self.now += by;
        self.edge.calls.expire(self.now);
        let now = self.now;
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for conn in ids {
            let closed = match self.sessions.get_mut(&conn) {
                Some(s) => {
                    s.handle_timeout(now, &mut self.edge);
                    let _ = s.take_transmit();
                    s.closed().is_some()
                }
                None => false,
            };
            if closed {
                self.reconnect(conn);
            }
        }
        self.deliver();
    }

    /// A closed connection comes back as a new one on the same flow number (the edge's
    /// flow ids are never reused; here the oracle forgets what the old one recorded).
    fn reconnect(&mut self, conn: u64) {
        if let Some(old) = self.sessions.get(&conn) {
            self.edge.flows.remove(&old.flow().id);
        }
        self.next_flow += 1;
        let id = FlowId(self.next_flow);
        self.edge.flows.insert(id, Side::External);
        let flow = Flow::new(
            &self.edge.proxy.keys(),
            id,
            Side::External,
            client_addr(conn),
        );
        self.sessions.insert(conn, Session::new(flow, self.now));
    }

    fn on_client_bytes(&mut self, conn: u64, bytes: &[u8]) {
        let now = self.now;
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        session.handle_input(now, bytes, &mut self.edge);
        let answer = session.take_transmit();
        let closed = session.closed().is_some();
        let flow = session.flow().id;
        if let Some(answer) = answer {
            self.learn(&answer);
        }
        self.deliver_from(flow);
        if closed {
            self.reconnect(conn);
        }
    }

    /// Moves what the edge sent: to the Director (pending requests, checked), to clients
    /// (learned).
    fn deliver_from(&mut self, origin: FlowId) {
        for event in self.edge.take_events() {
            match event {
                SimEvent::ToPool { bytes, .. } => self.at_director(origin, &bytes, true),
                SimEvent::ToFlow { flow, bytes, .. } if flow == DIRECTOR => {
                    self.at_director(origin, &bytes, false)
                }
                SimEvent::ToFlow { flow, bytes, .. } => self.at_client(flow, &bytes),
                SimEvent::Rejected {
                    answer: Some(a), ..
                } => self.learn(&a),
                _ => {}
            }
        }
    }

    fn deliver(&mut self) {
        self.deliver_from(DIRECTOR);
    }

    fn on_director_bytes(&mut self, bytes: &[u8]) {
        self.director.handle_input(self.now, bytes, &mut self.edge);
        let _ = self.director.take_transmit();
        self.deliver();
    }
}

impl Default for World {
    fn default() -> World {
        World::new()
    }
}

/// The fuzz target's entry: the input chooses every step.
pub fn run(data: &[u8]) {
    let mut world = World::new();
    world.run(&mut FromInput(data), 2000);
}
