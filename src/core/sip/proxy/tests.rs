use super::*;

#[test]
fn numbers_are_written_as_std_formats_them() {
    for n in [0u64, 1, 9, 10, 69, 65535, u64::MAX] {
        let mut out = Vec::new();
        push_decimal(&mut out, n);
        assert_eq!(out, n.to_string().into_bytes());
        out.clear();
        push_hex16(&mut out, n);
        assert_eq!(out, format!("{n:016x}").into_bytes());
    }
}
use crate::core::sip::parse::HeadLimits;
use bytes::Bytes;

const LIMITS: HeadLimits = HeadLimits {
    max_headers: 64,
    max_line_bytes: 4096,
};

/// The fuzz targets' and benches' example.com edge, plus an external address, an
/// operator-named header to strip and a next-hop member on the edge's own internal host.
fn proxy() -> Proxy {
    let mut cfg = crate::fuzz_logic::proxy().config().clone();
    cfg.own_hosts.push("203.0.113.1".into());
    cfg.external_hosts.push("203.0.113.1".into());
    cfg.strip_headers = vec!["x-internal-auth".into()];
    cfg.next_hops = vec!["10.0.0.10:5070".parse().unwrap()];
    Proxy::new(cfg, FlowKeys::new(&[7; 32]))
}

fn flow(p: &Proxy, id: u64, side: Side, remote: &str) -> Flow {
    Flow::new(p.keys(), FlowId(id), side, remote.parse().unwrap())
}

fn msg(s: &str) -> Message {
    Message::parse(Bytes::copy_from_slice(s.as_bytes()), &LIMITS).unwrap()
}

/// The Record-Route token of a dialog.
fn rr(p: &Proxy, kind: TokenKind, flow: FlowId, call_id: &str, tag: &str) -> FlowToken {
    p.keys().dialog_token(
        kind,
        flow,
        DialogBinding {
            call_id: call_id.as_bytes(),
            initiator_tag: tag.as_bytes(),
        },
    )
}

fn assert_reject(p: &Proxy, f: &Flow, text: &str, why: Why) {
    match p.handle(f, &msg(text)) {
        Action::Reject(w) => assert_eq!(w, why, "{text}"),
        other => panic!("{other:?} for {text}"),
    }
}

fn forwarded(p: &Proxy, f: &Flow, text: &str) -> (String, Proof) {
    match p.handle(f, &msg(text)) {
        Action::ToPool { bytes, proof, .. } => (String::from_utf8(bytes).unwrap(), proof),
        other => panic!("not forwarded ({other:?}): {text}"),
    }
}

const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
    Via: SIP/2.0/TLS 192.168.1.5:50123;branch=z9hG4bKclient1;rport\r\n\
    Max-Forwards: 70\r\n\
    From: <sip:alice@example.com>;tag=a1\r\n\
    To: <sip:bob@example.com>\r\n\
    Call-ID: call1\r\n\
    CSeq: 1 INVITE\r\n\
    P-Asserted-Identity: <sip:ceo@example.com>\r\n\
    X-Unknown:   kept   as is\r\n\
    Content-Length: 3\r\n\r\nabc";

#[test]
fn inbound_invite_gets_via_record_route_and_edits() {
    let p = proxy();
    let f = flow(&p, 1, Side::External, "203.0.113.7:40000");
    let Action::ToPool { bytes, tx, proof } = p.handle(&f, &msg(INVITE)) else {
        panic!("not forwarded")
    };
    assert_eq!(proof, Proof::None);
    let text = String::from_utf8(bytes).unwrap();
    let tok = f.token.as_str();
    let rr = rr(&p, TokenKind::DialogFromOutside, FlowId(1), "call1", "a1");
    let rr = rr.as_str();
    let (key, method) = tx.unwrap();
    let expected = format!(
        "INVITE sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/TLS 10.0.0.10:5061;branch=z9hG4bKse{:016x};ftok={tok}\r\n\
        Record-Route: <sip:{rr}@10.0.0.10:5061;transport=tls;lr>, <sip:{rr}@edge.example.com:5061;transport=tls;lr>\r\n\
        Via: SIP/2.0/TLS 192.168.1.5:50123;branch=z9hG4bKclient1;rport=40000;received=203.0.113.7\r\n\
        Max-Forwards: 69\r\n\
        From: <sip:alice@example.com>;tag=a1\r\n\
        To: <sip:bob@example.com>\r\n\
        Call-ID: call1\r\n\
        CSeq: 1 INVITE\r\n\
        X-Unknown:   kept   as is\r\n\
        Content-Length: 3\r\n\r\nabc",
        key.branch
    );
    assert_eq!(text, expected);
    assert_eq!(method, Method::Invite);
    // The forwarded message is itself valid.
    msg(&text);
}

/// What the Director answers to a forwarded request: all Vias, To tag added.
fn answer_to(fwd: &str, status: &str, call_id: &str) -> String {
    let vias: String = fwd
        .lines()
        .filter(|l| l.starts_with("Via:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    format!(
        "SIP/2.0 {status}\r\n{vias}From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b2\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn response_from_inside_goes_back_to_the_client_flow() {
    let p = proxy();
    let client = flow(&p, 1, Side::External, "203.0.113.7:40000");
    let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
    let (fwd, _) = forwarded(&p, &client, INVITE);
    let Action::ToPool { tx, .. } = p.handle(&client, &msg(INVITE)) else {
        panic!()
    };
    let Action::ToFlow {
        flow,
        bytes,
        completes,
        ..
    } = p.handle(&director, &msg(&answer_to(&fwd, "200 OK", "call1")))
    else {
        panic!()
    };
    assert_eq!(flow, FlowId(1));
    assert_eq!(completes, Some(tx.unwrap().0));
    let back = String::from_utf8(bytes).unwrap();
    assert!(back.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 192.168.1.5:50123;"));
    assert_eq!(back.matches("Via:").count(), 1);
}

#[test]
fn only_responses_to_what_the_edge_forwarded_go_back() {
    let p = proxy();
    let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
    // A request from the inside to the remote user on flow 1 (by its Path token).
    let path = p.keys().token(TokenKind::Path, FlowId(1));
    let options = format!(
        "OPTIONS sip:alice@192.168.1.5:50123;transport=tls SIP/2.0\r\n\
        Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir7\r\n\
        Route: <sip:{}@10.0.0.10:5061;transport=tls;lr>\r\n\
        Max-Forwards: 70\r\nFrom: <sip:bob@example.com>;tag=b2\r\nTo: <sip:alice@example.com>\r\n\
        Call-ID: opt7\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        path.as_str()
    );
    let Action::ToFlow {
        flow: to, bytes, ..
    } = p.handle(&director, &msg(&options))
    else {
        panic!("not routed by Path")
    };
    assert_eq!(to, FlowId(1));
    let sent = String::from_utf8(bytes).unwrap();
    let vias: String = sent
        .lines()
        .filter(|l| l.starts_with("Via:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let response = |call_id: &str, vias: &str| {
        format!(
            "SIP/2.0 200 OK\r\n{vias}From: <sip:bob@example.com>;tag=b2\r\nTo: <sip:alice@example.com>;tag=x\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // The remote user on flow 1 answers: back to the Director.
    let user = flow(&p, 1, Side::External, "203.0.113.7:40000");
    let Action::ToFlow { flow: to, .. } = p.handle(&user, &msg(&response("opt7", &vias))) else {
        panic!("the answer did not go back")
    };
    assert_eq!(to, FlowId(2));
    // The same Vias on another connection, another Call-ID, another sender branch,
    // or a made-up branch: not an answer to anything the edge sent.
    let other_user = flow(&p, 3, Side::External, "203.0.113.8:40000");
    assert_reject(
        &p,
        &other_user,
        &response("opt7", &vias),
        Why::StrayResponse,
    );
    assert_reject(
        &p,
        &user,
        &response("forged-call", &vias),
        Why::StrayResponse,
    );
    let other_tx = vias.replace("z9hG4bKdir7", "z9hG4bKdir8");
    assert_reject(&p, &user, &response("opt7", &other_tx), Why::StrayResponse);
    let top = vias.lines().next().unwrap();
    let branch = top
        .split("branch=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let made_up = vias.replace(branch, "z9hG4bKse0123456789abcdef");
    assert_reject(&p, &user, &response("opt7", &made_up), Why::StrayResponse);
    // A forged flow token, or the edge's Via of the other side.
    let forged = p.keys().token(TokenKind::Via, FlowId(1));
    let bad = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 10.0.0.10:5061;branch=z9hG4bKse0000000000000001;ftok={}\r\nVia: SIP/2.0/TLS 192.0.2.1;branch=z9hG4bKx\r\nFrom: <sip:a@example.com>;tag=a\r\nTo: <sip:b@example.com>;tag=b\r\nCall-ID: c\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        forged.as_str().replace('a', "b")
    );
    assert_reject(&p, &director, &bad, Why::StrayResponse);
    assert_reject(
        &p,
        &director,
        &bad.replace("10.0.0.10:5061", "10.0.0.99:5061"),
        Why::StrayResponse,
    );
}

#[test]
fn an_rfc_2543_transaction_is_keyed_by_via_call_id_from_tag_and_cseq() {
    let p = proxy();
    let client = flow(&p, 1, Side::External, "203.0.113.7:40000");
    let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
    for branch in [";branch=390skdjuw", ""] {
        let old = INVITE.replace(";branch=z9hG4bKclient1", branch);
        let (fwd, _) = forwarded(&p, &client, &old);
        let Action::ToFlow { flow, .. } =
            p.handle(&director, &msg(&answer_to(&fwd, "200 OK", "call1")))
        else {
            panic!("the answer to an RFC 2543 request did not go back: {fwd}")
        };
        assert_eq!(flow, FlowId(1));
        // Its CANCEL gets the INVITE's branch (RFC 3261 §9.1), without any state.
        let cancel = old
            .replace("INVITE sip:bob@example.com", "CANCEL sip:bob@example.com")
            .replace("1 INVITE", "1 CANCEL");
        let Action::ToPool { tx, .. } = p.handle(&client, &msg(&cancel)) else {
            panic!()
        };
        let Action::ToPool { tx: invite_tx, .. } = p.handle(&client, &msg(&old)) else {
            panic!()
        };
        assert_eq!(tx.unwrap().0.branch, invite_tx.unwrap().0.branch);
        // Another CSeq is another transaction.
        let other = answer_to(&fwd, "200 OK", "call1").replace("CSeq: 1", "CSeq: 2");
        assert_reject(&p, &director, &other, Why::StrayResponse);
    }
}

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
    let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
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

#[test]
fn tidy_ups_content_length_and_mras_detection() {
    let p = proxy();
    let user = flow(&p, 1, Side::External, "203.0.113.7:40000");
    let (out, _) = forwarded(
        &p,
        &user,
        &INVITE.replace("Content-Length: 3", "Content-Length: 0003"),
    );
    assert!(out.contains("\r\nContent-Length: 3\r\n\r\nabc"), "{out}");
    let mras = |ct: &str, ruri: &str| {
        format!(
            "SERVICE {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS 192.168.1.5:50123;branch=z9hG4bKs1\r\n\
            Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:alice@example.com>\r\n\
            Call-ID: s1\r\nCSeq: 1 SERVICE\r\nContent-Type: {ct}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    for ct in [
        "application/msrtc-media-relay-auth+xml",
        "Application/MSRTC-Media-Relay-Auth+XML; charset=utf-8",
        "text/plain, application/msrtc-media-relay-auth+xml",
    ] {
        assert_reject(
            &p,
            &user,
            &mras(ct, "sip:edge.example.com"),
            Why::CredentialsFromOutside,
        );
        let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
        assert!(matches!(
            p.handle(&director, &msg(&mras(ct, "sip:10.0.0.10"))),
            Action::Credentials
        ));
    }
}

#[test]
fn register_gets_path_and_policy_rejects() {
    let p = proxy();
    let f = flow(&p, 1, Side::External, "203.0.113.7:40000");
    let reg = INVITE
        .replace("INVITE sip:bob@example.com", "REGISTER sip:example.com")
        .replace("1 INVITE", "1 REGISTER");
    let (text, _) = forwarded(&p, &f, &reg);
    let path = p.keys().token(TokenKind::Path, FlowId(1));
    assert!(text.contains(&format!(
        "Path: <sip:{}@10.0.0.10:5061;transport=tls;lr>\r\n",
        path.as_str()
    )));
    assert!(!text.contains("Record-Route"));

    let other = INVITE.replace("sip:bob@example.com SIP", "sip:bob@example.org SIP");
    assert_reject(&p, &f, &other, Why::DomainNotServed);
    let mf0 = INVITE.replace("Max-Forwards: 70", "Max-Forwards: 0");
    assert_reject(&p, &f, &mf0, Why::TooManyHops);
    let looped = INVITE.replace(
        "Max-Forwards",
        "Via: SIP/2.0/TLS edge.example.com;branch=z9hG4bKx\r\nMax-Forwards",
    );
    assert_reject(&p, &f, &looped, Why::Loop);
    let pr = INVITE.replace("Max-Forwards", "Proxy-Require: foo\r\nMax-Forwards");
    let m = msg(&pr);
    let Action::Reject(why) = p.handle(&f, &m) else {
        panic!()
    };
    assert_eq!(why, Why::BadExtension);
    let answer = String::from_utf8(p.answer(&m.raw, why, Some(&m)).unwrap()).unwrap();
    assert!(answer.starts_with("SIP/2.0 420 Bad Extension\r\n"));
    assert!(answer.contains("Unsupported: foo\r\n"));
}

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
    let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
    let invite = "INVITE sip:bob@partner.example SIP/2.0\r\n\
        Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir1\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:alice@example.com>;tag=a1\r\n\
        To: <sip:bob@partner.example>\r\n\
        Call-ID: out1\r\n\
        CSeq: 1 INVITE\r\n\
        Content-Length: 0\r\n\r\n";
    let Action::ToPartner { partner, bytes, .. } = p.handle(&director, &msg(invite)) else {
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
    let bye = format!(
        "BYE sip:bob@198.51.100.60:5061;transport=tls SIP/2.0\r\n\
        Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir2\r\n\
        Route: <sip:{t}@10.0.0.10:5061;transport=tls;lr>, <sip:{t}@edge.example.com:5061;transport=tls;lr>, <sip:sip.partner.example:5061;transport=tls;lr>\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:alice@example.com>;tag=a1\r\n\
        To: <sip:bob@partner.example>;tag=b9\r\n\
        Call-ID: out1\r\n\
        CSeq: 2 BYE\r\n\
        Content-Length: 0\r\n\r\n",
        t = partner_token.as_str()
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
    let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
    let partner = partner_flow(&p, 5);
    let message = "MESSAGE sip:bob@partner.example SIP/2.0\r\n\
        Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir1\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:alice@example.com>;tag=a1\r\n\
        To: <sip:bob@partner.example>\r\n\
        Call-ID: out1\r\n\
        CSeq: 1 MESSAGE\r\n\
        Content-Length: 0\r\n\r\n";
    let Action::ToPartner { bytes, .. } = p.handle(&director, &msg(message)) else {
        panic!()
    };
    let sent = String::from_utf8(bytes).unwrap();
    let vias: String = sent
        .lines()
        .filter(|l| l.starts_with("Via:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
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
    let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");
    let invite = "INVITE sip:carol@c.example SIP/2.0\r\n\
        Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir1\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:alice@example.com>;tag=a1\r\n\
        To: <sip:carol@c.example>\r\n\
        Call-ID: disc1\r\n\
        CSeq: 1 INVITE\r\n\
        Content-Length: 0\r\n\r\n";
    let Action::ToDiscovered { target, bytes, .. } = p.handle(&director, &msg(invite)) else {
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
        format!(
            "BYE sip:carol@198.51.100.60:5061;transport=tls SIP/2.0\r\n\
            Via: SIP/2.0/TLS 10.0.0.20:5061;branch=z9hG4bKdir2\r\n\
            Route: <sip:{t}@10.0.0.10:5061;transport=tls;lr>, <sip:{t}@edge.example.com:5061;transport=tls;lr>, <sip:{route_host}:5062;transport=tls;lr>\r\n\
            Max-Forwards: 70\r\n\
            From: <sip:alice@example.com>;tag=a1\r\n\
            To: <sip:carol@c.example>;tag=c9\r\n\
            Call-ID: disc1\r\n\
            CSeq: 2 BYE\r\n\
            Content-Length: 0\r\n\r\n",
            t = token.as_str()
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
    assert_reject(&federated(), &director, invite, Why::NoRoute);
}
