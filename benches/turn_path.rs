//! The A/V Edge's per-packet core path (no sockets): a 172-byte SRTP packet (a 20 ms audio
//! frame) as ChannelData from the client to its peer and back from the peer (the read-only,
//! allocation-free functions the shell calls under its read lock, bandwidth budgets
//! charged), as a Send indication and a Data indication; and the strict STUN check of a
//! Binding request. The allocation and channel are set up once through real authenticated
//! requests.
//!
//! `allocate_even_port/held_N`: an authenticated Allocate with EVEN-PORT (R bit: the next
//! port reserved) and the client's departure, with N other allocations, each with its
//! reservation, held: the cost must not grow with N (no scan of what is held).
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
use sipedge::core::credentials;
use sipedge::core::keyring::Ring;
use sipedge::core::turn::auth::{long_term_key, AuthContext};
use sipedge::core::turn::bandwidth::Budget;
use sipedge::core::turn::encode::Writer;
use sipedge::core::turn::nonce::Nonces;
use sipedge::core::turn::policy::Origin;
use sipedge::core::turn::policy::PeerPolicy;
use sipedge::core::turn::server::{
    Arrival, FiveTuple, Server, ToClient, Transport, TurnConfig, ALLOCATE,
};
use sipedge::core::turn::stun::attr;
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

    let mut g = c.benchmark_group("allocate_even_port");
    g.throughput(Throughput::Elements(1));
    for held in [0usize, 4000, 20_000] {
        let mut alloc = Allocating::new(held);
        let (tuple, request) = alloc.request(u32::MAX);
        g.bench_function(format!("held_{held}"), |b| {
            b.iter(|| alloc.submit(tuple, black_box(&request), false))
        });
    }
    g.finish();
    c.final_summary();
}

/// A server holding `held` allocations with reservations (one per user and source, so no
/// quota binds), and signed EVEN-PORT Allocates from fresh clients.
struct Allocating {
    server: Server,
    ring: Ring,
    nonces: Nonces,
    start: std::time::Instant,
    out: Vec<sipedge::core::turn::server::Output>,
}

impl Allocating {
    fn new(held: usize) -> Allocating {
        let mut cfg = TurnConfig::new(
            turn_fixture::REALM,
            "192.0.2.10".parse().unwrap(),
            "203.0.113.10".parse().unwrap(),
            (10000, 59999),
        );
        cfg.max_allocations = 100_000;
        let start = std::time::Instant::now();
        let mut a = Allocating {
            server: Server::new(cfg, 0, start),
            ring: Ring::init([4; 32], turn_fixture::T0),
            nonces: Nonces::new(&[5; 32], turn_fixture::REALM, 600),
            start,
            out: Vec::new(),
        };
        for i in 0..held {
            let (tuple, request) = a.request(i as u32);
            a.submit(tuple, &request, true);
        }
        assert_eq!(a.server.allocations(), held);
        assert_eq!(a.server.reservations(), held);
        a
    }

    fn tuple(n: u32) -> FiveTuple {
        let [_, b, c, d] = n.to_be_bytes();
        FiveTuple {
            client: std::net::SocketAddr::new([198, b, c, d].into(), 40000),
            server: "192.0.2.10:3478".parse().unwrap(),
            transport: Transport::Udp,
        }
    }

    /// An Allocate with EVEN-PORT (R) by user `n` from client `n`.
    fn request(&self, n: u32) -> (FiveTuple, Vec<u8>) {
        let tuple = Self::tuple(n);
        let user = format!("user{n}@example.com");
        let c = credentials::mint(&self.ring, &user, 3600, turn_fixture::T0).unwrap();
        let key = long_term_key(&c.username, turn_fixture::REALM, &c.password);
        let nonce = self.nonces.issue(tuple.client.ip(), turn_fixture::T0);
        let mut w = Writer::new(Class::Request, ALLOCATE, [7; 12]);
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x80])
            .attr(attr::USERNAME, c.username.as_bytes())
            .attr(attr::REALM, turn_fixture::REALM.as_bytes())
            .attr(attr::NONCE, nonce.as_bytes())
            .integrity(&key);
        (tuple, w.finish_with_fingerprint())
    }

    /// Submits an Allocate; unless `keep`, the client leaves at once (TCP close).
    fn submit(&mut self, tuple: FiveTuple, request: &[u8], keep: bool) {
        let auth = AuthContext {
            ring: &self.ring,
            nonces: &self.nonces,
            realm: turn_fixture::REALM,
            max_lifetime_secs: 8 * 3600,
        };
        let arrival = Arrival {
            tuple,
            origin: Origin::Internal,
            now: self.start,
            now_unix: turn_fixture::T0,
        };
        self.out.clear();
        self.server
            .client_packet(&auth, arrival, request, &mut self.out)
            .unwrap();
        assert!(self.server.has_allocation(&tuple), "allocated");
        if !keep {
            self.server.client_closed(tuple, &mut self.out);
        }
    }
}
