//! Federation in the shell: connections to partner edges and the per-partner message rate.
//!
//! Requests for a partner go out from the external interface over mutual TLS: the edge
//! presents its external certificate and verifies the partner edge's certificate against the
//! federation roots and the partner's FQDN. Connections are reused; one is opened when none
//! is up, up to `max_connections_per_partner` (attempts in flight count). Requests that
//! arrive while a connection is being opened wait for it (bounded); when it cannot be made
//! they are answered 503 with Retry-After. An outbound connection then runs exactly like an
//! accepted partner connection (`conn`): what the partner sends on it passes the same checks.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::conn::{Accepted, Conn};
use super::Shared;
use crate::core::limits::{Gcra, Rate};
use crate::core::sip::federation::{Federation, PartnerId};
use crate::core::sip::proxy::Side;
use crate::core::sip::reject::Why;
use crate::core::sip::token::FlowId;

/// Requests held for a partner while its connection is being opened.
const MAX_WAITING: usize = 256;
/// How long opening a connection (TCP and TLS) to a partner edge may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The Retry-After of a 503 when a partner edge cannot be reached.
const RETRY_AFTER_SECS: u32 = 30;

/// Where a partner edge is reached.
#[derive(Clone, Debug)]
pub struct Target {
    /// Static addresses from the topology (tried in order).
    pub addresses: Vec<SocketAddr>,
    /// The name its certificate must carry (an allowed partner server's FQDN); `None`: the
    /// SRV target found within the partner's domain.
    pub server_name: Option<ServerName<'static>>,
}

/// A request waiting for a connection, with what it takes to refuse it.
struct Waiting {
    bytes: Bytes,
    /// The flow it came from and its original bytes, for a 503.
    origin: FlowId,
    raw: Bytes,
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
    pub sent: std::sync::atomic::AtomicU64,
    pub received: std::sync::atomic::AtomicU64,
    pub rate_limited: std::sync::atomic::AtomicU64,
    pub connect_failures: std::sync::atomic::AtomicU64,
}

/// The partners' connections and limits.
pub struct Partners {
    federation: Federation,
    /// For partners without static addresses.
    dns: Option<super::dns::Dns>,
    targets: Vec<Target>,
    connector: TlsConnector,
    /// The external interface: connections to partners leave from it.
    local_ip: IpAddr,
    max_connections: usize,
    state: Vec<Mutex<PartnerState>>,
    pub stats: Vec<PartnerStats>,
    /// The edge's shared state, set once it exists (connections need it to run).
    shared: std::sync::OnceLock<Weak<Shared>>,
}

impl Partners {
    pub fn new(
        federation: Federation,
        dns: Option<super::dns::Dns>,
        targets: Vec<Target>,
        connector: TlsConnector,
        local_ip: IpAddr,
        max_connections: usize,
    ) -> Partners {
        let n = targets.len();
        Partners {
            federation,
            dns,
            targets,
            connector,
            local_ip,
            max_connections: max_connections.max(1),
            state: (0..n)
                .map(|_| Mutex::new(PartnerState::default()))
                .collect(),
            stats: (0..n).map(|_| PartnerStats::default()).collect(),
            shared: std::sync::OnceLock::new(),
        }
    }

    pub fn set_shared(&self, shared: &Arc<Shared>) {
        let _ = self.shared.set(Arc::downgrade(shared));
    }

    pub fn federation(&self) -> &Federation {
        &self.federation
    }

    fn state(&self, p: PartnerId) -> Option<std::sync::MutexGuard<'_, PartnerState>> {
        self.state
            .get(usize::from(p.0))
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn stats(&self, p: PartnerId) -> Option<&PartnerStats> {
        self.stats.get(usize::from(p.0))
    }

    /// Whether a message from partner `p` fits its rate; `Err(retry after)` when not.
    pub fn admit(&self, p: PartnerId, now: Instant) -> Result<(), Duration> {
        let rate = self
            .federation
            .get(p)
            .map(|partner| partner.rate)
            .unwrap_or(Rate {
                per_sec: 0,
                burst: 0,
            });
        let Some(mut st) = self.state(p) else {
            return Err(Duration::from_secs(1));
        };
        let verdict = st.rate.take(rate, now);
        drop(st);
        if let Some(stats) = self.stats(p) {
            let counter = match verdict {
                Ok(()) => &stats.received,
                Err(_) => &stats.rate_limited,
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        verdict
    }

    /// Sends a request to partner `p`: on a connection that is up, or once one is opened.
    /// `Err` when it cannot even wait (too many waiting): the caller answers 503.
    pub fn send(
        self: &Arc<Self>,
        shared: &Shared,
        p: PartnerId,
        bytes: Bytes,
        origin: FlowId,
        raw: Bytes,
    ) -> Result<(), Why> {
        let unavailable = Why::PartnerUnavailable {
            retry_after_secs: RETRY_AFTER_SECS,
        };
        let mut st = self.state(p).ok_or(unavailable)?;
        // Any connection that is up; one that went away is forgotten.
        while let Some(&flow) = st.flows.first() {
            match shared.flows.send(flow, bytes.clone()) {
                Ok(()) => {
                    self.count_sent(p);
                    return Ok(());
                }
                Err(super::flows::SendError::Full) => {
                    return Err(Why::Overloaded {
                        retry_after_secs: 1,
                    })
                }
                Err(_) => {
                    st.flows.retain(|f| *f != flow);
                }
            }
        }
        if st.waiting.len() >= MAX_WAITING {
            return Err(unavailable);
        }
        st.waiting.push(Waiting { bytes, origin, raw });
        if st.connecting == 0 && st.flows.len() < self.max_connections {
            st.connecting += 1;
            drop(st);
            let this = self.clone();
            tokio::spawn(async move { this.connect_and_serve(p).await });
        }
        Ok(())
    }

    fn count_sent(&self, p: PartnerId) {
        if let Some(stats) = self.stats(p) {
            stats
                .sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Opens a connection to partner `p`, hands it the waiting requests and runs it until
    /// it closes; if none can be opened, the waiting requests get 503.
    async fn connect_and_serve(self: Arc<Self>, p: PartnerId) {
        let Some(shared) = self.shared.get().and_then(Weak::upgrade) else {
            return;
        };
        let connected = self.connect(p).await;
        let (stream, remote) = match connected {
            Ok(c) => c,
            Err(e) => return self.connect_failed(&shared, p, &e),
        };
        let (conn, rx) = Conn::register(&shared, Side::External, remote, Some(p));
        let flow = conn.flow.id;
        self.connected(&shared, p, flow);
        let closed = conn.run(shared.clone(), stream, rx, &mut Accepted).await;
        tracing::debug!(%remote, flow = flow.0, reason = ?closed, "partner connection closed");
        if let Some(mut st) = self.state(p) {
            st.flows.retain(|f| *f != flow);
        }
    }

    /// A connection is up: it takes the waiting requests.
    fn connected(&self, shared: &Shared, p: PartnerId, flow: FlowId) {
        let Some(mut st) = self.state(p) else { return };
        st.connecting = st.connecting.saturating_sub(1);
        st.flows.push(flow);
        for w in std::mem::take(&mut st.waiting) {
            if shared.flows.send(flow, w.bytes).is_ok() {
                self.count_sent(p);
            }
        }
    }

    /// No connection could be made: the waiting requests get 503 with Retry-After.
    fn connect_failed(&self, shared: &Shared, p: PartnerId, e: &std::io::Error) {
        let waiting = match self.state(p) {
            Some(mut st) => {
                st.connecting = st.connecting.saturating_sub(1);
                std::mem::take(&mut st.waiting)
            }
            None => Vec::new(),
        };
        if let Some(stats) = self.stats(p) {
            stats
                .connect_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let name = self.federation.get(p).map(|x| x.label());
        tracing::warn!(partner = name, error = %e, "cannot connect to partner edge");
        let why = Why::PartnerUnavailable {
            retry_after_secs: RETRY_AFTER_SECS,
        };
        for w in waiting {
            shared.stats.reject(why, Side::Internal);
            if let Some(answer) = shared.proxy.answer(&w.raw, why, None) {
                let _ = shared.flows.send(w.origin, Bytes::from(answer));
            }
        }
    }

    async fn connect(
        &self,
        p: PartnerId,
    ) -> std::io::Result<(
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )> {
        let target = self
            .targets
            .get(usize::from(p.0))
            .ok_or_else(|| std::io::Error::other("no such partner"))?;
        let addresses: Vec<(SocketAddr, ServerName<'static>)> = if target.addresses.is_empty() {
            self.resolve(p)
                .await
                .into_iter()
                .filter_map(|(addr, host)| {
                    let name = match &target.server_name {
                        Some(name) => name.clone(),
                        None => ServerName::try_from(host).ok()?,
                    };
                    Some((addr, name))
                })
                .collect()
        } else {
            let name = target.server_name.clone();
            target
                .addresses
                .iter()
                .filter_map(|a| Some((*a, name.clone()?)))
                .collect()
        };
        let mut last = std::io::Error::other("no address for the partner edge");
        for (addr, server_name) in addresses {
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
                self.connector.connect(server_name, tcp).await
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(Ok(stream)) => return Ok((stream, addr)),
                Ok(Err(e)) => last = e,
                Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
            }
        }
        Err(last)
    }

    /// The partner edge's addresses from DNS: SRV of each of its domains in turn, then its
    /// FQDN.
    async fn resolve(&self, p: PartnerId) -> Vec<(SocketAddr, String)> {
        let (Some(dns), Some(partner)) = (&self.dns, self.federation.get(p)) else {
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

    /// Connections up per partner (for `/metrics`).
    pub fn connections(&self) -> Vec<usize> {
        (0..self.state.len())
            .map(|i| {
                self.state(PartnerId(u16::try_from(i).unwrap_or(u16::MAX)))
                    .map_or(0, |s| s.flows.len())
            })
            .collect()
    }
}
