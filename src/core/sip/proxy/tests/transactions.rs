//! Requests and responses through the edge: what an inbound INVITE gets (Via,
//! Record-Route, edits), responses routed back only for what the edge forwarded (RFC 2543
//! transactions too), tidy-ups, REGISTER's Path, and the wire's number formats.

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
    let vias = vias_of(fwd);
    format!(
        "SIP/2.0 {status}\r\n{vias}From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b2\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn response_from_inside_goes_back_to_the_client_flow() {
    let p = proxy();
    let client = flow(&p, 1, Side::External, "203.0.113.7:40000");
    let director = director(&p);
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
    let director = director(&p);
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
    let vias = vias_of(&sent);
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
    let director = director(&p);
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
        let director = director(&p);
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
