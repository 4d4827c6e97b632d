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

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::sim::{SimEdge, SimEvent};
use crate::core::net::SourceKey;
use crate::core::sip::calls::{CallLimits, Owner};
use crate::core::sip::message::Message;
use crate::core::sip::parse::{parse_uri, HeadLimits};
use crate::core::sip::proxy::{Flow, Side};
use crate::core::sip::session::Session;
use crate::core::sip::token::FlowId;

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

/// A source of choices: fuzz input or a seeded generator.
pub trait Choices {
    /// A number in `0..n` (`n` > 0).
    fn pick(&mut self, n: usize) -> usize;
    /// Whether there is anything left to choose from (fuzz input runs out).
    fn more(&self) -> bool;
    /// Raw bytes, up to `max`.
    fn bytes(&mut self, max: usize) -> Vec<u8>;
}

/// A header line's name, lower-cased.
fn header_name(line: &str) -> String {
    line.split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// One of `items`, as `c` picks (callers pass non-empty lists).
fn one<T: Clone>(c: &mut dyn Choices, items: &[T]) -> T {
    let i = c.pick(items.len());
    #[allow(clippy::indexing_slicing)] // pick(n) < n; an empty list is a harness bug
    items[i].clone()
}

/// Choices from fuzz input.
pub struct FromInput<'a>(pub &'a [u8]);

impl Choices for FromInput<'_> {
    fn pick(&mut self, n: usize) -> usize {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        usize::from(b) % n.max(1)
    }
    fn more(&self) -> bool {
        !self.0.is_empty()
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.pick(max.max(1) + 1).min(self.0.len());
        let (take, rest) = self.0.split_at(n);
        self.0 = rest;
        take.to_vec()
    }
}

/// A small deterministic generator (xorshift64*), for the property test.
pub struct Seeded {
    state: u64,
    left: usize,
}

impl Seeded {
    pub fn new(seed: u64, steps: usize) -> Seeded {
        Seeded {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            left: steps,
        }
    }
}

impl Choices for Seeded {
    fn pick(&mut self, n: usize) -> usize {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (r % n.max(1) as u64) as usize
    }
    fn more(&self) -> bool {
        self.left > 0
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.pick(max.max(1) + 1);
        (0..n).map(|_| self.pick(256) as u8).collect()
    }
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
                edge.proxy.keys(),
                FlowId(conn),
                Side::External,
                client_addr(conn),
            );
            sessions.insert(conn, Session::new(flow, now));
        }
        edge.flows.insert(DIRECTOR, Side::Internal);
        let flow = Flow::new(
            edge.proxy.keys(),
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
            self.edge.proxy.keys(),
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

    /// What reached the Director from outside connection `origin` (via the pool or its
    /// flow): the properties are checked here.
    fn at_director(&mut self, origin: FlowId, bytes: &[u8], via_pool: bool) {
        self.reached_director += 1;
        let msg = match Message::parse(Bytes::copy_from_slice(bytes), &REPARSE) {
            Ok(m) => m,
            Err(why) => panic!(
                "the edge forwarded what it rejects ({why:?}):\n{}",
                String::from_utf8_lossy(bytes)
            ),
        };
        let text = String::from_utf8_lossy(bytes).to_string();
        let call_id = String::from_utf8_lossy(msg.bytes(msg.call_id)).to_string();
        let tag = |t: Option<crate::core::sip::parse::Span>| {
            t.map(|t| String::from_utf8_lossy(msg.bytes(t)).to_string())
        };
        let (from_tag, to_tag) = (tag(msg.from_tag), tag(msg.to_tag));
        if msg.is_request() {
            assert!(
                via_pool,
                "a request from outside went somewhere else: {text}"
            );
            let proven = self.proven(origin, &call_id, from_tag.as_deref(), to_tag.as_deref());
            let ruri = msg
                .request_uri()
                .map(|r| msg.bytes(r).to_vec())
                .unwrap_or_default();
            let allowed_ruri = parse_uri(&ruri).is_ok_and(|u| {
                let host = u.host.of(&ruri);
                let served = host.eq_ignore_ascii_case(b"sipedge.test")
                    && matches!(u.port, None | Some(5060) | Some(5061));
                let listener = host.eq_ignore_ascii_case(b"edge.sipedge.test")
                    && matches!(u.port, None | Some(5061));
                served || listener
            });
            assert!(
                proven || allowed_ruri,
                "property 1: reached the inside for {} without a proven dialog:\n{text}",
                String::from_utf8_lossy(&ruri)
            );
            assert!(
                proven || msg.routes.is_empty(),
                "property 1: a Route from outside reached the inside without a proven dialog:\n{text}"
            );
            assert!(
                !ruri.to_ascii_lowercase().windows(5).any(|w| w == b"maddr"),
                "maddr reached the inside:\n{text}"
            );
            if !allowed_ruri {
                self.proven_elsewhere += 1;
            }
            let method = msg.method();
            let forms = method.is_some_and(|m| m.forms_dialog()) && to_tag.is_none();
            if forms {
                if let Some(t) = &from_tag {
                    self.booked.insert(Booked {
                        flow: origin,
                        call_id: call_id.clone(),
                        initiator_tag: t.clone(),
                        outside_initiated: true,
                    });
                }
            }
            if method != Some(crate::core::sip::message::Method::Ack) {
                self.pending.push(Pending { text });
            }
        } else {
            assert!(!via_pool, "a response went to the pool: {text}");
            self.responses_in += 1;
            // The edge removed its own Via: the top one is the Director's.
            let branch = msg
                .top_via()
                .and_then(|v| v.branch)
                .map(|b| String::from_utf8_lossy(msg.bytes(b)).to_string())
                .unwrap_or_default();
            assert!(
                self.sent_out
                    .contains(&(origin, call_id.clone(), branch.clone())),
                "property 2: a response the Director never asked flow {} for \
                 reached it (Call-ID {call_id}, branch {branch}):\n{text}",
                origin.0
            );
        }
    }

    /// Whether the oracle's book says connection `conn` may speak in this dialog.
    fn proven(
        &self,
        flow: FlowId,
        call_id: &str,
        from_tag: Option<&str>,
        to_tag: Option<&str>,
    ) -> bool {
        self.booked.iter().any(|b| {
            b.flow == flow
                && b.call_id == call_id
                && if b.outside_initiated {
                    from_tag == Some(b.initiator_tag.as_str())
                } else {
                    to_tag == Some(b.initiator_tag.as_str())
                }
        })
    }

    /// What reached an outside connection: learned.
    fn at_client(&mut self, flow: FlowId, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes).to_string();
        let conn = self
            .sessions
            .iter()
            .find(|(_, s)| s.flow().id == flow)
            .map_or(0, |(c, _)| *c);
        let mine = self.own_tokens.entry(conn).or_default();
        for t in tokens_in(text.as_bytes()) {
            push_bounded(mine, t);
        }
        if !text.starts_with("SIP/2.0") {
            let inbox = self.inbox.entry(conn).or_default();
            if inbox.len() >= 16 {
                inbox.remove(0);
            }
            inbox.push(text.clone());
        }
        // A request the Director sent: the oracle notes it (responses to it may go in), and
        // a dialog-forming one books the dialog for this connection.
        if let Ok(msg) = Message::parse(Bytes::copy_from_slice(bytes), &REPARSE) {
            if msg.is_request() {
                let call_id = String::from_utf8_lossy(msg.bytes(msg.call_id)).to_string();
                if let Some(v) = msg.vias.get(1).and_then(|v| v.branch) {
                    let branch = String::from_utf8_lossy(msg.bytes(v)).to_string();
                    self.sent_out.insert((flow, call_id.clone(), branch));
                }
                if msg.method().is_some_and(|m| m.forms_dialog()) && msg.to_tag.is_none() {
                    if let Some(t) = msg.from_tag {
                        self.booked.insert(Booked {
                            flow,
                            call_id,
                            initiator_tag: String::from_utf8_lossy(msg.bytes(t)).to_string(),
                            outside_initiated: false,
                        });
                    }
                }
            }
        }
        self.learn(text.as_bytes());
    }

    fn learn(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let mut vias = Vec::new();
        for line in text.split("\r\n") {
            if line.starts_with("Via:") {
                vias.push(line.to_string());
            }
            if let Some(id) = line.strip_prefix("Call-ID: ") {
                push_bounded(&mut self.call_ids, id.to_string());
            }
            if let Some(at) = line.find(";tag=") {
                let tag: String = line[at + 5..]
                    .chars()
                    .take_while(|c| !matches!(c, ';' | '>' | ' ' | ','))
                    .collect();
                push_bounded(&mut self.tags, tag);
            }
        }
        if !vias.is_empty() {
            if self.vias.len() >= 16 {
                self.vias.remove(0);
            }
            self.vias.push(vias);
        }
        for t in tokens_in(text.as_bytes()) {
            push_bounded(&mut self.tokens, t);
        }
    }

    /// An honest new dialog: an INVITE or SUBSCRIBE to a served domain, remembered.
    fn new_dialog(&mut self, c: &mut dyn Choices, conn: u64) -> String {
        let method = one(c, &["INVITE", "SUBSCRIBE"]);
        let call_id = self.fresh("dlg");
        let tag = self.fresh("tag");
        let mine = self.own_dialogs.entry(conn).or_default();
        if mine.len() >= 8 {
            mine.remove(0);
        }
        mine.push((call_id.clone(), tag.clone()));
        let branch = self.fresh("z9hG4bKnd");
        format!(
            "{method} sip:bob@sipedge.test SIP/2.0\r\n\
             Via: SIP/2.0/TLS 192.168.1.{conn}:5061;branch={branch}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice{conn}@sipedge.test>;tag={tag}\r\n\
             To: <sip:bob@sipedge.test>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 {method}\r\n\
             Contact: <sip:alice@192.168.1.{conn}:5061;transport=tls>\r\n\
             Content-Length: 0\r\n\r\n"
        )
    }

    /// A request in one of the client's own dialogs, with a token it saw (mostly its own),
    /// to a target of its choosing: the out-of-dialog rules do not apply when the dialog is
    /// proven, so this is where a proven dialog reaches anywhere.
    fn in_own_dialog(&mut self, c: &mut dyn Choices, conn: u64) -> Option<String> {
        let mine = self.own_dialogs.get(&conn)?.clone();
        if mine.is_empty() {
            return None;
        }
        let (call_id, tag) = one(c, &mine);
        let own = self.own_tokens.get(&conn).cloned().unwrap_or_default();
        let token = if c.pick(3) > 0 && !own.is_empty() {
            one(c, &own)
        } else {
            Self::any(c, &self.tokens, "o0000000000000001deadbeefdeadbeefdead").to_string()
        };
        let ruri = one(
            c,
            &[
                "sip:bob@10.0.0.30:5061;transport=tls",
                "sip:+19005551234@evil.example",
                "sip:127.0.0.2:9095",
                "sip:bob@sipedge.test",
            ],
        );
        let route = match c.pick(3) {
            0 => format!("Route: <sip:{token}@edge.sipedge.test:5061;transport=tls;lr>, <sip:{token}@127.0.0.2:5061;transport=tls;lr>\r\n"),
            1 => format!("Route: <sip:{token}@edge.sipedge.test:5061;transport=tls;lr>, <sip:fe1.sipedge.test;lr>\r\n"),
            _ => format!("Route: <sip:{token}@edge.sipedge.test:5061;transport=tls;lr>\r\n"),
        };
        let method = one(c, &["BYE", "INFO", "ACK", "UPDATE", "REFER"]);
        let to_tag = Self::any(c, &self.tags, "t0").to_string();
        let branch = self.fresh("z9hG4bKid");
        Some(format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/TLS 192.168.1.{conn}:5061;branch={branch}\r\n\
             {route}Max-Forwards: 70\r\n\
             From: <sip:alice{conn}@sipedge.test>;tag={tag}\r\n\
             To: <sip:bob@sipedge.test>;tag={to_tag}\r\n\
             Call-ID: {call_id}\r\nCSeq: 2 {method}\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    /// The client answers a request the Director sent it, as a UA does (or with another
    /// Call-ID, which must not pass).
    fn honest_response(&mut self, c: &mut dyn Choices, conn: u64) -> Option<String> {
        let inbox = self.inbox.get(&conn)?;
        if inbox.is_empty() {
            return None;
        }
        let req = one(c, inbox);
        let head = req.split("\r\n\r\n").next().unwrap_or_default();
        let status = one(c, &["200 OK", "180 Ringing", "481 Call Does Not Exist"]);
        let mut out = format!("SIP/2.0 {status}\r\n");
        for line in head.split("\r\n").skip(1) {
            match header_name(line).as_str() {
                "via" | "from" | "cseq" | "record-route" => {
                    out.push_str(line);
                    out.push_str("\r\n");
                }
                "call-id" => {
                    if c.pick(5) == 0 {
                        out.push_str("Call-ID: tampered\r\n");
                    } else {
                        out.push_str(line);
                        out.push_str("\r\n");
                    }
                }
                "to" => {
                    out.push_str(line);
                    if !line.contains("tag=") {
                        out.push_str(";tag=ua");
                    }
                    out.push_str("\r\n");
                }
                _ => {}
            }
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        Some(out)
    }

    fn any<'a>(c: &mut dyn Choices, list: &'a [String], default: &'a str) -> &'a str {
        if list.is_empty() {
            default
        } else {
            list.get(c.pick(list.len())).map_or(default, String::as_str)
        }
    }

    /// A request an outsider writes with what it knows.
    fn client_request(&mut self, c: &mut dyn Choices, conn: u64) -> String {
        const METHODS: [&str; 10] = [
            "INVITE",
            "BYE",
            "OPTIONS",
            "MESSAGE",
            "INFO",
            "SERVICE",
            "REGISTER",
            "ACK",
            "CANCEL",
            "SUBSCRIBE",
        ];
        let method = one(c, &METHODS);
        let ruri = match c.pick(10) {
            0 | 1 => "sip:bob@sipedge.test".to_string(),
            2 => "sip:+19005551234@evil.example".into(),
            3 => "sip:127.0.0.2:9095".into(),
            4 => "sip:edge.sipedge.test:5061".into(),
            5 => "sip:bob@sipedge.test;maddr=198.51.100.5".into(),
            6 => "sip:edge.sipedge.test:9095".into(),
            7 => "sip:bob@10.0.0.30:5061;transport=tls".into(),
            8 => "sip:bob@sipedge.test:9095".into(),
            _ => "tel:+19005551234".into(),
        };
        let call_id = match c.pick(3) {
            0 => self.fresh("call"),
            _ => Self::any(c, &self.call_ids, "c0").to_string(),
        };
        let from_tag = match c.pick(3) {
            0 => self.fresh("f"),
            _ => Self::any(c, &self.tags, "t0").to_string(),
        };
        let to = match c.pick(3) {
            0 => String::new(),
            _ => format!(";tag={}", Self::any(c, &self.tags, "t0")),
        };
        let token = Self::any(c, &self.tokens, "o0000000000000001deadbeefdeadbeefdead").to_string();
        let route = match c.pick(8) {
            0 | 1 => String::new(),
            2 => format!("Route: <sip:{token}@edge.sipedge.test:5061;transport=tls;lr>, <sip:{token}@127.0.0.2:5061;transport=tls;lr>\r\n"),
            3 => format!("Route: <sip:{token}@edge.sipedge.test:5061;transport=tls;lr>, <sip:fe1.sipedge.test;lr>\r\n"),
            4 => format!("Route: <sip:{token}@edge.sipedge.test:5061;lr>, <sip:127.0.0.2:9095;lr>\r\n"),
            5 => "Route: <sip:198.51.100.5;lr>\r\n".into(),
            6 => "Route: <sip:edge.sipedge.test;lr;maddr=10.0.0.9>\r\n".into(),
            _ => "Route: <sip:edge.sipedge.test:5061;lr>\r\n".into(),
        };
        let extra = match c.pick(6) {
            0 => "Content-Type: application/msrtc-media-relay-auth+xml\r\n",
            1 => "P-Asserted-Identity: <sip:ceo@sipedge.test>\r\n",
            _ => "",
        };
        let branch = self.fresh("z9hG4bKcl");
        format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/TLS 192.168.1.{conn}:5061;branch={branch};rport\r\n\
             {route}Max-Forwards: 70\r\n\
             From: <sip:alice{conn}@sipedge.test>;tag={from_tag}\r\n\
             To: <sip:bob@sipedge.test>{to}\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 {method}\r\n\
             Contact: <sip:alice@192.168.1.{conn}:5061;transport=tls>\r\n\
             {extra}Content-Length: 0\r\n\r\n"
        )
    }

    /// A response an outsider writes: the Vias of something it saw (its own or learned),
    /// with a Call-ID and tags of its choosing.
    fn client_response(&mut self, c: &mut dyn Choices, _conn: u64) -> Option<String> {
        if self.vias.is_empty() {
            return None;
        }
        let vias = one(c, &self.vias);
        let call_id = Self::any(c, &self.call_ids, "c0").to_string();
        let tag = Self::any(c, &self.tags, "t0").to_string();
        let status = one(c, &["100 Trying", "180 Ringing", "200 OK", "486 Busy Here"]);
        let method = one(c, &["INVITE", "MESSAGE", "BYE", "OPTIONS"]);
        Some(format!(
            "SIP/2.0 {status}\r\n{}\r\nFrom: <sip:bob@sipedge.test>;tag={tag}\r\n\
             To: <sip:alice@sipedge.test>;tag=x{tag}\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n\
             Content-Length: 0\r\n\r\n",
            vias.join("\r\n")
        ))
    }

    /// The honest Director answers a pending request.
    fn director_answers(&mut self, c: &mut dyn Choices) {
        if self.pending.is_empty() {
            return;
        }
        let req = self.pending.remove(c.pick(self.pending.len())).text;
        let status = one(
            c,
            &["200 OK", "180 Ringing", "486 Busy Here", "401 Unauthorized"],
        );
        let uas_tag = self.fresh("uas");
        let mut out = format!("SIP/2.0 {status}\r\n");
        let head = req.split("\r\n\r\n").next().unwrap_or_default();
        let mut rr = Vec::new();
        let (mut call_id, mut from_tag, mut conn) = (String::new(), String::new(), 0u64);
        for line in head.split("\r\n").skip(1) {
            match header_name(line).as_str() {
                "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => {
                    out.push_str(line);
                    out.push_str("\r\n");
                }
                "record-route" => {
                    rr.push(
                        line.split_once(':')
                            .map(|(_, v)| v.trim().to_string())
                            .unwrap_or_default(),
                    );
                    out.push_str(line);
                    out.push_str("\r\n");
                }
                "to" | "t" => {
                    out.push_str(line);
                    if !line.contains("tag=") {
                        out.push_str(&format!(";tag={uas_tag}"));
                    }
                    out.push_str("\r\n");
                }
                _ => {}
            }
            if let Some(v) = line.strip_prefix("Call-ID: ") {
                call_id = v.to_string();
            }
            if line.starts_with("From:") {
                if let Some(at) = line.find(";tag=") {
                    from_tag = line[at + 5..].to_string();
                }
                if let Some(at) = line.find("alice") {
                    conn = line[at + 5..]
                        .chars()
                        .next()
                        .and_then(|d| d.to_digit(10))
                        .unwrap_or(0)
                        .into();
                }
            }
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        // A 2xx to a dialog-forming request: the Director may send in that dialog later.
        if status.starts_with("200") && !rr.is_empty() && conn > 0 {
            let route = rr
                .iter()
                .flat_map(|v| v.split(", ").map(str::to_string).collect::<Vec<_>>())
                .collect();
            self.director_dialogs.push(DirectorDialog {
                call_id,
                local_tag: uas_tag,
                remote_tag: from_tag,
                route,
            });
        }
        if req.starts_with("REGISTER ") && status.starts_with("200") && conn > 0 {
            if let Some(path) = head.split("\r\n").find_map(|l| l.strip_prefix("Path: ")) {
                self.paths.insert(conn, path.to_string());
            }
        }
        self.on_director_bytes(out.as_bytes());
    }

    /// The honest Director sends a request out: in a dialog it holds, or to a registered
    /// contact by its Path.
    fn director_request(&mut self, c: &mut dyn Choices) {
        let n = self.fresh("d");
        let msg = if !self.director_dialogs.is_empty() && c.pick(2) == 0 {
            let d = one(c, &self.director_dialogs);
            let method = one(c, &["BYE", "INFO", "UPDATE"]);
            format!(
                "{method} sip:alice@192.168.1.1:5061;transport=tls SIP/2.0\r\n\
                 Via: SIP/2.0/TLS 10.0.0.30:5061;branch=z9hG4bK{n}\r\n\
                 Route: {}\r\nMax-Forwards: 70\r\n\
                 From: <sip:bob@sipedge.test>;tag={}\r\nTo: <sip:alice@sipedge.test>;tag={}\r\n\
                 Call-ID: {}\r\nCSeq: 7 {method}\r\nContent-Length: 0\r\n\r\n",
                d.route.join(", "),
                d.local_tag,
                d.remote_tag,
                d.call_id
            )
        } else if !self.paths.is_empty() {
            let keys: Vec<u64> = self.paths.keys().copied().collect();
            let conn = one(c, &keys);
            let path = self.paths.get(&conn).cloned().unwrap_or_default();
            let method = one(c, &["MESSAGE", "INVITE", "OPTIONS", "SUBSCRIBE"]);
            format!(
                "{method} sip:alice@192.168.1.{conn}:5061;transport=tls SIP/2.0\r\n\
                 Via: SIP/2.0/TLS 10.0.0.30:5061;branch=z9hG4bK{n}\r\n\
                 Route: {path}\r\nMax-Forwards: 70\r\n\
                 From: <sip:bob@sipedge.test>;tag=b{n}\r\nTo: <sip:alice@sipedge.test>\r\n\
                 Call-ID: out-{n}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
            )
        } else {
            return;
        };
        self.on_director_bytes(msg.as_bytes());
    }

    fn on_director_bytes(&mut self, bytes: &[u8]) {
        self.director.handle_input(self.now, bytes, &mut self.edge);
        let _ = self.director.take_transmit();
        self.deliver();
    }

    /// The properties that hold between steps.
    fn check(&self) {
        assert!(
            self.edge.calls.len() <= MAX_CALLS,
            "property 3: {} calls, more than {MAX_CALLS}",
            self.edge.calls.len()
        );
        for conn in 1..=CLIENTS {
            let owner = Owner::Source(SourceKey::of(client_addr(conn).ip()));
            assert!(
                self.edge.calls.count(owner) <= MAX_CALLS_PER_SOURCE,
                "property 3: a source holds {} calls",
                self.edge.calls.count(owner)
            );
        }
        assert!(self.tokens.len() <= 64 && self.pending.len() <= 4096);
    }
}

impl Default for World {
    fn default() -> World {
        World::new()
    }
}

/// Tokens in text: a kind letter and 36 hex digits, wherever they appear.
fn tokens_in(b: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 37 <= b.len() {
        let kind = b
            .get(i)
            .is_some_and(|k| matches!(k, b'v' | b'p' | b'o' | b'i'));
        let hex = b
            .get(i + 1..i + 37)
            .is_some_and(|h| h.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        if kind && hex {
            out.push(String::from_utf8_lossy(b.get(i..i + 37).unwrap_or_default()).to_string());
            i += 37;
        } else {
            i += 1;
        }
    }
    out
}

fn push_bounded(list: &mut Vec<String>, item: String) {
    if item.is_empty() || item.len() > 200 || list.contains(&item) {
        return;
    }
    if list.len() >= 64 {
        list.remove(0);
    }
    list.push(item);
}

/// The fuzz target's entry: the input chooses every step.
pub fn run(data: &[u8]) {
    let mut world = World::new();
    world.run(&mut FromInput(data), 2000);
}
