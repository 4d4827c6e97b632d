//! SIP capture in HEP v3 as real decoders read it.
//!
//! `a_call_through_the_edge_is_captured_on_both_sides_and_sngrep_decodes_it`: the running
//! edge with `[capture]` sends its copies to sngrep listening as a HEP collector (`-L`;
//! sngrep opens a device capture beside it, so root: skipped otherwise, with a message);
//! tshark reads what sngrep decoded. Every message of a real call through
//! the edge (INVITE/200/ACK/BYE/200 on both sides), with the real addresses and ports of
//! both connections and the Call-ID.
//!
//! `sngrep_decodes_the_hep3_of_a_call_on_both_sides`: sngrep, in a
//! network namespace of its own, captures the HEP datagrams the edge's encoder produced for
//! a call on both sides of the edge, decodes them (`-E`) and writes the SIP it decoded to a
//! pcap with the addresses and ports it found in them, which tshark (Debian `tshark`) reads
//! back: every message of an INVITE/200/ACK/BYE/200 call, in order, with its source and
//! destination and Call-ID as sent (sngrep writes every decoded message as UDP, whatever
//! HEP's IP protocol said). Needs root (the namespace keeps the live
//! capture to the test's own datagrams); skipped otherwise, with a message.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sipedge::core::hep::{encode, Captured, Transport};
use sipedge::topology::{CaptureConfig, CaptureTransport};

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
                correlation_id: Some(call_id.as_bytes()),
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

    // A datagram on the loopback device may be captured twice (out and in): each once.
    let rows = tshark_rows(&tshark, &output, &[5061, 50432, 40100]);
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
    assert_eq!(rows, want, "tshark read:\n{}", rows.join("\n"));
    drop(namespaces);
}

/// tshark's reading of a pcap sngrep wrote: one `src|sport|dst|dport|method|status|call-id`
/// row per SIP message, each once (sngrep writes every decoded message as UDP).
fn tshark_rows(tshark: &Path, pcap: &Path, sip_ports: &[u16]) -> Vec<String> {
    let mut cmd = Command::new(tshark);
    cmd.arg("-r").arg(pcap);
    for port in sip_ports {
        cmd.args(["-d", &format!("udp.port=={port},sip")]);
    }
    let out = cmd
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
    assert!(out.status.success(), "tshark: {}", printed(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut rows: Vec<String> = text.lines().map(str::to_string).collect();
    rows.dedup();
    rows
}

#[tokio::test]
async fn a_call_through_the_edge_is_captured_on_both_sides_and_sngrep_decodes_it() {
    let sngrep = required(tool_on_path("sngrep"), "sngrep", "apt-get install sngrep");
    let tshark = required(tool_on_path("tshark"), "tshark", "apt-get install tshark");
    let (Some(sngrep), Some(tshark)) = (sngrep, tshark) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("decoded.pcap");
    // No live capture beside the HEP listener (that needs privilege): sngrep reads an empty
    // pcap instead of a device.
    let empty = dir.path().join("empty.pcap");
    std::fs::write(
        &empty,
        [
            0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 1, 0, 0, 0,
        ],
    )
    .unwrap();
    // sngrep as the collector: it listens for HEP on the internal side (127.0.0.3 here; the
    // external zone is 127.0.0.1) and writes what it decodes.
    let collector: SocketAddr = format!("127.0.0.3:{}", free_udp_port("127.0.0.3"))
        .parse()
        .unwrap();
    let mut listener = Reaped(
        Command::new(&sngrep)
            .args(["-N", "-q", "-L", &format!("udp:{collector}"), "-O"])
            .arg(&output)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Listening once the port is taken.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::UdpSocket::bind(collector).is_ok() {
        if let Ok(Some(status)) = listener.0.try_wait() {
            // Beside its HEP listener sngrep opens a live capture (any device): root only.
            if !is_root() {
                eprintln!("skipped: sngrep needs root for its device capture ({status})");
                return;
            }
            panic!("sngrep exited at start: {status}");
        }
        assert!(Instant::now() < deadline, "sngrep did not start listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let pki = Pki::new();
    let mut director = Director::start(&pki).await;
    let mut t = topology(&pki, &[director.addr]);
    t.capture = Some(CaptureConfig {
        collector,
        transport: CaptureTransport::Udp,
        agent_id: 2001,
        password: None,
        external: true,
        internal: true,
        bodies: true,
        max_queued_bytes: 4 * 1024 * 1024,
    });
    let edge = sipedge::shell::start(&t).await.expect("edge starts");
    let routes = edge.routes.clone();
    eventually("a next hop up", || routes.pool.any_up()).await;

    // The call.
    let mut client = Client::connect(&pki, edge.external).await;
    let user = client.local_addr();
    let call_id = "capture-call-1@192.168.1.5";
    let request = |method: &str, cseq: u32, extra: &str| {
        format!(
            "{method} sip:bob@sipedge.test SIP/2.0\r\n\
             Via: SIP/2.0/TLS 192.168.1.5:{port};branch=z9hG4bK-{method}-{cseq};rport\r\n\
             {extra}Max-Forwards: 70\r\n\
             From: <sip:alice@sipedge.test>;tag=a1\r\nTo: <sip:bob@sipedge.test>{to_tag}\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
             Contact: <sip:alice@192.168.1.5:{port};transport=tls>\r\nContent-Length: 0\r\n\r\n",
            port = user.port(),
            to_tag = if method == "INVITE" { "" } else { ";tag=uas1" },
        )
    };
    client.send(&request("INVITE", 1, "")).await;
    let invite = director.recv().await;
    let ok = response_to(&invite.text, 200, "OK").replace(
        "Content-Length: 0",
        "Contact: <sip:bob@10.0.0.30:5061;transport=tls>\r\nContent-Length: 0",
    );
    director.send(invite.conn, &ok);
    let ok = client.recv().await;
    assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
    let route = format!("Route: {}\r\n", route_set(&ok));
    client.send(&request("ACK", 1, &route)).await;
    assert!(director.recv().await.text.starts_with("ACK "));
    client.send(&request("BYE", 2, &route)).await;
    let bye = director.recv().await;
    director.send(bye.conn, &response_to(&bye.text, 200, "OK"));
    assert!(client.recv().await.starts_with("SIP/2.0 200 OK"));

    // Every copy sent (the collector is on loopback: nothing is lost on the way).
    let capture = edge.shared.capture.counters.clone();
    let switch = &edge.shared.capture;
    eventually("the copies sent", || switch.queued_bytes() == 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &listener.0.id().to_string()])
        .status();
    let _ = listener.0.wait();
    let metrics_dropped: u64 = capture.dropped().iter().map(|(_, n)| n).sum();
    assert_eq!(metrics_dropped, 0);

    let ext = edge.external;
    let int_port = edge.internal.port();
    let rows = tshark_rows(
        &tshark,
        &output,
        &[ext.port(), user.port(), director.addr.port(), int_port],
    );
    let ours: Vec<&String> = rows.iter().filter(|r| r.ends_with(call_id)).collect();
    // The edge's end of its connection to the Director: the internal address, one port.
    let edge_int_port = ours
        .get(1)
        .and_then(|r| r.split('|').nth(1))
        .unwrap_or_default()
        .to_string();
    let director_addr = director.addr;
    let want: Vec<String> = [
        (user, ext, "INVITE", ""),
        (
            SocketAddr::new([127, 0, 0, 2].into(), 0),
            director_addr,
            "INVITE",
            "",
        ),
        (
            director_addr,
            SocketAddr::new([127, 0, 0, 2].into(), 0),
            "",
            "200",
        ),
        (ext, user, "", "200"),
        (user, ext, "ACK", ""),
        (
            SocketAddr::new([127, 0, 0, 2].into(), 0),
            director_addr,
            "ACK",
            "",
        ),
        (user, ext, "BYE", ""),
        (
            SocketAddr::new([127, 0, 0, 2].into(), 0),
            director_addr,
            "BYE",
            "",
        ),
        (
            director_addr,
            SocketAddr::new([127, 0, 0, 2].into(), 0),
            "",
            "200",
        ),
        (ext, user, "", "200"),
    ]
    .iter()
    .map(|(src, dst, method, status)| {
        let port = |a: &SocketAddr| match a.port() {
            0 => edge_int_port.clone(),
            p => p.to_string(),
        };
        format!(
            "{}|{}|{}|{}|{method}|{status}|{call_id}",
            src.ip(),
            port(src),
            dst.ip(),
            port(dst)
        )
    })
    .collect();
    assert_eq!(
        ours,
        want.iter().collect::<Vec<_>>(),
        "tshark read:\n{}",
        rows.join("\n")
    );
    assert!(
        !edge_int_port.is_empty() && edge_int_port != "0" && edge_int_port != int_port.to_string(),
        "the edge's own end of its connection to the Director: {edge_int_port}"
    );
    // The probes on the internal connection are captured too (another Call-ID each).
    assert!(
        rows.iter().any(|r| r.contains("|OPTIONS|")),
        "{}",
        rows.join("\n")
    );
    edge.stop().await;
}

/// Whether the tests run as root (effective uid 0), from /proc.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

#[tokio::test]
async fn capture_turns_on_and_off_by_reload_and_shows_on_metrics() {
    let pki = Pki::new();
    let director = Director::start(&pki).await.answering_ok();
    let mut t = topology(&pki, &[director.addr]);
    // As start_with_operations sets it (a reload compares it).
    t.operations = Some(sipedge::topology::Operations {
        listen: "127.0.0.2:0".parse().unwrap(),
    });
    let (edge, ops) = start_with_operations(t.clone()).await;
    let routes = edge.routes.clone();
    eventually("a next hop up", || routes.pool.any_up()).await;
    let collector = tokio::net::UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let options = |n: u32| {
        format!(
            "OPTIONS sip:bob@sipedge.test SIP/2.0\r\nVia: SIP/2.0/TLS 192.168.1.5:5061;branch=z9hG4bK-o{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@sipedge.test>;tag=a\r\nTo: <sip:bob@sipedge.test>\r\n\
             Call-ID: reload-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let mut client = Client::connect(&pki, edge.external).await;
    let metrics = http_get(&ops, "/metrics").await;
    assert!(
        !metrics.contains("sipedge_capture_"),
        "off: no capture families"
    );

    // On, live: the connection already up is captured from its next message.
    let mut with = t.clone();
    with.capture = Some(CaptureConfig {
        collector: collector.local_addr().unwrap(),
        transport: CaptureTransport::Udp,
        agent_id: 9,
        password: None,
        external: true,
        internal: false,
        bodies: true,
        max_queued_bytes: 1024 * 1024,
    });
    let reloaded = edge.reload(&with).expect("capture reloads live");
    assert!(
        reloaded.changed.contains(&"capture"),
        "{:?}",
        reloaded.changed
    );
    client.send(&options(1)).await;
    assert!(client.recv().await.starts_with("SIP/2.0 200"));
    let mut copies = Vec::new();
    while copies.len() < 2 {
        let mut buf = vec![0u8; 65_535];
        let (n, from) = tokio::time::timeout(WAIT, collector.recv_from(&mut buf))
            .await
            .expect("a copy at the collector")
            .unwrap();
        assert_eq!(from.ip(), edge.internal.ip(), "copies leave by the inside");
        buf.truncate(n);
        copies.push(String::from_utf8_lossy(&buf).into_owned());
    }
    // External zone only: the request in, the 200 out (not the Director's side).
    assert!(copies[0].starts_with("HEP3") && copies[0].contains("OPTIONS sip:bob@sipedge.test"));
    assert!(copies[1].contains("SIP/2.0 200"), "{}", copies[1]);
    assert!(copies
        .iter()
        .all(|c| !c.contains("Via: SIP/2.0/TLS 127.0.0.2")));
    let metrics = http_get(&ops, "/metrics").await;
    assert!(
        metrics.contains("sipedge_capture_messages_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sipedge_capture_sent_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sipedge_capture_collector_up 1\n"),
        "{metrics}"
    );
    let status = http_get(&ops, "/status").await;
    assert!(status.contains("\"collector_up\": true"), "{status}");

    // Off again: nothing more is copied.
    edge.reload(&t).expect("capture off live");
    client.send(&options(2)).await;
    assert!(client.recv().await.starts_with("SIP/2.0 200"));
    let mut buf = vec![0u8; 65_535];
    let late =
        tokio::time::timeout(Duration::from_millis(300), collector.recv_from(&mut buf)).await;
    assert!(late.is_err(), "a copy after capture was turned off");
    edge.stop().await;
}
