//! What the edge looks like at one moment, as plain data: numbers, names and label values,
//! no locks, atomics or sockets. The shell fills one from its live state
//! (`shell::ops::snapshot`); [`super::render`] turns it into `/metrics` and `/status`.
//!
//! Label *values* that enumerate what is counted (reject reasons, refusal reasons, methods,
//! drop reasons) come with the numbers, from the code that counts them; metric names, HELP
//! texts, label *names* and the fixed label values (zones, directions) belong to the
//! renderer.

use std::time::Duration;

/// The whole instance.
#[derive(Clone, Debug, Default)]
pub struct EdgeSnapshot {
    /// The instance name from the topology.
    pub instance: String,
    /// The build's version (`sipedge_build_info`, `/status`).
    pub version: &'static str,
    pub uptime_secs: u64,
    /// When the instance started, Unix seconds.
    pub started_unix: u64,
    /// When the snapshot was taken, Unix seconds (certificate and key ages are against it).
    pub now_unix: i64,
    pub draining: bool,
    /// The serving certificates (`external`, `internal`) as loaded.
    pub certificates: Vec<Certificate>,
    /// The Access Edge's counters and gauges.
    pub access: AccessEdge,
    /// The next-hop pool's members.
    pub next_hops: Vec<NextHop>,
    /// Calls (INVITE dialogs) crossing the edge now.
    pub calls: u64,
    /// Federation, when the topology has partners (even none listed).
    pub partners: Option<Vec<Partner>>,
    /// The pool key ring of the A/V authentication service, when configured.
    pub key_ring: Vec<RingKey>,
    /// The TURN relay, once started.
    pub relay: Option<Relay>,
    /// With `[pool]`: the shared state's standing.
    pub pool: Option<Pool>,
    /// With `[capture]`: SIP capture to a HEP collector.
    pub capture: Option<Capture>,
}

/// SIP capture (HEP v3).
#[derive(Clone, Debug, Default)]
pub struct Capture {
    pub collector: String,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    pub collector_up: bool,
    /// Copies taken into the queue, and handed to the collector's socket.
    pub queued: u64,
    pub sent: u64,
    /// Bytes of copies waiting now.
    pub queued_bytes: u64,
    /// Copies dropped, by reason label.
    pub dropped: Vec<(&'static str, u64)>,
}

/// A serving certificate.
#[derive(Clone, Debug, Default)]
pub struct Certificate {
    pub role: &'static str,
    pub subject: String,
    pub sans: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
}

/// One number for each zone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByZone {
    pub external: u64,
    pub internal: u64,
}

/// The Access Edge (SIP proxy and firewall).
#[derive(Clone, Debug, Default)]
pub struct AccessEdge {
    /// SIP messages forwarded, by the zone they came from.
    pub forwarded: ByZone,
    /// Forwarded messages by method label (responses as `response`), by zone of origin.
    pub by_method: Vec<(&'static str, ByZone)>,
    /// Messages refused, by reason label, by zone of origin.
    pub rejects: Vec<(&'static str, ByZone)>,
    /// Per-source refusals on the external zone, by reason label.
    pub source_refusals: Vec<(&'static str, u64)>,
    pub bans_total: u64,
    pub banned_sources: u64,
    pub tracked_sources: u64,
    pub banned_closes: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub handshakes_failed: u64,
    pub dropped_responses: u64,
    /// Live flows, both zones and the pool.
    pub flows: u64,
    /// Live connections by zone.
    pub connections: ByZone,
}

/// A next-hop pool member.
#[derive(Clone, Debug, Default)]
pub struct NextHop {
    pub address: String,
    pub up: bool,
    /// Transactions in flight toward it.
    pub outstanding: u64,
    pub last_probe: Option<Probe>,
}

/// The last health probe of a next hop.
#[derive(Clone, Copy, Debug, Default)]
pub struct Probe {
    /// Unix seconds.
    pub at: u64,
    /// The SIP status it answered.
    pub status: u16,
    pub latency: Duration,
}

/// A listed federation partner.
#[derive(Clone, Debug, Default)]
pub struct Partner {
    /// Its label: the edge's FQDN, or its first domain.
    pub name: String,
    pub domains: Vec<String>,
    /// Connections this edge opened to it, up.
    pub connections: u64,
    /// Dialogs with it, both directions.
    pub dialogs: u64,
    /// Its message counters (`None` for a partner whose counters a reload has not yet made).
    pub counters: Option<PartnerCounters>,
}

/// Messages exchanged with a partner edge.
#[derive(Clone, Copy, Debug, Default)]
pub struct PartnerCounters {
    pub sent: u64,
    pub received: u64,
    pub rate_limited: u64,
    pub connect_failures: u64,
}

/// A key of the pool key ring (never its secret).
#[derive(Clone, Debug, Default)]
pub struct RingKey {
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds from which it signs.
    pub signs_from: u64,
}

/// Pool-wide state on Redis (`[pool]`).
#[derive(Clone, Debug, Default)]
pub struct Pool {
    /// `connecting`, `up` or `degraded` (Redis away: this member enforces alone).
    pub status: &'static str,
    pub member: String,
    pub bans_published: u64,
    pub bans_received: u64,
    /// Requests other members admitted, charged to their sources' rates here.
    pub requests_charged: u64,
    /// Times Redis went away.
    pub outages: u64,
    /// Messages on the pool's channels that were neither a ban notice nor a rate report.
    pub garbage: u64,
    /// Relay quota asks decided, by how (`granted`, `refused` by the pool, `local`).
    pub quota_asks: Vec<(&'static str, u64)>,
}

/// The TURN relay (A/V Edge).
#[derive(Clone, Debug, Default)]
pub struct Relay {
    pub allocations: u64,
    pub reservations: u64,
    pub tcp_clients: u64,
    /// TURN-over-TCP connections refused or closed early, by reason label.
    pub tcp_refused: Vec<(&'static str, u64)>,
    pub client_packets: u64,
    pub peer_packets: u64,
    pub receive_calls: u64,
    pub relayed_to_peers: u64,
    pub relayed_to_clients: u64,
    pub bytes_to_peers: u64,
    pub bytes_to_clients: u64,
    /// Packets dropped without an answer, by reason label.
    pub dropped: Vec<(&'static str, u64)>,
    pub send_errors: u64,
    /// The kernel fast path: "off", "on (interfaces)", or "unavailable: why".
    pub kernel_offload: String,
    /// Channels the kernel relays now, and the packets it relayed (in the totals too).
    pub kernel_channels: u64,
    pub kernel_relayed_to_peers: u64,
    pub kernel_relayed_to_clients: u64,
}
