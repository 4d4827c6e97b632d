//! The requests and their answers: Allocate (credentials, error codes, address families,
//! EVEN-PORT and its reservation token, IPv6), Refresh, Binding and stale nonces.

use super::*;

#[test]
fn allocate_needs_credentials_then_succeeds_and_is_signed() {
    let mut w = World::new();
    let anonymous = w.request(ALLOCATE, 1, &[udp()], true);
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

    let req = w.allocate_request(2, &[]);
    let (out, _) = w.send(&req, Duration::ZERO);
    assert_eq!(World::code(&out), 0);
    assert!(
        matches!(out[0], Output::OpenRelay { relay, .. } if relay == addr("192.0.2.10:50000")),
        "{:?}",
        out[0]
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
    let other = w.allocate_request(3, &[]);
    assert_eq!(w.answer_code(&other, Duration::ZERO), 437);
}

#[test]
fn allocate_error_codes() {
    let mut w = World::new();
    type Attrs = Vec<(u16, Vec<u8>)>;
    let cases: Vec<(Attrs, u16)> = vec![
        (vec![], 400),
        (vec![(attr::REQUESTED_TRANSPORT, vec![6, 0, 0, 0])], 442),
        (
            vec![udp(), (attr::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
            440,
        ),
        (vec![udp(), (attr::RESERVATION_TOKEN, vec![0; 8])], 508),
        (vec![udp(), (0x7000, vec![1])], 420),
    ];
    for (i, (attrs, code)) in cases.into_iter().enumerate() {
        let req = w.request(ALLOCATE, 10 + i as u8, &attrs, false);
        assert_eq!(w.answer_code(&req, Duration::ZERO), code, "case {i}");
    }
    assert_eq!(w.server.allocations(), 0);
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
    assert_eq!(w.answer_code(&refresh, Duration::from_secs(10)), 0);
    assert!(w.expire(Duration::from_secs(700)).is_empty());
    assert_eq!(
        w.expire(Duration::from_secs(1211)),
        vec![Output::CloseRelay { relay }]
    );
    assert_eq!(w.server.allocations(), 0);

    // Refresh with LIFETIME 0 deletes at once; then Refresh is 437.
    let relay = w.allocate();
    let zero = w.request(REFRESH, 71, &[(attr::LIFETIME, vec![0, 0, 0, 0])], false);
    let (out, _) = w.send(&zero, Duration::ZERO);
    assert!(out.contains(&Output::CloseRelay { relay }));
    assert_eq!(w.answer_code(&zero, Duration::ZERO), 437);

    // Another user's request on this 5-tuple's allocation: 441.
    w.allocate();
    w.sign_in("bob", 3600);
    let refresh = w.request(REFRESH, 72, &[], false);
    assert_eq!(w.answer_code(&refresh, Duration::ZERO), 441);
}

#[test]
fn stale_nonces_get_438_and_garbage_is_dropped() {
    let mut w = World::new();
    let req = w.allocate_request(80, &[]);
    assert_eq!(w.answer_code(&req, Duration::from_secs(601)), 438);
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
        w.answer_code(&unknown_method, Duration::from_secs(601)),
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
    let req = w.allocate_request(90, &[(attr::EVEN_PORT, vec![0x80])]);
    let (out, _) = w.send(&req, Duration::ZERO);
    assert_eq!(World::code(&out), 0);
    let Output::OpenRelay { relay, .. } = out[0] else {
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
    let claim = w.allocate_request(91, &[(attr::RESERVATION_TOKEN, token.clone())]);
    let (out, _) = w.send(&claim, Duration::from_secs(1));
    assert!(
        matches!(out[0], Output::OpenRelay { relay: r, .. } if r == SocketAddr::new(relay.ip(), relay.port() + 1)),
        "{:?}",
        out[0]
    );
    w.tuple.client = addr("198.51.100.20:40004");
    let again = w.allocate_request(92, &[(attr::RESERVATION_TOKEN, token)]);
    assert_eq!(w.answer_code(&again, Duration::from_secs(2)), 508);
}

#[test]
fn additional_address_family_is_answered_not_crashed_on() {
    let mut w = World::new();
    let both = w.allocate_request(
        100,
        &[
            (attr::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0]),
            (attr::REQUESTED_ADDRESS_FAMILY, vec![1, 0, 0, 0]),
        ],
    );
    assert_eq!(w.answer_code(&both, Duration::ZERO), 400);
    let dual = w.allocate_request(101, &[(attr::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0])]);
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
fn ipv6_relays() {
    let mut w = World::ipv6("[2001:db8::20]:40000");
    w.sign_in("alice", 3600);
    // An IPv4 relay is asked of an IPv6-only server: 440.
    let v4 = w.allocate_request(120, &[(attr::REQUESTED_ADDRESS_FAMILY, vec![1, 0, 0, 0])]);
    assert_eq!(w.answer_code(&v4, Duration::ZERO), 440);
    let v6 = w.allocate_request(121, &[(attr::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])]);
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
    let p4 = w.permission_request(addr("198.51.100.9:1"), 122);
    assert_eq!(w.answer_code(&p4, Duration::ZERO), 443);
    let p6 = w.permission_request(addr("[2001:db8::99]:1"), 123);
    assert_eq!(w.answer_code(&p6, Duration::ZERO), 0);
}

#[test]
fn a_relayed_socket_is_kept_only_while_its_allocation_holds_it() {
    // The shell binds a relayed socket outside the server's lock: by then its allocation
    // may be gone, and the port given to another.
    let mut w = World::new();
    let req = w.allocate_request(80, &[]);
    let (out, _) = w.send(&req, Duration::ZERO);
    let Output::OpenRelay { relay, allocation } = out[0] else {
        panic!("{out:?}")
    };
    assert!(w.server.holds_relay(allocation, relay));
    assert!(!w.server.holds_relay(allocation + 1, relay));
    // Refresh with lifetime 0 before the socket was bound: the allocation is gone.
    let zero = w.request(REFRESH, 81, &[(attr::LIFETIME, vec![0, 0, 0, 0])], false);
    assert_eq!(w.answer_code(&zero, Duration::ZERO), 0);
    assert!(!w.server.holds_relay(allocation, relay));
    // The port again, for another client's allocation: the first one's failed bind must not
    // take the second one down, and its socket would not be kept.
    w.tuple.client = addr("198.51.100.20:40010");
    let mut again = None;
    for id in 82..100 {
        let req = w.allocate_request(id, &[]);
        let (out, _) = w.send(&req, Duration::from_secs(u64::from(id)));
        if let Some(&Output::OpenRelay {
            relay: r,
            allocation: a,
        }) = out.first()
        {
            if r == relay {
                again = Some(a);
                break;
            }
            // Not that port: let it go and try again.
            let zero = w.request(
                REFRESH,
                id.wrapping_add(100),
                &[(attr::LIFETIME, vec![0; 4])],
                false,
            );
            let _ = w.send(&zero, Duration::from_secs(u64::from(id)));
        }
    }
    let second = again.expect("the port came round again");
    assert_ne!(second, allocation);
    assert!(!w.server.holds_relay(allocation, relay));
    assert_eq!(w.server.relay_failed(allocation, relay), None);
    assert!(
        w.server.holds_relay(second, relay),
        "the second allocation stays"
    );
    assert_eq!(w.server.relay_failed(second, relay), Some(w.tuple.client));
    assert_eq!(w.server.allocations(), 0);
}
