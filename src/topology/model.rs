//! The resolved topology: a deployment as the rest of the program sees it, typed, defaulted
//! and cross-checked. A [`Topology`] holds who the edge is ([`Edge`]), its two zones' SIP
//! listeners and certificates ([`ExternalIface`], [`InternalIface`]), the Director pool it
//! forwards to ([`NextHopPool`]), message and connection [`Limits`], the per-source
//! [`Firewall`], and, when configured, the [`Operations`] listener, the pool key ring
//! ([`KeysSource`]), the media [`Relay`] and [`FederationConfig`]. The schema builds these
//! from the TOML operators write and checks them against each other; this module only holds
//! them, says which zone a relay listener is in ([`Topology::listener_zone`]), and keeps
//! passwords out of `Debug` ([`Secret`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A whole deployment as one edge sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    /// The file this came from (`None` for the embedded default).
    pub source: Option<PathBuf>,
    /// Where generated state (dev certificates) lives.
    pub state_dir: PathBuf,
    pub edge: Edge,
    pub external: ExternalIface,
    pub internal: InternalIface,
    pub next_hop: NextHopPool,
    pub limits: Limits,
    pub firewall: Firewall,
    /// The operations listener (`/healthz`, `/metrics`), if any.
    pub operations: Option<Operations>,
    /// The pool key ring (flow tokens, relay credentials), if any; without it flow tokens
    /// use a per-process random key and no credentials are issued.
    pub keys: Option<KeysSource>,
    /// The media relay as clients are told about it, and the credentials issued for it.
    pub relay: Option<Relay>,
    /// Federation with partner edges, if any.
    pub federation: Option<FederationConfig>,
    /// Pool-wide state on Redis, if any; without it every member enforces alone.
    pub pool: Option<PoolConfig>,
    /// SIP capture to a HEP collector, if any (off by default: a capture is personal data).
    pub capture: Option<CaptureConfig>,
}

/// `[capture]`: copies of the SIP the edge receives and sends, as HEP v3, to a collector in
/// the internal zone (Homer, sngrep, Wireshark).
#[derive(Clone, Debug, PartialEq)]
pub struct CaptureConfig {
    pub collector: std::net::SocketAddr,
    pub transport: CaptureTransport,
    /// HEP's capture agent id: which edge a copy came from.
    pub agent_id: u32,
    /// The collector's password (HEP's auth key), from `password_env` or `password_file`.
    pub password: Option<Secret>,
    /// The zones whose connections are captured.
    pub external: bool,
    pub internal: bool,
    /// Whether message bodies (SDP, instant messages) are captured; without, the copy is
    /// the header block only.
    pub bodies: bool,
    /// Bytes of copies waiting for the collector before further ones are dropped.
    pub max_queued_bytes: usize,
}

/// How copies reach the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureTransport {
    Udp,
    Tcp,
}

/// `[pool]`: where the pool's shared state lives (Redis or Valkey).
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    /// `redis://host:port[/db]`, or `rediss://…` for TLS.
    pub redis: String,
    /// Every key and channel the edge uses starts with this.
    pub key_prefix: String,
    /// The ACL user, if any.
    pub username: Option<String>,
    /// From `password_env` or `password_file`, never the topology itself.
    pub password: Option<Secret>,
    /// How long a Redis command may take before the member counts Redis as down.
    pub timeout: std::time::Duration,
}

/// Federation: the partner edges and how they are trusted.
#[derive(Clone, Debug, PartialEq)]
pub struct FederationConfig {
    /// Trust roots for partner edges' certificates (PEM); `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// Connections the edge opens to one partner edge.
    pub max_connections_per_partner: usize,
    /// Name servers for partner lookups (`ip:port`); empty: the system's resolver.
    pub dns: Vec<SocketAddr>,
    /// Open federation: any other domain's edge, found by SRV and proven by a certificate
    /// naming a host within the domain.
    pub discovery: bool,
    /// Messages per second accepted from each discovered partner domain.
    pub discovery_rate: u32,
    /// Dialogs at once with each discovered partner domain.
    pub discovery_max_dialogs: usize,
    /// Addresses a discovered partner's edge may have besides public unicast ones (a lab, a
    /// private federation): by default none, so what DNS or a Route names cannot point the
    /// edge at loopback, a private or link-local range, or the host itself.
    pub discovery_allow: Vec<crate::core::net::Prefix>,
    /// Partners, ordered by name.
    pub partners: Vec<PartnerConfig>,
}

/// One allowed partner (an "allowed partner server" in Lync terms).
#[derive(Clone, Debug, PartialEq)]
pub struct PartnerConfig {
    /// The entry's name in the file (logs, metrics).
    pub name: String,
    /// The partner edge's FQDN: its certificate must carry it as a subjectAltName. `None`:
    /// an allowed partner domain, whose edge is found by DNS SRV and must be named by a
    /// host within one of its domains.
    pub fqdn: Option<String>,
    /// The SIP domains the partner speaks for.
    pub domains: Vec<String>,
    /// Where its edge is reached; empty: DNS (SRV `_sipfederationtls._tcp` of its first
    /// domain, then A/AAAA of the FQDN).
    pub addresses: Vec<SocketAddr>,
    /// Messages per second accepted from the partner, over all of its connections.
    pub rate: u32,
    /// Dialogs with the partner at once (both directions).
    pub max_dialogs: usize,
}

/// Where the pool key ring comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum KeysSource {
    /// A ring file shared by every edge of the pool (`sipedge keys init`).
    File(PathBuf),
    /// Generated under `state_dir` on first start (the loopback default only).
    Dev,
}

/// The A/V relay as the credential service advertises it.
#[derive(Clone, Debug, PartialEq)]
pub struct Relay {
    /// The relay's public host name (what clients connect to for TURN).
    pub host: String,
    pub udp_port: u16,
    pub tcp_port: u16,
    /// Lifetime of the credentials issued (1 minute to 180 days).
    pub credential_lifetime: Duration,
    /// TURN over UDP listens here; empty: the external and internal interface addresses
    /// on `udp_port`.
    pub listen_udp: Vec<SocketAddr>,
    /// TURN over TCP listens here; empty: both interface addresses on `tcp_port`.
    pub listen_tcp: Vec<SocketAddr>,
    /// TURN over TLS (`turns:`): the port advertised; `None`: no TLS.
    pub tls_port: Option<u16>,
    /// TURN over TLS listens here; empty: both interface addresses on `tls_port`.
    pub listen_tls: Vec<SocketAddr>,
    /// Where relayed sockets bind (default: the external interface's address).
    pub relay_ip: Option<std::net::IpAddr>,
    /// What XOR-RELAYED-ADDRESS advertises when the relay is behind NAT (default: relay_ip).
    pub public_ip: Option<std::net::IpAddr>,
    /// Relayed ports, inclusive.
    pub port_min: u16,
    pub port_max: u16,
    /// Let relays reach loopback peers (tests on one host only; never in production).
    pub allow_loopback_peers: bool,
    /// The TURN realm (default: the first SIP domain).
    pub realm: Option<String>,
    /// Allocations per user (credential) and per client address.
    pub max_allocations_per_user: usize,
    pub max_allocations_per_source: usize,
    /// Allocations in all.
    pub max_allocations: usize,
    /// Relayed bandwidth per allocation and per user, each direction (0: unlimited).
    pub max_kbps_per_allocation: u64,
    pub max_kbps_per_user: u64,
    /// Internal ranges beyond the private ones (refused to relays allocated from outside).
    pub internal_ranges: Vec<crate::core::net::Prefix>,
    /// Internal ranges relays allocated from outside may reach anyway.
    pub allow_peers: Vec<crate::core::net::Prefix>,
    /// Peers no relay may reach.
    pub deny_peers: Vec<crate::core::net::Prefix>,
    /// Further addresses of the external and internal interfaces: a listener's zone is the
    /// interface its address is on (never guessed).
    pub external_addresses: Vec<std::net::IpAddr>,
    pub internal_addresses: Vec<std::net::IpAddr>,
    /// TURN-over-TCP connections per zone at once.
    pub max_tcp_clients: usize,
    /// Time a TURN-over-TCP client has to authenticate (an allocation), else it is closed.
    pub tcp_auth_timeout: Duration,
    /// Bytes queued for one TURN-over-TCP client that does not read, beyond which packets
    /// for it are dropped.
    pub max_queued_bytes_per_client: usize,
    /// Answer bytes per second one source may draw without authenticating.
    pub unauthenticated_bytes_per_second: u64,
    /// Permissions and channels one allocation may hold.
    pub max_permissions_per_allocation: usize,
    pub max_channels_per_allocation: usize,
    /// Threads that read the relayed sockets (0: one per two cores, at least one).
    pub workers: usize,
    /// Relay established UDP channels in the kernel (eBPF, TC), where it can.
    pub kernel_offload: bool,
    /// The interfaces the kernel path attaches to (empty: every Ethernet and loopback one).
    pub kernel_offload_interfaces: Vec<String>,
    /// How long a permission and a channel binding last unless refreshed (RFC 8656: 300 s
    /// and 600 s).
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
}

/// The zone a relay listener serves, from the interface its address is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerZone {
    External,
    Internal,
}

impl Topology {
    /// The zone of a relay listener address: the interface it is on (the external
    /// interface's SIP address, the relay and public addresses and
    /// `relay.external_addresses`; the internal interface's SIP address and
    /// `relay.internal_addresses`). `None` when it is on neither, or on both, or the
    /// unspecified address: `check` refuses such a topology.
    pub fn listener_zone(&self, ip: std::net::IpAddr) -> Option<ListenerZone> {
        if ip.is_unspecified() {
            return None;
        }
        let relay = self.relay.as_ref();
        let external = ip == self.external.sip_bind.ip()
            || relay.is_some_and(|r| {
                r.relay_ip == Some(ip)
                    || r.public_ip == Some(ip)
                    || r.external_addresses.contains(&ip)
            });
        let internal = ip == self.internal.sip_bind.ip()
            || relay.is_some_and(|r| r.internal_addresses.contains(&ip));
        match (external, internal) {
            (true, false) => Some(ListenerZone::External),
            (false, true) => Some(ListenerZone::Internal),
            _ => None,
        }
    }
}

impl Relay {
    /// A relay advertised as `host` with every other setting at its default.
    pub fn new(host: &str) -> Relay {
        Relay {
            host: host.to_string(),
            udp_port: 3478,
            tcp_port: 443,
            credential_lifetime: Duration::from_secs(8 * 3600),
            listen_udp: Vec::new(),
            listen_tcp: Vec::new(),
            tls_port: None,
            listen_tls: Vec::new(),
            relay_ip: None,
            public_ip: None,
            port_min: 50_000,
            port_max: 59_999,
            allow_loopback_peers: false,
            realm: None,
            max_allocations_per_user: 10,
            max_allocations_per_source: 50,
            max_allocations: 10_000,
            max_kbps_per_allocation: 3000,
            max_kbps_per_user: 10_000,
            internal_ranges: Vec::new(),
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            external_addresses: Vec::new(),
            internal_addresses: Vec::new(),
            max_tcp_clients: 4096,
            tcp_auth_timeout: Duration::from_secs(10),
            max_queued_bytes_per_client: 256 * 1024,
            unauthenticated_bytes_per_second: 8 * 1024,
            max_permissions_per_allocation: 64,
            max_channels_per_allocation: 64,
            workers: 0,
            kernel_offload: false,
            kernel_offload_interfaces: Vec::new(),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
        }
    }
}

/// The operations listener: plain HTTP on an internal or management address only.
#[derive(Clone, Debug, PartialEq)]
pub struct Operations {
    pub listen: SocketAddr,
}

/// Who the edge is.
#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    /// Instance name (logs, metrics).
    pub name: String,
    /// The pool's FQDN: what clients resolve and what the external certificate names.
    pub pool_fqdn: String,
    /// SIP domains served behind this edge (lower-case).
    pub sip_domains: Vec<String>,
}

/// The Internet-facing side: TLS only.
#[derive(Clone, Debug, PartialEq)]
pub struct ExternalIface {
    /// Where SIP over TLS listens.
    pub sip_bind: SocketAddr,
    /// Host name or address the edge writes in its Via/Record-Route on this side
    /// (defaults to the pool FQDN).
    pub sip_host: String,
    pub cert: CertSource,
}

/// The side facing the Director pool: mutual TLS only.
#[derive(Clone, Debug, PartialEq)]
pub struct InternalIface {
    /// Where SIP over mutual TLS from the internal servers listens.
    pub sip_bind: SocketAddr,
    /// Host name or address the edge writes in its Via/Record-Route/Path on this side
    /// (defaults to the bind IP).
    pub sip_host: String,
    /// The edge's certificate on the internal side (also its client certificate toward the pool).
    pub cert: CertSource,
    /// Trust anchors that internal peers' certificates must chain to.
    pub ca: CaSource,
}

/// Where a certificate and its key come from.
#[derive(Clone, Debug, PartialEq)]
pub enum CertSource {
    /// PEM certificate chain and PEM private key (PKCS#8, PKCS#1 or SEC1).
    Pem { cert: PathBuf, key: PathBuf },
    /// A PKCS#12 bundle (.pfx as exported from a Windows CA) and its password.
    Pkcs12 { path: PathBuf, password: Secret },
    /// Generated on first start under `state_dir` (the loopback default only).
    Dev,
}

/// Where trust anchors come from.
#[derive(Clone, Debug, PartialEq)]
pub enum CaSource {
    /// One PEM file with one or more CA certificates.
    Pem(PathBuf),
    /// The dev CA generated under `state_dir`.
    Dev,
}

/// The Director pool: the only place inbound SIP goes.
#[derive(Clone, Debug, PartialEq)]
pub struct NextHopPool {
    pub members: Vec<SocketAddr>,
    /// The name every member's certificate must carry as a subjectAltName.
    pub server_name: String,
    pub probe: Probe,
    /// Retry-After seconds on the 503 sent when no member is up.
    pub retry_after: Duration,
}

/// OPTIONS health probes of next hops: up after `rise` good answers in a row, down after
/// `fall` missed or bad ones.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// Named limits (see `core::limits` for the why of each default).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub max_headers: usize,
    pub max_line_bytes: usize,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// A peer that does not take the edge's bytes for this long is cut off.
    pub write_timeout: Duration,
    /// Bytes queued for one connection (its peer reads slowly) before further messages
    /// for it are refused (requests 503) or dropped (responses).
    pub max_queued_bytes: usize,
    pub max_connections: usize,
    /// TLS handshakes in progress at once per listener (handshakes cost CPU; a flood of
    /// them must not starve established connections).
    pub max_handshakes: usize,
    /// Transactions in flight toward the pool before new dialogs get 503 (overload).
    pub max_outstanding: usize,
    /// On SIGTERM, how long transactions in flight and calls in progress are given.
    pub drain_timeout: Duration,
    /// Calls (INVITE dialogs) crossing the edge at once, every source together.
    pub max_calls: usize,
    /// Calls one external source (IPv4 address, IPv6 /64) holds at once.
    pub max_calls_per_source: usize,
    /// How long an answered call is counted without a BYE.
    pub max_call_duration: Duration,
}

/// The external zone's per-source limits, bans and allow-list (`core::limits`).
#[derive(Clone, Debug, PartialEq)]
pub struct Firewall {
    /// New connections (TLS handshakes) per source per second, and burst.
    pub connect_rate: u32,
    pub connect_burst: u32,
    /// Concurrent connections per source (IPv4 address, IPv6 /64).
    pub connections_per_source: u32,
    /// SIP requests per source per second across its connections, and burst.
    pub request_rate: u32,
    pub request_burst: u32,
    /// SIP requests per connection per second, and burst.
    pub connection_request_rate: u32,
    pub connection_request_burst: u32,
    /// Strikes (refusals, rejected messages) within `strike_window` that ban a source;
    /// 0 disables bans.
    pub ban_after: u32,
    pub strike_window: Duration,
    pub ban_time: Duration,
    /// Sources never limited per source nor banned.
    pub allow_sources: Vec<crate::core::net::Prefix>,
    /// Sources tracked at once; beyond, new sources share one budget.
    pub max_sources: usize,
    /// Header names stripped from whatever arrives from outside, besides the built-in
    /// trust-domain list (`core::sip::TRUST_DOMAIN_HEADERS`); lower-case.
    pub strip_headers: Vec<String>,
}

/// A secret string (a PKCS#12 password): usable as `&str`, never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl Default for Firewall {
    /// The documented defaults (`topology/README.md`).
    fn default() -> Self {
        use super::defaults::*;
        let n = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Firewall {
            connect_rate: n(CONNECT_RATE),
            connect_burst: n(CONNECT_BURST),
            connections_per_source: n(CONNECTIONS_PER_SOURCE),
            request_rate: n(REQUEST_RATE),
            request_burst: n(REQUEST_BURST),
            connection_request_rate: n(CONNECTION_REQUEST_RATE),
            connection_request_burst: n(CONNECTION_REQUEST_BURST),
            ban_after: n(BAN_AFTER),
            strike_window: STRIKE_WINDOW,
            ban_time: BAN_TIME,
            allow_sources: Vec::new(),
            max_sources: usize::try_from(MAX_SOURCES).unwrap_or(usize::MAX),
            strip_headers: Vec::new(),
        }
    }
}
