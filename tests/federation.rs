//! Federation end to end: two organisations, each with its own CA, edge and Director stub,
//! on separate loopback addresses (org A on 127.0.1.x, org B on 127.0.2.x). Each edge lists
//! the other as an allowed partner server (static addresses, no DNS) and trusts the other's
//! CA. MESSAGE and an INVITE dialog (ACK, BYE) cross both edges in both directions; spoofing,
//! unknown CAs, non-partner certificates, injected trust headers and a partner's rate are
//! refused or limited.

use std::net::SocketAddr;
use std::time::Duration;

use sipedge::shell::{self, RunningEdge};
use sipedge::tls::DevRole;
use sipedge::topology::{FederationConfig, PartnerConfig, Topology};

use crate::support::*;

/// One organisation: its PKI, Director stub and edge.
struct Org {
    pki: Pki,
    director: Director,
    edge: RunningEdge,
    domain: &'static str,
    fqdn: &'static str,
    /// What the edge was started with (reload tests change it).
    topology: Option<Topology>,
}

struct Plan {
    domain: &'static str,
    fqdn: &'static str,
    ext_ip: &'static str,
    int_ip: &'static str,
    director_ip: &'static str,
}

const A: Plan = Plan {
    domain: "a.test",
    fqdn: "edge.a.test",
    ext_ip: "127.0.1.1",
    int_ip: "127.0.1.2",
    director_ip: "127.0.1.3",
};
const B: Plan = Plan {
    domain: "b.test",
    fqdn: "edge.b.test",
    ext_ip: "127.0.2.1",
    int_ip: "127.0.2.2",
    director_ip: "127.0.2.3",
};

fn org_topology(
    plan: &Plan,
    pki: &Pki,
    director: SocketAddr,
    ext_port: u16,
    (partner, partner_pki, partner_port): (&Plan, &Pki, u16),
    partner_rate: u32,
) -> Topology {
    let mut t = topology(pki, &[director]);
    t.edge.name = plan.fqdn.into();
    t.edge.pool_fqdn = plan.fqdn.into();
    t.edge.sip_domains = vec![plan.domain.into()];
    t.external.sip_bind = format!("{}:{ext_port}", plan.ext_ip).parse().unwrap();
    t.external.sip_host = plan.fqdn.into();
    t.internal.sip_bind = format!("{}:0", plan.int_ip).parse().unwrap();
    t.internal.sip_host = plan.int_ip.into();
    t.federation = Some(FederationConfig {
        ca: Some(partner_pki.pki.ca_cert.clone()),
        max_connections_per_partner: 4,
        dns: Vec::new(),
        discovery: false,
        discovery_rate: 20,
        discovery_max_dialogs: 100,
        discovery_allow: Vec::new(),
        partners: vec![PartnerConfig {
            name: "partner".into(),
            fqdn: Some(partner.fqdn.into()),
            domains: vec![partner.domain.into()],
            addresses: vec![format!("{}:{partner_port}", partner.ext_ip)
                .parse()
                .unwrap()],
            rate: partner_rate,
            max_dialogs: 1000,
        }],
    });
    t
}

/// Both organisations, federating; `rate_at_a` is what A accepts from B per second.
async fn federate(rate_at_a: u32) -> (Org, Org) {
    federate_with(rate_at_a, None, free_tcp_port(B.ext_ip), false, 1000).await
}

/// [`federate`] with B's external port chosen, and A finding B's edge through the name
/// server at `dns` (no static addresses) when given; with `domain_only`, A lists B as an
/// allowed partner domain (no FQDN).
async fn federate_with(
    rate_at_a: u32,
    dns: Option<SocketAddr>,
    port_b: u16,
    domain_only: bool,
    max_dialogs_at_a: usize,
) -> (Org, Org) {
    let pki_a = Pki::for_org(A.fqdn, A.ext_ip, A.int_ip);
    let pki_b = Pki::for_org(B.fqdn, B.ext_ip, B.int_ip);
    let dir_a = Director::start_at(&pki_a, format!("{}:0", A.director_ip).parse().unwrap()).await;
    let dir_b = Director::start_at(&pki_b, format!("{}:0", B.director_ip).parse().unwrap()).await;
    let port_a = free_tcp_port(A.ext_ip);
    let mut t_a = org_topology(
        &A,
        &pki_a,
        dir_a.addr,
        port_a,
        (&B, &pki_b, port_b),
        rate_at_a,
    );
    if let Some(f) = t_a.federation.as_mut() {
        f.partners[0].max_dialogs = max_dialogs_at_a;
    }
    if let (Some(dns), Some(f)) = (dns, t_a.federation.as_mut()) {
        f.dns = vec![dns];
        f.partners[0].addresses.clear();
        if domain_only {
            f.partners[0].fqdn = None;
        }
    }
    let t_b = org_topology(&B, &pki_b, dir_b.addr, port_b, (&A, &pki_a, port_a), 1000);
    let edge_a = shell::start(&t_a).await.expect("edge A starts");
    let edge_b = shell::start(&t_b).await.expect("edge B starts");
    for edge in [&edge_a, &edge_b] {
        let routes = edge.routes.clone();
        eventually("the Director pool is up", || routes.pool.any_up()).await;
    }
    let org = |pki, director, edge, plan: &Plan, topology| Org {
        pki,
        director,
        edge,
        domain: plan.domain,
        fqdn: plan.fqdn,
        topology: Some(topology),
    };
    (
        org(pki_a, dir_a, edge_a, &A, t_a),
        org(pki_b, dir_b, edge_b, &B, t_b),
    )
}

fn request(method: &str, from: (&str, &str), to: (&str, &str), call: &str, cseq: u32) -> String {
    let body = if method == "MESSAGE" { "hello" } else { "" };
    format!(
        "{method} sip:{tu}@{td} SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.9.9.9:5061;branch=z9hG4bK{call}{cseq}{method}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{fu}@{fd}>;tag=f{call}\r\n\
         To: <sip:{tu}@{td}>\r\n\
         Call-ID: {call}\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:{fu}@127.9.9.9:5061;transport=tls>\r\n\
         ms-edge-proxy-message-trust: ms-source-type=InternalUser;injected=yes\r\n\
         Content-Length: {len}\r\n\r\n{body}",
        fu = from.0,
        fd = from.1,
        tu = to.0,
        td = to.1,
        len = body.len(),
    )
}

/// The route set a UAC builds from a 2xx's Record-Route (RFC 3261 §12.1.2: reversed).
fn route_set(response: &str) -> Vec<String> {
    let mut entries: Vec<String> = headers(response, "Record-Route")
        .iter()
        .flat_map(|v| v.split(", "))
        .map(str::to_string)
        .collect();
    entries.reverse();
    entries
}

/// An in-dialog request from the UAC with the route set and the remote tag.
fn in_dialog(initial: &str, ok: &str, method: &str, cseq: u32) -> String {
    let to = headers(ok, "To")[0];
    let first = initial.split("\r\n").next().unwrap();
    let target = first.split(' ').nth(1).unwrap();
    let call = headers(initial, "Call-ID")[0];
    format!(
        "{method} {target} SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.9.9.9:5061;branch=z9hG4bK{call}{cseq}{method}\r\n\
         Route: {route}\r\n\
         Max-Forwards: 70\r\n\
         From: {from}\r\n\
         To: {to}\r\n\
         Call-ID: {call}\r\n\
         CSeq: {seq} {method}\r\n\
         Content-Length: 0\r\n\r\n",
        route = route_set(ok).join(", "),
        from = headers(initial, "From")[0],
        seq = if method == "ACK" { 1 } else { cseq },
    )
}

/// The one trust header a message carries toward the inside, if any.
fn trust(msg: &str) -> Vec<&str> {
    headers(msg, "ms-edge-proxy-message-trust")
}

/// `from` sends `method` to a user of `to` through both edges; `to`'s Director gets it
/// stamped and answers `status`; the answer comes back to `from`'s Director.
async fn cross(from: &mut Org, to: &mut Org, msg: &str, status: u16) -> (String, String) {
    from.director.send(0, msg);
    let arrived = to.director.recv().await.text;
    assert_eq!(
        arrived.split("\r\n").next(),
        msg.split("\r\n").next(),
        "{arrived}"
    );
    let stamp = format!(
        "ms-source-type=DirectPartner;ms-ep-fqdn={};ms-source-network=federation;ms-source-verified-user=verified",
        from.fqdn
    );
    assert_eq!(
        trust(&arrived),
        [stamp.as_str()],
        "stamped, injection gone:\n{arrived}"
    );
    let answer = response_to(&arrived, status, "Answered");
    to.director.send(0, &answer);
    let back = from.director.recv().await.text;
    assert!(back.starts_with(&format!("SIP/2.0 {status} ")), "{back}");
    assert!(
        trust(&back).iter().all(|t| t.contains(to.domain)),
        "only the partner stamp: {back}"
    );
    (arrived, back)
}

/// A dialog: INVITE, 200, ACK, BYE, 200, from `caller` to `callee`.
async fn call(caller: &mut Org, callee: &mut Org, id: &str) {
    let invite = request(
        "INVITE",
        ("alice", caller.domain),
        ("bob", callee.domain),
        id,
        1,
    );
    let (_, ok) = cross(caller, callee, &invite, 200).await;
    assert_eq!(route_set(&ok).len(), 4, "both edges recorded routes: {ok}");
    let ack = in_dialog(&invite, &ok, "ACK", 1);
    caller.director.send(0, &ack);
    let arrived = callee.director.recv().await.text;
    assert!(arrived.starts_with("ACK "), "{arrived}");
    let bye = in_dialog(&invite, &ok, "BYE", 2);
    let (arrived, _) = cross(caller, callee, &bye, 200).await;
    assert!(arrived.starts_with("BYE "), "{arrived}");
    assert!(
        headers(&arrived, "Route").is_empty(),
        "routes popped: {arrived}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_calls_cross_both_edges_in_both_directions() {
    let (mut a, mut b) = federate(1000).await;
    let to_b = request("MESSAGE", ("alice", a.domain), ("bob", b.domain), "m1", 1);
    cross(&mut a, &mut b, &to_b, 200).await;
    let to_a = request("MESSAGE", ("bob", b.domain), ("alice", a.domain), "m2", 1);
    cross(&mut b, &mut a, &to_a, 200).await;
    call(&mut a, &mut b, "c1").await;
    call(&mut b, &mut a, "c2").await;
    // Each edge opened one connection to the other and reused it.
    for org in [&a, &b] {
        let partners = org.edge.routes.partners.as_ref().unwrap();
        assert_eq!(partners.connections(), [1], "{}", org.fqdn);
    }
    let metrics = sipedge::shell::ops::metrics(&a.edge.view, sipedge::shell::clock::now());
    assert!(
        metrics
            .contains("sipedge_partner_messages_total{partner=\"edge.b.test\",direction=\"sent\"}"),
        "{metrics}"
    );
    prometheus_check(&metrics);
    a.edge.stop().await;
    b.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofing_partners_and_strangers_are_refused() {
    let (mut a, mut b) = federate(1000).await;

    // B's edge relays a request claiming a third party's domain: A answers 403.
    let spoofed = request("MESSAGE", ("eve", "c.test"), ("alice", a.domain), "s1", 1);
    b.director.send(0, &spoofed);
    let back = b.director.recv().await.text;
    assert!(
        back.starts_with("SIP/2.0 403 From Domain Not Owned By Partner"),
        "{back}"
    );
    assert!(a
        .director
        .try_recv(Duration::from_millis(300))
        .await
        .is_none());

    // A partner asking for a domain A does not serve.
    let elsewhere = request("MESSAGE", ("bob", b.domain), ("carol", "c.test"), "s2", 1).replace(
        "MESSAGE sip:carol@c.test",
        &format!("MESSAGE sip:carol@{}", a.domain),
    );
    b.director.send(0, &elsewhere);
    let back = b.director.recv().await.text;
    assert!(back.starts_with("SIP/2.0 403 "), "{back}");

    // A certificate from a CA nobody trusts: the handshake is refused (in TLS 1.3 the
    // client learns it on its first read).
    let stranger = Pki::for_org("edge.c.test", "127.0.3.1", "127.0.3.2");
    let refused = Client::connect_as(
        a.pki.roots(),
        Some(stranger.material(DevRole::External)),
        a.edge.external,
        "127.0.3.1",
        a.fqdn,
        None,
    )
    .await;
    if let Ok(mut c) = refused {
        c.send(&request(
            "OPTIONS",
            ("x", "c.test"),
            ("alice", a.domain),
            "s3",
            1,
        ))
        .await;
        assert!(c.closed().await, "an unknown CA's certificate was accepted");
    }

    // A valid certificate from B's CA that does not name B's edge: no partner, so a
    // request claiming B's domain is refused.
    let mut impostor = Client::connect_as(
        a.pki.roots(),
        Some(b.pki.material(DevRole::Internal)),
        a.edge.external,
        "127.0.2.9",
        a.fqdn,
        None,
    )
    .await
    .expect("a trusted certificate is accepted");
    impostor
        .send(&request(
            "MESSAGE",
            ("bob", b.domain),
            ("alice", a.domain),
            "s4",
            1,
        ))
        .await;
    let answer = impostor.recv().await;
    assert!(
        answer.starts_with("SIP/2.0 403 Partner Domain From Non-Partner"),
        "{answer}"
    );

    // A remote user (no certificate) injecting a trust header gets it removed.
    let mut user = Client::connect_as(
        a.pki.roots(),
        None,
        a.edge.external,
        "127.0.1.9",
        a.fqdn,
        None,
    )
    .await
    .expect("a remote user connects without a certificate");
    user.send(&request(
        "MESSAGE",
        ("alice", a.domain),
        ("carol", a.domain),
        "s5",
        1,
    ))
    .await;
    let arrived = a.director.recv().await.text;
    assert!(trust(&arrived).is_empty(), "{arrived}");
    a.edge.stop().await;
    b.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_beyond_its_rate_gets_503_and_is_counted() {
    // A accepts 5 messages a second from B (a burst of 10).
    let (mut a, mut b) = federate(5).await;
    for i in 0..30 {
        let m = request(
            "MESSAGE",
            ("bob", b.domain),
            ("alice", a.domain),
            &format!("r{i}"),
            1,
        );
        b.director.send(0, &m);
    }
    let mut limited = 0;
    let mut delivered = 0;
    for _ in 0..30 {
        let back = b.director.try_recv(Duration::from_secs(5)).await;
        match back {
            Some(r) if r.text.starts_with("SIP/2.0 503 Rate Limited") => {
                assert!(headers(&r.text, "Retry-After").len() == 1, "{}", r.text);
                limited += 1;
            }
            Some(r) => panic!("unexpected at B's Director: {}", r.text),
            None => break,
        }
    }
    while let Some(r) = a.director.try_recv(Duration::from_millis(300)).await {
        assert!(r.text.starts_with("MESSAGE "), "{}", r.text);
        delivered += 1;
    }
    assert_eq!(
        delivered + limited,
        30,
        "every message delivered or refused"
    );
    assert!(
        (9..=12).contains(&delivered),
        "{delivered} passed a burst of 10"
    );
    let metrics = sipedge::shell::ops::metrics(&a.edge.view, sipedge::shell::clock::now());
    assert!(
        metrics.contains(&format!(
            "sipedge_partner_rate_limited_total{{partner=\"edge.b.test\"}} {limited}"
        )),
        "{metrics}"
    );
    a.edge.stop().await;
    b.edge.stop().await;
}

/// A partner without static addresses is found by DNS: SRV `_sipfederationtls._tcp.b.test`
/// names targets and ports (the best one does not answer), A records their addresses; the
/// certificate is still verified against the partner's FQDN from the topology.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_without_addresses_is_found_by_srv() {
    let port_b = free_tcp_port(B.ext_ip);
    let dead = free_tcp_port("127.0.2.77");
    let dns = DnsStub::start(
        "127.0.1.53",
        vec![
            (
                "_sipfederationtls._tcp.b.test",
                20,
                0,
                port_b,
                "sipfed.b.test",
            ),
            ("_sipfederationtls._tcp.b.test", 10, 0, dead, "dead.b.test"),
        ],
        vec![
            ("sipfed.b.test", B.ext_ip.parse().unwrap()),
            ("dead.b.test", "127.0.2.77".parse().unwrap()),
        ],
    )
    .await;
    let (mut a, mut b) = federate_with(1000, Some(dns.addr), port_b, false, 1000).await;
    let to_b = request("MESSAGE", ("alice", a.domain), ("bob", b.domain), "d1", 1);
    cross(&mut a, &mut b, &to_b, 200).await;
    let asked = dns.asked.lock().unwrap().clone();
    for question in [
        "SRV _sipfederationtls._tcp.b.test",
        "A dead.b.test",
        "A sipfed.b.test",
    ] {
        assert!(
            asked.contains(&question.to_string()),
            "{question}: {asked:?}"
        );
    }
    a.edge.stop().await;
    b.edge.stop().await;
}

/// A partner edge that cannot be reached: requests for it get 503 with Retry-After (not a
/// silent timeout), counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_partner_gets_503() {
    let (mut a, b) = federate(1000).await;
    b.edge.stop().await;
    let to_b = request("MESSAGE", ("alice", a.domain), ("bob", b.domain), "u1", 1);
    a.director.send(0, &to_b);
    let back = a.director.recv().await.text;
    assert!(
        back.starts_with("SIP/2.0 503 Partner Unavailable"),
        "{back}"
    );
    assert_eq!(headers(&back, "Retry-After"), ["30"]);
    let metrics = sipedge::shell::ops::metrics(&a.edge.view, sipedge::shell::clock::now());
    assert!(
        metrics.contains("sipedge_partner_connect_failures_total{partner=\"edge.b.test\"} 1"),
        "{metrics}"
    );
    a.edge.stop().await;
}

/// An allowed partner domain (no FQDN in A's topology): B's edge is whatever SRV target
/// within b.test answers, and a certificate naming a host within b.test makes B's
/// connections partner connections; an SRV target outside the domain is never tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_partner_domain_is_found_and_recognised_within_its_domain() {
    let port_b = free_tcp_port(B.ext_ip);
    let dns = DnsStub::start(
        "127.0.1.54",
        vec![
            (
                "_sipfederationtls._tcp.b.test",
                1,
                0,
                port_b,
                "evil.example",
            ),
            (
                "_sipfederationtls._tcp.b.test",
                10,
                0,
                port_b,
                "edge.b.test",
            ),
        ],
        vec![
            ("edge.b.test", B.ext_ip.parse().unwrap()),
            ("evil.example", B.ext_ip.parse().unwrap()),
        ],
    )
    .await;
    let (mut a, mut b) = federate_with(1000, Some(dns.addr), port_b, true, 1000).await;
    let to_b = request("MESSAGE", ("alice", a.domain), ("bob", b.domain), "p1", 1);
    cross(&mut a, &mut b, &to_b, 200).await;
    // B's own connection to A: A recognises it by a certificate name within b.test and
    // stamps the partner's label (its domain).
    let to_a = request("MESSAGE", ("bob", b.domain), ("alice", a.domain), "p2", 1);
    b.director.send(0, &to_a);
    let arrived = a.director.recv().await.text;
    assert_eq!(
        trust(&arrived),
        ["ms-source-type=DirectPartner;ms-ep-fqdn=b.test;ms-source-network=federation;ms-source-verified-user=verified"],
        "{arrived}"
    );
    a.director.send(0, &response_to(&arrived, 200, "OK"));
    let back = b.director.recv().await.text;
    assert!(back.starts_with("SIP/2.0 200"), "{back}");
    let asked = dns.asked.lock().unwrap().clone();
    assert!(asked.contains(&"A edge.b.test".to_string()), "{asked:?}");
    assert!(!asked.iter().any(|q| q.contains("evil")), "{asked:?}");
    a.edge.stop().await;
    b.edge.stop().await;
}

const C: Plan = Plan {
    domain: "c.test",
    fqdn: "edge.c.test",
    ext_ip: "127.0.3.1",
    int_ip: "127.0.3.2",
    director_ip: "127.0.3.3",
};

/// Open federation: A lists no partner but discovers; C lists A. C's edge proves itself to
/// A with a certificate naming a host within c.test; A finds C's edge by SRV when its
/// inside writes to c.test, and in a dialog reaches the edge C recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_federation_discovers_an_edge_by_srv_and_certificate() {
    let pki_a = Pki::for_org(A.fqdn, A.ext_ip, A.int_ip);
    let pki_c = Pki::for_org(C.fqdn, C.ext_ip, C.int_ip);
    let dir_a = Director::start_at(&pki_a, format!("{}:0", A.director_ip).parse().unwrap()).await;
    let dir_c = Director::start_at(&pki_c, format!("{}:0", C.director_ip).parse().unwrap()).await;
    let port_a = free_tcp_port(A.ext_ip);
    let port_c = free_tcp_port(C.ext_ip);
    // A domain whose "edge" is an address the lab does not allow (a stand-in for the edge's
    // own host, a private range, 169.254.169.254): a listener there must see nothing.
    let probe = std::net::TcpListener::bind("127.0.0.77:0").unwrap();
    probe.set_nonblocking(true).unwrap();
    let probe_port = probe.local_addr().unwrap().port();
    let dns = DnsStub::start(
        "127.0.1.55",
        vec![
            (
                "_sipfederationtls._tcp.c.test",
                10,
                0,
                port_c,
                "edge.c.test",
            ),
            (
                "_sipfederationtls._tcp.probe.test",
                10,
                0,
                probe_port,
                "edge.probe.test",
            ),
        ],
        vec![
            ("edge.c.test", C.ext_ip.parse().unwrap()),
            ("edge.probe.test", "127.0.0.77".parse().unwrap()),
        ],
    )
    .await;
    let mut t_a = org_topology(&A, &pki_a, dir_a.addr, port_a, (&C, &pki_c, port_c), 1000);
    if let Some(f) = t_a.federation.as_mut() {
        f.partners.clear();
        f.discovery = true;
        f.discovery_rate = 100;
        // The lab: C's edge on loopback, and nothing else there.
        f.discovery_allow = vec![sipedge::core::net::Prefix::parse("127.0.3.1/32").unwrap()];
        f.dns = vec![dns.addr];
    }
    let t_c = org_topology(&C, &pki_c, dir_c.addr, port_c, (&A, &pki_a, port_a), 1000);
    let edge_a = shell::start(&t_a).await.expect("edge A starts");
    let edge_c = shell::start(&t_c).await.expect("edge C starts");
    for edge in [&edge_a, &edge_c] {
        let routes = edge.routes.clone();
        eventually("the Director pool is up", || routes.pool.any_up()).await;
    }
    let mut a = Org {
        pki: pki_a,
        director: dir_a,
        edge: edge_a,
        domain: A.domain,
        fqdn: A.fqdn,
        topology: None,
    };
    let mut c = Org {
        pki: pki_c,
        director: dir_c,
        edge: edge_c,
        domain: C.domain,
        fqdn: C.fqdn,
        topology: None,
    };

    // C -> A: A has never heard of C; the certificate proves the domain.
    let to_a = request("MESSAGE", ("carol", c.domain), ("alice", a.domain), "o1", 1);
    c.director.send(0, &to_a);
    let arrived = a.director.recv().await.text;
    assert_eq!(
        trust(&arrived),
        ["ms-source-type=DiscoveredPartner;ms-ep-fqdn=edge.c.test;ms-source-network=federation;ms-source-verified-user=verified"],
        "{arrived}"
    );
    a.director.send(0, &response_to(&arrived, 200, "OK"));
    let back = c.director.recv().await.text;
    assert!(back.starts_with("SIP/2.0 200"), "{back}");

    // A -> C: found by SRV; then a whole dialog, the BYE through the edge C recorded.
    let invite = request("INVITE", ("alice", a.domain), ("carol", c.domain), "o2", 1);
    a.director.send(0, &invite);
    let arrived = c.director.recv().await.text;
    assert!(arrived.starts_with("INVITE sip:carol@c.test"), "{arrived}");
    let ok = response_to(&arrived, 200, "OK");
    c.director.send(0, &ok);
    let ok = a.director.recv().await.text;
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    assert!(
        trust(&ok)
            .iter()
            .all(|t| t.contains("DiscoveredPartner;ms-ep-fqdn=edge.c.test")),
        "{ok}"
    );
    a.director.send(0, &in_dialog(&invite, &ok, "ACK", 1));
    assert!(c.director.recv().await.text.starts_with("ACK "));
    a.director.send(0, &in_dialog(&invite, &ok, "BYE", 2));
    let bye = c.director.recv().await.text;
    assert!(bye.starts_with("BYE "), "{bye}");
    c.director.send(0, &response_to(&bye, 200, "OK"));
    assert!(a.director.recv().await.text.starts_with("SIP/2.0 200"));
    // A domain whose edge resolves to an address not allowed: never connected to.
    let to_probe = request(
        "MESSAGE",
        ("alice", a.domain),
        ("mallory", "probe.test"),
        "o3",
        1,
    );
    a.director.send(0, &to_probe);
    let refused = a.director.recv().await.text;
    assert!(refused.starts_with("SIP/2.0 5"), "{refused}");
    assert!(
        matches!(probe.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the edge connected to an address it does not allow"
    );
    let asked = dns.asked.lock().unwrap().clone();
    for name in [
        "SRV _sipfederationtls._tcp.c.test",
        "SRV _sipfederationtls._tcp.probe.test",
    ] {
        assert!(asked.contains(&name.to_string()), "{name}: {asked:?}");
    }
    a.edge.stop().await;
    c.edge.stop().await;
}

/// A's limit of one dialog with B at a time, both directions together: a second INVITE
/// either way gets 503 while the first dialog lasts, and passes once its BYE crossed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_at_its_dialog_limit_gets_503_until_a_dialog_ends() {
    let (mut a, mut b) = federate_with(1000, None, free_tcp_port(B.ext_ip), false, 1).await;
    let first = request("INVITE", ("bob", b.domain), ("alice", a.domain), "l1", 1);
    let (_, ok) = cross(&mut b, &mut a, &first, 200).await;
    let second = request("INVITE", ("bob", b.domain), ("carol", a.domain), "l2", 1);
    b.director.send(0, &second);
    let refused = b.director.recv().await.text;
    assert!(
        refused.starts_with("SIP/2.0 503 Partner Dialog Limit"),
        "{refused}"
    );
    assert_eq!(headers(&refused, "Retry-After").len(), 1);
    assert!(a
        .director
        .try_recv(Duration::from_millis(300))
        .await
        .is_none());
    // The other direction counts against the same limit.
    let outbound = request("INVITE", ("alice", a.domain), ("bob", b.domain), "l3", 1);
    a.director.send(0, &outbound);
    let refused = a.director.recv().await.text;
    assert!(
        refused.starts_with("SIP/2.0 503 Partner Dialog Limit"),
        "{refused}"
    );
    // The first dialog ends: room again.
    b.director.send(0, &in_dialog(&first, &ok, "ACK", 1));
    assert!(a.director.recv().await.text.starts_with("ACK "));
    let bye = in_dialog(&first, &ok, "BYE", 2);
    cross(&mut b, &mut a, &bye, 200).await;
    let third = request("INVITE", ("bob", b.domain), ("carol", a.domain), "l4", 1);
    cross(&mut b, &mut a, &third, 486).await;
    // A failure answer frees the slot at once.
    let fourth = request("INVITE", ("bob", b.domain), ("dave", a.domain), "l5", 1);
    cross(&mut b, &mut a, &fourth, 200).await;
    let metrics = sipedge::shell::ops::metrics(&a.edge.view, sipedge::shell::clock::now());
    assert!(
        metrics.contains("sipedge_partner_dialogs{partner=\"edge.b.test\"} 1"),
        "{metrics}"
    );
    a.edge.stop().await;
    b.edge.stop().await;
}

/// Partners change on reload without a restart: a partner removed is refused at once on the
/// connections it already has, one added (or given another domain) is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partners_change_on_reload() {
    let (mut a, mut b) = federate(1000).await;
    let to_a = request("MESSAGE", ("bob", b.domain), ("alice", a.domain), "v1", 1);
    cross(&mut b, &mut a, &to_a, 200).await;
    let t = a.topology.clone().unwrap();

    // B removed from A's partners: B's connection is no partner's any more.
    let mut without = t.clone();
    without.federation.as_mut().unwrap().partners.clear();
    without.federation.as_mut().unwrap().discovery = false;
    let r = a.edge.reload(&without).expect("partners change live");
    assert_eq!(r.changed, ["federation"]);
    let again = request("MESSAGE", ("bob", b.domain), ("alice", a.domain), "v2", 1);
    b.director.send(0, &again);
    let back = b.director.recv().await.text;
    assert!(back.starts_with("SIP/2.0 403 "), "{back}");
    assert!(a
        .director
        .try_recv(Duration::from_millis(300))
        .await
        .is_none());

    // Back, with a second domain: both are served on the same connection.
    let mut wider = t.clone();
    wider.federation.as_mut().unwrap().partners[0]
        .domains
        .push("b2.test".into());
    a.edge.reload(&wider).expect("partners change live");
    let second = request("MESSAGE", ("bob", "b2.test"), ("alice", a.domain), "v3", 1);
    b.director.send(0, &second);
    let arrived = a.director.recv().await.text;
    assert!(arrived.contains("From: <sip:bob@b2.test>"), "{arrived}");
    a.director.send(0, &response_to(&arrived, 200, "OK"));
    assert!(b.director.recv().await.text.starts_with("SIP/2.0 200"));

    // What needs a restart is refused whole: the trust roots.
    let mut roots = wider.clone();
    roots.federation.as_mut().unwrap().ca = None;
    assert!(matches!(
        a.edge.reload(&roots),
        Err(shell::ReloadError::NeedsRestart(_))
    ));
    a.edge.stop().await;
    b.edge.stop().await;
}
