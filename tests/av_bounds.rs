//! The A/V Edge's bounds as an outsider tries them, over real sockets on loopback (the
//! external listener on 127.0.0.1, the internal one on 127.0.0.2; each attacker its own
//! loopback source): what a remote party can make the relay hold (allocations, port
//! reservations, TURN-over-TCP connections, queued bytes, permissions, channels) is bounded
//! and charged to it, what it can make the relay send without authenticating is bounded per
//! source, and no peer address spelling reaches what the policy refuses.
//!
//! The expiry of reservations and allocations is tested on simulated time in
//! `core::turn::server`; here the quotas they count in.

use sipedge::shell::pool_state::PoolStatus;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sipedge::core::turn::auth::long_term_key;
use sipedge::core::turn::encode::Writer;
use sipedge::core::turn::server::{
    decode_xor_address, ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND,
};
use sipedge::core::turn::stun::{attr, Class};
use sipedge::core::{credentials, keyring::Ring};
use sipedge::shell;
use sipedge::topology::{Firewall, KeysSource, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::support::*;

mod fixture;
use fixture::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_count_in_the_user_quota_across_credentials_and_die_with_their_allocation() {
    let av = Av::start(|_| {}, |r| r.max_allocations_per_user = 2).await;
    let first = av.credential("alice@sipedge.test", 3600);
    // Another credential of the same user (another expiry: another TURN REST username).
    let second = av.credential("alice@sipedge.test", 7200);
    assert_ne!(first.username, second.username);

    // An RTP relay with the next port reserved (EVEN-PORT, R bit): two of alice's two.
    let mut rtp = UdpClient::new("127.0.0.21", av.ext_udp).await;
    let answer = rtp
        .allocate(&first, &|w| {
            w.attr(attr::EVEN_PORT, &[0x80]);
        })
        .await;
    assert_eq!(error_code(&answer), None, "allocated");
    assert!(attr_value(&answer, attr::RESERVATION_TOKEN).is_some());
    assert_eq!(relayed_of(&answer).port() % 2, 0, "an even port");
    assert!(av.metrics().contains("sipedge_turn_reservations 1"));

    // The quota holds across alice's credentials.
    let mut other = UdpClient::new("127.0.0.22", av.ext_udp).await;
    let refused = other.allocate(&second, &|_| {}).await;
    assert_eq!(error_code(&refused), Some(486), "the reservation counts");
    let bob = av.credential("bob@sipedge.test", 3600);
    assert_eq!(error_code(&other.allocate(&bob, &|_| {}).await), None);

    // Deleting the allocation ends its reservation: alice may allocate again.
    let deleted = rtp
        .ask(&first, REFRESH, &|w| {
            w.attr(attr::LIFETIME, &[0, 0, 0, 0]);
        })
        .await;
    assert_eq!(error_code(&deleted), None);
    assert!(av.metrics().contains("sipedge_turn_reservations 0"));
    let mut again = UdpClient::new("127.0.0.23", av.ext_udp).await;
    assert_eq!(error_code(&again.allocate(&second, &|_| {}).await), None);
    av.edge.stop().await;
}

/// A key added to the ring file of a running pool (`sipedge keys rotate`, the file copied to
/// every member by the operator's tooling; here two members read one file) is in force on
/// every member within seconds, without a signal or a restart: the relays take credentials
/// the new key signed, the flow tokens are signed with it, and credentials signed before
/// the rotation still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_in_the_ring_file_is_taken_without_a_restart() {
    use sipedge::core::sip::token::{FlowId, TokenKind};
    use sipedge::shell::{keyfile, ring};
    let av = Av::start(|_| {}, |_| {}).await;
    let path = av.pki.dir.path().join("ring.toml");
    let other = Av::start_with(
        |_| {},
        |_| {},
        |_| {},
        Some((path.clone(), av.ring.clone())),
    )
    .await;
    let before = av.credential("alice@sipedge.test", 3600);
    let mut rotated = keyfile::load(&path).unwrap();
    let now = sipedge::shell::clock::now_unix();
    rotated
        .rotate(keyfile::random_secret().unwrap(), now, 0)
        .unwrap();
    keyfile::store(&path, &rotated, false).unwrap();
    let after = credential_of(&rotated, "bob@sipedge.test", 3600);

    let token = |keys: &sipedge::core::sip::token::FlowKeys| {
        keys.token(TokenKind::Via, FlowId(5)).as_str().to_string()
    };
    let expected = token(&ring::flow_keys(&rotated, now, &[0; 32]));
    eventually("the new key signs the flow tokens on both members", || {
        token(&av.edge.shared.proxy.keys()) == expected
            && token(&other.edge.shared.proxy.keys()) == expected
    })
    .await;
    for (member, sources) in [
        (&av, ["127.0.0.25", "127.0.0.26"]),
        (&other, ["127.0.0.27", "127.0.0.28"]),
    ] {
        let mut new_key = UdpClient::new(sources[0], member.ext_udp).await;
        assert_eq!(
            error_code(&new_key.allocate(&after, &|_| {}).await),
            None,
            "the relay takes the new key's credential"
        );
        let mut old_key = UdpClient::new(sources[1], member.ext_udp).await;
        assert_eq!(
            error_code(&old_key.allocate(&before, &|_| {}).await),
            None,
            "and still the old key's"
        );
    }
    other.edge.stop().await;
    av.edge.stop().await;
}

/// `relay.max_allocations_per_user` counts what the user holds on every member of the
/// pool, at allocation time: a user at its quota on one member is refused on the other at
/// once, and allocations raced over both members at the same instant are granted exactly up
/// to the quota. Redis slow or away: members decide alone, within the pool's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_quota_holds_across_the_members_of_a_pool() {
    let port = free_tcp_port("127.0.0.1");
    let Some(redis) = crate::pool::Redis::start(port) else {
        return;
    };
    let pool = crate::pool::pool_config(port, "quotatest");
    let quota = |r: &mut Relay| r.max_allocations_per_user = 2;
    let a = Av::start_with(|_| {}, quota, |t| t.pool = Some(pool.clone()), None).await;
    let ring = (a.pki.dir.path().join("ring.toml"), a.ring.clone());
    let b = Av::start_with(|_| {}, quota, |t| t.pool = Some(pool.clone()), Some(ring)).await;
    let pool_is = |av: &Av, status: PoolStatus| {
        av.edge.view.pool.as_ref().map(|p| p.status()) == Some(status)
    };
    eventually("both members joined the pool", || {
        pool_is(&a, PoolStatus::Up) && pool_is(&b, PoolStatus::Up)
    })
    .await;
    let alice = a.credential("alice@sipedge.test", 3600);

    let mut on_a = UdpClient::new("127.0.0.31", a.ext_udp).await;
    assert_eq!(error_code(&on_a.allocate(&alice, &|_| {}).await), None);
    let mut on_b = UdpClient::new("127.0.0.32", b.ext_udp).await;
    assert_eq!(error_code(&on_b.allocate(&alice, &|_| {}).await), None);
    // Two held in the pool: refused on either member at once, no report period to wait.
    let mut third = UdpClient::new("127.0.0.33", b.ext_udp).await;
    assert_eq!(
        error_code(&third.allocate(&alice, &|_| {}).await),
        Some(486),
        "the quota counts what alice holds on A"
    );
    let mut fourth = UdpClient::new("127.0.0.34", a.ext_udp).await;
    assert_eq!(
        error_code(&fourth.allocate(&alice, &|_| {}).await),
        Some(486)
    );

    let decided = |av: &Av, how: &str| {
        let turn = av.edge.turn.as_ref().unwrap();
        turn.pool_asks_decided()
            .iter()
            .find(|(h, _)| *h == how)
            .map_or(0, |(_, n)| *n)
    };
    let by_pool = |how: &str| decided(&a, how) + decided(&b, how);
    let (granted_before, refused_before) = (by_pool("granted"), by_pool("refused"));
    // Bob races six Allocates over both members at once: exactly his quota is granted.
    let bob = a.credential("bob@sipedge.test", 3600);
    let mut racers = Vec::new();
    for i in 0..6u8 {
        let to = if i % 2 == 0 { a.ext_udp } else { b.ext_udp };
        racers.push(UdpClient::new(&format!("127.0.1.{}", 40 + i), to).await);
    }
    let answers =
        futures_util::future::join_all(racers.iter_mut().map(|c| c.allocate(&bob, &|_| {}))).await;
    let codes: Vec<Option<u16>> = answers.iter().map(|a| error_code(a)).collect();
    assert_eq!(
        codes.iter().filter(|c| c.is_none()).count(),
        2,
        "granted exactly up to the quota across the pool: {codes:?}"
    );
    assert!(
        codes.iter().all(|c| c.is_none() || *c == Some(486)),
        "{codes:?}"
    );

    assert_eq!(decided(&a, "local") + decided(&b, "local"), 0);
    // Bob's race went through the pool: each member asked it (nothing above was decided by
    // a member alone). How the pool split its verdicts depends on the interleaving (when
    // one member's asks are answered before the other's go out, the other learns what bob
    // holds elsewhere and decides the ask queued behind it by that): CI once saw fewer
    // refusals than this test used to require, with exactly the quota granted as above.
    let asked = by_pool("granted") + by_pool("refused") - granted_before - refused_before;
    assert!(asked >= 2, "the pool decided {asked} of bob's asks");
    // Redis hangs (stopped, not gone): an Allocate is decided here at the timeout.
    redis.pause();
    let carol = a.credential("carol@sipedge.test", 3600);
    let mut slow = UdpClient::new("127.0.0.35", a.ext_udp).await;
    assert_eq!(error_code(&slow.allocate(&carol, &|_| {}).await), None);
    assert_eq!(decided(&a, "local"), 1, "decided on what A knows");
    assert!(a
        .metrics()
        .contains("sipedge_pool_quota_asks_total{answer=\"local\"} 1\n"));
    redis.resume();
    // Redis gone: the members serve on, alone, and say so.
    drop(redis);
    eventually("the member says it is alone", || {
        pool_is(&a, PoolStatus::Degraded)
    })
    .await;
    let mut alone = UdpClient::new("127.0.0.36", a.ext_udp).await;
    assert_eq!(error_code(&alone.allocate(&carol, &|_| {}).await), None);
    a.edge.stop().await;
    b.edge.stop().await;
}

/// The relay's timers run on the core's deadlines with no periodic tick: a reservation made
/// while nothing else was due (the expiry loop asleep without a deadline) must still end at
/// its 30 s (RFC 8656 §7.2), woken by the control message that set it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_made_while_the_relay_sleeps_ends_on_time() {
    let av = Av::start(|_| {}, |_| {}).await;
    let alice = av.credential("alice@sipedge.test", 3600);
    let mut rtp = UdpClient::new("127.0.0.24", av.ext_udp).await;
    let answer = rtp
        .allocate(&alice, &|w| {
            w.attr(attr::EVEN_PORT, &[0x80]);
        })
        .await;
    assert_eq!(error_code(&answer), None, "allocated");
    assert!(av.metrics().contains("sipedge_turn_reservations 1"));
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(
        av.metrics().contains("sipedge_turn_reservations 1"),
        "not before its 30 s"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while !av.metrics().contains("sipedge_turn_reservations 0") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the reservation ended within 5 s of its 30 s"
    );
    av.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_gets_a_bounded_answer_budget_and_only_a_proven_one_strikes() {
    // 1000 bytes/s: a burst of 2000 bytes of Binding responses.
    let av = Av::start(
        |f| {
            f.allow_sources.clear();
            f.ban_after = 5;
        },
        |r| r.unauthenticated_bytes_per_second = 1000,
    )
    .await;
    let stranger = UdpSocket::bind("127.0.0.31:0").await.unwrap();
    let sent = 200u8;
    for id in 0..sent {
        stranger.send_to(&binding(id), av.ext_udp).await.unwrap();
    }
    let mut answered = 0usize;
    let mut answer_bytes = 0usize;
    let mut buf = [0u8; 2048];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(500), stranger.recv_from(&mut buf)).await
    {
        answered += 1;
        answer_bytes += n;
    }
    assert!(answered > 0, "a stranger gets some answers");
    assert!(
        answer_bytes <= 2000 + 1000,
        "{answer_bytes} bytes answered to a stranger under a 1000 byte/s budget"
    );
    let over = av.dropped("unauthenticated_budget");
    assert_eq!(
        over as usize,
        usize::from(sent) - answered,
        "every drop counted"
    );

    // No strike over UDP: the "source" of a spoofed flood is its victim, and banning it
    // would let anyone get any address banned.
    let mut victim = tcp_from("127.0.0.31", av.ext_tcp).await;
    assert!(
        !closed_within(&mut victim, Duration::from_millis(300)).await,
        "a UDP overdraft bans nobody"
    );

    // Over TCP the source is proven: its overdraft earns strikes, and the ban closes its
    // next connection (TURN over TCP here; SIP shares the table).
    let mut stranger = tcp_from("127.0.0.33", av.ext_tcp).await;
    for id in 0..sent {
        stranger.write_all(&binding(id)).await.unwrap();
    }
    let mut drained = 0usize;
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), stranger.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        drained += n;
    }
    assert!(
        drained <= 2000 + 1000,
        "{drained} bytes answered over TCP under a 1000 byte/s budget"
    );
    let mut banned = tcp_from("127.0.0.33", av.ext_tcp).await;
    assert!(
        closed_within(&mut banned, WAIT).await,
        "a banned source is closed"
    );
    eventually("the ban is counted", || {
        av.stats()
            .tcp_refused
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
            >= 1
    })
    .await;
    assert!(av
        .metrics()
        .contains("sipedge_turn_tcp_refused_total{reason=\"banned\"} 1"));

    // Inside, the budget bounds what a spoofed source could draw, but nobody strikes:
    // the same overdraft from an internal client bans nothing.
    let inside = UdpSocket::bind("127.0.0.32:0").await.unwrap();
    let before = av.dropped("unauthenticated_budget");
    for id in 0..sent {
        inside.send_to(&binding(id), av.int_udp).await.unwrap();
    }
    eventually("the internal overdraft is dropped", || {
        av.dropped("unauthenticated_budget") > before
    })
    .await;
    let mut not_banned = tcp_from("127.0.0.32", av.ext_tcp).await;
    assert!(
        !closed_within(&mut not_banned, Duration::from_millis(300)).await,
        "an internal overdraft strikes nobody"
    );
    av.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_tcp_is_bounded_per_zone_per_source_and_by_the_time_to_authenticate() {
    let av = Av::start(
        |f| {
            f.allow_sources.clear();
            f.connections_per_source = 2;
            f.connect_rate = 1000;
            f.connect_burst = 1000;
        },
        |r| {
            r.max_tcp_clients = 4;
            r.tcp_auth_timeout = Duration::from_secs(3);
        },
    )
    .await;
    // One client that authenticates (an allocation) and three that never do.
    let alice = av.credential("alice@sipedge.test", 3600);
    let mut authenticated = tcp_from("127.0.0.41", av.ext_tcp).await;
    let challenge = tcp_exchange(
        &mut authenticated,
        &request(ALLOCATE, 1, &allocate_udp, None),
    )
    .await
    .unwrap();
    let nonce = attr_value(&challenge, attr::NONCE).unwrap();
    let allocated = tcp_exchange(
        &mut authenticated,
        &request(ALLOCATE, 2, &allocate_udp, Some((&alice, &nonce))),
    )
    .await
    .unwrap();
    assert_eq!(error_code(&allocated), None);

    let mut silent = Vec::new();
    for source in ["127.0.0.41", "127.0.0.42", "127.0.0.42"] {
        let mut s = tcp_from(source, av.ext_tcp).await;
        assert!(
            tcp_exchange(&mut s, &binding(3)).await.is_some(),
            "accepted"
        );
        silent.push(s);
    }
    // A third connection from one source: the firewall's per-source count, shared with SIP.
    let mut third = tcp_from("127.0.0.42", av.ext_tcp).await;
    assert!(closed_within(&mut third, WAIT).await, "per-source limit");
    // A fifth in the zone: full.
    let mut fifth = tcp_from("127.0.0.43", av.ext_tcp).await;
    assert!(closed_within(&mut fifth, WAIT).await, "zone full");
    // The internal zone has its own slots.
    let mut inside = tcp_from("127.0.0.2", av.int_tcp).await;
    assert!(tcp_exchange(&mut inside, &binding(4)).await.is_some());

    // Nobody holds a slot without authenticating: the silent ones are closed (inside
    // too), the authenticated one stays, and the slots are free again.
    for s in silent.iter_mut().chain([&mut inside]) {
        assert!(closed_within(s, WAIT).await, "closed at the auth deadline");
    }
    let refreshed = tcp_exchange(
        &mut authenticated,
        &request(REFRESH, 5, &|_| {}, Some((&alice, &nonce))),
    )
    .await
    .expect("the authenticated client stays");
    assert_eq!(error_code(&refreshed), None);
    let mut later = tcp_from("127.0.0.43", av.ext_tcp).await;
    assert!(tcp_exchange(&mut later, &binding(6)).await.is_some());

    let text = av.metrics();
    for line in [
        "sipedge_turn_tcp_refused_total{reason=\"zone_full\"} 1",
        "sipedge_turn_tcp_refused_total{reason=\"source_limit\"} 1",
        "sipedge_turn_tcp_refused_total{reason=\"auth_timeout\"} 4",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    av.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_whose_allocation_is_gone_is_closed_and_its_slot_freed() {
    // The connection exists for its allocation: deleted (Refresh 0) or expired, it goes
    // too. Kept, it would hold one of the zone's slots and one of its source's connections
    // with nothing counted in any quota: one credential could free its quota and go on
    // holding slots until the zone is full for everyone.
    let av = Av::start(
        |f| {
            f.allow_sources.clear();
            f.connect_rate = 1000;
            f.connect_burst = 1000;
        },
        |r| {
            r.max_tcp_clients = 1;
            r.tcp_auth_timeout = Duration::from_secs(30);
        },
    )
    .await;
    let alice = av.credential("alice@sipedge.test", 3600);
    let mut first = tcp_from("127.0.0.61", av.ext_tcp).await;
    let allocation = tcp_allocate(&mut first, &alice).await;
    let delete = allocation.signed(&alice, REFRESH, 3, &|w| {
        w.attr(attr::LIFETIME, &[0, 0, 0, 0]);
    });
    let answer = tcp_exchange(&mut first, &delete)
        .await
        .expect("the answer is written before the close");
    assert_eq!(error_code(&answer), None);
    assert!(
        closed_within(&mut first, WAIT).await,
        "closed once its allocation is gone"
    );
    // The zone's one slot is free again (once its worker let the connection go).
    eventually("the connection let go", || {
        av.metrics().contains("sipedge_turn_tcp_clients 0")
    })
    .await;
    let mut second = tcp_from("127.0.0.62", av.ext_tcp).await;
    assert!(
        tcp_exchange(&mut second, &binding(4)).await.is_some(),
        "the slot is free"
    );
    av.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_address_of_the_host_is_a_peer_configured_or_not() {
    // The host's other addresses (a secondary one, the VM's own, an IPv6 SLAAC one) are
    // not in the topology, yet a datagram to any of them is delivered locally, to every
    // service bound to the wildcard address. Refused from either zone (the inside may reach
    // private ranges, never the edge itself).
    let av = Av::start(|_| {}, |r| r.allow_loopback_peers = false).await;
    let alice = av.credential("alice@sipedge.test", 3600);
    let host: Vec<std::net::IpAddr> = shell::host_addresses()
        .into_iter()
        .filter(|ip| ip.is_ipv4() && !ip.is_loopback())
        .collect();
    if host.is_empty() {
        eprintln!("SKIPPED: this host has no IPv4 address but loopback");
        av.edge.stop().await;
        return;
    }
    for (source, turn) in [("127.0.0.63", av.ext_udp), ("127.0.0.2", av.int_udp)] {
        let mut client = UdpClient::new(source, turn).await;
        let allocated = client.allocate(&alice, &|_| {}).await;
        assert_eq!(error_code(&allocated), None);
        for ip in &host {
            let answer = client
                .ask(&alice, CREATE_PERMISSION, &|w| {
                    w.xor_address(attr::XOR_PEER_ADDRESS, SocketAddr::new(*ip, 7));
                })
                .await;
            assert_eq!(error_code(&answer), Some(403), "{ip} from {source}");
        }
    }
    av.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_whose_allocation_is_gone_gets_its_answer_and_is_closed() {
    // As over TCP, by the connection's own task: the Refresh's answer, close_notify, the end.
    let av = Av::start(
        |_| {},
        |r| {
            r.tcp_auth_timeout = Duration::from_secs(30);
            r.tls_port = Some(5349);
            r.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
        },
    )
    .await;
    let alice = av.credential("alice@sipedge.test", 3600);
    let cfg = sipedge::tls::client_config_trusting(av.pki.roots(), None).unwrap();
    let tcp = tcp_from("127.0.0.64", av.edge.turn_tls[0]).await;
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls_pki_types::ServerName::try_from(EDGE_FQDN).unwrap(),
            tcp,
        )
        .await
        .expect("the handshake");
    async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        s: &mut S,
        req: &[u8],
    ) -> Vec<u8> {
        s.write_all(req).await.unwrap();
        let mut head = [0u8; 20];
        tokio::time::timeout(WAIT, s.read_exact(&mut head))
            .await
            .expect("an answer")
            .expect("an answer, not the end");
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let mut msg = head.to_vec();
        msg.resize(20 + len, 0);
        s.read_exact(&mut msg[20..]).await.unwrap();
        msg
    }
    let challenge = exchange(&mut tls, &request(ALLOCATE, 1, &allocate_udp, None)).await;
    let nonce = attr_value(&challenge, attr::NONCE).unwrap();
    let allocated = exchange(
        &mut tls,
        &request(ALLOCATE, 2, &allocate_udp, Some((&alice, &nonce))),
    )
    .await;
    assert_eq!(error_code(&allocated), None, "allocated over TLS");
    let delete = request(
        REFRESH,
        3,
        &|w| {
            w.attr(attr::LIFETIME, &[0, 0, 0, 0]);
        },
        Some((&alice, &nonce)),
    );
    let answer = exchange(&mut tls, &delete).await;
    assert_eq!(
        error_code(&answer),
        None,
        "the answer comes before the close"
    );
    let mut byte = [0u8; 1];
    let end = tokio::time::timeout(WAIT, tls.read(&mut byte)).await;
    assert!(
        matches!(end, Ok(Ok(0)) | Ok(Err(_))),
        "closed once its allocation is gone: {end:?}"
    );
    av.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_that_does_not_read_loses_packets_not_edge_memory() {
    let av = Av::start(|_| {}, |r| r.max_queued_bytes_per_client = 16 * 1024).await;
    let alice = av.credential("alice@sipedge.test", 3600);
    // A small receive window, so the kernel buffers little on the client's behalf.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.51:0".parse().unwrap()).unwrap();
    let mut client = socket.connect(av.ext_tcp).await.unwrap();
    let allocation = tcp_allocate(&mut client, &alice).await;
    let signed =
        |method, id, build: &dyn Fn(&mut Writer)| allocation.signed(&alice, method, id, build);
    let relayed = allocation.relayed;
    let peer = UdpSocket::bind("127.0.0.52:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let permitted = tcp_exchange(
        &mut client,
        &signed(CREATE_PERMISSION, 3, &|w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, peer_addr);
        }),
    )
    .await
    .unwrap();
    assert_eq!(error_code(&permitted), None);

    // The peer sends while the client reads nothing: bounded in count and time.
    // The edge counts the three answers it wrote too (maybe after the client read them).
    let answers = (allocation.answered + permitted.len()) as u64;
    let payload = vec![0x5Au8; 1000];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    while av.dropped("client_queue_full") == 0 && tokio::time::Instant::now() < deadline {
        for _ in 0..200 {
            peer.send_to(&payload, relayed).await.unwrap();
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            sent < 100_000,
            "no drop after {sent} packets: {:?}, {} bytes to clients",
            av.stats()
                .dropped()
                .filter(|(_, n)| *n > 0)
                .collect::<Vec<_>>(),
            av.stats().bytes_to_clients()
        );
    }
    assert!(
        av.dropped("client_queue_full") > 0,
        "packets beyond the client's queue are dropped"
    );
    // What the edge took for the client before dropping: its 16 KiB queue and what the
    // kernel buffers (a few KiB here), not the 512 packets the queue's slot count allows.
    let taken = av.stats().bytes_to_clients();
    assert!(
        taken < 128 * 1024,
        "{taken} bytes queued for a client that does not read"
    );
    // The client is still served once it reads: every frame the edge took reaches it,
    // whole and in order (what waited in the edge's queue is written by the client's relay
    // worker when the socket takes more), and then nothing more.
    let mut received = 0;
    while let Ok(msg) = tcp_message_within(&mut client, Duration::from_secs(2)).await {
        let msg = msg.expect("the stream stays open");
        assert_eq!(
            attr_value(&msg, attr::DATA).unwrap(),
            payload,
            "frame {received}"
        );
        received += msg.len() as u64;
    }
    assert_eq!(
        received,
        av.stats().bytes_to_clients() - answers,
        "every byte the edge took for the client was written to it"
    );
    av.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_clients_frames_cross_whatever_way_the_stream_splits_them() {
    let av = Av::start(|_| {}, |_| {}).await;
    let alice = av.credential("alice@sipedge.test", 3600);
    let mut client = tcp_from("127.0.0.53", av.ext_tcp).await;
    client.set_nodelay(true).unwrap();
    let allocation = tcp_allocate(&mut client, &alice).await;
    let signed =
        |method, id, build: &dyn Fn(&mut Writer)| allocation.signed(&alice, method, id, build);
    let relayed = allocation.relayed;
    let peer = UdpSocket::bind("127.0.0.54:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let bound = tcp_exchange(
        &mut client,
        &signed(CHANNEL_BIND, 3, &|w| {
            w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x07, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, peer_addr);
        }),
    )
    .await
    .unwrap();
    assert_eq!(error_code(&bound), None);

    // Twelve ChannelData frames of odd sizes (padded to 4 on the stream), then a Refresh
    // (the general path) in the middle of the stream, written in pieces that cut frames
    // anywhere: header, length, payload, padding. Each piece is its own segment, read by
    // the edge before the next arrives.
    let frame = |i: usize| {
        let len = 97 + i * 13;
        let mut f = vec![0x40, 0x07, 0, len as u8];
        f.extend((0..len).map(|k| (i * 31 + k) as u8));
        f.resize(f.len().next_multiple_of(4), 0);
        f
    };
    let mut stream: Vec<u8> = (0..6).flat_map(frame).collect();
    let refresh = signed(REFRESH, 4, &|w| {
        w.attr(attr::LIFETIME, &600u32.to_be_bytes());
    });
    stream.extend_from_slice(&refresh);
    stream.extend((6..12).flat_map(frame));
    for (n, piece) in stream.chunks(7).enumerate() {
        client.write_all(piece).await.unwrap();
        if n % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut buf = vec![0u8; 2048];
    for i in 0..12 {
        let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
            .await
            .expect("the peer gets every frame")
            .unwrap();
        assert_eq!(from, relayed);
        let sent = frame(i);
        let len = usize::from(sent[3]);
        assert_eq!(
            &buf[..n],
            &sent[4..4 + len],
            "frame {i}, whole and in order"
        );
    }
    let refreshed = tcp_read_message(&mut client)
        .await
        .expect("Refresh answered");
    assert_eq!(error_code(&refreshed), None);
    assert_eq!(&refreshed[8..20], &refresh[8..20], "the Refresh's answer");

    // A frame that stops half-way keeps the client's connection waiting for the rest,
    // and the rest completes it.
    let last = frame(3);
    client.write_all(&last[..50]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.write_all(&last[50..]).await.unwrap();
    let (n, _) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .expect("the completed frame")
        .unwrap();
    assert_eq!(&buf[..n], &last[4..4 + usize::from(last[3])]);

    // Bytes that are not TURN close the connection, and its allocation goes with it.
    client.write_all(&[0xFF; 8]).await.unwrap();
    assert!(closed_within(&mut client, WAIT).await);
    let deadline = tokio::time::Instant::now() + WAIT;
    while av.edge.turn.as_ref().unwrap().allocations() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the allocation goes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    av.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_an_internal_peer_passes_the_external_policy() {
    // An IPv6 relay, so IPv6 peer addresses reach the policy (an IPv4 relay answers 443).
    let av = Av::start(
        |_| {},
        |r| {
            r.relay_ip = Some("::1".parse().unwrap());
            r.allow_loopback_peers = false;
        },
    )
    .await;
    let alice = av.credential("alice@sipedge.test", 3600);
    let mut outside = UdpClient::new("127.0.0.61", av.ext_udp).await;
    let allocated = outside
        .allocate(&alice, &|w| {
            w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        })
        .await;
    assert_eq!(error_code(&allocated), None, "an IPv6 relay");
    for peer in [
        "[64:ff9b:1::7f00:2]:5000",     // RFC 8215 local-use NAT64 of 127.0.0.2
        "[64:ff9b:1:a14:0:a00::]:5000", // local-use /48, RFC 6052 /48 layout of 10.20.0.10
        "[64:ff9b::a14:a]:5000",        // RFC 6052 well-known NAT64 of 10.20.0.10
        "[::ffff:10.20.0.10]:5000",     // IPv4-mapped
        "[::ffff:0:10.20.0.10]:5000",   // SIIT (RFC 2765)
        "[2002:a14:a::1]:5000",         // 6to4 of 10.20.0.10
        "[2001:0:4136:e378:8000:63bf:f5eb:fff5]:5000", // Teredo client 10.20.0.10
        "[::1]:5000",
        "[fd00::1]:5000",
    ] {
        let peer: SocketAddr = peer.parse().unwrap();
        let answer = outside
            .ask(&alice, CREATE_PERMISSION, &|w| {
                w.xor_address(attr::XOR_PEER_ADDRESS, peer);
            })
            .await;
        assert_eq!(error_code(&answer), Some(403), "{peer} from outside");
    }
    let public: SocketAddr = "[2606:4700:4700::1111]:3478".parse().unwrap();
    let answer = outside
        .ask(&alice, CREATE_PERMISSION, &|w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, public);
        })
        .await;
    assert_eq!(error_code(&answer), None, "a public peer is permitted");
    av.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_relay_cannot_honour_are_refused_and_tables_are_capped() {
    let av = Av::start(
        |_| {},
        |r| {
            r.max_permissions_per_allocation = 2;
            r.max_channels_per_allocation = 1;
        },
    )
    .await;
    let alice = av.credential("alice@sipedge.test", 3600);
    let mut client = UdpClient::new("127.0.0.71", av.ext_udp).await;

    // DONT-FRAGMENT is not honoured: 420 naming it, no allocation.
    let df = client
        .allocate(&alice, &|w| {
            w.attr(attr::DONT_FRAGMENT, &[]);
        })
        .await;
    assert_eq!(error_code(&df), Some(420));
    let unknown = attr_value(&df, attr::UNKNOWN_ATTRIBUTES).unwrap();
    assert_eq!(unknown, attr::DONT_FRAGMENT.to_be_bytes());
    let allocated = client.allocate(&alice, &|_| {}).await;
    assert_eq!(error_code(&allocated), None);
    let relayed = relayed_of(&allocated);

    let peers: Vec<UdpSocket> = futures_peers(3).await;
    let addr = |i: usize| peers[i].local_addr().unwrap();
    for i in 0..2 {
        let answer = client
            .ask(&alice, CREATE_PERMISSION, &|w| {
                w.xor_address(attr::XOR_PEER_ADDRESS, addr(i));
            })
            .await;
        assert_eq!(error_code(&answer), None);
    }
    let third = client
        .ask(&alice, CREATE_PERMISSION, &|w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, addr(2));
        })
        .await;
    assert_eq!(error_code(&third), Some(508), "permissions are capped");

    // Channels: port 0 is no peer; one channel, then the cap.
    let port_zero = client
        .ask(&alice, CHANNEL_BIND, &|w| {
            w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, SocketAddr::new(addr(0).ip(), 0));
        })
        .await;
    assert_eq!(error_code(&port_zero), Some(400));
    let bound = client
        .ask(&alice, CHANNEL_BIND, &|w| {
            w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, addr(0));
        })
        .await;
    assert_eq!(error_code(&bound), None);
    let second = client
        .ask(&alice, CHANNEL_BIND, &|w| {
            w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x02, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, addr(1));
        })
        .await;
    assert_eq!(error_code(&second), Some(508), "channels are capped");

    // A Send indication with a comprehension-required attribute the relay does not know
    // (or DONT-FRAGMENT) is discarded; a plain one is relayed.
    let send = |extra: Option<u16>| {
        let mut w = Writer::new(Class::Indication, SEND, [9; 12]);
        w.xor_address(attr::XOR_PEER_ADDRESS, addr(1))
            .attr(attr::DATA, b"media");
        if let Some(kind) = extra {
            w.attr(kind, &[0, 0, 0, 0]);
        }
        w.finish()
    };
    for kind in [0x0031, attr::DONT_FRAGMENT] {
        client
            .sock
            .send_to(&send(Some(kind)), client.turn)
            .await
            .unwrap();
    }
    client.sock.send_to(&send(None), client.turn).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(WAIT, peers[1].recv_from(&mut buf))
        .await
        .expect("the plain Send relayed")
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"media"[..], relayed));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), peers[1].recv_from(&mut buf))
            .await
            .is_err(),
        "only the plain Send was relayed"
    );
    assert_eq!(av.dropped("unknown_attribute"), 2);
    av.edge.stop().await;
}

async fn futures_peers(n: usize) -> Vec<UdpSocket> {
    let mut peers = Vec::new();
    for i in 0..n {
        peers.push(
            UdpSocket::bind(format!("127.0.0.{}:0", 80 + i))
                .await
                .unwrap(),
        );
    }
    peers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_port_another_process_holds_costs_no_client_its_allocation() {
    let av = Av::start(|_| {}, |r| r.port_max = r.port_min + 2).await;
    // Two of the three relayed ports are held by someone else.
    let (lo, _) = av.ports;
    let _held: Vec<std::net::UdpSocket> = [lo, lo + 1]
        .iter()
        .map(|p| std::net::UdpSocket::bind(("127.0.0.1", *p)).unwrap())
        .collect();
    let alice = av.credential("alice@sipedge.test", 3600);
    // A TCP client sends its Allocate once (no retransmission over TCP): the edge tries
    // another port for it.
    let mut client = tcp_from("127.0.0.91", av.ext_tcp).await;
    let challenge = tcp_exchange(&mut client, &request(ALLOCATE, 1, &allocate_udp, None))
        .await
        .unwrap();
    let nonce = attr_value(&challenge, attr::NONCE).unwrap();
    let allocated = tcp_exchange(
        &mut client,
        &request(ALLOCATE, 2, &allocate_udp, Some((&alice, &nonce))),
    )
    .await
    .expect("answered");
    assert_eq!(error_code(&allocated), None);
    assert_eq!(relayed_of(&allocated).port(), lo + 2);
    av.edge.stop().await;
}

/// TURN over TLS holds the same slots as TCP and has the same deadline, its handshake
/// included: a connection that never starts its handshake, and one that finishes it but
/// never allocates, are both closed at `tcp_auth_timeout`, and while they hold the zone's
/// slots nobody else (TCP or TLS) gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_tls_shares_the_tcp_bounds_and_its_handshake_is_within_the_auth_deadline() {
    let av = Av::start(
        |_| {},
        |r| {
            r.max_tcp_clients = 2;
            r.tcp_auth_timeout = Duration::from_secs(2);
            r.tls_port = Some(5349);
            r.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
        },
    )
    .await;
    let tls_at = av.edge.turn_tls[0];
    let mut mute = tcp_from("127.0.0.51", tls_at).await;
    let cfg = sipedge::tls::client_config_trusting(av.pki.roots(), None).unwrap();
    let tcp = tcp_from("127.0.0.52", tls_at).await;
    let mut idle = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls_pki_types::ServerName::try_from(EDGE_FQDN).unwrap(),
            tcp,
        )
        .await
        .expect("the handshake");
    // Both slots of the external zone are held: TCP is refused too.
    let mut third = tcp_from("127.0.0.53", av.ext_tcp).await;
    assert!(closed_within(&mut third, WAIT).await, "zone full");
    // At the deadline: both closed.
    assert!(closed_within(&mut mute, WAIT).await, "no handshake, closed");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, idle.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "no allocation, closed: {read:?}"
    );
    let text = av.metrics();
    for line in [
        "sipedge_turn_tcp_refused_total{reason=\"zone_full\"} 1",
        "sipedge_turn_tcp_refused_total{reason=\"tls_handshake\"} 1",
        "sipedge_turn_tcp_refused_total{reason=\"auth_timeout\"} 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    // The slots are free again.
    let mut later = tcp_from("127.0.0.53", av.ext_tcp).await;
    assert!(tcp_exchange(&mut later, &binding(6)).await.is_some());
    av.edge.stop().await;
}
