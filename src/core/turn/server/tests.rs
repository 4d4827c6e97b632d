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
