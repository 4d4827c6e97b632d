//! The Access Edge's proxy decision for one validated message: where it goes, with which
//! edits, or why it is refused.
//!
//! Owns the proxy behaviour of RFC 3261 §16 as an edge applies it: loop and Max-Forwards
//! checks, Proxy-Require, Route popping, the edge's Via with its flow token and a branch
//! that proves the transaction, received/rport (RFC 3581), double Record-Route when
//! crossing interfaces (RFC 5658) with tokens bound to the dialog, Path on REGISTER
//! (RFC 3327), stripping trust-domain headers from outside, and routing back by token.
//!
//! What a request from outside may reach is decided here, as a proof or its absence: a
//! Record-Route token of this connection's dialog (its Call-ID and the initiator's tag, the
//! side that initiated it) proves the request belongs to a dialog the edge recorded, and
//! only such a request may name any Request-URI or carry further Routes. Anything else is
//! held to the out-of-dialog rules: a Request-URI of a served domain or of the edge's own
//! external listener, no Route beyond the edge's own, no `maddr`. A response is forwarded
//! only when the branch in the edge's Via is the one the edge minted for the flows and the
//! transaction it answers.
//!
//! It does not own connections: it names flows by [`FlowId`] and the shell resolves them.

use crate::sync::RwLockExt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use super::federation::{discovered_key, within, Federation, Partner, PartnerId};
use super::message::{Kind, Message, Method, RouteEntry, Via, MAGIC_COOKIE};
use super::parse::{parse_uri, Span, Uri};
use super::reject::{self, Why};
use super::splice::Splice;
use super::token::{
    ClaimedToken, DialogBinding, FlowId, FlowKeys, FlowToken, SenderTx, TokenKind, TOKEN_LEN,
};
use super::HeaderName;

/// The trust zone a flow belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The Internet: remote users and partner edges.
    External,
    /// The Director pool and internal servers.
    Internal,
}

impl Side {
    /// The zone's name in logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Side::External => "external",
            Side::Internal => "internal",
        }
    }
}

/// One connection as the core sees it.
#[derive(Clone, Debug)]
pub struct Flow {
    pub id: FlowId,
    pub side: Side,
    pub remote: SocketAddr,
    /// `keys.token(TokenKind::Via, id)`, computed once when the connection is accepted.
    pub token: FlowToken,
    /// The federation partner whose edge this connection is (its verified certificate
    /// names the partner's FQDN); `None` for remote users and the inside.
    pub partner: Option<PartnerId>,
    /// The DNS subjectAltNames of the certificate the peer presented (and rustls verified),
    /// if any: what a discovered partner edge proves itself with.
    pub certificate: Option<Arc<[String]>>,
}

impl Flow {
    /// A flow with no partner and no certificate (a remote user's or the inside's).
    pub fn new(keys: &FlowKeys, id: FlowId, side: Side, remote: SocketAddr) -> Flow {
        Flow {
            id,
            side,
            remote,
            token: keys.token(TokenKind::Via, id),
            partner: None,
            certificate: None,
        }
    }
}

/// How the edge names itself on one side (in its Via, Record-Route and Path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideAddr {
    /// Host as written in URIs (a name, an IPv4 address or a bracketed IPv6 address).
    pub host: String,
    pub port: u16,
}

/// What the proxy needs to know of the topology.
#[derive(Clone, Debug, Default)]
pub struct ProxyConfig {
    pub external: SideAddr,
    pub internal: SideAddr,
    /// Every host name or address that means "this edge", on either side (lower-case).
    pub own_hosts: Vec<String>,
    /// The names and addresses of the external SIP listener (lower-case): with its port,
    /// the only own Request-URI a request from outside may name.
    pub external_hosts: Vec<String>,
    /// SIP domains served behind the edge (lower-case).
    pub served_domains: Vec<String>,
    /// Federation partners (empty: no federation).
    pub federation: Federation,
    /// Header names stripped from outside besides the built-in trust-domain headers
    /// (`firewall.strip_headers`, lower-case).
    pub strip_headers: Vec<String>,
    /// The Director pool's members: in a dialog, a Route or Request-URI may name them even
    /// where they share an address with the edge (a lab on loopback).
    pub next_hops: Vec<SocketAddr>,
}

impl Default for SideAddr {
    fn default() -> SideAddr {
        SideAddr {
            host: String::new(),
            port: 5061,
        }
    }
}

/// The key of a transaction forwarded to the pool: the edge's branch hash, with CANCEL
/// apart because it shares its INVITE's branch (RFC 3261 §9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TxKey {
    pub branch: u64,
    pub cancel: bool,
}

/// What a forwarded request proved about the dialog it claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// Nothing: a new request, or one whose dialog the edge did not record for this flow.
    /// It gets every out-of-dialog check (admission, overload shedding, drain).
    None,
    /// A Record-Route token of this flow bound to the request's Call-ID and tags.
    Dialog,
}

/// The decision for one message.
#[derive(Debug)]
pub enum Action {
    /// Forward to the next-hop pool. `tx` is `None` for ACK (no response comes back).
    ToPool {
        bytes: Vec<u8>,
        tx: Option<(TxKey, Method)>,
        proof: Proof,
    },
    /// Forward to a federation partner's edge, on any connection to it (opened if none).
    ToPartner {
        partner: PartnerId,
        bytes: Vec<u8>,
        proof: Proof,
    },
    /// Forward to a discovered partner's edge (open federation), found as `target` says.
    ToDiscovered {
        target: DiscoveredTarget,
        bytes: Vec<u8>,
        proof: Proof,
    },
    /// Forward on the flow named by a token. `completes` is set on a final response coming
    /// back from the pool, so the member's outstanding count can drop. `proof` is
    /// [`Proof::None`] for responses.
    ToFlow {
        flow: FlowId,
        bytes: Vec<u8>,
        completes: Option<TxKey>,
        proof: Proof,
    },
    /// Refuse. The shell answers with [`Proxy::answer`] on the arriving flow (if any answer
    /// can be formed) and counts the reason.
    Reject(Why),
    /// A relay-credentials request from the inside, for the edge's own A/V authentication
    /// service (`core::avauth`) to answer.
    Credentials,
}

impl Action {
    /// The proof of a forwarded request; `None` for anything else.
    pub fn proof(&self) -> Proof {
        match self {
            Action::ToPool { proof, .. }
            | Action::ToPartner { proof, .. }
            | Action::ToDiscovered { proof, .. }
            | Action::ToFlow { proof, .. } => *proof,
            Action::Reject(_) | Action::Credentials => Proof::None,
        }
    }
}

/// How to find a discovered partner's edge.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DiscoveredTarget {
    /// By SRV `_sipfederationtls._tcp.<domain>`, targets within the domain only.
    Domain(String),
    /// The edge a Route names (in a dialog), which lies within the partner's `domain`; its
    /// certificate must name `host`.
    Edge {
        host: String,
        port: u16,
        domain: String,
    },
}

/// Where a request from the inside goes outside.
enum Outside {
    Flow(FlowId),
    Partner(PartnerId),
    Discovered(DiscoveredTarget),
}

/// Who sent a request from outside, as federation sees it.
enum Sender<'a> {
    /// A remote user (or anyone who does not speak for another organisation).
    User,
    Partner(PartnerId, &'a Partner),
    /// An edge of another domain, proven by a certificate naming a host within it.
    Discovered {
        domain: String,
        edge: String,
    },
}

/// The proxy: configuration and keys, shared read-only by every connection.
pub struct Proxy {
    cfg: ProxyConfig,
    keys: FlowKeys,
    /// The partners in force: `cfg.federation` at first, replaced whole by a reload.
    federation: RwLock<Arc<Federation>>,
    /// `cfg.strip_headers` at first, replaced whole by a reload.
    strip_headers: RwLock<Arc<[String]>>,
    /// `cfg.next_hops` at first, replaced whole by a reload.
    next_hops: RwLock<Arc<[SocketAddr]>>,
}

const BRANCH_PREFIX: &[u8] = b"z9hG4bKse";
const PROBE_PREFIX: &str = "z9hG4bKprobe";

impl Proxy {
    pub fn new(cfg: ProxyConfig, keys: FlowKeys) -> Proxy {
        let federation = RwLock::new(Arc::new(cfg.federation.clone()));
        let strip_headers = RwLock::new(Arc::from(cfg.strip_headers.clone()));
        let next_hops = RwLock::new(Arc::from(cfg.next_hops.clone()));
        Proxy {
            cfg,
            keys,
            federation,
            strip_headers,
            next_hops,
        }
    }

    /// Puts new next-hop members in force (reload).
    pub fn set_next_hops(&self, members: &[SocketAddr]) {
        *self.next_hops.write_unpoisoned() = Arc::from(members.to_vec());
    }

    /// The partners in force now.
    pub fn federation(&self) -> Arc<Federation> {
        self.federation.read_unpoisoned().clone()
    }

    /// Puts new partners in force (reload): from the next message on.
    pub fn set_federation(&self, federation: Arc<Federation>) {
        *self.federation.write_unpoisoned() = federation;
    }

    /// Puts a new list of operator-named headers to strip from outside in force (reload).
    pub fn set_strip_headers(&self, names: &[String]) {
        let names: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        *self.strip_headers.write_unpoisoned() = Arc::from(names);
    }

    pub fn keys(&self) -> &FlowKeys {
        &self.keys
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }

    /// Decides what to do with a validated message that arrived on `from`.
    pub fn handle(&self, from: &Flow, msg: &Message) -> Action {
        let result = match msg.kind {
            Kind::Request { method, .. }
                if method == Method::Service && is_credentials_request(msg) =>
            {
                match from.side {
                    Side::Internal => Ok(Action::Credentials),
                    // From outside only through the inside (the Director authenticates the
                    // user and asks the edge's internal side); never answered here directly.
                    Side::External if self.request_uri_is_own(msg) => {
                        Err(Why::CredentialsFromOutside)
                    }
                    Side::External => self.inbound_request(from, msg, method),
                }
            }
            Kind::Request { method, .. } => match from.side {
                Side::External => self.inbound_request(from, msg, method),
                Side::Internal => self.outbound_request(from, msg, method),
            },
            Kind::Response { status } => self.response(from, msg, status),
        };
        result.unwrap_or_else(Action::Reject)
    }

    /// The answer to a refused message, or `None` when silence is the answer.
    pub fn answer(&self, raw: &[u8], why: Why, msg: Option<&Message>) -> Option<Vec<u8>> {
        let (status, reason) = why.status()?;
        let extra = match why {
            Why::PoolUnavailable { retry_after_secs }
            | Why::PartnerUnavailable { retry_after_secs }
            | Why::PartnerDialogs { retry_after_secs }
            | Why::Draining { retry_after_secs }
            | Why::Overloaded { retry_after_secs }
            | Why::CallLimit { retry_after_secs }
            | Why::RateLimited { retry_after_secs } => {
                format!("Retry-After: {retry_after_secs}\r\n").into_bytes()
            }
            Why::BadExtension => {
                // RFC 3261 §8.2.2.3: list what is not supported.
                let tags = msg.and_then(|m| m.proxy_require.map(|s| m.bytes(s).to_vec()));
                let mut line = b"Unsupported: ".to_vec();
                line.extend_from_slice(tags.as_deref().unwrap_or_default());
                line.extend_from_slice(b"\r\n");
                line
            }
            _ => Vec::new(),
        };
        reject::response(raw, status, reason, &extra)
    }

    /// An OPTIONS health probe for next-hop member `member` (RFC 3261 §11). Max-Forwards 1:
    /// the member answers it itself and never sends it further than one hop.
    pub fn probe(&self, member: usize, target: SocketAddr, seq: u32, from_domain: &str) -> Vec<u8> {
        let int = &self.cfg.internal;
        let target = match target {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        format!(
            "OPTIONS sip:{target};transport=tls SIP/2.0\r\n\
             Via: SIP/2.0/TLS {host}:{port};branch={PROBE_PREFIX}{member}x{seq}\r\n\
             Max-Forwards: 1\r\n\
             From: <sip:{from_domain}>;tag=probe{member}\r\n\
             To: <sip:{target}>\r\n\
             Call-ID: probe-{member}-{seq}@{from_domain}\r\n\
             CSeq: {seq} OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            host = int.host,
            port = int.port,
        )
        .into_bytes()
    }

    /// If `msg` answers one of this edge's probes: the member index, sequence and status.
    pub fn probe_answer(&self, msg: &Message) -> Option<(usize, u32, u16)> {
        let Kind::Response { status } = msg.kind else {
            return None;
        };
        let top = msg.top_via()?;
        let rest = msg
            .bytes(top.branch?)
            .strip_prefix(PROBE_PREFIX.as_bytes())?;
        let rest = std::str::from_utf8(rest).ok()?;
        let (member, seq) = rest.split_once('x')?;
        Some((member.parse().ok()?, seq.parse().ok()?, status))
    }

    /// A request from the Internet toward the Director pool.
    fn inbound_request(&self, from: &Flow, msg: &Message, method: Method) -> Result<Action, Why> {
        // RFC 3261 §16.3 step 4: a request from outside that already passed this edge is a loop.
        if msg
            .vias
            .iter()
            .any(|v| self.is_own_via(msg, v.host, v.port))
        {
            return Err(Why::Loop);
        }
        let federation = self.federation();
        let sender = self.sender(from, msg, method, &federation)?;
        let mut splice = Splice::new();
        self.decrement_max_forwards(msg, &mut splice)?;
        if msg.proxy_require.is_some() {
            return Err(Why::BadExtension);
        }
        // `maddr` tells whoever reads the URI next where to send it instead: from outside
        // that is a way to aim the inside's proxies anywhere.
        if self.any_maddr(msg) {
            return Err(Why::MaddrNotAllowed);
        }
        // In-dialog requests come back to the partner (any connection to its edge), to a
        // remote user on this very flow.
        let route_flow = match &sender {
            Sender::Partner(id, _) => FlowId::partner(id.0),
            Sender::Discovered { domain, .. } => FlowId::partner(discovered_key(domain.as_bytes())),
            Sender::User => from.id,
        };
        let popped = self.pop_own_routes(msg, &mut splice);
        let proof = self.inbound_proof(msg, route_flow, popped.token)?;
        let beyond = msg.routes.get(popped.count..).unwrap_or_default();
        match proof {
            Proof::None => {
                if !self.request_uri_allowed_outside_dialog(msg) {
                    return Err(Why::DomainNotServed);
                }
                if !beyond.is_empty() {
                    return Err(Why::RouteNotAllowed);
                }
            }
            // In a dialog the Request-URI is the peer's Contact and further Routes are the
            // inside's own Record-Routes; still, none may aim the inside back at another
            // service of the edge's internal side (its operations port, its relay).
            Proof::Dialog => {
                if beyond.iter().any(|e| self.names_edge_service(msg, e.uri)) {
                    return Err(Why::RouteNotAllowed);
                }
                let ruri = msg.request_uri().unwrap_or_default();
                if self.names_edge_service(msg, ruri) {
                    return Err(Why::RequestUriNotAllowed);
                }
            }
        }
        self.strip_from_outside(msg, &mut splice);
        self.fill_received(from, msg, &mut splice);

        let branch = self.our_branch(from.id, FlowId::POOL, msg);
        let insert_at = first_line_of(msg, HeaderName::Via);
        let int = &self.cfg.internal;
        let ext = &self.cfg.external;
        splice.insert_with(insert_at, |out| {
            write_via(out, int, branch, &from.token);
            match &sender {
                Sender::User => {}
                Sender::Partner(_, partner) => {
                    write_trust(out, "DirectPartner", partner.label().as_bytes())
                }
                Sender::Discovered { edge, .. } => {
                    write_trust(out, "DiscoveredPartner", edge.as_bytes())
                }
            }
        });
        if let Some(binding) = self.new_dialog(msg, method) {
            let token = self
                .keys
                .dialog_token(TokenKind::DialogFromOutside, route_flow, binding);
            // RFC 5658: one entry per interface; the top one faces the next hop.
            let at = first_line_of(msg, HeaderName::RecordRoute).min(insert_at);
            splice.insert_with(at, |out| {
                out.extend_from_slice(b"Record-Route: ");
                write_route_uri(out, int, Some(&token));
                out.extend_from_slice(b", ");
                write_route_uri(out, ext, Some(&token));
                out.extend_from_slice(b"\r\n");
            });
        }
        if method == Method::Register {
            // RFC 3327: requests for this contact come back through the edge, to this flow.
            let token = self.keys.token(TokenKind::Path, from.id);
            let at = first_line_of(msg, HeaderName::Path).min(insert_at);
            splice.insert_with(at, |out| {
                out.extend_from_slice(b"Path: ");
                write_route_uri(out, int, Some(&token));
                out.extend_from_slice(b"\r\n");
            });
        }
        let bytes = splice.apply_tidy(msg).ok_or(Why::MalformedStartLine)?;
        let tx = (method != Method::Ack).then_some((
            TxKey {
                branch,
                cancel: method == Method::Cancel,
            },
            method,
        ));
        Ok(Action::ToPool { bytes, tx, proof })
    }

    /// What a request from outside proves with the token of the edge's Route it carries:
    /// a dialog, only with a Record-Route token of `route_flow` (this connection, or this
    /// partner) bound to the request's Call-ID and initiator tag. A token that is not a
    /// token at all (a preloaded Route with a user part) or a genuine one of another flow
    /// proves nothing; a forged one, a Path or Via token, or a Record-Route token of
    /// another dialog is refused.
    fn inbound_proof(
        &self,
        msg: &Message,
        route_flow: FlowId,
        token: Option<&[u8]>,
    ) -> Result<Proof, Why> {
        let Some(text) = token else {
            return Ok(Proof::None);
        };
        let Ok(claimed) = ClaimedToken::parse(text) else {
            return Ok(Proof::None);
        };
        if !claimed.kind.is_dialog() {
            return Err(Why::InvalidFlowToken);
        }
        let flow = self.check_dialog_token(msg, &claimed, Side::External)?;
        Ok(if flow == route_flow {
            Proof::Dialog
        } else {
            Proof::None
        })
    }

    /// Checks a Record-Route token against the request's dialog: the initiator's tag is the
    /// From tag when the request goes the way the dialog's first request went (it arrived
    /// on the side that initiated), the To tag when it goes back.
    fn check_dialog_token(
        &self,
        msg: &Message,
        claimed: &ClaimedToken,
        arrived: Side,
    ) -> Result<FlowId, Why> {
        let initiated_outside = claimed.kind == TokenKind::DialogFromOutside;
        let same_way = initiated_outside == (arrived == Side::External);
        let tag = if same_way { msg.from_tag } else { msg.to_tag };
        let tag = tag.ok_or(Why::InvalidFlowToken)?;
        let binding = DialogBinding {
            call_id: msg.bytes(msg.call_id),
            initiator_tag: msg.bytes(tag),
        };
        self.keys
            .check(claimed, Some(binding))
            .map_err(|_| Why::InvalidFlowToken)
    }

    /// A request from the inside toward a remote user or a partner: routed by a token in a
    /// Route that names the edge (Path: a registered flow; Record-Route: a dialog, checked
    /// against the request's Call-ID and tags), or to a partner's domain.
    fn outbound_request(&self, from: &Flow, msg: &Message, method: Method) -> Result<Action, Why> {
        let mut splice = Splice::new();
        self.decrement_max_forwards(msg, &mut splice)?;
        if msg.proxy_require.is_some() {
            return Err(Why::BadExtension);
        }
        let popped = self.pop_own_routes(msg, &mut splice);
        let (outside, proof) = match popped.token {
            Some(text) => {
                let claimed = ClaimedToken::parse(text).map_err(|_| Why::InvalidFlowToken)?;
                let (flow, proof) = match claimed.kind {
                    TokenKind::Via => return Err(Why::InvalidFlowToken),
                    TokenKind::Path => (
                        self.keys
                            .check(&claimed, None)
                            .map_err(|_| Why::InvalidFlowToken)?,
                        Proof::None,
                    ),
                    TokenKind::DialogFromOutside | TokenKind::DialogFromInside => (
                        self.check_dialog_token(msg, &claimed, Side::Internal)?,
                        Proof::Dialog,
                    ),
                };
                let outside = match flow.as_partner() {
                    Some(key) => match self.federation().by_key(key) {
                        Some(p) => Outside::Partner(p),
                        // Not a listed partner: a discovered one (or one that left the topology).
                        None => Outside::Discovered(
                            self.discovered_next_hop(msg, popped.count, true)
                                .ok_or(Why::NoRoute)?,
                        ),
                    },
                    None => Outside::Flow(flow),
                };
                (outside, proof)
            }
            // No route this edge recorded: a request for a partner's domain (or through
            // the partner edge a Route names) goes to that partner; with open federation,
            // any other domain's edge.
            None => {
                let outside = match self.partner_next_hop(msg, popped.count) {
                    Some(p) => Outside::Partner(p),
                    None => Outside::Discovered(
                        self.discovered_next_hop(msg, popped.count, false)
                            .ok_or(Why::NoRoute)?,
                    ),
                };
                (outside, Proof::None)
            }
        };
        let target = match &outside {
            Outside::Partner(p) => {
                self.federation().get(*p).ok_or(Why::NoRoute)?;
                FlowId::partner(p.0)
            }
            Outside::Discovered(DiscoveredTarget::Domain(d))
            | Outside::Discovered(DiscoveredTarget::Edge { domain: d, .. }) => {
                FlowId::partner(discovered_key(d.as_bytes()))
            }
            Outside::Flow(flow) => *flow,
        };
        strip_toward_outside(msg, &mut splice);
        let branch = self.our_branch(from.id, target, msg);
        let insert_at = first_line_of(msg, HeaderName::Via);
        let int = &self.cfg.internal;
        let ext = &self.cfg.external;
        splice.insert_with(insert_at, |out| {
            write_via(out, ext, branch, &from.token);
        });
        if let Some(binding) = self.new_dialog(msg, method) {
            let token = self
                .keys
                .dialog_token(TokenKind::DialogFromInside, target, binding);
            let at = first_line_of(msg, HeaderName::RecordRoute).min(insert_at);
            splice.insert_with(at, |out| {
                out.extend_from_slice(b"Record-Route: ");
                write_route_uri(out, ext, Some(&token));
                out.extend_from_slice(b", ");
                write_route_uri(out, int, Some(&token));
                out.extend_from_slice(b"\r\n");
            });
        }
        let bytes = splice.apply_tidy(msg).ok_or(Why::MalformedStartLine)?;
        Ok(match outside {
            Outside::Partner(partner) => Action::ToPartner {
                partner,
                bytes,
                proof,
            },
            Outside::Discovered(target) => Action::ToDiscovered {
                target,
                bytes,
                proof,
            },
            Outside::Flow(flow) => Action::ToFlow {
                flow,
                bytes,
                completes: None,
                proof,
            },
        })
    }

    /// The dialog a dialog-forming request starts (RFC 3261 §12; RFC 6665 §4.1.2): what
    /// its Record-Route token is bound to.
    fn new_dialog<'m>(&self, msg: &'m Message, method: Method) -> Option<DialogBinding<'m>> {
        if !method.forms_dialog() || msg.to_tag.is_some() {
            return None;
        }
        Some(DialogBinding {
            call_id: msg.bytes(msg.call_id),
            initiator_tag: msg.bytes(msg.from_tag?),
        })
    }

    /// Who sent a request from outside. On a partner's connection the From domain must be
    /// the partner's and the To domain ours; partners do not register. Elsewhere nobody may
    /// claim a listed partner's domain; with open federation, a connection whose certificate
    /// names a host within the (foreign) From domain is that domain's edge, held to the same
    /// rules.
    fn sender<'f>(
        &self,
        from: &Flow,
        msg: &Message,
        method: Method,
        federation: &'f Federation,
    ) -> Result<Sender<'f>, Why> {
        let to_ours = || {
            let to_domain = msg.uri_host(msg.to_uri).unwrap_or_default();
            if self.is_served(to_domain) {
                Ok(())
            } else {
                Err(Why::PartnerTargetNotServed)
            }
        };
        let from_domain = msg.uri_host(msg.from_uri).unwrap_or_default();
        if let Some(id) = from.partner {
            let partner = federation.get(id).ok_or(Why::NotPartnerEdge)?;
            if method == Method::Register {
                return Err(Why::PartnerRegister);
            }
            if federation.by_domain(from_domain) != Some(id) {
                return Err(Why::PartnerDomainMismatch);
            }
            to_ours()?;
            return Ok(Sender::Partner(id, partner));
        }
        if federation.by_domain(from_domain).is_some() {
            return Err(Why::NotPartnerEdge);
        }
        match self.discovered_edge(from, from_domain, federation) {
            // A certificate that does not cover the foreign domain it writes from.
            None if federation.discovery
                && from.certificate.is_some()
                && !from_domain.is_empty()
                && !self.is_served(from_domain) =>
            {
                Err(Why::NotPartnerEdge)
            }
            Some(edge) => {
                if method == Method::Register {
                    return Err(Why::PartnerRegister);
                }
                to_ours()?;
                Ok(Sender::Discovered {
                    domain: String::from_utf8_lossy(from_domain).to_ascii_lowercase(),
                    edge,
                })
            }
            None => Ok(Sender::User),
        }
    }

    /// With open federation: the certificate name that makes `from` an edge of
    /// `from_domain` (a foreign domain), if any.
    fn discovered_edge(
        &self,
        from: &Flow,
        from_domain: &[u8],
        federation: &Federation,
    ) -> Option<String> {
        if !federation.discovery || from_domain.is_empty() || self.is_served(from_domain) {
            return None;
        }
        let domain = std::str::from_utf8(from_domain).ok()?;
        from.certificate
            .as_deref()?
            .iter()
            .find(|n| within(n.as_bytes(), domain))
            .cloned()
    }

    /// The From domain of a request from a discovered partner edge (open federation), for
    /// the shell's per-domain rate; `None` for anyone else.
    pub fn discovered_sender<'m>(&self, from: &Flow, msg: &'m Message) -> Option<&'m [u8]> {
        if from.partner.is_some() {
            return None;
        }
        let from_domain = msg.uri_host(msg.from_uri)?;
        self.discovered_edge(from, from_domain, &self.federation())
            .map(|_| from_domain)
    }

    /// With open federation, where a request from the inside for a foreign domain goes: the
    /// edge the next Route names (within the partner's domain), or the domain's SRV. In a
    /// dialog the partner's domain is the To domain; outside one, the Request-URI's.
    fn discovered_next_hop(
        &self,
        msg: &Message,
        popped: usize,
        in_dialog: bool,
    ) -> Option<DiscoveredTarget> {
        let federation = self.federation();
        if !federation.discovery {
            return None;
        }
        let domain_of = |span| msg.uri_host(span).and_then(|h| std::str::from_utf8(h).ok());
        let domain = if in_dialog {
            domain_of(msg.to_uri)?
        } else {
            domain_of(msg.request_uri()?)?
        }
        .to_ascii_lowercase();
        // A name, not an address; not ours, not a listed partner's.
        if domain.parse::<std::net::IpAddr>().is_ok()
            || domain.starts_with('[')
            || !domain.contains('.')
            || self.is_served(domain.as_bytes())
            || federation.by_domain(domain.as_bytes()).is_some()
        {
            return None;
        }
        match msg.routes.get(popped) {
            Some(entry) => {
                let bytes = msg.bytes(entry.uri);
                let uri = parse_uri(bytes).ok()?;
                let host = std::str::from_utf8(uri.host.of(bytes))
                    .ok()?
                    .to_ascii_lowercase();
                within(host.as_bytes(), &domain).then(|| DiscoveredTarget::Edge {
                    host,
                    port: uri.port.unwrap_or(5061),
                    domain,
                })
            }
            None => Some(DiscoveredTarget::Domain(domain)),
        }
    }

    /// The partner a request from the inside is for: the host of the first Route after the
    /// edge's own (the partner edge's Record-Route), or else the Request-URI's domain.
    fn partner_next_hop(&self, msg: &Message, popped: usize) -> Option<PartnerId> {
        let host = match msg.routes.get(popped) {
            Some(entry) => msg.uri_host(entry.uri)?,
            None => msg.uri_host(msg.request_uri()?)?,
        };
        self.federation().by_host(host)
    }

    fn is_served(&self, domain: &[u8]) -> bool {
        self.cfg
            .served_domains
            .iter()
            .any(|d| d.as_bytes().eq_ignore_ascii_case(domain))
    }

    /// A response: its top Via must be the edge's, with a token naming the flow the request
    /// came from and the branch the edge minted for that flow, the flow this response
    /// arrived on, and the transaction the next Via names. The Via is removed and the rest
    /// passes unchanged.
    fn response(&self, from: &Flow, msg: &Message, status: u16) -> Result<Action, Why> {
        let top = msg.top_via().ok_or(Why::StrayResponse)?;
        let own = match from.side {
            Side::External => &self.cfg.external,
            Side::Internal => &self.cfg.internal,
        };
        let host_matches = msg
            .bytes(top.host)
            .eq_ignore_ascii_case(own.host.as_bytes())
            && top.port.unwrap_or(5061) == own.port;
        if !host_matches {
            return Err(Why::StrayResponse);
        }
        // With only the edge's Via there is nobody to send it to: removing ours would
        // forward a response without any Via.
        let next = msg.vias.get(1).ok_or(Why::StrayResponse)?;
        let token = find_ftok(msg, top.value).ok_or(Why::StrayResponse)?;
        let origin = self
            .keys
            .verify(TokenKind::Via, token)
            .map_err(|_| Why::StrayResponse)?;
        let branch = top
            .branch
            .and_then(|b| parse_our_branch(msg.bytes(b)))
            .ok_or(Why::StrayResponse)?;
        let tx = sender_tx(msg, next);
        let minted = |target: FlowId| self.keys.branch(origin, target, tx) == branch;
        let answered_by_this_flow = match (from.side, from.partner) {
            (Side::Internal, _) => minted(FlowId::POOL),
            (Side::External, Some(p)) => minted(FlowId::partner(p.0)),
            (Side::External, None) => {
                minted(from.id)
                    || msg
                        .uri_host(msg.to_uri)
                        .filter(|to| self.discovered_edge(from, to, &self.federation()).is_some())
                        .is_some_and(|to| minted(FlowId::partner(discovered_key(to))))
            }
        };
        if !answered_by_this_flow {
            return Err(Why::StrayResponse);
        }

        let mut splice = Splice::new();
        remove_top_via(msg, &mut splice);
        match from.side {
            Side::External => {
                let federation = self.federation();
                self.strip_from_outside(msg, &mut splice);
                let partner = from.partner.and_then(|p| federation.get(p));
                let stamp = match partner {
                    Some(partner) => Some(("DirectPartner", partner.label().to_string())),
                    None => {
                        let to_domain = msg.uri_host(msg.to_uri).unwrap_or_default();
                        self.discovered_edge(from, to_domain, &federation)
                            .map(|edge| ("DiscoveredPartner", edge))
                    }
                };
                if let Some((kind, name)) = stamp {
                    let at = msg
                        .head
                        .headers
                        .get(next.header)
                        .map_or(msg.head.start_line.end, |h| h.line.start);
                    splice.insert_with(at, |out| write_trust(out, kind, name.as_bytes()));
                }
            }
            Side::Internal => strip_toward_outside(msg, &mut splice),
        }
        let bytes = splice.apply_tidy(msg).ok_or(Why::StrayResponse)?;
        let completes = (status >= 200 && from.side == Side::Internal).then_some(TxKey {
            branch,
            cancel: msg.bytes(msg.cseq_method) == b"CANCEL",
        });
        Ok(Action::ToFlow {
            flow: origin,
            bytes,
            completes,
            proof: Proof::None,
        })
    }

    /// RFC 3261 §16.6 step 3: decrement, refusing at zero (483).
    fn decrement_max_forwards(&self, msg: &Message, splice: &mut Splice) -> Result<u32, Why> {
        let (index, n) = msg
            .max_forwards
            .ok_or(Why::MissingHeader(HeaderName::MaxForwards))?;
        if n == 0 {
            return Err(Why::TooManyHops);
        }
        let header = msg
            .head
            .headers
            .get(index)
            .ok_or(Why::MissingHeader(HeaderName::MaxForwards))?;
        splice.replace_with(header.value, |out| push_decimal(out, u64::from(n - 1)));
        Ok(n - 1)
    }

    /// RFC 3261 §16.4: remove the top Route entries that name this edge (both of a
    /// double Record-Route pair), and read the token the first of them carries.
    fn pop_own_routes<'m>(&self, msg: &'m Message, splice: &mut Splice) -> Popped<'m> {
        let mut popped = Popped {
            count: 0,
            token: None,
        };
        for entry in &msg.routes {
            let Some(user) = self.own_route_user(msg, entry) else {
                break;
            };
            popped.count += 1;
            if popped.token.is_none() && !user.is_empty() {
                popped.token = Some(msg.bytes(user));
            }
        }
        if popped.count == 0 {
            return popped;
        }
        // Delete whole lines where every entry goes, else the popped prefix of a line.
        let entries = msg.routes.get(..popped.count).unwrap_or_default();
        let mut i = 0;
        while let Some(first) = entries.get(i) {
            let in_line = msg
                .routes
                .iter()
                .filter(|e| e.header == first.header)
                .count();
            let popped_in_line = entries.iter().filter(|e| e.header == first.header).count();
            if let Some(h) = msg.head.headers.get(first.header) {
                if popped_in_line == in_line {
                    splice.delete(h.line);
                } else if let Some(next) = msg.routes.get(i + popped_in_line) {
                    splice.delete(Span::new(first.value.start, next.value.start));
                }
            }
            i += popped_in_line;
        }
        popped
    }

    /// If a Route entry names this edge (a host of its own, on one of its SIP ports), its
    /// user part (empty if none).
    fn own_route_user(&self, msg: &Message, entry: &RouteEntry) -> Option<Span> {
        let uri_bytes = msg.bytes(entry.uri);
        let uri = parse_uri(uri_bytes).ok()?;
        let port_ok = match uri.port {
            None => true,
            Some(p) => p == self.cfg.external.port || p == self.cfg.internal.port,
        };
        (self.is_own_host(uri.host.of(uri_bytes)) && port_ok).then(|| {
            Span::new(
                entry.uri.start + uri.user.start,
                entry.uri.start + uri.user.end,
            )
        })
    }

    fn is_own_host(&self, host: &[u8]) -> bool {
        self.cfg
            .own_hosts
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(host))
    }

    /// Whether a URI names the edge itself (any of its hosts, any port).
    fn names_edge(&self, msg: &Message, uri: Span) -> bool {
        let bytes = msg.bytes(uri);
        parse_uri(bytes).is_ok_and(|u| self.is_own_host(u.host.of(bytes)))
    }

    /// Whether a URI names the edge's internal side (one of its own hosts that is not the
    /// external listener's) on a port that is neither a SIP listener's nor a next-hop
    /// member's: another service of the DMZ host, as seen from the inside.
    fn names_edge_service(&self, msg: &Message, uri: Span) -> bool {
        let bytes = msg.bytes(uri);
        let Ok(u) = parse_uri(bytes) else {
            return false;
        };
        let host = u.host.of(bytes);
        let external = self
            .cfg
            .external_hosts
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(host));
        if !self.is_own_host(host) || external {
            return false;
        }
        let port = u.port.unwrap_or(5061);
        if port == self.cfg.external.port || port == self.cfg.internal.port {
            return false;
        }
        let next_hops = self.next_hops.read_unpoisoned().clone();
        let text = std::str::from_utf8(host).unwrap_or_default();
        let ip = text
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        !next_hops
            .iter()
            .any(|m| m.port() == port && ip.is_some_and(|ip| ip == m.ip()))
    }

    /// Whether a URI names exactly the external SIP listener: one of its names or its
    /// address, and its port (absent means 5061, the SIP-over-TLS default).
    fn is_external_listener_uri(&self, msg: &Message, uri: Span) -> bool {
        let bytes = msg.bytes(uri);
        let Ok(u) = parse_uri(bytes) else {
            return false;
        };
        let host = u.host.of(bytes);
        self.cfg
            .external_hosts
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(host))
            && u.port.unwrap_or(5061) == self.cfg.external.port
    }

    /// Outside a dialog, what a request from outside may name: a served domain (on no port
    /// or a standard SIP port: a port is a way to reach another service of the same name),
    /// or exactly the edge's external listener. Never the edge's internal address, nor any
    /// other port of its own.
    fn request_uri_allowed_outside_dialog(&self, msg: &Message) -> bool {
        let Some(ruri) = msg.request_uri() else {
            return false;
        };
        let bytes = msg.bytes(ruri);
        let Ok(u) = parse_uri(bytes) else {
            return false;
        };
        if self.is_served(u.host.of(bytes)) {
            return matches!(u.port, None | Some(5060) | Some(5061));
        }
        self.is_external_listener_uri(msg, ruri)
    }

    /// Whether the Request-URI names the edge itself (one of its own host names or addresses).
    fn request_uri_is_own(&self, msg: &Message) -> bool {
        msg.request_uri().is_some_and(|r| self.names_edge(msg, r))
    }

    /// `maddr` in the Request-URI or in any Route entry.
    fn any_maddr(&self, msg: &Message) -> bool {
        let has = |span: Span| {
            let bytes = msg.bytes(span);
            // Parsed only when the text holds the name at all (nearly never).
            bytes.windows(5).any(|w| w.eq_ignore_ascii_case(b"maddr"))
                && parse_uri(bytes).is_ok_and(|u| uri_has_param(bytes, &u, b"maddr"))
        };
        msg.request_uri().is_some_and(has) || msg.routes.iter().any(|r| has(r.uri))
    }

    fn is_own_via(&self, msg: &Message, host: Span, port: Option<u16>) -> bool {
        let host = msg.bytes(host);
        let port = port.unwrap_or(5061);
        [&self.cfg.external, &self.cfg.internal]
            .iter()
            .any(|own| own.port == port && own.host.as_bytes().eq_ignore_ascii_case(host))
    }

    /// Removes what only a trust domain may set: the built-in list and the operator's.
    fn strip_from_outside(&self, msg: &Message, splice: &mut Splice) {
        let extra = self.strip_headers.read_unpoisoned().clone();
        for h in &msg.head.headers {
            let strip = h.name.carries_trust()
                || (h.name == HeaderName::Other
                    && extra
                        .iter()
                        .any(|n| n.as_bytes().eq_ignore_ascii_case(msg.bytes(h.name_span))));
            if strip {
                splice.delete(h.line);
            }
        }
    }

    /// RFC 3581 / RFC 3261 §18.2.1: record where the request really came from. `received`
    /// is written whenever the sent-by is not the source address, or the sender wrote a
    /// `received` of its own (with a value or without), or asked for `rport`; the sender's
    /// value is never kept.
    fn fill_received(&self, from: &Flow, msg: &Message, splice: &mut Splice) {
        let Some(top) = msg.top_via() else { return };
        let ip = from.remote.ip();
        if let Some(rport) = top.rport {
            match rport.value {
                None => splice.insert_with(rport.name.end, |out| {
                    out.push(b'=');
                    push_decimal(out, u64::from(from.remote.port()));
                }),
                Some(v) => {
                    splice.replace_with(v, |out| push_decimal(out, u64::from(from.remote.port())))
                }
            }
        }
        let written = msg.bytes(top.host);
        let same = std::str::from_utf8(written)
            .ok()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok())
            .is_some_and(|h| h == ip);
        match top.received {
            Some(received) => splice.replace_with(received.whole, |out| push_received(out, ip)),
            None if !same || top.rport.is_some() => {
                splice.insert_with(top.value.end, |out| push_received(out, ip));
            }
            None => {}
        }
    }

    fn our_branch(&self, from: FlowId, target: FlowId, msg: &Message) -> u64 {
        match msg.top_via() {
            Some(top) => self.keys.branch(from, target, sender_tx(msg, top)),
            None => self.keys.branch(
                from,
                target,
                SenderTx::Branch {
                    branch: b"",
                    call_id: msg.bytes(msg.call_id),
                },
            ),
        }
    }
}

/// `;received=<address>` (RFC 3261 §20.42: an IPv6 address without brackets).
fn push_received(out: &mut Vec<u8>, ip: IpAddr) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, ";received={ip}");
}

/// `n` in decimal, without a temporary string.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
        start -= 1;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
}

/// `n` as 16 lower-case hex digits.
fn push_hex16(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        let nibble = ((n >> (shift * 4)) & 0xf) as usize;
        out.push(HEX.get(nibble).copied().unwrap_or(b'0'));
    }
}

/// The transaction a Via names: its branch if it has the RFC 3261 cookie, else (an RFC
/// 2543 sender) its sent-by and branch with the Call-ID, From tag and CSeq number.
fn sender_tx<'m>(msg: &'m Message, via: &Via) -> SenderTx<'m> {
    let call_id = msg.bytes(msg.call_id);
    match via.branch.map(|b| msg.bytes(b)) {
        Some(branch) if branch.starts_with(MAGIC_COOKIE) => SenderTx::Branch { branch, call_id },
        branch => SenderTx::Legacy {
            sent_by: msg.bytes(via.sent_by),
            branch: branch.unwrap_or_default(),
            call_id,
            from_tag: msg.from_tag.map(|t| msg.bytes(t)).unwrap_or_default(),
            cseq: msg.cseq,
        },
    }
}

/// Whether a URI carries a `uri-parameter` of this name (case-insensitive).
fn uri_has_param(bytes: &[u8], uri: &Uri, name: &[u8]) -> bool {
    uri.params.of(bytes).split(|&b| b == b';').any(|p| {
        let n = p.split(|&b| b == b'=').next().unwrap_or_default();
        n.trim_ascii().eq_ignore_ascii_case(name)
    })
}

struct Popped<'m> {
    count: usize,
    /// The user part of the first popped entry that has one: a token, or a claim of one.
    token: Option<&'m [u8]>,
}

trait ApplyTidy {
    fn apply_tidy(self, msg: &Message) -> Option<Vec<u8>>;
}

impl ApplyTidy for Splice {
    /// Applies the proxy's edits plus tidy-ups that remove ambiguity without changing
    /// meaning: folded lines are flattened; whitespace between a header name and its
    /// colon (`Content-Length : 5`, legal per RFC 3261 HCOLON) is removed; and a
    /// Content-Length with leading zeros is written in plain decimal, so no next hop can
    /// read the head or the body's length differently from the edge.
    fn apply_tidy(mut self, msg: &Message) -> Option<Vec<u8>> {
        for h in &msg.head.headers {
            let between = Span::new(h.name_span.end, h.value.start.max(h.name_span.end));
            if let Some(colon) = msg.bytes(between).iter().position(|&b| b == b':') {
                if colon > 0 {
                    self.delete_unless_edited(Span::new(h.name_span.end, h.name_span.end + colon));
                }
            }
            if h.name == HeaderName::ContentLength {
                let digits = msg.bytes(h.value);
                if digits.len() > 1 && digits.first() == Some(&b'0') {
                    let n = msg.body.len();
                    self.replace(h.value, n.to_string().as_bytes());
                }
            }
        }
        self.apply(&msg.raw, msg.head.folded.then_some(msg.head.len))
    }
}

/// A SERVICE for the A/V authentication service: the MS-AVEDGEA media type in
/// Content-Type, whatever its case, parameters or place in a list.
fn is_credentials_request(msg: &Message) -> bool {
    let mras = crate::core::mras::CONTENT_TYPE.as_bytes();
    msg.head.headers.iter().any(|h| {
        h.name == HeaderName::ContentType
            && msg.bytes(h.value).split(|&b| b == b',').any(|element| {
                element
                    .split(|&b| b == b';')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(mras))
            })
    })
}

/// What must not leave the trust domain (RFC 3325 §5): the edge's own trust stamp always,
/// and P-Asserted-Identity when the user asked for identity privacy (`Privacy: id`).
fn strip_toward_outside(msg: &Message, splice: &mut Splice) {
    let privacy_id = msg.head.headers.iter().any(|h| {
        h.name == HeaderName::Privacy
            && msg
                .bytes(h.value)
                .split(|&b| b == b';' || b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"id"))
    });
    for h in &msg.head.headers {
        let strip = match h.name {
            HeaderName::MsEdgeProxyMessageTrust => true,
            HeaderName::PAssertedIdentity => privacy_id,
            _ => false,
        };
        if strip {
            splice.delete(h.line);
        }
    }
}

/// Offset of the first header line with this name, or the end of the start line.
fn first_line_of(msg: &Message, name: HeaderName) -> usize {
    msg.head
        .headers
        .iter()
        .find(|h| h.name == name)
        .map_or(msg.head.start_line.end, |h| h.line.start)
}

fn write_via(out: &mut Vec<u8>, side: &SideAddr, branch: u64, token: &FlowToken) {
    out.extend_from_slice(b"Via: SIP/2.0/TLS ");
    out.extend_from_slice(side.host.as_bytes());
    out.push(b':');
    push_decimal(out, u64::from(side.port));
    out.extend_from_slice(b";branch=");
    out.extend_from_slice(BRANCH_PREFIX);
    push_hex16(out, branch);
    out.extend_from_slice(b";ftok=");
    out.extend_from_slice(token.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The trust stamp for the inside on what a partner edge sent (the Lync Edge's form): what
/// kind of partner, and which edge, verified by certificate.
fn write_trust(out: &mut Vec<u8>, kind: &str, edge: &[u8]) {
    out.extend_from_slice(b"ms-edge-proxy-message-trust: ms-source-type=");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b";ms-ep-fqdn=");
    out.extend_from_slice(edge);
    out.extend_from_slice(b";ms-source-network=federation;ms-source-verified-user=verified\r\n");
}

fn write_route_uri(out: &mut Vec<u8>, side: &SideAddr, token: Option<&FlowToken>) {
    out.extend_from_slice(b"<sip:");
    if let Some(t) = token {
        out.extend_from_slice(t.as_bytes());
        out.push(b'@');
    }
    out.extend_from_slice(side.host.as_bytes());
    out.push(b':');
    push_decimal(out, u64::from(side.port));
    out.extend_from_slice(b";transport=tls;lr>");
}

/// The `ftok` parameter of the edge's Via value.
fn find_ftok(msg: &Message, via_value: Span) -> Option<&[u8]> {
    let v = msg.bytes(via_value);
    let at = v.windows(6).position(|w| w == b";ftok=")?;
    let token = v.get(at + 6..at + 6 + TOKEN_LEN)?;
    // The token must end the parameter.
    match v.get(at + 6 + TOKEN_LEN) {
        None | Some(b';') | Some(b' ') | Some(b'\t') => Some(token),
        _ => None,
    }
}

/// The hash from a branch the edge wrote (`z9hG4bKse` + 16 hex digits).
fn parse_our_branch(b: &[u8]) -> Option<u64> {
    debug_assert!(BRANCH_PREFIX.starts_with(MAGIC_COOKIE));
    let hex = b.strip_prefix(BRANCH_PREFIX)?;
    if hex.len() != 16 || !hex.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// Removes the top Via value: the whole line if it is the only value on it.
fn remove_top_via(msg: &Message, splice: &mut Splice) {
    let (Some(top), next) = (msg.vias.first(), msg.vias.get(1)) else {
        return;
    };
    match next {
        Some(n) if n.header == top.header => {
            splice.delete(Span::new(top.value.start, n.value.start));
        }
        _ => {
            if let Some(h) = msg.head.headers.get(top.header) {
                splice.delete(h.line);
            }
        }
    }
}

#[cfg(test)]
mod tests;
