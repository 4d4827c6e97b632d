//! The Access Edge end to end over real sockets on loopback: a remote user's TLS client →
//! the edge (external 127.0.0.1, internal 127.0.0.2) → mutual-TLS Director stubs, and back.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sipedge::shell::{self, RunningEdge};

use crate::support::*;

async fn edge_with(pki: &Pki, members: &[std::net::SocketAddr]) -> RunningEdge {
    shell::start(&topology(pki, members))
        .await
        .expect("edge starts")
}

async fn edge_up(pki: &Pki, members: &[std::net::SocketAddr]) -> RunningEdge {
    let edge = edge_with(pki, members).await;
    let routes = edge.routes.clone();
    eventually("a next hop up", || routes.pool.any_up()).await;
    edge
}

fn invite(client: &Client, call: &str) -> String {
    let local = client.local_addr();
    format!(
        "INVITE sip:bob@sipedge.test SIP/2.0\r\n\
         Via: SIP/2.0/TLS 192.168.1.5:{port};branch=z9hG4bK-{call};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@sipedge.test>;tag=a-{call}\r\n\
         To: <sip:bob@sipedge.test>\r\n\
         Call-ID: {call}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@192.168.1.5:{port};transport=tls>\r\n\
         X-Custom:  odd   spacing\t\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: 32\r\n\r\n\
         v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n\x00",
        port = local.port()
    )
}

#[tokio::test]
async fn invite_is_forwarded_with_exactly_the_proxy_edits() {
    let pki = Pki::new();
    let mut director = Director::start(&pki).await;
    let edge = edge_up(&pki, &[director.addr]).await;
    let mut client = Client::connect(&pki, edge.external).await;
    let sent = invite(&client, "call-1");
    client.send(&sent).await;

    let got = director.recv().await.text;
    let vias = headers(&got, "Via");
    let ours = vias[0];
    let token = param(ours, "ftok").expect("flow token in the edge's Via");
    let rr = rr_token(&got);
    assert!(token.starts_with('v') && rr.starts_with('o') && rr != token);
    let branch = param(ours, "branch").unwrap();
    assert!(branch.starts_with("z9hG4bK"), "RFC 3261 branch: {branch}");
    let port = client.local_addr().port();
    let int = edge.internal.port();
    let ext = edge.external.port();
    let expected = format!(
        "INVITE sip:bob@sipedge.test SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.2:{int};branch={branch};ftok={token}\r\n\
         Record-Route: <sip:{rr}@127.0.0.2:{int};transport=tls;lr>, <sip:{rr}@edge.sipedge.test:{ext};transport=tls;lr>\r\n\
         Via: SIP/2.0/TLS 192.168.1.5:{port};branch=z9hG4bK-call-1;rport={port};received=127.0.0.1\r\n\
         Max-Forwards: 69\r\n\
         From: \"Alice\" <sip:alice@sipedge.test>;tag=a-call-1\r\n\
         To: <sip:bob@sipedge.test>\r\n\
         Call-ID: call-1\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@192.168.1.5:{port};transport=tls>\r\n\
         X-Custom:  odd   spacing\t\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: 32\r\n\r\n\
         v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n\x00"
    );
    assert_eq!(got, expected);
    edge.stop().await;
}

#[tokio::test]
async fn responses_and_in_dialog_requests_flow_both_ways() {
    let pki = Pki::new();
    let mut director = Director::start(&pki).await;
    let edge = edge_up(&pki, &[director.addr]).await;
    let mut client = Client::connect(&pki, edge.external).await;
    client.send(&invite(&client, "call-2")).await;
    let fwd = director.recv().await;

    // 180 and 200 from the inside reach the client without the edge's Via.
    director.send(fwd.conn, &response_to(&fwd.text, 180, "Ringing"));
    let ringing = client.recv().await;
    assert!(ringing.starts_with("SIP/2.0 180 Ringing\r\n"), "{ringing}");
    assert_eq!(headers(&ringing, "Via").len(), 1);
    assert!(headers(&ringing, "Via")[0].contains("branch=z9hG4bK-call-2"));
    let ok = response_to(&fwd.text, 200, "OK").replace(
        "Content-Length: 0",
        "Contact: <sip:bob@10.0.0.30:5061;transport=tls>\r\nContent-Length: 0",
    );
    director.send(fwd.conn, &ok);
    let ok = client.recv().await;
    assert!(ok.starts_with("SIP/2.0 200 OK\r\n"));
    let rr = headers(&ok, "Record-Route");
    assert_eq!(rr.len(), 1, "Record-Route is echoed in the 200");

    // The client's route set is the Record-Route reversed (RFC 3261 §12.1.2).
    let mut route: Vec<&str> = rr[0].split(", ").collect();
    route.reverse();
    let route = route.join(", ");
    let bye = format!(
        "BYE sip:bob@10.0.0.30:5061;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 192.168.1.5:5061;branch=z9hG4bK-bye-2\r\n\
         Route: {route}\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@sipedge.test>;tag=a-call-2\r\n\
         To: <sip:bob@sipedge.test>;tag=uas1\r\n\
         Call-ID: call-2\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    client.send(&bye).await;
    let got = director.recv().await.text;
    assert!(got.starts_with("BYE sip:bob@10.0.0.30:5061;transport=tls SIP/2.0\r\n"));
    assert!(
        headers(&got, "Route").is_empty(),
        "both of the edge's Route entries popped"
    );
    director.send(0, &response_to(&got, 200, "OK"));
    assert!(client.recv().await.starts_with("SIP/2.0 200 OK"));

    // A NOTIFY from the inside, routed by the Record-Route the Director kept.
    let notify = format!(
        "NOTIFY sip:alice@192.168.1.5:5061;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 10.0.0.30:5061;branch=z9hG4bK-notify-2\r\n\
         Route: {rr}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:bob@sipedge.test>;tag=uas1\r\n\
         To: <sip:alice@sipedge.test>;tag=a-call-2\r\n\
         Call-ID: call-2\r\nCSeq: 7 NOTIFY\r\nEvent: dialog\r\nContent-Length: 0\r\n\r\n",
        rr = rr[0]
    );
    director.send(0, &notify);
    let got = client.recv().await;
    assert!(
        got.starts_with("NOTIFY sip:alice@192.168.1.5:5061;transport=tls SIP/2.0\r\n"),
        "{got}"
    );
    assert!(headers(&got, "Route").is_empty());
    let vias = headers(&got, "Via");
    assert_eq!(vias.len(), 2);
    assert!(vias[0].starts_with(&format!(
        "SIP/2.0/TLS edge.sipedge.test:{}",
        edge.external.port()
    )));
    // The client answers; the answer goes back to the Director's connection.
    client.send(&response_to(&got, 200, "OK")).await;
    let answer = director.recv().await.text;
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
    assert_eq!(
        headers(&answer, "Via"),
        vec!["SIP/2.0/TLS 10.0.0.30:5061;branch=z9hG4bK-notify-2"]
    );
    edge.stop().await;
}

#[tokio::test]
async fn register_gets_path_and_requests_follow_it_until_the_flow_is_gone() {
    let pki = Pki::new();
    let mut director = Director::start(&pki).await;
    let edge = edge_up(&pki, &[director.addr]).await;
    let mut client = Client::connect(&pki, edge.external).await;
    let register = "REGISTER sip:sipedge.test SIP/2.0\r\n\
        Via: SIP/2.0/TLS 192.168.1.5:5061;branch=z9hG4bK-reg-1\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:alice@sipedge.test>;tag=r1\r\n\
        To: <sip:alice@sipedge.test>\r\n\
        Call-ID: reg-1\r\nCSeq: 1 REGISTER\r\n\
        Contact: <sip:alice@192.168.1.5:5061;transport=tls>;expires=3600\r\n\
        Content-Length: 0\r\n\r\n";
    client.send(register).await;
    let reg = director.recv().await.text;
    let path = headers(&reg, "Path");
    assert_eq!(path.len(), 1);
    assert!(path[0].ends_with(&format!(
        "@127.0.0.2:{};transport=tls;lr>",
        edge.internal.port()
    )));
    assert!(
        headers(&reg, "Record-Route").is_empty(),
        "REGISTER is not record-routed"
    );
    director.send(0, &response_to(&reg, 200, "OK"));
    assert!(client.recv().await.starts_with("SIP/2.0 200 OK"));

    // The registrar sends a MESSAGE to the contact, with the Path as Route (RFC 3327 §5.3).
    let message = |n: u32| {
        format!(
            "MESSAGE sip:alice@192.168.1.5:5061;transport=tls SIP/2.0\r\n\
             Via: SIP/2.0/TLS 10.0.0.30:5061;branch=z9hG4bK-msg-{n}\r\n\
             Route: {path}\r\nMax-Forwards: 70\r\n\
             From: <sip:bob@sipedge.test>;tag=m{n}\r\nTo: <sip:alice@sipedge.test>\r\n\
             Call-ID: msg-{n}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
            path = path[0]
        )
    };
    director.send(0, &message(1));
    let got = client.recv().await;
    assert!(got.starts_with("MESSAGE sip:alice@192.168.1.5:5061;transport=tls SIP/2.0\r\n"));
    assert!(got.ends_with("\r\n\r\nhi"));
    client.send(&response_to(&got, 200, "OK")).await;
    assert!(director.recv().await.text.starts_with("SIP/2.0 200 OK"));

    // The client goes away: the flow is gone, and the edge says so (RFC 5626 §5.3).
    drop(client);
    let flows = edge.shared.clone();
    eventually("the client's flow to close", || flows.flows.len() == 1).await;
    director.send(0, &message(2));
    let answer = director.recv().await.text;
    assert!(
        answer.starts_with("SIP/2.0 430 Flow Failed\r\n"),
        "{answer}"
    );
    edge.stop().await;
}

#[tokio::test]
async fn forged_flow_token_is_refused() {
    let pki = Pki::new();
    let mut director = Director::start(&pki).await;
    let edge = edge_up(&pki, &[director.addr]).await;
    let mut client = Client::connect(&pki, edge.external).await;
    client.send(&invite(&client, "call-3")).await;
    let fwd = director.recv().await.text;
    let token = rr_token(&fwd);
    let via_token = param(headers(&fwd, "Via")[0], "ftok").unwrap().to_string();
    // Flip one hex digit of the MAC: a flow id someone might guess, with a made-up signature.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    let bye = format!(
        "BYE sip:alice@192.168.1.5:5061;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 10.0.0.30:5061;branch=z9hG4bK-forged\r\n\
         Route: <sip:{forged}@127.0.0.2:{port};transport=tls;lr>\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@sipedge.test>;tag=f1\r\nTo: <sip:alice@sipedge.test>;tag=a-call-3\r\n\
         Call-ID: call-3\r\nCSeq: 9 BYE\r\nContent-Length: 0\r\n\r\n",
        port = edge.internal.port()
    );
    director.send(0, &bye);
    let answer = director.recv().await.text;
    assert!(
        answer.starts_with("SIP/2.0 403 Invalid Flow Token\r\n"),
        "{answer}"
    );
    assert!(
        client.try_recv(Duration::from_millis(300)).await.is_none(),
        "nothing reached the client"
    );

    // A response with a forged token in the edge's Via is dropped, not delivered.
    let mut forged_via = via_token.clone().into_bytes();
    let last = forged_via.len() - 1;
    forged_via[last] = if forged_via[last] == b'0' { b'1' } else { b'0' };
    let stray =
        response_to(&fwd, 200, "OK").replace(&via_token, &String::from_utf8(forged_via).unwrap());
    director.send(0, &stray);
    assert!(client.try_recv(Duration::from_millis(300)).await.is_none());
    edge.stop().await;
}

#[tokio::test]
async fn a_remote_user_cannot_write_to_another_users_connection_with_a_token_it_saw() {
    let pki = Pki::new();
    let mut director = Director::start(&pki).await;
    let edge = edge_up(&pki, &[director.addr]).await;
    let mut alice = Client::connect(&pki, edge.external).await;
    let mut mallory = Client::connect_from(&pki, edge.external, "127.0.0.20").await;
    alice.send(&invite(&alice, "call-7")).await;
    let fwd = director.recv().await.text;
    // Alice's tokens: the Record-Route every party of her dialog sees, and the edge's Via.
    let rr = rr_token(&fwd);
    let token = param(headers(&fwd, "Via")[0], "ftok").unwrap().to_string();
    let branch = param(headers(&fwd, "Via")[0], "branch")
        .unwrap()
        .to_string();
    let ext = edge.external.port();

    // A response naming Alice's flow, sent from Mallory's connection: dropped.
    let forged_response = format!(
        "SIP/2.0 200 OK\r\n\
         Via: SIP/2.0/TLS {EDGE_FQDN}:{ext};branch={branch};ftok={token}\r\n\
         Via: SIP/2.0/TLS 192.168.1.5:5061;branch=z9hG4bK-call-7\r\n\
         From: <sip:alice@sipedge.test>;tag=a-call-7\r\nTo: <sip:bob@sipedge.test>;tag=m1\r\n\
         Call-ID: call-7\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    mallory.send(&forged_response).await;
    // A request with Alice's Record-Route token from Mallory's connection: the token proves
    // Alice's dialog, with Alice's tag as the initiator's, on Alice's connection only. Refused,
    // and nothing reaches the Director or Alice.
    let bye = format!(
        "BYE sip:alice@192.168.1.5:5061;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.20:5061;branch=z9hG4bK-m2\r\n\
         Route: <sip:{rr}@{EDGE_FQDN}:{ext};transport=tls;lr>\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@sipedge.test>;tag=m1\r\nTo: <sip:alice@sipedge.test>;tag=a-call-7\r\n\
         Call-ID: call-7\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    mallory.send(&bye).await;
    let answer = mallory.recv().await;
    assert!(
        answer.starts_with("SIP/2.0 403 Invalid Flow Token\r\n"),
        "{answer}"
    );
    assert!(director
        .try_recv(Duration::from_millis(300))
        .await
        .is_none());
    assert!(
        alice.try_recv(Duration::from_millis(300)).await.is_none(),
        "nothing from Mallory reached Alice"
    );
    let shared = edge.shared.clone();
    eventually("the forged response counted", || {
        shared
            .stats
            .rejects("stray_response", sipedge::core::sip::proxy::Side::External)
            == 1
    })
    .await;
    edge.stop().await;
}

#[tokio::test]
async fn no_director_up_means_503_with_retry_after() {
    let pki = Pki::new();
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let edge = edge_with(&pki, &[closed]).await;
    let mut client = Client::connect(&pki, edge.external).await;
    client.send(&invite(&client, "call-4")).await;
    let answer = client.recv().await;
    assert!(
        answer.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert_eq!(headers(&answer, "Retry-After"), vec!["30"]);
    assert!(headers(&answer, "To")[0].contains(";tag="));
    edge.stop().await;
}

#[tokio::test]
async fn failover_between_two_directors() {
    let pki = Pki::new();
    let mut d1 = Director::start(&pki).await;
    let mut d2 = Director::start(&pki).await;
    *d1.auto_answer.lock().unwrap() = Some(200);
    *d2.auto_answer.lock().unwrap() = Some(200);
    let edge = edge_with(&pki, &[d1.addr, d2.addr]).await;
    let routes = edge.routes.clone();
    eventually("both next hops up", || {
        routes.pool.members().iter().all(|m| m.is_up())
    })
    .await;
    let mut client = Client::connect(&pki, edge.external).await;

    // Load is spread: with answers coming back, both members get requests.
    for i in 0..20 {
        client.send(&options(i)).await;
        assert!(client.recv().await.starts_with("SIP/2.0 200 Auto"));
    }
    let mut seen = [0, 0];
    while let Some(_r) = d1.try_recv(Duration::from_millis(50)).await {
        seen[0] += 1;
    }
    while let Some(_r) = d2.try_recv(Duration::from_millis(50)).await {
        seen[1] += 1;
    }
    assert_eq!(seen[0] + seen[1], 20);
    assert!(seen[0] > 0 && seen[1] > 0, "both members used: {seen:?}");

    // One Director dies: once the edge has seen it go, every request is answered by the other.
    d1.kill();
    eventually("the dead member marked down", || {
        !routes.pool.members()[0].is_up()
    })
    .await;
    for i in 100..110 {
        client.send(&options(i)).await;
        let answer = client.recv().await;
        assert!(
            answer.starts_with("SIP/2.0 200 Auto"),
            "request {i}: {answer}"
        );
    }
    assert!(
        !routes.pool.members()[0].is_up(),
        "stays down while it cannot be reached"
    );
    edge.stop().await;
}

fn options(i: u32) -> String {
    format!(
        "OPTIONS sip:sipedge.test SIP/2.0\r\n\
         Via: SIP/2.0/TLS 192.168.1.5:5061;branch=z9hG4bK-opt-{i}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@sipedge.test>;tag=o{i}\r\nTo: <sip:sipedge.test>\r\n\
         Call-ID: opt-{i}\r\nCSeq: {i} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

#[tokio::test]
async fn malformed_requests_are_answered_and_never_forwarded() {
    let pki = Pki::new();
    let mut director = Director::start(&pki).await;
    let edge = edge_up(&pki, &[director.addr]).await;

    // Validation errors: answered, connection kept.
    let mut client = Client::connect(&pki, edge.external).await;
    let bad_cseq = invite(&client, "bad-1").replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
    client.send(&bad_cseq).await;
    assert!(client
        .recv()
        .await
        .starts_with("SIP/2.0 400 CSeq Method Mismatch\r\n"));
    let mf0 = invite(&client, "bad-2").replace("Max-Forwards: 70", "Max-Forwards: 0");
    client.send(&mf0).await;
    assert!(client
        .recv()
        .await
        .starts_with("SIP/2.0 483 Too Many Hops\r\n"));
    client.send(&options(1)).await;
    assert!(
        director.recv().await.text.starts_with("OPTIONS"),
        "the connection still works"
    );

    // Keep-alive ping is answered with a pong (RFC 5626 §3.5.1).
    client.send("\r\n\r\n").await;
    assert_eq!(client.recv().await, "\r\n");

    // Framing errors: answered, then the connection is closed.
    let dup_cl =
        invite(&client, "bad-3").replace("Content-Length: 32", "Content-Length: 32\r\nl: 31");
    client.send(&dup_cl).await;
    assert!(client
        .recv()
        .await
        .starts_with("SIP/2.0 400 Conflicting Content-Length\r\n"));
    assert!(client.closed().await);

    // Header injection with a bare LF: no answer can be formed safely; closed.
    let mut client = Client::connect(&pki, edge.external).await;
    let injected = invite(&client, "bad-4").replace(
        "Call-ID: bad-4",
        "Call-ID: bad-4\nVia: SIP/2.0/TLS evil;branch=z9hG4bKx",
    );
    client.send(&injected).await;
    assert!(client.closed().await);

    assert!(
        director
            .try_recv(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing malformed reached the Director"
    );
    assert!(edge.shared.stats.rejected_external.load(Ordering::Relaxed) >= 4);
    edge.stop().await;
}

#[tokio::test]
async fn internal_listener_requires_a_certificate_from_the_internal_ca() {
    let pki = Pki::new();
    let mut director = Director::start(&pki).await;
    let edge = edge_up(&pki, &[director.addr]).await;
    let mut client = Client::connect(&pki, edge.external).await;
    client.send(&invite(&client, "call-5")).await;
    let fwd = director.recv().await.text;
    let token = rr_token(&fwd);

    // A Front End dials the edge's internal listener with its client certificate and sends a
    // request to the remote user.
    let cfg = sipedge::tls::client_config_trusting(
        pki.roots(),
        Some(pki.material(sipedge::tls::DevRole::Client)),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(edge.internal).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.2").unwrap();
    let mut fe = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .expect("mutual TLS");
    let info = format!(
        "INFO sip:alice@192.168.1.5:5061;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 10.0.0.40:5061;branch=z9hG4bK-fe-1\r\n\
         Route: <sip:{token}@127.0.0.2:{port};transport=tls;lr>\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@sipedge.test>;tag=fe1\r\nTo: <sip:alice@sipedge.test>;tag=a-call-5\r\n\
         Call-ID: call-5\r\nCSeq: 3 INFO\r\nContent-Length: 0\r\n\r\n",
        port = edge.internal.port()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fe.write_all(info.as_bytes()).await.unwrap();
    let got = client.recv().await;
    assert!(got.starts_with("INFO sip:alice@"), "{got}");
    client.send(&response_to(&got, 200, "OK")).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, fe.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 200 OK\r\n"));

    // Without a client certificate the handshake fails (TLS 1.3: seen on the first read).
    let cfg = sipedge::tls::client_config_trusting(pki.roots(), None).unwrap();
    let tcp = tokio::net::TcpStream::connect(edge.internal).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.2").unwrap();
    if let Ok(mut anon) = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
    {
        let _ = anon.write_all(info.as_bytes()).await;
        let read = tokio::time::timeout(WAIT, anon.read(&mut buf))
            .await
            .expect("edge answers the handshake");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "anonymous client must be refused"
        );
    }
    assert!(client.try_recv(Duration::from_millis(300)).await.is_none());
    edge.stop().await;
}

#[tokio::test]
async fn an_external_connection_flood_cannot_use_up_the_internal_budget() {
    let pki = Pki::new();
    let director = Director::start(&pki).await;
    let mut topology = topology(&pki, &[director.addr]);
    topology.limits.max_connections = 2;
    let edge = shell::start(&topology).await.expect("edge starts");
    let shared = edge.shared.clone();
    let routes = edge.routes.clone();
    eventually("a next hop up", || routes.pool.any_up()).await;

    // Two remote users fill the external budget; a third is closed at once.
    let mut users = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(&pki, edge.external).await;
        c.send_bytes(b"\r\n\r\n").await;
        assert_eq!(c.recv().await, "\r\n");
        users.push(c);
    }
    let cfg = sipedge::tls::client_config_trusting(pki.roots(), None).unwrap();
    let tcp = tokio::net::TcpStream::connect(edge.external).await.unwrap();
    let third = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls_pki_types::ServerName::try_from(EDGE_FQDN).unwrap(),
            tcp,
        )
        .await;
    assert!(
        third.is_err(),
        "a connection beyond limits.max_connections is refused"
    );
    eventually("the refusal counted", || {
        shared.stats.connections_refused.load(Ordering::Relaxed) == 1
    })
    .await;

    // The internal zone has its own budget: a Front End still gets in.
    let cfg = sipedge::tls::client_config_trusting(
        pki.roots(),
        Some(pki.material(sipedge::tls::DevRole::Client)),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(edge.internal).await.unwrap();
    let mut fe = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls_pki_types::ServerName::try_from("127.0.0.2").unwrap(),
            tcp,
        )
        .await
        .expect("internal connection accepted");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fe.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(WAIT, fe.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pong, b"\r\n");
    edge.stop().await;
}
