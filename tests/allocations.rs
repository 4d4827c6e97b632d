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

use std::time::Duration;

use sipedge::core::turn::server::{ToClient, TurnConfig};
use sipedge::core::turn::stun;

mod turn_fixture;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[test]
fn the_relay_path_allocates_nothing_per_packet() {
    let _heap = dhat::Profiler::builder().testing().build();
    let cfg = TurnConfig::new(
        turn_fixture::REALM,
        "192.0.2.10".parse().unwrap(),
        "203.0.113.10".parse().unwrap(),
        (50000, 50099),
    );
    let e = turn_fixture::establish(cfg);
    let mut scratch = Vec::with_capacity(256);

    let before = dhat::HeapStats::get();
    for i in 0..10_000u32 {
        // 50 packets a second each way, well inside the default budgets.
        let now = e.start + Duration::from_millis(20) * i;
        let route = e.server.channel_to_peer(&e.tuple, &e.frame, now).unwrap();
        assert_eq!(route.peer, e.bound);
        let (_, framing) = e
            .server
            .peer_to_client(e.relay, e.bound, &e.payload, now, &mut scratch)
            .unwrap();
        assert!(matches!(framing, ToClient::Channel(_)));
        let checked = stun::check(&e.send).unwrap();
        let route = e
            .server
            .send_to_peer(&e.tuple, &e.send, &checked, now)
            .unwrap();
        assert_eq!(route.peer, e.permitted);
        let (_, framing) = e
            .server
            .peer_to_client(e.relay, e.permitted, &e.payload, now, &mut scratch)
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
