//! Authenticated TURN sessions from fuzz input: four clients (two behind one IPv4 address,
//! two in one IPv6 /64; UDP and TCP; outside and inside) and two users (one with two
//! credentials) send correctly signed Allocates (EVEN-PORT, reservation tokens they
//! learnt, lifetimes, address families, DONT-FRAGMENT), Refreshes, permissions, channel
//! binds, Send indications and ChannelData, peers send to relays they learnt, clients
//! leave, time passes. The input only chooses: every request authenticates, so the fuzzer
//! reaches the state the `turn_server` target (raw bytes, no credentials) cannot.
//!
//! After every step: the server's tables agree and hold their bounds
//! ([`Server::check_invariants`]: quotas per user, source and in total, ports, caps,
//! reservations owned by live allocations); every answer is well-formed; nothing goes to a
//! peer the policy refuses for the allocation's zone; something held means a deadline is
//! set. At the end, time runs past every lifetime and nothing may be left.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::core::credentials;
use crate::core::keyring::Ring;
use crate::core::turn::auth::{long_term_key, AuthContext};
use crate::core::turn::encode::Writer;
use crate::core::turn::nonce::Nonces;
use crate::core::turn::policy::{Origin, PeerPolicy};
use crate::core::turn::server::{
    decode_xor_address, Arrival, FiveTuple, Output, PoolAsk, PoolVerdict, Server, Transport,
    TurnConfig, ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND,
};
use crate::core::turn::stun::{self, attr, Class};

const REALM: &str = "sipedge.test";
const T0: u64 = 1_800_000_000;

struct Client {
    tuple: FiveTuple,
    origin: Origin,
}

struct Credential {
    username: String,
    key: [u8; 16],
}

/// One run's world.
struct World {
    server: Server,
    /// The policy the server was given: the oracle for what may be relayed to.
    policy: PeerPolicy,
    ring: Ring,
    nonces: Nonces,
    clients: Vec<Client>,
    credentials: Vec<Credential>,
    peers: Vec<SocketAddr>,
    /// Relays open now, and the client that holds each.
    relays: HashMap<SocketAddr, usize>,
    /// Channels handed to the kernel path and not taken back: their relays and deadlines.
    kernel: HashMap<(FiveTuple, u16), (SocketAddr, Instant)>,
    tokens: Vec<Vec<u8>>,
    /// Asks for the pool seen (the newest few), to answer.
    asks: Vec<PoolAsk>,
    start: Instant,
    elapsed: Duration,
    next_tx: u32,
    out: Vec<Output>,
}

/// Fuzz entry: the input is a sequence of choices.
pub fn run(data: &[u8]) {
    let mut w = World::new();
    let mut input = data;
    let mut steps = 0;
    while !input.is_empty() && steps < 400 {
        w.step(&mut input);
        w.check();
        steps += 1;
    }
    // Past every lifetime (and reservation), nothing is left: asks still waiting for the
    // pool are decided at their deadline, and what they grant expires in its turn.
    for _ in 0..2 {
        w.elapsed += Duration::from_secs(24 * 3600);
        let now = w.now();
        w.out.clear();
        w.server.expire(now, &mut w.out);
        w.observe(0);
        w.check();
    }
    assert_eq!(w.server.held(), 0, "something outlived every lifetime");
    assert_eq!(w.server.poll_timeout(), None, "a deadline for nothing");
}

fn take(input: &mut &[u8]) -> u8 {
    match input.split_first() {
        Some((&b, rest)) => {
            *input = rest;
            b
        }
        None => 0,
    }
}

fn pick<T: Copy>(input: &mut &[u8], items: &[T]) -> Option<T> {
    let i = usize::from(take(input)) % items.len().max(1);
    items.get(i).copied()
}

impl World {
    fn new() -> World {
        let mut cfg = TurnConfig::new(
            REALM,
            [192, 0, 2, 10].into(),
            [203, 0, 113, 10].into(),
            (50000, 50015),
        );
        // Small bounds, so a short input reaches every one of them.
        cfg.max_allocations = 8;
        cfg.max_allocations_per_user = 4;
        cfg.max_allocations_per_source = 3;
        cfg.max_permissions_per_allocation = 3;
        cfg.max_channels_per_allocation = 2;
        cfg.strangers.bytes_per_sec = 2000;
        cfg.kernel_offload = true;
        cfg.policy = PeerPolicy {
            own: vec![[192, 0, 2, 10].into(), [203, 0, 113, 10].into()],
            internal: vec![],
            allow_internal: vec![],
            deny: vec![],
            allow_loopback: false,
            // Relay to relay: the fuzzer reaches the exemption, and the oracle checks it.
            relayed: vec![[192, 0, 2, 10].into(), [203, 0, 113, 10].into()],
            relayed_ports: (50000, 50015),
        };
        let policy = cfg.policy.clone();
        #[allow(clippy::disallowed_methods)] // the world starts simulated time somewhere
        let start = Instant::now();
        let ring = Ring::init([4; 32], T0);
        let credential = |user: &str, ttl: u64| {
            let c = credentials::mint(&ring, user, ttl, T0).ok();
            c.map(|c| Credential {
                key: long_term_key(&c.username, REALM, &c.password),
                username: c.username,
            })
        };
        let credentials = [
            credential("alice@sipedge.test", 8 * 3600),
            credential("alice@sipedge.test", 7 * 3600),
            credential("bob@sipedge.test", 8 * 3600),
        ]
        .into_iter()
        .flatten()
        .collect();
        let client = |addr: &str, transport, origin| Client {
            tuple: FiveTuple {
                client: addr.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                server: SocketAddr::from(([192, 0, 2, 10], 3478)),
                transport,
            },
            origin,
        };
        World {
            server: Server::new(cfg, 3, start),
            policy,
            ring,
            nonces: Nonces::new(&[5; 32], REALM, 600),
            clients: vec![
                client("198.51.100.20:40000", Transport::Udp, Origin::External),
                client("198.51.100.20:40001", Transport::Tcp, Origin::External),
                client("[2001:db8:1:2::1]:40000", Transport::Udp, Origin::External),
                client("[2001:db8:1:2::2]:40000", Transport::Tcp, Origin::Internal),
            ],
            credentials,
            peers: [
                "198.51.100.9:5000",
                "198.51.100.10:5002",
                "10.0.0.5:5000",
                "127.0.0.1:5061",
                "192.0.2.10:3478",
                "[64:ff9b:1:a00:0:500::]:5000",
                "[::ffff:10.0.0.5]:5000",
                "198.51.100.11:0",
            ]
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
            relays: HashMap::new(),
            kernel: HashMap::new(),
            tokens: Vec::new(),
            asks: Vec::new(),
            start,
            elapsed: Duration::ZERO,
            next_tx: 0,
            out: Vec::new(),
        }
    }

    fn now(&self) -> Instant {
        self.start + self.elapsed
    }

    fn now_unix(&self) -> u64 {
        T0 + self.elapsed.as_secs()
    }

    fn step(&mut self, input: &mut &[u8]) {
        let op = take(input) % 13;
        let who = usize::from(take(input)) % self.clients.len();
        let cred = usize::from(take(input)) % (self.credentials.len() + 1);
        self.out.clear();
        match op {
            0 | 1 => {
                let flags = take(input);
                let lifetime = take(input);
                let token =
                    pick(input, &[0usize, 1, 2, 3]).and_then(|i| self.tokens.get(i).cloned());
                self.request(who, cred, ALLOCATE, &|w| {
                    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
                    if flags & 1 != 0 {
                        w.attr(attr::EVEN_PORT, &[flags & 0x80]);
                    }
                    if flags & 2 != 0 {
                        if let Some(t) = &token {
                            w.attr(attr::RESERVATION_TOKEN, t);
                        }
                    }
                    if flags & 4 != 0 {
                        w.attr(attr::DONT_FRAGMENT, &[]);
                    }
                    if flags & 8 != 0 {
                        w.attr(attr::LIFETIME, &(u32::from(lifetime) * 60).to_be_bytes());
                    }
                    if flags & 16 != 0 {
                        w.attr(
                            attr::REQUESTED_ADDRESS_FAMILY,
                            &[1 + (flags >> 6 & 1), 0, 0, 0],
                        );
                    }
                });
            }
            2 => {
                let lifetime = pick(input, &[0u32, 600, 3600]).unwrap_or(0);
                self.request(who, cred, REFRESH, &|w| {
                    w.attr(attr::LIFETIME, &lifetime.to_be_bytes());
                });
            }
            3 => {
                let peer = self.peer(input);
                self.request(who, cred, CREATE_PERMISSION, &|w| {
                    w.xor_address(attr::XOR_PEER_ADDRESS, peer);
                });
            }
            4 => {
                let peer = self.peer(input);
                let channel = 0x4000 + u16::from(take(input) % 4);
                self.request(who, cred, CHANNEL_BIND, &|w| {
                    w.attr(
                        attr::CHANNEL_NUMBER,
                        &[(channel >> 8) as u8, channel as u8, 0, 0],
                    )
                    .xor_address(attr::XOR_PEER_ADDRESS, peer);
                });
            }
            5 => {
                let peer = self.peer(input);
                let extra = take(input);
                let mut w = Writer::new(Class::Indication, SEND, self.tx());
                w.xor_address(attr::XOR_PEER_ADDRESS, peer)
                    .attr(attr::DATA, b"media");
                if extra & 1 != 0 {
                    w.attr(0x0031, &[0; 4]);
                }
                let packet = w.finish();
                self.client_packet(who, &packet);
            }
            6 => {
                let channel = 0x4000 + u16::from(take(input) % 4);
                let mut packet = channel.to_be_bytes().to_vec();
                packet.extend_from_slice(&[0, 4, 1, 2, 3, 4]);
                self.client_packet(who, &packet);
            }
            7 => {
                let relays: Vec<SocketAddr> = self.relays.keys().copied().collect();
                let relay = pick(input, &relays);
                let peer = self.peer(input);
                if let Some(relay) = relay {
                    let now = self.now();
                    if let Ok(Output::ToClient { bytes, tuple }) =
                        self.server.peer_packet(relay, peer, b"from the peer", now)
                    {
                        let stream = tuple.transport == Transport::Tcp;
                        assert!(
                            stun::check(&bytes).is_ok()
                                || crate::core::turn::channel::parse(&bytes, stream).is_ok(),
                            "malformed toward the client: {bytes:?}"
                        );
                    }
                }
            }
            8 => {
                self.elapsed += Duration::from_secs(u64::from(take(input)) * 2);
                self.expire();
            }
            9 => {
                let tuple = self.clients.get(who).map(|c| c.tuple);
                if let Some(tuple) = tuple {
                    self.server.client_closed(tuple, &mut self.out);
                }
            }
            10 => {
                let len = usize::from(take(input)).min(input.len());
                let (packet, rest) = input.split_at(len);
                *input = rest;
                let packet = packet.to_vec();
                self.client_packet(who, &packet);
            }
            11 => self.pool(input),
            _ => self.expire(),
        }
        self.observe(who);
    }

    /// The pool: it comes and goes, answers an ask (granted, refused or not at all), or
    /// reports what users hold on other members.
    fn pool(&mut self, input: &mut &[u8]) {
        let now = self.now();
        let choice = take(input);
        let elsewhere = usize::from(take(input) % 6);
        match choice % 4 {
            0 => self
                .server
                .set_pool_asks(choice & 0x80 == 0, now, &mut self.out),
            1 | 2 => {
                let i = usize::from(take(input)) % self.asks.len().max(1);
                if i < self.asks.len() {
                    let ask = self.asks.remove(i);
                    let verdict = match choice >> 2 & 3 {
                        0 => PoolVerdict::Granted { elsewhere },
                        1 => PoolVerdict::Refused { elsewhere },
                        _ => PoolVerdict::Unknown,
                    };
                    self.server.pool_answer(ask.id, verdict, now, &mut self.out);
                }
            }
            _ => {
                let users: Vec<Box<str>> = ["alice@sipedge.test", "bob@sipedge.test", "carol"]
                    .into_iter()
                    .map(Box::from)
                    .collect();
                let holds =
                    users
                        .into_iter()
                        .zip([elsewhere, usize::from(choice >> 4), usize::MAX]);
                self.server.set_pool_holds(holds);
            }
        }
    }

    fn expire(&mut self) {
        let now = self.now();
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.expire(now, &mut self.out);
        }
    }

    fn peer(&self, input: &mut &[u8]) -> SocketAddr {
        pick(input, &self.peers).unwrap_or(SocketAddr::from(([198, 51, 100, 9], 1)))
    }

    fn tx(&mut self) -> [u8; 12] {
        self.next_tx += 1;
        let mut id = [7u8; 12];
        for (d, s) in id.iter_mut().zip(self.next_tx.to_be_bytes()) {
            *d = s;
        }
        id
    }

    /// A request from client `who`, signed with credential `cred` (none at the end of the
    /// list: a stranger).
    fn request(&mut self, who: usize, cred: usize, method: u16, build: &dyn Fn(&mut Writer)) {
        let Some(client) = self.clients.get(who) else {
            return;
        };
        let nonce = self.nonces.issue(client.tuple.client.ip(), self.now_unix());
        let mut w = Writer::new(Class::Request, method, self.tx());
        build(&mut w);
        if let Some(c) = self.credentials.get(cred) {
            w.attr(attr::USERNAME, c.username.as_bytes())
                .attr(attr::REALM, REALM.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes())
                .integrity(&c.key);
        }
        let packet = w.finish_with_fingerprint();
        self.client_packet(who, &packet);
    }

    fn client_packet(&mut self, who: usize, packet: &[u8]) {
        let Some(client) = self.clients.get(who) else {
            return;
        };
        let arrival = Arrival {
            tuple: client.tuple,
            origin: client.origin,
            now: self.now(),
            now_unix: self.now_unix(),
        };
        let auth = AuthContext {
            ring: &self.ring,
            nonces: &self.nonces,
            realm: REALM,
            max_lifetime_secs: 8 * 3600,
        };
        let _ = self
            .server
            .client_packet(&auth, arrival, packet, &mut self.out);
    }

    /// Learns relays and reservation tokens from the outputs; checks what goes out.
    fn observe(&mut self, who: usize) {
        // Whose each opened relay is: the Allocate answer that names it (an allocation the
        // pool granted is answered in the step that brings the pool's verdict, whoever
        // acts in it).
        let mut owners: HashMap<u16, usize> = HashMap::new();
        for o in &self.out {
            if let Output::ToClient { tuple, bytes } = o {
                let relayed = stun::check(bytes).ok().and_then(|c| {
                    let a = c.get(attr::XOR_RELAYED_ADDRESS)?;
                    let v = bytes.get(a.start..a.start + a.len)?;
                    decode_xor_address(v, &c.transaction_id)
                });
                let client = self.clients.iter().position(|c| c.tuple == *tuple);
                if let (Some(relayed), Some(client)) = (relayed, client) {
                    owners.insert(relayed.port(), client);
                }
            }
        }
        for o in &self.out {
            match o {
                Output::OpenRelay { relay, .. } => {
                    let owner = owners.get(&relay.port()).copied().unwrap_or(who);
                    assert!(self.relays.insert(*relay, owner).is_none(), "a relay twice");
                }
                Output::CloseRelay { relay } => {
                    self.relays.remove(relay);
                    // The kernel never relays for a socket that is gone: what it was handed
                    // is taken back first, or has passed its deadline.
                    let now = self.start + self.elapsed;
                    assert!(
                        !self
                            .kernel
                            .values()
                            .any(|(r, until)| r == relay && *until > now),
                        "a relay closed with its channels still live in the kernel"
                    );
                    self.kernel.retain(|_, (r, _)| r != relay);
                }
                Output::KernelChannel(k) => {
                    // Only what the core itself would relay: a relay its own client holds,
                    // to a peer the policy allows, until a deadline still ahead.
                    let holder = self.relays.get(&k.relay).and_then(|i| self.clients.get(*i));
                    let Some(holder) = holder else {
                        panic!("a channel handed over on a relay nobody holds");
                    };
                    assert_eq!(
                        holder.tuple, k.tuple,
                        "a channel handed over to another client"
                    );
                    assert!(
                        self.policy.check_addr(k.peer, holder.origin).is_ok() && k.peer.port() != 0,
                        "handed over to {}, which the policy refuses",
                        k.peer
                    );
                    assert!(
                        k.until > self.start + self.elapsed,
                        "handed over already expired"
                    );
                    self.kernel.insert((k.tuple, k.channel), (k.relay, k.until));
                }
                Output::KernelChannelGone { tuple, channel } => {
                    self.kernel.remove(&(*tuple, *channel));
                }
                Output::CloseClient { tuple } => {
                    // Only a TCP client's, and only once it holds nothing here.
                    assert_eq!(tuple.transport, Transport::Tcp, "a UDP client closed");
                    assert!(
                        !self.server.has_allocation(tuple),
                        "a client closed that still holds an allocation"
                    );
                }
                Output::AskPool(ask) => {
                    // Asked only within what this member knows of the quota.
                    assert!(ask.more >= 1 && ask.here >= ask.more && ask.here <= ask.quota);
                    self.asks.push(ask.clone());
                    if self.asks.len() > 8 {
                        self.asks.remove(0);
                    }
                }
                Output::ToClient { bytes, .. } => {
                    let Ok(c) = stun::check(bytes) else {
                        panic!("a malformed answer");
                    };
                    if let Some(t) = c.get(attr::RESERVATION_TOKEN) {
                        if let Some(v) = bytes.get(t.start..t.start + t.len) {
                            self.tokens.insert(0, v.to_vec());
                            self.tokens.truncate(4);
                        }
                    }
                }
                Output::ToPeer { relay, peer, .. } => {
                    let holder = self.relays.get(relay).and_then(|i| self.clients.get(*i));
                    let Some(holder) = holder else {
                        panic!("sent from a relay nobody holds");
                    };
                    assert!(
                        self.policy.check_addr(*peer, holder.origin).is_ok() && peer.port() != 0,
                        "relayed to {peer}, which the policy refuses"
                    );
                }
            }
        }
    }

    fn check(&self) {
        if let Err(e) = self.server.check_invariants() {
            panic!("{e}");
        }
        assert_eq!(self.relays.len(), self.server.allocations());
        if self.server.held() > 0 {
            assert!(
                self.server.poll_timeout().is_some(),
                "held without a deadline"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    /// Random choices (xorshift), many sessions: the same checks as the fuzz target.
    #[test]
    fn random_sessions_keep_every_table_consistent_and_bounded() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..300 {
            let data: Vec<u8> = (0..1200)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect();
            super::run(&data);
        }
    }
}
