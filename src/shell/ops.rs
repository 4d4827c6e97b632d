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
//!
//! [`snapshot`] is the one place that reads the live state for `/metrics` and `/status`;
//! metric names and the rendering belong to [`crate::obs::render`].

use crate::sync::RwLockExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{clock, Shared, REFUSAL_LABELS};
use crate::core::sip::message::Method as SipMethod;
use crate::core::sip::Why;
use crate::obs::render;
use crate::obs::snapshot::{
    AccessEdge, ByZone, Certificate, EdgeSnapshot, NextHop, Partner, PartnerCounters, Probe, Relay,
    RingKey,
};

const MAX_HEAD: usize = 8 * 1024;
const MAX_BODY: usize = 4 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONCURRENT: usize = 64;

/// Serves until shutdown.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.shutdown.clone();
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
        let shared = shared.clone();
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
                let answer = respond(&buf, &shared, clock::now());
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
pub fn respond(buf: &[u8], shared: &Shared, now: Instant) -> Vec<u8> {
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
        return turn_credentials(shared, TurnAsk::from_json(body));
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
        return turn_credentials(shared, TurnAsk::from_query(query));
    }
    match path {
        b"/healthz" => {
            let now_unix = i64::try_from(clock::now_unix()).unwrap_or(i64::MAX);
            let expired = shared
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
            } else if shared.pool.any_up() {
                http(200, "OK", "text/plain", "ok\n")
            } else {
                http(503, "Service Unavailable", "text/plain", "no next hop up\n")
            }
        }
        b"/status" => http(200, "OK", "application/json", &status(shared, now)),
        b"/metrics" => http(
            200,
            "OK",
            "text/plain; version=0.0.4",
            &metrics(shared, now),
        ),
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
fn turn_credentials(shared: &Shared, ask: Result<TurnAsk, String>) -> Vec<u8> {
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

/// The instance's state as JSON (`/status`).
pub fn status(shared: &Shared, now: Instant) -> String {
    render::status(&snapshot(shared, now))
}

/// Every counter and gauge of the instance, live (`/metrics`).
pub fn metrics(shared: &Shared, now: Instant) -> String {
    render::metrics(&snapshot(shared, now))
}

/// Everything `/metrics` and `/status` show, read from the live state: the one place that
/// does.
pub fn snapshot(shared: &Shared, now: Instant) -> EdgeSnapshot {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let zones = |[external, internal]: &[AtomicU64; 2]| ByZone {
        external: load(external),
        internal: load(internal),
    };
    let st = &shared.stats;
    let (external, internal) = shared.flows.count_by_side();
    let access = AccessEdge {
        forwarded: ByZone {
            external: load(&st.forwarded_from_external),
            internal: load(&st.forwarded_from_internal),
        },
        by_method: SipMethod::ALL
            .iter()
            .map(|m| m.label())
            .chain(["response"])
            .enumerate()
            .map(|(row, m)| (m, st.by_method.get(row).map_or_else(ByZone::default, zones)))
            .collect(),
        rejects: Why::LABELS
            .iter()
            .enumerate()
            .map(|(i, why)| {
                let n = st.rejects_by_reason.get(i);
                (*why, n.map_or_else(ByZone::default, zones))
            })
            .collect(),
        source_refusals: REFUSAL_LABELS
            .iter()
            .zip(&st.source_refusals)
            .map(|(why, n)| (*why, load(n)))
            .collect(),
        bans_total: shared.guard.bans_total(),
        banned_sources: shared.guard.banned_count(now) as u64,
        tracked_sources: shared.guard.tracked() as u64,
        banned_closes: load(&st.banned_closes),
        connections_accepted: load(&st.connections_accepted),
        connections_refused: load(&st.connections_refused),
        handshakes_failed: load(&st.handshakes_failed),
        dropped_responses: load(&st.dropped_responses),
        flows: shared.flows.len() as u64,
        connections: ByZone {
            external: external as u64,
            internal: internal as u64,
        },
    };
    let next_hops = shared
        .pool
        .members()
        .iter()
        .map(|m| NextHop {
            address: m.addr.to_string(),
            up: m.is_up(),
            outstanding: m.outstanding() as u64,
            last_probe: m.last_probe().map(|(at, status, latency)| Probe {
                at,
                status,
                latency,
            }),
        })
        .collect();
    let partners = shared.partners.as_ref().map(|p| {
        let dialogs = p.dialogs(&shared.calls());
        // Counters in the partner list's order, for the partners that have them.
        let mut counters = p.stats_by_partner().into_iter().peekable();
        p.federation()
            .iter()
            .zip(p.connections())
            .zip(dialogs)
            .map(|(((_, partner), connections), dialogs)| {
                let name = partner.label().to_string();
                let counted = counters.next_if(|(n, _)| *n == name);
                Partner {
                    domains: partner.domains.clone(),
                    connections: connections as u64,
                    dialogs: dialogs as u64,
                    counters: counted.map(|(_, s)| PartnerCounters {
                        sent: load(&s.sent),
                        received: load(&s.received),
                        rate_limited: load(&s.rate_limited),
                        connect_failures: load(&s.connect_failures),
                    }),
                    name,
                }
            })
            .collect()
    });
    let relay = shared.turn.get().map(|t| {
        let st = &t.stats;
        Relay {
            allocations: t.allocations() as u64,
            reservations: t.reservations() as u64,
            tcp_clients: load(&st.tcp_clients),
            tcp_refused: super::turn::TCP_REFUSAL_LABELS
                .iter()
                .zip(&st.tcp_refused)
                .map(|(why, n)| (*why, load(n)))
                .collect(),
            client_packets: load(&st.client_packets),
            peer_packets: load(&st.peer_packets),
            receive_calls: load(&st.receive_calls),
            relayed_to_peers: load(&st.relayed_to_peers),
            relayed_to_clients: load(&st.relayed_to_clients),
            bytes_to_peers: load(&st.bytes_to_peers),
            bytes_to_clients: load(&st.bytes_to_clients),
            dropped: st.dropped().collect(),
            send_errors: load(&st.send_errors),
        }
    });
    EdgeSnapshot {
        instance: shared.name.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: now.saturating_duration_since(shared.started).as_secs(),
        started_unix: shared.started_unix,
        now_unix: i64::try_from(clock::now_unix()).unwrap_or(i64::MAX),
        draining: shared.is_draining(),
        certificates: shared
            .certificates
            .read_unpoisoned()
            .iter()
            .map(|(role, c)| Certificate {
                role,
                subject: c.subject.clone(),
                sans: c.sans.clone(),
                not_after: c.not_after,
            })
            .collect(),
        access,
        next_hops,
        calls: shared.calls_in_progress() as u64,
        partners,
        key_ring: shared
            .credentials
            .iter()
            .flat_map(|c| c.ring.keys())
            .map(|k| RingKey {
                id: k.id.clone(),
                created: k.created,
                signs_from: k.signs_from,
            })
            .collect(),
        relay,
    }
}

/// Binds the operations listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    super::listen::bind(addr)
}
