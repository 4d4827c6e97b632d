//! End-to-end SRTP through the relay: an internal client allocates on the edge's internal
//! TURN listener, binds a channel to a peer outside, and sends an SRTP stream protected by
//! webrtc-srtp (AES_CM_128_HMAC_SHA1_80); the peer unprotects every packet and checks
//! payloads and order; then the reverse direction. The relay passes SRTP byte-exact.
//! (webrtc-srtp is a dev-dependency only: it panics on short SRTCP and never sees untrusted
//! input in the product.)

use std::net::SocketAddr;
use std::time::Duration;

use sipedge::core::turn::auth::long_term_key;
use sipedge::core::turn::encode::Writer;
use sipedge::core::turn::server::{decode_xor_address, ALLOCATE, CHANNEL_BIND};
use sipedge::core::turn::stun::{self, attr, Class};
use sipedge::core::{credentials, keyring::Ring};
use sipedge::shell::{self, keyfile};
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

async fn exchange(sock: &UdpSocket, to: SocketAddr, request: &[u8]) -> Vec<u8> {
    sock.send_to(request, to).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("TURN answered")
        .unwrap();
    buf.truncate(n);
    buf
}

fn attr_value(msg: &[u8], kind: u16) -> Option<Vec<u8>> {
    let c = stun::check(msg).ok()?;
    let a = c.get(kind)?;
    Some(msg[a.start..a.start + a.len].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_crosses_the_relay_byte_exact_both_ways() {
    let pki = Pki::new();
    let ring_path = pki.dir.path().join("ring.toml");
    let now = sipedge::shell::clock::now_unix();
    keyfile::store(
        &ring_path,
        &Ring::init(keyfile::random_secret().unwrap(), now),
        true,
    )
    .unwrap();
    let ring = keyfile::load(&ring_path).unwrap();
    let director = Director::start(&pki).await;
    let mut t = topology(&pki, &[director.addr]);
    t.keys = Some(KeysSource::File(ring_path.clone()));
    let base = 20_000 + (std::process::id() % 100) as u16 * 100;
    t.relay = Some(Relay {
        // The internal listener (an internal client); relays on the external address.
        listen_udp: vec!["127.0.0.2:0".parse().unwrap()],
        listen_tcp: vec!["127.0.0.2:0".parse().unwrap()],
        relay_ip: Some("127.0.0.1".parse().unwrap()),
        port_min: base,
        port_max: base + 99,
        allow_loopback_peers: true,
        ..Relay::new("127.0.0.1")
    });
    let edge = shell::start(&t).await.expect("edge starts");
    let turn = edge.turn_udp[0];
    let realm = DOMAIN;

    // The internal client allocates (401 first, then with the credential).
    let client = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let cred = credentials::mint(&ring, "alice@sipedge.test", 3600, now).unwrap();
    let key = long_term_key(&cred.username, realm, &cred.password);
    let mut w = Writer::new(Class::Request, ALLOCATE, [1; 12]);
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let challenge = exchange(&client, turn, &w.finish_with_fingerprint()).await;
    let nonce = attr_value(&challenge, attr::NONCE).expect("401 with a nonce");
    let signed = |method: u16, id: u8, build: &dyn Fn(&mut Writer)| {
        let mut w = Writer::new(Class::Request, method, [id; 12]);
        build(&mut w);
        w.attr(attr::USERNAME, cred.username.as_bytes())
            .attr(attr::REALM, realm.as_bytes())
            .attr(attr::NONCE, &nonce)
            .integrity(&key);
        w.finish_with_fingerprint()
    };
    let answer = exchange(
        &client,
        turn,
        &signed(ALLOCATE, 2, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }),
    )
    .await;
    let relayed = decode_xor_address(
        &attr_value(&answer, attr::XOR_RELAYED_ADDRESS).expect("allocated"),
        &[2; 12],
    )
    .unwrap();
    assert_eq!(
        relayed.ip().to_string(),
        "127.0.0.1",
        "relayed on the external address"
    );

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
    edge.stop().await;
}
