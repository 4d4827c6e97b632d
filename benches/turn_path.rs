//! The A/V Edge's per-packet core path (no sockets): a 172-byte SRTP packet (a 20 ms audio
//! frame) as ChannelData from the client to its peer and back from the peer (the read-only,
//! allocation-free functions the shell calls under its read lock, bandwidth budgets
//! charged), as a Send indication and a Data indication; and the strict STUN check of a
//! Binding request. The allocation and channel are set up once through real authenticated
//! requests.
//!
//! Run: `cargo bench --bench turn_path`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use sipedge::core::credentials;
use sipedge::core::keyring::Ring;
use sipedge::core::turn::auth::{long_term_key, AuthContext};
use sipedge::core::turn::bandwidth::Budget;
use sipedge::core::turn::encode::Writer;
use sipedge::core::turn::nonce::Nonces;
use sipedge::core::turn::policy::{Origin, PeerPolicy};
use sipedge::core::turn::server::{
    Arrival, FiveTuple, Output, Server, ToClient, Transport, TurnConfig, ALLOCATE, CHANNEL_BIND,
    CREATE_PERMISSION, SEND,
};
use sipedge::core::turn::stun::{self, attr, Class};

const T0: u64 = 1_800_000_000;
const REALM: &str = "sipedge.test";

fn main() {
    let ring = Ring::init([4; 32], T0);
    let nonces = Nonces::new(&[5; 32], REALM, 600);
    let auth = AuthContext {
        ring: &ring,
        nonces: &nonces,
        realm: REALM,
        max_lifetime_secs: 8 * 3600,
    };
    let mut cfg = TurnConfig::new(
        REALM,
        "192.0.2.10".parse().unwrap(),
        "203.0.113.10".parse().unwrap(),
        (50000, 59999),
    );
    cfg.policy = PeerPolicy::default();
    // Budgets charged on every packet (the real cost), large enough never to drop in a
    // loop that runs at a fixed instant.
    cfg.bandwidth_per_allocation = Budget::kbit(u64::MAX / 1000);
    cfg.bandwidth_per_user = Budget::kbit(u64::MAX / 1000);
    let mut server = Server::new(cfg, 0);
    let tuple = FiveTuple {
        client: "198.51.100.20:40000".parse().unwrap(),
        server: "192.0.2.10:3478".parse().unwrap(),
        transport: Transport::Udp,
    };
    let peer: SocketAddr = "198.51.100.99:5000".parse().unwrap();
    let c = credentials::mint(&ring, "alice", 8 * 3600, T0).unwrap();
    let key = long_term_key(&c.username, REALM, &c.password);
    let start = Instant::now();
    let arrival = |after: u64| Arrival {
        tuple,
        origin: Origin::Internal,
        now: start + Duration::from_secs(after),
        now_unix: T0 + after,
    };
    let signed = |method: u16, id: u8, attrs: &[(u16, Vec<u8>)], xor_peer: Option<SocketAddr>| {
        let mut w = Writer::new(Class::Request, method, [id; 12]);
        for (k, v) in attrs {
            w.attr(*k, v);
        }
        if let Some(peer) = xor_peer {
            w.xor_address(attr::XOR_PEER_ADDRESS, peer);
        }
        let nonce = nonces.issue(tuple.client.ip(), T0);
        w.attr(attr::USERNAME, c.username.as_bytes())
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, nonce.as_bytes())
            .integrity(&key);
        w.finish_with_fingerprint()
    };
    let mut out = Vec::new();
    server
        .client_packet(
            &auth,
            arrival(0),
            &signed(
                ALLOCATE,
                1,
                &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
                None,
            ),
            &mut out,
        )
        .unwrap();
    let relay = out
        .iter()
        .find_map(|o| match o {
            Output::OpenRelay { relay } => Some(*relay),
            _ => None,
        })
        .unwrap();
    out.clear();
    server
        .client_packet(
            &auth,
            arrival(0),
            &signed(
                CHANNEL_BIND,
                2,
                &[(attr::CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0])],
                Some(peer),
            ),
            &mut out,
        )
        .unwrap();
    // A second peer with a permission and no channel: Send and Data indications.
    let other_peer: SocketAddr = "198.51.100.98:5000".parse().unwrap();
    server
        .client_packet(
            &auth,
            arrival(0),
            &signed(CREATE_PERMISSION, 3, &[], Some(other_peer)),
            &mut out,
        )
        .unwrap();

    let srtp = vec![0xA5u8; 172];
    let mut frame = vec![0x40, 0x01, 0x00, 172];
    frame.extend_from_slice(&srtp);
    let binding = Writer::new(Class::Request, 1, [9; 12]).finish_with_fingerprint();
    let send = {
        let mut w = Writer::new(Class::Indication, SEND, [8; 12]);
        w.xor_address(attr::XOR_PEER_ADDRESS, other_peer)
            .attr(attr::DATA, &srtp);
        w.finish()
    };
    let now = start + Duration::from_secs(1);

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    let mut g = c.benchmark_group("turn");
    g.throughput(Throughput::Elements(1));
    g.bench_function("channel_data_client_to_peer_172B", |b| {
        b.iter(|| {
            black_box(
                server
                    .channel_to_peer(&tuple, black_box(&frame), now)
                    .unwrap(),
            )
        })
    });
    g.bench_function("channel_data_peer_to_client_172B", |b| {
        let mut scratch = Vec::with_capacity(256);
        b.iter(|| {
            let (_, framing) = server
                .peer_to_client(relay, peer, black_box(&srtp), now, &mut scratch)
                .unwrap();
            assert!(matches!(framing, ToClient::Channel(_)));
            black_box(framing)
        })
    });
    g.bench_function("send_indication_client_to_peer_172B", |b| {
        b.iter(|| {
            let c = stun::check(black_box(&send)).unwrap();
            black_box(server.send_to_peer(&tuple, &send, &c, now).unwrap())
        })
    });
    g.bench_function("data_indication_peer_to_client_172B", |b| {
        let mut scratch = Vec::with_capacity(256);
        b.iter(|| {
            let (_, framing) = server
                .peer_to_client(relay, other_peer, black_box(&srtp), now, &mut scratch)
                .unwrap();
            assert_eq!(framing, ToClient::Indication);
            black_box(scratch.len())
        })
    });
    g.bench_function("strict_check_binding", |b| {
        b.iter(|| black_box(stun::check(black_box(&binding)).unwrap()))
    });
    g.finish();
    c.final_summary();
}
