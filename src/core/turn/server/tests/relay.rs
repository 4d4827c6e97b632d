//! The relayed data: permissions, Send and Data indications, ChannelData both ways, and
//! the bandwidth budgets per allocation and per user.

use super::*;
use crate::core::turn::policy::PeerPolicy;

#[test]
fn permissions_send_data_and_policy() {
    let mut w = World::new();
    let relay = w.allocate();
    let peer = addr("198.51.100.99:5000");
    // No permission yet: a Send indication is dropped, and so is the peer's traffic.
    let send = send_indication(peer, 7, b"rtp");
    assert_eq!(w.send(&send, Duration::ZERO).1, Err(Dropped::NoPermission));
    assert_eq!(
        w.server.peer_packet(relay, peer, b"x", w.start),
        Err(Dropped::NoPermission)
    );

    // Loopback, metadata service, internal ranges from outside: 403.
    for denied in [
        "127.0.0.1:1",
        "169.254.169.254:80",
        "10.0.0.5:5000",
        "[::ffff:127.0.0.1]:1",
    ] {
        let req = w.permission_request(addr(denied), 50);
        let code = w.answer_code(&req, Duration::ZERO);
        assert!(code == 403 || code == 443, "{denied}: {code}");
    }
    let v6 = w.permission_request(addr("[2001:db8::1]:1"), 51);
    assert_eq!(w.answer_code(&v6, Duration::ZERO), 443);

    let ok = w.permission_request(peer, 52);
    assert_eq!(w.answer_code(&ok, Duration::ZERO), 0);
    w.relays_to_peer(&send, relay, peer, b"rtp");
    // The peer answers: a Data indication to the client.
    let bytes = w.peer_sends(relay, peer, b"back", Duration::from_secs(2));
    let c = stun::check(&bytes).unwrap();
    assert_eq!((c.class, c.method), (Class::Indication, DATA));
    let d = c.get(attr::DATA).unwrap();
    assert_eq!(&bytes[d.start..d.start + d.len], b"back");
    let p = c.get(attr::XOR_PEER_ADDRESS).unwrap();
    assert_eq!(
        decode_xor_address(&bytes[p.start..p.start + p.len], &c.transaction_id),
        Some(peer)
    );
    // Permissions last 300 s.
    assert_eq!(
        w.server
            .peer_packet(relay, peer, b"late", w.start + Duration::from_secs(301)),
        Err(Dropped::NoPermission)
    );
}

#[test]
fn channels_carry_channel_data_both_ways() {
    let mut w = World::new();
    let relay = w.allocate();
    let peer = addr("198.51.100.99:5000");
    let mut bind = |number: u16, peer: SocketAddr, id: u8| {
        let req = w.bind_request(number, peer, id);
        w.answer_code(&req, Duration::ZERO)
    };
    assert_eq!(bind(0x3fff, peer, 60), 400);
    assert_eq!(bind(0x4001, peer, 61), 0);
    // The same channel to another peer, or the same peer on another channel: 400.
    assert_eq!(bind(0x4001, addr("198.51.100.98:5000"), 62), 400);
    assert_eq!(bind(0x4002, peer, 63), 400);

    let mut frame = vec![0x40, 0x01, 0x00, 0x03];
    frame.extend_from_slice(b"abc");
    w.relays_to_peer(&frame, relay, peer, b"abc");
    let bytes = w.peer_sends(relay, peer, b"xyz", Duration::from_secs(1));
    assert_eq!(bytes, [0x40, 0x01, 0x00, 0x03, b'x', b'y', b'z']);
    let unbound = [0x40, 0x09, 0x00, 0x00];
    assert_eq!(
        w.send(&unbound, Duration::ZERO).1,
        Err(Dropped::UnboundChannel)
    );
}

/// An allocation of `w`'s user from client port `port` with a channel 0x4001 bound to
/// `peer`: its relayed address.
pub(super) fn allocate_with_channel(
    w: &mut World,
    port: u16,
    peer: SocketAddr,
    id: u8,
) -> SocketAddr {
    w.tuple.client = SocketAddr::new(w.tuple.client.ip(), port);
    let relay = w.allocate_as(id);
    let bind = w.bind_request(0x4001, peer, id + 1);
    assert_eq!(w.answer_code(&bind, Duration::ZERO), 0);
    relay
}

/// 172-byte ChannelData payloads (20 ms of audio with SRTP) on channel 0x4001.
pub(super) fn audio_frame() -> Vec<u8> {
    let mut frame = vec![0x40, 0x01, 0x00, 172];
    frame.resize(4 + 172, 0x80);
    frame
}

#[test]
fn bandwidth_per_allocation_drops_the_excess_in_each_direction_apart() {
    let mut w = World::new();
    // 137.6 kbit/s: 100 audio frames a second, a burst of 100 frames.
    w.server.cfg.bandwidth_per_allocation = Budget::kbit(137);
    let peer = addr("198.51.100.99:5000");
    let relay = allocate_with_channel(&mut w, 40000, peer, 80);
    let tuple = w.tuple;
    let frame = audio_frame();
    let start = w.start;
    let at = |ms: u64| start + Duration::from_millis(ms);
    // 50 frames a second (one call's audio) pass for a minute, both ways.
    for i in 0..3000u64 {
        assert!(w.server.channel_to_peer(&tuple, &frame, at(20 * i)).is_ok());
        let back = w
            .server
            .peer_to_client(relay, peer, &[0; 172], at(20 * i), &mut Vec::new());
        assert!(
            matches!(back, Ok((_, ToClient::Channel(_)))),
            "{i}: {back:?}"
        );
    }
    // Three calls' worth in one second from the client: the burst passes, then the excess
    // is dropped and said so; the other direction is untouched.
    let t = 60_000;
    let passed = (0..150)
        .filter(|_| w.server.channel_to_peer(&tuple, &frame, at(t)).is_ok())
        .count();
    assert!((95..=100).contains(&passed), "{passed}");
    assert_eq!(
        w.server.channel_to_peer(&tuple, &frame, at(t)),
        Err(Dropped::OverBandwidth)
    );
    assert!(w.server.peer_packet(relay, peer, &[0; 172], at(t)).is_ok());
    // Send indications and Data indications count against the same budgets.
    let send = send_indication(peer, 90, &[0u8; 172]);
    assert_eq!(
        w.send(&send, Duration::from_millis(t)).1,
        Err(Dropped::OverBandwidth)
    );
    assert_eq!(w.send(&send, Duration::from_millis(t + 100)).1, Ok(()));
    // A second later the budget is back.
    assert!(w
        .server
        .channel_to_peer(&tuple, &frame, at(t + 1000))
        .is_ok());
}

#[test]
fn bandwidth_per_user_is_shared_by_all_of_its_allocations() {
    let mut w = World::new();
    w.server.cfg.bandwidth_per_allocation = None;
    w.server.cfg.bandwidth_per_user = Budget::kbit(137); // 100 frames a second
    let peer = addr("198.51.100.99:5000");
    let first = allocate_with_channel(&mut w, 40000, peer, 100);
    let tuple_a = w.tuple;
    let second = allocate_with_channel(&mut w, 40001, peer, 110);
    let tuple_b = w.tuple;
    let frame = audio_frame();
    let t = w.start + Duration::from_secs(1);
    let mut passed = 0;
    for _ in 0..100 {
        passed += usize::from(w.server.channel_to_peer(&tuple_a, &frame, t).is_ok());
        passed += usize::from(w.server.channel_to_peer(&tuple_b, &frame, t).is_ok());
    }
    assert!((95..=100).contains(&passed), "{passed}");
    // From peers, Data indications (no channel on the general path) share the user's other
    // direction: both relays drain one budget.
    let mut to_clients = 0;
    for _ in 0..100 {
        for relay in [first, second] {
            to_clients += usize::from(w.server.peer_packet(relay, peer, &[0; 172], t).is_ok());
        }
    }
    assert!((95..=100).contains(&to_clients), "{to_clients}");
    // Another user is not affected.
    w.sign_in("bob", 8 * 3600);
    allocate_with_channel(&mut w, 40002, peer, 120);
    let tuple_c = w.tuple;
    assert!(w.server.channel_to_peer(&tuple_c, &frame, t).is_ok());
    // With every allocation of alice gone, her share is gone too.
    let mut out = Vec::new();
    w.server.client_closed(tuple_a, &mut out);
    w.server.client_closed(tuple_b, &mut out);
    assert!(!w.server.per_user.keys().any(|u| u.ends_with(":alice")));
}

#[test]
fn send_indications_with_unknown_required_attributes_or_port_zero_are_discarded() {
    let mut w = World::new();
    w.allocate();
    let peer = addr("198.51.100.9:7000");
    let perm = w.permission_request(peer, 2);
    assert_eq!(w.answer_code(&perm, Duration::ZERO), 0);
    let send = |to: SocketAddr, extra: Option<(u16, Vec<u8>)>| {
        let mut msg = Writer::new(Class::Indication, SEND, [3; 12]);
        msg.xor_address(attr::XOR_PEER_ADDRESS, to)
            .attr(attr::DATA, b"hello");
        if let Some((k, v)) = extra {
            msg.attr(k, &v);
        }
        msg.finish()
    };
    assert!(matches!(
        w.send(&send(peer, None), Duration::ZERO),
        (_, Ok(()))
    ));
    assert_eq!(
        w.send(
            &send(peer, Some((attr::DONT_FRAGMENT, vec![]))),
            Duration::ZERO
        )
        .1,
        Err(Dropped::UnknownAttribute)
    );
    assert_eq!(
        w.send(
            &send(peer, Some((0x0042, vec![1, 2, 3, 4]))),
            Duration::ZERO
        )
        .1,
        Err(Dropped::UnknownAttribute)
    );
    assert_eq!(
        w.send(&send(addr("198.51.100.9:0"), None), Duration::ZERO)
            .1,
        Err(Dropped::BadPeer)
    );
    // An Allocate asking for DONT-FRAGMENT: 420 naming it (RFC 8656 §7.2).
    w.tuple.client = addr("198.51.100.20:40010");
    let df = w.allocate_request(9, &[(attr::DONT_FRAGMENT, vec![])]);
    assert_eq!(w.answer_code(&df, Duration::ZERO), 420);
}

/// Two clients of one edge, each behind its own relay, reach each other only through the
/// relay's own address: a permission for it is granted, a channel or a Send to a relayed
/// port goes, and nothing of that address outside the relayed ports (the edge's listeners)
/// is reachable; other spellings of the address stay refused.
#[test]
fn a_relay_reaches_another_allocation_on_its_own_address_and_nothing_else_there() {
    let mut w = World::new();
    w.server.cfg.policy = PeerPolicy {
        // The interfaces (192.0.2.1) and the relay's addresses.
        own: vec![
            addr("192.0.2.1:0").ip(),
            addr("192.0.2.10:0").ip(),
            addr("203.0.113.10:0").ip(),
        ],
        relayed: vec![addr("192.0.2.10:0").ip(), addr("203.0.113.10:0").ip()],
        relayed_ports: (50000, 50009),
        ..PeerPolicy::default()
    };
    w.allocate();
    let other_allocation = addr("203.0.113.10:50007");
    let perm = w.permission_request(other_allocation, 2);
    assert_eq!(
        w.answer_code(&perm, Duration::ZERO),
        0,
        "the relay's own address"
    );
    let relayed = w.send(
        &send_indication(other_allocation, 3, b"rtp"),
        Duration::ZERO,
    );
    assert!(matches!(relayed, (_, Ok(()))), "{relayed:?}");
    // The edge's own listeners on that address: not through the relay.
    for listener in [
        "203.0.113.10:5061",
        "203.0.113.10:3478",
        "203.0.113.10:49999",
    ] {
        let to = addr(listener);
        assert_eq!(
            w.send(&send_indication(to, 4, b"x"), Duration::ZERO).1,
            Err(Dropped::BadPeer),
            "{listener}"
        );
        assert_eq!(
            w.answer_code(&w.bind_request(0x4001, to, 5), Duration::ZERO),
            403
        );
    }
    assert_eq!(
        w.answer_code(&w.bind_request(0x4002, other_allocation, 6), Duration::ZERO),
        0,
        "a channel to another allocation"
    );
    // The edge's other addresses, and the relay's in another spelling: refused as before
    // (403; the IPv6 spelling already as the wrong family for an IPv4 relay, 443).
    for (own, code) in [
        ("192.0.2.1:50001", 403),
        ("[::ffff:203.0.113.10]:50001", 443),
    ] {
        let got = w.answer_code(&w.permission_request(addr(own), 7), Duration::ZERO);
        assert_eq!(got, code, "{own}");
    }
}
