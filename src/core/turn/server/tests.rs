//! The TURN server's unit tests: a [`World`] of one client, its credentials and the
//! server, checked for its invariants after every step; the tests by theme below.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::core::credentials;
use crate::core::keyring::Ring;
use crate::core::turn::auth::long_term_key;
use crate::core::turn::bandwidth::Budget;
use crate::core::turn::nonce::Nonces;

mod bounds;
mod kernel;
mod pool;
mod relay;
mod requests;

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

/// REQUESTED-TRANSPORT UDP: what every Allocate here asks for.
fn udp() -> (u16, Vec<u8>) {
    (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])
}

/// The relayed address an answer opened.
fn opened_relay(out: &[Output]) -> SocketAddr {
    out.iter()
        .find_map(|o| match o {
            Output::OpenRelay { relay, .. } => Some(*relay),
            _ => None,
        })
        .unwrap()
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

    /// A server for IPv6 only (2001:db8::10), the client at `client`.
    fn ipv6(client: &str) -> World {
        let cfg = TurnConfig::new(
            REALM,
            "2001:db8::10".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
            (50000, 50009),
        );
        let mut w = World::new();
        w.server = Server::new(cfg, 0, w.start);
        w.tuple = FiveTuple {
            client: addr(client),
            server: addr("[2001:db8::10]:3478"),
            transport: Transport::Udp,
        };
        w
    }

    /// From now on, the requests carry a credential of `user` valid for `ttl` seconds.
    fn sign_in(&mut self, user: &str, ttl: u64) {
        let c = credentials::mint(&self.ring, user, ttl, T0).unwrap();
        self.user = c.username;
        self.pass = c.password;
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

    /// An Allocate for a UDP relay, with credentials and `extra` attributes.
    fn allocate_request(&self, id: u8, extra: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let attrs: Vec<_> = std::iter::once(udp())
            .chain(extra.iter().cloned())
            .collect();
        self.request(ALLOCATE, id, &attrs, false)
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

    /// Sends `packet` at `after`: the answer's error code, or 0 for success.
    fn answer_code(&mut self, packet: &[u8], after: Duration) -> u16 {
        World::code(&self.send(packet, after).0)
    }

    /// Runs the server's expiry `after` the start: what it sends.
    fn expire(&mut self, after: Duration) -> Vec<Output> {
        let mut out = Vec::new();
        self.server.expire(self.start + after, &mut out);
        out
    }

    /// An Allocate (UDP) from the client's address on another `port`: the answer's code.
    fn allocate_from_port(&mut self, port: u16, id: u8) -> u16 {
        self.tuple.client = SocketAddr::new(self.tuple.client.ip(), port);
        let req = self.allocate_request(id, &[]);
        self.answer_code(&req, Duration::ZERO)
    }

    /// A successful Allocate of id `id`: its relayed address.
    fn allocate_as(&mut self, id: u8) -> SocketAddr {
        let req = self.allocate_request(id, &[]);
        let (out, _) = self.send(&req, Duration::ZERO);
        assert_eq!(World::code(&out), 0, "{out:?}");
        opened_relay(&out)
    }

    fn allocate(&mut self) -> SocketAddr {
        self.allocate_as(1)
    }

    /// Sends `packet` from the client a second in: it goes to `peer` from `relay` as `payload`.
    fn relays_to_peer(
        &mut self,
        packet: &[u8],
        relay: SocketAddr,
        peer: SocketAddr,
        payload: &[u8],
    ) {
        let (out, r) = self.send(packet, Duration::from_secs(1));
        assert_eq!(r, Ok(()));
        assert_eq!(
            out,
            vec![Output::ToPeer {
                relay,
                peer,
                bytes: payload.to_vec()
            }]
        );
    }

    /// `peer` sends `payload` to `relay` at `after`: what the client gets.
    fn peer_sends(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        payload: &[u8],
        after: Duration,
    ) -> Vec<u8> {
        let Ok(Output::ToClient { bytes, .. }) =
            self.server
                .peer_packet(relay, peer, payload, self.start + after)
        else {
            panic!("nothing for the client from {peer}")
        };
        bytes
    }

    fn peer_attr(peer: SocketAddr, id: u8) -> (u16, Vec<u8>) {
        let mut w = Writer::new(Class::Request, 1, [id; 12]);
        w.xor_address(attr::XOR_PEER_ADDRESS, peer);
        let m = w.finish();
        (attr::XOR_PEER_ADDRESS, m[24..].to_vec())
    }

    /// A CreatePermission for `peer`, with credentials.
    fn permission_request(&self, peer: SocketAddr, id: u8) -> Vec<u8> {
        self.request(CREATE_PERMISSION, id, &[World::peer_attr(peer, id)], false)
    }

    /// A ChannelBind of channel `number` to `peer`, with credentials.
    fn bind_request(&self, number: u16, peer: SocketAddr, id: u8) -> Vec<u8> {
        let channel = [number.to_be_bytes().as_slice(), &[0, 0]].concat();
        self.request(
            CHANNEL_BIND,
            id,
            &[(attr::CHANNEL_NUMBER, channel), World::peer_attr(peer, id)],
            false,
        )
    }
}

/// A Send indication of `data` to `peer`.
fn send_indication(peer: SocketAddr, id: u8, data: &[u8]) -> Vec<u8> {
    let mut m = Writer::new(Class::Indication, SEND, [id; 12]);
    m.xor_address(attr::XOR_PEER_ADDRESS, peer)
        .attr(attr::DATA, data);
    m.finish()
}
