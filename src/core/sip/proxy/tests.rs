//! The proxy's unit tests: the example.com edge and its fixtures here, the tests by theme
//! below.

use super::*;
use crate::core::sip::parse::HeadLimits;
use bytes::Bytes;

mod federation;
mod transactions;
mod trust;

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
    Flow::new(&p.keys(), FlowId(id), side, remote.parse().unwrap())
}

/// The Director's connection to the internal listener (flow 2).
fn director(p: &Proxy) -> Flow {
    flow(p, 2, Side::Internal, "10.0.0.20:5061")
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

/// The Via lines of a sent request, each with its CRLF: what an answer to it carries.
fn vias_of(sent: &str) -> String {
    sent.lines()
        .filter(|l| l.starts_with("Via:"))
        .map(|l| format!("{l}\r\n"))
        .collect()
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
