//! The operations listener over real sockets: health for load balancers, live metrics,
//! strict HTTP handling.

use std::time::Duration;

use sipedge::shell;

use crate::support::*;

#[tokio::test]
async fn healthz_follows_the_pool_and_metrics_count_live() {
    let pki = Pki::new();
    let mut director = Director::start(&pki).await;
    let (edge, ops) = start_with_operations(topology(&pki, &[director.addr])).await;
    let routes = edge.routes.clone();
    eventually("a next hop up", || routes.pool.any_up()).await;

    let health = http_get(&ops, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");

    // One forwarded, one rejected: the counters move at once, not at session end.
    let mut c = Client::connect(&pki, edge.external).await;
    c.send(
        "OPTIONS sip:sipedge.test SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.1;branch=z9hG4bK-m1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@sipedge.test>;tag=1\r\nTo: <sip:sipedge.test>\r\n\
         Call-ID: m1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let _ = director.recv().await;
    c.send(
        "OPTIONS sip:elsewhere.example SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.1;branch=z9hG4bK-m2\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@sipedge.test>;tag=1\r\nTo: <sip:x@elsewhere.example>\r\n\
         Call-ID: m2\r\nCSeq: 2 OPTIONS\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(c.recv().await.starts_with("SIP/2.0 403 Domain Not Served"));

    let metrics = http_get(&ops, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
    assert!(metrics.contains("Content-Type: text/plain; version=0.0.4\r\n"));
    for line in [
        "sipedge_messages_forwarded_total{zone=\"external\"} 1\n",
        "sipedge_messages_total{method=\"OPTIONS\",direction=\"inbound\",zone=\"external\"} 1\n",
        "sipedge_messages_total{method=\"INVITE\",direction=\"inbound\",zone=\"external\"} 0\n",
        "sipedge_rejects_total{reason=\"domain_not_served\",zone=\"external\"} 1\n",
        "sipedge_rejects_total{reason=\"malformed_start_line\",zone=\"external\"} 0\n",
        "sipedge_source_refusals_total{reason=\"request_rate\"} 0\n",
        "sipedge_bans_total 0\n",
        "sipedge_connections_accepted_total 1\n",
        "sipedge_connections{zone=\"external\"} 1\n",
        "# TYPE sipedge_rejects_total counter\n",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    assert!(metrics.contains(&format!(
        "sipedge_next_hop_up{{member=\"{}\"}} 1\n",
        director.addr
    )));

    // The Director goes away: health turns 503 (probes fail, or the connection is lost).
    director.kill();
    eventually("the next hop down", || !routes.pool.any_up()).await;
    let health = http_get(&ops, "/healthz").await;
    assert!(
        health.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{health}"
    );
    edge.stop().await;
}

#[tokio::test]
async fn the_operations_listener_refuses_what_it_does_not_serve() {
    let pki = Pki::new();
    let director = Director::start(&pki).await;
    let (edge, ops) = start_with_operations(topology(&pki, &[director.addr])).await;
    assert!(http_get(&ops, "/nope").await.starts_with("HTTP/1.1 404 "));
    // No [keys]/[relay]: no credential endpoint.
    assert!(http_get(&ops, "/turn?username=alice")
        .await
        .starts_with("HTTP/1.1 404 "));
    let post = http_raw(&ops, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert!(
        post.starts_with("HTTP/1.1 405 ") && post.contains("\r\nAllow: GET, POST\r\n"),
        "{post}"
    );
    assert!(http_raw(&ops, b"GET\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 400 "));
    assert!(http_raw(&ops, b"GET / SIP/2.0\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 400 "));
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    assert!(http_raw(&ops, huge.as_bytes())
        .await
        .starts_with("HTTP/1.1 431 "));
    // A silent client is dropped after the read timeout; others are served meanwhile.
    let _silent = tokio::net::TcpStream::connect(&ops).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(http_get(&ops, "/healthz").await.starts_with("HTTP/1.1 "));
    edge.stop().await;
}

fn invite(call: &str) -> String {
    format!(
        "INVITE sip:bob@sipedge.test SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.1;branch=z9hG4bK-{call}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@sipedge.test>;tag=a{call}\r\nTo: <sip:bob@sipedge.test>\r\n\
         Call-ID: {call}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A drain during calls: /healthz turns 503 at once and the listener closes; a transaction
/// in flight completes; new work is sent elsewhere (503 Draining); the call in progress
/// goes on until its BYE, and then the drain ends, well before its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_calls_and_transactions_in_flight_finish() {
    let pki = Pki::new();
    let mut director = Director::start(&pki).await;
    let (edge, ops) = start_with_operations(topology(&pki, &[director.addr])).await;
    let edge = std::sync::Arc::new(edge);
    let shared = edge.shared.clone();
    let routes = edge.routes.clone();
    eventually("a next hop up", || routes.pool.any_up()).await;

    // A call in progress (answered), and a second INVITE still unanswered.
    let mut c = Client::connect(&pki, edge.external).await;
    c.send(&invite("d1")).await;
    let first = director.recv().await.text;
    director.send(0, &response_to(&first, 200, "OK"));
    assert!(c.recv().await.starts_with("SIP/2.0 200"));
    c.send(&invite("d2")).await;
    let second = director.recv().await.text;
    assert_eq!(shared.calls_in_progress(), 2);

    let draining = {
        let edge = edge.clone();
        tokio::spawn(async move { edge.drain(Duration::from_secs(20)).await })
    };
    eventually("draining", || shared.is_draining()).await;
    let health = http_get(&ops, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 503 "), "{health}");
    assert!(health.ends_with("draining\n"), "{health}");
    // The listener is closed: a new client cannot connect.
    eventually("the listener closed", || {
        std::net::TcpStream::connect_timeout(&edge.external, Duration::from_millis(100)).is_err()
    })
    .await;
    // New work on an existing connection goes elsewhere.
    c.send(&invite("d3")).await;
    let refused = c.recv().await;
    assert!(refused.starts_with("SIP/2.0 503 Draining"), "{refused}");
    assert!(refused.contains("Retry-After: 1\r\n"), "{refused}");

    // The transaction in flight completes (here: declined), the call ends with its BYE.
    director.send(0, &response_to(&second, 486, "Busy Here"));
    assert!(c.recv().await.starts_with("SIP/2.0 486"));
    assert!(!draining.is_finished(), "the call in progress is still up");
    // A claimed To tag proves no dialog: without the dialog's Record-Route token the BYE is
    // new work, refused while draining (and the call stays counted).
    let bye = "BYE sip:bob@sipedge.test SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.1;branch=z9hG4bK-d1bye\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@sipedge.test>;tag=ad1\r\nTo: <sip:bob@sipedge.test>;tag=uas1\r\n\
         Call-ID: d1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    c.send(bye).await;
    assert!(c.recv().await.starts_with("SIP/2.0 503 Draining"));
    assert_eq!(shared.calls_in_progress(), 1);
    let routed = bye.replace(
        "Max-Forwards",
        &format!(
            "Route: <sip:{}@{EDGE_FQDN}:{};transport=tls;lr>\r\nMax-Forwards",
            rr_token(&first),
            edge.external.port()
        ),
    );
    c.send(&routed).await;
    let bye_in = director.recv().await.text;
    assert!(bye_in.starts_with("BYE "), "{bye_in}");
    director.send(0, &response_to(&bye_in, 200, "OK"));
    assert!(c.recv().await.starts_with("SIP/2.0 200"));
    let drained = tokio::time::timeout(Duration::from_secs(10), draining)
        .await
        .expect("the drain ends once the call ended")
        .unwrap();
    assert!(drained, "everything finished before the deadline");
}

/// `/status`: certificates with SANs and expiry, next hops with their last probe,
/// connections by zone, calls, version and uptime, as JSON.
#[tokio::test]
async fn status_shows_certificates_next_hops_and_connections() {
    let pki = Pki::new();
    let director = Director::start(&pki).await;
    let (edge, ops) = start_with_operations(topology(&pki, &[director.addr])).await;
    let shared = edge.shared.clone();
    let routes = edge.routes.clone();
    eventually("a probe answered", || {
        routes.pool.members()[0]
            .last_probe()
            .is_some_and(|(_, status, _)| status == 200)
    })
    .await;
    let _client = Client::connect(&pki, edge.external).await;
    eventually("the client's flow", || shared.flows.count_by_side().0 == 1).await;

    let answer = http_get(&ops, "/status").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("Content-Type: application/json\r\n"),
        "{answer}"
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let status: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["draining"], false);
    let certs = status["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[0]["role"], "external");
    assert_eq!(certs[0]["status"], "ok");
    assert!(certs[0]["days_left"].as_i64().unwrap() > 300, "{body}");
    assert!(
        certs[0]["sans"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(EDGE_FQDN)),
        "{body}"
    );
    let hop = &status["next_hops"][0];
    assert_eq!(hop["address"], director.addr.to_string());
    assert_eq!(hop["up"], true);
    assert_eq!(hop["last_probe"]["status"], 200);
    assert!(hop["last_probe"]["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(status["connections"]["external"], 1);
    assert_eq!(status["connections"]["internal"], 1, "the pool connection");
    assert_eq!(status["calls"], 0);
    assert!(status["uptime_secs"].as_u64().is_some());
    edge.stop().await;
}

/// A serving certificate past its end turns /healthz to 503 (a load balancer takes the
/// member out), and /status says which.
#[tokio::test]
async fn an_expired_certificate_fails_the_health_check() {
    let pki = Pki::new();
    // A PKI made two years ago: its leaf certificates (one year) have expired.
    let old = tempfile::tempdir().unwrap();
    let names = sipedge::tls::DevNames {
        external: vec![EDGE_FQDN.into(), "127.0.0.1".into()],
        internal: vec!["127.0.0.2".into()],
        director: vec![DIRECTOR_NAME.into()],
    };
    let two_years_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 365 * 86_400);
    let expired = sipedge::tls::dev::generate_at(old.path(), &names, two_years_ago).unwrap();
    let director = Director::start(&pki).await;
    let mut t = topology(&pki, &[director.addr]);
    t.external.cert = expired.source(sipedge::tls::DevRole::External);
    let (edge, ops) = start_with_operations(t).await;
    let routes = edge.routes.clone();
    eventually("a next hop up", || routes.pool.any_up()).await;
    let health = http_get(&ops, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 503 "), "{health}");
    assert!(
        health.ends_with("the external certificate has expired\n"),
        "{health}"
    );
    let status = http_get(&ops, "/status").await;
    assert!(status.contains("\"status\": \"expired\""), "{status}");
    edge.stop().await;
}

/// `/metrics` parses with the Prometheus project's own text-format parser
/// (`prometheus_client`), every family typed and documented.
#[tokio::test]
async fn metrics_parse_with_the_prometheus_parser() {
    if prometheus_check("# HELP x y\n# TYPE x gauge\nx 1\n").is_none() {
        return;
    }
    let pki = Pki::new();
    let director = Director::start(&pki).await;
    let (edge, ops) = start_with_operations(topology(&pki, &[director.addr])).await;
    let answer = http_get(&ops, "/metrics").await;
    let text = answer.split("\r\n\r\n").nth(1).unwrap().to_string();
    let counts = prometheus_check(&text).expect("prometheus_client installed");
    let families: usize = counts.split_whitespace().next().unwrap().parse().unwrap();
    assert!(families >= 10, "{counts}");
    edge.stop().await;
}

fn options(call: &str) -> String {
    format!(
        "OPTIONS sip:sipedge.test SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.1;branch=z9hG4bK-{call}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@sipedge.test>;tag=o{call}\r\nTo: <sip:sipedge.test>\r\n\
         Call-ID: {call}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// The external certificate is replaced and the edge reloaded while clients keep sending,
/// on connections that stay up and on new ones: no transaction fails, connections made
/// after the reload see the new certificate, those before keep working. A reload that
/// needs a restart, or whose certificate does not load, changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_replaces_the_certificate_under_load_without_failing_anything() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let old = Pki::new();
    let new = Pki::new();
    let live = tempfile::tempdir().unwrap();
    let (cert, key) = (live.path().join("ext.pem"), live.path().join("ext.key"));
    let install = |pki: &Pki| {
        let (c, k) = pki.pki.files(sipedge::tls::DevRole::External);
        std::fs::copy(c, &cert).unwrap();
        std::fs::copy(k, &key).unwrap();
    };
    install(&old);
    let director = Director::start(&old).await.answering_ok();
    let mut t = topology(&old, &[director.addr]);
    t.external.cert = sipedge::topology::CertSource::Pem {
        cert: cert.clone(),
        key: key.clone(),
    };
    let edge = Arc::new(shell::start(&t).await.expect("edge starts"));
    let routes = edge.routes.clone();
    eventually("a next hop up", || routes.pool.any_up()).await;
    let mut roots = old.roots();
    for anchor in new.roots().roots {
        roots.roots.push(anchor);
    }
    let leaf = |c: &Client| {
        c.stream.get_ref().1.peer_certificates().unwrap()[0]
            .as_ref()
            .to_vec()
    };
    let old_leaf = std::fs::read(old.pki.files(sipedge::tls::DevRole::External).0).unwrap();
    let new_leaf = std::fs::read(new.pki.files(sipedge::tls::DevRole::External).0).unwrap();
    assert_ne!(old_leaf, new_leaf);

    // Load: four clients on lasting connections, and a new connection per round.
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for n in 0..5 {
        let (roots, external) = (roots.clone(), edge.external);
        let (sent, failed, stop) = (sent.clone(), failed.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut c = Client::connect_with_roots(roots.clone(), external).await;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 2000 {
                if n == 4 {
                    // A fresh connection (a fresh handshake) every time.
                    c = Client::connect_with_roots(roots.clone(), external).await;
                }
                c.send(&options(&format!("r{n}x{i}"))).await;
                sent.fetch_add(1, Ordering::Relaxed);
                match c.try_recv(Duration::from_secs(5)).await {
                    Some(a) if a.starts_with("SIP/2.0 200") => {}
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
            c
        }));
    }
    eventually("load running", || sent.load(Ordering::Relaxed) > 50).await;
    let before = Client::connect_with_roots(roots.clone(), edge.external).await;
    assert_eq!(leaf(&before), pem_der(&old_leaf));

    install(&new);
    let reloaded = edge.reload(&t).expect("reload");
    assert_eq!(reloaded.certificates[0].0, "external");
    let at_reload = sent.load(Ordering::Relaxed);
    eventually("load after the reload", || {
        sent.load(Ordering::Relaxed) > at_reload + 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut lasting = Vec::new();
    for task in load {
        lasting.push(task.await.unwrap());
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {}",
        sent.load(Ordering::Relaxed)
    );
    let after = Client::connect_with_roots(roots.clone(), edge.external).await;
    assert_eq!(
        leaf(&after),
        pem_der(&new_leaf),
        "new handshakes see the new certificate"
    );
    assert_eq!(
        leaf(&lasting[0]),
        pem_der(&old_leaf),
        "a connection from before keeps its own"
    );
    let mut before = before;
    before.send(&options("still")).await;
    assert!(before.recv().await.starts_with("SIP/2.0 200"));

    // Refused whole: a change that needs a restart, and a certificate that does not load.
    let mut moved = t.clone();
    moved.limits.max_connections += 1;
    moved.edge.sip_domains.push("other.test".into());
    match edge.reload(&moved) {
        Err(shell::ReloadError::NeedsRestart(what)) => {
            assert_eq!(what, ["edge", "limits.max_connections"])
        }
        other => panic!("{other:?}"),
    }
    // Limits apply live, on connections already up.
    let mut tighter = t.clone();
    tighter.limits.max_body_bytes = 16;
    let r = edge.reload(&tighter).expect("limits reload live");
    assert_eq!(r.changed, ["limits"]);
    let mut up = lasting.pop().unwrap();
    up.send(&options("big").replace(
        "Content-Length: 0\r\n\r\n",
        &format!("Content-Length: 32\r\n\r\n{}", "x".repeat(32)),
    ))
    .await;
    let big = up.recv().await;
    assert!(big.starts_with("SIP/2.0 513 "), "{big}");
    edge.reload(&t).expect("back");
    std::fs::write(&key, b"not a key").unwrap();
    assert!(matches!(
        edge.reload(&t),
        Err(shell::ReloadError::Certificate(_))
    ));
    let still = Client::connect_with_roots(roots.clone(), edge.external).await;
    assert_eq!(leaf(&still), pem_der(&new_leaf));
}

/// The DER of the first certificate in a PEM file.
fn pem_der(pem: &[u8]) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .next()
        .unwrap()
        .unwrap()
        .as_ref()
        .to_vec()
}

/// A reload that changes the next-hop members: the new member is connected and takes the
/// new work, the removed one finishes the transaction it holds and is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_the_pool_to_new_next_hops_without_losing_a_transaction() {
    let pki = Pki::new();
    let mut first = Director::start(&pki).await;
    let mut second = Director::start_at(&pki, "127.0.0.4:0".parse().unwrap())
        .await
        .answering_ok();
    let t = topology(&pki, &[first.addr]);
    let edge = shell::start(&t).await.expect("edge starts");
    let routes = edge.routes.clone();
    eventually("the first next hop up", || routes.pool.any_up()).await;

    // A transaction held by the first member across the reload.
    let mut c = Client::connect(&pki, edge.external).await;
    c.send(&options("held")).await;
    let held = first.recv().await.text;

    let mut moved = t.clone();
    moved.next_hop.members = vec![second.addr];
    let r = edge.reload(&moved).expect("members change live");
    assert_eq!(r.changed, ["next_hop.members"]);
    eventually("the new next hop up", || {
        let members = routes.pool.members();
        members.len() == 1 && members[0].addr == second.addr && members[0].is_up()
    })
    .await;
    // New work goes to the new member.
    c.send(&options("fresh")).await;
    let fresh = second.recv().await.text;
    assert!(fresh.contains("Call-ID: fresh"), "{fresh}");
    assert!(c.recv().await.starts_with("SIP/2.0 200"));
    // The old member's transaction completes, then it is let go.
    assert!(routes.pool.outstanding() >= 1);
    first.send(0, &response_to(&held, 200, "OK"));
    let answer = c.recv().await;
    assert!(
        answer.starts_with("SIP/2.0 200") && answer.contains("Call-ID: held"),
        "{answer}"
    );
    eventually("nothing outstanding", || routes.pool.outstanding() == 0).await;
    // What the status page shows is the new pool.
    let status = sipedge::shell::ops::status(&edge.view, sipedge::shell::clock::now());
    assert!(status.contains(&second.addr.to_string()), "{status}");
    assert!(!status.contains(&format!("\"{}\"", first.addr)), "{status}");
    edge.stop().await;
}

/// At the open-file limit the SIP listener stops accepting, and without a reserve so did the
/// operations listener: the load balancer's health check and `/status` went unanswered
/// exactly when they were needed. The real binary under `ulimit -n 64` (soft and hard, so it
/// cannot raise it), TCP clients from sources of their own until it says it reached the
/// limit, then more health checks in a row than it holds in reserve: each is answered, 503
/// with the reason (so a load balancer sends new users elsewhere), and once the clients are
/// gone the reason is too.
#[test]
fn the_operations_listener_answers_at_the_open_file_limit() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};
    let state = tempfile::tempdir().unwrap();
    let free = FreePortsDefault::new();
    let file = state.path().join("edge.toml");
    std::fs::write(&file, &free.text).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "ulimit -n 64 && exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_sipedge"),
    ])
    .env("SIPEDGE_STATE_DIR", state.path());
    let mut edge = run_topology(cmd, &file, Stdio::piped());
    let mut lines = BufReader::new(edge.0.stdout.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        if line.contains("external TLS SIP on") {
            break;
        }
    }
    let (said, log) = std::sync::mpsc::channel();
    let stderr = BufReader::new(edge.0.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = said.send(line);
        }
    });
    let external: std::net::SocketAddr = format!("127.0.0.1:{}", free.external).parse().unwrap();
    let mut held = Vec::new();
    let mut at_limit = false;
    for n in 1..=200u8 {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let source: std::net::SocketAddr = format!("127.0.1.{n}:0").parse().unwrap();
        socket.bind(&source.into()).unwrap();
        socket.connect(&external.into()).unwrap();
        held.push(socket);
        if log
            .recv_timeout(Duration::from_millis(20))
            .is_ok_and(|l| l.contains("open-file limit reached"))
            || log
                .try_iter()
                .any(|l| l.contains("open-file limit reached"))
        {
            at_limit = true;
            break;
        }
    }
    assert!(
        at_limit,
        "the edge never said it reached its open-file limit"
    );
    let health = || {
        let mut tcp = std::net::TcpStream::connect(&free.operations).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let read = tcp.read_to_string(&mut answer);
        (read.is_ok(), answer)
    };
    const AT_LIMIT: &str = "not accepting remote users: open-file limit reached";
    for check in 0..8 {
        let (read, answer) = health();
        assert!(
            read && answer.starts_with("HTTP/1.1 503") && answer.contains(AT_LIMIT),
            "health check {check} at the limit: {read:?} {answer:?}"
        );
    }
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (read, answer) = health();
        if read && answer.starts_with("HTTP/1.1 ") && !answer.contains(AT_LIMIT) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still at the limit after the clients left: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
