//! The bounds on what a client can make the server hold: quotas per user, per source and
//! in all, reservations, per-allocation caps, the strangers' answer budget, and expiry
//! that follows deadlines.

use super::*;

#[test]
fn quota_and_capacity() {
    let mut w = World::new();
    w.server.cfg.max_allocations_per_user = 2;
    for i in 0..3u16 {
        let expect = if i < 2 { 0 } else { 486 };
        assert_eq!(w.allocate_from_port(40000 + i, 20 + i as u8), expect);
    }
    // Ports run out (10 in the range) before the quota of a generous user does.
    let mut w = World::new();
    w.server.cfg.max_allocations_per_user = 100;
    let codes: Vec<u16> = (0..11u16)
        .map(|i| w.allocate_from_port(41000 + i, 40 + i as u8))
        .collect();
    assert_eq!(codes.iter().filter(|&&c| c == 0).count(), 10);
    assert_eq!(codes.last(), Some(&508));
}

#[test]
fn what_other_members_hold_counts_against_the_user_quota() {
    let mut w = World::new();
    w.server.cfg.max_allocations_per_user = 2;
    w.sign_in("carol@sipedge.test", 3600);
    // The pool says carol holds one relay on another member: one is left here.
    w.server.set_pool_holds([
        ("carol@sipedge.test".into(), 1),
        ("dave@sipedge.test".into(), 9),
    ]);
    assert_eq!(w.allocate_from_port(43000, 150), 0);
    assert_eq!(w.allocate_from_port(43001, 151), 486);
    let held = w.server.pool_report().holds;
    assert_eq!(
        held.len(),
        1,
        "only what this member holds is told to the pool"
    );
    assert_eq!(&*held[0].0, "carol@sipedge.test");
    assert_eq!(held[0].1, 1);
    // The other member let go: the quota is this member's again.
    w.server.set_pool_holds([]);
    assert_eq!(w.allocate_from_port(43002, 152), 0);
}

#[test]
fn quota_per_source_address() {
    let mut w = World::new();
    w.server.cfg.max_allocations_per_source = 2;
    let mut codes = Vec::new();
    for i in 0..3u16 {
        // Three different users from the same address.
        w.sign_in(&format!("user{i}"), 3600);
        codes.push(w.allocate_from_port(42000 + i, 110 + i as u8));
    }
    assert_eq!(codes, vec![0, 0, 486]);
}

#[test]
fn total_allocations_are_capped_with_508() {
    let mut w = World::new();
    w.server.cfg.max_allocations = 3;
    let codes: Vec<u16> = (0..4u16)
        .map(|i| w.allocate_from_port(42000 + i, 70 + i as u8))
        .collect();
    assert_eq!(codes, [0, 0, 0, 508]);
}

/// An Allocate with EVEN-PORT and the R bit from `client`; the answer's code and token.
fn reserve(w: &mut World, client: &str, id: u8, after: Duration) -> (u16, Option<Vec<u8>>) {
    w.tuple.client = addr(client);
    let req = w.allocate_request(id, &[(attr::EVEN_PORT, vec![0x80])]);
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
    w.expire(RESERVATION_LIFETIME);
    assert_eq!(w.server.reservations(), 0);
    assert_eq!(w.server.held(), 2);
    // ... and die with their allocation (Refresh 0).
    let (code, _) = reserve(&mut w, "198.51.100.20:40003", 4, Duration::from_secs(31));
    assert_eq!(code, 0);
    assert_eq!(w.server.reservations(), 1);
    let refresh = w.request(REFRESH, 5, &[(attr::LIFETIME, vec![0, 0, 0, 0])], false);
    assert_eq!(w.answer_code(&refresh, Duration::from_secs(32)), 0);
    assert_eq!(w.server.reservations(), 0);
    assert_eq!(w.server.held(), 2);
    // A claimed token ends its reservation: the claim is the hold now.
    let (code, token) = reserve(&mut w, "198.51.100.20:40004", 6, Duration::from_secs(33));
    assert_eq!(code, 0);
    w.tuple.client = addr("198.51.100.20:40005");
    let claim = w.allocate_request(7, &[(attr::RESERVATION_TOKEN, token.unwrap())]);
    assert_eq!(w.answer_code(&claim, Duration::from_secs(34)), 0);
    assert_eq!((w.server.reservations(), w.server.held()), (0, 4));
}

#[test]
fn one_user_is_one_quota_whatever_the_credentials_and_a_v6_source_is_its_64() {
    let mut w = World::new();
    w.server.cfg.max_allocations_per_user = 2;
    let mut codes = Vec::new();
    for (i, ttl) in [3600u64, 7200, 1800].iter().enumerate() {
        // Three credentials of the same user (other expiries, other strings).
        w.sign_in("alice", *ttl);
        w.tuple.client = addr(&format!("198.51.100.{}:40000", 30 + i));
        let req = w.allocate_request(10 + i as u8, &[]);
        codes.push(w.answer_code(&req, Duration::ZERO));
    }
    assert_eq!(codes, vec![0, 0, 486]);
    assert_eq!(user_of("1800000000:alice"), "alice");
    assert_eq!(user_of("alice"), "alice");

    // IPv6: one /64 is one source.
    let mut w = World::ipv6("[2001:db8:1:2::1]:40000");
    w.server.cfg.max_allocations_per_source = 2;
    let mut codes = Vec::new();
    for i in 0..3u8 {
        w.sign_in(&format!("v6user{i}"), 3600);
        w.tuple.client = addr(&format!("[2001:db8:1:2::{}]:40000", i + 1));
        let req = w.allocate_request(20 + i, &[]);
        codes.push(w.answer_code(&req, Duration::ZERO));
    }
    assert_eq!(codes, vec![0, 0, 486]);
}

#[test]
fn strangers_draw_a_bounded_number_of_answer_bytes() {
    let mut w = World::new();
    w.server.cfg.strangers.bytes_per_sec = 1000;
    w.server = Server::new(w.server.cfg.clone(), 0, w.start);
    let anonymous = w.request(ALLOCATE, 1, &[udp()], true);
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
    let authenticated = w.allocate_request(2, &[]);
    assert_eq!(w.answer_code(&authenticated, Duration::from_secs(1)), 0);
}

#[test]
fn permissions_and_channels_per_allocation_are_capped() {
    let mut w = World::new();
    w.server.cfg.max_permissions_per_allocation = 3;
    w.server.cfg.max_channels_per_allocation = 2;
    w.allocate();
    let mut permit = |peer: &str, id: u8, after: Duration| {
        let req = w.permission_request(addr(peer), id);
        w.answer_code(&req, after)
    };
    for (i, peer) in ["198.51.100.1:1", "198.51.100.2:1", "198.51.100.3:1"]
        .iter()
        .enumerate()
    {
        assert_eq!(permit(peer, 10 + i as u8, Duration::ZERO), 0);
    }
    assert_eq!(permit("198.51.100.4:1", 20, Duration::ZERO), 508);
    // Renewing one it has is fine; once they expire there is room again.
    assert_eq!(permit("198.51.100.1:9", 21, Duration::ZERO), 0);
    assert_eq!(permit("198.51.100.4:1", 22, Duration::from_secs(301)), 0);
    let t = Duration::from_secs(302);
    let mut bind = |n: u16, peer: &str, id: u8| {
        let req = w.bind_request(n, addr(peer), id);
        w.answer_code(&req, t)
    };
    assert_eq!(bind(0x4000, "198.51.100.4:7", 30), 0);
    assert_eq!(bind(0x4001, "198.51.100.1:7", 31), 0);
    assert_eq!(bind(0x4002, "198.51.100.2:7", 32), 508);
    // Port 0 is no peer.
    assert_eq!(bind(0x4001, "198.51.100.1:0", 33), 400);
}

#[test]
fn expiry_follows_deadlines_not_a_sweep() {
    let mut w = World::new();
    w.allocate();
    assert_eq!(
        w.server.poll_timeout(),
        Some(w.start + Duration::from_secs(600))
    );
    assert!(w.expire(Duration::from_secs(599)).is_empty());
    assert!(matches!(
        w.expire(Duration::from_secs(600)).as_slice(),
        [Output::CloseRelay { .. }]
    ));
    assert_eq!(w.server.poll_timeout(), None);
    assert_eq!(w.server.held(), 0);
}

#[test]
fn a_tcp_clients_allocation_that_goes_closes_its_connection() {
    // Expired, or deleted: the connection goes with it (UDP has none to close).
    let mut w = World::new();
    w.tuple.transport = Transport::Tcp;
    let relay = w.allocate();
    let expiring = w.tuple;
    w.tuple.client = addr("198.51.100.20:40020");
    w.allocate_as(30);
    let zero = w.request(REFRESH, 31, &[(attr::LIFETIME, vec![0; 4])], false);
    let (out, _) = w.send(&zero, Duration::from_secs(1));
    assert!(
        out.contains(&Output::CloseClient { tuple: w.tuple }),
        "{out:?}"
    );
    assert_eq!(World::code(&out), 0, "answered too");
    assert_eq!(
        w.expire(Duration::from_secs(600)).as_slice(),
        [
            Output::CloseRelay { relay },
            Output::CloseClient { tuple: expiring }
        ]
    );
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
        assert_eq!(w.answer_code(&refresh, Duration::ZERO), 0);
    }
    assert_eq!((w.server.held(), w.server.reservations()), (0, 0));
}
