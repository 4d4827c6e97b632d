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
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_std_formats_them() {
        for n in [0u64, 1, 9, 10, 69, 65535, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
            out.clear();
            push_hex16(&mut out, n);
            assert_eq!(out, format!("{n:016x}").into_bytes());
        }
    }
    use crate::core::sip::parse::HeadLimits;
    use bytes::Bytes;

    const LIMITS: HeadLimits = HeadLimits {
        max_headers: 64,
        max_line_bytes: 4096,
    };

    fn proxy() -> Proxy {
        Proxy::new(
            ProxyConfig {
                external: SideAddr {
                    host: "edge.example.com".into(),
                    port: 5061,
                },
                internal: SideAddr {
                    host: "10.0.0.10".into(),
                    port: 5061,
                },
                own_hosts: vec![
                    "edge.example.com".into(),
                    "10.0.0.10".into(),
                    "203.0.113.1".into(),
                ],
                external_hosts: vec!["edge.example.com".into(), "203.0.113.1".into()],
                served_domains: vec!["example.com".into()],
                federation: Default::default(),
                strip_headers: vec!["x-internal-auth".into()],
                next_hops: vec!["10.0.0.10:5070".parse().unwrap()],
            },
            FlowKeys::new(&[7; 32]),
        )
    }

    fn flow(p: &Proxy, id: u64, side: Side, remote: &str) -> Flow {
        Flow::new(p.keys(), FlowId(id), side, remote.parse().unwrap())
    }

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes()), &LIMITS).unwrap()
    }

    /// The Record-Route token of a dialog.
    fn rr(p: &Proxy, kind: TokenKind, flow: FlowId, call_id: &str, tag: &str) -> FlowToken {
        p.keys().dialog_token(
            kind,
            flow,
            DialogBinding {
                call_id: call_id.as_bytes(),
                initiator_tag: tag.as_bytes(),
            },
        )
    }

    fn assert_reject(p: &Proxy, f: &Flow, text: &str, why: Why) {
        match p.handle(f, &msg(text)) {
            Action::Reject(w) => assert_eq!(w, why, "{text}"),
            other => panic!("{other:?} for {text}"),
        }
    }

    fn forwarded(p: &Proxy, f: &Flow, text: &str) -> (String, Proof) {
        match p.handle(f, &msg(text)) {
            Action::ToPool { bytes, proof, .. } => (String::from_utf8(bytes).unwrap(), proof),
            other => panic!("not forwarded ({other:?}): {text}"),
        }
    }

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/TLS 192.168.1.5:50123;branch=z9hG4bKclient1;rport\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:alice@example.com>;tag=a1\r\n\
        To: <sip:bob@example.com>\r\n\
        Call-ID: call1\r\n\
        CSeq: 1 INVITE\r\n\
        P-Asserted-Identity: <sip:ceo@example.com>\r\n\
        X-Unknown:   kept   as is\r\n\
        Content-Length: 3\r\n\r\nabc";

    #[test]
    fn inbound_invite_gets_via_record_route_and_edits() {
        let p = proxy();
        let f = flow(&p, 1, Side::External, "203.0.113.7:40000");
        let Action::ToPool { bytes, tx, proof } = p.handle(&f, &msg(INVITE)) else {
            panic!("not forwarded")
        };
        assert_eq!(proof, Proof::None);
        let text = String::from_utf8(bytes).unwrap();
        let tok = f.token.as_str();
        let rr = rr(&p, TokenKind::DialogFromOutside, FlowId(1), "call1", "a1");
        let rr = rr.as_str();
        let (key, method) = tx.unwrap();
        let expected = format!(
            "INVITE sip:bob@example.com SIP/2.0\r\n\
            Via: SIP/2.0/TLS 10.0.0.10:5061;branch=z9hG4bKse{:016x};ftok={tok}\r\n\
            Record-Route: <sip:{rr}@10.0.0.10:5061;transport=tls;lr>, <sip:{rr}@edge.example.com:5061;transport=tls;lr>\r\n\
            Via: SIP/2.0/TLS 192.168.1.5:50123;branch=z9hG4bKclient1;rport=40000;received=203.0.113.7\r\n\
            Max-Forwards: 69\r\n\
            From: <sip:alice@example.com>;tag=a1\r\n\
            To: <sip:bob@example.com>\r\n\
            Call-ID: call1\r\n\
            CSeq: 1 INVITE\r\n\
            X-Unknown:   kept   as is\r\n\
            Content-Length: 3\r\n\r\nabc",
            key.branch
        );
        assert_eq!(text, expected);
        assert_eq!(method, Method::Invite);
        // The forwarded message is itself valid.
        msg(&text);
    }

    /// What the Director answers to a forwarded request: all Vias, To tag added.
    fn answer_to(fwd: &str, status: &str, call_id: &str) -> String {
        let vias: String = fwd
            .lines()
            .filter(|l| l.starts_with("Via:"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        format!(
            "SIP/2.0 {status}\r\n{vias}From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b2\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn response_from_inside_goes_back_to_the_client_flow() {
        let p = proxy();
        let client = flow(&p, 1, Side::External, "203.0.113.7:40000");
        let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
        let (fwd, _) = forwarded(&p, &client, INVITE);
        let Action::ToPool { tx, .. } = p.handle(&client, &msg(INVITE)) else {
            panic!()
        };
        let Action::ToFlow {
            flow,
            bytes,
            completes,
            ..
        } = p.handle(&director, &msg(&answer_to(&fwd, "200 OK", "call1")))
        else {
            panic!()
        };
        assert_eq!(flow, FlowId(1));
        assert_eq!(completes, Some(tx.unwrap().0));
        let back = String::from_utf8(bytes).unwrap();
        assert!(back.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 192.168.1.5:50123;"));
        assert_eq!(back.matches("Via:").count(), 1);
    }

    #[test]
    fn only_responses_to_what_the_edge_forwarded_go_back() {
        let p = proxy();
        let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
        // A request from the inside to the remote user on flow 1 (by its Path token).
        let path = p.keys().token(TokenKind::Path, FlowId(1));
        let options = format!(
            "OPTIONS sip:alice@192.168.1.5:50123;transport=tls SIP/2.0\r\n\
            Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir7\r\n\
            Route: <sip:{}@10.0.0.10:5061;transport=tls;lr>\r\n\
            Max-Forwards: 70\r\nFrom: <sip:bob@example.com>;tag=b2\r\nTo: <sip:alice@example.com>\r\n\
            Call-ID: opt7\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            path.as_str()
        );
        let Action::ToFlow {
            flow: to, bytes, ..
        } = p.handle(&director, &msg(&options))
        else {
            panic!("not routed by Path")
        };
        assert_eq!(to, FlowId(1));
        let sent = String::from_utf8(bytes).unwrap();
        let vias: String = sent
            .lines()
            .filter(|l| l.starts_with("Via:"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        let response = |call_id: &str, vias: &str| {
            format!(
                "SIP/2.0 200 OK\r\n{vias}From: <sip:bob@example.com>;tag=b2\r\nTo: <sip:alice@example.com>;tag=x\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            )
        };
        // The remote user on flow 1 answers: back to the Director.
        let user = flow(&p, 1, Side::External, "203.0.113.7:40000");
        let Action::ToFlow { flow: to, .. } = p.handle(&user, &msg(&response("opt7", &vias)))
        else {
            panic!("the answer did not go back")
        };
        assert_eq!(to, FlowId(2));
        // The same Vias on another connection, another Call-ID, another sender branch,
        // or a made-up branch: not an answer to anything the edge sent.
        let other_user = flow(&p, 3, Side::External, "203.0.113.8:40000");
        assert_reject(
            &p,
            &other_user,
            &response("opt7", &vias),
            Why::StrayResponse,
        );
        assert_reject(
            &p,
            &user,
            &response("forged-call", &vias),
            Why::StrayResponse,
        );
        let other_tx = vias.replace("z9hG4bKdir7", "z9hG4bKdir8");
        assert_reject(&p, &user, &response("opt7", &other_tx), Why::StrayResponse);
        let top = vias.lines().next().unwrap();
        let branch = top
            .split("branch=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        let made_up = vias.replace(branch, "z9hG4bKse0123456789abcdef");
        assert_reject(&p, &user, &response("opt7", &made_up), Why::StrayResponse);
        // A forged flow token, or the edge's Via of the other side.
        let forged = p.keys().token(TokenKind::Via, FlowId(1));
        let bad = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 10.0.0.10:5061;branch=z9hG4bKse0000000000000001;ftok={}\r\nVia: SIP/2.0/TLS 192.0.2.1;branch=z9hG4bKx\r\nFrom: <sip:a@example.com>;tag=a\r\nTo: <sip:b@example.com>;tag=b\r\nCall-ID: c\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
            forged.as_str().replace('a', "b")
        );
        assert_reject(&p, &director, &bad, Why::StrayResponse);
        assert_reject(
            &p,
            &director,
            &bad.replace("10.0.0.10:5061", "10.0.0.99:5061"),
            Why::StrayResponse,
        );
    }

    #[test]
    fn an_rfc_2543_transaction_is_keyed_by_via_call_id_from_tag_and_cseq() {
        let p = proxy();
        let client = flow(&p, 1, Side::External, "203.0.113.7:40000");
        let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
        for branch in [";branch=390skdjuw", ""] {
            let old = INVITE.replace(";branch=z9hG4bKclient1", branch);
            let (fwd, _) = forwarded(&p, &client, &old);
            let Action::ToFlow { flow, .. } =
                p.handle(&director, &msg(&answer_to(&fwd, "200 OK", "call1")))
            else {
                panic!("the answer to an RFC 2543 request did not go back: {fwd}")
            };
            assert_eq!(flow, FlowId(1));
            // Its CANCEL gets the INVITE's branch (RFC 3261 §9.1), without any state.
            let cancel = old
                .replace("INVITE sip:bob@example.com", "CANCEL sip:bob@example.com")
                .replace("1 INVITE", "1 CANCEL");
            let Action::ToPool { tx, .. } = p.handle(&client, &msg(&cancel)) else {
                panic!()
            };
            let Action::ToPool { tx: invite_tx, .. } = p.handle(&client, &msg(&old)) else {
                panic!()
            };
            assert_eq!(tx.unwrap().0.branch, invite_tx.unwrap().0.branch);
            // Another CSeq is another transaction.
            let other = answer_to(&fwd, "200 OK", "call1").replace("CSeq: 1", "CSeq: 2");
            assert_reject(&p, &director, &other, Why::StrayResponse);
        }
    }

    /// A BYE from the remote user on flow 1 in the dialog `call1`/`a1` it initiated.
    fn user_bye(route_token: &str) -> String {
        format!(
            "BYE sip:bob@10.0.0.30:5061;transport=tls SIP/2.0\r\n\
            Via: SIP/2.0/TLS 192.168.1.5:50123;branch=z9hG4bKbye1\r\n\
            Route: <sip:{route_token}@edge.example.com:5061;transport=tls;lr>, <sip:{route_token}@10.0.0.10:5061;transport=tls;lr>\r\n\
            Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b2\r\n\
            Call-ID: call1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn a_token_from_outside_proves_only_its_dialog_direction_and_flow() {
        let p = proxy();
        let user = flow(&p, 1, Side::External, "203.0.113.7:40000");
        let token = rr(&p, TokenKind::DialogFromOutside, FlowId(1), "call1", "a1");
        // Its own dialog: any Request-URI (the peer's Contact), proven.
        let (text, proof) = forwarded(&p, &user, &user_bye(token.as_str()));
        assert_eq!(proof, Proof::Dialog);
        assert!(!text.contains("Route:"), "both own routes popped: {text}");
        // Replayed into another dialog, with a claimed tag, or the other direction's letter.
        let other_call = user_bye(token.as_str()).replace("Call-ID: call1", "Call-ID: call2");
        assert_reject(&p, &user, &other_call, Why::InvalidFlowToken);
        let other_tag = user_bye(token.as_str()).replace("tag=a1", "tag=a9");
        assert_reject(&p, &user, &other_tag, Why::InvalidFlowToken);
        let mut flipped = token.as_str().to_string();
        flipped.replace_range(0..1, "i");
        assert_reject(&p, &user, &user_bye(&flipped), Why::InvalidFlowToken);
        // The out-of-dialog example of the red team: an unserved Request-URI with a token
        // taken from another dialog's Record-Route.
        let steer = user_bye(token.as_str())
            .replace(
                "BYE sip:bob@10.0.0.30:5061;transport=tls",
                "INVITE sip:+19005551234@evil.example",
            )
            .replace("2 BYE", "1 INVITE")
            .replace(";tag=b2", "")
            .replace("Call-ID: call1", "Call-ID: fresh");
        assert_reject(&p, &user, &steer, Why::InvalidFlowToken);
        // The same genuine token from another connection proves nothing there: the
        // out-of-dialog rules apply (and the Request-URI is no served domain).
        let other_conn = flow(&p, 3, Side::External, "203.0.113.8:40000");
        assert_reject(
            &p,
            &other_conn,
            &user_bye(token.as_str()),
            Why::DomainNotServed,
        );
        // Path and Via tokens are never accepted from outside.
        let path = p.keys().token(TokenKind::Path, FlowId(1));
        assert_reject(&p, &user, &user_bye(path.as_str()), Why::InvalidFlowToken);
        assert_reject(
            &p,
            &user,
            &user_bye(user.token.as_str()),
            Why::InvalidFlowToken,
        );
        // The callee's side of a dialog the inside initiated: its tag is the To tag.
        let inside = rr(&p, TokenKind::DialogFromInside, FlowId(1), "call1", "b2");
        let (_, proof) = forwarded(&p, &user, &user_bye(inside.as_str()));
        assert_eq!(proof, Proof::Dialog);
        let from_side = rr(&p, TokenKind::DialogFromInside, FlowId(1), "call1", "a1");
        assert_reject(
            &p,
            &user,
            &user_bye(from_side.as_str()),
            Why::InvalidFlowToken,
        );
    }

    #[test]
    fn from_the_inside_a_dialog_token_routes_only_its_dialog() {
        let p = proxy();
        let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
        let tok = rr(&p, TokenKind::DialogFromOutside, FlowId(1), "call1", "a1");
        let bye = |t: &str| {
            format!(
                "BYE sip:alice@192.168.1.5:50123;transport=tls SIP/2.0\r\n\
                Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir1\r\n\
                Route: <sip:{t}@10.0.0.10:5061;transport=tls;lr>, <sip:{t}@edge.example.com:5061;transport=tls;lr>\r\n\
                Max-Forwards: 70\r\nFrom: <sip:bob@example.com>;tag=b2\r\nTo: <sip:alice@example.com>;tag=a1\r\n\
                Call-ID: call1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let Action::ToFlow {
            flow, bytes, proof, ..
        } = p.handle(&director, &msg(&bye(tok.as_str())))
        else {
            panic!()
        };
        assert_eq!((flow, proof), (FlowId(1), Proof::Dialog));
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("Route:"), "both own routes popped: {text}");
        assert!(text.contains("Via: SIP/2.0/TLS edge.example.com:5061;branch=z9hG4bKse"));
        let mut forged = tok.as_str().to_string();
        forged.replace_range(5..6, if &forged[5..6] == "0" { "1" } else { "0" });
        assert_reject(&p, &director, &bye(&forged), Why::InvalidFlowToken);
        assert_reject(
            &p,
            &director,
            &bye(tok.as_str()).replace("Call-ID: call1", "Call-ID: other"),
            Why::InvalidFlowToken,
        );
        // A Via token is no route.
        let via = p.keys().token(TokenKind::Via, FlowId(1));
        assert_reject(&p, &director, &bye(via.as_str()), Why::InvalidFlowToken);
        let no_route = bye(tok.as_str()).replace("Route:", "X-Route:");
        assert_reject(&p, &director, &no_route, Why::NoRoute);
    }

    /// An out-of-dialog OPTIONS from outside to `ruri`, with `extra` header lines.
    fn options_to(ruri: &str, extra: &str) -> String {
        format!(
            "OPTIONS {ruri} SIP/2.0\r\n\
            Via: SIP/2.0/TLS 192.168.1.5:50123;branch=z9hG4bKopt1\r\n\
            {extra}Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n\
            Call-ID: opt1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn nothing_from_outside_is_steered_toward_the_inside() {
        let p = proxy();
        let user = flow(&p, 1, Side::External, "203.0.113.7:40000");
        // Served domains (standard ports) and exactly the external listener pass.
        for ok in [
            "sip:bob@example.com",
            "sip:bob@EXAMPLE.com:5061",
            "sips:example.com",
            "sip:edge.example.com",
            "sip:edge.example.com:5061;transport=tls",
            "sip:203.0.113.1:5061",
        ] {
            forwarded(&p, &user, &options_to(ok, ""));
        }
        // The edge's internal address, its own hosts on other ports, served domains on
        // other ports, other domains.
        for bad in [
            "sip:10.0.0.10",
            "sip:10.0.0.10:5061",
            "sip:10.0.0.10:9095",
            "sip:edge.example.com:9095",
            "sip:203.0.113.1:22",
            "sip:bob@example.com:9095",
            "sip:bob@evil.example",
            "sip:bob@198.51.100.5",
            "tel:+19005551234",
        ] {
            assert_reject(&p, &user, &options_to(bad, ""), Why::DomainNotServed);
        }
        // maddr redirects: refused in the Request-URI and in any Route.
        assert_reject(
            &p,
            &user,
            &options_to("sip:bob@example.com;maddr=198.51.100.5", ""),
            Why::MaddrNotAllowed,
        );
        assert_reject(
            &p,
            &user,
            &options_to(
                "sip:bob@example.com",
                "Route: <sip:edge.example.com;lr;MADDR=10.0.0.99>\r\n",
            ),
            Why::MaddrNotAllowed,
        );
        // A Route left after the edge's own, without a proven dialog.
        for route in [
            "Route: <sip:198.51.100.5;lr>\r\n",
            "Route: <sip:edge.example.com:5061;lr>, <sip:198.51.100.5;lr>\r\n",
            "Route: <sip:edge.example.com:9095;lr>\r\n",
        ] {
            assert_reject(
                &p,
                &user,
                &options_to("sip:bob@example.com", route),
                Why::RouteNotAllowed,
            );
        }
        // The edge's own Route without a token (an outbound proxy) is popped.
        let (text, proof) = forwarded(
            &p,
            &user,
            &options_to(
                "sip:bob@example.com",
                "Route: <sip:edge.example.com:5061;lr>\r\n",
            ),
        );
        assert_eq!(proof, Proof::None);
        assert!(!text.contains("Route:"));
        // In a proven dialog, further Routes pass, but none naming the edge, and the
        // Request-URI may not name the edge's other addresses.
        let token = rr(&p, TokenKind::DialogFromOutside, FlowId(1), "call1", "a1");
        let inside_rr = user_bye(token.as_str()).replace(
            "transport=tls;lr>\r\n",
            "transport=tls;lr>, <sip:fe1.example.com;lr>\r\n",
        );
        let (text, _) = forwarded(&p, &user, &inside_rr);
        assert!(
            text.contains("Route: <sip:fe1.example.com;lr>\r\n"),
            "{text}"
        );
        let to_edge = user_bye(token.as_str()).replace(
            "transport=tls;lr>\r\n",
            "transport=tls;lr>, <sip:10.0.0.10:9095;lr>\r\n",
        );
        assert_reject(&p, &user, &to_edge, Why::RouteNotAllowed);
        let ruri_edge = user_bye(token.as_str()).replace(
            "BYE sip:bob@10.0.0.30:5061;transport=tls",
            "BYE sip:bob@10.0.0.10:9095",
        );
        assert_reject(&p, &user, &ruri_edge, Why::RequestUriNotAllowed);
        // A next-hop member that shares the edge's address (a lab on one host) is no
        // service of the edge's own: its Record-Route and Contact pass.
        let director = user_bye(token.as_str())
            .replace(
                "transport=tls;lr>\r\n",
                "transport=tls;lr>, <sip:10.0.0.10:5070;lr>\r\n",
            )
            .replace("BYE sip:bob@10.0.0.30:5061", "BYE sip:bob@10.0.0.10:5070");
        forwarded(&p, &user, &director);
    }

    #[test]
    fn the_real_source_is_always_recorded() {
        let p = proxy();
        let user = flow(&p, 1, Side::External, "203.0.113.7:40000");
        let via = |v: &str| INVITE.replace("192.168.1.5:50123;branch=z9hG4bKclient1;rport", v);
        for (written, expected) in [
            // A flag `received` (no value) is replaced, not left empty.
            (
                "192.168.1.5:50123;received;branch=z9hG4bKc",
                "192.168.1.5:50123;received=203.0.113.7;branch=z9hG4bKc",
            ),
            // The sender's own value is never kept.
            (
                "192.168.1.5:50123;branch=z9hG4bKc;received=10.0.0.1",
                "192.168.1.5:50123;branch=z9hG4bKc;received=203.0.113.7",
            ),
            // Even when the sent-by is the source.
            (
                "203.0.113.7:40000;branch=z9hG4bKc;received=10.0.0.1",
                "203.0.113.7:40000;branch=z9hG4bKc;received=203.0.113.7",
            ),
            // sent-by differs: added.
            (
                "192.168.1.5;branch=z9hG4bKc",
                "192.168.1.5;branch=z9hG4bKc;received=203.0.113.7",
            ),
            // sent-by is the source, nothing asked: nothing added.
            (
                "203.0.113.7:40000;branch=z9hG4bKc",
                "203.0.113.7:40000;branch=z9hG4bKc",
            ),
        ] {
            let (text, _) = forwarded(&p, &user, &via(written));
            assert!(
                text.contains(&format!("Via: SIP/2.0/TLS {expected}\r\n")),
                "{written}: {text}"
            );
        }
        let v6 = flow(&p, 4, Side::External, "[2001:db8::7]:40000");
        let (text, _) = forwarded(&p, &v6, &via("[2001:db8::1];received;branch=z9hG4bKc"));
        assert!(
            text.contains(
                "Via: SIP/2.0/TLS [2001:db8::1];received=2001:db8::7;branch=z9hG4bKc\r\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn trust_domain_headers_never_cross_from_outside() {
        let p = proxy();
        let user = flow(&p, 1, Side::External, "203.0.113.7:40000");
        let injected = [
            "P-Asserted-Identity: <sip:ceo@example.com>",
            "p-preferred-identity: <sip:ceo@example.com>",
            "Remote-Party-ID: <sip:ceo@example.com>;screen=yes;party=calling",
            "P-Charging-Vector: icid-value=1234",
            "P-Asserted-Service: urn:urn-7:3gpp-service.ims.icsi.mmtel",
            "P-Served-User: <sip:ceo@example.com>;sescase=orig",
            "ms-asserted-verification-level: ms-source-verified-user=verified",
            "MS-Split-Domain-Info: ms-traffic-type=SplitIntra",
            "ms-edge-proxy-message-trust: ms-source-type=InternalUser",
            "ms-user-logon-data: RemoteUser",
            "X-Internal-Auth: yes",
        ];
        let text: String = injected.iter().map(|h| format!("{h}\r\n")).collect();
        let invite = INVITE.replace("X-Unknown:", &format!("{text}X-Unknown:"));
        let (out, _) = forwarded(&p, &user, &invite);
        for h in injected {
            assert!(!out.contains(h), "{h} crossed: {out}");
        }
        assert!(out.contains("X-Unknown:   kept   as is\r\n"));
        // Responses from outside too.
        p.set_strip_headers(&["X-Other".into()]);
        let (out, _) = forwarded(
            &p,
            &user,
            &INVITE.replace("X-Unknown:", "x-other: 1\r\nX-Unknown:"),
        );
        assert!(!out.contains("x-other"), "{out}");
    }

    #[test]
    fn tidy_ups_content_length_and_mras_detection() {
        let p = proxy();
        let user = flow(&p, 1, Side::External, "203.0.113.7:40000");
        let (out, _) = forwarded(
            &p,
            &user,
            &INVITE.replace("Content-Length: 3", "Content-Length: 0003"),
        );
        assert!(out.contains("\r\nContent-Length: 3\r\n\r\nabc"), "{out}");
        let mras = |ct: &str, ruri: &str| {
            format!(
                "SERVICE {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS 192.168.1.5:50123;branch=z9hG4bKs1\r\n\
                Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:alice@example.com>\r\n\
                Call-ID: s1\r\nCSeq: 1 SERVICE\r\nContent-Type: {ct}\r\nContent-Length: 0\r\n\r\n"
            )
        };
        for ct in [
            "application/msrtc-media-relay-auth+xml",
            "Application/MSRTC-Media-Relay-Auth+XML; charset=utf-8",
            "text/plain, application/msrtc-media-relay-auth+xml",
        ] {
            assert_reject(
                &p,
                &user,
                &mras(ct, "sip:edge.example.com"),
                Why::CredentialsFromOutside,
            );
            let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
            assert!(matches!(
                p.handle(&director, &msg(&mras(ct, "sip:10.0.0.10"))),
                Action::Credentials
            ));
        }
    }

    #[test]
    fn register_gets_path_and_policy_rejects() {
        let p = proxy();
        let f = flow(&p, 1, Side::External, "203.0.113.7:40000");
        let reg = INVITE
            .replace("INVITE sip:bob@example.com", "REGISTER sip:example.com")
            .replace("1 INVITE", "1 REGISTER");
        let (text, _) = forwarded(&p, &f, &reg);
        let path = p.keys().token(TokenKind::Path, FlowId(1));
        assert!(text.contains(&format!(
            "Path: <sip:{}@10.0.0.10:5061;transport=tls;lr>\r\n",
            path.as_str()
        )));
        assert!(!text.contains("Record-Route"));

        let other = INVITE.replace("sip:bob@example.com SIP", "sip:bob@example.org SIP");
        assert_reject(&p, &f, &other, Why::DomainNotServed);
        let mf0 = INVITE.replace("Max-Forwards: 70", "Max-Forwards: 0");
        assert_reject(&p, &f, &mf0, Why::TooManyHops);
        let looped = INVITE.replace(
            "Max-Forwards",
            "Via: SIP/2.0/TLS edge.example.com;branch=z9hG4bKx\r\nMax-Forwards",
        );
        assert_reject(&p, &f, &looped, Why::Loop);
        let pr = INVITE.replace("Max-Forwards", "Proxy-Require: foo\r\nMax-Forwards");
        let m = msg(&pr);
        let Action::Reject(why) = p.handle(&f, &m) else {
            panic!()
        };
        assert_eq!(why, Why::BadExtension);
        let answer = String::from_utf8(p.answer(&m.raw, why, Some(&m)).unwrap()).unwrap();
        assert!(answer.starts_with("SIP/2.0 420 Bad Extension\r\n"));
        assert!(answer.contains("Unsupported: foo\r\n"));
    }

    fn federated() -> Proxy {
        let p = proxy();
        p.set_federation(std::sync::Arc::new(Federation::new(vec![Partner {
            fqdn: Some("sip.partner.example".into()),
            domains: vec!["partner.example".into()],
            rate: crate::core::limits::Rate {
                per_sec: 10,
                burst: 10,
            },
            max_dialogs: 100,
        }])));
        p
    }

    /// The one partner of [`federated`].
    fn the_partner(p: &Proxy) -> PartnerId {
        p.federation().iter().next().unwrap().0
    }

    fn partner_flow(p: &Proxy, id: u64) -> Flow {
        Flow {
            partner: Some(the_partner(p)),
            ..flow(p, id, Side::External, "198.51.100.50:5061")
        }
    }

    const FROM_PARTNER: &str = "MESSAGE sip:alice@example.com SIP/2.0\r\n\
        Via: SIP/2.0/TLS sip.partner.example:5061;branch=z9hG4bKp1\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:bob@partner.example>;tag=b1\r\n\
        To: <sip:alice@example.com>\r\n\
        Call-ID: fed1\r\n\
        CSeq: 1 MESSAGE\r\n\
        ms-edge-proxy-message-trust: ms-source-type=InternalUser;forged=yes\r\n\
        Content-Length: 2\r\n\r\nhi";

    #[test]
    fn a_partner_request_is_stamped_for_the_inside_and_its_own_stamp_removed() {
        let p = federated();
        let f = partner_flow(&p, 5);
        let (text, _) = forwarded(&p, &f, FROM_PARTNER);
        assert!(!text.contains("forged=yes"), "{text}");
        let stamp = "ms-edge-proxy-message-trust: ms-source-type=DirectPartner;\
            ms-ep-fqdn=sip.partner.example;ms-source-network=federation;\
            ms-source-verified-user=verified\r\n";
        assert_eq!(text.matches(stamp).count(), 1, "{text}");
        msg(&text);
    }

    #[test]
    fn partner_spoofing_is_refused() {
        let p = federated();
        let partner = partner_flow(&p, 5);
        // The partner claiming a third party's domain.
        let third = FROM_PARTNER.replace("bob@partner.example", "eve@elsewhere.example");
        assert_reject(&p, &partner, &third, Why::PartnerDomainMismatch);
        // ... or our own users.
        let ours = FROM_PARTNER.replace("bob@partner.example", "ceo@example.com");
        assert_reject(&p, &partner, &ours, Why::PartnerDomainMismatch);
        // A request for a domain we do not serve, even with an own Request-URI.
        let elsewhere =
            FROM_PARTNER.replace("To: <sip:alice@example.com>", "To: <sip:x@other.example>");
        assert_reject(&p, &partner, &elsewhere, Why::PartnerTargetNotServed);
        let register = FROM_PARTNER
            .replace("MESSAGE sip:alice@example.com", "REGISTER sip:example.com")
            .replace("1 MESSAGE", "1 REGISTER");
        assert_reject(&p, &partner, &register, Why::PartnerRegister);
        // Somebody else (a remote user's connection) claiming the partner's domain.
        let user = flow(&p, 6, Side::External, "203.0.113.9:40000");
        assert_reject(&p, &user, FROM_PARTNER, Why::NotPartnerEdge);
    }

    #[test]
    fn requests_for_a_partner_domain_go_to_the_partner_and_dialogs_come_back() {
        let p = federated();
        let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
        let invite = "INVITE sip:bob@partner.example SIP/2.0\r\n\
            Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir1\r\n\
            Max-Forwards: 70\r\n\
            From: <sip:alice@example.com>;tag=a1\r\n\
            To: <sip:bob@partner.example>\r\n\
            Call-ID: out1\r\n\
            CSeq: 1 INVITE\r\n\
            Content-Length: 0\r\n\r\n";
        let Action::ToPartner { partner, bytes, .. } = p.handle(&director, &msg(invite)) else {
            panic!("not sent to the partner")
        };
        assert_eq!(partner, the_partner(&p));
        let text = String::from_utf8(bytes).unwrap();
        // Record-Route names the partner, not a connection: in-dialog requests from the
        // inside reach it over any connection.
        let key = the_partner(&p).0;
        let partner_token = rr(
            &p,
            TokenKind::DialogFromInside,
            FlowId::partner(key),
            "out1",
            "a1",
        );
        assert!(
            text.contains(&format!(
                "<sip:{}@edge.example.com:5061;transport=tls;lr>",
                partner_token.as_str()
            )),
            "{text}"
        );
        let bye = format!(
            "BYE sip:bob@198.51.100.60:5061;transport=tls SIP/2.0\r\n\
            Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir2\r\n\
            Route: <sip:{t}@10.0.0.10:5061;transport=tls;lr>, <sip:{t}@edge.example.com:5061;transport=tls;lr>, <sip:sip.partner.example:5061;transport=tls;lr>\r\n\
            Max-Forwards: 70\r\n\
            From: <sip:alice@example.com>;tag=a1\r\n\
            To: <sip:bob@partner.example>;tag=b9\r\n\
            Call-ID: out1\r\n\
            CSeq: 2 BYE\r\n\
            Content-Length: 0\r\n\r\n",
            t = partner_token.as_str()
        );
        let Action::ToPartner { partner, proof, .. } = p.handle(&director, &msg(&bye)) else {
            panic!("in-dialog request not sent to the partner")
        };
        assert_eq!((partner, proof), (the_partner(&p), Proof::Dialog));
        // The partner's own in-dialog request with the token, on any of its connections.
        let partner_bye = format!(
            "BYE sip:alice@10.0.0.30:5061;transport=tls SIP/2.0\r\n\
            Via: SIP/2.0/TLS sip.partner.example:5061;branch=z9hG4bKpb\r\n\
            Route: <sip:{t}@edge.example.com:5061;transport=tls;lr>, <sip:{t}@10.0.0.10:5061;transport=tls;lr>\r\n\
            Max-Forwards: 70\r\n\
            From: <sip:bob@partner.example>;tag=b9\r\n\
            To: <sip:alice@example.com>;tag=a1\r\n\
            Call-ID: out1\r\n\
            CSeq: 7 BYE\r\n\
            Content-Length: 0\r\n\r\n",
            t = partner_token.as_str()
        );
        let (_, proof) = forwarded(&p, &partner_flow(&p, 8), &partner_bye);
        assert_eq!(proof, Proof::Dialog);
        // A remote user who saw the token cannot use it.
        let user = flow(&p, 9, Side::External, "203.0.113.9:40000");
        assert_reject(&p, &user, &partner_bye, Why::NotPartnerEdge);
        // Without a recorded route, a Route through the partner edge also leads there.
        let routed = bye.replace(
            &format!("<sip:{t}@10.0.0.10:5061;transport=tls;lr>, <sip:{t}@edge.example.com:5061;transport=tls;lr>, ", t = partner_token.as_str()),
            "",
        );
        assert!(matches!(
            p.handle(&director, &msg(&routed)),
            Action::ToPartner { .. }
        ));
        // A domain nobody federates with has no route.
        let nowhere = invite.replace("bob@partner.example", "bob@nowhere.example");
        assert_reject(&p, &director, &nowhere, Why::NoRoute);
    }

    #[test]
    fn a_partner_response_is_stamped_and_goes_to_the_inside() {
        let p = federated();
        let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
        let partner = partner_flow(&p, 5);
        let message = "MESSAGE sip:bob@partner.example SIP/2.0\r\n\
            Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir1\r\n\
            Max-Forwards: 70\r\n\
            From: <sip:alice@example.com>;tag=a1\r\n\
            To: <sip:bob@partner.example>\r\n\
            Call-ID: out1\r\n\
            CSeq: 1 MESSAGE\r\n\
            Content-Length: 0\r\n\r\n";
        let Action::ToPartner { bytes, .. } = p.handle(&director, &msg(message)) else {
            panic!()
        };
        let sent = String::from_utf8(bytes).unwrap();
        let vias: String = sent
            .lines()
            .filter(|l| l.starts_with("Via:"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        let ok = format!(
            "SIP/2.0 200 OK\r\n{vias}\
            From: <sip:alice@example.com>;tag=a1\r\n\
            To: <sip:bob@partner.example>;tag=b9\r\n\
            Call-ID: out1\r\n\
            CSeq: 1 MESSAGE\r\n\
            ms-edge-proxy-message-trust: injected\r\n\
            Content-Length: 0\r\n\r\n"
        );
        let Action::ToFlow {
            flow: to, bytes, ..
        } = p.handle(&partner, &msg(&ok))
        else {
            panic!("response not routed")
        };
        assert_eq!(to, director.id);
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("injected"));
        assert!(
            text.contains("ms-source-type=DirectPartner;ms-ep-fqdn=sip.partner.example"),
            "{text}"
        );
        msg(&text);
        // A remote user's connection cannot answer what went to the partner.
        let user = flow(&p, 9, Side::External, "203.0.113.9:40000");
        assert_reject(&p, &user, &ok, Why::StrayResponse);
    }

    fn discovering() -> Proxy {
        let p = federated();
        let mut f = (*p.federation()).clone();
        f.discovery = true;
        p.set_federation(std::sync::Arc::new(f));
        p
    }

    fn certified(p: &Proxy, id: u64, names: &[&str]) -> Flow {
        Flow {
            certificate: Some(names.iter().map(|n| n.to_string()).collect()),
            ..flow(p, id, Side::External, "198.51.100.70:5061")
        }
    }

    #[test]
    fn open_federation_accepts_an_edge_proven_by_a_name_within_its_domain() {
        let p = discovering();
        let from_c = FROM_PARTNER
            .replace("bob@partner.example", "carol@c.example")
            .replace("sip.partner.example", "sip.c.example");
        let edge = certified(&p, 7, &["sip.c.example"]);
        let (text, _) = forwarded(&p, &edge, &from_c);
        assert!(text.contains("ms-edge-proxy-message-trust: ms-source-type=DiscoveredPartner;ms-ep-fqdn=sip.c.example;"), "{text}");
        assert!(!text.contains("forged=yes"));
        assert_eq!(
            p.discovered_sender(&edge, &msg(&from_c)),
            Some(&b"c.example"[..])
        );
        // A certificate for another domain proves nothing about this one.
        let other = certified(&p, 8, &["sip.d.example", "*.c.example"]);
        assert_reject(&p, &other, &from_c, Why::NotPartnerEdge);
        assert_eq!(p.discovered_sender(&other, &msg(&from_c)), None);
        // Without a certificate it is not federation at all: the inside decides.
        let user = flow(&p, 9, Side::External, "203.0.113.9:40000");
        forwarded(&p, &user, &from_c);
        // Still only to our domains, never a REGISTER.
        let elsewhere = from_c.replace("To: <sip:alice@example.com>", "To: <sip:x@d.example>");
        assert_reject(&p, &edge, &elsewhere, Why::PartnerTargetNotServed);
        // Listed partners' domains stay theirs.
        assert_reject(
            &p,
            &certified(&p, 10, &["partner.example"]),
            FROM_PARTNER,
            Why::NotPartnerEdge,
        );
        // Discovery off: the same connection is a remote user's.
        let closed = federated();
        let (text, _) = forwarded(&closed, &edge, &from_c);
        assert!(!text.contains("DiscoveredPartner"));
    }

    #[test]
    fn open_federation_sends_foreign_domains_by_srv_and_dialogs_by_the_recorded_edge() {
        let p = discovering();
        let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
        let invite = "INVITE sip:carol@c.example SIP/2.0\r\n\
            Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir1\r\n\
            Max-Forwards: 70\r\n\
            From: <sip:alice@example.com>;tag=a1\r\n\
            To: <sip:carol@c.example>\r\n\
            Call-ID: disc1\r\n\
            CSeq: 1 INVITE\r\n\
            Content-Length: 0\r\n\r\n";
        let Action::ToDiscovered { target, bytes, .. } = p.handle(&director, &msg(invite)) else {
            panic!("not sent to the discovered domain")
        };
        assert_eq!(target, DiscoveredTarget::Domain("c.example".into()));
        let token = rr(
            &p,
            TokenKind::DialogFromInside,
            FlowId::partner(discovered_key(b"c.example")),
            "disc1",
            "a1",
        );
        assert!(String::from_utf8(bytes).unwrap().contains(token.as_str()));
        let bye = |route_host: &str| {
            format!(
                "BYE sip:carol@198.51.100.60:5061;transport=tls SIP/2.0\r\n\
                Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir2\r\n\
                Route: <sip:{t}@10.0.0.10:5061;transport=tls;lr>, <sip:{t}@edge.example.com:5061;transport=tls;lr>, <sip:{route_host}:5062;transport=tls;lr>\r\n\
                Max-Forwards: 70\r\n\
                From: <sip:alice@example.com>;tag=a1\r\n\
                To: <sip:carol@c.example>;tag=c9\r\n\
                Call-ID: disc1\r\n\
                CSeq: 2 BYE\r\n\
                Content-Length: 0\r\n\r\n",
                t = token.as_str()
            )
        };
        let Action::ToDiscovered { target, .. } = p.handle(&director, &msg(&bye("sip.c.example")))
        else {
            panic!("in-dialog request not sent to the recorded edge")
        };
        assert_eq!(
            target,
            DiscoveredTarget::Edge {
                host: "sip.c.example".into(),
                port: 5062,
                domain: "c.example".into()
            }
        );
        // A Route to a host outside the partner's domain is not followed.
        assert_reject(&p, &director, &bye("evil.example"), Why::NoRoute);
        // Addresses, our own domains and no discovery: no route.
        for uri in ["carol@192.0.2.7", "carol@example.com"] {
            let text = invite.replace("carol@c.example", uri);
            assert!(
                matches!(p.handle(&director, &msg(&text)), Action::Reject(_)),
                "{uri}"
            );
        }
        assert_reject(&federated(), &director, invite, Why::NoRoute);
    }
}
