//! An established TURN allocation in the sans-IO server, made through real authenticated
//! requests: a channel (0x4001) bound to one peer, a permission for another. Shared by the
//! allocation-counting test and the per-packet benchmark (included by `#[path]`).

use std::net::SocketAddr;
use std::time::Instant;

use sipedge::core::credentials;
use sipedge::core::keyring::Ring;
use sipedge::core::turn::auth::{long_term_key, AuthContext};
use sipedge::core::turn::encode::Writer;
use sipedge::core::turn::nonce::Nonces;
use sipedge::core::turn::policy::Origin;
use sipedge::core::turn::server::{
    Arrival, FiveTuple, Output, Server, Transport, TurnConfig, ALLOCATE, CHANNEL_BIND,
    CREATE_PERMISSION, SEND,
};
use sipedge::core::turn::stun::{attr, Class};

pub(crate) const T0: u64 = 1_800_000_000;
pub(crate) const REALM: &str = "sipedge.test";

pub(crate) struct Established {
    pub(crate) server: Server,
    pub(crate) tuple: FiveTuple,
    pub(crate) relay: SocketAddr,
    /// The peer on channel 0x4001.
    pub(crate) bound: SocketAddr,
    /// A peer with a permission and no channel (Send and Data indications).
    pub(crate) permitted: SocketAddr,
    pub(crate) start: Instant,
    /// A 172-byte SRTP-sized payload, as ChannelData and as a Send indication.
    pub(crate) payload: Vec<u8>,
    pub(crate) frame: Vec<u8>,
    pub(crate) send: Vec<u8>,
}

/// A server with `cfg` on 192.0.2.10 and one internal client's allocation on it.
pub(crate) fn establish(cfg: TurnConfig) -> Established {
    let ring = Ring::init([4; 32], T0);
    let nonces = Nonces::new(&[5; 32], REALM, 600);
    let auth = AuthContext {
        ring: &ring,
        nonces: &nonces,
        realm: REALM,
        max_lifetime_secs: 8 * 3600,
    };
    let mut server = Server::new(cfg, 0, std::time::Instant::now());
    let tuple = FiveTuple {
        client: "198.51.100.20:40000".parse().unwrap(),
        server: "192.0.2.10:3478".parse().unwrap(),
        transport: Transport::Udp,
    };
    let bound: SocketAddr = "198.51.100.99:5000".parse().unwrap();
    let permitted: SocketAddr = "198.51.100.98:5000".parse().unwrap();
    let c = credentials::mint(&ring, "alice", 8 * 3600, T0).unwrap();
    let key = long_term_key(&c.username, REALM, &c.password);
    #[allow(clippy::disallowed_methods)] // simulated time starts at a real instant
    let start = Instant::now();
    let arrival = Arrival {
        tuple,
        origin: Origin::Internal,
        now: start,
        now_unix: T0,
    };
    let signed = |method: u16, id: u8, attrs: &[(u16, Vec<u8>)], peer: Option<SocketAddr>| {
        let mut w = Writer::new(Class::Request, method, [id; 12]);
        for (k, v) in attrs {
            w.attr(*k, v);
        }
        if let Some(peer) = peer {
            w.xor_address(attr::XOR_PEER_ADDRESS, peer);
        }
        let nonce = nonces.issue(tuple.client.ip(), T0);
        w.attr(attr::USERNAME, c.username.as_bytes())
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, nonce.as_bytes())
            .integrity(&key);
        w.finish_with_fingerprint()
    };
    let mut out = Vec::new();
    for request in [
        signed(
            ALLOCATE,
            1,
            &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            None,
        ),
        signed(
            CHANNEL_BIND,
            2,
            &[(attr::CHANNEL_NUMBER, vec![0x40, 1, 0, 0])],
            Some(bound),
        ),
        signed(CREATE_PERMISSION, 3, &[], Some(permitted)),
    ] {
        server
            .client_packet(&auth, arrival, &request, &mut out)
            .unwrap();
    }
    let relay = out
        .iter()
        .find_map(|o| match o {
            Output::OpenRelay { relay, .. } => Some(*relay),
            _ => None,
        })
        .unwrap();
    let payload = vec![0xA5u8; 172];
    let mut frame = vec![0x40, 0x01, 0x00, 172];
    frame.extend_from_slice(&payload);
    let send = {
        let mut w = Writer::new(Class::Indication, SEND, [8; 12]);
        w.xor_address(attr::XOR_PEER_ADDRESS, permitted)
            .attr(attr::DATA, &payload);
        w.finish()
    };
    Established {
        server,
        tuple,
        relay,
        bound,
        permitted,
        start,
        payload,
        frame,
        send,
    }
}
