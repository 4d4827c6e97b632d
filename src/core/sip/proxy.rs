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
//!
//! This file holds the types, the dispatch and what every direction shares (the edge's own
//! hosts, Route popping, Max-Forwards, the branch); `inbound` decides requests from outside,
//! `outbound` requests from the inside, `response` responses either way, and `wire` writes
//! what the proxy adds.

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

mod inbound;
mod outbound;
mod response;
mod wire;

use outbound::*;
use wire::*;

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

    /// The zone across the edge from this one.
    pub fn other(self) -> Side {
        match self {
            Side::External => Side::Internal,
            Side::Internal => Side::External,
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
    /// The flow-token keys in force (a rotation of the pool ring replaces them).
    keys: RwLock<Arc<FlowKeys>>,
    /// The partners in force: `cfg.federation` at first, replaced whole by a reload.
    federation: RwLock<Arc<Federation>>,
    /// `cfg.strip_headers` at first, replaced whole by a reload.
    strip_headers: RwLock<Arc<[String]>>,
    /// `cfg.next_hops` at first, replaced whole by a reload.
    next_hops: RwLock<Arc<[SocketAddr]>>,
    /// Every address the edge's own hosts spell, and the IPv4 addresses embedded in them
    /// (`policy::reaches`): what an address host is compared with.
    own_addresses: Vec<IpAddr>,
}

const BRANCH_PREFIX: &[u8] = b"z9hG4bKse";
const PROBE_PREFIX: &str = "z9hG4bKprobe";

impl Proxy {
    pub fn new(cfg: ProxyConfig, keys: FlowKeys) -> Proxy {
        let federation = RwLock::new(Arc::new(cfg.federation.clone()));
        let strip_headers = RwLock::new(Arc::from(cfg.strip_headers.clone()));
        let next_hops = RwLock::new(Arc::from(cfg.next_hops.clone()));
        let mut own_addresses: Vec<IpAddr> = cfg
            .own_hosts
            .iter()
            .filter_map(|h| host_address(h.as_bytes()))
            .flat_map(|ip| {
                crate::core::turn::policy::reaches(ip)
                    .iter()
                    .collect::<Vec<_>>()
            })
            .collect();
        own_addresses.sort();
        own_addresses.dedup();
        Proxy {
            own_addresses,
            cfg,
            keys: RwLock::new(Arc::new(keys)),
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

    /// Replaces the flow-token keys (the pool ring changed, or a new key started signing):
    /// from the next message on.
    pub fn set_keys(&self, keys: FlowKeys) {
        *self.keys.write_unpoisoned() = Arc::new(keys);
    }

    pub fn keys(&self) -> Arc<FlowKeys> {
        self.keys.read_unpoisoned().clone()
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
        reject::answer(
            raw,
            why,
            msg.and_then(|m| m.proxy_require.map(|s| m.bytes(s))),
        )
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

    fn is_served(&self, domain: &[u8]) -> bool {
        self.cfg
            .served_domains
            .iter()
            .any(|d| d.as_bytes().eq_ignore_ascii_case(domain))
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

    /// Whether `host` names the edge however it is spelled: a name with or without its
    /// trailing root dot, any case; an address in any spelling a next hop's resolver would
    /// take for it (IPv6 expanded or compressed, an IPv4 address mapped or embedded in
    /// IPv6, the numeric IPv4 forms of `inet_aton`). Compared as written only, the edge's
    /// internal address spelled `[::ffff:10.0.0.10]` passed for somewhere else.
    fn is_own_host(&self, host: &[u8]) -> bool {
        let name = host.strip_suffix(b".").unwrap_or(host);
        if self
            .cfg
            .own_hosts
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
        {
            return true;
        }
        let Some(ip) = host_address(host) else {
            return false;
        };
        crate::core::turn::policy::reaches(ip)
            .iter()
            .any(|r| self.own_addresses.contains(&r))
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

    /// Whether the Request-URI names the edge itself (one of its own host names or addresses).
    fn request_uri_is_own(&self, msg: &Message) -> bool {
        msg.request_uri().is_some_and(|r| self.names_edge(msg, r))
    }

    fn our_branch(&self, from: FlowId, target: FlowId, msg: &Message) -> u64 {
        match msg.top_via() {
            Some(top) => self.keys().branch(from, target, sender_tx(msg, top)),
            None => self.keys().branch(
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

struct Popped<'m> {
    count: usize,
    /// The user part of the first popped entry that has one: a token, or a claim of one.
    token: Option<&'m [u8]>,
}

#[cfg(test)]
mod tests;

/// The address a URI's host names, in any spelling a resolver takes: a bracketed IPv6
/// address, a dotted IPv4 address, or the numeric forms `inet_aton` and `getaddrinfo`
/// accept for IPv4 (one to four parts, each decimal, octal with a leading 0, or hex with
/// 0x: `10.0.0.010`, `167772170`, `0xa00000a`, `10.10`). `None` for a name.
pub(crate) fn host_address(host: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(host).ok()?;
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        // A zone index (`%eth0`) does not make it another address.
        let inner = inner.split('%').next().unwrap_or(inner);
        return inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let text = text.strip_suffix('.').unwrap_or(text);
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    // At most four parts, read in place: this runs for hosts in Routes and Request-URIs,
    // on every message.
    let mut values = [0u32; 4];
    let mut count = 0;
    for part in text.split('.') {
        let slot = values.get_mut(count)?;
        let (digits, radix) =
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                (hex, 16)
            } else if let Some(octal) = part.strip_prefix('0').filter(|o| !o.is_empty()) {
                (octal, 8)
            } else {
                (part, 10)
            };
        // Digits only (`from_str_radix` would also take a leading `+`, which resolvers do not).
        if (digits.is_empty() && radix != 16) || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        *slot = if digits.is_empty() {
            0
        } else {
            u32::from_str_radix(digits, radix).ok()?
        };
        count += 1;
    }
    // The last part fills the bytes the others leave.
    let (last, leading) = values.get(..count)?.split_last()?;
    let mut addr: u32 = 0;
    for (i, v) in leading.iter().enumerate() {
        if *v > 0xff {
            return None;
        }
        addr |= v << (24 - 8 * i);
    }
    let room = 32 - 8 * leading.len();
    if room < 32 && u64::from(*last) >= 1u64 << room {
        return None;
    }
    addr |= last;
    Some(IpAddr::V4(std::net::Ipv4Addr::from(addr)))
}
