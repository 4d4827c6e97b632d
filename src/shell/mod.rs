//! The tokio shell: sockets, tasks, clocks. It moves bytes between connections and the
//! core; every protocol decision is the core's.
//!
//! - [`start`] resolves certificates (generating the dev PKI when the topology asks for it),
//!   binds the listeners, spawns the next-hop members and accept loops, and returns a
//!   [`RunningEdge`] that stops on demand. `sipedge run` and the integration tests both use it.
//! - [`listen`]: accept loops (TLS handshake timeout, connection cap).
//! - [`conn`]: one SIP connection. [`pool`]: the next-hop pool. [`flows`]: the flow table.
//! - `config`: the topology translated into the core's and the shell's configurations;
//!   `stats`: the Access Edge's counters ([`Stats`]).

pub mod clock;
mod config;
pub mod conn;
pub mod dns;
pub mod flows;
pub mod keyfile;
pub mod listen;
pub mod ops;
pub mod partners;
pub mod pool;
mod stats;
pub mod turn;
pub mod udp;

use crate::sync::{MutexExt, RwLockExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::core::firewall::{Rate, Refusal, SourceGuard, SourcePolicy};
use crate::core::keyring::{Purpose, Ring};
use crate::core::sip::calls::{CallHasher, CallLimits, Calls};
use crate::core::sip::federation::{Federation, Partner};
use crate::core::sip::frame::FrameLimits;
use crate::core::sip::health::ProbeConfig;
use crate::core::sip::message::Message;
use crate::core::sip::parse::HeadLimits;
use crate::core::sip::proxy::{Proxy, ProxyConfig, Side, SideAddr};
use crate::core::sip::session::SessionLimits;
use crate::core::sip::token::{FlowId, FlowKeys};
use crate::core::sip::Why;
use crate::obs::LogLimiter;
use crate::tls::{self, DevNames, DevPki, DevRole, TlsError};
use crate::topology::{CaSource, CertSource, KeysSource, Topology};

pub use config::dev_names;
use config::*;
use flows::FlowTable;
use pool::Pool;
pub use stats::{Stats, REFUSAL_LABELS};

/// Connection limits, resolved from the topology.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// What each connection's session applies.
    pub session: SessionLimits,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_handshakes: usize,
    /// A peer that does not take our bytes for this long is cut off (it does not read).
    pub write_timeout: Duration,
    /// Bytes other connections may queue for one connection before messages are refused.
    pub max_queued_bytes: usize,
}

/// State shared by every task of one edge instance.
pub struct Shared {
    pub proxy: Proxy,
    pub flows: FlowTable,
    pub pool: Pool,
    /// Limits in force (a reload replaces them; read them through [`Shared::limits`]).
    limits: std::sync::RwLock<Arc<ConnLimits>>,
    /// Per-source limits and bans of the external zone.
    pub guard: Arc<SourceGuard>,
    /// The A/V authentication service (pool ring + relay), when configured.
    pub credentials: Option<CredentialService>,
    pub shutdown: watch::Receiver<bool>,
    pub stats: Stats,
    /// Reject and refusal log lines, rate-limited so that a flood cannot fill the disk.
    pub reject_log: LogLimiter,
    /// Set by [`RunningEdge::drain`]: `/healthz` answers 503, listeners stop accepting, new
    /// work is refused.
    pub draining: watch::Receiver<bool>,
    /// Instance name, and when it started (monotonic and Unix), for `/status`.
    pub name: String,
    pub started: std::time::Instant,
    pub started_unix: u64,
    /// The serving certificates (`external`, `internal`) as loaded (and reloaded).
    pub certificates: std::sync::RwLock<Vec<(&'static str, tls::CertSummary)>>,
    /// Where the external and internal certificates are served from (reload swaps them).
    pub cert_slots: [Arc<tls::CertSlot>; 2],
    /// Calls (INVITE dialogs) crossing the edge, bounded per source, per partner and in
    /// total: what a drain waits for. Read through [`Shared::calls`].
    calls: std::sync::Mutex<Calls>,
    /// The call table's key hash, computed without its lock.
    pub call_hasher: CallHasher,
    /// Federation partners' connections and rates, when the topology has partners.
    pub partners: Option<Arc<partners::Partners>>,
    /// The TURN relay, once started (for metrics).
    pub turn: std::sync::OnceLock<Arc<turn::Turn>>,
    next_flow: AtomicU64,
}

impl Shared {
    /// A flow id never used before in this process. Starts at a random point so ids do not
    /// reveal how many connections the edge has seen.
    pub fn next_flow_id(&self) -> FlowId {
        FlowId(self.next_flow.fetch_add(1, Ordering::Relaxed))
    }
}

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("certificates: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("next_hop.server_name {0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("DNS resolver for federation: {0}")]
    Dns(String),
    #[error("no secure random numbers: {0}")]
    Random(String),
    #[error("key ring: {0}")]
    Keys(#[from] keyfile::KeyFileError),
}

/// A started edge.
pub struct RunningEdge {
    /// Where external TLS SIP is accepted.
    pub external: SocketAddr,
    /// Where internal mutual-TLS SIP is accepted.
    pub internal: SocketAddr,
    /// Where the operations listener serves /healthz and /metrics, if configured.
    pub operations: Option<SocketAddr>,
    /// The TURN relay and its UDP listeners, when `[relay]` and `[keys]` are configured.
    pub turn: Option<Arc<turn::Turn>>,
    pub turn_udp: Vec<SocketAddr>,
    pub turn_tcp: Vec<SocketAddr>,
    /// The dev PKI, when the topology uses it (tests read the CA from here).
    pub dev_pki: Option<DevPki>,
    /// Whether the dev PKI was generated by this start.
    pub dev_pki_created: bool,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    drain: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The topology running now (a reload compares against it).
    topology: std::sync::Mutex<Topology>,
    /// How next-hop members are reached (for members a reload adds).
    connector: pool::Connector,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new topology changes what only a restart can change; the running one stays.
    #[error("needs a restart to change {}; the running configuration stays", .0.join(", "))]
    NeedsRestart(Vec<&'static str>),
    /// A new certificate could not be loaded; the old ones stay.
    #[error("certificates: {0}; the old ones stay")]
    Certificate(#[from] TlsError),
    /// The new partners could not be set up (a name, the DNS resolver); the old ones stay.
    #[error("federation: {0}; the running configuration stays")]
    Federation(String),
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// Tables whose new values are in force (`limits`, `firewall`), besides certificates.
    pub changed: Vec<&'static str>,
    /// The certificates now served (`external`, `internal`) and their subjectAltNames.
    pub certificates: Vec<(&'static str, Vec<String>)>,
}

impl Shared {
    /// The limits in force now.
    pub fn limits(&self) -> Arc<ConnLimits> {
        self.limits.read_unpoisoned().clone()
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// The call table. Held for a hash-map operation at a time: never across I/O.
    pub fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        // A panic while holding it cannot leave a torn entry (each update is a few map
        // operations), so a poisoned lock is still usable.
        self.calls.lock_unpoisoned()
    }

    /// Calls crossing the edge now (expired ones dropped first).
    pub fn calls_in_progress(&self) -> usize {
        let mut calls = self.calls();
        calls.expire(clock::now());
        calls.len()
    }

    /// A final answer the edge gave itself to a request it had forwarded (a 408 or 503 for
    /// the pool or a partner): it answers the call the request may have started.
    pub fn answered_by_edge(&self, request: &[u8], status: u16) {
        let limits = HeadLimits {
            max_headers: usize::MAX,
            max_line_bytes: usize::MAX,
        };
        let Ok(msg) = Message::parse(bytes::Bytes::copy_from_slice(request), &limits) else {
            return;
        };
        if msg.method() != Some(crate::core::sip::message::Method::Invite) {
            return;
        }
        let Some(tag) = msg.from_tag else {
            return;
        };
        let key = self.call_hasher.key(msg.bytes(msg.call_id), msg.bytes(tag));
        self.calls().answered(key, status, clock::now());
    }
}

/// The parts of `new` that differ from `old` and that a running edge cannot take on: every
/// table but the certificate sources (names as in the topology file).
fn restart_only_changes(old: &Topology, new: &Topology) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("state_dir", old.state_dir != new.state_dir);
    check("edge", old.edge != new.edge);
    check(
        "external",
        old.external.sip_bind != new.external.sip_bind
            || old.external.sip_host != new.external.sip_host,
    );
    check(
        "internal",
        old.internal.sip_bind != new.internal.sip_bind
            || old.internal.sip_host != new.internal.sip_host,
    );
    check("internal.tls.ca", old.internal.ca != new.internal.ca);
    // Members change live; how they are reached and probed does not.
    check(
        "next_hop (but members)",
        old.next_hop.server_name != new.next_hop.server_name
            || old.next_hop.probe != new.next_hop.probe
            || old.next_hop.retry_after != new.next_hop.retry_after,
    );
    // Limits apply live, but for the budgets sized when the listeners start.
    check(
        "limits.max_connections",
        old.limits.max_connections != new.limits.max_connections,
    );
    check(
        "limits.max_handshakes",
        old.limits.max_handshakes != new.limits.max_handshakes,
    );
    check("operations", old.operations != new.operations);
    check("keys", old.keys != new.keys);
    check("relay", old.relay != new.relay);
    // Partners, DNS and discovery change live; trust roots and connection counts do not
    // (they shape the TLS configurations), nor does federating at all.
    let fixed = |f: &Option<crate::topology::FederationConfig>| {
        f.as_ref()
            .map(|f| (f.ca.clone(), f.max_connections_per_partner))
    };
    check(
        "federation (but partners, dns and discovery)",
        fixed(&old.federation) != fixed(&new.federation),
    );
    changed
}

/// The row of responses in [`Stats::by_method`].
pub const RESPONSES: usize = crate::core::sip::message::Method::ALL.len();

/// The serving certificates and keys of a topology (external, internal), and what
/// `/status` shows of them.
type Serving = (
    tls::CertifiedKeyMaterial,
    tls::CertifiedKeyMaterial,
    Vec<(&'static str, tls::CertSummary)>,
);

fn serving_certificates(t: &Topology, dev: Option<&DevPki>) -> Result<Serving, TlsError> {
    let ext = tls::load_cert(&t.external.cert, dev, DevRole::External)?;
    let int = tls::load_cert(&t.internal.cert, dev, DevRole::Internal)?;
    let mut summaries = Vec::new();
    for (role, m) in [("external", &ext), ("internal", &int)] {
        if let Some(leaf) = m.chain.first() {
            summaries.push((role, tls::summarize(leaf)?));
        }
    }
    Ok((ext, int, summaries))
}

impl RunningEdge {
    /// How long a drain may take, as the running topology says.
    pub fn drain_timeout(&self) -> Duration {
        self.topology.lock_unpoisoned().limits.drain_timeout
    }

    /// Reloads from a new topology (SIGHUP): the certificates are read again and serve every
    /// new handshake (connections up keep theirs); `[limits]` (but the connection and
    /// handshake budgets) and `[firewall]` apply from the next message. Anything else that
    /// differs needs a restart: the reload is then refused whole, naming what, and nothing
    /// changes. A certificate that does not load is refused the same way.
    pub fn reload(&self, new: &Topology) -> Result<Reloaded, ReloadError> {
        let mut running = self.topology.lock_unpoisoned();
        let fixed = restart_only_changes(&running, new);
        if !fixed.is_empty() {
            return Err(ReloadError::NeedsRestart(fixed));
        }
        let (ext, int, summaries) = serving_certificates(new, self.dev_pki.as_ref())?;
        // Everything checked before anything is installed: all or nothing.
        let ext = tls::CertSlot::prepare(ext)?;
        let int = tls::CertSlot::prepare(int)?;
        let partners = match (&new.federation, &self.shared.partners) {
            (Some(f), Some(_)) if running.federation != new.federation => {
                Some(partner_config(new, f).map_err(|e| ReloadError::Federation(e.to_string()))?)
            }
            _ => None,
        };
        let [ext_slot, int_slot] = &self.shared.cert_slots;
        ext_slot.install(ext);
        int_slot.install(int);
        // Limits and the firewall: in force from the next message, connection and event.
        let mut changed = Vec::new();
        if running.limits != new.limits
            || running.firewall.connection_request_rate != new.firewall.connection_request_rate
            || running.firewall.connection_request_burst != new.firewall.connection_request_burst
        {
            *self.shared.limits.write_unpoisoned() = Arc::new(conn_limits(new));
            changed.push("limits");
        }
        if running.firewall != new.firewall {
            self.shared.guard.set_policy(source_policy(&new.firewall));
            self.shared
                .proxy
                .set_strip_headers(&new.firewall.strip_headers);
            changed.push("firewall");
        }
        if call_limits(&running) != call_limits(new) {
            self.shared.calls().set_limits(call_limits(new));
        }
        if let (Some(config), Some(partners)) = (partners, &self.shared.partners) {
            self.shared.proxy.set_federation(config.federation.clone());
            partners.reconfigure(config);
            changed.push("federation");
        }
        if running.next_hop.members != new.next_hop.members {
            self.shared.proxy.set_next_hops(&new.next_hop.members);
            for (member, rx) in self.shared.pool.set_members(&new.next_hop.members) {
                tokio::spawn(pool::run_member(
                    self.shared.clone(),
                    member,
                    self.connector.clone(),
                    rx,
                ));
            }
            changed.push("next_hop.members");
        }
        let reloaded = Reloaded {
            changed,
            certificates: summaries
                .iter()
                .map(|(role, s)| (*role, s.sans.clone()))
                .collect(),
        };
        *self.shared.certificates.write_unpoisoned() = summaries;
        *running = new.clone();
        tracing::info!(?reloaded, "reloaded");
        Ok(reloaded)
    }

    /// Drains gracefully (SIGTERM): `/healthz` turns 503 at once, the SIP listeners stop
    /// accepting, new out-of-dialog work is refused with 503 + Retry-After, and this waits
    /// until no transaction toward the pool is in flight and no call crosses the edge, or
    /// `deadline` passes. Returns whether everything finished in time. Call `stop` after.
    pub async fn drain(&self, deadline: Duration) -> bool {
        let _ = self.drain.send(true);
        tracing::info!(deadline_secs = deadline.as_secs(), "draining");
        let until = clock::now() + deadline;
        loop {
            let outstanding = self.shared.pool.outstanding();
            let calls = self.shared.calls_in_progress();
            if outstanding == 0 && calls == 0 {
                tracing::info!("drained");
                return true;
            }
            if clock::now() >= until {
                tracing::warn!(outstanding, calls, "drain deadline passed");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops accepting, closes connections and waits (bounded) for the tasks to end.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!("tasks still running after 5 s; aborting them");
            self.tasks.abort_all();
        }
    }
}

/// What the A/V authentication service issues from.
#[derive(Clone, Debug)]
pub struct CredentialService {
    pub ring: Ring,
    pub relay: crate::core::avauth::RelayInfo,
}

/// Starts an edge for `topology`. Ports given as 0 bind to free ports; the edge then names
/// itself with the ports it got.
pub async fn start(topology: &Topology) -> Result<RunningEdge, StartError> {
    let (dev_pki, dev_pki_created) = if uses_dev_pki(topology) {
        let dir = topology.state_dir.join("dev-pki");
        let (pki, created) = tls::dev::ensure(&dir, &dev_names(topology))?;
        (Some(pki), created)
    } else {
        (None, false)
    };
    let dev = dev_pki.as_ref();
    let (ext_material, int_material, certificates) = serving_certificates(topology, dev)?;
    let int_roots = tls::load_roots(&topology.internal.ca, dev)?;
    // Federation: partner edges are verified against these roots, inbound and outbound.
    let partner_roots = match &topology.federation {
        Some(f) => Some(match &f.ca {
            Some(path) => tls::load_roots(&CaSource::Pem(path.clone()), None)?,
            None => tls::system_roots()?,
        }),
        None => None,
    };
    // Slots, so that a reload can replace the certificates under every configuration.
    let ext_slot = tls::CertSlot::new(ext_material)?;
    let int_slot = tls::CertSlot::new(int_material)?;
    let partner_tls = match &partner_roots {
        Some(roots) => Some(tls::client_config_with(roots.clone(), ext_slot.clone())?),
        None => None,
    };
    let ext_tls = tls::external_server_config_with(ext_slot.clone(), partner_roots)?;
    let int_tls = tls::internal_server_config_with(int_slot.clone(), int_roots.clone())?;
    let pool_tls = tls::client_config_with(int_roots, int_slot.clone())?;
    let server_name = rustls_pki_types::ServerName::try_from(topology.next_hop.server_name.clone())
        .map_err(|_| StartError::ServerName(topology.next_hop.server_name.clone()))?;

    let external = listen::bind(topology.external.sip_bind).map_err(|source| StartError::Bind {
        addr: topology.external.sip_bind,
        what: "external SIP",
        source,
    })?;
    let internal = listen::bind(topology.internal.sip_bind).map_err(|source| StartError::Bind {
        addr: topology.internal.sip_bind,
        what: "internal SIP",
        source,
    })?;
    let ops = match &topology.operations {
        Some(o) => Some(ops::bind(o.listen).map_err(|source| StartError::Bind {
            addr: o.listen,
            what: "operations",
            source,
        })?),
        None => None,
    };
    let ops_addr = match (&ops, &topology.operations) {
        (Some(l), Some(o)) => Some(local_addr(l, o.listen)?),
        _ => None,
    };
    let ext_addr = local_addr(&external, topology.external.sip_bind)?;
    let int_addr = local_addr(&internal, topology.internal.sip_bind)?;

    let mut secret = [0u8; 32];
    let mut seed = [0u8; 8];
    let mut call_key_seed = [0u8; 16];
    let random = rustls::crypto::ring::default_provider().secure_random;
    random
        .fill(&mut secret)
        .and_then(|()| random.fill(&mut seed))
        .and_then(|()| random.fill(&mut call_key_seed))
        .map_err(|e| StartError::Random(format!("{e:?}")))?;
    let [k0, k1] = [&call_key_seed[..8], &call_key_seed[8..]]
        .map(|half| u64::from_le_bytes(half.try_into().unwrap_or_default()));
    let calls = Calls::new(call_limits(topology), (k0, k1));
    let ring = load_ring(topology)?;
    let keys = match &ring {
        // Flow tokens keyed by the pool ring: any member verifies any member's tokens, and
        // tokens signed before a rotation still verify after it.
        Some(ring) => {
            let now = clock::now_unix();
            let signing = ring
                .signing_key(now)
                .map(|k| k.derive(Purpose::FlowToken))
                .unwrap_or(secret);
            let older: Vec<[u8; 32]> = ring
                .keys()
                .iter()
                .map(|k| k.derive(Purpose::FlowToken))
                .filter(|k| *k != signing)
                .collect();
            FlowKeys::with_older(&signing, &older)
        }
        None => FlowKeys::new(&secret),
    };
    let credentials = match (&ring, &topology.relay) {
        (Some(ring), Some(relay)) => Some(CredentialService {
            ring: ring.clone(),
            relay: crate::core::avauth::RelayInfo {
                host: relay.host.clone(),
                udp_port: relay.udp_port,
                tcp_port: relay.tcp_port,
                max_lifetime_secs: relay.credential_lifetime.as_secs(),
            },
        }),
        _ => None,
    };

    let proxy_cfg = proxy_config(topology, ext_addr, int_addr);
    let partners = match (&topology.federation, partner_tls) {
        (Some(f), Some(tls)) => Some(Arc::new(partners::Partners::new(
            partner_config(topology, f)?,
            tokio_rustls::TlsConnector::from(tls),
            ext_addr.ip(),
            f.max_connections_per_partner,
        ))),
        _ => None,
    };
    let proxy = Proxy::new(proxy_cfg, keys);
    let (pool, queues) = Pool::new(
        &topology.next_hop.members,
        u32::try_from(topology.next_hop.retry_after.as_secs()).unwrap_or(u32::MAX),
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (drain_tx, drain_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        proxy,
        flows: FlowTable::default(),
        pool,
        limits: std::sync::RwLock::new(Arc::new(conn_limits(topology))),
        guard: Arc::new(SourceGuard::new(source_policy(&topology.firewall))),
        credentials,
        reject_log: LogLimiter::new(Rate {
            per_sec: 20,
            burst: 100,
        }),
        partners,
        draining: drain_rx,
        name: topology.edge.name.clone(),
        started: clock::now(),
        started_unix: clock::now_unix(),
        certificates: std::sync::RwLock::new(certificates),
        cert_slots: [ext_slot.clone(), int_slot.clone()],
        call_hasher: calls.hasher(),
        calls: std::sync::Mutex::new(calls),
        turn: std::sync::OnceLock::new(),
        shutdown: shutdown_rx,
        stats: Stats::default(),
        // Random start, kept well below u64::MAX so it never wraps; 0 is reserved.
        next_flow: AtomicU64::new((u64::from_be_bytes(seed) >> 16).max(1)),
    });

    if let Some(partners) = &shared.partners {
        partners.set_shared(&shared);
    }
    let mut tasks = JoinSet::new();
    let connector = pool::Connector {
        tls: tokio_rustls::TlsConnector::from(pool_tls),
        server_name,
        local_ip: int_addr.ip(),
        probe: ProbeConfig {
            interval: topology.next_hop.probe.interval,
            timeout: topology.next_hop.probe.timeout,
            rise: topology.next_hop.probe.rise,
            fall: topology.next_hop.probe.fall,
        },
        from_domain: topology.edge.pool_fqdn.clone(),
    };
    for (member, rx) in queues {
        tasks.spawn(pool::run_member(
            shared.clone(),
            member,
            connector.clone(),
            rx,
        ));
    }
    // One connection budget per zone: a flood from the Internet must never use up the
    // connections the Directors need to reach remote users.
    let budget = || Arc::new(tokio::sync::Semaphore::new(shared.limits().max_connections));
    tasks.spawn(listen::accept_loop(
        shared.clone(),
        external,
        tokio_rustls::TlsAcceptor::from(ext_tls),
        Side::External,
        budget(),
    ));
    tasks.spawn(listen::accept_loop(
        shared.clone(),
        internal,
        tokio_rustls::TlsAcceptor::from(int_tls),
        Side::Internal,
        budget(),
    ));
    if let Some(listener) = ops {
        tasks.spawn(ops::serve(shared.clone(), listener));
    }
    tasks.spawn(expire_calls(shared.clone()));
    let (turn, turn_udp, turn_tcp) = match (&ring, &topology.relay) {
        (Some(ring), Some(relay)) => {
            let (cfg, listen, listen_tcp) = turn_config(topology, relay, ext_addr, int_addr);
            let seed_port = u16::from_be_bytes([seed[0], seed[1]]);
            let (t, bound, bound_tcp) = turn::start(
                cfg,
                ring.clone(),
                &listen,
                &listen_tcp,
                turn::TcpLimits {
                    max_clients_per_zone: relay.max_tcp_clients,
                    auth_timeout: relay.tcp_auth_timeout,
                    max_queued_bytes: relay.max_queued_bytes_per_client,
                },
                shared.guard.clone(),
                shared.shutdown.clone(),
                seed_port,
            )
            .await
            .map_err(|source| StartError::Bind {
                addr: listen.first().map_or(ext_addr, |l| l.0),
                what: "TURN",
                source,
            })?;
            let _ = shared.turn.set(t.clone());
            (Some(t), bound, bound_tcp)
        }
        _ => (None, Vec::new(), Vec::new()),
    };
    tracing::info!(external = %ext_addr, internal = %int_addr, next_hops = ?topology.next_hop.members, "edge started");
    Ok(RunningEdge {
        external: ext_addr,
        internal: int_addr,
        operations: ops_addr,
        turn,
        turn_udp,
        turn_tcp,
        dev_pki,
        dev_pki_created,
        shared,
        shutdown: shutdown_tx,
        drain: drain_tx,
        tasks,
        topology: std::sync::Mutex::new(topology.clone()),
        connector,
    })
}

/// The call table's timers: calls whose bound passed (Timer C, the longest call) are
/// dropped when it passes, within a second, whoever looks at the table.
async fn expire_calls(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let now = clock::now();
        let next = {
            let mut calls = shared.calls();
            calls.expire(now);
            calls.poll_timeout()
        };
        // New calls may be due sooner than the earliest one now: look again each second.
        let wake = next.map_or(now + Duration::from_secs(1), |t| {
            t.min(now + Duration::from_secs(1))
        });
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn local_addr(l: &TcpListener, asked: SocketAddr) -> Result<SocketAddr, StartError> {
    l.local_addr().map_err(|source| StartError::Bind {
        addr: asked,
        what: "local address",
        source,
    })
}
