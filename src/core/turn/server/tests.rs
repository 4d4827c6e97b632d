use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::core::credentials;
use crate::core::keyring::Ring;
use crate::core::turn::auth::long_term_key;
use crate::core::turn::nonce::Nonces;

const T0: u64 = 1_800_000_000;
const REALM: &str = "sipedge.test";

struct World {
    ring: Ring,
    nonces: Nonces,
    server: Server,
    start: Instant,
    tuple: FiveTuple,
    user: String,
    pass: String,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

impl World {
    fn new() -> World {
        let ring = Ring::init([4; 32], T0);
        let c = credentials::mint(&ring, "alice", 8 * 3600, T0).unwrap();
        let cfg = TurnConfig::new(
            REALM,
            "192.0.2.10".parse().unwrap(),
            "203.0.113.10".parse().unwrap(),
            (50000, 50009),
        );
        let start = Instant::now();
        World {
            ring,
            nonces: Nonces::new(&[5; 32], REALM, 600),
            server: Server::new(cfg, 0, start),
            start,
            tuple: FiveTuple {
                client: addr("198.51.100.20:40000"),
                server: addr("192.0.2.10:3478"),
                transport: Transport::Udp,
            },
            user: c.username,
            pass: c.password,
        }
    }

    fn key(&self) -> [u8; 16] {
        long_term_key(&self.user, REALM, &self.pass)
    }

    /// A request with credentials (and a valid nonce) unless `anonymous`.
    fn request(&self, method: u16, id: u8, attrs: &[(u16, Vec<u8>)], anonymous: bool) -> Vec<u8> {
        let mut w = Writer::new(Class::Request, method, [id; 12]);
        for (k, v) in attrs {
            w.attr(*k, v);
        }
        if !anonymous {
            let nonce = self.nonces.issue(self.tuple.client.ip(), T0);
            w.attr(attr::USERNAME, self.user.as_bytes())
                .attr(attr::REALM, REALM.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes())
                .integrity(&self.key());
        }
        w.finish_with_fingerprint()
    }

    fn send(&mut self, packet: &[u8], after: Duration) -> (Vec<Output>, Result<(), Dropped>) {
        let auth = AuthContext {
            ring: &self.ring,
            nonces: &self.nonces,
            realm: REALM,
            max_lifetime_secs: 8 * 3600,
        };
        let mut out = Vec::new();
        let arrival = Arrival {
            tuple: self.tuple,
            origin: Origin::External,
            now: self.start + after,
            now_unix: T0 + after.as_secs(),
        };
        let r = self.server.client_packet(&auth, arrival, packet, &mut out);
        // Every step of every test leaves the tables consistent and within bounds.
        self.server.check_invariants().unwrap();
        (out, r)
    }

    /// The error code of the one answer, or 0 for success.
    fn code(out: &[Output]) -> u16 {
        let bytes = out
            .iter()
            .find_map(|o| match o {
                Output::ToClient { bytes, .. } => Some(bytes.clone()),
                _ => None,
            })
            .expect("an answer");
        let c = stun::check(&bytes).unwrap();
        match c.get(attr::ERROR_CODE) {
            None => 0,
            Some(a) => u16::from(bytes[a.start + 2]) * 100 + u16::from(bytes[a.start + 3]),
        }
    }

    fn allocate(&mut self) -> SocketAddr {
        let req = self.request(
            ALLOCATE,
            1,
            &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            false,
        );
        let (out, _) = self.send(&req, Duration::ZERO);
        assert_eq!(World::code(&out), 0, "{out:?}");
        out.iter()
            .find_map(|o| match o {
                Output::OpenRelay { relay } => Some(*relay),
                _ => None,
            })
            .unwrap()
    }

    fn peer_attr(peer: SocketAddr, id: u8) -> (u16, Vec<u8>) {
        let mut w = Writer::new(Class::Request, 1, [id; 12]);
        w.xor_address(attr::XOR_PEER_ADDRESS, peer);
        let m = w.finish();
        (attr::XOR_PEER_ADDRESS, m[24..].to_vec())
    }
}

#[test]
fn allocate_needs_credentials_then_succeeds_and_is_signed() {
    let mut w = World::new();
    let anonymous = w.request(
        ALLOCATE,
        1,
        &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        true,
    );
    let (out, _) = w.send(&anonymous, Duration::ZERO);
    assert_eq!(World::code(&out), 401);
    let Output::ToClient { bytes, .. } = &out[0] else {
        panic!()
    };
    let c = stun::check(bytes).unwrap();
    assert!(c.get(attr::NONCE).is_some() && c.get(attr::REALM).is_some());
    assert_eq!(
        w.server.allocations(),
        0,
        "no state for unauthenticated requests"
    );

    let req = w.request(
        ALLOCATE,
        2,
        &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        false,
    );
    let (out, _) = w.send(&req, Duration::ZERO);
    assert_eq!(World::code(&out), 0);
    assert_eq!(
        out[0],
        Output::OpenRelay {
            relay: addr("192.0.2.10:50000")
        }
    );
    let Output::ToClient { bytes, .. } = &out[1] else {
        panic!()
    };
    // The answer decodes with stun-rs and its MESSAGE-INTEGRITY validates with the key.
    use stun_rs::attributes::stun::XorMappedAddress;
    use stun_rs::attributes::turn::{LifeTime, XorRelayedAddress};
    use stun_rs::{DecoderContextBuilder, HMACKey, MessageDecoderBuilder};
    let key = HMACKey::new_long_term(
        stun_rs::attributes::stun::UserName::new(&w.user).unwrap(),
        stun_rs::attributes::stun::Realm::new(REALM).unwrap(),
        &w.pass,
        stun_rs::Algorithm::from(stun_rs::AlgorithmId::MD5),
    )
    .unwrap();
    let ctx = DecoderContextBuilder::default()
        .with_key(key)
        .with_validation()
        .build();
    let (msg, _) = MessageDecoderBuilder::default()
        .with_context(ctx)
        .build()
        .decode(bytes)
        .unwrap();
    let relayed = msg
        .get::<XorRelayedAddress>()
        .unwrap()
        .as_xor_relayed_address()
        .unwrap();
    assert_eq!(
        *relayed.socket_address(),
        addr("203.0.113.10:50000"),
        "the advertised (public) address"
    );
    let mapped = msg
        .get::<XorMappedAddress>()
        .unwrap()
        .as_xor_mapped_address()
        .unwrap();
    assert_eq!(*mapped.socket_address(), w.tuple.client);
    let lifetime = msg.get::<LifeTime>().unwrap().as_life_time().unwrap();
    assert_eq!(lifetime.as_u32(), 600);

    // A retransmission gets the same answer; a new Allocate on the same 5-tuple is 437.
    let (again, _) = w.send(&req, Duration::from_millis(100));
    assert_eq!(
        again,
        vec![Output::ToClient {
            tuple: w.tuple,
            bytes: bytes.clone()
        }]
    );
    let other = w.request(
        ALLOCATE,
        3,
        &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        false,
    );
    assert_eq!(World::code(&w.send(&other, Duration::ZERO).0), 437);
}

#[test]
fn allocate_error_codes() {
    let mut w = World::new();
    type Attrs = Vec<(u16, Vec<u8>)>;
    let cases: Vec<(Attrs, u16)> = vec![
        (vec![], 400),
        (vec![(attr::REQUESTED_TRANSPORT, vec![6, 0, 0, 0])], 442),
        (
            vec![
                (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
                (attr::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]),
            ],
            440,
        ),
        (
            vec![
                (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
                (attr::RESERVATION_TOKEN, vec![0; 8]),
            ],
            508,
        ),
        (
            vec![
                (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
                (0x7000, vec![1]),
            ],
            420,
        ),
    ];
    for (i, (attrs, code)) in cases.into_iter().enumerate() {
        let req = w.request(ALLOCATE, 10 + i as u8, &attrs, false);
        assert_eq!(
            World::code(&w.send(&req, Duration::ZERO).0),
            code,
            "case {i}"
        );
    }
    assert_eq!(w.server.allocations(), 0);
}

#[test]
fn quota_and_capacity() {
    let mut w = World::new();
    w.server.cfg.max_allocations_per_user = 2;
    for i in 0..3u16 {
        w.tuple.client = SocketAddr::new(w.tuple.client.ip(), 40000 + i);
        let req = w.request(
            ALLOCATE,
            20 + i as u8,
            &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            false,
        );
        let expect = if i < 2 { 0 } else { 486 };
        assert_eq!(World::code(&w.send(&req, Duration::ZERO).0), expect);
    }
    // Ports run out (10 in the range) before the quota of a generous user does.
    let mut w = World::new();
    w.server.cfg.max_allocations_per_user = 100;
    let mut codes = Vec::new();
    for i in 0..11u16 {
        w.tuple.client = SocketAddr::new(w.tuple.client.ip(), 41000 + i);
        let req = w.request(
            ALLOCATE,
            40 + i as u8,
            &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            false,
        );
        codes.push(World::code(&w.send(&req, Duration::ZERO).0));
    }
    assert_eq!(codes.iter().filter(|&&c| c == 0).count(), 10);
    assert_eq!(codes.last(), Some(&508));
}

#[test]
fn permissions_send_data_and_policy() {
    let mut w = World::new();
    let relay = w.allocate();
    let peer = addr("198.51.100.99:5000");
    // No permission yet: a Send indication is dropped, and so is the peer's traffic.
    let send = {
        let mut m = Writer::new(Class::Indication, SEND, [7; 12]);
        m.xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, b"rtp");
        m.finish()
    };
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
        let req = w.request(
            CREATE_PERMISSION,
            50,
            &[World::peer_attr(addr(denied), 50)],
            false,
        );
        let code = World::code(&w.send(&req, Duration::ZERO).0);
        assert!(code == 403 || code == 443, "{denied}: {code}");
    }
    let v6 = w.request(
        CREATE_PERMISSION,
        51,
        &[World::peer_attr(addr("[2001:db8::1]:1"), 51)],
        false,
    );
    assert_eq!(World::code(&w.send(&v6, Duration::ZERO).0), 443);

    let ok = w.request(CREATE_PERMISSION, 52, &[World::peer_attr(peer, 52)], false);
    assert_eq!(World::code(&w.send(&ok, Duration::ZERO).0), 0);
    let (out, r) = w.send(&send, Duration::from_secs(1));
    assert_eq!(r, Ok(()));
    assert_eq!(
        out,
        vec![Output::ToPeer {
            relay,
            peer,
            bytes: b"rtp".to_vec()
        }]
    );
    // The peer answers: a Data indication to the client.
    let Ok(Output::ToClient { bytes, .. }) =
        w.server
            .peer_packet(relay, peer, b"back", w.start + Duration::from_secs(2))
    else {
        panic!()
    };
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
    let bind = |w: &World, number: u16, peer: SocketAddr, id: u8| {
        w.request(
            CHANNEL_BIND,
            id,
            &[
                (
                    attr::CHANNEL_NUMBER,
                    [number.to_be_bytes().to_vec(), vec![0, 0]].concat(),
                ),
                World::peer_attr(peer, id),
            ],
            false,
        )
    };
    assert_eq!(
        World::code(&w.send(&bind(&w, 0x3fff, peer, 60), Duration::ZERO).0),
        400
    );
    assert_eq!(
        World::code(&w.send(&bind(&w, 0x4001, peer, 61), Duration::ZERO).0),
        0
    );
    // The same channel to another peer, or the same peer on another channel: 400.
    assert_eq!(
        World::code(
            &w.send(
                &bind(&w, 0x4001, addr("198.51.100.98:5000"), 62),
                Duration::ZERO
            )
            .0
        ),
        400
    );
    assert_eq!(
        World::code(&w.send(&bind(&w, 0x4002, peer, 63), Duration::ZERO).0),
        400
    );

    let mut frame = vec![0x40, 0x01, 0x00, 0x03];
    frame.extend_from_slice(b"abc");
    let (out, r) = w.send(&frame, Duration::from_secs(1));
    assert_eq!(r, Ok(()));
    assert_eq!(
        out,
        vec![Output::ToPeer {
            relay,
            peer,
            bytes: b"abc".to_vec()
        }]
    );
    let Ok(Output::ToClient { bytes, .. }) =
        w.server
            .peer_packet(relay, peer, b"xyz", w.start + Duration::from_secs(1))
    else {
        panic!()
    };
    assert_eq!(bytes, [0x40, 0x01, 0x00, 0x03, b'x', b'y', b'z']);
    let unbound = [0x40, 0x09, 0x00, 0x00];
    assert_eq!(
        w.send(&unbound, Duration::ZERO).1,
        Err(Dropped::UnboundChannel)
    );
}

#[test]
fn refresh_expiry_and_wrong_credentials() {
    let mut w = World::new();
    let relay = w.allocate();
    // Refresh to 1200 s; then the allocation outlives the default 600 s.
    let refresh = w.request(
        REFRESH,
        70,
        &[(attr::LIFETIME, 1200u32.to_be_bytes().to_vec())],
        false,
    );
    assert_eq!(World::code(&w.send(&refresh, Duration::from_secs(10)).0), 0);
    let mut out = Vec::new();
    w.server
        .expire(w.start + Duration::from_secs(700), &mut out);
    assert!(out.is_empty());
    w.server
        .expire(w.start + Duration::from_secs(1211), &mut out);
    assert_eq!(out, vec![Output::CloseRelay { relay }]);
    assert_eq!(w.server.allocations(), 0);

    // Refresh with LIFETIME 0 deletes at once; then Refresh is 437.
    let relay = w.allocate();
    let zero = w.request(REFRESH, 71, &[(attr::LIFETIME, vec![0, 0, 0, 0])], false);
    let (out, _) = w.send(&zero, Duration::ZERO);
    assert!(out.contains(&Output::CloseRelay { relay }));
    assert_eq!(World::code(&w.send(&zero, Duration::ZERO).0), 437);

    // Another user's request on this 5-tuple's allocation: 441.
    w.allocate();
    let bob = credentials::mint(&w.ring, "bob", 3600, T0).unwrap();
    w.user = bob.username;
    w.pass = bob.password;
    let refresh = w.request(REFRESH, 72, &[], false);
    assert_eq!(World::code(&w.send(&refresh, Duration::ZERO).0), 441);
}

#[test]
fn stale_nonces_get_438_and_garbage_is_dropped() {
    let mut w = World::new();
    let req = w.request(
        ALLOCATE,
        80,
        &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        false,
    );
    assert_eq!(World::code(&w.send(&req, Duration::from_secs(601)).0), 438);
    assert_eq!(
        w.send(&[0xc5, b'g'], Duration::ZERO).1,
        Err(Dropped::NotStunOrChannelData)
    );
    let mut truncated = req.clone();
    truncated.pop();
    assert_eq!(
        w.send(&truncated, Duration::ZERO).1,
        Err(Dropped::MalformedStun)
    );
    let unknown_method = w.request(0x00A, 81, &[], true);
    assert_eq!(
        World::code(&w.send(&unknown_method, Duration::from_secs(601)).0),
        400
    );
}

#[test]
fn binding_is_answered_without_credentials() {
    let mut w = World::new();
    let req = Writer::new(Class::Request, BINDING, [9; 12]).finish();
    let (out, _) = w.send(&req, Duration::ZERO);
    assert_eq!(World::code(&out), 0);
}

#[test]
fn even_port_with_reservation_then_the_token_claims_the_next_port() {
    let mut w = World::new();
    let req = w.request(
        ALLOCATE,
        90,
        &[
            (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
            (attr::EVEN_PORT, vec![0x80]),
        ],
        false,
    );
    let (out, _) = w.send(&req, Duration::ZERO);
    assert_eq!(World::code(&out), 0);
    let Output::OpenRelay { relay } = out[0] else {
        panic!()
    };
    assert_eq!(relay.port() % 2, 0, "an even port");
    let Output::ToClient { bytes, .. } = &out[1] else {
        panic!()
    };
    let c = stun::check(bytes).unwrap();
    let t = c.get(attr::RESERVATION_TOKEN).unwrap();
    let token = bytes[t.start..t.start + 8].to_vec();

    // Another client (another 5-tuple) claims the reserved port with the token, once.
    w.tuple.client = addr("198.51.100.20:40002");
    let claim = w.request(
        ALLOCATE,
        91,
        &[
            (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
            (attr::RESERVATION_TOKEN, token.clone()),
        ],
        false,
    );
    let (out, _) = w.send(&claim, Duration::from_secs(1));
    assert_eq!(
        out[0],
        Output::OpenRelay {
            relay: SocketAddr::new(relay.ip(), relay.port() + 1)
        }
    );
    w.tuple.client = addr("198.51.100.20:40004");
    let again = w.request(
        ALLOCATE,
        92,
        &[
            (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
            (attr::RESERVATION_TOKEN, token),
        ],
        false,
    );
    assert_eq!(World::code(&w.send(&again, Duration::from_secs(2)).0), 508);
}

#[test]
fn additional_address_family_is_answered_not_crashed_on() {
    let mut w = World::new();
    let both = w.request(
        ALLOCATE,
        100,
        &[
            (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
            (attr::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0]),
            (attr::REQUESTED_ADDRESS_FAMILY, vec![1, 0, 0, 0]),
        ],
        false,
    );
    assert_eq!(World::code(&w.send(&both, Duration::ZERO).0), 400);
    let dual = w.request(
        ALLOCATE,
        101,
        &[
            (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
            (attr::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0]),
        ],
        false,
    );
    let (out, _) = w.send(&dual, Duration::ZERO);
    assert_eq!(World::code(&out), 0, "the IPv4 relay is granted");
    let Output::ToClient { bytes, .. } = &out[1] else {
        panic!()
    };
    let c = stun::check(bytes).unwrap();
    let e = c.get(attr::ADDRESS_ERROR_CODE).unwrap();
    assert_eq!(
        &bytes[e.start..e.start + 4],
        &[2, 0, 4, 40],
        "IPv6 refused with 440"
    );
}

#[test]
fn quota_per_source_address() {
    let mut w = World::new();
    w.server.cfg.max_allocations_per_source = 2;
    let mut codes = Vec::new();
    for i in 0..3u16 {
        // Three different users from the same address.
        let c = credentials::mint(&w.ring, &format!("user{i}"), 3600, T0).unwrap();
        w.user = c.username;
        w.pass = c.password;
        w.tuple.client = SocketAddr::new(w.tuple.client.ip(), 42000 + i);
        let req = w.request(
            ALLOCATE,
            110 + i as u8,
            &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            false,
        );
        codes.push(World::code(&w.send(&req, Duration::ZERO).0));
    }
    assert_eq!(codes, vec![0, 0, 486]);
}

#[test]
fn ipv6_relays() {
    let ring = Ring::init([4; 32], T0);
    let c = credentials::mint(&ring, "alice", 3600, T0).unwrap();
    let cfg = TurnConfig::new(
        REALM,
        "2001:db8::10".parse().unwrap(),
        "2001:db8::10".parse().unwrap(),
        (50000, 50009),
    );
    let mut w = World::new();
    w.ring = ring;
    w.user = c.username;
    w.pass = c.password;
    w.server = Server::new(cfg, 0, w.start);
    w.tuple = FiveTuple {
        client: addr("[2001:db8::20]:40000"),
        server: addr("[2001:db8::10]:3478"),
        transport: Transport::Udp,
    };
    // An IPv4 relay is asked of an IPv6-only server: 440.
    let v4 = w.request(
        ALLOCATE,
        120,
        &[
            (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
            (attr::REQUESTED_ADDRESS_FAMILY, vec![1, 0, 0, 0]),
        ],
        false,
    );
    assert_eq!(World::code(&w.send(&v4, Duration::ZERO).0), 440);
    let v6 = w.request(
        ALLOCATE,
        121,
        &[
            (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
            (attr::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]),
        ],
        false,
    );
    let (out, _) = w.send(&v6, Duration::ZERO);
    assert_eq!(World::code(&out), 0);
    let Output::ToClient { bytes, .. } = &out[1] else {
        panic!()
    };
    let c = stun::check(bytes).unwrap();
    let r = c.get(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(
        decode_xor_address(&bytes[r.start..r.start + r.len], &c.transaction_id),
        Some(addr("[2001:db8::10]:50000"))
    );
    // An IPv4 peer on an IPv6 relay: 443.
    let p4 = w.request(
        CREATE_PERMISSION,
        122,
        &[World::peer_attr(addr("198.51.100.9:1"), 122)],
        false,
    );
    assert_eq!(World::code(&w.send(&p4, Duration::ZERO).0), 443);
    let p6 = w.request(
        CREATE_PERMISSION,
        123,
        &[World::peer_attr(addr("[2001:db8::99]:1"), 123)],
        false,
    );
    assert_eq!(World::code(&w.send(&p6, Duration::ZERO).0), 0);
}

#[test]
fn total_allocations_are_capped_with_508() {
    let mut w = World::new();
    w.server.cfg.max_allocations = 3;
    let mut codes = Vec::new();
    for i in 0..4u16 {
        w.tuple.client = SocketAddr::new(w.tuple.client.ip(), 42000 + i);
        let req = w.request(
            ALLOCATE,
            70 + i as u8,
            &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            false,
        );
        codes.push(World::code(&w.send(&req, Duration::ZERO).0));
    }
    assert_eq!(codes, [0, 0, 0, 508]);
}

/// An allocation of `w`'s user from client port `port` with a channel 0x4001 bound to
/// `peer`: its relayed address.
fn allocate_with_channel(w: &mut World, port: u16, peer: SocketAddr, id: u8) -> SocketAddr {
    w.tuple.client = SocketAddr::new(w.tuple.client.ip(), port);
    let req = w.request(
        ALLOCATE,
        id,
        &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        false,
    );
    let (out, _) = w.send(&req, Duration::ZERO);
    assert_eq!(World::code(&out), 0);
    let relay = out
        .iter()
        .find_map(|o| match o {
            Output::OpenRelay { relay } => Some(*relay),
            _ => None,
        })
        .unwrap();
    let bind = w.request(
        CHANNEL_BIND,
        id + 1,
        &[
            (attr::CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0]),
            World::peer_attr(peer, id + 1),
        ],
        false,
    );
    assert_eq!(World::code(&w.send(&bind, Duration::ZERO).0), 0);
    relay
}

/// 172-byte ChannelData payloads (20 ms of audio with SRTP) on channel 0x4001.
fn audio_frame() -> Vec<u8> {
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
    let send = {
        let mut m = Writer::new(Class::Indication, SEND, [90; 12]);
        m.xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, &[0u8; 172]);
        m.finish()
    };
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
    let c = credentials::mint(&w.ring, "bob", 8 * 3600, T0).unwrap();
    w.user = c.username;
    w.pass = c.password;
    allocate_with_channel(&mut w, 40002, peer, 120);
    let tuple_c = w.tuple;
    assert!(w.server.channel_to_peer(&tuple_c, &frame, t).is_ok());
    // With every allocation of alice gone, her share is gone too.
    let mut out = Vec::new();
    w.server.client_closed(tuple_a, &mut out);
    w.server.client_closed(tuple_b, &mut out);
    assert!(!w.server.per_user.keys().any(|u| u.ends_with(":alice")));
}

/// An Allocate with EVEN-PORT and the R bit from `client`; the answer's code and token.
fn reserve(w: &mut World, client: &str, id: u8, after: Duration) -> (u16, Option<Vec<u8>>) {
    w.tuple.client = addr(client);
    let req = w.request(
        ALLOCATE,
        id,
        &[
            (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
            (attr::EVEN_PORT, vec![0x80]),
        ],
        false,
    );
    let (out, _) = w.send(&req, after);
    let code = World::code(&out);
    let token = out.iter().find_map(|o| match o {
        Output::ToClient { bytes, .. } => {
            let c = stun::check(bytes).ok()?;
            let t = c.get(attr::RESERVATION_TOKEN)?;
            Some(bytes[t.start..t.start + 8].to_vec())
        }
        _ => None,
    });
    (code, token)
}

#[test]
fn reservations_count_against_the_quotas_expire_and_die_with_their_allocation() {
    let mut w = World::new();
    w.server.cfg.max_allocations_per_user = 5;
    w.server.cfg.max_allocations_per_source = 100;
    // Each EVEN-PORT with R holds two: its allocation and the reserved port.
    let (code, token) = reserve(&mut w, "198.51.100.20:40000", 1, Duration::ZERO);
    assert_eq!((code, token.is_some()), (0, true));
    let (code, _) = reserve(&mut w, "198.51.100.20:40001", 2, Duration::ZERO);
    assert_eq!(code, 0);
    assert_eq!(w.server.held(), 4);
    assert_eq!(w.server.reservations(), 2);
    // A fifth hold fits, a sixth (an allocation with a reservation) does not.
    let (code, _) = reserve(&mut w, "198.51.100.20:40002", 3, Duration::ZERO);
    assert_eq!(code, 486, "the quota counts reservations");
    // Reservations expire after 30 s, on their own deadline.
    assert_eq!(
        w.server.poll_timeout(),
        Some(w.start + RESERVATION_LIFETIME)
    );
    let mut out = Vec::new();
    w.server.expire(w.start + RESERVATION_LIFETIME, &mut out);
    assert_eq!(w.server.reservations(), 0);
    assert_eq!(w.server.held(), 2);
    // ... and die with their allocation (Refresh 0).
    let (code, _) = reserve(&mut w, "198.51.100.20:40003", 4, Duration::from_secs(31));
    assert_eq!(code, 0);
    assert_eq!(w.server.reservations(), 1);
    let refresh = w.request(REFRESH, 5, &[(attr::LIFETIME, vec![0, 0, 0, 0])], false);
    assert_eq!(World::code(&w.send(&refresh, Duration::from_secs(32)).0), 0);
    assert_eq!(w.server.reservations(), 0);
    assert_eq!(w.server.held(), 2);
    // A claimed token ends its reservation: the claim is the hold now.
    let (code, token) = reserve(&mut w, "198.51.100.20:40004", 6, Duration::from_secs(33));
    assert_eq!(code, 0);
    w.tuple.client = addr("198.51.100.20:40005");
    let claim = w.request(
        ALLOCATE,
        7,
        &[
            (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
            (attr::RESERVATION_TOKEN, token.unwrap()),
        ],
        false,
    );
    assert_eq!(World::code(&w.send(&claim, Duration::from_secs(34)).0), 0);
    assert_eq!((w.server.reservations(), w.server.held()), (0, 4));
}

#[test]
fn one_user_is_one_quota_whatever_the_credentials_and_a_v6_source_is_its_64() {
    let mut w = World::new();
    w.server.cfg.max_allocations_per_user = 2;
    let mut codes = Vec::new();
    for (i, ttl) in [3600u64, 7200, 1800].iter().enumerate() {
        // Three credentials of the same user (other expiries, other strings).
        let c = credentials::mint(&w.ring, "alice", *ttl, T0).unwrap();
        w.user = c.username;
        w.pass = c.password;
        w.tuple.client = addr(&format!("198.51.100.{}:40000", 30 + i));
        let req = w.request(
            ALLOCATE,
            10 + i as u8,
            &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            false,
        );
        codes.push(World::code(&w.send(&req, Duration::ZERO).0));
    }
    assert_eq!(codes, vec![0, 0, 486]);
    assert_eq!(user_of("1800000000:alice"), "alice");
    assert_eq!(user_of("alice"), "alice");

    // IPv6: one /64 is one source.
    let cfg = TurnConfig {
        max_allocations_per_source: 2,
        ..TurnConfig::new(
            REALM,
            "2001:db8::10".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
            (50000, 50009),
        )
    };
    let mut w = World::new();
    w.server = Server::new(cfg, 0, w.start);
    let mut codes = Vec::new();
    for i in 0..3u8 {
        let c = credentials::mint(&w.ring, &format!("v6user{i}"), 3600, T0).unwrap();
        w.user = c.username;
        w.pass = c.password;
        w.tuple = FiveTuple {
            client: addr(&format!("[2001:db8:1:2::{}]:40000", i + 1)),
            server: addr("[2001:db8::10]:3478"),
            transport: Transport::Udp,
        };
        let req = w.request(
            ALLOCATE,
            20 + i,
            &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            false,
        );
        codes.push(World::code(&w.send(&req, Duration::ZERO).0));
    }
    assert_eq!(codes, vec![0, 0, 486]);
}

#[test]
fn strangers_draw_a_bounded_number_of_answer_bytes() {
    let mut w = World::new();
    w.server.cfg.strangers.bytes_per_sec = 1000;
    w.server = Server::new(w.server.cfg.clone(), 0, w.start);
    let anonymous = w.request(
        ALLOCATE,
        1,
        &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        true,
    );
    let mut answered = 0;
    let mut refused = 0;
    let mut bytes = 0;
    for _ in 0..100 {
        match w.send(&anonymous, Duration::ZERO) {
            (out, Ok(())) => {
                answered += 1;
                for o in out {
                    if let Output::ToClient { bytes: b, .. } = o {
                        assert!(
                            stun::check(&b).unwrap().get(0x8022).is_none(),
                            "no SOFTWARE"
                        );
                        bytes += b.len();
                    }
                }
            }
            (out, Err(Dropped::StrangerBudget)) => {
                assert!(out.is_empty());
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(bytes <= 2000, "two seconds' worth at once: {bytes}");
    assert!(
        answered > 0 && refused >= 80,
        "{answered} answered, {refused} refused"
    );
    // Bindings draw from the same budget; a second later there is room again.
    let binding = Writer::new(Class::Request, BINDING, [9; 12]).finish();
    assert_eq!(
        w.send(&binding, Duration::ZERO).1,
        Err(Dropped::StrangerBudget)
    );
    assert_eq!(w.send(&binding, Duration::from_secs(1)).1, Ok(()));
    // Authenticated work is not a stranger's: it is answered whatever the budget.
    assert_eq!(
        World::code(
            &w.send(
                &w.request(
                    ALLOCATE,
                    2,
                    &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
                    false
                ),
                Duration::from_secs(1)
            )
            .0
        ),
        0
    );
}

#[test]
fn permissions_and_channels_per_allocation_are_capped() {
    let mut w = World::new();
    w.server.cfg.max_permissions_per_allocation = 3;
    w.server.cfg.max_channels_per_allocation = 2;
    w.allocate();
    let perm = |w: &World, peer: &str, id: u8| {
        w.request(
            CREATE_PERMISSION,
            id,
            &[World::peer_attr(addr(peer), id)],
            false,
        )
    };
    for (i, peer) in ["198.51.100.1:1", "198.51.100.2:1", "198.51.100.3:1"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            World::code(&w.send(&perm(&w, peer, 10 + i as u8), Duration::ZERO).0),
            0
        );
    }
    assert_eq!(
        World::code(&w.send(&perm(&w, "198.51.100.4:1", 20), Duration::ZERO).0),
        508
    );
    // Renewing one it has is fine; once they expire there is room again.
    assert_eq!(
        World::code(&w.send(&perm(&w, "198.51.100.1:9", 21), Duration::ZERO).0),
        0
    );
    assert_eq!(
        World::code(
            &w.send(&perm(&w, "198.51.100.4:1", 22), Duration::from_secs(301))
                .0
        ),
        0
    );
    let bind = |w: &World, n: u16, peer: &str, id: u8| {
        w.request(
            CHANNEL_BIND,
            id,
            &[
                (attr::CHANNEL_NUMBER, vec![(n >> 8) as u8, n as u8, 0, 0]),
                World::peer_attr(addr(peer), id),
            ],
            false,
        )
    };
    let t = Duration::from_secs(302);
    assert_eq!(
        World::code(&w.send(&bind(&w, 0x4000, "198.51.100.4:7", 30), t).0),
        0
    );
    assert_eq!(
        World::code(&w.send(&bind(&w, 0x4001, "198.51.100.1:7", 31), t).0),
        0
    );
    assert_eq!(
        World::code(&w.send(&bind(&w, 0x4002, "198.51.100.2:7", 32), t).0),
        508
    );
    // Port 0 is no peer.
    assert_eq!(
        World::code(&w.send(&bind(&w, 0x4001, "198.51.100.1:0", 33), t).0),
        400
    );
}

#[test]
fn send_indications_with_unknown_required_attributes_or_port_zero_are_discarded() {
    let mut w = World::new();
    w.allocate();
    let peer = addr("198.51.100.9:7000");
    let perm = w.request(CREATE_PERMISSION, 2, &[World::peer_attr(peer, 2)], false);
    assert_eq!(World::code(&w.send(&perm, Duration::ZERO).0), 0);
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
    let df = w.request(
        ALLOCATE,
        9,
        &[
            (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
            (attr::DONT_FRAGMENT, vec![]),
        ],
        false,
    );
    assert_eq!(World::code(&w.send(&df, Duration::ZERO).0), 420);
}

#[test]
fn expiry_follows_deadlines_not_a_sweep() {
    let mut w = World::new();
    w.allocate();
    assert_eq!(
        w.server.poll_timeout(),
        Some(w.start + Duration::from_secs(600))
    );
    let mut out = Vec::new();
    w.server
        .expire(w.start + Duration::from_secs(599), &mut out);
    assert!(out.is_empty());
    w.server
        .expire(w.start + Duration::from_secs(600), &mut out);
    assert!(matches!(out.as_slice(), [Output::CloseRelay { .. }]));
    assert_eq!(w.server.poll_timeout(), None);
    assert_eq!(w.server.held(), 0);
}

#[test]
fn reservation_churn_keeps_the_expiry_queue_bounded() {
    // Reserve and delete again and again within one reservation lifetime: each ended
    // reservation leaves a queue entry until its deadline unless the queue is compacted
    // (check_invariants, run after every send, bounds it by 2 x max_allocations + 65).
    let mut w = World::new();
    w.server.cfg.max_allocations = 50;
    for i in 0..1000u32 {
        let id = (i % 200) as u8 + 10;
        let (code, token) = reserve(&mut w, "198.51.100.20:40000", id, Duration::ZERO);
        assert_eq!((code, token.is_some()), (0, true), "round {i}");
        let refresh = w.request(REFRESH, id, &[(attr::LIFETIME, vec![0, 0, 0, 0])], false);
        assert_eq!(World::code(&w.send(&refresh, Duration::ZERO).0), 0);
    }
    assert_eq!((w.server.held(), w.server.reservations()), (0, 0));
}
