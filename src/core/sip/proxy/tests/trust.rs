//! The trust boundary: what a dialog token proves from outside and from inside, nothing
//! from outside steered toward the inside, the real source always recorded, and
//! trust-domain headers never crossing from outside.

use super::*;

/// A BYE from the remote user on flow 1 in the dialog `call1`/`a1` it initiated.
fn user_bye(route_token: &str) -> String {
    format!(
        "BYE sip:bob@10.0.0.30:5061;transport=tls SIP/2.0\r\n\
        Via: SIP/2.0/TLS 192.168.1.5:50123;branch=z9hG4bKbye1\r\n\
        Route: <sip:{route_token}@edge.example.com:5061;transport=tls;lr>, <sip:{route_token}@10.0.0.10:5061;transport=tls;lr>\r\n\
        Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b2\r\n\
        Call-ID: call1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn a_token_from_outside_proves_only_its_dialog_direction_and_flow() {
    let p = proxy();
    let user = flow(&p, 1, Side::External, "203.0.113.7:40000");
    let token = rr(&p, TokenKind::DialogFromOutside, FlowId(1), "call1", "a1");
    // Its own dialog: any Request-URI (the peer's Contact), proven.
    let (text, proof) = forwarded(&p, &user, &user_bye(token.as_str()));
    assert_eq!(proof, Proof::Dialog);
    assert!(!text.contains("Route:"), "both own routes popped: {text}");
    // Replayed into another dialog, with a claimed tag, or the other direction's letter.
    let other_call = user_bye(token.as_str()).replace("Call-ID: call1", "Call-ID: call2");
    assert_reject(&p, &user, &other_call, Why::InvalidFlowToken);
    let other_tag = user_bye(token.as_str()).replace("tag=a1", "tag=a9");
    assert_reject(&p, &user, &other_tag, Why::InvalidFlowToken);
    let mut flipped = token.as_str().to_string();
    flipped.replace_range(0..1, "i");
    assert_reject(&p, &user, &user_bye(&flipped), Why::InvalidFlowToken);
    // The out-of-dialog example of the red team: an unserved Request-URI with a token
    // taken from another dialog's Record-Route.
    let steer = user_bye(token.as_str())
        .replace(
            "BYE sip:bob@10.0.0.30:5061;transport=tls",
            "INVITE sip:+19005551234@evil.example",
        )
        .replace("2 BYE", "1 INVITE")
        .replace(";tag=b2", "")
        .replace("Call-ID: call1", "Call-ID: fresh");
    assert_reject(&p, &user, &steer, Why::InvalidFlowToken);
    // The same genuine token from another connection proves nothing there: the
    // out-of-dialog rules apply (and the Request-URI is no served domain).
    let other_conn = flow(&p, 3, Side::External, "203.0.113.8:40000");
    assert_reject(
        &p,
        &other_conn,
        &user_bye(token.as_str()),
        Why::DomainNotServed,
    );
    // Path and Via tokens are never accepted from outside.
    let path = p.keys().token(TokenKind::Path, FlowId(1));
    assert_reject(&p, &user, &user_bye(path.as_str()), Why::InvalidFlowToken);
    assert_reject(
        &p,
        &user,
        &user_bye(user.token.as_str()),
        Why::InvalidFlowToken,
    );
    // The callee's side of a dialog the inside initiated: its tag is the To tag.
    let inside = rr(&p, TokenKind::DialogFromInside, FlowId(1), "call1", "b2");
    let (_, proof) = forwarded(&p, &user, &user_bye(inside.as_str()));
    assert_eq!(proof, Proof::Dialog);
    let from_side = rr(&p, TokenKind::DialogFromInside, FlowId(1), "call1", "a1");
    assert_reject(
        &p,
        &user,
        &user_bye(from_side.as_str()),
        Why::InvalidFlowToken,
    );
}

#[test]
fn from_the_inside_a_dialog_token_routes_only_its_dialog() {
    let p = proxy();
    let director = director(&p);
    let tok = rr(&p, TokenKind::DialogFromOutside, FlowId(1), "call1", "a1");
    let bye = |t: &str| {
        format!(
            "BYE sip:alice@192.168.1.5:50123;transport=tls SIP/2.0\r\n\
            Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir1\r\n\
            Route: <sip:{t}@10.0.0.10:5061;transport=tls;lr>, <sip:{t}@edge.example.com:5061;transport=tls;lr>\r\n\
            Max-Forwards: 70\r\nFrom: <sip:bob@example.com>;tag=b2\r\nTo: <sip:alice@example.com>;tag=a1\r\n\
            Call-ID: call1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let Action::ToFlow {
        flow, bytes, proof, ..
    } = p.handle(&director, &msg(&bye(tok.as_str())))
    else {
        panic!()
    };
    assert_eq!((flow, proof), (FlowId(1), Proof::Dialog));
    let text = String::from_utf8(bytes).unwrap();
    assert!(!text.contains("Route:"), "both own routes popped: {text}");
    assert!(text.contains("Via: SIP/2.0/TLS edge.example.com:5061;branch=z9hG4bKse"));
    let mut forged = tok.as_str().to_string();
    forged.replace_range(5..6, if &forged[5..6] == "0" { "1" } else { "0" });
    assert_reject(&p, &director, &bye(&forged), Why::InvalidFlowToken);
    assert_reject(
        &p,
        &director,
        &bye(tok.as_str()).replace("Call-ID: call1", "Call-ID: other"),
        Why::InvalidFlowToken,
    );
    // A Via token is no route.
    let via = p.keys().token(TokenKind::Via, FlowId(1));
    assert_reject(&p, &director, &bye(via.as_str()), Why::InvalidFlowToken);
    let no_route = bye(tok.as_str()).replace("Route:", "X-Route:");
    assert_reject(&p, &director, &no_route, Why::NoRoute);
}

/// An out-of-dialog OPTIONS from outside to `ruri`, with `extra` header lines.
fn options_to(ruri: &str, extra: &str) -> String {
    format!(
        "OPTIONS {ruri} SIP/2.0\r\n\
        Via: SIP/2.0/TLS 192.168.1.5:50123;branch=z9hG4bKopt1\r\n\
        {extra}Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n\
        Call-ID: opt1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn nothing_from_outside_is_steered_toward_the_inside() {
    let p = proxy();
    let user = flow(&p, 1, Side::External, "203.0.113.7:40000");
    // Served domains (standard ports) and exactly the external listener pass.
    for ok in [
        "sip:bob@example.com",
        "sip:bob@EXAMPLE.com:5061",
        "sips:example.com",
        "sip:edge.example.com",
        "sip:edge.example.com:5061;transport=tls",
        "sip:203.0.113.1:5061",
    ] {
        forwarded(&p, &user, &options_to(ok, ""));
    }
    // The edge's internal address, its own hosts on other ports, served domains on
    // other ports, other domains.
    for bad in [
        "sip:10.0.0.10",
        "sip:10.0.0.10:5061",
        "sip:10.0.0.10:9095",
        "sip:edge.example.com:9095",
        "sip:203.0.113.1:22",
        "sip:bob@example.com:9095",
        "sip:bob@evil.example",
        "sip:bob@198.51.100.5",
        "tel:+19005551234",
    ] {
        assert_reject(&p, &user, &options_to(bad, ""), Why::DomainNotServed);
    }
    // maddr redirects: refused in the Request-URI and in any Route.
    assert_reject(
        &p,
        &user,
        &options_to("sip:bob@example.com;maddr=198.51.100.5", ""),
        Why::MaddrNotAllowed,
    );
    assert_reject(
        &p,
        &user,
        &options_to(
            "sip:bob@example.com",
            "Route: <sip:edge.example.com;lr;MADDR=10.0.0.99>\r\n",
        ),
        Why::MaddrNotAllowed,
    );
    // A Route left after the edge's own, without a proven dialog.
    for route in [
        "Route: <sip:198.51.100.5;lr>\r\n",
        "Route: <sip:edge.example.com:5061;lr>, <sip:198.51.100.5;lr>\r\n",
        "Route: <sip:edge.example.com:9095;lr>\r\n",
    ] {
        assert_reject(
            &p,
            &user,
            &options_to("sip:bob@example.com", route),
            Why::RouteNotAllowed,
        );
    }
    // The edge's own Route without a token (an outbound proxy) is popped.
    let (text, proof) = forwarded(
        &p,
        &user,
        &options_to(
            "sip:bob@example.com",
            "Route: <sip:edge.example.com:5061;lr>\r\n",
        ),
    );
    assert_eq!(proof, Proof::None);
    assert!(!text.contains("Route:"));
    // In a proven dialog, further Routes pass, but none naming the edge, and the
    // Request-URI may not name the edge's other addresses.
    let token = rr(&p, TokenKind::DialogFromOutside, FlowId(1), "call1", "a1");
    let inside_rr = user_bye(token.as_str()).replace(
        "transport=tls;lr>\r\n",
        "transport=tls;lr>, <sip:fe1.example.com;lr>\r\n",
    );
    let (text, _) = forwarded(&p, &user, &inside_rr);
    assert!(
        text.contains("Route: <sip:fe1.example.com;lr>\r\n"),
        "{text}"
    );
    let to_edge = user_bye(token.as_str()).replace(
        "transport=tls;lr>\r\n",
        "transport=tls;lr>, <sip:10.0.0.10:9095;lr>\r\n",
    );
    assert_reject(&p, &user, &to_edge, Why::RouteNotAllowed);
    // The edge's own SIP listener again, without a token of the edge's: refused (the inside
    // would hand the request back to the edge as its own). With one (a call between two
    // of the edge's remote users passes the edge twice), it passes, to be checked there.
    for hairpin in ["10.0.0.10:5061", "edge.example.com:5061", "10.0.0.10"] {
        let back = user_bye(token.as_str()).replace(
            "transport=tls;lr>\r\n",
            &format!("transport=tls;lr>, <sip:fe1.example.com;lr>, <sip:{hairpin};lr>\r\n"),
        );
        assert_reject(&p, &user, &back, Why::RouteNotAllowed);
    }
    let second = rr(&p, TokenKind::DialogFromInside, FlowId(2), "call1", "a1");
    let second = second.as_str();
    let second_pass = user_bye(token.as_str()).replace(
        "transport=tls;lr>\r\n",
        &format!(
            "transport=tls;lr>, <sip:fe1.example.com;lr>, <sip:{second}@10.0.0.10:5061;transport=tls;lr>\r\n"
        ),
    );
    forwarded(&p, &user, &second_pass);
    // The same host in every spelling a next hop's resolver takes for it.
    for spelling in [
        "[::ffff:10.0.0.10]",
        "[::FFFF:a00:a]",
        "[0:0:0:0:0:ffff:10.0.0.10]",
        "[::ffff:0:10.0.0.10]",
        "[64:ff9b::a00:a]",
        "012.0.0.012",
        "167772170",
        "0xa00000a",
        "10.10",
        "10.0.0.10.",
        "EDGE.example.com.",
    ] {
        let to_edge = user_bye(token.as_str()).replace(
            "transport=tls;lr>\r\n",
            &format!("transport=tls;lr>, <sip:{spelling}:9095;lr>\r\n"),
        );
        assert_reject(&p, &user, &to_edge, Why::RouteNotAllowed);
        let ruri_edge = user_bye(token.as_str()).replace(
            "BYE sip:bob@10.0.0.30:5061;transport=tls",
            &format!("BYE sip:bob@{spelling}:9095"),
        );
        assert_reject(&p, &user, &ruri_edge, Why::RequestUriNotAllowed);
    }
    let ruri_edge = user_bye(token.as_str()).replace(
        "BYE sip:bob@10.0.0.30:5061;transport=tls",
        "BYE sip:bob@10.0.0.10:9095",
    );
    assert_reject(&p, &user, &ruri_edge, Why::RequestUriNotAllowed);
    // A next-hop member that shares the edge's address (a lab on one host) is no
    // service of the edge's own: its Record-Route and Contact pass.
    let director = user_bye(token.as_str())
        .replace(
            "transport=tls;lr>\r\n",
            "transport=tls;lr>, <sip:10.0.0.10:5070;lr>\r\n",
        )
        .replace("BYE sip:bob@10.0.0.30:5061", "BYE sip:bob@10.0.0.10:5070");
    forwarded(&p, &user, &director);
}

#[test]
fn host_addresses_are_read_as_resolvers_read_them() {
    use crate::core::sip::proxy::host_address;
    let v4 = |s: &str| Some(IpAddr::from(s.parse::<std::net::Ipv4Addr>().unwrap()));
    for (written, meant) in [
        ("10.0.0.10", v4("10.0.0.10")),
        ("10.0.0.010", v4("10.0.0.8")),
        ("167772170", v4("10.0.0.10")),
        ("0xa00000a", v4("10.0.0.10")),
        ("10.10", v4("10.0.0.10")),
        ("10.0.10", v4("10.0.0.10")),
        ("127.1", v4("127.0.0.1")),
        ("0x7f.1", v4("127.0.0.1")),
        ("10.0.0.10.", v4("10.0.0.10")),
        ("256.0.0.1", None),
        ("10.0.0.0x100", None),
        ("10.0.65536", None),
        ("4294967296", None),
        ("08", None),
        ("edge.example.com", None),
        ("1e100", None),
        ("10.+0.0.10", None),
        ("10.0.0.1.2", None),
        ("", None),
        ("0x", Some(IpAddr::from([0, 0, 0, 0]))),
        ("[::1]", Some("::1".parse().unwrap())),
        ("[fe80::1%eth0]", Some("fe80::1".parse().unwrap())),
        (
            "[::ffff:10.0.0.10]",
            Some("::ffff:10.0.0.10".parse().unwrap()),
        ),
        ("[10.0.0.10]", None),
    ] {
        assert_eq!(host_address(written.as_bytes()), meant, "{written}");
    }
}

#[test]
fn the_real_source_is_always_recorded() {
    let p = proxy();
    let user = flow(&p, 1, Side::External, "203.0.113.7:40000");
    let via = |v: &str| INVITE.replace("192.168.1.5:50123;branch=z9hG4bKclient1;rport", v);
    for (written, expected) in [
        // A flag `received` (no value) is replaced, not left empty.
        (
            "192.168.1.5:50123;received;branch=z9hG4bKc",
            "192.168.1.5:50123;received=203.0.113.7;branch=z9hG4bKc",
        ),
        // The sender's own value is never kept.
        (
            "192.168.1.5:50123;branch=z9hG4bKc;received=10.0.0.1",
            "192.168.1.5:50123;branch=z9hG4bKc;received=203.0.113.7",
        ),
        // Even when the sent-by is the source.
        (
            "203.0.113.7:40000;branch=z9hG4bKc;received=10.0.0.1",
            "203.0.113.7:40000;branch=z9hG4bKc;received=203.0.113.7",
        ),
        // sent-by differs: added.
        (
            "192.168.1.5;branch=z9hG4bKc",
            "192.168.1.5;branch=z9hG4bKc;received=203.0.113.7",
        ),
        // sent-by is the source, nothing asked: nothing added.
        (
            "203.0.113.7:40000;branch=z9hG4bKc",
            "203.0.113.7:40000;branch=z9hG4bKc",
        ),
    ] {
        let (text, _) = forwarded(&p, &user, &via(written));
        assert!(
            text.contains(&format!("Via: SIP/2.0/TLS {expected}\r\n")),
            "{written}: {text}"
        );
    }
    let v6 = flow(&p, 4, Side::External, "[2001:db8::7]:40000");
    let (text, _) = forwarded(&p, &v6, &via("[2001:db8::1];received;branch=z9hG4bKc"));
    assert!(
        text.contains("Via: SIP/2.0/TLS [2001:db8::1];received=2001:db8::7;branch=z9hG4bKc\r\n"),
        "{text}"
    );
}

#[test]
fn trust_domain_headers_never_cross_from_outside() {
    let p = proxy();
    let user = flow(&p, 1, Side::External, "203.0.113.7:40000");
    let injected = [
        "P-Asserted-Identity: <sip:ceo@example.com>",
        "p-preferred-identity: <sip:ceo@example.com>",
        "Remote-Party-ID: <sip:ceo@example.com>;screen=yes;party=calling",
        "P-Charging-Vector: icid-value=1234",
        "P-Asserted-Service: urn:urn-7:3gpp-service.ims.icsi.mmtel",
        "P-Served-User: <sip:ceo@example.com>;sescase=orig",
        "ms-asserted-verification-level: ms-source-verified-user=verified",
        "MS-Split-Domain-Info: ms-traffic-type=SplitIntra",
        "ms-edge-proxy-message-trust: ms-source-type=InternalUser",
        "ms-user-logon-data: RemoteUser",
        "X-Internal-Auth: yes",
    ];
    let text: String = injected.iter().map(|h| format!("{h}\r\n")).collect();
    let invite = INVITE.replace("X-Unknown:", &format!("{text}X-Unknown:"));
    let (out, _) = forwarded(&p, &user, &invite);
    for h in injected {
        assert!(!out.contains(h), "{h} crossed: {out}");
    }
    assert!(out.contains("X-Unknown:   kept   as is\r\n"));
    // Responses from outside too.
    p.set_strip_headers(&["X-Other".into()]);
    let (out, _) = forwarded(
        &p,
        &user,
        &INVITE.replace("X-Unknown:", "x-other: 1\r\nX-Unknown:"),
    );
    assert!(!out.contains("x-other"), "{out}");
}
