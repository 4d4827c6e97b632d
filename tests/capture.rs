//! SIP capture in HEP v3 as real decoders read it: sngrep (Debian `sngrep`, irontec), in a
//! network namespace of its own, captures the HEP datagrams the edge's encoder produced for
//! a call on both sides of the edge, decodes them (`-E`) and writes the SIP it decoded to a
//! pcap with the addresses and ports it found in them, which tshark (Debian `tshark`) reads
//! back: every message of an INVITE/200/ACK/BYE/200 call, in order, with its source and
//! destination and Call-ID as sent (sngrep writes every decoded message as UDP, whatever
//! HEP's IP protocol said). Needs root (the namespace keeps the live
//! capture to the test's own datagrams); skipped otherwise, with a message.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sipedge::core::hep::{encode, Captured, Transport};

use crate::support::netns::{bed_or_skip, within, Namespaces};
use crate::support::*;

#[test]
fn sngrep_decodes_the_hep3_of_a_call_on_both_sides() {
    let sngrep = required(tool_on_path("sngrep"), "sngrep", "apt-get install sngrep");
    let tshark = required(tool_on_path("tshark"), "tshark", "apt-get install tshark");
    let (Some(sngrep), Some(tshark)) = (sngrep, tshark) else {
        return;
    };
    // A namespace of its own for sngrep's live capture.
    let ns = format!("sc{}-hep", std::process::id() % 100_000);
    let Some(namespaces) = bed_or_skip("the capture test", || Namespaces::new(&[&ns])) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("decoded.pcap");
    // sngrep captures on the namespace's loopback, where only this test's datagrams go, and
    // decodes the HEP it finds there.
    let mut listener = Reaped(
        namespaces
            .exec(&ns)
            .arg(&sngrep)
            .args(["-N", "-q", "-d", "lo", "-E", "-O"])
            .arg(&output)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // It opens its output when the capture starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !output.exists() {
        assert!(Instant::now() < deadline, "sngrep did not start capturing");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));

    // The call: a remote user outside (TLS to the edge's external address), the Director
    // inside (mutual TLS from the edge's internal address).
    let user: SocketAddr = "203.0.113.7:50432".parse().unwrap();
    let edge_ext: SocketAddr = "192.0.2.1:5061".parse().unwrap();
    let edge_int: SocketAddr = "10.0.0.1:40100".parse().unwrap();
    let director: SocketAddr = "10.0.0.10:5061".parse().unwrap();
    let call_id = "hep-call-1@203.0.113.7";
    let request = |method: &str| {
        format!(
            "{method} sip:bob@b.test SIP/2.0\r\nVia: SIP/2.0/TLS 203.0.113.7:50432;branch=z9hG4bK-{method}\r\n\
             From: <sip:alice@a.test>;tag=1\r\nTo: <sip:bob@b.test>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let ok = |method: &str| {
        format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 203.0.113.7:50432;branch=z9hG4bK-{method}\r\n\
             From: <sip:alice@a.test>;tag=1\r\nTo: <sip:bob@b.test>;tag=2\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let mut sent = Vec::new();
    for (method, answered) in [("INVITE", true), ("ACK", false), ("BYE", true)] {
        sent.push((user, edge_ext, request(method)));
        sent.push((edge_int, director, request(method)));
        if answered {
            sent.push((director, edge_int, ok(method)));
            sent.push((edge_ext, user, ok(method)));
        }
    }
    let sock = within(&ns, || std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    for (i, (src, dst, sip)) in sent.iter().enumerate() {
        let mut hep = Vec::new();
        encode(
            &Captured {
                src: *src,
                dst: *dst,
                transport: Transport::Tls,
                unix_micros: 1_800_000_000_000_000 + i as u64 * 1000,
                agent_id: 2001,
                auth_key: None,
                correlation_id: Some(call_id),
                payload: sip.as_bytes(),
            },
            &mut hep,
        )
        .unwrap();
        // Homer's port; nothing listens there: sngrep reads what crosses the device.
        sock.send_to(&hep, ("127.0.0.1", 9060)).unwrap();
    }
    // sngrep writes each decoded packet as it comes; give it a moment, then stop it.
    std::thread::sleep(Duration::from_millis(700));
    let _ = Command::new("kill")
        .args(["-TERM", &listener.0.id().to_string()])
        .status();
    let _ = listener.0.wait();

    let out = Command::new(&tshark)
        .arg("-r")
        .arg(&output)
        .args([
            "-d",
            "udp.port==5061,sip",
            "-d",
            "udp.port==50432,sip",
            "-d",
            "udp.port==40100,sip",
        ])
        .args(["-T", "fields", "-E", "separator=|"])
        .args([
            "-e",
            "ip.src",
            "-e",
            "udp.srcport",
            "-e",
            "ip.dst",
            "-e",
            "udp.dstport",
        ])
        .args([
            "-e",
            "sip.Method",
            "-e",
            "sip.Status-Code",
            "-e",
            "sip.Call-ID",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // A datagram on the loopback device may be captured twice (out and in): each once.
    let mut rows: Vec<&str> = text.lines().collect();
    rows.dedup();
    let want: Vec<String> = sent
        .iter()
        .map(|(src, dst, sip)| {
            let (method, status) = match sip.strip_prefix("SIP/2.0 ") {
                Some(rest) => ("", rest.get(..3).unwrap_or("")),
                None => (sip.split(' ').next().unwrap_or(""), ""),
            };
            format!(
                "{}|{}|{}|{}|{method}|{status}|{call_id}",
                src.ip(),
                src.port(),
                dst.ip(),
                dst.port()
            )
        })
        .collect();
    assert_eq!(rows, want, "tshark read:\n{text}\n{}", printed(&out));
    drop(namespaces);
}
