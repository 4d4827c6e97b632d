//! Federation: partners' requests and responses stamped for the inside, spoofing refused,
//! requests for a partner's domain routed to it, and open federation (edges proven by
//! certificate names, foreign domains by SRV).

use super::*;

fn federated() -> Proxy {
    let p = proxy();
    p.set_federation(std::sync::Arc::new(Federation::new(vec![Partner {
        fqdn: Some("sip.partner.example".into()),
        domains: vec!["partner.example".into()],
        rate: crate::core::firewall::Rate {
            per_sec: 10,
            burst: 10,
        },
        max_dialogs: 100,
    }])));
    p
}

/// The one partner of [`federated`].
fn the_partner(p: &Proxy) -> PartnerId {
    p.federation().iter().next().unwrap().0
}

fn partner_flow(p: &Proxy, id: u64) -> Flow {
    Flow {
        partner: Some(the_partner(p)),
        ..flow(p, id, Side::External, "198.51.100.50:5061")
    }
}

const FROM_PARTNER: &str = "MESSAGE sip:alice@example.com SIP/2.0\r\n\
    Via: SIP/2.0/TLS sip.partner.example:5061;branch=z9hG4bKp1\r\n\
    Max-Forwards: 70\r\n\
    From: <sip:bob@partner.example>;tag=b1\r\n\
    To: <sip:alice@example.com>\r\n\
    Call-ID: fed1\r\n\
    CSeq: 1 MESSAGE\r\n\
    ms-edge-proxy-message-trust: ms-source-type=InternalUser;forged=yes\r\n\
    Content-Length: 2\r\n\r\nhi";

/// The Director's request to `to` outside, opening dialog `call_id` (tag a1).
fn from_director(method: &str, to: &str, call_id: &str) -> String {
    format!(
        "{method} sip:{to} SIP/2.0\r\n\
        Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir1\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:alice@example.com>;tag=a1\r\n\
        To: <sip:{to}>\r\n\
        Call-ID: {call_id}\r\n\
        CSeq: 1 {method}\r\n\
        Content-Length: 0\r\n\r\n"
    )
}

/// The Director's BYE in the dialog [`from_director`] opened, answered with `to_tag`: routed
/// through both of the edge's Record-Routes (`token`), then to `next_hop`.
fn director_bye(
    to: &str,
    to_tag: &str,
    call_id: &str,
    token: &FlowToken,
    next_hop: &str,
) -> String {
    let user = to.split('@').next().unwrap();
    format!(
        "BYE sip:{user}@198.51.100.60:5061;transport=tls SIP/2.0\r\n\
        Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir2\r\n\
        Route: <sip:{t}@10.0.0.10:5061;transport=tls;lr>, <sip:{t}@edge.example.com:5061;transport=tls;lr>, <sip:{next_hop};transport=tls;lr>\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:alice@example.com>;tag=a1\r\n\
        To: <sip:{to}>;tag={to_tag}\r\n\
        Call-ID: {call_id}\r\n\
        CSeq: 2 BYE\r\n\
        Content-Length: 0\r\n\r\n",
        t = token.as_str()
    )
}

#[test]
fn a_partner_request_is_stamped_for_the_inside_and_its_own_stamp_removed() {
    let p = federated();
    let f = partner_flow(&p, 5);
    let (text, _) = forwarded(&p, &f, FROM_PARTNER);
    assert!(!text.contains("forged=yes"), "{text}");
    let stamp = "ms-edge-proxy-message-trust: ms-source-type=DirectPartner;\
        ms-ep-fqdn=sip.partner.example;ms-source-network=federation;\
        ms-source-verified-user=verified\r\n";
    assert_eq!(text.matches(stamp).count(), 1, "{text}");
    msg(&text);
}

#[test]
fn partner_spoofing_is_refused() {
    let p = federated();
    let partner = partner_flow(&p, 5);
    // The partner claiming a third party's domain.
    let third = FROM_PARTNER.replace("bob@partner.example", "eve@elsewhere.example");
    assert_reject(&p, &partner, &third, Why::PartnerDomainMismatch);
    // ... or our own users.
    let ours = FROM_PARTNER.replace("bob@partner.example", "ceo@example.com");
    assert_reject(&p, &partner, &ours, Why::PartnerDomainMismatch);
    // A request for a domain we do not serve, even with an own Request-URI.
    let elsewhere =
        FROM_PARTNER.replace("To: <sip:alice@example.com>", "To: <sip:x@other.example>");
    assert_reject(&p, &partner, &elsewhere, Why::PartnerTargetNotServed);
    let register = FROM_PARTNER
        .replace("MESSAGE sip:alice@example.com", "REGISTER sip:example.com")
        .replace("1 MESSAGE", "1 REGISTER");
    assert_reject(&p, &partner, &register, Why::PartnerRegister);
    // Somebody else (a remote user's connection) claiming the partner's domain.
    let user = flow(&p, 6, Side::External, "203.0.113.9:40000");
    assert_reject(&p, &user, FROM_PARTNER, Why::NotPartnerEdge);
}

#[test]
fn requests_for_a_partner_domain_go_to_the_partner_and_dialogs_come_back() {
    let p = federated();
    let director = director(&p);
    let invite = from_director("INVITE", "bob@partner.example", "out1");
    let Action::ToPartner { partner, bytes, .. } = p.handle(&director, &msg(&invite)) else {
        panic!("not sent to the partner")
    };
    assert_eq!(partner, the_partner(&p));
    let text = String::from_utf8(bytes).unwrap();
    // Record-Route names the partner, not a connection: in-dialog requests from the
    // inside reach it over any connection.
    let key = the_partner(&p).0;
    let partner_token = rr(
        &p,
        TokenKind::DialogFromInside,
        FlowId::partner(key),
        "out1",
        "a1",
    );
    assert!(
        text.contains(&format!(
            "<sip:{}@edge.example.com:5061;transport=tls;lr>",
            partner_token.as_str()
        )),
        "{text}"
    );
    let bye = director_bye(
        "bob@partner.example",
        "b9",
        "out1",
        &partner_token,
        "sip.partner.example:5061",
    );
    let Action::ToPartner { partner, proof, .. } = p.handle(&director, &msg(&bye)) else {
        panic!("in-dialog request not sent to the partner")
    };
    assert_eq!((partner, proof), (the_partner(&p), Proof::Dialog));
    // The partner's own in-dialog request with the token, on any of its connections.
    let partner_bye = format!(
        "BYE sip:alice@10.0.0.30:5061;transport=tls SIP/2.0\r\n\
        Via: SIP/2.0/TLS sip.partner.example:5061;branch=z9hG4bKpb\r\n\
        Route: <sip:{t}@edge.example.com:5061;transport=tls;lr>, <sip:{t}@10.0.0.10:5061;transport=tls;lr>\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:bob@partner.example>;tag=b9\r\n\
        To: <sip:alice@example.com>;tag=a1\r\n\
        Call-ID: out1\r\n\
        CSeq: 7 BYE\r\n\
        Content-Length: 0\r\n\r\n",
        t = partner_token.as_str()
    );
    let (_, proof) = forwarded(&p, &partner_flow(&p, 8), &partner_bye);
    assert_eq!(proof, Proof::Dialog);
    // A remote user who saw the token cannot use it.
    let user = flow(&p, 9, Side::External, "203.0.113.9:40000");
    assert_reject(&p, &user, &partner_bye, Why::NotPartnerEdge);
    // Without a recorded route, a Route through the partner edge also leads there.
    let routed = bye.replace(
        &format!("<sip:{t}@10.0.0.10:5061;transport=tls;lr>, <sip:{t}@edge.example.com:5061;transport=tls;lr>, ", t = partner_token.as_str()),
        "",
    );
    assert!(matches!(
        p.handle(&director, &msg(&routed)),
        Action::ToPartner { .. }
    ));
    // A domain nobody federates with has no route.
    let nowhere = invite.replace("bob@partner.example", "bob@nowhere.example");
    assert_reject(&p, &director, &nowhere, Why::NoRoute);
}

#[test]
fn a_partner_response_is_stamped_and_goes_to_the_inside() {
    let p = federated();
    let director = director(&p);
    let partner = partner_flow(&p, 5);
    let message = from_director("MESSAGE", "bob@partner.example", "out1");
    let Action::ToPartner { bytes, .. } = p.handle(&director, &msg(&message)) else {
        panic!()
    };
    let sent = String::from_utf8(bytes).unwrap();
    let vias = vias_of(&sent);
    let ok = format!(
        "SIP/2.0 200 OK\r\n{vias}\
        From: <sip:alice@example.com>;tag=a1\r\n\
        To: <sip:bob@partner.example>;tag=b9\r\n\
        Call-ID: out1\r\n\
        CSeq: 1 MESSAGE\r\n\
        ms-edge-proxy-message-trust: injected\r\n\
        Content-Length: 0\r\n\r\n"
    );
    let Action::ToFlow {
        flow: to, bytes, ..
    } = p.handle(&partner, &msg(&ok))
    else {
        panic!("response not routed")
    };
    assert_eq!(to, director.id);
    let text = String::from_utf8(bytes).unwrap();
    assert!(!text.contains("injected"));
    assert!(
        text.contains("ms-source-type=DirectPartner;ms-ep-fqdn=sip.partner.example"),
        "{text}"
    );
    msg(&text);
    // A remote user's connection cannot answer what went to the partner.
    let user = flow(&p, 9, Side::External, "203.0.113.9:40000");
    assert_reject(&p, &user, &ok, Why::StrayResponse);
}

fn discovering() -> Proxy {
    let p = federated();
    let mut f = (*p.federation()).clone();
    f.discovery = true;
    p.set_federation(std::sync::Arc::new(f));
    p
}

fn certified(p: &Proxy, id: u64, names: &[&str]) -> Flow {
    Flow {
        certificate: Some(names.iter().map(|n| n.to_string()).collect()),
        ..flow(p, id, Side::External, "198.51.100.70:5061")
    }
}

#[test]
fn open_federation_accepts_an_edge_proven_by_a_name_within_its_domain() {
    let p = discovering();
    let from_c = FROM_PARTNER
        .replace("bob@partner.example", "carol@c.example")
        .replace("sip.partner.example", "sip.c.example");
    let edge = certified(&p, 7, &["sip.c.example"]);
    let (text, _) = forwarded(&p, &edge, &from_c);
    assert!(text.contains("ms-edge-proxy-message-trust: ms-source-type=DiscoveredPartner;ms-ep-fqdn=sip.c.example;"), "{text}");
    assert!(!text.contains("forged=yes"));
    assert_eq!(
        p.discovered_sender(&edge, &msg(&from_c)),
        Some(&b"c.example"[..])
    );
    // A certificate for another domain proves nothing about this one.
    let other = certified(&p, 8, &["sip.d.example", "*.c.example"]);
    assert_reject(&p, &other, &from_c, Why::NotPartnerEdge);
    assert_eq!(p.discovered_sender(&other, &msg(&from_c)), None);
    // Without a certificate it is not federation at all: the inside decides.
    let user = flow(&p, 9, Side::External, "203.0.113.9:40000");
    forwarded(&p, &user, &from_c);
    // Still only to our domains, never a REGISTER.
    let elsewhere = from_c.replace("To: <sip:alice@example.com>", "To: <sip:x@d.example>");
    assert_reject(&p, &edge, &elsewhere, Why::PartnerTargetNotServed);
    // Listed partners' domains stay theirs.
    assert_reject(
        &p,
        &certified(&p, 10, &["partner.example"]),
        FROM_PARTNER,
        Why::NotPartnerEdge,
    );
    // Discovery off: the same connection is a remote user's.
    let closed = federated();
    let (text, _) = forwarded(&closed, &edge, &from_c);
    assert!(!text.contains("DiscoveredPartner"));
}

#[test]
fn open_federation_sends_foreign_domains_by_srv_and_dialogs_by_the_recorded_edge() {
    let p = discovering();
    let director = director(&p);
    let invite = from_director("INVITE", "carol@c.example", "disc1");
    let Action::ToDiscovered { target, bytes, .. } = p.handle(&director, &msg(&invite)) else {
        panic!("not sent to the discovered domain")
    };
    assert_eq!(target, DiscoveredTarget::Domain("c.example".into()));
    let token = rr(
        &p,
        TokenKind::DialogFromInside,
        FlowId::partner(discovered_key(b"c.example")),
        "disc1",
        "a1",
    );
    assert!(String::from_utf8(bytes).unwrap().contains(token.as_str()));
    let bye = |route_host: &str| {
        director_bye(
            "carol@c.example",
            "c9",
            "disc1",
            &token,
            &format!("{route_host}:5062"),
        )
    };
    let Action::ToDiscovered { target, .. } = p.handle(&director, &msg(&bye("sip.c.example")))
    else {
        panic!("in-dialog request not sent to the recorded edge")
    };
    assert_eq!(
        target,
        DiscoveredTarget::Edge {
            host: "sip.c.example".into(),
            port: 5062,
            domain: "c.example".into()
        }
    );
    // A Route to a host outside the partner's domain is not followed.
    assert_reject(&p, &director, &bye("evil.example"), Why::NoRoute);
    // Addresses, our own domains and no discovery: no route.
    for uri in ["carol@192.0.2.7", "carol@example.com"] {
        let text = invite.replace("carol@c.example", uri);
        assert!(
            matches!(p.handle(&director, &msg(&text)), Action::Reject(_)),
            "{uri}"
        );
    }
    assert_reject(&federated(), &director, &invite, Why::NoRoute);
}
