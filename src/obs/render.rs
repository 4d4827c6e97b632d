//! What the operations listener shows, from an [`EdgeSnapshot`]: the Prometheus families
//! of `/metrics` (every metric name, HELP text and label set of the edge is here) and the
//! JSON document of `/status`. Pure: no clock, no locks; the shell feeds the numbers.

use super::metrics::{Exposition, Kind};
use super::snapshot::{AccessEdge, ByZone, Capture, EdgeSnapshot, Partner, Pool, Relay};

/// Certificates closer than this to their end are reported `expiring`.
const EXPIRING_SECS: i64 = 30 * 86_400;

/// The Prometheus text exposition (0.0.4) of every counter and gauge of the instance.
pub fn metrics(s: &EdgeSnapshot) -> String {
    let mut e = Exposition::default();
    e.family("sipedge_build_info", Kind::Gauge, "Build information.")
        .sample("sipedge_build_info", &[("version", s.version)], 1);
    access_edge(&mut e, &s.access);
    by_label(
        &mut e,
        "sipedge_next_hop_up",
        Kind::Gauge,
        "1 when the next-hop member is up.",
        "member",
        s.next_hops
            .iter()
            .map(|m| (m.address.as_str(), u64::from(m.up))),
    );
    by_label(
        &mut e,
        "sipedge_next_hop_outstanding",
        Kind::Gauge,
        "Transactions in flight toward the next-hop member.",
        "member",
        s.next_hops
            .iter()
            .map(|m| (m.address.as_str(), m.outstanding)),
    );
    single(
        &mut e,
        "sipedge_calls",
        Kind::Gauge,
        "Calls (INVITE dialogs) crossing the edge, against limits.max_calls.",
        s.calls,
    );
    if let Some(partners) = &s.partners {
        partner_metrics(&mut e, partners);
    }
    if let Some(relay) = &s.relay {
        relay_metrics(&mut e, relay);
    }
    if let Some(pool) = &s.pool {
        pool_metrics(&mut e, pool);
    }
    if let Some(capture) = &s.capture {
        capture_metrics(&mut e, capture);
    }
    e.finish()
}

/// A family of one unlabelled sample.
fn single(e: &mut Exposition, name: &str, kind: Kind, help: &str, value: u64) {
    e.family(name, kind, help).sample(name, &[], value);
}

/// A family with one label: a sample for each of `samples`' (label value, value).
fn by_label<'a>(
    e: &mut Exposition,
    name: &str,
    kind: Kind,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) {
    e.family(name, kind, help);
    for (label_value, value) in samples {
        e.sample(name, &[(label, label_value)], value);
    }
}

/// A family with two labels: for each of `rows`' (first label's value, samples), a sample
/// for each of the samples' (second label's value, value).
fn by_two_labels<'a>(
    e: &mut Exposition,
    name: &str,
    kind: Kind,
    help: &str,
    (first, second): (&str, &str),
    rows: impl IntoIterator<Item = (&'a str, [(&'static str, u64); 2])>,
) {
    e.family(name, kind, help);
    for (first_value, samples) in rows {
        for (second_value, value) in samples {
            e.sample(name, &[(first, first_value), (second, second_value)], value);
        }
    }
}

/// The `zone` label's samples of a count kept by zone.
fn zones(n: &ByZone) -> [(&'static str, u64); 2] {
    [("external", n.external), ("internal", n.internal)]
}

/// The `direction` label's samples of a count kept each way through the relay.
fn directions(to_peer: u64, to_client: u64) -> [(&'static str, u64); 2] {
    [("to_peer", to_peer), ("to_client", to_client)]
}

/// The Access Edge's counters: messages, rejects, the firewall, connections.
fn access_edge(e: &mut Exposition, a: &AccessEdge) {
    by_label(
        e,
        "sipedge_messages_forwarded_total",
        Kind::Counter,
        "SIP messages forwarded, by the zone they came from.",
        "zone",
        zones(&a.forwarded),
    );
    const MESSAGES: &str = "sipedge_messages_total";
    e.family(
        MESSAGES,
        Kind::Counter,
        "SIP messages forwarded, by method (responses as \"response\"), direction and the zone they came from.",
    );
    for (method, n) in &a.by_method {
        e.sample(
            MESSAGES,
            &[
                ("method", method),
                ("direction", "inbound"),
                ("zone", "external"),
            ],
            n.external,
        )
        .sample(
            MESSAGES,
            &[
                ("method", method),
                ("direction", "outbound"),
                ("zone", "internal"),
            ],
            n.internal,
        );
    }
    by_two_labels(
        e,
        "sipedge_rejects_total",
        Kind::Counter,
        "SIP messages refused, by reason and by the zone they came from.",
        ("reason", "zone"),
        a.rejects.iter().map(|(reason, n)| (*reason, zones(n))),
    );
    by_label(
        e,
        "sipedge_source_refusals_total",
        Kind::Counter,
        "Connections and requests refused by per-source limits on the external zone, by reason.",
        "reason",
        a.source_refusals.iter().copied(),
    );
    for (name, kind, help, value) in [
        (
            "sipedge_bans_total",
            Kind::Counter,
            "Sources banned.",
            a.bans_total,
        ),
        (
            "sipedge_banned_sources",
            Kind::Gauge,
            "Sources banned now.",
            a.banned_sources,
        ),
        (
            "sipedge_tracked_sources",
            Kind::Gauge,
            "Sources in the per-source table.",
            a.tracked_sources,
        ),
        (
            "sipedge_banned_connection_closes_total",
            Kind::Counter,
            "Connections closed because their source was banned.",
            a.banned_closes,
        ),
        (
            "sipedge_connections_accepted_total",
            Kind::Counter,
            "TCP connections accepted.",
            a.connections_accepted,
        ),
        (
            "sipedge_connections_refused_total",
            Kind::Counter,
            "Connections closed at accept: connection or handshake budget spent.",
            a.connections_refused,
        ),
        (
            "sipedge_handshakes_failed_total",
            Kind::Counter,
            "TLS handshakes failed or timed out.",
            a.handshakes_failed,
        ),
        (
            "sipedge_responses_dropped_total",
            Kind::Counter,
            "Responses dropped: their flow is gone or its queue is full.",
            a.dropped_responses,
        ),
        (
            "sipedge_flows",
            Kind::Gauge,
            "Live connections (flows), both zones and the pool.",
            a.flows,
        ),
    ] {
        single(e, name, kind, help, value);
    }
    by_label(
        e,
        "sipedge_connections",
        Kind::Gauge,
        "Live connections by zone (remote users and partners; the pool and internal clients).",
        "zone",
        zones(&a.connections),
    );
}

/// Federation's counters, by partner edge (those whose counters exist).
fn partner_metrics(e: &mut Exposition, partners: &[Partner]) {
    let counted: Vec<_> = partners
        .iter()
        .filter_map(|p| Some((p.name.as_str(), p.counters?, p)))
        .collect();
    by_two_labels(
        e,
        "sipedge_partner_messages_total",
        Kind::Counter,
        "Messages sent to and accepted from each partner edge.",
        ("partner", "direction"),
        counted
            .iter()
            .map(|(name, c, _)| (*name, [("sent", c.sent), ("received", c.received)])),
    );
    by_label(
        e,
        "sipedge_partner_rate_limited_total",
        Kind::Counter,
        "Requests from a partner edge refused for its rate (503).",
        "partner",
        counted
            .iter()
            .map(|(partner, c, _)| (*partner, c.rate_limited)),
    );
    by_label(
        e,
        "sipedge_partner_connect_failures_total",
        Kind::Counter,
        "Connections to a partner edge that could not be opened.",
        "partner",
        counted
            .iter()
            .map(|(partner, c, _)| (*partner, c.connect_failures)),
    );
    by_label(
        e,
        "sipedge_partner_dialogs",
        Kind::Gauge,
        "Dialogs counted with a partner (both directions), against its max_dialogs.",
        "partner",
        counted.iter().map(|(partner, _, p)| (*partner, p.dialogs)),
    );
    by_label(
        e,
        "sipedge_partner_connections",
        Kind::Gauge,
        "Connections this edge opened to a partner edge, up.",
        "partner",
        counted
            .iter()
            .map(|(partner, _, p)| (*partner, p.connections)),
    );
}

/// The A/V Edge's counters.
fn pool_metrics(e: &mut Exposition, p: &Pool) {
    single(
        e,
        "sipedge_pool_degraded",
        Kind::Gauge,
        "1 while Redis is away (or not reached yet): this member enforces alone.",
        u64::from(p.status != "up"),
    );
    single(
        e,
        "sipedge_pool_bans_published_total",
        Kind::Counter,
        "Bans this member published to the pool (its own, and those in force when it joined).",
        p.bans_published,
    );
    single(
        e,
        "sipedge_pool_bans_received_total",
        Kind::Counter,
        "Bans taken from other members of the pool.",
        p.bans_received,
    );
    single(
        e,
        "sipedge_pool_outages_total",
        Kind::Counter,
        "Times Redis went away (or could not be reached at start).",
        p.outages,
    );
    single(
        e,
        "sipedge_pool_requests_charged_total",
        Kind::Counter,
        "Requests other members admitted, charged here to their sources' request rates.",
        p.requests_charged,
    );
    single(
        e,
        "sipedge_pool_messages_ignored_total",
        Kind::Counter,
        "Messages on the pool's channels that were neither a ban notice nor a rate report.",
        p.garbage,
    );
    by_label(
        e,
        "sipedge_pool_quota_asks_total",
        Kind::Counter,
        "Relay allocations asked of the pool, by answer: granted, refused (the user is at its quota across the pool), or local (no answer within the timeout, or Redis away: decided on this member's counts).",
        "answer",
        p.quota_asks.iter().copied(),
    );
}

fn capture_metrics(e: &mut Exposition, c: &Capture) {
    single(
        e,
        "sipedge_capture_messages_total",
        Kind::Counter,
        "SIP messages copied for the HEP collector (queued).",
        c.queued,
    );
    single(
        e,
        "sipedge_capture_sent_total",
        Kind::Counter,
        "Copies handed to the collector's socket.",
        c.sent,
    );
    by_label(
        e,
        "sipedge_capture_dropped_total",
        Kind::Counter,
        "Copies dropped, by reason: queue_full (capture.max_queued_bytes waiting), too_long (beyond a HEP message's 65535 bytes), send_failed (the collector unreachable or its connection lost).",
        "reason",
        c.dropped.iter().copied(),
    );
    single(
        e,
        "sipedge_capture_queued_bytes",
        Kind::Gauge,
        "Bytes of copies waiting for the collector.",
        c.queued_bytes,
    );
    single(
        e,
        "sipedge_capture_collector_up",
        Kind::Gauge,
        "1 when the last send reached the collector's socket.",
        u64::from(c.collector_up),
    );
}

fn relay_metrics(e: &mut Exposition, r: &Relay) {
    single(
        e,
        "sipedge_turn_allocations",
        Kind::Gauge,
        "TURN allocations held.",
        r.allocations,
    );
    single(
        e,
        "sipedge_turn_reservations",
        Kind::Gauge,
        "Relayed ports reserved (EVEN-PORT R=1) and not yet claimed; they count in the quotas.",
        r.reservations,
    );
    single(
        e,
        "sipedge_turn_tcp_clients",
        Kind::Gauge,
        "TURN-over-TCP connections up.",
        r.tcp_clients,
    );
    by_label(
        e,
        "sipedge_turn_tcp_refused_total",
        Kind::Counter,
        "TURN-over-TCP connections refused at accept or closed before authenticating, by reason.",
        "reason",
        r.tcp_refused.iter().copied(),
    );
    by_label(
        e,
        "sipedge_turn_received_total",
        Kind::Counter,
        "Datagrams and frames received in user space, from clients and from peers (what the kernel path relays never reaches it: see sipedge_turn_kernel_relayed_packets_total).",
        "from",
        [("client", r.client_packets), ("peer", r.peer_packets)],
    );
    single(
        e,
        "sipedge_turn_receive_calls_total",
        Kind::Counter,
        "System calls that received datagrams (batched: fewer than the datagrams).",
        r.receive_calls,
    );
    by_label(
        e,
        "sipedge_turn_relayed_packets_total",
        Kind::Counter,
        "Packets relayed (and answers sent), by direction.",
        "direction",
        directions(r.relayed_to_peers, r.relayed_to_clients),
    );
    by_label(
        e,
        "sipedge_turn_relayed_bytes_total",
        Kind::Counter,
        "Payload bytes relayed, by direction.",
        "direction",
        directions(r.bytes_to_peers, r.bytes_to_clients),
    );
    by_label(
        e,
        "sipedge_turn_dropped_total",
        Kind::Counter,
        "Packets dropped without an answer, by reason.",
        "reason",
        r.dropped.iter().copied(),
    );
    single(
        e,
        "sipedge_turn_send_errors_total",
        Kind::Counter,
        "Sends the kernel refused.",
        r.send_errors,
    );
    single(
        e,
        "sipedge_turn_kernel_channels",
        Kind::Gauge,
        "Channels the kernel path relays now (relay.kernel_offload).",
        r.kernel_channels,
    );
    by_label(
        e,
        "sipedge_turn_kernel_relayed_packets_total",
        Kind::Counter,
        "Of the packets relayed, those the kernel path relayed, by direction (read back every second).",
        "direction",
        directions(r.kernel_relayed_to_peers, r.kernel_relayed_to_clients),
    );
}

/// The instance's state as pretty JSON: certificates, next hops, connections, calls,
/// relay, partners, key ring, version and uptime.
pub fn status(s: &EdgeSnapshot) -> String {
    use serde_json::json;
    let certificates: Vec<_> = s
        .certificates
        .iter()
        .map(|c| {
            let left = c.not_after - s.now_unix;
            let state = if left <= 0 {
                "expired"
            } else if left < EXPIRING_SECS {
                "expiring"
            } else {
                "ok"
            };
            json!({
                "role": c.role,
                "subject": c.subject,
                "sans": c.sans,
                "not_after": c.not_after,
                "days_left": left.div_euclid(86_400),
                "status": state,
            })
        })
        .collect();
    let next_hops: Vec<_> = s
        .next_hops
        .iter()
        .map(|m| {
            let probe = m.last_probe.map(|p| {
                json!({
                    "at": p.at,
                    "status": p.status,
                    "latency_ms": p.latency.as_secs_f64() * 1000.0,
                })
            });
            json!({
                "address": m.address,
                "up": m.up,
                "outstanding": m.outstanding,
                "last_probe": probe,
            })
        })
        .collect();
    let partners: Vec<_> = s
        .partners
        .iter()
        .flatten()
        .map(|p| {
            json!({
                "partner": p.name,
                "domains": p.domains,
                "connections": p.connections,
                "dialogs": p.dialogs,
            })
        })
        .collect();
    let ring: Vec<_> = s
        .key_ring
        .iter()
        .map(|k| {
            let created = i64::try_from(k.created).unwrap_or(0);
            json!({
                "id": k.id,
                "age_days": (s.now_unix - created).div_euclid(86_400),
                "signs_from": k.signs_from,
            })
        })
        .collect();
    let relay = s
        .relay
        .as_ref()
        .map(|r| json!({ "allocations": r.allocations, "kernel_offload": r.kernel_offload }));
    let pool = s.pool.as_ref().map(|p| {
        json!({
            "redis": p.status,
            "member": p.member,
            "bans_published": p.bans_published,
            "bans_received": p.bans_received,
        })
    });
    let capture = s.capture.as_ref().map(|c| {
        json!({
            "collector": c.collector,
            "transport": c.transport,
            "collector_up": c.collector_up,
        })
    });
    let body = json!({
        "instance": s.instance,
        "version": s.version,
        "uptime_secs": s.uptime_secs,
        "started": s.started_unix,
        "draining": s.draining,
        "certificates": certificates,
        "next_hops": next_hops,
        "connections": {
            "external": s.access.connections.external,
            "internal": s.access.connections.internal,
        },
        "calls": s.calls,
        "relay": relay,
        "partners": partners,
        "key_ring": ring,
        "pool": pool,
        "capture": capture,
    });
    let mut text = serde_json::to_string_pretty(&body).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::obs::snapshot::*;
    use std::time::Duration;

    fn edge() -> EdgeSnapshot {
        EdgeSnapshot {
            instance: "edge-1".into(),
            version: "9.9.9",
            uptime_secs: 42,
            started_unix: 1_700_000_000,
            now_unix: 1_700_000_042,
            certificates: vec![Certificate {
                role: "external",
                subject: "CN=edge".into(),
                sans: vec!["edge.example".into()],
                not_after: 1_700_000_042 + 10 * 86_400,
            }],
            access: AccessEdge {
                forwarded: ByZone {
                    external: 7,
                    internal: 5,
                },
                by_method: vec![
                    (
                        "INVITE",
                        ByZone {
                            external: 2,
                            internal: 1,
                        },
                    ),
                    (
                        "response",
                        ByZone {
                            external: 3,
                            internal: 4,
                        },
                    ),
                ],
                rejects: vec![(
                    "domain_not_served",
                    ByZone {
                        external: 1,
                        internal: 0,
                    },
                )],
                source_refusals: vec![("banned", 0), ("request_rate", 6)],
                bans_total: 2,
                flows: 3,
                connections: ByZone {
                    external: 2,
                    internal: 1,
                },
                ..AccessEdge::default()
            },
            next_hops: vec![NextHop {
                address: "192.0.2.7:5061".into(),
                up: true,
                outstanding: 4,
                last_probe: Some(Probe {
                    at: 1_700_000_040,
                    status: 200,
                    latency: Duration::from_millis(3),
                }),
            }],
            calls: 1,
            partners: Some(vec![
                Partner {
                    name: "edge.partner.example".into(),
                    domains: vec!["partner.example".into()],
                    connections: 1,
                    dialogs: 2,
                    counters: Some(PartnerCounters {
                        sent: 10,
                        received: 11,
                        rate_limited: 1,
                        connect_failures: 0,
                    }),
                },
                Partner {
                    name: "uncounted.example".into(),
                    ..Partner::default()
                },
            ]),
            key_ring: vec![RingKey {
                id: "k1".into(),
                created: 1_700_000_042 - 3 * 86_400,
                signs_from: 1_700_000_000,
            }],
            relay: Some(Relay {
                allocations: 5,
                tcp_refused: vec![("zone_full", 1)],
                dropped: vec![("no_permission", 9)],
                bytes_to_peers: 1200,
                kernel_offload: "unavailable: no privilege".into(),
                kernel_relayed_to_clients: 7,
                ..Relay::default()
            }),
            pool: Some(Pool {
                status: "degraded",
                member: "edge1/00ff".into(),
                bans_published: 3,
                bans_received: 4,
                requests_charged: 0,
                outages: 1,
                garbage: 0,
                quota_asks: vec![("granted", 2), ("refused", 1), ("local", 0)],
            }),
            capture: Some(Capture {
                collector: "10.0.0.9:9060".into(),
                transport: "udp",
                collector_up: true,
                queued: 12,
                sent: 11,
                queued_bytes: 300,
                dropped: vec![("queue_full", 1), ("too_long", 0), ("send_failed", 0)],
            }),
            draining: false,
        }
    }

    #[test]
    fn metrics_render_families_from_a_snapshot() {
        let text = metrics(&edge());
        for expected in [
            "sipedge_pool_degraded 1\n",
            "sipedge_pool_bans_received_total 4\n",
            "sipedge_pool_quota_asks_total{answer=\"refused\"} 1\n",
            "# HELP sipedge_build_info Build information.\n# TYPE sipedge_build_info gauge\n\
             sipedge_build_info{version=\"9.9.9\"} 1\n",
            "# TYPE sipedge_messages_forwarded_total counter\n\
             sipedge_messages_forwarded_total{zone=\"external\"} 7\n\
             sipedge_messages_forwarded_total{zone=\"internal\"} 5\n",
            "sipedge_messages_total{method=\"INVITE\",direction=\"inbound\",zone=\"external\"} 2\n\
             sipedge_messages_total{method=\"INVITE\",direction=\"outbound\",zone=\"internal\"} 1\n\
             sipedge_messages_total{method=\"response\",direction=\"inbound\",zone=\"external\"} 3\n",
            "sipedge_rejects_total{reason=\"domain_not_served\",zone=\"external\"} 1\n\
             sipedge_rejects_total{reason=\"domain_not_served\",zone=\"internal\"} 0\n",
            "sipedge_source_refusals_total{reason=\"request_rate\"} 6\n",
            "# HELP sipedge_bans_total Sources banned.\n# TYPE sipedge_bans_total counter\n\
             sipedge_bans_total 2\n",
            "# TYPE sipedge_flows gauge\nsipedge_flows 3\n",
            "sipedge_connections{zone=\"external\"} 2\nsipedge_connections{zone=\"internal\"} 1\n",
            "sipedge_next_hop_up{member=\"192.0.2.7:5061\"} 1\n",
            "sipedge_next_hop_outstanding{member=\"192.0.2.7:5061\"} 4\n",
            "sipedge_calls 1\n",
            "sipedge_partner_messages_total{partner=\"edge.partner.example\",direction=\"sent\"} 10\n\
             sipedge_partner_messages_total{partner=\"edge.partner.example\",direction=\"received\"} 11\n",
            "sipedge_partner_dialogs{partner=\"edge.partner.example\"} 2\n",
            "sipedge_turn_allocations 5\n",
            "sipedge_turn_tcp_refused_total{reason=\"zone_full\"} 1\n",
            "sipedge_turn_relayed_bytes_total{direction=\"to_peer\"} 1200\n",
            "sipedge_turn_dropped_total{reason=\"no_permission\"} 9\n",
            "sipedge_turn_kernel_relayed_packets_total{direction=\"to_client\"} 7\n",
            "sipedge_capture_messages_total 12\n",
            "sipedge_capture_dropped_total{reason=\"queue_full\"} 1\n",
            "sipedge_capture_collector_up 1\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        // A partner without counters is not shown; every family is typed once.
        assert!(!text.contains("uncounted.example"), "{text}");
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(types, helps);
        assert_eq!(types, 47, "{text}");
    }

    #[test]
    fn without_federation_or_relay_their_families_are_absent() {
        let mut s = edge();
        s.partners = None;
        s.relay = None;
        s.pool = None;
        s.capture = None;
        let text = metrics(&s);
        assert!(!text.contains("sipedge_capture_"), "{text}");
        assert!(!text.contains("sipedge_partner_"), "{text}");
        assert!(!text.contains("sipedge_turn_"), "{text}");
        assert!(!text.contains("sipedge_pool_"), "{text}");
        // With federation but no partner listed, the families are there, empty.
        s.partners = Some(Vec::new());
        let text = metrics(&s);
        assert!(text.contains("# TYPE sipedge_partner_dialogs gauge\n"));
        assert!(!text.contains("sipedge_partner_dialogs{"));
    }

    #[test]
    fn status_renders_json_from_a_snapshot() {
        let text = status(&edge());
        assert!(text.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["instance"], "edge-1");
        assert_eq!(v["version"], "9.9.9");
        assert_eq!(v["uptime_secs"], 42);
        assert_eq!(v["started"], 1_700_000_000u64);
        assert_eq!(v["draining"], false);
        assert_eq!(v["certificates"][0]["status"], "expiring");
        assert_eq!(v["certificates"][0]["days_left"], 10);
        assert_eq!(v["certificates"][0]["sans"][0], "edge.example");
        assert_eq!(v["next_hops"][0]["last_probe"]["status"], 200);
        assert_eq!(v["next_hops"][0]["last_probe"]["latency_ms"], 3.0);
        assert_eq!(v["connections"]["external"], 2);
        assert_eq!(v["calls"], 1);
        assert_eq!(v["relay"]["allocations"], 5);
        assert_eq!(v["relay"]["kernel_offload"], "unavailable: no privilege");
        assert_eq!(v["partners"][0]["partner"], "edge.partner.example");
        assert_eq!(v["partners"][0]["dialogs"], 2);
        assert_eq!(v["partners"].as_array().unwrap().len(), 2);
        assert_eq!(v["key_ring"][0]["age_days"], 3);
        assert_eq!(v["capture"]["collector"], "10.0.0.9:9060");
        assert_eq!(v["capture"]["collector_up"], true);

        let mut s = edge();
        s.certificates[0].not_after = s.now_unix;
        s.relay = None;
        s.partners = None;
        let v: serde_json::Value = serde_json::from_str(&status(&s)).unwrap();
        assert_eq!(v["certificates"][0]["status"], "expired");
        assert_eq!(v["relay"], serde_json::Value::Null);
        assert_eq!(v["partners"], serde_json::json!([]));
    }
}
