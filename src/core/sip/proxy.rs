//! The Access Edge's proxy decision for one validated message: where it goes, with which
//! edits, or why it is refused.
//!
//! Owns the proxy behaviour of RFC 3261 §16 as an edge applies it: loop and Max-Forwards
//! checks, Proxy-Require, Route popping, the edge's Via with its flow token, received/rport
//! (RFC 3581), double Record-Route when crossing interfaces (RFC 5658), Path on REGISTER
//! (RFC 3327), stripping trust headers from outside, and routing back by flow token.
//! It does not own connections: it names flows by [`FlowId`] and the shell resolves them.

use std::net::{IpAddr, SocketAddr};

use super::federation::{discovered_key, within, Federation, Partner, PartnerId};
use super::message::{Kind, Message, Method, RouteEntry, MAGIC_COOKIE};
use super::parse::{parse_uri, Span};
use super::reject::{self, Why};
use super::splice::Splice;
use super::token::{FlowId, FlowKeys, FlowToken, TokenError, TOKEN_LEN};
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
    /// `keys.token(id)`, computed once when the connection is accepted.
    pub token: FlowToken,
    /// The federation partner whose edge this connection is (its verified certificate
    /// names the partner's FQDN); `None` for remote users and the inside.
    pub partner: Option<PartnerId>,
    /// The DNS subjectAltNames of the certificate the peer presented (and rustls verified),
    /// if any: what a discovered partner edge proves itself with.
    pub certificate: Option<std::sync::Arc<[String]>>,
}

/// How the edge names itself on one side (in its Via, Record-Route and Path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideAddr {
    /// Host as written in URIs (a name, an IPv4 address or a bracketed IPv6 address).
    pub host: String,
    pub port: u16,
}

/// What the proxy needs to know of the topology.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub external: SideAddr,
    pub internal: SideAddr,
    /// Every host name or address that means "this edge" in a Route (lower-case).
    pub own_hosts: Vec<String>,
    /// SIP domains served behind the edge (lower-case).
    pub served_domains: Vec<String>,
    /// Federation partners (empty: no federation).
    pub federation: Federation,
}

/// The key of a transaction forwarded to the pool: the edge's branch hash, with CANCEL
/// apart because it shares its INVITE's branch (RFC 3261 §9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TxKey {
    pub branch: u64,
    pub cancel: bool,
}

/// The decision for one message.
#[derive(Debug)]
pub enum Action {
    /// Forward to the next-hop pool. `tx` is `None` for ACK (no response comes back).
    ToPool {
        bytes: Vec<u8>,
        tx: Option<(TxKey, Method)>,
    },
    /// Forward to a federation partner's edge, on any connection to it (opened if none).
    ToPartner { partner: PartnerId, bytes: Vec<u8> },
    /// Forward to a discovered partner's edge (open federation), found as `target` says.
    ToDiscovered {
        target: DiscoveredTarget,
        bytes: Vec<u8>,
    },
    /// Forward on the flow named by a token. `completes` is set on a final response coming
    /// back from the pool, so the member's outstanding count can drop.
    ToFlow {
        flow: FlowId,
        bytes: Vec<u8>,
        completes: Option<TxKey>,
    },
    /// Refuse. The shell answers with [`Proxy::answer`] on the arriving flow (if any answer
    /// can be formed) and counts the reason.
    Reject(Why),
    /// A relay-credentials request from the inside, for the edge's own A/V authentication
    /// service (`core::avauth`) to answer.
    Credentials,
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
    federation: std::sync::RwLock<std::sync::Arc<Federation>>,
}

const BRANCH_PREFIX: &[u8] = b"z9hG4bKse";
const PROBE_PREFIX: &str = "z9hG4bKprobe";

impl Proxy {
    pub fn new(cfg: ProxyConfig, keys: FlowKeys) -> Proxy {
        let federation = std::sync::RwLock::new(std::sync::Arc::new(cfg.federation.clone()));
        Proxy {
            cfg,
            keys,
            federation,
        }
    }

    /// The partners in force now.
    pub fn federation(&self) -> std::sync::Arc<Federation> {
        self.federation
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts new partners in force (reload): from the next message on.
    pub fn set_federation(&self, federation: std::sync::Arc<Federation>) {
        *self.federation.write().unwrap_or_else(|e| e.into_inner()) = federation;
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
        let max_forwards = self.decrement_max_forwards(msg, &mut splice)?;
        if msg.proxy_require.is_some() {
            return Err(Why::BadExtension);
        }
        let popped = self.pop_own_routes(msg, &mut splice);
        match popped.token {
            // A route this edge recorded (in-dialog): the Request-URI is the peer's Contact,
            // which may be any host; the Director applies dialog policy.
            Some(Ok(_)) => {}
            // A forged or tampered token never buys a way past the domain check.
            Some(Err(TokenError::BadSignature)) => return Err(Why::InvalidFlowToken),
            // No route naming the edge, or a preloaded one (outbound proxy, RFC 3261 §8.1.2)
            // without a token: only the domains this edge serves.
            Some(Err(TokenError::Malformed)) | None => {
                if !self.request_uri_is_served(msg) {
                    return Err(Why::DomainNotServed);
                }
            }
        }
        let _ = max_forwards;
        for h in &msg.head.headers {
            if h.name.carries_trust() {
                splice.delete(h.line);
            }
        }
        self.fill_received(from, msg, &mut splice);

        let branch = self.our_branch(from, msg);
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
        // In-dialog requests from the inside go back to the partner (any connection to its
        // edge), to a remote user on this very flow.
        let route_token = match &sender {
            Sender::Partner(id, _) => self.keys.token(FlowId::partner(id.0)),
            Sender::Discovered { domain, .. } => self
                .keys
                .token(FlowId::partner(discovered_key(domain.as_bytes()))),
            Sender::User => from.token,
        };
        if method.forms_dialog() && msg.to_tag.is_none() {
            // RFC 5658: one entry per interface; the top one faces the next hop.
            let at = first_line_of(msg, HeaderName::RecordRoute).min(insert_at);
            splice.insert_with(at, |out| {
                out.extend_from_slice(b"Record-Route: ");
                write_route_uri(out, int, Some(&route_token));
                out.extend_from_slice(b", ");
                write_route_uri(out, ext, Some(&route_token));
                out.extend_from_slice(b"\r\n");
            });
        }
        if method == Method::Register {
            // RFC 3327: requests for this contact come back through the edge, to this flow.
            let at = first_line_of(msg, HeaderName::Path).min(insert_at);
            splice.insert_with(at, |out| {
                out.extend_from_slice(b"Path: ");
                write_route_uri(out, int, Some(&from.token));
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
        Ok(Action::ToPool { bytes, tx })
    }

    /// A request from the inside toward a remote user: routed only by a flow token in a
    /// Route that names the edge.
    fn outbound_request(&self, from: &Flow, msg: &Message, method: Method) -> Result<Action, Why> {
        let mut splice = Splice::new();
        self.decrement_max_forwards(msg, &mut splice)?;
        if msg.proxy_require.is_some() {
            return Err(Why::BadExtension);
        }
        let popped = self.pop_own_routes(msg, &mut splice);
        let outside = match popped.token {
            Some(Ok(flow)) => match flow.as_partner() {
                Some(key) => match self.federation().by_key(key) {
                    Some(p) => Outside::Partner(p),
                    // Not a listed partner: a discovered one (or one that left the topology).
                    None => Outside::Discovered(
                        self.discovered_next_hop(msg, popped.count, true)
                            .ok_or(Why::NoRoute)?,
                    ),
                },
                None => Outside::Flow(flow),
            },
            Some(Err(_)) => return Err(Why::InvalidFlowToken),
            // No route this edge recorded: a request for a partner's domain (or through
            // the partner edge a Route names) goes to that partner; with open federation,
            // any other domain's edge.
            None => match self.partner_next_hop(msg, popped.count) {
                Some(p) => Outside::Partner(p),
                None => Outside::Discovered(
                    self.discovered_next_hop(msg, popped.count, false)
                        .ok_or(Why::NoRoute)?,
                ),
            },
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
        let target_token = self.keys.token(target);
        let branch = self.our_branch(from, msg);
        let insert_at = first_line_of(msg, HeaderName::Via);
        let int = &self.cfg.internal;
        let ext = &self.cfg.external;
        splice.insert_with(insert_at, |out| {
            write_via(out, ext, branch, &from.token);
        });
        if method.forms_dialog() && msg.to_tag.is_none() {
            let at = first_line_of(msg, HeaderName::RecordRoute).min(insert_at);
            splice.insert_with(at, |out| {
                out.extend_from_slice(b"Record-Route: ");
                write_route_uri(out, ext, Some(&target_token));
                out.extend_from_slice(b", ");
                write_route_uri(out, int, Some(&target_token));
                out.extend_from_slice(b"\r\n");
            });
        }
        let bytes = splice.apply_tidy(msg).ok_or(Why::MalformedStartLine)?;
        Ok(match outside {
            Outside::Partner(partner) => Action::ToPartner { partner, bytes },
            Outside::Discovered(target) => Action::ToDiscovered { target, bytes },
            Outside::Flow(flow) => Action::ToFlow {
                flow,
                bytes,
                completes: None,
            },
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

    /// A response: its top Via must be the edge's, with a valid token naming the flow the
    /// request came from. The Via is removed and the rest passes unchanged.
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
        if msg.vias.len() < 2 {
            return Err(Why::StrayResponse);
        }
        let token = find_ftok(msg, top.value).ok_or(Why::StrayResponse)?;
        let flow = self.keys.verify(token).map_err(|_| Why::StrayResponse)?;
        let branch = top
            .branch
            .and_then(|b| parse_our_branch(msg.bytes(b)))
            .ok_or(Why::StrayResponse)?;

        let mut splice = Splice::new();
        remove_top_via(msg, &mut splice);
        match from.side {
            Side::External => {
                for h in &msg.head.headers {
                    if h.name.carries_trust() {
                        splice.delete(h.line);
                    }
                }
                let federation = self.federation();
                let partner = from.partner.and_then(|p| federation.get(p));
                let stamp = match partner {
                    Some(partner) => Some(("DirectPartner", partner.label().to_string())),
                    None => {
                        let to_domain = msg.uri_host(msg.to_uri).unwrap_or_default();
                        self.discovered_edge(from, to_domain, &federation)
                            .map(|edge| ("DiscoveredPartner", edge))
                    }
                };
                if let (Some((kind, name)), Some(next_via)) = (stamp, msg.vias.get(1)) {
                    let at = msg
                        .head
                        .headers
                        .get(next_via.header)
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
            flow,
            bytes,
            completes,
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
        splice.replace(header.value, (n - 1).to_string().as_bytes());
        Ok(n - 1)
    }

    /// RFC 3261 §16.4: remove the top Route entries that name this edge (both of a
    /// double Record-Route pair), and read the flow token one of them carries.
    fn pop_own_routes(&self, msg: &Message, splice: &mut Splice) -> Popped {
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
                popped.token = Some(self.keys.verify(msg.bytes(user)));
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

    /// If a Route entry names this edge, its user part (empty if none).
    fn own_route_user(&self, msg: &Message, entry: &RouteEntry) -> Option<Span> {
        let uri_bytes = msg.bytes(entry.uri);
        let uri = parse_uri(uri_bytes).ok()?;
        let host = uri.host.of(uri_bytes);
        let is_own = self
            .cfg
            .own_hosts
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(host));
        let port_ok = match uri.port {
            None => true,
            Some(p) => p == self.cfg.external.port || p == self.cfg.internal.port,
        };
        (is_own && port_ok).then(|| {
            Span::new(
                entry.uri.start + uri.user.start,
                entry.uri.start + uri.user.end,
            )
        })
    }

    fn request_uri_is_served(&self, msg: &Message) -> bool {
        let Kind::Request { uri, .. } = msg.kind else {
            return false;
        };
        let bytes = msg.bytes(uri);
        let Ok(parsed) = parse_uri(bytes) else {
            return false;
        };
        let host = parsed.host.of(bytes);
        self.cfg
            .served_domains
            .iter()
            .chain(self.cfg.own_hosts.iter())
            .any(|d| d.as_bytes().eq_ignore_ascii_case(host))
    }

    /// Whether the Request-URI names the edge itself (one of its own host names or addresses).
    fn request_uri_is_own(&self, msg: &Message) -> bool {
        let Kind::Request { uri, .. } = msg.kind else {
            return false;
        };
        let bytes = msg.bytes(uri);
        let Ok(parsed) = parse_uri(bytes) else {
            return false;
        };
        let host = parsed.host.of(bytes);
        self.cfg
            .own_hosts
            .iter()
            .any(|d| d.as_bytes().eq_ignore_ascii_case(host))
    }

    fn is_own_via(&self, msg: &Message, host: Span, port: Option<u16>) -> bool {
        let host = msg.bytes(host);
        let port = port.unwrap_or(5061);
        [&self.cfg.external, &self.cfg.internal]
            .iter()
            .any(|own| own.port == port && own.host.as_bytes().eq_ignore_ascii_case(host))
    }

    /// RFC 3581 / RFC 3261 §18.2.1: record where the request really came from.
    fn fill_received(&self, from: &Flow, msg: &Message, splice: &mut Splice) {
        let Some(top) = msg.top_via() else { return };
        let ip = from.remote.ip();
        if let Some(rport) = top.rport {
            match rport.value {
                None => splice.insert_with(rport.name.end, |out| {
                    out.push(b'=');
                    out.extend_from_slice(from.remote.port().to_string().as_bytes());
                }),
                Some(v) => splice.replace(v, from.remote.port().to_string().as_bytes()),
            }
        }
        let written = msg.bytes(top.host);
        let same = std::str::from_utf8(written)
            .ok()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok())
            .is_some_and(|h| h == ip);
        match top.received {
            Some(received) => {
                if let Some(v) = received.value {
                    splice.replace(v, ip.to_string().as_bytes());
                }
            }
            None if !same || top.rport.is_some() => {
                splice.insert_with(top.value.end, |out| {
                    out.extend_from_slice(b";received=");
                    out.extend_from_slice(ip.to_string().as_bytes());
                });
            }
            None => {}
        }
    }

    fn our_branch(&self, from: &Flow, msg: &Message) -> u64 {
        let incoming = msg
            .top_via()
            .and_then(|v| v.branch)
            .map(|b| msg.bytes(b))
            .unwrap_or_default();
        self.keys.branch_hash(from.id, incoming)
    }
}

struct Popped {
    count: usize,
    /// The first token found in a popped entry: verified flow or forged.
    token: Option<Result<FlowId, TokenError>>,
}

trait ApplyTidy {
    fn apply_tidy(self, msg: &Message) -> Option<Vec<u8>>;
}

impl ApplyTidy for Splice {
    /// Applies the proxy's edits plus two tidy-ups that remove ambiguity without changing
    /// meaning: folded lines are flattened, and whitespace between a header name and its
    /// colon (`Content-Length : 5`, legal per RFC 3261 HCOLON) is removed, so a next hop
    /// that does not allow it can never read the head differently from the edge.
    fn apply_tidy(mut self, msg: &Message) -> Option<Vec<u8>> {
        for h in &msg.head.headers {
            let between = Span::new(h.name_span.end, h.value.start.max(h.name_span.end));
            if let Some(colon) = msg.bytes(between).iter().position(|&b| b == b':') {
                if colon > 0 {
                    self.delete_unless_edited(Span::new(h.name_span.end, h.name_span.end + colon));
                }
            }
        }
        self.apply(&msg.raw, msg.head.folded.then_some(msg.head.len))
    }
}

/// A SERVICE for the A/V authentication service (MS-AVEDGEA content type).
fn is_credentials_request(msg: &Message) -> bool {
    msg.head.headers.iter().any(|h| {
        h.name == HeaderName::ContentType
            && msg
                .bytes(h.value)
                .split(|&b| b == b';')
                .next()
                .is_some_and(|t| {
                    t.trim_ascii()
                        .eq_ignore_ascii_case(crate::core::mras::CONTENT_TYPE.as_bytes())
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
    out.extend_from_slice(side.port.to_string().as_bytes());
    out.extend_from_slice(b";branch=");
    out.extend_from_slice(BRANCH_PREFIX);
    out.extend_from_slice(format!("{branch:016x}").as_bytes());
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
    out.extend_from_slice(side.port.to_string().as_bytes());
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
    if hex.len() != 16 {
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
                own_hosts: vec!["edge.example.com".into(), "10.0.0.10".into()],
                served_domains: vec!["example.com".into()],
                federation: Default::default(),
            },
            FlowKeys::new(&[7; 32], Default::default()),
        )
    }

    fn flow(p: &Proxy, id: u64, side: Side, remote: &str) -> Flow {
        Flow {
            id: FlowId(id),
            side,
            remote: remote.parse().unwrap(),
            token: p.keys().token(FlowId(id)),
            partner: None,
            certificate: None,
        }
    }

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes()), &LIMITS).unwrap()
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
        let Action::ToPool { bytes, tx } = p.handle(&f, &msg(INVITE)) else {
            panic!("not forwarded")
        };
        let text = String::from_utf8(bytes).unwrap();
        let tok = f.token.as_str();
        let (key, method) = tx.unwrap();
        let expected = format!(
            "INVITE sip:bob@example.com SIP/2.0\r\n\
            Via: SIP/2.0/TLS 10.0.0.10:5061;branch=z9hG4bKse{:016x};ftok={tok}\r\n\
            Record-Route: <sip:{tok}@10.0.0.10:5061;transport=tls;lr>, <sip:{tok}@edge.example.com:5061;transport=tls;lr>\r\n\
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

    #[test]
    fn response_from_inside_goes_back_to_the_client_flow() {
        let p = proxy();
        let client = flow(&p, 1, Side::External, "203.0.113.7:40000");
        let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
        let Action::ToPool { bytes, tx } = p.handle(&client, &msg(INVITE)) else {
            panic!()
        };
        let fwd = String::from_utf8(bytes).unwrap();
        // The Director answers: all Vias copied, To tag added.
        let vias: String = fwd
            .lines()
            .filter(|l| l.starts_with("Via:"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        let resp = format!(
            "SIP/2.0 200 OK\r\n{vias}From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b2\r\nCall-ID: call1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        let Action::ToFlow {
            flow,
            bytes,
            completes,
        } = p.handle(&director, &msg(&resp))
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
    fn forged_and_stray_responses_are_dropped() {
        let p = proxy();
        let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
        let forged = p
            .keys()
            .token(FlowId(1))
            .as_str()
            .replace('a', "b")
            .replace('0', "1");
        let resp = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 10.0.0.10:5061;branch=z9hG4bKse0000000000000001;ftok={forged}\r\nFrom: <sip:a@example.com>;tag=a\r\nTo: <sip:b@example.com>;tag=b\r\nCall-ID: c\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
        );
        assert!(matches!(
            p.handle(&director, &msg(&resp)),
            Action::Reject(Why::StrayResponse)
        ));
        let other = resp.replace("10.0.0.10:5061", "10.0.0.99:5061");
        assert!(matches!(
            p.handle(&director, &msg(&other)),
            Action::Reject(Why::StrayResponse)
        ));
    }

    #[test]
    fn outbound_request_routed_by_token_and_forgery_refused() {
        let p = proxy();
        let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
        let tok = p.keys().token(FlowId(1));
        let bye = |t: &str| {
            format!(
                "BYE sip:alice@192.168.1.5:50123;transport=tls SIP/2.0\r\n\
                Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir1\r\n\
                Route: <sip:{t}@10.0.0.10:5061;transport=tls;lr>, <sip:{t}@edge.example.com:5061;transport=tls;lr>\r\n\
                Max-Forwards: 70\r\nFrom: <sip:bob@example.com>;tag=b2\r\nTo: <sip:alice@example.com>;tag=a1\r\n\
                Call-ID: call1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let Action::ToFlow { flow, bytes, .. } = p.handle(&director, &msg(&bye(tok.as_str())))
        else {
            panic!()
        };
        assert_eq!(flow, FlowId(1));
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("Route:"), "both own routes popped: {text}");
        assert!(text.contains("Via: SIP/2.0/TLS edge.example.com:5061;branch=z9hG4bKse"));
        let mut forged = tok.as_str().to_string();
        forged.replace_range(0..1, if forged.starts_with('0') { "1" } else { "0" });
        assert!(matches!(
            p.handle(&director, &msg(&bye(&forged))),
            Action::Reject(Why::InvalidFlowToken)
        ));
        let no_route = bye(tok.as_str()).replace("Route:", "X-Route:");
        assert!(matches!(
            p.handle(&director, &msg(&no_route)),
            Action::Reject(Why::NoRoute)
        ));
    }

    #[test]
    fn register_gets_path_and_policy_rejects() {
        let p = proxy();
        let f = flow(&p, 1, Side::External, "203.0.113.7:40000");
        let reg = INVITE
            .replace("INVITE sip:bob@example.com", "REGISTER sip:example.com")
            .replace("1 INVITE", "1 REGISTER");
        let Action::ToPool { bytes, .. } = p.handle(&f, &msg(&reg)) else {
            panic!()
        };
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(&format!(
            "Path: <sip:{}@10.0.0.10:5061;transport=tls;lr>\r\n",
            f.token.as_str()
        )));
        assert!(!text.contains("Record-Route"));

        let other = INVITE.replace("sip:bob@example.com SIP", "sip:bob@example.org SIP");
        assert!(matches!(
            p.handle(&f, &msg(&other)),
            Action::Reject(Why::DomainNotServed)
        ));
        let mf0 = INVITE.replace("Max-Forwards: 70", "Max-Forwards: 0");
        assert!(matches!(
            p.handle(&f, &msg(&mf0)),
            Action::Reject(Why::TooManyHops)
        ));
        let looped = INVITE.replace(
            "Max-Forwards",
            "Via: SIP/2.0/TLS edge.example.com;branch=z9hG4bKx\r\nMax-Forwards",
        );
        assert!(matches!(
            p.handle(&f, &msg(&looped)),
            Action::Reject(Why::Loop)
        ));
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
        let Action::ToPool { bytes, .. } = p.handle(&f, &msg(FROM_PARTNER)) else {
            panic!("not forwarded")
        };
        let text = String::from_utf8(bytes).unwrap();
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

    fn assert_reject(p: &Proxy, f: &Flow, text: &str, why: Why) {
        match p.handle(f, &msg(text)) {
            Action::Reject(w) => assert_eq!(w, why, "{text}"),
            other => panic!("{other:?} for {text}"),
        }
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
        let Action::ToPartner { partner, bytes } = p.handle(&director, &msg(invite)) else {
            panic!("not sent to the partner")
        };
        assert_eq!(partner, the_partner(&p));
        let text = String::from_utf8(bytes).unwrap();
        // Record-Route names the partner, not a connection: in-dialog requests from the
        // inside reach it over any connection.
        let key = the_partner(&p).0;
        let partner_token = p.keys().token(FlowId::partner(key));
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
        let Action::ToPartner { partner, .. } = p.handle(&director, &msg(&bye)) else {
            panic!("in-dialog request not sent to the partner")
        };
        assert_eq!(partner, the_partner(&p));
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
        let branch = p.keys().branch_hash(director.id, b"z9hG4bKdir1");
        let ok = format!(
            "SIP/2.0 200 OK\r\n\
            Via: SIP/2.0/TLS edge.example.com:5061;branch=z9hG4bKse{branch:016x};ftok={t}\r\n\
            Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir1\r\n\
            From: <sip:alice@example.com>;tag=a1\r\n\
            To: <sip:bob@partner.example>;tag=b9\r\n\
            Call-ID: out1\r\n\
            CSeq: 1 MESSAGE\r\n\
            ms-edge-proxy-message-trust: injected\r\n\
            Content-Length: 0\r\n\r\n",
            t = director.token.as_str()
        );
        let Action::ToFlow { flow, bytes, .. } = p.handle(&partner, &msg(&ok)) else {
            panic!("response not routed")
        };
        assert_eq!(flow, director.id);
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("injected"));
        assert!(
            text.contains("ms-source-type=DirectPartner;ms-ep-fqdn=sip.partner.example"),
            "{text}"
        );
        msg(&text);
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
        let Action::ToPool { bytes, .. } = p.handle(&edge, &msg(&from_c)) else {
            panic!("not forwarded")
        };
        let text = String::from_utf8(bytes).unwrap();
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
        assert!(matches!(
            p.handle(&user, &msg(&from_c)),
            Action::ToPool { .. }
        ));
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
        let Action::ToPool { bytes, .. } = closed.handle(&edge, &msg(&from_c)) else {
            panic!("not forwarded")
        };
        assert!(!String::from_utf8(bytes)
            .unwrap()
            .contains("DiscoveredPartner"));
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
        let Action::ToDiscovered { target, bytes } = p.handle(&director, &msg(invite)) else {
            panic!("not sent to the discovered domain")
        };
        assert_eq!(target, DiscoveredTarget::Domain("c.example".into()));
        let token = p
            .keys()
            .token(FlowId::partner(discovered_key(b"c.example")));
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
