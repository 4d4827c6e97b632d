//! The per-message core path of the Access Edge: frame + validate + proxy decision with splice,
//! for (a) an INVITE with SDP from a remote user (external side → `Action::ToPool`) and (b) the
//! Director's 200 OK to it (internal side → `Action::ToFlow`). The INVITE is also measured
//! stage by stage, and against rsip (parse + `to_string()`) for comparison.
//!
//! Run: `cargo bench --bench sip_path` (about 30 s). See benches/README.md.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    unreachable_pub
)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput};
use sipedge::core::sip::frame::{Frame, FrameLimits, Framer};
use sipedge::core::sip::message::Message;
use sipedge::core::sip::parse::{Head, HeadLimits};
use sipedge::core::sip::proxy::{Action, Flow, Proxy, Side};
use sipedge::core::sip::token::FlowId;

/// The limits of the loopback default topology.
const LIMITS: FrameLimits = FrameLimits {
    head: HeadLimits {
        max_headers: 128,
        max_line_bytes: 4096,
    },
    max_header_bytes: 16384,
    max_body_bytes: 65536,
};

const GROUP_INVITE: &str = "invite_external";
const GROUP_OK: &str = "ok_internal";

fn proxy() -> Proxy {
    sipedge::fuzz_logic::proxy()
}

fn flow(p: &Proxy, id: u64, side: Side, remote: &str) -> Flow {
    Flow::new(&p.keys(), FlowId(id), side, remote.parse().unwrap())
}

/// A typical INVITE from a remote user behind NAT (about 800 bytes): SDP offer with SRTP.
fn invite() -> Bytes {
    let sdp = "v=0\r\n\
        o=alice 2890844526 2890844526 IN IP4 192.168.1.5\r\n\
        s=-\r\n\
        c=IN IP4 192.168.1.5\r\n\
        t=0 0\r\n\
        m=audio 49170 RTP/SAVP 0 8 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32\r\n";
    let head = format!(
        "INVITE sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/TLS 192.168.1.5:50123;branch=z9hG4bK776asdhds;rport\r\n\
        Max-Forwards: 70\r\n\
        From: \"Alice Example\" <sip:alice@example.com>;tag=1928301774\r\n\
        To: \"Bob\" <sip:bob@example.com>\r\n\
        Call-ID: a84b4c76e66710@pc33.example.com\r\n\
        CSeq: 314159 INVITE\r\n\
        Contact: <sip:alice@192.168.1.5:50123;transport=tls;ob>\r\n\
        Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, INFO\r\n\
        Supported: replaces, outbound, timer\r\n\
        Content-Type: application/sdp\r\n\
        Content-Length: {}\r\n\r\n",
        sdp.len()
    );
    Bytes::from(format!("{head}{sdp}"))
}

/// The Director's 200 OK to the forwarded INVITE: every Via (the edge's, with its flow token,
/// then the client's), the Record-Route set, a To tag, Contact and an SDP answer.
fn ok_for(forwarded: &[u8]) -> Bytes {
    let text = std::str::from_utf8(forwarded).unwrap();
    let head = text.split("\r\n\r\n").next().unwrap();
    let copied: String = head
        .split("\r\n")
        .filter(|l| l.starts_with("Via:") || l.starts_with("Record-Route:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let sdp = "v=0\r\n\
        o=bob 2808844564 2808844564 IN IP4 10.0.1.20\r\n\
        s=-\r\n\
        c=IN IP4 10.0.1.20\r\n\
        t=0 0\r\n\
        m=audio 52000 RTP/SAVP 0 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:32\r\n";
    Bytes::from(format!(
        "SIP/2.0 200 OK\r\n\
        {copied}\
        From: \"Alice Example\" <sip:alice@example.com>;tag=1928301774\r\n\
        To: \"Bob\" <sip:bob@example.com>;tag=a6c85cf\r\n\
        Call-ID: a84b4c76e66710@pc33.example.com\r\n\
        CSeq: 314159 INVITE\r\n\
        Contact: <sip:bob@10.0.1.20:5061;transport=tls>\r\n\
        Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, INFO\r\n\
        Content-Type: application/sdp\r\n\
        Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ))
}

/// The whole per-message core path, as `shell::conn` runs it.
fn core_path(proxy: &Proxy, from: &Flow, buf: &Bytes) -> Action {
    let Ok(Some(Frame::Message { head, len })) = Framer::new().check(buf, &LIMITS) else {
        panic!("not framed")
    };
    let msg = Message::validate(buf.slice(..len), head).expect("valid");
    proxy.handle(from, &msg)
}

fn frame(buf: &[u8]) -> (Head, usize) {
    match Framer::new().check(buf, &LIMITS) {
        Ok(Some(Frame::Message { head, len })) => (head, len),
        other => panic!("not framed: {other:?}"),
    }
}

fn benches(c: &mut Criterion) {
    let p = proxy();
    let client = flow(&p, 1, Side::External, "203.0.113.7:40000");
    let director = flow(&p, 2, Side::Internal, "10.0.0.20:5061");

    let inv = invite();
    let Action::ToPool {
        bytes: forwarded, ..
    } = core_path(&p, &client, &inv)
    else {
        panic!("INVITE not forwarded to the pool")
    };
    let ok = ok_for(&forwarded);
    let Action::ToFlow { flow: back_to, .. } = core_path(&p, &director, &ok) else {
        panic!("200 OK not routed back")
    };
    assert_eq!(back_to, client.id);
    let rsip_ok = rsip::SipMessage::try_from(&inv[..]).is_ok();
    eprintln!(
        "INVITE {} bytes (forwarded {} bytes); 200 OK {} bytes; rsip parses the INVITE: {rsip_ok}",
        inv.len(),
        forwarded.len(),
        ok.len()
    );

    let mut g = c.benchmark_group(GROUP_INVITE);
    g.throughput(Throughput::Bytes(inv.len() as u64));
    g.bench_function("frame_validate_splice", |b| {
        b.iter(|| core_path(&p, &client, black_box(&inv)))
    });
    g.bench_function("frame", |b| b.iter(|| frame(black_box(&inv))));
    let (head, len) = frame(&inv);
    g.bench_function("validate", |b| {
        b.iter_batched(
            || head.clone(),
            |h| Message::validate(black_box(inv.slice(..len)), h),
            BatchSize::SmallInput,
        )
    });
    let msg = Message::validate(inv.slice(..len), head).unwrap();
    g.bench_function("proxy_handle", |b| {
        b.iter(|| p.handle(&client, black_box(&msg)))
    });
    if rsip_ok {
        g.bench_function("rsip_parse_to_string", |b| {
            b.iter(|| {
                rsip::SipMessage::try_from(black_box(&inv[..]))
                    .unwrap()
                    .to_string()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group(GROUP_OK);
    g.throughput(Throughput::Bytes(ok.len() as u64));
    g.bench_function("frame_validate_splice", |b| {
        b.iter(|| core_path(&p, &director, black_box(&ok)))
    });
    g.finish();
}

/// Criterion's output directory, resolved as criterion does for `cargo bench`.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    PathBuf::from("target/criterion")
}

/// The median (ns) of one benchmark, if it was measured by this run.
fn median_ns(group: &str, id: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(id)
        .join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let json = std::fs::read_to_string(path).ok()?;
    let median = &json[json.find("\"median\"")?..];
    let at = median.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let rest = &median[at..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

fn closing_note(since: SystemTime) {
    let get = |g, id| median_ns(g, id, since);
    let (Some(edge), Some(ok)) = (
        get(GROUP_INVITE, "frame_validate_splice"),
        get(GROUP_OK, "frame_validate_splice"),
    ) else {
        return;
    };
    let inv_len = invite().len() as f64;
    println!("\nsip_path medians:");
    println!(
        "  INVITE in  (frame+validate+splice): {:8.2} µs  {:6.0} MB/s  {:8.0} msg/s per core",
        edge / 1e3,
        inv_len / edge * 1e3,
        1e9 / edge
    );
    println!(
        "  200 OK out (frame+validate+splice): {:8.2} µs  {:8.0} msg/s per core",
        ok / 1e3,
        1e9 / ok
    );
    for id in ["frame", "validate", "proxy_handle"] {
        if let Some(t) = get(GROUP_INVITE, id) {
            println!("    INVITE stage {id:<13} {:8.2} µs", t / 1e3);
        }
    }
    if let Some(rsip) = get(GROUP_INVITE, "rsip_parse_to_string") {
        println!(
            "  rsip parse+to_string on the same INVITE: {:8.2} µs = {:.1}x the edge's whole core path",
            rsip / 1e3,
            rsip / edge
        );
    }
}

/// The rsip / edge cost ratio measured interleaved: alternating batches of the two, so a
/// neighbour's load on this shared machine hits both alike. The median of the per-pair ratios.
fn paired_ratio(p: &Proxy, client: &Flow, inv: &Bytes) -> Option<f64> {
    const PAIRS: usize = 101;
    const BATCH: u32 = 500;
    rsip::SipMessage::try_from(&inv[..]).ok()?;
    let time = |f: &dyn Fn()| {
        let t = Instant::now();
        for _ in 0..BATCH {
            f();
        }
        t.elapsed().as_secs_f64()
    };
    let edge = || {
        black_box(core_path(p, client, black_box(inv)));
    };
    let rsip = || {
        black_box(
            rsip::SipMessage::try_from(black_box(&inv[..]))
                .map(|m| m.to_string())
                .ok(),
        );
    };
    let mut ratios: Vec<f64> = (0..PAIRS).map(|_| time(&rsip) / time(&edge)).collect();
    ratios.sort_by(f64::total_cmp);
    ratios.get(PAIRS / 2).copied()
}

fn main() {
    let started = SystemTime::now();
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
    if quick {
        return;
    }
    closing_note(started);
    let p = proxy();
    let client = flow(&p, 1, Side::External, "203.0.113.7:40000");
    if let Some(r) = paired_ratio(&p, &client, &invite()) {
        println!(
            "  rsip parse+to_string / edge core path, interleaved (median of 101 paired batches): {r:.1}x"
        );
    }
}
