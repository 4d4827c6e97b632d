//! The operations listener: HTTP/1.1 through hyper, on an internal or management address
//! (the topology refuses the external one):
//! - `GET /healthz` (200, or 503 when no next hop is up, the edge is draining, a serving
//!   certificate has expired or the external listener is out of descriptors), `GET /status`
//!   (JSON), `GET /metrics` (Prometheus text), answered at the open-file limit too;
//! - the TURN REST credential endpoint for WebRTC gateways (draft-uberti-behave-turn-rest):
//!   `GET /?service=turn&username=U[&ttl=S]` or `GET /turn?username=U[&ttl=S]`, or
//!   `POST /turn` with a JSON body `{"username": U, "ttl": S}`; answers
//!   `{"username", "password", "ttl", "uris"}`.
//!
//! Small and strict: one request per connection (`Connection: close`), a head of at most
//! 8 KiB (431) within 5 s, a body of at most 4 KiB (413), 64 connections at once, each closed
//! after 10 s whatever it does; anything else gets a clear 4xx.
//!
//! What this module owns: the routing ([`respond`], testable without sockets), the server
//! that moves bytes through hyper, and [`snapshot`], the one place that reads the live state
//! for `/metrics` and `/status`. Metric names and the rendering belong to
//! [`crate::obs::render`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::view::EdgeView;
use super::{clock, CredentialService, REFUSAL_LABELS};
use crate::core::sip::message::Method as SipMethod;
use crate::core::sip::Why;
use crate::obs::render;
use crate::obs::snapshot::{
    AccessEdge, ByZone, Certificate, EdgeSnapshot, NextHop, Partner, PartnerCounters, Probe, Relay,
    RingKey,
};
use crate::sync::{MutexExt, RwLockExt};

/// The request head, start line included (hyper's smallest read buffer, too).
const MAX_HEAD: usize = 8 * 1024;
const MAX_BODY: usize = 4 * 1024;
/// For the head, and then for the body.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection's whole life: reading, answering, writing.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONCURRENT: usize = 64;

/// Descriptors the operations listener keeps in reserve (see [`Reserve`]).
const RESERVED_DESCRIPTORS: usize = 4;

/// A few open descriptors (of `/dev/null`) held back for the operations listener. When the
/// edge is at its open-file limit — a crowd of clients, or a limit set too low — the SIP and
/// TURN listeners stop accepting, and so would this one: the load balancer's health check
/// and the operator's `/status` would go unanswered exactly when they are needed. So when an
/// accept here fails for lack of descriptors, one reserved descriptor is closed and the
/// accept tried again with it, and the connection gives it back when it ends.
struct Reserve {
    held: std::sync::Mutex<Vec<std::fs::File>>,
}

impl Reserve {
    fn new() -> Reserve {
        let reserve = Reserve {
            held: std::sync::Mutex::new(Vec::with_capacity(RESERVED_DESCRIPTORS)),
        };
        reserve.refill();
        reserve
    }

    /// Closes one reserved descriptor; whether there was one.
    fn release_one(&self) -> bool {
        self.held.lock_unpoisoned().pop().is_some()
    }

    /// Takes back what was released, as far as descriptors are free.
    fn refill(&self) {
        let mut held = self.held.lock_unpoisoned();
        while held.len() < RESERVED_DESCRIPTORS {
            match std::fs::File::open("/dev/null") {
                Ok(file) => held.push(file),
                Err(_) => break,
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.lock_unpoisoned().len()
    }
}

/// Serves until shutdown.
pub async fn serve(view: Arc<EdgeView>, listener: TcpListener) {
    let mut shutdown = view.shared.shutdown.clone();
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let reserve = Arc::new(Reserve::new());
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        .keep_alive(false)
        .title_case_headers(true);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            // Again at once, with a reserved descriptor free.
            Err(e) if super::listen::out_of_descriptors(&e) && reserve.release_one() => continue,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Dropped: the monitoring system retries. Its descriptor may be a reserved one.
            drop(tcp);
            reserve.refill();
            continue;
        };
        let view = view.clone();
        let service = service_fn(move |request| handle(request, view.clone()));
        let connection = http.serve_connection(TokioIo::new(tcp), service);
        let reserve = reserve.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(slot);
            // The connection's descriptor is closed: back into the reserve before a
            // listener that backs off from the limit takes it.
            reserve.refill();
        });
    }
}

/// One request through hyper: the body of `POST /turn` read (bounded), then [`respond`].
async fn handle(
    request: Request<Incoming>,
    view: Arc<EdgeView>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (head, body) = request.into_parts();
    let body = if head.method == Method::POST && head.uri.path() == "/turn" {
        match read_body(body).await {
            Ok(b) => b,
            Err(refused) => return Ok(refused.into_response()),
        }
    } else {
        Bytes::new()
    };
    let target = head
        .uri
        .path_and_query()
        .map_or(head.uri.path(), |pq| pq.as_str());
    Ok(respond(&head.method, target, &body, &view, clock::now()).into_response())
}

/// A request body of at most [`MAX_BODY`] bytes within [`READ_TIMEOUT`].
async fn read_body(body: Incoming) -> Result<Bytes, Answer> {
    let too_large = || Answer::text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
    // A Content-Length over the limit is refused before anything is read.
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Err(too_large());
    }
    match tokio::time::timeout(READ_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(Answer::text(StatusCode::BAD_REQUEST, "unreadable body\n")),
        Err(_) => Err(Answer::text(StatusCode::REQUEST_TIMEOUT, "body too slow\n")),
    }
}

/// An answer before hyper writes it (status, `Content-Type`, body; `Allow` on a 405).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
    pub allow: Option<&'static str>,
}

impl Answer {
    fn text(status: StatusCode, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain",
            body: body.into(),
            allow: None,
        }
    }

    fn typed(content_type: &'static str, body: String) -> Answer {
        Answer {
            status: StatusCode::OK,
            content_type,
            body,
            allow: None,
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// What a request asks for, from its method, target and body alone.
#[derive(Debug, PartialEq)]
enum Route {
    Health,
    Status,
    Metrics,
    Turn(Result<TurnAsk, String>),
    MethodNotAllowed,
    NotFound,
}

/// `target` is the path with its query (`/turn?username=a`).
fn route(method: &Method, target: &str, body: &[u8]) -> Route {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method == Method::POST && path == "/turn" {
        return Route::Turn(TurnAsk::from_json(body));
    }
    if method != Method::GET {
        return Route::MethodNotAllowed;
    }
    if path == "/turn" || (path == "/" && query_param(query, "service").as_deref() == Some("turn"))
    {
        return Route::Turn(TurnAsk::from_query(query));
    }
    match path {
        "/healthz" => Route::Health,
        "/status" => Route::Status,
        "/metrics" => Route::Metrics,
        _ => Route::NotFound,
    }
}

/// The answer to one request (pure but for the live state it reads: no sockets).
pub fn respond(
    method: &Method,
    target: &str,
    body: &[u8],
    view: &EdgeView,
    now: Instant,
) -> Answer {
    match route(method, target, body) {
        Route::Health => match unhealthy(view) {
            None => Answer::text(StatusCode::OK, "ok\n"),
            Some(why) => Answer::text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        Route::Status => Answer::typed("application/json", status(view, now)),
        Route::Metrics => Answer::typed("text/plain; version=0.0.4", metrics(view, now)),
        Route::Turn(ask) => {
            let service = view.shared.credentials.as_ref();
            let answer = turn_credentials(service, ask, clock::now_unix());
            if answer.status == StatusCode::OK {
                let issued = &view.shared.stats.credentials_issued;
                issued.fetch_add(1, Ordering::Relaxed);
            }
            answer
        }
        Route::MethodNotAllowed => Answer {
            allow: Some("GET, POST"),
            ..Answer::text(StatusCode::METHOD_NOT_ALLOWED, "GET, or POST /turn\n")
        },
        Route::NotFound => Answer::text(
            StatusCode::NOT_FOUND,
            "try /healthz, /status, /metrics or /turn?username=...\n",
        ),
    }
}

/// A credential request: the user and the lifetime asked for (seconds).
#[derive(Debug, PartialEq)]
struct TurnAsk {
    username: String,
    ttl: Option<u64>,
}

impl TurnAsk {
    fn from_query(query: &str) -> Result<TurnAsk, String> {
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

/// The first `key=value` of a query string, form-decoded (`+` and `%XX`).
fn query_param(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The TURN REST answer: `{username, password, ttl, uris}`.
fn turn_credentials(
    service: Option<&CredentialService>,
    ask: Result<TurnAsk, String>,
    now_unix: u64,
) -> Answer {
    let Some(service) = service else {
        return Answer::text(
            StatusCode::NOT_FOUND,
            "no A/V authentication service ([keys] and [relay])\n",
        );
    };
    let bad = |why: String| Answer::text(StatusCode::BAD_REQUEST, format!("{why}\n"));
    let ask = match ask {
        Ok(a) => a,
        Err(why) => return bad(why),
    };
    let max = service.relay.max_lifetime_secs;
    let ttl = ask.ttl.unwrap_or(max);
    if !(crate::core::credentials::MIN_LIFETIME_SECS..=max).contains(&ttl) {
        return bad(format!("ttl: 60 to {max} seconds"));
    }
    let c = match crate::core::credentials::mint(&service.ring.get(), &ask.username, ttl, now_unix)
    {
        Ok(c) => c,
        Err(e) => return bad(format!("username: {e}")),
    };
    let relay = &service.relay;
    let uris: Vec<String> = [
        Some(format!(
            "turn:{}:{}?transport=udp",
            relay.host, relay.udp_port
        )),
        Some(format!(
            "turn:{}:{}?transport=tcp",
            relay.host, relay.tcp_port
        )),
        relay
            .tls_port
            .map(|port| format!("turns:{}:{port}?transport=tcp", relay.host)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let json = serde_json::json!({
        "username": c.username,
        "password": c.password,
        "ttl": ttl,
        "uris": uris,
    });
    Answer::typed("application/json", format!("{json}\n"))
}

/// Why the instance should get no traffic now, if so (`/healthz` answers 503 with it).
fn unhealthy(view: &EdgeView) -> Option<String> {
    if view.shared.is_draining() {
        return Some("draining".into());
    }
    if view
        .shared
        .stats
        .external_out_of_descriptors
        .load(Ordering::Relaxed)
    {
        return Some("not accepting remote users: open-file limit reached".into());
    }
    let now_unix = i64::try_from(clock::now_unix()).unwrap_or(i64::MAX);
    let certificates = view.certificates.read_unpoisoned();
    if let Some((role, _)) = certificates.iter().find(|(_, c)| c.not_after < now_unix) {
        return Some(format!("the {role} certificate has expired"));
    }
    (!view.routes.pool.any_up()).then(|| "no next hop up".into())
}

/// The instance's state as JSON (`/status`).
pub fn status(view: &EdgeView, now: Instant) -> String {
    render::status(&snapshot(view, now))
}

/// Every counter and gauge of the instance, live (`/metrics`).
pub fn metrics(view: &EdgeView, now: Instant) -> String {
    render::metrics(&snapshot(view, now))
}

/// Everything `/metrics` and `/status` show, read from the live state: the one place that
/// does.
pub fn snapshot(view: &EdgeView, now: Instant) -> EdgeSnapshot {
    let shared = &*view.shared;
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
    let next_hops = view
        .routes
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
    let partners = view.routes.partners.as_ref().map(|p| {
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
    let relay = view.turn.as_ref().map(|t| {
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
            client_packets: st.client_packets(),
            peer_packets: st.peer_packets(),
            receive_calls: st.receive_calls(),
            relayed_to_peers: st.relayed_to_peers(),
            relayed_to_clients: st.relayed_to_clients(),
            bytes_to_peers: st.bytes_to_peers(),
            bytes_to_clients: st.bytes_to_clients(),
            dropped: st.dropped().collect(),
            send_errors: st.send_errors(),
            kernel_offload: t.kernel_status.clone(),
            kernel_channels: t.kernel_channels(),
            kernel_relayed_to_peers: st.kernel_relayed_packets().0,
            kernel_relayed_to_clients: st.kernel_relayed_packets().1,
        }
    });
    EdgeSnapshot {
        instance: view.name.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: now.saturating_duration_since(view.started).as_secs(),
        started_unix: view.started_unix,
        now_unix: i64::try_from(clock::now_unix()).unwrap_or(i64::MAX),
        draining: shared.is_draining(),
        certificates: view
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
            .flat_map(|c| c.ring.get().keys().to_vec())
            .map(|k| RingKey {
                id: k.id.clone(),
                created: k.created,
                signs_from: k.signs_from,
            })
            .collect(),
        relay,
        pool: view.pool.as_ref().map(|p| crate::obs::snapshot::Pool {
            status: p.status().label(),
            member: p.member.clone(),
            bans_published: p.bans_published.load(Ordering::Relaxed),
            bans_received: p.bans_received.load(Ordering::Relaxed),
            requests_charged: p.requests_charged.load(Ordering::Relaxed),
            outages: p.outages.load(Ordering::Relaxed),
            garbage: p.garbage.load(Ordering::Relaxed),
            quota_asks: view
                .turn
                .as_ref()
                .map(|t| t.pool_asks_decided().to_vec())
                .unwrap_or_default(),
        }),
        capture: shared.capture.config().map(|config| {
            let c = &shared.capture.counters;
            crate::obs::snapshot::Capture {
                collector: config.collector.to_string(),
                transport: match config.transport {
                    crate::topology::CaptureTransport::Udp => "udp",
                    crate::topology::CaptureTransport::Tcp => "tcp",
                },
                collector_up: c.collector_up.load(Ordering::Relaxed),
                queued: c.queued.load(Ordering::Relaxed),
                sent: c.sent.load(Ordering::Relaxed),
                queued_bytes: shared.capture.queued_bytes() as u64,
                dropped: c.dropped(),
            }
        }),
    }
}

/// Binds the operations listener.
/// The operations listener, taking only what comes in by its address's interface (see
/// `listen::bind_on`): `/turn` issues relay credentials.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    super::listen::bind_on(addr, super::listen::interface_of(addr.ip()).as_deref())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_gives_a_descriptor_and_takes_it_back() {
        let reserve = Reserve::new();
        assert_eq!(reserve.len(), RESERVED_DESCRIPTORS);
        for _ in 0..RESERVED_DESCRIPTORS {
            assert!(reserve.release_one());
        }
        assert!(!reserve.release_one(), "no more than it holds");
        reserve.refill();
        assert_eq!(reserve.len(), RESERVED_DESCRIPTORS);
        let error =
            |errno: rustix::io::Errno| std::io::Error::from_raw_os_error(errno.raw_os_error());
        use crate::shell::listen::out_of_descriptors;
        assert!(out_of_descriptors(&error(rustix::io::Errno::MFILE)));
        assert!(out_of_descriptors(&error(rustix::io::Errno::NFILE)));
        assert!(!out_of_descriptors(&error(rustix::io::Errno::CONNABORTED)));
    }
    use crate::core::avauth::RelayInfo;
    use crate::core::keyring::Ring;

    #[test]
    fn routes_by_method_path_and_query() {
        let get = |t: &str| route(&Method::GET, t, b"");
        assert_eq!(get("/healthz"), Route::Health);
        assert_eq!(get("/status"), Route::Status);
        assert_eq!(get("/metrics"), Route::Metrics);
        assert_eq!(get("/metrics?x=1"), Route::Metrics);
        assert_eq!(get("/nope"), Route::NotFound);
        assert_eq!(get("/?service=other"), Route::NotFound);
        let alice = TurnAsk {
            username: "alice@sipedge.test".into(),
            ttl: Some(3600),
        };
        assert_eq!(
            get("/?service=turn&username=alice%40sipedge.test&ttl=3600"),
            Route::Turn(Ok(alice))
        );
        assert_eq!(
            get("/turn?username=a+b"),
            Route::Turn(Ok(TurnAsk {
                username: "a b".into(),
                ttl: None
            }))
        );
        assert_eq!(get("/turn"), Route::Turn(Err("missing username".into())));
        assert_eq!(
            get("/turn?username=a&ttl=soon"),
            Route::Turn(Err("ttl: whole seconds".into()))
        );
        let post = |t: &str, body: &[u8]| route(&Method::POST, t, body);
        assert_eq!(
            post("/turn", br#"{"username": "bob", "ttl": 60}"#),
            Route::Turn(Ok(TurnAsk {
                username: "bob".into(),
                ttl: Some(60)
            }))
        );
        assert!(matches!(
            post("/turn", br#"{"username":"a","admin":true}"#),
            Route::Turn(Err(e)) if e.contains("unknown field")
        ));
        assert_eq!(post("/metrics", b""), Route::MethodNotAllowed);
        assert_eq!(
            route(&Method::HEAD, "/healthz", b""),
            Route::MethodNotAllowed
        );
        assert_eq!(route(&Method::PUT, "/turn", b""), Route::MethodNotAllowed);
    }

    #[test]
    fn a_405_names_what_is_allowed() {
        let r = Answer {
            allow: Some("GET, POST"),
            ..Answer::text(StatusCode::METHOD_NOT_ALLOWED, "x\n")
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET, POST");
        assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[CONTENT_TYPE], "text/plain");
    }

    #[test]
    fn turn_credentials_within_the_lifetime_bounds() {
        const NOW: u64 = 1_800_000_000;
        let service = CredentialService {
            ring: std::sync::Arc::new(crate::shell::ring::LiveRing::fixed(Ring::init(
                [7; 32],
                NOW - 10,
            ))),
            relay: RelayInfo {
                host: "av.example".into(),
                udp_port: 3478,
                tcp_port: 443,
                tls_port: Some(5349),
                max_lifetime_secs: 3600,
            },
        };
        let ask = |ttl| {
            Ok(TurnAsk {
                username: "alice".into(),
                ttl,
            })
        };
        let a = turn_credentials(Some(&service), ask(None), NOW);
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.content_type, "application/json");
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["ttl"], 3600);
        assert_eq!(v["uris"][1], "turn:av.example:443?transport=tcp");
        assert_eq!(v["uris"][2], "turns:av.example:5349?transport=tcp");
        let out_of_bounds = [Some(59), Some(3601)];
        for ttl in out_of_bounds {
            let a = turn_credentials(Some(&service), ask(ttl), NOW);
            assert_eq!(a.status, StatusCode::BAD_REQUEST);
            assert_eq!(a.body, "ttl: 60 to 3600 seconds\n");
        }
        let a = turn_credentials(Some(&service), Err("missing username".into()), NOW);
        assert_eq!(
            (a.status, a.body.as_str()),
            (StatusCode::BAD_REQUEST, "missing username\n")
        );
        let a = turn_credentials(None, ask(None), NOW);
        assert_eq!(a.status, StatusCode::NOT_FOUND);
    }
}
