//! The logic behind the fuzz targets (linkerd's `fuzz_logic` idea): the targets under `fuzz/`
//! call these, and `tests/corpus.rs` replays the committed corpora through the same
//! functions on the stable toolchain, so CI checks every corpus input on every run.
//!
//! Each function must return normally for any input; a panic is a bug in the edge. Beyond
//! "no panic", they assert the invariants that make the edge a firewall: offsets stay in
//! bounds, and whatever the edge forwards, its own validator accepts.

use bytes::Bytes;

use crate::core::sip::frame::{Frame, FrameLimits, Framer};
use crate::core::sip::message::Message;
use crate::core::sip::parse::HeadLimits;
use crate::core::sip::proxy::{Action, Flow, Proxy, ProxyConfig, Side, SideAddr};
use crate::core::sip::token::{FlowId, FlowKeys};

const LIMITS: FrameLimits = FrameLimits {
    head: HeadLimits {
        max_headers: 128,
        max_line_bytes: 4096,
    },
    max_header_bytes: 16384,
    max_body_bytes: 65536,
};

/// Stream framing fed in chunks whose sizes come from the input itself; every complete
/// message is validated.
pub fn frame(data: &[u8]) {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut framer = Framer::new();
    let mut buf: Vec<u8> = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match framer.check(&buf, &LIMITS) {
                Ok(Some(Frame::Ping)) => {
                    buf.drain(..4);
                }
                Ok(Some(Frame::Pong)) => {
                    buf.drain(..2);
                }
                Ok(Some(Frame::Message { head, len })) => {
                    assert!(len <= buf.len(), "frame longer than the buffer");
                    assert!(head.len <= len, "head longer than the frame");
                    let raw = Bytes::copy_from_slice(buf.get(..len).unwrap_or_default());
                    buf.drain(..len);
                    if let Ok(msg) = Message::validate(raw, head) {
                        check_spans(&msg);
                    }
                }
                Ok(None) => break,
                Err(why) => {
                    let _ = why.status();
                    let _ = crate::core::sip::reject::response(&buf, 400, "x", b"");
                    return;
                }
            }
        }
    }
}

/// Whole-message parsing and validation.
pub fn validate(data: &[u8]) {
    match Message::parse(Bytes::copy_from_slice(data), &LIMITS.head) {
        Ok(msg) => check_spans(&msg),
        Err(why) => {
            if let Some((status, reason)) = why.status() {
                let _ = crate::core::sip::reject::response(data, status, reason, b"");
            }
        }
    }
}

/// What the edge forwards, it accepts again, with only its own edits.
pub fn roundtrip(data: &[u8]) {
    let Ok(msg) = Message::parse(Bytes::copy_from_slice(data), &LIMITS.head) else {
        return;
    };
    let proxy = proxy();
    let from = Flow {
        id: FlowId(1),
        side: Side::External,
        remote: std::net::SocketAddr::from(([203, 0, 113, 7], 40000)),
        token: proxy.keys().token(FlowId(1)),
    };
    match proxy.handle(&from, &msg) {
        Action::ToPool { bytes, .. } => {
            let again = match Message::parse(Bytes::from(bytes.clone()), &relaxed_limits()) {
                Ok(m) => m,
                Err(why) => panic!(
                    "the edge forwarded what it rejects ({why:?}):\n{}",
                    String::from_utf8_lossy(&bytes)
                ),
            };
            assert_eq!(
                again.vias.len(),
                msg.vias.len() + 1,
                "exactly one Via added"
            );
            assert_eq!(again.bytes(again.call_id), msg.bytes(msg.call_id));
            assert_eq!(again.cseq, msg.cseq);
            assert_eq!(
                again.bytes(again.body),
                msg.bytes(msg.body),
                "body byte-exact"
            );
            let mf = |m: &Message| m.max_forwards.map(|(_, n)| n);
            assert_eq!(
                mf(&again),
                mf(&msg).map(|n| n - 1),
                "Max-Forwards decremented"
            );
            assert!(
                !again.head.headers.iter().any(|h| h.name.carries_trust()),
                "trust headers stripped"
            );
        }
        Action::Reject(why) => {
            let _ = proxy.answer(&msg.raw, why, Some(&msg));
        }
        Action::ToFlow { .. } => {}
    }
}

fn relaxed_limits() -> HeadLimits {
    // The edge adds up to three header lines; the re-check must not fail on the count alone.
    HeadLimits {
        max_headers: LIMITS.head.max_headers + 3,
        max_line_bytes: LIMITS.head.max_line_bytes * 2,
    }
}

fn proxy() -> Proxy {
    Proxy::new(
        ProxyConfig {
            external: SideAddr {
                host: "edge.example.com".into(),
                port: 5061,
            },
            internal: SideAddr {
                host: "10.0.0.10".into(),
                port: 5061,
            },
            own_hosts: vec!["edge.example.com".into(), "10.0.0.10".into()],
            served_domains: vec!["example.com".into()],
        },
        FlowKeys::new(&[7; 32], Default::default()),
    )
}

fn check_spans(msg: &Message) {
    let n = msg.raw.len();
    let ok = |s: crate::core::sip::parse::Span| s.start <= s.end && s.end <= n;
    assert!(ok(msg.body) && ok(msg.call_id) && ok(msg.cseq_method));
    for h in &msg.head.headers {
        assert!(ok(h.line) && ok(h.value) && ok(h.name_span));
        assert!(h.line.start <= h.value.start && h.value.end <= h.line.end);
    }
    for v in &msg.vias {
        assert!(ok(v.value) && ok(v.host));
    }
}

/// Topology text: never panics; a topology that resolves satisfies the cross-checks, and one
/// that does not names at least one problem, each with a line inside the text.
pub fn topology(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = crate::topology::StateEnv::default();
    match crate::topology::parse(text, None, &env) {
        Ok(t) => {
            assert!(!t.next_hop.members.is_empty());
            assert_ne!(t.external.sip_bind.ip(), t.internal.sip_bind.ip());
            assert!(!t.edge.sip_domains.is_empty());
            assert!(t.next_hop.probe.timeout < t.next_hop.probe.interval);
            assert!(t.limits.max_line_bytes <= t.limits.max_header_bytes);
        }
        Err(e) => {
            assert!(!e.problems.is_empty());
            let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
            for p in &e.problems {
                assert!(
                    p.line <= lines,
                    "problem line {} beyond the text ({lines} lines)",
                    p.line
                );
            }
        }
    }
}
