//! What the core hands the kernel path: live UDP channels, each until the first of its
//! binding, its peer's permission and its allocation ends, handed again when a request
//! extends one, and taken back when the allocation goes.

use super::*;

/// A world whose server hands channels to the kernel.
fn offloading() -> World {
    let mut w = World::new();
    let mut cfg = TurnConfig::new(
        REALM,
        "192.0.2.10".parse().unwrap(),
        "203.0.113.10".parse().unwrap(),
        (50000, 50009),
    );
    cfg.kernel_offload = true;
    w.server = Server::new(cfg, 0, w.start);
    w
}

fn handed(out: &[Output]) -> Vec<KernelChannel> {
    out.iter()
        .filter_map(|o| match o {
            Output::KernelChannel(k) => Some(k.clone()),
            _ => None,
        })
        .collect()
}

fn taken_back(out: &[Output]) -> Vec<u16> {
    out.iter()
        .filter_map(|o| match o {
            Output::KernelChannelGone { channel, .. } => Some(*channel),
            _ => None,
        })
        .collect()
}

const PEER: &str = "198.51.100.99:5000";

#[test]
fn a_bound_channel_is_handed_over_until_its_first_deadline() {
    let mut w = offloading();
    let relay = w.allocate();
    // A permission alone is no channel: nothing for the kernel.
    let permit = w.permission_request(addr(PEER), 2);
    let (out, _) = w.send(&permit, Duration::ZERO);
    assert_eq!(World::code(&out), 0);
    assert!(handed(&out).is_empty());

    let bind = w.bind_request(0x4000, addr(PEER), 3);
    let (out, _) = w.send(&bind, Duration::from_secs(10));
    assert_eq!(World::code(&out), 0);
    let [k] = handed(&out).try_into().unwrap();
    assert_eq!(
        (k.tuple, k.channel, k.peer, k.relay),
        (w.tuple, 0x4000, addr(PEER), relay)
    );
    // The binding lasts 600 s, its permission 300 s (renewed by the bind), the allocation
    // 600 s from the start: the permission ends first.
    assert_eq!(k.until, w.start + Duration::from_secs(310));
    assert_eq!(k.allocation_budget, Budget::kbit(3000));
    assert_eq!(k.user_budget, Budget::kbit(10_000));
    assert_eq!(&*k.user, "alice");
    assert_ne!(
        k.allocation, k.user_id,
        "one id counter names both kinds of meters"
    );
    // Handed before the answer goes: the kernel knows before the client can send.
    let first_answer = out
        .iter()
        .position(|o| matches!(o, Output::ToClient { .. }));
    let first_kernel = out
        .iter()
        .position(|o| matches!(o, Output::KernelChannel(_)));
    assert!(first_kernel < first_answer);

    // A CreatePermission at 200 s extends the permission to 500 s: handed again.
    let (out, _) = w.send(
        &w.permission_request(addr(PEER), 4),
        Duration::from_secs(200),
    );
    let [k] = handed(&out).try_into().unwrap();
    assert_eq!(k.until, w.start + Duration::from_secs(500));
    // A Refresh to 3600 s at 400 s: now the binding (610 s) ends first.
    let refresh = w.request(REFRESH, 5, &[(attr::LIFETIME, vec![0, 0, 14, 16])], false);
    let (out, _) = w.send(&refresh, Duration::from_secs(400));
    assert_eq!(World::code(&out), 0);
    let [k] = handed(&out).try_into().unwrap();
    assert_eq!(k.until, w.start + Duration::from_secs(500));
    let (out, _) = w.send(
        &w.bind_request(0x4000, addr(PEER), 6),
        Duration::from_secs(450),
    );
    let [k] = handed(&out).try_into().unwrap();
    assert_eq!(k.until, w.start + Duration::from_secs(750));
}

#[test]
fn a_channel_past_its_binding_or_permission_is_not_handed_over() {
    let mut w = offloading();
    w.allocate();
    let _ = w.send(&w.bind_request(0x4001, addr(PEER), 2), Duration::ZERO);
    // At 301 s the permission has lapsed (the binding has not): a Refresh hands nothing.
    let refresh = w.request(REFRESH, 3, &[], false);
    let (out, _) = w.send(&refresh, Duration::from_secs(301));
    assert_eq!(World::code(&out), 0);
    assert!(handed(&out).is_empty(), "{out:?}");
}

#[test]
fn an_allocation_that_goes_takes_its_channels_out_of_the_kernel_first() {
    let mut w = offloading();
    w.allocate();
    let _ = w.send(&w.bind_request(0x4000, addr(PEER), 2), Duration::ZERO);
    let _ = w.send(
        &w.bind_request(0x4001, addr("198.51.100.98:5000"), 3),
        Duration::ZERO,
    );
    // Deleted by the client.
    let zero = w.request(REFRESH, 4, &[(attr::LIFETIME, vec![0, 0, 0, 0])], false);
    let (out, _) = w.send(&zero, Duration::from_secs(1));
    let mut gone = taken_back(&out);
    gone.sort_unstable();
    assert_eq!(gone, [0x4000, 0x4001]);
    let close = out
        .iter()
        .position(|o| matches!(o, Output::CloseRelay { .. }));
    let last_gone = out
        .iter()
        .rposition(|o| matches!(o, Output::KernelChannelGone { .. }));
    assert!(last_gone < close, "{out:?}");
    assert!(handed(&out).is_empty());

    // Expired.
    let mut w = offloading();
    w.allocate();
    let _ = w.send(&w.bind_request(0x4000, addr(PEER), 2), Duration::ZERO);
    assert_eq!(taken_back(&w.expire(Duration::from_secs(601))), [0x4000]);
}

#[test]
fn nothing_is_handed_over_without_the_offload_or_over_tcp() {
    let mut w = World::new();
    w.allocate();
    let (out, _) = w.send(&w.bind_request(0x4000, addr(PEER), 2), Duration::ZERO);
    assert_eq!(World::code(&out), 0);
    assert!(handed(&out).is_empty());
    let zero = w.request(REFRESH, 3, &[(attr::LIFETIME, vec![0, 0, 0, 0])], false);
    assert!(taken_back(&w.send(&zero, Duration::ZERO).0).is_empty());

    let mut w = offloading();
    w.tuple.transport = Transport::Tcp;
    w.allocate();
    let (out, _) = w.send(&w.bind_request(0x4000, addr(PEER), 2), Duration::ZERO);
    assert_eq!(World::code(&out), 0);
    assert!(handed(&out).is_empty());
}

#[test]
fn the_user_budget_is_this_members_share() {
    let mut w = offloading();
    w.allocate();
    assert_eq!(
        w.server.kernel_user_budget("alice"),
        Some(Budget::kbit(10_000))
    );
    // Three more relays elsewhere in the pool: a quarter here.
    w.server.set_pool_holds([("alice".into(), 3)]);
    assert_eq!(
        w.server.kernel_user_budget("alice"),
        Some(Budget::kbit(10_000).map(|b| b.share(Meters::FULL / 4)))
    );
    assert_eq!(w.server.kernel_user_budget("bob"), None);
}

#[test]
fn what_the_kernel_relayed_is_charged_to_the_budgets_user_space_relays_from() {
    // One budget for both paths: a client that spent its allocation's budget on channels
    // in the kernel gets nothing more by Send indications, nor by its other allocations
    // when the budget is its user's.
    let mut w = offloading();
    w.server.cfg.bandwidth_per_allocation = Budget::kbit(137); // 17 125 bytes a second
    w.server.cfg.bandwidth_per_user = Budget::kbit(274);
    let peer = addr(PEER);
    w.allocate_as(10);
    let first = w.tuple;
    let bind = w.bind_request(0x4000, peer, 11);
    let (out, _) = w.send(&bind, Duration::ZERO);
    assert_eq!(World::code(&out), 0);
    let [k] = handed(&out).try_into().unwrap();
    w.tuple.client = SocketAddr::new(w.tuple.client.ip(), w.tuple.client.port() + 1);
    w.allocate_as(20);
    let permit = w.permission_request(peer, 21);
    assert_eq!(w.answer_code(&permit, Duration::ZERO), 0);
    let second = w.tuple;

    let send = send_indication(peer, 30, &[0u8; 172]);
    let t = Duration::from_secs(1);
    let now = w.start + t;
    // The kernel relayed a second's worth of the allocation's rate toward the peer (what
    // its own meter let through): the allocation's budget toward the peer is spent here.
    w.server.kernel_spent(k.allocation, [17_125, 0], now);
    w.tuple = first;
    assert_eq!(w.send(&send, t).1, Err(Dropped::OverBandwidth));
    // The other direction is the other budget.
    assert!(w.server.peer_packet(k.relay, peer, &[0; 172], now).is_ok());
    // The user's budget toward the peer holds half of that, and its other allocation may
    // still relay the rest of it.
    w.tuple = second;
    assert_eq!(w.send(&send, t).1, Ok(()));
    // A second at the user's rate more in the kernel: nothing for the user's other relays
    // either.
    w.server.kernel_spent(k.allocation, [34_250, 0], now);
    assert_eq!(w.send(&send, t).1, Err(Dropped::OverBandwidth));
    // Paid back, the budgets pass again.
    w.tuple = first;
    assert_eq!(w.send(&send, t + Duration::from_secs(3)).1, Ok(()));
    // An allocation gone (or never there) is owed nothing.
    w.server.kernel_spent(u64::MAX, [u64::MAX, u64::MAX], now);
}
