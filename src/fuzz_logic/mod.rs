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
                    // What SIP capture copies of a framed message, refused or not.
                    capture_copy(&raw);
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

/// SIP capture's copy of one framed message: its Call-ID and header block are within
/// it, and the HEP message encodes whole (its length field is its length) or not at all.
fn capture_copy(raw: &[u8]) {
    use crate::core::hep;
    let id = hep::call_id(raw);
    if let Some(id) = id {
        assert!(id.len() <= hep::MAX_CORRELATION_ID && !id.is_empty());
    }
    let head = hep::header_block(raw);
    assert!(raw.starts_with(head));
    for payload in [raw, head] {
        let mut out = Vec::new();
        let c = hep::Captured {
            src: std::net::SocketAddr::from(([203, 0, 113, 7], 5061)),
            dst: std::net::SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], 5061)),
            transport: hep::Transport::Tls,
            unix_micros: 1,
            agent_id: 1,
            auth_key: None,
            correlation_id: id,
            payload,
        };
        if hep::encode(&c, &mut out).is_ok() {
            let len = out
                .get(4..6)
                .and_then(|l| <[u8; 2]>::try_from(l).ok())
                .map(|l| usize::from(u16::from_be_bytes(l)));
            assert_eq!(len, Some(out.len()));
        } else {
            assert!(out.is_empty());
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
    let from = Flow::new(
        &proxy.keys(),
        FlowId(1),
        Side::External,
        std::net::SocketAddr::from(([203, 0, 113, 7], 40000)),
    );
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
        Action::ToFlow { .. }
        | Action::ToPartner { .. }
        | Action::ToDiscovered { .. }
        | Action::Credentials => {}
    }
    federated_roundtrip(&msg);
}

/// The same message through a federating edge (a listed partner, open discovery), from a
/// partner's connection, a discovered edge's, a remote user's and the inside: whatever is
/// forwarded parses again, and what goes inside carries at most the edge's one trust stamp.
fn federated_roundtrip(msg: &Message) {
    use crate::core::sip::federation::{Federation, Partner};
    let mut cfg = proxy().config().clone();
    let mut federation = Federation::new(vec![Partner {
        fqdn: Some("sip.partner.example".into()),
        domains: vec!["partner.example".into()],
        rate: crate::core::firewall::Rate {
            per_sec: 10,
            burst: 10,
        },
        max_dialogs: 10,
    }]);
    federation.discovery = true;
    cfg.federation = federation;
    let proxy = Proxy::new(cfg, FlowKeys::new(&[7; 32]));
    let flow = |id: u64, side, partner, certificate: Option<&[&str]>| Flow {
        partner,
        certificate: certificate.map(|c| c.iter().map(|s| s.to_string()).collect()),
        ..Flow::new(
            &proxy.keys(),
            FlowId(id),
            side,
            std::net::SocketAddr::from(([198, 51, 100, 7], 5061)),
        )
    };
    for from in [
        flow(
            2,
            Side::External,
            proxy.federation().iter().next().map(|(id, _)| id),
            Some(&["sip.partner.example"]),
        ),
        flow(
            3,
            Side::External,
            None,
            Some(&["sip.other.example", "other.example"]),
        ),
        flow(4, Side::External, None, None),
        flow(5, Side::Internal, None, None),
    ] {
        let (bytes, inside) = match proxy.handle(&from, msg) {
            Action::ToPool { bytes, .. } => (bytes, true),
            Action::ToFlow { bytes, .. } => (bytes, from.side == Side::External),
            Action::ToPartner { bytes, .. } | Action::ToDiscovered { bytes, .. } => (bytes, false),
            Action::Reject(why) => {
                let _ = proxy.answer(&msg.raw, why, Some(msg));
                continue;
            }
            Action::Credentials => continue,
        };
        let again = match Message::parse(Bytes::from(bytes.clone()), &relaxed_limits()) {
            Ok(m) => m,
            Err(why) => panic!(
                "the federating edge forwarded what it rejects ({why:?}):\n{}",
                String::from_utf8_lossy(&bytes)
            ),
        };
        let stamps = again
            .head
            .headers
            .iter()
            .filter(|h| h.name == crate::core::sip::HeaderName::MsEdgeProxyMessageTrust)
            .count();
        assert!(stamps <= usize::from(inside), "{stamps} trust stamps");
        assert_eq!(
            again.bytes(again.body),
            msg.bytes(msg.body),
            "body byte-exact"
        );
    }
}

fn relaxed_limits() -> HeadLimits {
    // The edge adds up to four header lines (Via, trust stamp, Record-Route, Path); the
    // re-check must not fail on the count alone.
    HeadLimits {
        max_headers: LIMITS.head.max_headers + 4,
        max_line_bytes: LIMITS.head.max_line_bytes * 2,
    }
}

/// The example.com edge the fuzz targets and the benches run (external `edge.example.com`,
/// internal `10.0.0.10`, domain `example.com`, fixed keys).
pub fn proxy() -> Proxy {
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
            external_hosts: vec!["edge.example.com".into()],
            served_domains: vec!["example.com".into()],
            federation: Default::default(),
            strip_headers: Vec::new(),
            next_hops: Vec::new(),
        },
        FlowKeys::new(&[7; 32]),
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
            if let Some(ops) = &t.operations {
                assert_ne!(
                    ops.listen.ip(),
                    t.external.sip_bind.ip(),
                    "operations on the external interface"
                );
            }
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

pub mod golden;
pub mod outsider;
pub mod pair;
pub mod sim;
pub mod turn_session;

/// An A/V authentication request body: never panics; whatever parses answers with a
/// response body that is well-formed XML carrying the request's ids.
pub fn mras(data: &[u8]) {
    if let Ok(req) = crate::core::mras::parse_request(data) {
        assert!(!req.identity.is_empty());
        let relays = [crate::core::mras::MediaRelay {
            location: req
                .location
                .unwrap_or(crate::core::mras::Location::Internet),
            host: "av.example",
            udp_port: 3478,
            tcp_port: 443,
        }];
        let body = crate::core::mras::response_body(&req, "u", "p", 480, &relays);
        let again = body
            .replace("<response ", "<request ")
            .replace("</response>", "</request>");
        // The answer is well-formed: a strict parser reads it back without error up to the
        // credentialsRequest it lacks.
        match crate::core::mras::parse_request(again.as_bytes()) {
            Ok(_) | Err(crate::core::mras::MrasError::Missing(_)) => {}
            Err(e) => panic!("response body not well-formed ({e}): {body}"),
        }
    }
}

/// A key ring file: never panics; a ring that parses writes back to text that parses to
/// the same ring.
pub fn keyring(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ring) = crate::core::keyring::Ring::parse(text) {
        let again = crate::core::keyring::Ring::parse(&ring.to_text());
        assert_eq!(again.as_ref(), Ok(&ring), "ring text round trip");
    }
}

/// What other pool members send through Redis (ban notices, rate reports, holdings) and a
/// TLS session ticket presented by a client: never panics; a notice or report that parses
/// names only sources that write back to the same text, and a ticket this pool did not seal
/// never opens.
pub fn pool_messages(data: &[u8]) {
    use crate::shell::pool_state::parse;
    if let Some((_, notice)) = parse::notice(data) {
        let wire = notice.key.to_wire();
        assert!(
            wire.is_some_and(|w| crate::core::net::SourceKey::from_wire(&w) == Some(notice.key))
        );
    }
    if let Some((_, counts)) = parse::rates(data) {
        assert!(counts.iter().all(|(k, n)| *n > 0 && k.to_wire().is_some()));
    }
    if let (Some(&a), Some(&b)) = (data.first(), data.get(1)) {
        // What an ask's script answers: granted or refused only from 1 or 0 and a count.
        let verdict = crate::shell::pool_state::verdict(i64::from(a as i8), i64::from(b as i8));
        use crate::core::turn::server::PoolVerdict;
        assert!(match verdict {
            PoolVerdict::Granted { elsewhere } => a == 1 && elsewhere == usize::from(b),
            PoolVerdict::Refused { elsewhere } => a == 0 && elsewhere == usize::from(b),
            PoolVerdict::Unknown => a > 1 || b >= 0x80,
        });
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(key) = crate::core::net::SourceKey::from_wire(text) {
            assert_eq!(key.to_wire().as_deref(), Some(text));
        }
    }
    // A ticket of arbitrary bytes: never opens under a ring that did not seal it.
    use rustls::server::ProducesTickets as _;
    let ring = crate::core::keyring::Ring::init([3; 32], 1_800_000_000);
    let ticketer = crate::shell::ring::RingTicketer::new(std::sync::Arc::new(
        crate::shell::ring::LiveRing::fixed(ring),
    ));
    assert!(ticketer.decrypt(data).is_none(), "a forged ticket opened");
}

/// A STUN message through the strict check: never panics; what passes has every attribute
/// inside the message and the integrity offset before its end.
pub fn stun(data: &[u8]) {
    if let Ok(c) = crate::core::turn::stun::check(data) {
        for a in c.attributes() {
            assert!(
                a.start + a.len <= data.len(),
                "attribute outside the message"
            );
        }
        assert!(c.integrity_at.is_none_or(|at| at < data.len()));
    }
}

/// ChannelData framing, as a datagram and as a stream: never panics; what parses lies
/// inside the buffer, and a stream parse consumes a multiple of 4.
pub fn channel_data(data: &[u8]) {
    use crate::core::turn::channel;
    for stream in [false, true] {
        if let Ok(m) = channel::parse(data, stream) {
            assert!(m.consumed <= data.len() && m.data.len() + channel::HEADER_LEN <= m.consumed);
            assert!(!stream || m.consumed % 4 == 0);
        }
    }
}

/// The TURN server state machine fed arbitrary client and peer packets, across simulated
/// time: never panics, every answer to a client passes the strict STUN check or is
/// ChannelData, and state never grows without an Allocate that authenticated.
pub fn turn_server(data: &[u8]) {
    use crate::core::turn::{auth::AuthContext, nonce::Nonces, policy::Origin, server::*};
    use std::time::{Duration, Instant};
    let ring = crate::core::keyring::Ring::init([4; 32], 1_800_000_000);
    let nonces = Nonces::new(&[5; 32], "sipedge.test", 600);
    let auth = AuthContext {
        ring: &ring,
        nonces: &nonces,
        realm: "sipedge.test",
        max_lifetime_secs: 8 * 3600,
    };
    let cfg = TurnConfig::new(
        "sipedge.test",
        [192, 0, 2, 10].into(),
        [203, 0, 113, 10].into(),
        (50000, 50003),
    );
    #[allow(clippy::disallowed_methods)] // a fuzz harness starts simulated time somewhere
    let start = Instant::now();
    let mut server = Server::new(cfg, 1, start);
    let tuple = FiveTuple {
        client: ([198, 51, 100, 20], 40000).into(),
        server: ([192, 0, 2, 10], 3478).into(),
        transport: Transport::Udp,
    };
    // The input is a sequence of (delay, length, bytes) records.
    let mut rest = data;
    let mut t = 0u64;
    let mut out = Vec::new();
    while let Some((&[delay, len], tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(len).min(tail.len());
        let (packet, tail) = tail.split_at(len);
        rest = tail;
        t += u64::from(delay);
        let now = start + Duration::from_secs(t);
        let arrival = Arrival {
            tuple,
            origin: Origin::External,
            now,
            now_unix: 1_800_000_000 + t,
        };
        out.clear();
        let _ = server.client_packet(&auth, arrival, packet, &mut out);
        let _ = server.peer_packet(
            ([192, 0, 2, 10], 50000).into(),
            ([198, 51, 100, 9], 1).into(),
            packet,
            now,
        );
        // The read-only relay paths the shell takes first must refuse the same input.
        assert!(server.channel_to_peer(&tuple, packet, now).is_err());
        if let Ok(c) = crate::core::turn::stun::check(packet) {
            assert!(server.send_to_peer(&tuple, packet, &c, now).is_err());
        }
        server.expire(now, &mut out);
        for o in &out {
            if let Output::ToClient { bytes, .. } = o {
                let ok = crate::core::turn::stun::check(bytes).is_ok()
                    || crate::core::turn::channel::parse(bytes, false).is_ok();
                assert!(ok, "the server sent something malformed");
            }
        }
        assert_eq!(
            server.allocations(),
            0,
            "no credentials in fuzz input can authenticate"
        );
    }
}
