//! The operations listener over plain HTTP/1.1, one request per connection, on an internal or
//! management address (the topology refuses the external one):
//! - `GET /healthz` (200, or 503 when no next hop is up, the edge is draining or a serving
//!   certificate has expired), `GET /status` (JSON), `GET /metrics` (Prometheus text);
//! - the TURN REST credential endpoint for WebRTC gateways (draft-uberti-behave-turn-rest):
//!   `GET /?service=turn&username=U[&ttl=S]` or `GET /turn?username=U[&ttl=S]`, or
//!   `POST /turn` with a JSON body `{"username": U, "ttl": S}`; answers
//!   `{"username", "password", "ttl", "uris"}`.
//!
//! Small and strict: a head of at most 8 KiB and a body of at most 4 KiB within 5 s,
//! `Connection: close`; anything else gets a clear 4xx.

use crate::sync::RwLockExt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{clock, EdgeView, REFUSAL_LABELS};
use crate::core::sip::proxy::Side;
use crate::core::sip::Why;
use crate::obs::metrics::{Exposition, Kind};

const MAX_HEAD: usize = 8 * 1024;
const MAX_BODY: usize = 4 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONCURRENT: usize = 64;

/// Serves until shutdown.
pub async fn serve(view: Arc<EdgeView>, listener: TcpListener) {
    let mut shutdown = view.shared.shutdown.clone();
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((mut tcp, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // dropped: the monitoring system retries
        };
        let view = view.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let read = tokio::time::timeout(READ_TIMEOUT, async {
                let mut chunk = [0u8; 1024];
                loop {
                    if let Some(end) = head_end(&buf) {
                        // A body (POST /turn) up to its Content-Length, bounded.
                        let want = content_length(buf.get(..end).unwrap_or_default()).unwrap_or(0);
                        if want > MAX_BODY || buf.len() >= end + want {
                            return true;
                        }
                    } else if buf.len() > MAX_HEAD {
                        return true;
                    }
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    }
                }
            })
            .await;
            if let Ok(true) = read {
                let answer = respond(&buf, &view, clock::now());
                let _ = tokio::time::timeout(READ_TIMEOUT, tcp.write_all(&answer)).await;
                let _ = tcp.shutdown().await;
            }
            drop(slot);
        });
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The answer to one request head (pure: testable without sockets).
pub fn respond(buf: &[u8], view: &EdgeView, now: Instant) -> Vec<u8> {
    let shared = &*view.shared;
    let Some(end) = head_end(buf).filter(|&e| e <= MAX_HEAD) else {
        return http(
            431,
            "Request Header Fields Too Large",
            "text/plain",
            "request head too large\n",
        );
    };
    let head = buf.get(..end).unwrap_or_default();
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return http(400, "Bad Request", "text/plain", "malformed request line\n");
    };
    if !version.starts_with(b"HTTP/1.") {
        return http(400, "Bad Request", "text/plain", "HTTP/1.x only\n");
    }
    let mut target_parts = target.splitn(2, |&b| b == b'?');
    let path = target_parts.next().unwrap_or_default();
    let query = target_parts.next().unwrap_or_default();
    let body = buf.get(end..).unwrap_or_default();
    if method == b"POST" && path == b"/turn" {
        if content_length(head).is_some_and(|n| n > MAX_BODY) {
            return http(413, "Content Too Large", "text/plain", "body too large\n");
        }
        return turn_credentials(view, TurnAsk::from_json(body));
    }
    if method != b"GET" {
        let mut r = http(
            405,
            "Method Not Allowed",
            "text/plain",
            "GET, or POST /turn\n",
        );
        // Insert Allow before the blank line.
        if let Some(p) = head_end(&r) {
            r.splice(p - 2..p - 2, b"Allow: GET, POST\r\n".iter().copied());
        }
        return r;
    }
    if path == b"/turn"
        || (path == b"/" && query_param(query, "service").as_deref() == Some("turn"))
    {
        return turn_credentials(view, TurnAsk::from_query(query));
    }
    match path {
        b"/healthz" => {
            let now_unix = i64::try_from(clock::now_unix()).unwrap_or(i64::MAX);
            let expired = view
                .certificates
                .read_unpoisoned()
                .iter()
                .find(|(_, c)| c.not_after < now_unix)
                .map(|(role, _)| *role);
            if shared.is_draining() {
                http(503, "Service Unavailable", "text/plain", "draining\n")
            } else if let Some(role) = expired {
                let why = format!("the {role} certificate has expired\n");
                http(503, "Service Unavailable", "text/plain", &why)
            } else if view.routes.pool.any_up() {
                http(200, "OK", "text/plain", "ok\n")
            } else {
                http(503, "Service Unavailable", "text/plain", "no next hop up\n")
            }
        }
        b"/status" => http(200, "OK", "application/json", &status(view, now)),
        b"/metrics" => http(200, "OK", "text/plain; version=0.0.4", &metrics(view, now)),
        _ => http(
            404,
            "Not Found",
            "text/plain",
            "try /healthz, /status, /metrics or /turn?username=...\n",
        ),
    }
}

/// A credential request: the user and the lifetime asked for (seconds).
struct TurnAsk {
    username: String,
    ttl: Option<u64>,
}

impl TurnAsk {
    fn from_query(query: &[u8]) -> Result<TurnAsk, String> {
        let username = query_param(query, "username").ok_or("missing username")?;
        let ttl = match query_param(query, "ttl") {
            Some(t) => Some(t.parse::<u64>().map_err(|_| "ttl: whole seconds")?),
            None => None,
        };
        Ok(TurnAsk { username, ttl })
    }

    fn from_json(body: &[u8]) -> Result<TurnAsk, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Ask {
            username: String,
            ttl: Option<u64>,
        }
        let ask: Ask = serde_json::from_slice(body).map_err(|e| format!("JSON: {e}"))?;
        Ok(TurnAsk {
            username: ask.username,
            ttl: ask.ttl,
        })
    }
}

/// `key=value` from a query string, percent-decoded (`None` if absent or badly encoded).
fn query_param(query: &[u8], key: &str) -> Option<String> {
    query.split(|&b| b == b'&').find_map(|pair| {
        let mut kv = pair.splitn(2, |&b| b == b'=');
        let k = kv.next()?;
        (k == key.as_bytes()).then(|| percent_decode(kv.next().unwrap_or_default()))?
    })
}

fn percent_decode(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'%' => {
                let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The TURN REST answer: `{username, password, ttl, uris}`.
fn turn_credentials(view: &EdgeView, ask: Result<TurnAsk, String>) -> Vec<u8> {
    let shared = &*view.shared;
    let Some(service) = &shared.credentials else {
        return http(
            404,
            "Not Found",
            "text/plain",
            "no A/V authentication service ([keys] and [relay])\n",
        );
    };
    let ask = match ask {
        Ok(a) => a,
        Err(why) => return http(400, "Bad Request", "text/plain", &format!("{why}\n")),
    };
    let max = service.relay.max_lifetime_secs;
    let ttl = ask.ttl.unwrap_or(max);
    if !(crate::core::credentials::MIN_LIFETIME_SECS..=max).contains(&ttl) {
        return http(
            400,
            "Bad Request",
            "text/plain",
            &format!("ttl: 60 to {max} seconds\n"),
        );
    }
    let minted =
        crate::core::credentials::mint(&service.ring, &ask.username, ttl, clock::now_unix());
    let c = match minted {
        Ok(c) => c,
        Err(e) => {
            return http(
                400,
                "Bad Request",
                "text/plain",
                &format!("username: {e}\n"),
            )
        }
    };
    shared
        .stats
        .credentials_issued
        .fetch_add(1, Ordering::Relaxed);
    let relay = &service.relay;
    let json = serde_json::json!({
        "username": c.username,
        "password": c.password,
        "ttl": ttl,
        "uris": [
            format!("turn:{}:{}?transport=udp", relay.host, relay.udp_port),
            format!("turn:{}:{}?transport=tcp", relay.host, relay.tcp_port),
        ],
    });
    http(200, "OK", "application/json", &format!("{json}\n"))
}

fn http(status: u16, reason: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Certificates closer than this to their end are reported `expiring`.
const EXPIRING_SECS: i64 = 30 * 86_400;

/// The instance's state as JSON: certificates, next hops, connections, calls, relay,
/// partners, key ring, version and uptime.
pub fn status(view: &EdgeView, now: Instant) -> String {
    let shared = &*view.shared;
    use serde_json::json;
    let now_unix = i64::try_from(clock::now_unix()).unwrap_or(i64::MAX);
    let certificates: Vec<_> = view
        .certificates
        .read_unpoisoned()
        .iter()
        .map(|(role, c)| {
            let left = c.not_after - now_unix;
            let state = if left <= 0 {
                "expired"
            } else if left < EXPIRING_SECS {
                "expiring"
            } else {
                "ok"
            };
            json!({
                "role": role,
                "subject": c.subject,
                "sans": c.sans,
                "not_after": c.not_after,
                "days_left": left.div_euclid(86_400),
                "status": state,
            })
        })
        .collect();
    let next_hops: Vec<_> = view
        .routes
        .pool
        .members()
        .iter()
        .map(|m| {
            let probe = m.last_probe().map(|(at, status, rtt)| {
                json!({
                    "at": at,
                    "status": status,
                    "latency_ms": rtt.as_secs_f64() * 1000.0,
                })
            });
            json!({
                "address": m.addr.to_string(),
                "up": m.is_up(),
                "outstanding": m.outstanding(),
                "last_probe": probe,
            })
        })
        .collect();
    let (external, internal) = shared.flows.count_by_side();
    let partners: Vec<_> = match &view.routes.partners {
        Some(p) => p
            .federation()
            .iter()
            .zip(p.connections())
            .zip(p.dialogs(&shared.calls()))
            .map(|(((_, partner), connections), dialogs)| {
                json!({
                    "partner": partner.label(),
                    "domains": partner.domains,
                    "connections": connections,
                    "dialogs": dialogs,
                })
            })
            .collect(),
        None => Vec::new(),
    };
    let ring: Vec<_> = shared
        .credentials
        .iter()
        .flat_map(|c| c.ring.keys())
        .map(|k| {
            json!({
                "id": k.id,
                "age_days": (now_unix - i64::try_from(k.created).unwrap_or(0)).div_euclid(86_400),
                "signs_from": k.signs_from,
            })
        })
        .collect();
    let turn = view
        .turn
        .as_ref()
        .map(|t| json!({ "allocations": t.allocations() }));
    let body = json!({
        "instance": view.name,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": now.saturating_duration_since(view.started).as_secs(),
        "started": view.started_unix,
        "draining": shared.is_draining(),
        "certificates": certificates,
        "next_hops": next_hops,
        "connections": { "external": external, "internal": internal },
        "calls": shared.calls_in_progress(),
        "relay": turn,
        "partners": partners,
        "key_ring": ring,
    });
    let mut text = serde_json::to_string_pretty(&body).unwrap_or_default();
    text.push('\n');
    text
}

/// Every counter and gauge of the instance, live.
pub fn metrics(view: &EdgeView, now: Instant) -> String {
    let shared = &*view.shared;
    let st = &shared.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut e = Exposition::default();
    e.family("sipedge_build_info", Kind::Gauge, "Build information.")
        .sample(
            "sipedge_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
    e.family(
        "sipedge_messages_forwarded_total",
        Kind::Counter,
        "SIP messages forwarded, by the zone they came from.",
    )
    .sample(
        "sipedge_messages_forwarded_total",
        &[("zone", "external")],
        load(&st.forwarded_from_external),
    )
    .sample(
        "sipedge_messages_forwarded_total",
        &[("zone", "internal")],
        load(&st.forwarded_from_internal),
    );
    e.family(
        "sipedge_messages_total",
        Kind::Counter,
        "SIP messages forwarded, by method (responses as \"response\"), direction and the zone they came from.",
    );
    for (row, method) in crate::core::sip::message::Method::ALL
        .iter()
        .map(|m| m.label())
        .chain(["response"])
        .enumerate()
    {
        for (column, (zone, direction)) in [("external", "inbound"), ("internal", "outbound")]
            .iter()
            .enumerate()
        {
            let n = st
                .by_method
                .get(row)
                .and_then(|r| r.get(column))
                .map_or(0, load);
            e.sample(
                "sipedge_messages_total",
                &[("method", method), ("direction", direction), ("zone", zone)],
                n,
            );
        }
    }
    e.family(
        "sipedge_rejects_total",
        Kind::Counter,
        "SIP messages refused, by reason and by the zone they came from.",
    );
    for (i, label) in Why::LABELS.iter().enumerate() {
        for (z, zone) in [Side::External, Side::Internal].into_iter().enumerate() {
            let n = st
                .rejects_by_reason
                .get(i)
                .and_then(|c| c.get(z))
                .map_or(0, load);
            e.sample(
                "sipedge_rejects_total",
                &[("reason", label), ("zone", zone.label())],
                n,
            );
        }
    }
    e.family(
        "sipedge_source_refusals_total",
        Kind::Counter,
        "Connections and requests refused by per-source limits on the external zone, by reason.",
    );
    for (label, c) in REFUSAL_LABELS.iter().zip(st.source_refusals.iter()) {
        e.sample(
            "sipedge_source_refusals_total",
            &[("reason", label)],
            load(c),
        );
    }
    e.family("sipedge_bans_total", Kind::Counter, "Sources banned.")
        .sample("sipedge_bans_total", &[], shared.guard.bans_total());
    e.family("sipedge_banned_sources", Kind::Gauge, "Sources banned now.")
        .sample(
            "sipedge_banned_sources",
            &[],
            shared.guard.banned_count(now) as u64,
        );
    e.family(
        "sipedge_tracked_sources",
        Kind::Gauge,
        "Sources in the per-source table.",
    )
    .sample(
        "sipedge_tracked_sources",
        &[],
        shared.guard.tracked() as u64,
    );
    e.family(
        "sipedge_banned_connection_closes_total",
        Kind::Counter,
        "Connections closed because their source was banned.",
    )
    .sample(
        "sipedge_banned_connection_closes_total",
        &[],
        load(&st.banned_closes),
    );
    e.family(
        "sipedge_connections_accepted_total",
        Kind::Counter,
        "TCP connections accepted.",
    )
    .sample(
        "sipedge_connections_accepted_total",
        &[],
        load(&st.connections_accepted),
    );
    e.family(
        "sipedge_connections_refused_total",
        Kind::Counter,
        "Connections closed at accept: connection or handshake budget spent.",
    )
    .sample(
        "sipedge_connections_refused_total",
        &[],
        load(&st.connections_refused),
    );
    e.family(
        "sipedge_handshakes_failed_total",
        Kind::Counter,
        "TLS handshakes failed or timed out.",
    )
    .sample(
        "sipedge_handshakes_failed_total",
        &[],
        load(&st.handshakes_failed),
    );
    e.family(
        "sipedge_responses_dropped_total",
        Kind::Counter,
        "Responses dropped: their flow is gone or its queue is full.",
    )
    .sample(
        "sipedge_responses_dropped_total",
        &[],
        load(&st.dropped_responses),
    );
    e.family(
        "sipedge_flows",
        Kind::Gauge,
        "Live connections (flows), both zones and the pool.",
    )
    .sample("sipedge_flows", &[], shared.flows.len() as u64);
    let (external, internal) = shared.flows.count_by_side();
    e.family(
        "sipedge_connections",
        Kind::Gauge,
        "Live connections by zone (remote users and partners; the pool and internal clients).",
    )
    .sample(
        "sipedge_connections",
        &[("zone", "external")],
        external as u64,
    )
    .sample(
        "sipedge_connections",
        &[("zone", "internal")],
        internal as u64,
    );
    e.family(
        "sipedge_next_hop_up",
        Kind::Gauge,
        "1 when the next-hop member is up.",
    );
    let addrs: Vec<String> = view
        .routes
        .pool
        .members()
        .iter()
        .map(|m| m.addr.to_string())
        .collect();
    for (m, addr) in view.routes.pool.members().iter().zip(&addrs) {
        e.sample(
            "sipedge_next_hop_up",
            &[("member", addr)],
            u64::from(m.is_up()),
        );
    }
    e.family(
        "sipedge_next_hop_outstanding",
        Kind::Gauge,
        "Transactions in flight toward the next-hop member.",
    );
    for (m, addr) in view.routes.pool.members().iter().zip(&addrs) {
        e.sample(
            "sipedge_next_hop_outstanding",
            &[("member", addr)],
            m.outstanding() as u64,
        );
    }
    e.family(
        "sipedge_calls",
        Kind::Gauge,
        "Calls (INVITE dialogs) crossing the edge, against limits.max_calls.",
    )
    .sample("sipedge_calls", &[], shared.calls_in_progress() as u64);
    if let Some(partners) = &view.routes.partners {
        let dialogs = partners.dialogs(&shared.calls());
        partner_metrics(&mut e, partners, &dialogs);
    }
    if let Some(turn) = view.turn.as_ref() {
        turn_metrics(&mut e, turn);
    }
    e.finish()
}

/// Federation's counters, by partner edge.
fn partner_metrics(e: &mut Exposition, partners: &super::partners::Partners, dialogs: &[usize]) {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let names = partners.stats_by_partner();
    e.family(
        "sipedge_partner_messages_total",
        Kind::Counter,
        "Messages sent to and accepted from each partner edge.",
    );
    for (name, st) in &names {
        e.sample(
            "sipedge_partner_messages_total",
            &[("partner", name), ("direction", "sent")],
            load(&st.sent),
        )
        .sample(
            "sipedge_partner_messages_total",
            &[("partner", name), ("direction", "received")],
            load(&st.received),
        );
    }
    e.family(
        "sipedge_partner_rate_limited_total",
        Kind::Counter,
        "Requests from a partner edge refused for its rate (503).",
    );
    for (name, st) in &names {
        e.sample(
            "sipedge_partner_rate_limited_total",
            &[("partner", name)],
            load(&st.rate_limited),
        );
    }
    e.family(
        "sipedge_partner_connect_failures_total",
        Kind::Counter,
        "Connections to a partner edge that could not be opened.",
    );
    for (name, st) in &names {
        e.sample(
            "sipedge_partner_connect_failures_total",
            &[("partner", name)],
            load(&st.connect_failures),
        );
    }
    e.family(
        "sipedge_partner_dialogs",
        Kind::Gauge,
        "Dialogs counted with a partner (both directions), against its max_dialogs.",
    );
    for ((name, _), n) in names.iter().zip(dialogs) {
        e.sample("sipedge_partner_dialogs", &[("partner", name)], *n as u64);
    }
    e.family(
        "sipedge_partner_connections",
        Kind::Gauge,
        "Connections this edge opened to a partner edge, up.",
    );
    for ((name, _), n) in names.iter().zip(partners.connections()) {
        e.sample(
            "sipedge_partner_connections",
            &[("partner", name)],
            n as u64,
        );
    }
}

/// The A/V Edge's counters.
fn turn_metrics(e: &mut Exposition, turn: &super::turn::Turn) {
    let st = &turn.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    e.family(
        "sipedge_turn_allocations",
        Kind::Gauge,
        "TURN allocations held.",
    )
    .sample("sipedge_turn_allocations", &[], turn.allocations() as u64);
    e.family(
        "sipedge_turn_reservations",
        Kind::Gauge,
        "Relayed ports reserved (EVEN-PORT R=1) and not yet claimed; they count in the quotas.",
    )
    .sample("sipedge_turn_reservations", &[], turn.reservations() as u64);
    e.family(
        "sipedge_turn_tcp_clients",
        Kind::Gauge,
        "TURN-over-TCP connections up.",
    )
    .sample("sipedge_turn_tcp_clients", &[], load(&st.tcp_clients));
    e.family(
        "sipedge_turn_tcp_refused_total",
        Kind::Counter,
        "TURN-over-TCP connections refused at accept or closed before authenticating, by reason.",
    );
    for (reason, n) in super::turn::TCP_REFUSAL_LABELS.iter().zip(&st.tcp_refused) {
        e.sample(
            "sipedge_turn_tcp_refused_total",
            &[("reason", reason)],
            load(n),
        );
    }
    e.family(
        "sipedge_turn_received_total",
        Kind::Counter,
        "Datagrams and frames received, from clients and from peers.",
    )
    .sample(
        "sipedge_turn_received_total",
        &[("from", "client")],
        load(&st.client_packets),
    )
    .sample(
        "sipedge_turn_received_total",
        &[("from", "peer")],
        load(&st.peer_packets),
    );
    e.family(
        "sipedge_turn_receive_calls_total",
        Kind::Counter,
        "System calls that received datagrams (batched: fewer than the datagrams).",
    )
    .sample(
        "sipedge_turn_receive_calls_total",
        &[],
        load(&st.receive_calls),
    );
    e.family(
        "sipedge_turn_relayed_packets_total",
        Kind::Counter,
        "Packets relayed (and answers sent), by direction.",
    )
    .sample(
        "sipedge_turn_relayed_packets_total",
        &[("direction", "to_peer")],
        load(&st.relayed_to_peers),
    )
    .sample(
        "sipedge_turn_relayed_packets_total",
        &[("direction", "to_client")],
        load(&st.relayed_to_clients),
    );
    e.family(
        "sipedge_turn_relayed_bytes_total",
        Kind::Counter,
        "Payload bytes relayed, by direction.",
    )
    .sample(
        "sipedge_turn_relayed_bytes_total",
        &[("direction", "to_peer")],
        load(&st.bytes_to_peers),
    )
    .sample(
        "sipedge_turn_relayed_bytes_total",
        &[("direction", "to_client")],
        load(&st.bytes_to_clients),
    );
    e.family(
        "sipedge_turn_dropped_total",
        Kind::Counter,
        "Packets dropped without an answer, by reason.",
    );
    for (reason, n) in st.dropped() {
        e.sample("sipedge_turn_dropped_total", &[("reason", reason)], n);
    }
    e.family(
        "sipedge_turn_send_errors_total",
        Kind::Counter,
        "Sends the kernel refused.",
    )
    .sample("sipedge_turn_send_errors_total", &[], load(&st.send_errors));
}

/// Binds the operations listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    super::listen::bind(addr)
}
