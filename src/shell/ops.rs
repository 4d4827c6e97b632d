//! The operations listener: `GET /healthz` and `GET /metrics` over plain HTTP/1.1, one
//! request per connection, on an internal or management address (the topology refuses the
//! external one). Small and strict: a head of at most 8 KiB within 5 s, `GET` only,
//! `Connection: close`; anything else gets a clear 4xx.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{clock, Shared, REFUSAL_LABELS};
use crate::core::sip::proxy::Side;
use crate::core::sip::Why;
use crate::obs::metrics::{Exposition, Kind};

const MAX_HEAD: usize = 8 * 1024;
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
                    if head_end(&buf).is_some() || buf.len() > MAX_HEAD {
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
    if method != b"GET" {
        let mut r = http(405, "Method Not Allowed", "text/plain", "GET only\n");
        // Insert Allow before the blank line.
        if let Some(p) = head_end(&r) {
            r.splice(p - 2..p - 2, b"Allow: GET\r\n".iter().copied());
        }
        return r;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    match path {
        b"/healthz" => {
            if shared.pool.any_up() {
                http(200, "OK", "text/plain", "ok\n")
            } else {
                http(503, "Service Unavailable", "text/plain", "no next hop up\n")
            }
        }
        b"/metrics" => http(
            200,
            "OK",
            "text/plain; version=0.0.4",
            &metrics(shared, now),
        ),
        _ => http(404, "Not Found", "text/plain", "try /healthz or /metrics\n"),
    }
}

fn http(status: u16, reason: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Every counter and gauge of the instance, live.
pub fn metrics(shared: &Shared, now: Instant) -> String {
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
    e.family(
        "sipedge_next_hop_up",
        Kind::Gauge,
        "1 when the next-hop member is up.",
    );
    let addrs: Vec<String> = shared
        .pool
        .members
        .iter()
        .map(|m| m.addr.to_string())
        .collect();
    for (m, addr) in shared.pool.members.iter().zip(&addrs) {
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
    for (m, addr) in shared.pool.members.iter().zip(&addrs) {
        e.sample(
            "sipedge_next_hop_outstanding",
            &[("member", addr)],
            m.outstanding() as u64,
        );
    }
    e.finish()
}

/// Binds the operations listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    super::listen::bind(addr)
}
