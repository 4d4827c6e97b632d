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
use std::time::Duration;

use criterion::{Criterion, Throughput};
use sipedge::core::turn::bandwidth::Budget;
use sipedge::core::turn::encode::Writer;
use sipedge::core::turn::policy::PeerPolicy;
use sipedge::core::turn::server::{ToClient, TurnConfig};
use sipedge::core::turn::stun::{self, Class};

#[path = "../tests/turn_fixture.rs"]
mod turn_fixture;

fn main() {
    let mut cfg = TurnConfig::new(
        turn_fixture::REALM,
        "192.0.2.10".parse().unwrap(),
        "203.0.113.10".parse().unwrap(),
        (50000, 59999),
    );
    cfg.policy = PeerPolicy::default();
    // Budgets charged on every packet (the real cost), large enough never to drop in a
    // loop that runs at a fixed instant.
    cfg.bandwidth_per_allocation = Budget::kbit(u64::MAX / 1000);
    cfg.bandwidth_per_user = Budget::kbit(u64::MAX / 1000);
    let e = turn_fixture::establish(cfg);
    let (server, tuple, relay, peer, other_peer) =
        (&e.server, e.tuple, e.relay, e.bound, e.permitted);
    let (srtp, frame, send) = (&e.payload, &e.frame, &e.send);
    let binding = Writer::new(Class::Request, 1, [9; 12]).finish_with_fingerprint();
    let now = e.start + Duration::from_secs(1);

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
                    .channel_to_peer(&tuple, black_box(frame), now)
                    .unwrap(),
            )
        })
    });
    g.bench_function("channel_data_peer_to_client_172B", |b| {
        let mut scratch = Vec::with_capacity(256);
        b.iter(|| {
            let (_, framing) = server
                .peer_to_client(relay, peer, black_box(srtp), now, &mut scratch)
                .unwrap();
            assert!(matches!(framing, ToClient::Channel(_)));
            black_box(framing)
        })
    });
    g.bench_function("send_indication_client_to_peer_172B", |b| {
        b.iter(|| {
            let c = stun::check(black_box(send)).unwrap();
            black_box(server.send_to_peer(&tuple, send, &c, now).unwrap())
        })
    });
    g.bench_function("data_indication_peer_to_client_172B", |b| {
        let mut scratch = Vec::with_capacity(256);
        b.iter(|| {
            let (_, framing) = server
                .peer_to_client(relay, other_peer, black_box(srtp), now, &mut scratch)
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
