//! The A/V authentication service over real sockets: a Front End (mutual TLS on the
//! internal listener) asks for relay credentials with a Lync-style SERVICE and gets a
//! credentialsResponse minted from the pool ring; two edges started from the same ring
//! issue credentials that verify with either's keys; the same request from outside to the
//! edge itself is refused.

use sipedge::core::{credentials, mras};
use sipedge::shell::{self, keyfile};
use sipedge::topology::{KeysSource, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

pub(crate) const LYNC_BODY: &str = "<request requestID=\"1390413\" from=\"sip:alice@sipedge.test\" version=\"1.0\" \
    to=\"sip:edge.sipedge.test@sipedge.test;gruu;opaque=srvr:MRAS:8mFkTyb9wVWwzLpXWNlNgAAA\" \
    xmlns=\"http://schemas.microsoft.com/2006/09/sip/mrasp\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
    <credentialsRequest credentialsRequestID=\"1390413\"><identity>sip:alice@sipedge.test</identity>\
    <location>internet</location><duration>480</duration></credentialsRequest></request>";

pub(crate) fn service(body: &str, branch: &str) -> String {
    format!(
        "SERVICE sip:edge.sipedge.test@sipedge.test;gruu;opaque=srvr:MRAS:8mFkTyb9wVWwzLpXWNlNgAAA SIP/2.0\r\n\
         Via: SIP/2.0/TLS 10.20.0.30:5061;branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@sipedge.test>;tag=fe1\r\n\
         To: <sip:edge.sipedge.test@sipedge.test>\r\nCall-ID: mras-{branch}\r\nCSeq: 1 SERVICE\r\n\
         Content-Type: application/msrtc-media-relay-auth+xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A Front End's mutual-TLS connection to the edge's internal listener.
pub(crate) async fn front_end(
    pki: &Pki,
    internal: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let cfg = sipedge::tls::client_config_trusting(
        pki.roots(),
        Some(pki.material(sipedge::tls::DevRole::Client)),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(internal).await.unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls_pki_types::ServerName::try_from("127.0.0.2").unwrap(),
            tcp,
        )
        .await
        .expect("mutual TLS")
}

pub(crate) async fn ask(
    fe: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    request: &str,
) -> String {
    fe.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(m) = split_message(&mut buf) {
            return String::from_utf8(m).unwrap();
        }
        let n = tokio::time::timeout(WAIT, fe.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "edge closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The username and password of a credentialsResponse body.
pub(crate) fn credential(body: &str) -> (String, String) {
    (
        element(body, "username").to_string(),
        element(body, "password").to_string(),
    )
}

/// A `[relay]` that issues credentials (valid 8 hours) naming `host` and the ports `udp` and
/// `tcp`; its own listeners on ephemeral ports, since tests run side by side.
pub(crate) fn issuing_relay(host: &str, udp: u16, tcp: u16) -> Relay {
    Relay {
        udp_port: udp,
        tcp_port: tcp,
        credential_lifetime: std::time::Duration::from_secs(8 * 3600),
        listen_udp: vec!["127.0.0.1:0".parse().unwrap()],
        listen_tcp: vec!["127.0.0.1:0".parse().unwrap()],
        ..Relay::new(host)
    }
}

/// Credentials `edge` has issued so far.
fn issued(edge: &shell::RunningEdge) -> u64 {
    edge.shared
        .stats
        .credentials_issued
        .load(std::sync::atomic::Ordering::Relaxed)
}

pub(crate) fn element<'a>(xml: &'a str, name: &str) -> &'a str {
    let open = format!("<{name}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{name}> in {xml}"))
        + open.len();
    let end = xml[start..].find(&format!("</{name}>")).unwrap() + start;
    &xml[start..end]
}

#[tokio::test]
async fn credentials_over_service_from_two_edges_sharing_one_ring() {
    let pki = Pki::new();
    let (ring_path, _) = ring_file(&pki);
    let director = Director::start(&pki).await;
    let start = |internal: &'static str| {
        let mut t = topology(&pki, &[director.addr]);
        t.internal.sip_bind = internal.parse().unwrap();
        t.keys = Some(KeysSource::File(ring_path.clone()));
        t.relay = Some(issuing_relay("av.sipedge.test", 3478, 443));
        t
    };
    let edge_a = shell::start(&start("127.0.0.2:0")).await.expect("edge A");
    let edge_b = shell::start(&start("127.0.0.2:0")).await.expect("edge B");

    let mut fe = front_end(&pki, edge_a.internal).await;
    let answer = ask(&mut fe, &service(LYNC_BODY, "a1")).await;
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("Content-Type: application/msrtc-media-relay-auth+xml\r\n"),
        "{answer}"
    );
    let body = body_of(&answer);
    // The structure SIPE and Lync read (MS-AVEDGEA): response@reasonPhrase, credentials,
    // mediaRelayList/mediaRelay.
    assert!(body.contains(
        "<response xmlns=\"http://schemas.microsoft.com/2006/09/sip/mrasp\" requestID=\"1390413\""
    ));
    assert!(body.contains("reasonPhrase=\"OK\""));
    assert!(body.contains("<credentialsResponse credentialsRequestID=\"1390413\">"));
    assert_eq!(element(body, "duration"), "480");
    assert_eq!(element(body, "hostName"), "av.sipedge.test");
    assert_eq!(element(body, "udpPort"), "3478");
    assert_eq!(element(body, "tcpPort"), "443");
    assert_eq!(element(body, "location"), "internet");
    let (user, pass) = credential(body);
    assert!(user.ends_with(":sip:alice@sipedge.test"), "{user}");

    // Edge B, started from the same ring, issues credentials too; each edge's credential
    // verifies with the ring both hold.
    let mut fe_b = front_end(&pki, edge_b.internal).await;
    let answer_b = ask(&mut fe_b, &service(LYNC_BODY, "b1")).await;
    let body_b = body_of(&answer_b);
    let ring = keyfile::load(&ring_path).unwrap();
    let now = sipedge::shell::clock::now_unix();
    for (u, p) in [
        (user.as_str(), pass.as_str()),
        (element(body_b, "username"), element(body_b, "password")),
    ] {
        assert_eq!(
            credentials::verify(&ring, u, p, now, 8 * 3600),
            Ok("sip:alice@sipedge.test")
        );
    }
    assert_eq!(issued(&edge_a), 1);

    // Malformed XML: 400 with the reason, nothing issued.
    let bad = ask(
        &mut fe,
        &service(
            &LYNC_BODY
                .replace("<identity>", "<identity>sip:bad name")
                .replace("</request>", ""),
            "a2",
        ),
    )
    .await;
    assert!(
        bad.starts_with("SIP/2.0 400 Malformed Credentials Request\r\n"),
        "{bad}"
    );
    assert!(bad.contains("Warning: 399 sipedge \""), "{bad}");
    assert_eq!(issued(&edge_a), 1);

    // From outside, addressed to the edge itself: refused.
    let mut remote = Client::connect(&pki, edge_a.external).await;
    let outside = service(LYNC_BODY, "x1").replace(
        "SERVICE sip:edge.sipedge.test@sipedge.test;gruu;opaque=srvr:MRAS:8mFkTyb9wVWwzLpXWNlNgAAA",
        "SERVICE sip:edge.sipedge.test",
    );
    remote.send(&outside).await;
    let refused = remote.recv().await;
    assert!(
        refused.starts_with("SIP/2.0 403 Credentials Issued Inside Only\r\n"),
        "{refused}"
    );
    assert!(answer.contains(&format!("Content-Type: {}\r\n", mras::CONTENT_TYPE)));
    edge_a.stop().await;
    edge_b.stop().await;
}

#[tokio::test]
async fn the_turn_rest_endpoint_on_the_operations_listener() {
    let pki = Pki::new();
    let (ring_path, _) = ring_file(&pki);
    let director = Director::start(&pki).await;
    let mut t = topology(&pki, &[director.addr]);
    t.keys = Some(KeysSource::File(ring_path.clone()));
    t.relay = Some(issuing_relay("av.sipedge.test", 3478, 443));
    let (edge, ops) = start_with_operations(t).await;
    let ring = keyfile::load(&ring_path).unwrap();
    let json_of = |answer: &str| -> serde_json::Value {
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("Content-Type: application/json\r\n"),
            "{answer}"
        );
        serde_json::from_str(body_of(answer)).unwrap()
    };

    // The draft's form.
    let v = json_of(
        &http_get(
            &ops,
            "/?service=turn&username=alice%40sipedge.test&ttl=3600",
        )
        .await,
    );
    assert_eq!(v["ttl"], 3600);
    assert_eq!(
        v["uris"],
        serde_json::json!([
            "turn:av.sipedge.test:3478?transport=udp",
            "turn:av.sipedge.test:443?transport=tcp"
        ])
    );
    let (u, p) = (
        v["username"].as_str().unwrap(),
        v["password"].as_str().unwrap(),
    );
    assert!(u.ends_with(":alice@sipedge.test"), "{u}");
    let now = sipedge::shell::clock::now_unix();
    assert_eq!(
        credentials::verify(&ring, u, p, now, 8 * 3600),
        Ok("alice@sipedge.test")
    );

    // JSON in, default lifetime.
    let body = r#"{"username": "bob"}"#;
    let post = format!(
        "POST /turn HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let v = json_of(&http_raw(&ops, post.as_bytes()).await);
    assert_eq!(v["ttl"], 8 * 3600);

    // Malformed requests: a clear 400 and nothing else.
    for (request, why) in [
        ("GET /turn HTTP/1.1\r\n\r\n".to_string(), "missing username"),
        (
            "GET /turn?username=a&ttl=5 HTTP/1.1\r\n\r\n".to_string(),
            "ttl",
        ),
        (
            "GET /turn?username=a&ttl=999999999 HTTP/1.1\r\n\r\n".to_string(),
            "ttl",
        ),
        (
            "GET /turn?username=has%20space HTTP/1.1\r\n\r\n".to_string(),
            "username",
        ),
        (
            "POST /turn HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"user\":1".to_string(),
            "JSON",
        ),
        (
            format!(
                "POST /turn HTTP/1.1\r\nContent-Length: {}\r\n\r\n{}",
                30, r#"{"username":"a","admin":true} "#
            ),
            "unknown field",
        ),
    ] {
        let answer = http_raw(&ops, request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{request}: {answer}"
        );
        assert!(answer.contains(why), "{request}: {answer}");
    }
    let huge = format!(
        "POST /turn HTTP/1.1\r\nContent-Length: 100000\r\n\r\n{}",
        "x".repeat(10)
    );
    assert!(http_raw(&ops, huge.as_bytes())
        .await
        .starts_with("HTTP/1.1 413 "));
    assert_eq!(issued(&edge), 2);
    edge.stop().await;
}
