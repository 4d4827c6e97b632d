//! The relay path allocates nothing per packet: the read-only functions the shell calls for
//! ChannelData and Send/Data indications of an established allocation, bandwidth budgets
//! charged, counted by a global allocator (DHAT's) over 10 000 packets each. Its own test
//! binary, as a global allocator is process-wide.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sipedge::core::credentials;
use sipedge::core::keyring::Ring;
use sipedge::core::turn::auth::{long_term_key, AuthContext};
use sipedge::core::turn::encode::Writer;
use sipedge::core::turn::nonce::Nonces;
use sipedge::core::turn::policy::Origin;
use sipedge::core::turn::server::{
    Arrival, FiveTuple, Output, Server, ToClient, Transport, TurnConfig, ALLOCATE, CHANNEL_BIND,
    CREATE_PERMISSION, SEND,
};
use sipedge::core::turn::stun::{self, attr, Class};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const T0: u64 = 1_800_000_000;
const REALM: &str = "sipedge.test";

#[test]
fn the_relay_path_allocates_nothing_per_packet() {
    let _heap = dhat::Profiler::builder().testing().build();
    let ring = Ring::init([4; 32], T0);
    let nonces = Nonces::new(&[5; 32], REALM, 600);
    let auth = AuthContext {
        ring: &ring,
        nonces: &nonces,
        realm: REALM,
        max_lifetime_secs: 8 * 3600,
    };
    let cfg = TurnConfig::new(
        REALM,
        "192.0.2.10".parse().unwrap(),
        "203.0.113.10".parse().unwrap(),
        (50000, 50099),
    );
    let mut server = Server::new(cfg, 0);
    let tuple = FiveTuple {
        client: "198.51.100.20:40000".parse().unwrap(),
        server: "192.0.2.10:3478".parse().unwrap(),
        transport: Transport::Udp,
    };
    let bound: SocketAddr = "198.51.100.99:5000".parse().unwrap();
    let permitted: SocketAddr = "198.51.100.98:5000".parse().unwrap();
    let c = credentials::mint(&ring, "alice", 8 * 3600, T0).unwrap();
    let key = long_term_key(&c.username, REALM, &c.password);
    let start = Instant::now();
    let arrival = Arrival {
        tuple,
        origin: Origin::Internal,
        now: start,
        now_unix: T0,
    };
    let signed = |method: u16, id: u8, attrs: &[(u16, Vec<u8>)], peer: Option<SocketAddr>| {
        let mut w = Writer::new(Class::Request, method, [id; 12]);
        for (k, v) in attrs {
            w.attr(*k, v);
        }
        if let Some(peer) = peer {
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
    for request in [
        signed(
            ALLOCATE,
            1,
            &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            None,
        ),
        signed(
            CHANNEL_BIND,
            2,
            &[(attr::CHANNEL_NUMBER, vec![0x40, 1, 0, 0])],
            Some(bound),
        ),
        signed(CREATE_PERMISSION, 3, &[], Some(permitted)),
    ] {
        server
            .client_packet(&auth, arrival, &request, &mut out)
            .unwrap();
    }
    let relay = out
        .iter()
        .find_map(|o| match o {
            Output::OpenRelay { relay } => Some(*relay),
            _ => None,
        })
        .unwrap();

    let srtp = vec![0xA5u8; 172];
    let mut frame = vec![0x40, 0x01, 0x00, 172];
    frame.extend_from_slice(&srtp);
    let send = {
        let mut w = Writer::new(Class::Indication, SEND, [8; 12]);
        w.xor_address(attr::XOR_PEER_ADDRESS, permitted)
            .attr(attr::DATA, &srtp);
        w.finish()
    };
    let mut scratch = Vec::with_capacity(256);

    let before = dhat::HeapStats::get();
    for i in 0..10_000u32 {
        // 50 packets a second each way, well inside the default budgets.
        let now = start + Duration::from_millis(20) * i;
        let route = server.channel_to_peer(&tuple, &frame, now).unwrap();
        assert_eq!(route.peer, bound);
        let (_, framing) = server
            .peer_to_client(relay, bound, &srtp, now, &mut scratch)
            .unwrap();
        assert!(matches!(framing, ToClient::Channel(_)));
        let checked = stun::check(&send).unwrap();
        let route = server.send_to_peer(&tuple, &send, &checked, now).unwrap();
        assert_eq!(route.peer, permitted);
        let (_, framing) = server
            .peer_to_client(relay, permitted, &srtp, now, &mut scratch)
            .unwrap();
        assert_eq!(framing, ToClient::Indication);
        assert!(
            stun::check(&scratch).is_ok(),
            "a well-formed Data indication"
        );
    }
    let after = dhat::HeapStats::get();
    assert_eq!(
        after.total_blocks - before.total_blocks,
        0,
        "allocations on the relay path over 40 000 packets"
    );
}
