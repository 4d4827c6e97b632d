//! Federation in the shell: connections to partner edges and the partners' message rates.
//!
//! Requests for a partner go out from the external interface over mutual TLS: the edge
//! presents its external certificate and verifies the partner edge's certificate against the
//! federation roots and the name the partner is known by (a listed partner server's FQDN; an
//! SRV target within the domain of an allowed partner domain or a discovered partner; the
//! host a Route names within it). Connections are reused; one is opened when none is up.
//! Requests that arrive while it is being opened wait for it (bounded); when it cannot be
//! made they are answered 503 with Retry-After. An outbound connection then runs exactly
//! like an accepted one (`conn`): what the partner sends on it passes the same checks.
//!
//! Discovered partners (open federation) are kept in a bounded table: a flood of made-up
//! domains from the inside cannot grow it without bound, nor can one from outside grow the
//! per-domain rate table.

use crate::sync::{MutexExt, RwLockExt};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::client::UnbufferedClientConnection;
use rustls_pki_types::ServerName;

use super::conn;
use super::conn::Routing;
use super::shared::Shared;
use super::tls_stream::{self, TlsStream};
use crate::core::firewall::{Gcra, Rate};
use crate::core::sip::calls::{Calls, Owner};
use crate::core::sip::federation::{discovered_key, Federation, PartnerId};
use crate::core::sip::pool_link::Answerable;
use crate::core::sip::proxy::{DiscoveredTarget, Side};
use crate::core::sip::reject::Why;
use crate::core::sip::session::PartnerRequest;
pub use crate::core::sip::session::PartnerTarget as Target;
use crate::core::sip::token::FlowId;

/// Requests held for a partner while its connection is being opened.
const MAX_WAITING: usize = 256;
/// How long opening a connection (TCP and TLS) to a partner edge may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The Retry-After of a 503 when a partner edge cannot be reached.
const RETRY_AFTER_SECS: u32 = 30;
/// Discovered partner edges the edge keeps connections (and their state) for.
const MAX_DISCOVERED: usize = 1024;
/// Foreign domains whose message rate is tracked (open federation).
const MAX_DISCOVERED_RATES: usize = 4096;

/// Where a listed partner's edge is reached.
#[derive(Clone, Debug)]
pub struct StaticEdge {
    /// Static addresses from the topology (tried in order).
    pub addresses: Vec<SocketAddr>,
    /// The name its certificate must carry (an allowed partner server's FQDN); `None`: the
    /// SRV target found within the partner's domain.
    pub server_name: Option<ServerName<'static>>,
}

/// What each discovered partner domain may send and hold.
#[derive(Clone, Copy, Debug)]
pub struct DiscoveryLimits {
    pub rate: Rate,
    pub max_dialogs: usize,
}

/// What became of a request handed to [`Partners::send`].
enum Sent {
    /// On a connection that is up.
    Now,
    /// Waiting for a connection (whose opening this call starts, if `connect`).
    Waiting { connect: bool },
}

/// A request waiting for a connection, with what it takes to refuse it.
struct Waiting {
    bytes: Bytes,
    /// Whom to answer 503 if no connection can be made.
    answerable: Answerable,
}

#[derive(Default)]
struct PartnerState {
    /// Outbound connections that are up.
    flows: Vec<FlowId>,
    /// Attempts in flight.
    connecting: usize,
    waiting: Vec<Waiting>,
    /// Messages accepted from this partner (its rate).
    rate: Gcra,
}

/// Counters per partner (exported on `/metrics`).
#[derive(Default)]
pub struct PartnerStats {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub rate_limited: AtomicU64,
    pub connect_failures: AtomicU64,
}

/// The partners' connections and limits. The partner list, their edges, DNS and the
/// discovery limits are replaced whole by a reload; per-partner state is kept by partner key,
/// so partners that stay keep their connections, rates and dialogs.
pub struct Partners {
    config: std::sync::RwLock<Arc<Config>>,
    connector: Arc<rustls::ClientConfig>,
    /// The external interface: connections to partners leave from it.
    local_ip: IpAddr,
    max_connections: usize,
    listed: Mutex<HashMap<PartnerId, PartnerState>>,
    discovered: Mutex<HashMap<DiscoveredTarget, PartnerState>>,
    discovered_rates: Mutex<HashMap<String, Gcra>>,
    stats: std::sync::RwLock<HashMap<PartnerId, Arc<PartnerStats>>>,
    /// All discovered partners together.
    pub discovered_stats: PartnerStats,
}

/// What a reload may replace.
pub struct Config {
    pub federation: Arc<Federation>,
    /// For partners without static addresses, and discovered ones.
    pub dns: Option<super::dns::Dns>,
    /// Listed partners' edges, by partner.
    pub edges: HashMap<PartnerId, StaticEdge>,
    pub discovery: DiscoveryLimits,
    /// The addresses a discovered partner's edge may have: what DNS or a Route from
    /// outside names is connected to only if this allows it (as a relay peer from outside:
    /// no loopback, private, link-local or reserved range, none of the host's own, unless
    /// `federation.discovery_allow` names it).
    pub discovered_addresses: DiscoveredAddresses,
}

/// Which addresses a discovered partner's edge may have: what passes `policy` as a relay peer
/// from outside (public unicast, none of the edge's own), or what `allow`
/// (`federation.discovery_allow`) names exactly, which still may not be the edge's own.
#[derive(Clone, Debug, Default)]
pub struct DiscoveredAddresses {
    pub allow: Vec<crate::core::net::Prefix>,
    pub policy: crate::core::turn::policy::PeerPolicy,
}

impl DiscoveredAddresses {
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.allow.iter().any(|p| p.contains(ip)) {
            let real = crate::core::turn::policy::effective(ip);
            return !self
                .policy
                .own
                .iter()
                .any(|o| crate::core::turn::policy::effective(*o) == real);
        }
        self.policy
            .check(ip, crate::core::turn::policy::Origin::External)
            .is_ok()
    }
}

impl Partners {
    pub fn new(
        config: Config,
        connector: Arc<rustls::ClientConfig>,
        local_ip: IpAddr,
        max_connections: usize,
    ) -> Partners {
        let partners = Partners {
            config: std::sync::RwLock::new(Arc::new(Config {
                federation: Arc::new(Federation::default()),
                dns: None,
                edges: HashMap::new(),
                discovery: config.discovery,
                discovered_addresses: config.discovered_addresses.clone(),
            })),
            connector,
            local_ip,
            max_connections: max_connections.max(1),
            listed: Mutex::new(HashMap::new()),
            discovered: Mutex::new(HashMap::new()),
            discovered_rates: Mutex::new(HashMap::new()),
            stats: std::sync::RwLock::new(HashMap::new()),
            discovered_stats: PartnerStats::default(),
        };
        partners.reconfigure(config);
        partners
    }

    /// Puts a new partner list (and edges, DNS, discovery limits) in force. Partners that
    /// stay keep their state; new ones start fresh; removed ones are forgotten (their
    /// connections' requests are refused from now on, as nothing names them any more).
    pub fn reconfigure(&self, config: Config) {
        let keys: Vec<PartnerId> = config.federation.iter().map(|(id, _)| id).collect();
        {
            let mut stats = self.stats.write_unpoisoned();
            stats.retain(|id, _| keys.contains(id));
            for id in &keys {
                stats.entry(*id).or_default();
            }
        }
        self.listed
            .lock_unpoisoned()
            .retain(|id, _| keys.contains(id));
        *self.config.write_unpoisoned() = Arc::new(config);
    }

    fn config(&self) -> Arc<Config> {
        self.config.read_unpoisoned().clone()
    }

    /// The partners in force now.
    pub fn federation(&self) -> Arc<Federation> {
        self.config().federation.clone()
    }

    /// Runs `f` on a partner's state; a discovered one is created if the table has room.
    fn with_state<R>(&self, t: &Target, f: impl FnOnce(&mut PartnerState) -> R) -> Option<R> {
        match t {
            Target::Listed(p) => {
                self.config().federation.get(*p)?;
                let mut listed = self.listed.lock_unpoisoned();
                Some(f(listed.entry(*p).or_default()))
            }
            Target::Discovered(d) => {
                let mut table = self.discovered.lock_unpoisoned();
                if !table.contains_key(d) {
                    if table.len() >= MAX_DISCOVERED {
                        // Forget discovered partners with nothing going on.
                        table.retain(|_, s| !s.flows.is_empty() || s.connecting > 0);
                    }
                    if table.len() >= MAX_DISCOVERED {
                        return None;
                    }
                    table.insert(d.clone(), PartnerState::default());
                }
                table.get_mut(d).map(f)
            }
        }
    }

    fn stats(&self, t: &Target) -> Option<Arc<PartnerStats>> {
        match t {
            Target::Listed(p) => self.stats.read_unpoisoned().get(p).cloned(),
            Target::Discovered(_) => None,
        }
    }

    /// Counters of a partner (listed), or of all discovered ones together.
    fn stats_for(&self, t: &Target, f: impl FnOnce(&PartnerStats)) {
        match t {
            Target::Listed(_) => {
                if let Some(s) = self.stats(t) {
                    f(&s);
                }
            }
            Target::Discovered(_) => f(&self.discovered_stats),
        }
    }

    /// Counters of every listed partner, in the order of [`Partners::federation`].
    pub fn stats_by_partner(&self) -> Vec<(String, Arc<PartnerStats>)> {
        let stats = self.stats.read_unpoisoned();
        self.federation()
            .iter()
            .filter_map(|(id, p)| Some((p.label().to_string(), stats.get(&id)?.clone())))
            .collect()
    }

    fn label(&self, t: &Target) -> String {
        match t {
            Target::Listed(p) => self
                .federation()
                .get(*p)
                .map_or_else(String::new, |x| x.label().to_string()),
            Target::Discovered(DiscoveredTarget::Domain(d)) => d.clone(),
            Target::Discovered(DiscoveredTarget::Edge { host, .. }) => host.clone(),
        }
    }

    /// Whether a message from partner `p` fits its rate; `Err(retry after)` when not.
    pub fn admit(&self, p: PartnerId, now: Instant) -> Result<(), Duration> {
        let rate = self
            .federation()
            .get(p)
            .map(|partner| partner.rate)
            .unwrap_or(Rate {
                per_sec: 0,
                burst: 0,
            });
        let verdict = self
            .with_state(&Target::Listed(p), |st| st.rate.take(rate, now))
            .unwrap_or(Err(Duration::from_secs(1)));
        self.stats_for(&Target::Listed(p), |s| count(s, verdict.is_ok()));
        verdict
    }

    /// Whether a message from a discovered partner's `domain` fits the discovery rate.
    /// The table is bounded: when full of busy domains, newcomers wait for room.
    pub fn admit_discovered(&self, domain: &[u8], now: Instant) -> Result<(), Duration> {
        let domain = String::from_utf8_lossy(domain).to_ascii_lowercase();
        let verdict = {
            let mut rates = self.discovered_rates.lock_unpoisoned();
            if !rates.contains_key(&domain) && rates.len() >= MAX_DISCOVERED_RATES {
                // Entries whose bucket has refilled carry no history worth keeping.
                rates.retain(|_, g| !g.is_idle(now));
            }
            if !rates.contains_key(&domain) && rates.len() >= MAX_DISCOVERED_RATES {
                Err(Duration::from_secs(1))
            } else {
                rates
                    .entry(domain)
                    .or_default()
                    .take(self.config().discovery.rate, now)
            }
        };
        count(&self.discovered_stats, verdict.is_ok());
        verdict
    }

    /// Sends a request to a partner: on a connection that is up, or once one is opened.
    /// `Err` when it cannot even wait: the caller answers with it.
    pub fn send(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        routes: &Arc<dyn Routing>,
        request: PartnerRequest,
    ) -> Result<(), Why> {
        let PartnerRequest {
            target,
            bytes,
            answerable,
        } = request;
        let unavailable = Why::PartnerUnavailable {
            retry_after_secs: RETRY_AFTER_SECS,
        };
        let max = self.max_connections;
        let decided = self.with_state(&target, |st| {
            // Any connection that is up; one that went away is forgotten.
            while let Some(&flow) = st.flows.first() {
                match shared.flows.send(flow, bytes.clone()) {
                    Ok(()) => return Ok(Sent::Now),
                    Err(super::flows::SendError::Full) => {
                        return Err(Why::Overloaded {
                            retry_after_secs: 1,
                        })
                    }
                    Err(_) => st.flows.retain(|f| *f != flow),
                }
            }
            if st.waiting.len() >= MAX_WAITING {
                return Err(unavailable);
            }
            st.waiting.push(Waiting {
                bytes: bytes.clone(),
                answerable: answerable.clone(),
            });
            let connect = st.connecting == 0 && st.flows.len() < max;
            if connect {
                st.connecting += 1;
            }
            Ok(Sent::Waiting { connect })
        });
        match decided {
            None => Err(unavailable),
            Some(Err(why)) => Err(why),
            Some(Ok(Sent::Now)) => {
                self.count_sent(&target);
                Ok(())
            }
            Some(Ok(Sent::Waiting { connect })) => {
                if connect {
                    let (this, shared, routes) = (self.clone(), shared.clone(), routes.clone());
                    tokio::spawn(
                        async move { this.connect_and_serve(&shared, &routes, target).await },
                    );
                }
                Ok(())
            }
        }
    }

    fn count_sent(&self, t: &Target) {
        self.stats_for(t, |s| {
            s.sent.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// Opens a connection to the partner, hands it the waiting requests and runs it until
    /// it closes; if none can be opened, the waiting requests get 503.
    async fn connect_and_serve(
        self: Arc<Self>,
        shared: &Arc<Shared>,
        routes: &Arc<dyn Routing>,
        target: Target,
    ) {
        let (stream, remote) = match self.connect(&target).await {
            Ok(c) => c,
            Err(e) => return self.connect_failed(shared, &target, &e),
        };
        // What the partner proved itself with: a discovered partner's requests are held to
        // the domain its certificate names.
        let certificate = crate::tls::peer_identity(stream.common())
            .map(|id| Arc::<[String]>::from(id.dns_names));
        let partner = match target {
            Target::Listed(p) => Some(p),
            Target::Discovered(_) => None,
        };
        let (session, rx) = conn::register(shared, Side::External, remote, partner, certificate);
        let flow = session.flow().id;
        self.connected(shared, &target, flow);
        let (closed, _) = conn::run(session, shared, routes, stream, rx, None).await;
        tracing::debug!(%remote, flow = flow.0, reason = ?closed, "partner connection closed");
        self.with_state(&target, |st| st.flows.retain(|f| *f != flow));
    }

    /// A connection is up: it takes the waiting requests.
    fn connected(&self, shared: &Shared, target: &Target, flow: FlowId) {
        let waiting = self
            .with_state(target, |st| {
                st.connecting = st.connecting.saturating_sub(1);
                st.flows.push(flow);
                std::mem::take(&mut st.waiting)
            })
            .unwrap_or_default();
        for w in waiting {
            if shared.flows.send(flow, w.bytes).is_ok() {
                self.count_sent(target);
            }
        }
    }

    /// No connection could be made: the waiting requests get 503 with Retry-After.
    fn connect_failed(&self, shared: &Shared, target: &Target, e: &std::io::Error) {
        let waiting = self
            .with_state(target, |st| {
                st.connecting = st.connecting.saturating_sub(1);
                std::mem::take(&mut st.waiting)
            })
            .unwrap_or_default();
        self.stats_for(target, |s| {
            s.connect_failures.fetch_add(1, Ordering::Relaxed);
        });
        let name = self.label(target);
        tracing::warn!(partner = %name, error = %e, "cannot connect to partner edge");
        let why = Why::PartnerUnavailable {
            retry_after_secs: RETRY_AFTER_SECS,
        };
        for w in waiting {
            shared.stats.reject(why, Side::Internal);
            shared.answer_in_place_of(&w.answerable, why);
        }
    }

    /// The addresses to try, each with the name the certificate must carry.
    async fn candidates(&self, target: &Target) -> Vec<(SocketAddr, ServerName<'static>)> {
        let named = |list: Vec<(SocketAddr, String)>, fixed: Option<&ServerName<'static>>| {
            list.into_iter()
                .filter_map(|(addr, host)| {
                    let name = match fixed {
                        Some(name) => name.clone(),
                        None => ServerName::try_from(host).ok()?,
                    };
                    Some((addr, name))
                })
                .collect::<Vec<_>>()
        };
        match target {
            Target::Listed(p) => {
                let config = self.config();
                let Some(edge) = config.edges.get(p) else {
                    return Vec::new();
                };
                if edge.addresses.is_empty() {
                    named(self.resolve(*p).await, edge.server_name.as_ref())
                } else {
                    let Some(name) = &edge.server_name else {
                        return Vec::new();
                    };
                    edge.addresses.iter().map(|a| (*a, name.clone())).collect()
                }
            }
            Target::Discovered(d) => {
                let config = self.config();
                let Some(dns) = &config.dns else {
                    return Vec::new();
                };
                let found = match d {
                    DiscoveredTarget::Domain(domain) => dns.partner_edge(domain, None).await,
                    DiscoveredTarget::Edge { host, port, .. } => dns.host(host, *port).await,
                };
                // The outside chose these names (its DNS, its Record-Route): nothing it
                // names may be the edge itself or the networks behind it.
                let (allowed, refused): (Vec<_>, Vec<_>) = found
                    .into_iter()
                    .partition(|(addr, _)| config.discovered_addresses.allows(addr.ip()));
                if let Some((addr, name)) = refused.first() {
                    let addr = crate::obs::redact::pii(*addr);
                    tracing::warn!(%addr, edge = %name, refused = refused.len(), "a discovered partner's edge resolves to an address the edge does not connect to (federation.discovery_allow)");
                }
                named(allowed, None)
            }
        }
    }

    async fn connect(
        &self,
        target: &Target,
    ) -> std::io::Result<(Box<TlsStream<UnbufferedClientConnection>>, SocketAddr)> {
        let mut last = std::io::Error::other("no address for the partner edge");
        for (addr, server_name) in self.candidates(target).await {
            let attempt = async {
                let socket = match addr {
                    SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                // From the external interface: the partner sees the edge's public address.
                if self.local_ip.is_ipv4() == addr.is_ipv4() {
                    socket.bind(SocketAddr::new(self.local_ip, 0))?;
                }
                let tcp = socket.connect(addr).await?;
                let _ = tcp.set_nodelay(true);
                tls_stream::connect(tcp, self.connector.clone(), server_name).await
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(Ok(stream)) => return Ok((stream, addr)),
                Ok(Err(e)) => last = e,
                Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
            }
        }
        Err(last)
    }

    /// A listed partner's edge from DNS: SRV of each of its domains in turn, then its FQDN.
    async fn resolve(&self, p: PartnerId) -> Vec<(SocketAddr, String)> {
        let config = self.config();
        let (Some(dns), Some(partner)) = (&config.dns, config.federation.get(p)) else {
            return Vec::new();
        };
        for domain in &partner.domains {
            let found = dns.partner_edge(domain, partner.fqdn.as_deref()).await;
            if !found.is_empty() {
                return found;
            }
        }
        Vec::new()
    }

    /// The dialog key and limit of a listed partner or a discovered domain.
    pub fn dialog_limit(&self, target: &Target) -> Option<(u64, usize)> {
        match target {
            Target::Listed(p) => self.federation().get(*p).map(|x| (p.0, x.max_dialogs)),
            Target::Discovered(DiscoveredTarget::Domain(d))
            | Target::Discovered(DiscoveredTarget::Edge { domain: d, .. }) => Some((
                discovered_key(d.as_bytes()),
                self.config().discovery.max_dialogs,
            )),
        }
    }

    /// Dialogs counted with each listed partner in `calls` (for `/metrics`).
    pub fn dialogs(&self, calls: &Calls) -> Vec<usize> {
        self.federation()
            .iter()
            .map(|(id, _)| calls.count(Owner::Partner(id.0)))
            .collect()
    }

    /// Connections up per listed partner (for `/metrics`).
    pub fn connections(&self) -> Vec<usize> {
        let listed = self.listed.lock_unpoisoned();
        self.federation()
            .iter()
            .map(|(id, _)| listed.get(&id).map_or(0, |s| s.flows.len()))
            .collect()
    }

    /// Connections up to discovered partners (for `/metrics`).
    pub fn discovered_connections(&self) -> usize {
        self.discovered
            .lock_unpoisoned()
            .values()
            .map(|s| s.flows.len())
            .sum()
    }
}

fn count(stats: &PartnerStats, admitted: bool) {
    let counter = if admitted {
        &stats.received
    } else {
        &stats.rate_limited
    };
    counter.fetch_add(1, Ordering::Relaxed);
}
