//! End-to-end SRTP through the relay: an internal client allocates on the edge's internal
//! TURN listener, binds a channel to a peer outside, and sends an SRTP stream protected by
//! webrtc-srtp (AES_CM_128_HMAC_SHA1_80); the peer unprotects every packet and checks
//! payloads and order; then the reverse direction. The relay passes SRTP byte-exact.
//! (webrtc-srtp is a dev-dependency only: it panics on short SRTCP and never sees untrusted
//! input in the product.)

use std::net::SocketAddr;
use std::time::Duration;

use sipedge::core::credentials;
use sipedge::core::turn::auth::long_term_key;
use sipedge::core::turn::encode::Writer;
use sipedge::core::turn::server::{decode_xor_address, ALLOCATE, CHANNEL_BIND};
use sipedge::core::turn::stun::attr;
use sipedge::shell;
use sipedge::shell::udp;
use sipedge::topology::{KeysSource, Relay};
use tokio::net::UdpSocket;
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

use crate::support::*;

fn srtp() -> Context {
    Context::new(
        &[7; 16],
        &[9; 14],
        ProtectionProfile::Aes128CmHmacSha1_80,
        None,
        None,
    )
    .unwrap()
}

fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An edge with a relay, an internal client holding an allocation with channel 0x4001
/// bound to a peer outside.
struct Relayed {
    _pki: Pki,
    _director: Director,
    edge: shell::RunningEdge,
    turn: SocketAddr,
    client: UdpSocket,
    peer: UdpSocket,
    relayed: SocketAddr,
    ring: sipedge::core::keyring::Ring,
}

async fn relayed(tune: impl FnOnce(&mut Relay)) -> Relayed {
    let pki = Pki::new();
    let (ring_path, ring) = ring_file(&pki);
    let now = sipedge::shell::clock::now_unix();
    let director = Director::start(&pki).await;
    let mut t = topology(&pki, &[director.addr]);
    t.keys = Some(KeysSource::File(ring_path.clone()));
    let base = 20_000 + (std::process::id() % 100) as u16 * 100;
    // The internal listener (an internal client); relays on the external address.
    let mut relay = loopback_relay(&["127.0.0.2:0"], base);
    tune(&mut relay);
    t.relay = Some(relay);
    let edge = shell::start(&t).await.expect("edge starts");
    let turn = edge.turn_udp[0];
    let (client, peer, relayed) = with_channel(turn, &ring, "alice@sipedge.test", now).await;
    assert_eq!(
        relayed.ip().to_string(),
        "127.0.0.1",
        "relayed on the external address"
    );

    Relayed {
        _pki: pki,
        _director: director,
        edge,
        turn,
        client,
        peer,
        relayed,
        ring,
    }
}

/// An internal client of `user` (from 127.0.0.2, a port of its own) with an allocation and
/// channel 0x4001 bound to its own peer outside (127.0.0.6): the client, the peer and the
/// relayed address.
async fn with_channel(
    turn: SocketAddr,
    ring: &sipedge::core::keyring::Ring,
    user: &str,
    now: u64,
) -> (UdpSocket, UdpSocket, SocketAddr) {
    // The internal client allocates (401 first, then with the credential).
    let client = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let cred = credentials::mint(ring, user, 3600, now).unwrap();
    let key = long_term_key(&cred.username, DOMAIN, &cred.password);
    let udp = |w: &mut Writer| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    };
    let challenge = exchange(&client, turn, &turn_request(ALLOCATE, 1, &udp, None)).await;
    let nonce = attr_value(&challenge, attr::NONCE).expect("401 with a nonce");
    let auth = TurnAuth {
        username: &cred.username,
        key: &key,
        nonce: &nonce,
    };
    let signed =
        |method, id, build: &dyn Fn(&mut Writer)| turn_request(method, id, build, Some(&auth));
    let answer = exchange(&client, turn, &signed(ALLOCATE, 2, &udp)).await;
    let relayed = decode_xor_address(
        &attr_value(&answer, attr::XOR_RELAYED_ADDRESS).expect("allocated"),
        &[2; 12],
    )
    .unwrap();
    // The peer outside, and a channel to it.
    let peer = UdpSocket::bind("127.0.0.6:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let bound = exchange(
        &client,
        turn,
        &signed(CHANNEL_BIND, 3, &|w| {
            w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, peer_addr);
        }),
    )
    .await;
    assert!(
        attr_value(&bound, attr::ERROR_CODE).is_none(),
        "channel bound"
    );
    (client, peer, relayed)
}

/// Three relay workers (`relay.workers`): the client-facing socket is three sockets on one
/// address (SO_REUSEPORT spreads the clients over them) and the relayed sockets are spread
/// over the workers by port. Sixteen clients allocate, bind and relay both ways, byte-exact,
/// whichever worker each lands on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relay_workers_serve_many_clients_both_ways() {
    let r = relayed(|relay| relay.workers = 3).await;
    let now = sipedge::shell::clock::now_unix();
    let mut sessions = vec![(r.client, r.peer, r.relayed)];
    for i in 0..15 {
        sessions.push(with_channel(r.turn, &r.ring, &format!("user{i}@sipedge.test"), now).await);
    }
    let mut buf = vec![0u8; 2048];
    for (n, (client, peer, relayed)) in sessions.iter().enumerate() {
        for seq in 0..20u8 {
            let mut frame = vec![0x40, 0x01, 0x00, 100];
            frame.extend((0..100u8).map(|b| b ^ seq ^ n as u8));
            client.send_to(&frame, r.turn).await.unwrap();
            let (len, from) =
                tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
                    .await
                    .expect("the peer got it")
                    .unwrap();
            assert_eq!(
                (&buf[..len], from),
                (&frame[4..], *relayed),
                "client {n} to its peer"
            );
            let back: Vec<u8> = frame[4..].iter().map(|b| !b).collect();
            peer.send_to(&back, *relayed).await.unwrap();
            let len = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
                .await
                .expect("the client got it")
                .unwrap();
            assert_eq!(&buf[..4], &[0x40, 0x01, 0x00, 100], "on its channel");
            assert_eq!(&buf[4..len], &back[..], "peer {n} to its client");
        }
    }
    r.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_crosses_the_relay_byte_exact_both_ways() {
    srtp_both_ways(|_| {}).await.stop().await;
}

/// The same with the kernel fast path (`relay.kernel_offload`) on the loopback device: the
/// channel's packets cross in the kernel, byte-exact. Where it cannot load (not root), the
/// edge relays in user space and this says so; under CI it must load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_crosses_the_kernel_path_byte_exact_both_ways() {
    let edge = srtp_both_ways(|r| r.kernel_offload = true).await;
    let turn = edge.turn.clone().unwrap();
    if turn.kernel_status.starts_with("on") {
        // Read back every second (waited for: the machine may be busy); the first
        // datagrams may have gone through user space.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let (to_peers, to_clients) = loop {
            let (p, c) = turn.stats.kernel_relayed_packets();
            if (p >= 40 && c >= 40) || tokio::time::Instant::now() > deadline {
                break (p, c);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            to_peers >= 40 && to_clients >= 40,
            "the kernel relayed {to_peers} / {to_clients} of 50 / 50"
        );
    } else {
        assert!(std::env::var_os("CI").is_none(), "{}", turn.kernel_status);
        eprintln!("NOTE: relayed in user space: {}", turn.kernel_status);
    }
    edge.stop().await;
}

/// 50 SRTP packets each way through a channel, checked byte for byte and decrypted at the
/// far end; returns the edge, running.
async fn srtp_both_ways(tune: impl FnOnce(&mut Relay)) -> shell::RunningEdge {
    let Relayed {
        edge,
        turn,
        client,
        peer,
        relayed,
        ..
    } = relayed(tune).await;

    // Inside -> outside: 50 protected packets, each checked at the peer.
    let (mut tx, mut rx) = (srtp(), srtp());
    let mut buf = vec![0u8; 2048];
    for seq in 0..50u16 {
        let payload = vec![(seq % 251) as u8; 160];
        let protected = tx.encrypt_rtp(&rtp(seq, &payload)).unwrap();
        let mut frame = vec![0x40, 0x01];
        frame.extend_from_slice(&(protected.len() as u16).to_be_bytes());
        frame.extend_from_slice(&protected);
        client.send_to(&frame, turn).await.unwrap();
        let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, relayed, "from the relayed address");
        assert_eq!(&buf[..n], &protected[..], "byte-exact");
        let clear = rx.decrypt_rtp(&buf[..n]).unwrap();
        assert_eq!(&clear[2..4], &seq.to_be_bytes(), "in order");
        assert_eq!(&clear[12..], &payload[..]);
    }

    // Outside -> inside: the peer answers to the relayed address; the client gets ChannelData.
    let (mut tx, mut rx) = (srtp(), srtp());
    for seq in 0..50u16 {
        let payload = vec![(seq % 13) as u8; 160];
        let protected = tx.encrypt_rtp(&rtp(seq, &payload)).unwrap();
        peer.send_to(&protected, relayed).await.unwrap();
        let (n, _) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..2], &[0x40, 0x01]);
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        assert_eq!(n, 4 + len);
        assert_eq!(&buf[4..n], &protected[..], "byte-exact");
        let clear = rx.decrypt_rtp(&buf[4..n]).unwrap();
        assert_eq!(&clear[2..4], &seq.to_be_bytes());
        assert_eq!(&clear[12..], &payload[..]);
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    edge
}

/// ChannelData frames of `len` payload bytes on channel 0x4001, payloads numbered.
fn frames(count: u16, len: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|seq| {
            let mut f = vec![0x40, 0x01];
            f.extend_from_slice(&(len as u16).to_be_bytes());
            f.extend_from_slice(&seq.to_be_bytes());
            f.resize(4 + len, (seq % 251) as u8);
            f
        })
        .collect()
}

/// A test client's UDP socket with quinn-udp's batched receive and segmented send (GSO),
/// on tokio's readiness.
struct BatchSocket {
    io: UdpSocket,
    state: quinn_udp::UdpSocketState,
}

impl BatchSocket {
    fn new(io: UdpSocket) -> std::io::Result<BatchSocket> {
        let state = quinn_udp::UdpSocketState::new((&io).into())?;
        Ok(BatchSocket { io, state })
    }

    fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    async fn send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> std::io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        loop {
            self.io.writable().await?;
            match self.io.try_io(tokio::io::Interest::WRITABLE, || {
                self.state.try_send((&self.io).into(), &transmit)
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }

    async fn recv(
        &self,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn_udp::RecvMeta],
    ) -> std::io::Result<usize> {
        loop {
            self.io.readable().await?;
            match self.io.try_io(tokio::io::Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }
}

/// Sends equal-sized datagrams as GSO trains of up to 10 where the kernel offers it.
async fn send_trains(sock: &BatchSocket, to: SocketAddr, datagrams: &[Vec<u8>]) {
    let per_train = sock.max_segments().min(10);
    for train in datagrams.chunks(per_train) {
        let bytes: Vec<u8> = train.concat();
        let segment = (train.len() > 1).then(|| train[0].len());
        sock.send(to, &bytes, segment).await.unwrap();
    }
}

/// Receives datagrams until `count` arrived or the line is quiet for 500 ms.
async fn receive(sock: &UdpSocket, count: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 2048];
    while got.len() < count {
        match tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => got.push((from, buf[..n].to_vec())),
            _ => break,
        }
    }
    got
}

/// The same through batched receives (GRO trains split).
async fn receive_batched(sock: &BatchSocket, count: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut got = Vec::new();
    let mut storage = vec![0u8; 65_536];
    let mut meta = [quinn_udp::RecvMeta::default()];
    while got.len() < count {
        let mut bufs = [std::io::IoSliceMut::new(&mut storage)];
        let read =
            tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut bufs, &mut meta));
        if !matches!(read.await, Ok(Ok(1))) {
            break;
        }
        for r in udp::datagrams(&storage, &meta[0]) {
            got.push((meta[0].addr, storage[r].to_vec()));
        }
    }
    got
}

/// Bursts both ways, sent as GSO trains so that the edge reads them batched (recvmmsg,
/// GRO) and sends them segmented (GSO): every packet arrives, byte-exact and in order, and
/// the counters show fewer receive calls than datagrams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_cross_the_batched_relay_complete_and_in_order() {
    let r = relayed(|_| {}).await;
    let client = BatchSocket::new(r.client).unwrap();
    let peer = BatchSocket::new(r.peer).unwrap();
    let stats = &r.edge.turn.as_ref().unwrap().stats;

    // Client -> peer: 100 frames of 172 bytes (20 ms of audio with SRTP each).
    let sent = frames(100, 172);
    send_trains(&client, r.turn, &sent).await;
    let got = receive_batched(&peer, sent.len()).await;
    assert_eq!(got.len(), sent.len(), "every packet reached the peer");
    for ((from, payload), frame) in got.iter().zip(&sent) {
        assert_eq!(*from, r.relayed);
        assert_eq!(payload[..], frame[4..], "byte-exact and in order");
    }
    let calls = stats.receive_calls();
    let packets = stats.client_packets();
    eprintln!(
        "GSO segments {}: {calls} receive calls for {packets} datagrams",
        client.max_segments()
    );
    if client.max_segments() > 1 {
        assert!(
            calls < packets,
            "batched: {calls} receive calls for {packets} datagrams"
        );
    }

    // Peer -> client: 100 datagrams of 172 bytes, back as ChannelData.
    let back: Vec<Vec<u8>> = frames(100, 172)
        .into_iter()
        .map(|f| f[4..].to_vec())
        .collect();
    send_trains(&peer, r.relayed, &back).await;
    let got = receive_batched(&client, back.len()).await;
    assert_eq!(got.len(), back.len(), "every packet reached the client");
    for ((from, frame), payload) in got.iter().zip(&back) {
        assert_eq!(*from, r.turn);
        assert_eq!(frame[..4], [0x40, 0x01, 0, 172]);
        assert_eq!(frame[4..], payload[..], "byte-exact and in order");
    }
    assert_eq!(stats.dropped_total(), 0);
    r.edge.stop().await;
}

/// The per-allocation bandwidth budget: a burst beyond it is dropped and counted by
/// reason, on /metrics too; what fits passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_beyond_the_budget_is_dropped_and_counted() {
    // 64 kbit/s: a one-second burst of 8000 bytes, 46 frames of 172 bytes.
    let r = relayed(|relay| relay.max_kbps_per_allocation = 64).await;
    let sent = frames(100, 172);
    for f in &sent {
        r.client.send_to(f, r.turn).await.unwrap();
    }
    let got = receive(&r.peer, sent.len()).await;
    assert!(
        (40..=50).contains(&got.len()),
        "{} of 100 passed a 64 kbit/s budget",
        got.len()
    );
    let stats = &r.edge.turn.as_ref().unwrap().stats;
    let over: u64 = stats
        .dropped()
        .filter(|(reason, _)| *reason == "bandwidth")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(over as usize, sent.len() - got.len(), "every drop counted");
    let text = sipedge::shell::ops::metrics(&r.edge.view, sipedge::shell::clock::now());
    assert!(
        text.contains(&format!(
            "sipedge_turn_dropped_total{{reason=\"bandwidth\"}} {over}"
        )),
        "{text}"
    );
    assert!(text.contains("sipedge_turn_allocations 1"), "{text}");
    prometheus_check(&text);
    r.edge.stop().await;
}
