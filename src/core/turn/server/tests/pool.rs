//! Quotas counted pool-wide at allocation time: an Allocate in a pool waits for the pool's
//! answer (bounded in number and time), its holds counting meanwhile; and a user's bandwidth
//! budget shared with the other members in proportion to what the user holds on each.

use super::relay::{allocate_with_channel, audio_frame};
use super::*;

/// The ask an output list carries.
fn ask_of(out: &[Output]) -> PoolAsk {
    out.iter()
        .find_map(|o| match o {
            Output::AskPool(ask) => Some(ask.clone()),
            _ => None,
        })
        .expect("an ask for the pool")
}

/// A world whose server asks the pool about new holds, alice at quota 3.
fn pooled() -> World {
    let mut w = World::new();
    w.server.cfg.max_allocations_per_user = 3;
    w.server.cfg.pool_ask_timeout = Duration::from_millis(400);
    let mut out = Vec::new();
    w.server.set_pool_asks(true, w.start, &mut out);
    assert!(out.is_empty());
    w
}

#[test]
fn an_allocate_in_a_pool_waits_for_the_pool_and_holds_meanwhile() {
    let mut w = pooled();
    let req = w.allocate_request(1, &[]);
    let (out, r) = w.send(&req, Duration::ZERO);
    assert_eq!(r, Ok(()));
    let ask = ask_of(&out);
    assert_eq!(out.len(), 1, "no answer, no relay yet: {out:?}");
    assert_eq!((ask.here, ask.more, ask.quota), (1, 1, 3));
    assert_eq!(w.server.held(), 1, "the ask holds");
    assert_eq!(w.server.pool_asks_waiting(), 1);
    // Retransmitted meanwhile: dropped, the answer will come.
    assert_eq!(
        w.send(&req, Duration::from_millis(100)).1,
        Err(Dropped::AwaitingPool)
    );
    // The pool grants: the answer and the relay go out, signed as any answer.
    let mut out = Vec::new();
    w.server.pool_answer(
        ask.id,
        PoolVerdict::Granted { elsewhere: 2 },
        w.start + Duration::from_millis(150),
        &mut out,
    );
    w.server.check_invariants().unwrap();
    assert_eq!(World::code(&out), 0);
    opened_relay(&out);
    assert_eq!(w.server.allocations(), 1);
    assert_eq!(w.server.held(), 1);
    // A late or repeated answer changes nothing.
    let mut again = Vec::new();
    w.server.pool_answer(
        ask.id,
        PoolVerdict::Refused { elsewhere: 9 },
        w.start,
        &mut again,
    );
    assert!(again.is_empty());
    // The retransmission now gets the same answer (RFC 8656 §7.2).
    let (out, _) = w.send(&req, Duration::from_millis(200));
    assert_eq!(World::code(&out), 0);
    // The pool said two more elsewhere: alice is at her quota of 3, refused here at once.
    assert_eq!(w.allocate_from_port(40001, 2), 486);
}

#[test]
fn the_pool_refuses_and_the_client_gets_486_signed_with_its_key() {
    let mut w = pooled();
    let req = w.allocate_request(1, &[]);
    let ask = ask_of(&w.send(&req, Duration::ZERO).0);
    let mut out = Vec::new();
    w.server.pool_answer(
        ask.id,
        PoolVerdict::Refused { elsewhere: 3 },
        w.start,
        &mut out,
    );
    w.server.check_invariants().unwrap();
    assert_eq!(World::code(&out), 486);
    let Some(Output::ToClient { bytes, .. }) = out.first() else {
        panic!("{out:?}")
    };
    let c = stun::check(bytes).unwrap();
    assert!(
        c.get(attr::MESSAGE_INTEGRITY).is_some(),
        "signed: the client can trust the refusal"
    );
    assert_eq!(w.server.held(), 0, "the ask's hold is given back");
    assert_eq!(w.server.allocations(), 0);
}

#[test]
fn an_unanswered_ask_is_decided_locally_at_its_deadline() {
    let mut w = pooled();
    let req = w.allocate_request(1, &[]);
    ask_of(&w.send(&req, Duration::ZERO).0);
    assert_eq!(
        w.server.poll_timeout(),
        Some(w.start + Duration::from_millis(400)),
        "the ask's deadline is the server's next"
    );
    assert!(w.expire(Duration::from_millis(399)).is_empty());
    let out = w.expire(Duration::from_millis(400));
    w.server.check_invariants().unwrap();
    assert_eq!(World::code(&out), 0, "granted on what this member knows");
    opened_relay(&out);
    assert_eq!(w.server.pool_asks_waiting(), 0);
    // An allocation's deadline is next, not the ask's.
    assert!(w.server.poll_timeout() > Some(w.start + Duration::from_secs(60)));
}

#[test]
fn the_pool_going_away_decides_every_ask_waiting() {
    let mut w = pooled();
    for (i, port) in [40000u16, 40001].into_iter().enumerate() {
        w.tuple.client = SocketAddr::new(w.tuple.client.ip(), port);
        let req = w.allocate_request(i as u8 + 1, &[]);
        assert_eq!(w.send(&req, Duration::ZERO).1, Ok(()));
    }
    assert_eq!(
        w.server.pool_asks_waiting(),
        2,
        "one in flight, one behind it"
    );
    let mut out = Vec::new();
    w.server.set_pool_asks(false, w.start, &mut out);
    w.server.check_invariants().unwrap();
    let answers = out
        .iter()
        .filter(|o| matches!(o, Output::ToClient { .. }))
        .count();
    assert_eq!(answers, 2);
    assert_eq!(w.server.allocations(), 2);
    // And new Allocates are decided here, without asking.
    w.tuple.client = SocketAddr::new(w.tuple.client.ip(), 40002);
    let req = w.allocate_request(3, &[]);
    let (out, _) = w.send(&req, Duration::ZERO);
    assert!(!out.iter().any(|o| matches!(o, Output::AskPool(_))));
    assert_eq!(World::code(&out), 0);
}

#[test]
fn a_users_asks_go_one_at_a_time_and_count_in_the_quota_while_they_wait() {
    let mut w = pooled();
    // Three Allocates of alice (her quota) park; only the first is asked now, telling the
    // pool what is established here (nothing) and its own.
    let mut asked = Vec::new();
    for port in 0..3u16 {
        w.tuple.client = SocketAddr::new(w.tuple.client.ip(), 40000 + port);
        let req = w.allocate_request(port as u8 + 1, &[]);
        let (out, r) = w.send(&req, Duration::ZERO);
        assert_eq!(r, Ok(()));
        asked.extend(out.iter().filter_map(|o| match o {
            Output::AskPool(a) => Some(a.clone()),
            _ => None,
        }));
    }
    assert_eq!(asked.len(), 1, "one ask in flight per user: {asked:?}");
    assert_eq!((asked[0].here, asked[0].more), (1, 1));
    // The fourth is over what this member knows: refused here, not asked.
    assert_eq!(w.allocate_from_port(40003, 9), 486);
    assert_eq!(w.server.pool_asks_waiting(), 3);
    // While she asks, her count is the asks' to keep, not the report's.
    let report = w.server.pool_report();
    assert!(report.holds.is_empty());
    assert_eq!(report.asking.len(), 1);
    // Granted: the next goes out, counting the one now established.
    let mut out = Vec::new();
    w.server.pool_answer(
        asked[0].id,
        PoolVerdict::Granted { elsewhere: 0 },
        w.start,
        &mut out,
    );
    w.server.check_invariants().unwrap();
    let second = ask_of(&out);
    assert_eq!((second.here, second.more), (2, 1));
    assert!(second.seq > asked[0].seq);
    // Refused (one held elsewhere meanwhile): the third goes out, asking for 2 again.
    let mut out = Vec::new();
    w.server.pool_answer(
        second.id,
        PoolVerdict::Refused { elsewhere: 1 },
        w.start,
        &mut out,
    );
    assert_eq!(World::code(&out), 486);
    let third = ask_of(&out);
    assert_eq!((third.here, third.more), (2, 1));
    let mut out = Vec::new();
    w.server.pool_answer(
        third.id,
        PoolVerdict::Granted { elsewhere: 1 },
        w.start,
        &mut out,
    );
    w.server.check_invariants().unwrap();
    assert_eq!(World::code(&out), 0);
    assert!(!out.iter().any(|o| matches!(o, Output::AskPool(_))));
    let report = w.server.pool_report();
    assert_eq!(report.holds.len(), 1);
    assert_eq!(report.holds[0].1, 2);
    assert!(report.asking.is_empty());
}

#[test]
fn asks_are_bounded_in_number() {
    // However many users ask at once, at most MAX_ASKS wait: then 508, try again later.
    let mut w = pooled();
    w.server.cfg.max_allocations = 2 * MAX_ASKS;
    w.server.cfg.max_allocations_per_source = 2 * MAX_ASKS;
    let mut codes = std::collections::HashMap::new();
    for i in 0..=MAX_ASKS {
        w.sign_in(&format!("user{i}"), 3600);
        w.tuple.client = SocketAddr::new(w.tuple.client.ip(), 20000 + i as u16);
        let req = w.allocate_request(1, &[]);
        let (out, _) = w.send(&req, Duration::ZERO);
        let code = if out.iter().any(|o| matches!(o, Output::AskPool(_))) {
            0
        } else {
            World::code(&out)
        };
        *codes.entry(code).or_insert(0) += 1;
    }
    assert_eq!(codes.get(&0), Some(&MAX_ASKS));
    assert_eq!(codes.get(&508), Some(&1));
    assert_eq!(w.server.pool_asks_waiting(), MAX_ASKS);
    // Their deadlines pass: every one is decided, and nothing waits.
    let out = w.expire(Duration::from_secs(1));
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::OpenRelay { .. }))
            .count(),
        10,
        "granted until the ports (10) run out"
    );
    w.server.check_invariants().unwrap();
    assert_eq!(w.server.pool_asks_waiting(), 0);
}

#[test]
fn a_users_bandwidth_is_shared_with_the_members_in_proportion_to_its_relays() {
    let mut w = World::new();
    w.server.cfg.bandwidth_per_allocation = None;
    w.server.cfg.bandwidth_per_user = Budget::kbit(137); // 100 audio frames a second
    let peer = addr("198.51.100.99:5000");
    allocate_with_channel(&mut w, 40000, peer, 100);
    let user: Box<str> = user_of(&w.user).into();
    let tuple = w.tuple;
    let frame = audio_frame();
    let passed = |w: &mut World, secs: u64| {
        let t = w.start + Duration::from_secs(secs);
        (0..100)
            .filter(|_| w.server.channel_to_peer(&tuple, &frame, t).is_ok())
            .count()
    };
    // Alone: the whole budget (a second's burst).
    assert!((95..=100).contains(&passed(&mut w, 1)));
    // The pool says alice holds three relays elsewhere: a quarter is this member's.
    w.server.set_pool_holds([(user.clone(), 3)]);
    let quarter = passed(&mut w, 10);
    assert!((23..=26).contains(&quarter), "{quarter}");
    // The others let go: the whole again.
    w.server.set_pool_holds([]);
    assert!((95..=100).contains(&passed(&mut w, 20)));
}

#[test]
fn a_tcp_client_gone_while_its_allocate_waits_for_the_pool_is_granted_nothing() {
    let mut w = pooled();
    w.tuple.transport = Transport::Tcp;
    let req = w.allocate_request(1, &[]);
    let (out, _) = w.send(&req, Duration::ZERO);
    let ask = ask_of(&out);
    let mut out = Vec::new();
    w.server.client_closed(w.tuple, &mut out);
    w.server.check_invariants().unwrap();
    // The pool grants after the connection closed: no allocation, no socket, no answer.
    let mut out = Vec::new();
    w.server.pool_answer(
        ask.id,
        PoolVerdict::Granted { elsewhere: 0 },
        w.start + Duration::from_millis(100),
        &mut out,
    );
    w.server.check_invariants().unwrap();
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(w.server.allocations(), 0);
    assert_eq!(w.server.held(), 0, "its hold given back");
    assert_eq!(w.server.pool_asks_waiting(), 0);
}
