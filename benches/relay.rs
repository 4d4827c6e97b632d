//! The A/V Edge's relay under load: N internal clients, each with an allocation and a
//! channel to its own peer outside, send 172-byte packets (a 20 ms SRTP audio frame) at a
//! fixed rate; every peer echoes back through the relayed address. Reports relayed
//! packets per second, packets per edge CPU-second (threads `edge-worker` and `edge-relay-N`, from
//! `/proc/self/task/*/stat`) and resident memory per allocation. All on loopback; bounded
//! by `--seconds`.
//!
//! Run: `cargo bench --bench relay -- [--allocations N (200)] [--seconds S (5)] [--pps P (50)]`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    unreachable_pub
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sipedge::core::turn::auth::long_term_key;
use sipedge::core::turn::encode::Writer;
use sipedge::core::turn::server::{decode_xor_address, ALLOCATE, CHANNEL_BIND};
use sipedge::core::turn::stun::attr;
use sipedge::core::{credentials, keyring::Ring};
use sipedge::shell::{self, keyfile};
use sipedge::topology::{KeysSource, Relay};
use tokio::net::UdpSocket;

fn edge_cpu_ticks() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        // The runtime's workers and the relay's own threads (`edge-relay-N`).
        if !stat[open + 1..close].starts_with("edge-") {
            continue;
        }
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        total += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    }
    total
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn value(msg: &[u8], kind: u16) -> Vec<u8> {
    support::attr_value(msg, kind).unwrap_or_else(|| panic!("attribute {kind:#x} missing"))
}

fn main() {
    let allocations = arg("--allocations", 200) as usize;
    let seconds = arg("--seconds", 5).min(600);
    let pps = arg("--pps", 50).clamp(1, 1000);
    let pki = support::Pki::new();
    let ring_path = pki.dir.path().join("ring.toml");
    let now = sipedge::shell::clock::now_unix();
    keyfile::store(&ring_path, &Ring::init([3; 32], now), true).unwrap();
    let ring = keyfile::load(&ring_path).unwrap();

    let edge_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("edge-worker")
        .enable_all()
        .build()
        .unwrap();
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load-gen")
        .enable_all()
        .build()
        .unwrap();
    let rss_before = rss_kib();
    let edge = edge_rt.block_on(async {
        let director = support::Director::start(&pki).await;
        let mut t = support::topology(&pki, &[director.addr]);
        t.keys = Some(KeysSource::File(ring_path.clone()));
        t.relay = Some(Relay {
            listen_udp: vec!["127.0.0.2:0".parse().unwrap()],
            listen_tcp: vec!["127.0.0.2:0".parse().unwrap()],
            relay_ip: Some("127.0.0.1".parse().unwrap()),
            port_min: 20_000,
            port_max: 29_999,
            allow_loopback_peers: true,
            // Every load client shares 127.0.0.2: neither the per-source quota nor the
            // per-source budget of unauthenticated answers (each client's first Allocate
            // draws a 401) is what is measured.
            max_allocations_per_source: 1_000_000,
            unauthenticated_bytes_per_second: 100_000_000,
            ..Relay::new("127.0.0.1")
        });
        std::mem::forget(director);
        shell::start(&t).await.expect("edge starts")
    });
    let turn_addr = edge.turn_udp[0];
    let turn = edge.turn.clone().unwrap();
    let rss_started = rss_kib();

    let sent = Arc::new(AtomicU64::new(0));
    let echoed = Arc::new(AtomicU64::new(0));
    let (clients, cpu0, t0) = load_rt.block_on(async {
        let mut clients = Vec::new();
        for i in 0..allocations {
            // One user per allocation: the per-user quota (10) is not what is measured.
            let cred =
                credentials::mint(&ring, &format!("load{i}@sipedge.test"), 3600, now).unwrap();
            let key = long_term_key(&cred.username, "sipedge.test", &cred.password);
            let client = UdpSocket::bind("127.0.0.2:0").await.unwrap();
            let peer = UdpSocket::bind("127.0.0.6:0").await.unwrap();
            let udp = |w: &mut Writer| {
                w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            };
            let challenge = support::turn_request(ALLOCATE, 1, &udp, None);
            let nonce = value(
                &support::exchange(&client, turn_addr, &challenge).await,
                attr::NONCE,
            );
            let auth = support::TurnAuth {
                username: &cred.username,
                key: &key,
                nonce: &nonce,
            };
            let signed = |method, id, extra: &dyn Fn(&mut Writer)| {
                support::turn_request(method, id, extra, Some(&auth))
            };
            let a = support::exchange(&client, turn_addr, &signed(ALLOCATE, 2, &udp)).await;
            let relayed =
                decode_xor_address(&value(&a, attr::XOR_RELAYED_ADDRESS), &[2; 12]).unwrap();
            let peer_addr = peer.local_addr().unwrap();
            support::exchange(
                &client,
                turn_addr,
                &signed(CHANNEL_BIND, 3, &|w| {
                    w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0])
                        .xor_address(attr::XOR_PEER_ADDRESS, peer_addr);
                }),
            )
            .await;
            clients.push((Arc::new(client), Arc::new(peer), relayed));
        }
        (clients, edge_cpu_ticks(), Instant::now())
    });
    let rss_allocated = rss_kib();

    let deadline = t0 + Duration::from_secs(seconds);
    load_rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for (client, peer, relayed) in clients {
            // The peer echoes to the relayed address (the reverse direction).
            let echo_peer = peer.clone();
            tasks.spawn(async move {
                let mut buf = [0u8; 2048];
                while let Ok(Ok((n, _))) =
                    tokio::time::timeout_at(deadline.into(), echo_peer.recv_from(&mut buf)).await
                {
                    let _ = echo_peer.send_to(&buf[..n], relayed).await;
                }
            });
            let echoed = echoed.clone();
            let reader = client.clone();
            tasks.spawn(async move {
                let mut buf = [0u8; 2048];
                while let Ok(Ok(_)) =
                    tokio::time::timeout_at(deadline.into(), reader.recv_from(&mut buf)).await
                {
                    echoed.fetch_add(1, Ordering::Relaxed);
                }
            });
            let sent = sent.clone();
            tasks.spawn(async move {
                let mut frame = vec![0x40, 0x01, 0x00, 172];
                frame.extend_from_slice(&[0xA5; 172]);
                let mut tick = tokio::time::interval(Duration::from_secs(1) / pps as u32);
                while Instant::now() < deadline {
                    tick.tick().await;
                    if client.send_to(&frame, turn_addr).await.is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (edge_cpu_ticks() - cpu0) as f64 / 100.0;
    let relayed = turn.stats.relayed_to_peers() + turn.stats.relayed_to_clients();
    let sent = sent.load(Ordering::Relaxed);
    let echoed = echoed.load(Ordering::Relaxed);
    println!(
        "sipedge relay: {allocations} allocations, {pps} packets/s each way per allocation, 172-byte packets, {elapsed:.1} s\n\
         relayed {relayed} packets ({:.0}/s), edge CPU {cpu:.2} s = {:.0} packets per edge CPU-second ({:.1} µs CPU per packet)\n\
         sent {sent}, came back {echoed} ({:.2}% round-trip loss)\n\
         RSS: {rss_before} KiB before the edge, {rss_started} KiB started, {rss_allocated} KiB with {allocations} allocations \
         (~{:.1} KiB per allocation, client and peer sockets of the load generator included)",
        relayed as f64 / elapsed,
        relayed as f64 / cpu.max(0.01),
        cpu * 1e6 / (relayed.max(1) as f64),
        100.0 * (1.0 - echoed as f64 / sent.max(1) as f64),
        (rss_allocated.saturating_sub(rss_started)) as f64 / allocations.max(1) as f64,
    );
    let received = turn.stats.client_packets() + turn.stats.peer_packets();
    let calls = turn.stats.receive_calls();
    println!(
        "batching: {received} datagrams in {calls} receive calls ({:.2} per call); dropped {}",
        received as f64 / calls.max(1) as f64,
        turn.stats.dropped_total()
    );
    edge_rt.block_on(edge.stop());
}
