//! The relay path allocates nothing per packet: the read-only functions the shell calls for
//! ChannelData and Send/Data indications of an established allocation, bandwidth budgets
//! charged, counted by a global allocator (DHAT's) over 10 000 packets each; and a running
//! relay's workers carrying ChannelData both ways. Its own test binary, as a global
//! allocator is process-wide.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    unreachable_pub
)]

use std::time::Duration;

use sipedge::core::turn::server::{ToClient, TurnConfig};
use sipedge::core::turn::stun;

mod turn_fixture;

mod support;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// One test, as dhat counts the whole process: the core's relay functions first, then the
/// running relay.
#[test]
fn the_relay_path_allocates_nothing_per_packet() {
    let _heap = dhat::Profiler::builder().testing().build();
    the_core_relay_functions_allocate_nothing_per_packet();
    the_relay_workers_allocate_nothing_per_packet();
}

fn the_core_relay_functions_allocate_nothing_per_packet() {
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

/// The same through the real relay: a running edge's relay workers carry ChannelData from
/// a client to its peer and the peer's datagrams back as ChannelData, over loopback UDP.
/// The client and the peer are blocking std sockets (they allocate nothing either), so what
/// the process allocates while 4 000 packets cross (2 000 each way) is the relay's: far less
/// than one block per packet (the edge's idle tasks, a ring-file check, may allocate a few).
fn the_relay_workers_allocate_nothing_per_packet() {
    use sipedge::core::turn::auth::long_term_key;
    use sipedge::core::{credentials, keyring::Ring};
    use sipedge::shell::keyfile;
    use sipedge::topology::{KeysSource, Relay};
    use std::net::UdpSocket;

    let pki = support::Pki::new();
    let ring_path = pki.dir.path().join("ring.toml");
    let now = sipedge::shell::clock::now_unix();
    keyfile::store(&ring_path, &Ring::init([3; 32], now), true).unwrap();
    let ring = keyfile::load(&ring_path).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let edge = rt.block_on(async {
        let director = support::Director::start(&pki).await;
        let mut t = support::topology(&pki, &[director.addr]);
        // The Director is probed once at start, then not while the packets are counted:
        // a probe is SIP and TLS, which allocate, on the same process.
        t.next_hop.probe.interval = Duration::from_secs(3600);
        t.keys = Some(KeysSource::File(ring_path.clone()));
        t.relay = Some(Relay {
            listen_udp: vec!["127.0.0.2:0".parse().unwrap()],
            listen_tcp: vec!["127.0.0.2:0".parse().unwrap()],
            relay_ip: Some("127.0.0.1".parse().unwrap()),
            port_min: 20_000,
            port_max: 29_999,
            allow_loopback_peers: true,
            // Lockstep rounds go faster than the default 3000 kbit/s: not what is counted.
            max_kbps_per_allocation: 0,
            max_kbps_per_user: 0,
            ..Relay::new("127.0.0.1")
        });
        std::mem::forget(director);
        sipedge::shell::start(&t).await.expect("edge starts")
    });
    let turn = edge.turn_udp[0];
    let wait = Some(Duration::from_secs(5));
    let client = UdpSocket::bind("127.0.0.2:0").unwrap();
    client.set_read_timeout(wait).unwrap();
    let peer = UdpSocket::bind("127.0.0.6:0").unwrap();
    peer.set_read_timeout(wait).unwrap();
    let mut exchange = |request: &[u8]| {
        client.send_to(request, turn).unwrap();
        let mut buf = vec![0u8; 2048];
        let n = client.recv(&mut buf).unwrap();
        buf.truncate(n);
        buf
    };
    let cred = credentials::mint(&ring, "alice@sipedge.test", 3600, now).unwrap();
    let key = long_term_key(&cred.username, support::DOMAIN, &cred.password);
    let peer_addr = peer.local_addr().unwrap();
    let user = (cred.username.as_str(), key.as_slice());
    let relayed = allocate_with_channel(&mut exchange, user, 1, 0x4001, peer_addr);

    // 20 ms of SRTP audio as ChannelData, and the peer's answer of the same size.
    let mut frame = vec![0x40, 0x01, 0x00, 172];
    frame.resize(4 + 172, 0x80);
    let mut buf = vec![0u8; 2048];
    let round = || {
        client.send_to(&frame, turn).unwrap();
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!((n, from), (172, relayed));
        peer.send_to(&buf[..172], relayed).unwrap();
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(n, 4 + 172);
    };
    let blocks = blocks_over_2000_rounds(round);
    assert!(
        blocks < 20,
        "{blocks} heap blocks while 4 000 packets crossed the relay"
    );

    // The same over TURN over TCP (its own allocation and peer): the client's relay worker
    // reads its frames and writes the peer's to it.
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(edge.turn_tcp[0]).unwrap();
    tcp.set_read_timeout(wait).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut tcp_exchange = |request: &[u8]| {
        tcp.write_all(request).unwrap();
        let mut head = [0u8; 20];
        tcp.read_exact(&mut head).unwrap();
        let mut msg = head.to_vec();
        msg.resize(20 + usize::from(u16::from_be_bytes([head[2], head[3]])), 0);
        tcp.read_exact(&mut msg[20..]).unwrap();
        msg
    };
    let tcp_peer = UdpSocket::bind("127.0.0.6:0").unwrap();
    tcp_peer.set_read_timeout(wait).unwrap();
    let peer_addr = tcp_peer.local_addr().unwrap();
    let relayed = allocate_with_channel(&mut tcp_exchange, user, 11, 0x4002, peer_addr);
    let mut frame = vec![0x40, 0x02, 0x00, 172];
    frame.resize(4 + 172, 0x80);
    let tcp_round = || {
        tcp.write_all(&frame).unwrap();
        let (n, from) = tcp_peer.recv_from(&mut buf).unwrap();
        assert_eq!((n, from), (172, relayed));
        tcp_peer.send_to(&buf[..172], relayed).unwrap();
        tcp.read_exact(&mut buf[..4 + 172]).unwrap();
        assert_eq!(&buf[..4], &[0x40, 0x02, 0x00, 172]);
    };
    let blocks = blocks_over_2000_rounds(tcp_round);
    assert!(
        blocks < 20,
        "{blocks} heap blocks while 4 000 packets crossed the relay over TCP"
    );
    rt.block_on(edge.stop());
}

/// Allocates through `exchange` (a request out, its answer back) as `user` (name, long-term
/// key), the first transaction ids from `first_id`, and binds `channel` to `peer`: the
/// relayed address.
fn allocate_with_channel(
    exchange: &mut dyn FnMut(&[u8]) -> Vec<u8>,
    user: (&str, &[u8]),
    first_id: u8,
    channel: u16,
    peer: std::net::SocketAddr,
) -> std::net::SocketAddr {
    use sipedge::core::turn::encode::Writer;
    use sipedge::core::turn::server::{decode_xor_address, ALLOCATE, CHANNEL_BIND};
    use sipedge::core::turn::stun::attr;
    let value = |msg: &[u8], kind| support::attr_value(msg, kind).unwrap();
    let udp = |w: &mut Writer| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    };
    let nonce = value(
        &exchange(&support::turn_request(ALLOCATE, first_id, &udp, None)),
        attr::NONCE,
    );
    let auth = support::TurnAuth {
        username: user.0,
        key: user.1,
        nonce: &nonce,
    };
    let signed = |method, id, build: &dyn Fn(&mut Writer)| {
        support::turn_request(method, id, build, Some(&auth))
    };
    let allocated = exchange(&signed(ALLOCATE, first_id + 1, &udp));
    let relayed = decode_xor_address(
        &value(&allocated, attr::XOR_RELAYED_ADDRESS),
        &[first_id + 1; 12],
    )
    .unwrap();
    let bound = exchange(&signed(CHANNEL_BIND, first_id + 2, &|w| {
        w.attr(
            attr::CHANNEL_NUMBER,
            &[(channel >> 8) as u8, channel as u8, 0, 0],
        )
        .xor_address(attr::XOR_PEER_ADDRESS, peer);
    }));
    assert_eq!(support::error_code(&bound), None, "channel bound");
    relayed
}

/// Heap blocks allocated over 2 000 rounds, after a warm-up (first-use buffers, lazily built
/// tables; the start-up probe done).
fn blocks_over_2000_rounds(mut round: impl FnMut()) -> u64 {
    for _ in 0..50 {
        round();
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = dhat::HeapStats::get();
    for _ in 0..2000 {
        round();
    }
    dhat::HeapStats::get().total_blocks - before.total_blocks
}
