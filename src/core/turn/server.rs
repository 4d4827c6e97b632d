//! The TURN server (RFC 8656) as a sans-IO state machine: client packets, peer packets and
//! time in; packets to send and relay sockets to open or close out. Allocations are keyed by
//! the client's 5-tuple; each holds its relayed address, lifetime, permissions (per peer
//! IP) and channels. Requests are answered with the error codes RFC 8656 names for each
//! case; unauthenticated requests create no state (stateless nonces).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::auth::{authenticate, AuthContext, AuthError};
use super::bandwidth::{Budget, Direction, Meters};
use super::channel::{self, CHANNEL_MAX, CHANNEL_MIN};
use super::demux::{classify, PacketKind};
use super::encode::{binding_response, Writer, BINDING, SOFTWARE};
use super::policy::{Origin, PeerPolicy};
use super::stun::{self, attr, Checked, Class};

pub const ALLOCATE: u16 = 0x003;
pub const REFRESH: u16 = 0x004;
pub const SEND: u16 = 0x006;
pub const DATA: u16 = 0x007;
pub const CREATE_PERMISSION: u16 = 0x008;
pub const CHANNEL_BIND: u16 = 0x009;
const UDP: u8 = 17;
const SOFTWARE_ATTR: u16 = 0x8022;

/// The client's transport to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A client's 5-tuple (RFC 8656 §2): it names its allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// Server settings (from the topology).
#[derive(Clone, Debug)]
pub struct TurnConfig {
    pub realm: String,
    /// Where relayed sockets are bound (the external interface).
    pub relay_ip: IpAddr,
    /// What XOR-RELAYED-ADDRESS advertises (the public address when behind NAT).
    pub advertised_ip: IpAddr,
    /// Relayed ports, inclusive.
    pub ports: (u16, u16),
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    pub max_allocations_per_user: usize,
    /// Allocations per client address (IPv4 address or IPv6 address): a flood of users
    /// from one source cannot take every relayed port.
    pub max_allocations_per_source: usize,
    /// Allocations in all (508 beyond; the port range bounds it too).
    pub max_allocations: usize,
    /// Relayed bandwidth per allocation and per user, each direction apart (`None`:
    /// unlimited); excess packets are dropped and counted.
    pub bandwidth_per_allocation: Option<Budget>,
    pub bandwidth_per_user: Option<Budget>,
    pub policy: PeerPolicy,
    pub max_credential_lifetime_secs: u64,
}

impl TurnConfig {
    /// RFC 8656 defaults on the given addresses.
    pub fn new(
        realm: &str,
        relay_ip: IpAddr,
        advertised_ip: IpAddr,
        ports: (u16, u16),
    ) -> TurnConfig {
        TurnConfig {
            realm: realm.to_string(),
            relay_ip,
            advertised_ip,
            ports,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            max_allocations_per_user: 10,
            max_allocations_per_source: 50,
            max_allocations: 10_000,
            // The Lync Edge's defaults: 3000 kbit/s per port, 10 000 kbit/s per user.
            bandwidth_per_allocation: Budget::kbit(3000),
            bandwidth_per_user: Budget::kbit(10_000),
            policy: PeerPolicy::default(),
            max_credential_lifetime_secs: 8 * 3600,
        }
    }
}

/// Where and when a client packet arrived: its 5-tuple, the zone of the listener, and the
/// time (monotonic for lifetimes, Unix for credentials and nonces).
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub tuple: FiveTuple,
    pub origin: Origin,
    pub now: Instant,
    pub now_unix: u64,
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send to the client on its 5-tuple.
    ToClient { tuple: FiveTuple, bytes: Vec<u8> },
    /// Send from the relayed socket to a peer.
    ToPeer {
        relay: SocketAddr,
        peer: SocketAddr,
        bytes: Vec<u8>,
    },
    /// Bind a relayed UDP socket here (if that fails, call [`Server::relay_failed`]).
    OpenRelay { relay: SocketAddr },
    /// Close a relayed socket.
    CloseRelay { relay: SocketAddr },
}

/// Where a relayed packet goes (the hot path's answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub relay: SocketAddr,
    pub peer: SocketAddr,
    /// The bytes of the client's packet to send: the ChannelData payload.
    pub data: std::ops::Range<usize>,
}

impl Route {
    /// The general path's form of a route: the bytes copied into an output.
    fn output(self, packet: &[u8]) -> Output {
        Output::ToPeer {
            relay: self.relay,
            peer: self.peer,
            bytes: packet.get(self.data).unwrap_or_default().to_vec(),
        }
    }
}

/// What goes to the client in front of (or instead of) a peer's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToClient {
    /// This ChannelData header, then the data (padded to 4 on a stream).
    Channel([u8; channel::HEADER_LEN]),
    /// The Data indication written into the caller's scratch buffer.
    Indication,
}

/// Why a packet was dropped without an answer (counted by the shell).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    NotStunOrChannelData,
    MalformedStun,
    MalformedChannelData,
    NoAllocation,
    NoPermission,
    UnboundChannel,
    UnauthenticatedIndication,
    /// Over the allocation's or the user's bandwidth budget.
    OverBandwidth,
    Ignored,
}

impl Dropped {
    /// Every reason, in the order of [`Dropped::index`].
    pub const ALL: [Dropped; 9] = [
        Dropped::NotStunOrChannelData,
        Dropped::MalformedStun,
        Dropped::MalformedChannelData,
        Dropped::NoAllocation,
        Dropped::NoPermission,
        Dropped::UnboundChannel,
        Dropped::UnauthenticatedIndication,
        Dropped::OverBandwidth,
        Dropped::Ignored,
    ];

    /// A metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Dropped::NotStunOrChannelData => "not_turn",
            Dropped::MalformedStun => "malformed_stun",
            Dropped::MalformedChannelData => "malformed_channel_data",
            Dropped::NoAllocation => "no_allocation",
            Dropped::NoPermission => "no_permission",
            Dropped::UnboundChannel => "unbound_channel",
            Dropped::UnauthenticatedIndication => "unauthenticated_indication",
            Dropped::OverBandwidth => "bandwidth",
            Dropped::Ignored => "ignored",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

struct Allocation {
    origin: Origin,
    username: String,
    key: [u8; 16],
    relay: SocketAddr,
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    /// The Allocate's transaction id and answer, for retransmissions over UDP.
    allocate_tx: ([u8; 12], Vec<u8>),
    /// Bandwidth used by this allocation, and by all of its user's.
    meters: Meters,
    user_meters: Arc<Meters>,
}

/// What one user (credential) holds: its allocations and their shared bandwidth meters.
struct UserShare {
    allocations: usize,
    meters: Arc<Meters>,
}

/// The server.
pub struct Server {
    cfg: TurnConfig,
    allocations: HashMap<FiveTuple, Allocation>,
    by_relay: HashMap<SocketAddr, FiveTuple>,
    per_user: HashMap<String, UserShare>,
    per_source: HashMap<IpAddr, usize>,
    next_port: u16,
    /// Transaction ids of Data indications (each needs a fresh one) and token counter.
    data_seq: AtomicU64,
    /// Ports reserved by EVEN-PORT with the R bit: token -> (port, expiry).
    reservations: HashMap<[u8; 8], (u16, Instant)>,
    token_hasher: std::collections::hash_map::RandomState,
}

/// How long a reserved port waits for its RESERVATION-TOKEN (RFC 8656 §7.2: about 30 s).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

impl Server {
    /// `seed` spreads the first relayed port over the range (from the shell's randomness).
    pub fn new(cfg: TurnConfig, seed: u16) -> Server {
        let span = cfg
            .ports
            .1
            .saturating_sub(cfg.ports.0)
            .saturating_add(1)
            .max(1);
        let next_port = cfg.ports.0.saturating_add(seed % span);
        Server {
            cfg,
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            per_user: HashMap::new(),
            per_source: HashMap::new(),
            next_port,
            data_seq: AtomicU64::new(u64::from(seed) << 32),
            reservations: HashMap::new(),
            token_hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    pub fn allocations(&self) -> usize {
        self.allocations.len()
    }

    /// A packet from a client.
    pub fn client_packet(
        &mut self,
        auth: &AuthContext<'_>,
        arrival: Arrival,
        packet: &[u8],
        out: &mut Vec<Output>,
    ) -> Result<(), Dropped> {
        let Arrival {
            tuple,
            origin,
            now,
            now_unix,
        } = arrival;
        match classify(packet) {
            PacketKind::ChannelData => self.client_channel_data(tuple, packet, now, out),
            PacketKind::Stun => {
                let checked = stun::check(packet).map_err(|_| Dropped::MalformedStun)?;
                match checked.class {
                    Class::Request => {
                        self.request(auth, tuple, origin, packet, &checked, now, now_unix, out);
                        Ok(())
                    }
                    Class::Indication if checked.method == SEND => {
                        self.send_indication(tuple, packet, &checked, now, out)
                    }
                    Class::Indication => Err(Dropped::UnauthenticatedIndication),
                    Class::Success | Class::Error => Err(Dropped::Ignored),
                }
            }
            _ => Err(Dropped::NotStunOrChannelData),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &mut self,
        auth: &AuthContext<'_>,
        tuple: FiveTuple,
        origin: Origin,
        packet: &[u8],
        c: &Checked,
        now: Instant,
        now_unix: u64,
        out: &mut Vec<Output>,
    ) {
        let reply =
            |bytes: Vec<u8>, out: &mut Vec<Output>| out.push(Output::ToClient { tuple, bytes });
        if c.method == BINDING {
            if let Some(bytes) = binding_response(c, tuple.client) {
                reply(bytes, out);
            }
            return;
        }
        if !matches!(
            c.method,
            ALLOCATE | REFRESH | CREATE_PERMISSION | CHANNEL_BIND
        ) {
            reply(error(c, 400, "Unknown Method", None), out);
            return;
        }
        if !c.unknown_required().is_empty() {
            let mut w = Writer::new(Class::Error, c.method, c.transaction_id);
            let unknown: Vec<u8> = c
                .unknown_required()
                .iter()
                .flat_map(|k| k.to_be_bytes())
                .collect();
            w.error_code(420, "Unknown Attribute")
                .attr(attr::UNKNOWN_ATTRIBUTES, &unknown);
            reply(w.finish_with_fingerprint(), out);
            return;
        }
        // A retransmitted Allocate over UDP gets the same answer (RFC 8656 §7.2).
        if c.method == ALLOCATE {
            if let Some(a) = self.allocations.get(&tuple) {
                if a.allocate_tx.0 == c.transaction_id {
                    reply(a.allocate_tx.1.clone(), out);
                    return;
                }
            }
        }
        let who = match authenticate(auth, packet, c, tuple.client.ip(), now_unix) {
            Ok(who) => who,
            Err(e) => {
                let nonce = auth.nonces.issue(tuple.client.ip(), now_unix);
                let mut w = Writer::new(Class::Error, c.method, c.transaction_id);
                let reason = match e {
                    AuthError::Unauthorized => "Unauthorized",
                    AuthError::StaleNonce => "Stale Nonce",
                    AuthError::BadRequest => "Bad Request",
                };
                w.error_code(e.code(), reason)
                    .attr(attr::REALM, auth.realm.as_bytes())
                    .attr(attr::NONCE, nonce.as_bytes())
                    .attr(SOFTWARE_ATTR, SOFTWARE.as_bytes());
                reply(w.finish_with_fingerprint(), out);
                return;
            }
        };
        let key = who.key;
        let result = match c.method {
            ALLOCATE => self.allocate(tuple, origin, packet, c, who.username, key, now, out),
            REFRESH => self.refresh(tuple, packet, c, &who.username, now, out),
            CREATE_PERMISSION => self.create_permission(tuple, packet, c, &who.username, now),
            _ => self.channel_bind(tuple, packet, c, &who.username, now),
        };
        match result {
            Ok(bytes) => reply(bytes, out),
            Err((code, reason)) => reply(error(c, code, reason, Some(&key)), out),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &mut self,
        tuple: FiveTuple,
        origin: Origin,
        packet: &[u8],
        c: &Checked,
        username: String,
        key: [u8; 16],
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<Vec<u8>, (u16, &'static str)> {
        if self.allocations.contains_key(&tuple) {
            return Err((437, "Allocation Mismatch"));
        }
        let transport = value(packet, c, attr::REQUESTED_TRANSPORT)
            .ok_or((400, "Missing REQUESTED-TRANSPORT"))?;
        if transport.first() != Some(&UDP) {
            return Err((442, "Unsupported Transport Protocol"));
        }
        // RFC 8656 §7.2: a token claims a port reserved by an earlier EVEN-PORT with the R
        // bit (the RTCP port next to an RTP relay); the two attributes exclude each other.
        let reserved = match value(packet, c, attr::RESERVATION_TOKEN) {
            Some(_) if c.get(attr::EVEN_PORT).is_some() => {
                return Err((400, "EVEN-PORT With RESERVATION-TOKEN"))
            }
            Some(token) => {
                let token: [u8; 8] = token
                    .try_into()
                    .map_err(|_| (400, "Bad RESERVATION-TOKEN"))?;
                match self.reservations.remove(&token) {
                    Some((port, expires)) if expires > now => Some(port),
                    _ => return Err((508, "Insufficient Capacity")),
                }
            }
            None => None,
        };
        // RFC 8656 §7.2: REQUESTED- and ADDITIONAL-ADDRESS-FAMILY exclude each other; an
        // additional IPv6 relay is not offered (single-family relays): the IPv4 allocation
        // succeeds with ADDRESS-ERROR-CODE 440 for the family not granted.
        let additional = value(packet, c, attr::ADDITIONAL_ADDRESS_FAMILY);
        if additional.is_some() && c.get(attr::REQUESTED_ADDRESS_FAMILY).is_some() {
            return Err((400, "Both Address Family Attributes"));
        }
        let additional_refused = match additional.and_then(|v| v.first().copied()) {
            None => None,
            Some(0x02) => Some(0x02u8),
            Some(_) => return Err((400, "Bad ADDITIONAL-ADDRESS-FAMILY")),
        };
        if let Some(family) = value(packet, c, attr::REQUESTED_ADDRESS_FAMILY) {
            let wanted_v6 = match family.first() {
                Some(0x01) => false,
                Some(0x02) => true,
                _ => return Err((400, "Bad REQUESTED-ADDRESS-FAMILY")),
            };
            if wanted_v6 != self.cfg.relay_ip.is_ipv6() {
                return Err((440, "Address Family not Supported"));
            }
        }
        let from_source = self.per_source.get(&tuple.client.ip()).copied();
        if from_source.unwrap_or(0) >= self.cfg.max_allocations_per_source {
            return Err((486, "Allocation Quota Reached"));
        }
        let of_user = self.per_user.get(&username).map(|u| u.allocations);
        if of_user.unwrap_or(0) >= self.cfg.max_allocations_per_user {
            return Err((486, "Allocation Quota Reached"));
        }
        if self.allocations.len() >= self.cfg.max_allocations {
            return Err((508, "Insufficient Capacity"));
        }
        let even_port = value(packet, c, attr::EVEN_PORT);
        let reserve_next = even_port
            .and_then(|v| v.first())
            .is_some_and(|b| b & 0x80 != 0);
        let port = match reserved {
            Some(port) => port,
            None => self
                .free_port(even_port.is_some(), reserve_next, now)
                .ok_or((508, "Insufficient Capacity"))?,
        };
        let token = if reserve_next {
            let token = self.new_token();
            self.reservations
                .insert(token, (port + 1, now + RESERVATION_LIFETIME));
            Some(token)
        } else {
            None
        };
        let relay = SocketAddr::new(self.cfg.relay_ip, port);
        let lifetime = self.lifetime(packet, c);
        let mut w = Writer::new(Class::Success, ALLOCATE, c.transaction_id);
        w.xor_address(
            attr::XOR_RELAYED_ADDRESS,
            SocketAddr::new(self.cfg.advertised_ip, port),
        )
        .attr(attr::LIFETIME, &secs32(lifetime))
        .xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client);
        if let Some(token) = token {
            w.attr(attr::RESERVATION_TOKEN, &token);
        }
        if let Some(family) = additional_refused {
            // family, reserved, class 4, number 40, reason (RFC 8656 §18.12).
            let mut v = vec![family, 0, 4, 40];
            v.extend_from_slice(b"Address Family not Supported");
            w.attr(attr::ADDRESS_ERROR_CODE, &v);
        }
        w.attr(SOFTWARE_ATTR, SOFTWARE.as_bytes())
            .sign(&key, sha256(c));
        let answer = w.finish_with_fingerprint();
        let share = self
            .per_user
            .entry(username.clone())
            .or_insert_with(|| UserShare {
                allocations: 0,
                meters: Arc::new(Meters::new(now)),
            });
        share.allocations += 1;
        let user_meters = share.meters.clone();
        *self.per_source.entry(tuple.client.ip()).or_insert(0) += 1;
        self.by_relay.insert(relay, tuple);
        self.allocations.insert(
            tuple,
            Allocation {
                origin,
                username,
                key,
                relay,
                expires: now + lifetime,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                allocate_tx: (c.transaction_id, answer.clone()),
                meters: Meters::new(now),
                user_meters,
            },
        );
        out.push(Output::OpenRelay { relay });
        Ok(answer)
    }

    /// The lifetime asked for, clamped (RFC 8656 §7.2: at least the default, at most the max).
    fn lifetime(&self, packet: &[u8], c: &Checked) -> Duration {
        let asked = value(packet, c, attr::LIFETIME)
            .and_then(|v| v.first_chunk::<4>())
            .map(|b| Duration::from_secs(u64::from(u32::from_be_bytes(*b))));
        asked
            .unwrap_or(self.cfg.default_lifetime)
            .clamp(self.cfg.default_lifetime, self.cfg.max_lifetime)
    }

    fn owned(
        &mut self,
        tuple: FiveTuple,
        username: &str,
    ) -> Result<&mut Allocation, (u16, &'static str)> {
        match self.allocations.get_mut(&tuple) {
            Some(a) if a.username == username => Ok(a),
            // RFC 8656 §7: a request for an allocation made with other credentials.
            Some(_) => Err((441, "Wrong Credentials")),
            None => Err((437, "Allocation Mismatch")),
        }
    }

    fn refresh(
        &mut self,
        tuple: FiveTuple,
        packet: &[u8],
        c: &Checked,
        username: &str,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<Vec<u8>, (u16, &'static str)> {
        let asked = value(packet, c, attr::LIFETIME)
            .and_then(|v| v.first_chunk::<4>())
            .map(|b| u32::from_be_bytes(*b));
        let lifetime = if asked == Some(0) {
            Duration::ZERO
        } else {
            self.lifetime(packet, c)
        };
        let a = self.owned(tuple, username)?;
        let key = a.key;
        if lifetime.is_zero() {
            self.remove(tuple, out);
        } else {
            a.expires = now + lifetime;
        }
        let mut w = Writer::new(Class::Success, REFRESH, c.transaction_id);
        w.attr(attr::LIFETIME, &secs32(lifetime))
            .attr(SOFTWARE_ATTR, SOFTWARE.as_bytes())
            .sign(&key, sha256(c));
        Ok(w.finish_with_fingerprint())
    }

    /// Every XOR-PEER-ADDRESS of a request (CreatePermission may carry several).
    fn peers(&self, packet: &[u8], c: &Checked) -> Result<Vec<SocketAddr>, (u16, &'static str)> {
        let mut peers = Vec::new();
        for a in c
            .attributes()
            .iter()
            .filter(|a| a.kind == attr::XOR_PEER_ADDRESS)
        {
            let v = packet
                .get(a.start..a.start + a.len)
                .ok_or((400, "Bad XOR-PEER-ADDRESS"))?;
            peers.push(
                decode_xor_address(v, &c.transaction_id).ok_or((400, "Bad XOR-PEER-ADDRESS"))?,
            );
        }
        if peers.is_empty() {
            return Err((400, "Missing XOR-PEER-ADDRESS"));
        }
        Ok(peers)
    }

    fn check_peer(
        &self,
        a_relay: SocketAddr,
        origin: Origin,
        peer: SocketAddr,
    ) -> Result<(), (u16, &'static str)> {
        if peer.is_ipv6() != a_relay.is_ipv6() {
            return Err((443, "Peer Address Family Mismatch"));
        }
        self.cfg
            .policy
            .check(peer.ip(), origin)
            .map_err(|_| (403, "Forbidden"))
    }

    fn create_permission(
        &mut self,
        tuple: FiveTuple,
        packet: &[u8],
        c: &Checked,
        username: &str,
        now: Instant,
    ) -> Result<Vec<u8>, (u16, &'static str)> {
        let peers = self.peers(packet, c)?;
        let (relay, origin) = {
            let a = self.owned(tuple, username)?;
            (a.relay, a.origin)
        };
        for peer in &peers {
            self.check_peer(relay, origin, *peer)?;
        }
        let expires = now + self.cfg.permission_lifetime;
        let a = self.owned(tuple, username)?;
        for peer in peers {
            a.permissions.insert(peer.ip(), expires);
        }
        let mut w = Writer::new(Class::Success, CREATE_PERMISSION, c.transaction_id);
        w.attr(SOFTWARE_ATTR, SOFTWARE.as_bytes())
            .sign(&a.key, sha256(c));
        Ok(w.finish_with_fingerprint())
    }

    fn channel_bind(
        &mut self,
        tuple: FiveTuple,
        packet: &[u8],
        c: &Checked,
        username: &str,
        now: Instant,
    ) -> Result<Vec<u8>, (u16, &'static str)> {
        let number = value(packet, c, attr::CHANNEL_NUMBER)
            .and_then(|v| v.first_chunk::<2>())
            .map(|b| u16::from_be_bytes(*b))
            .filter(|n| (CHANNEL_MIN..=CHANNEL_MAX).contains(n))
            .ok_or((400, "Bad CHANNEL-NUMBER"))?;
        let peers = self.peers(packet, c)?;
        let [peer] = peers.as_slice() else {
            return Err((400, "One XOR-PEER-ADDRESS"));
        };
        let peer = *peer;
        let (relay, origin) = {
            let a = self.owned(tuple, username)?;
            (a.relay, a.origin)
        };
        self.check_peer(relay, origin, peer)?;
        let channel_lifetime = self.cfg.channel_lifetime;
        let permission_lifetime = self.cfg.permission_lifetime;
        let a = self.owned(tuple, username)?;
        // RFC 8656 §12.2: a channel is bound to one peer and a peer to one channel.
        if let Some((bound, _)) = a.channels.get(&number) {
            if *bound != peer {
                return Err((400, "Channel Bound To Another Peer"));
            }
        }
        if a.channels
            .iter()
            .any(|(n, (p, _))| *p == peer && *n != number)
        {
            return Err((400, "Peer Bound To Another Channel"));
        }
        a.channels.insert(number, (peer, now + channel_lifetime));
        a.permissions.insert(peer.ip(), now + permission_lifetime);
        let mut w = Writer::new(Class::Success, CHANNEL_BIND, c.transaction_id);
        w.attr(SOFTWARE_ATTR, SOFTWARE.as_bytes())
            .sign(&a.key, sha256(c));
        Ok(w.finish_with_fingerprint())
    }

    fn send_indication(
        &mut self,
        tuple: FiveTuple,
        packet: &[u8],
        c: &Checked,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), Dropped> {
        let route = self.send_to_peer(&tuple, packet, c, now)?;
        out.push(route.output(packet));
        Ok(())
    }

    /// The hot path for a Send indication (read-only, allocation-free; `c` is its strict
    /// check): where its DATA goes, and which bytes of `packet` they are.
    pub fn send_to_peer(
        &self,
        tuple: &FiveTuple,
        packet: &[u8],
        c: &Checked,
        now: Instant,
    ) -> Result<Route, Dropped> {
        if c.class != Class::Indication || c.method != SEND {
            return Err(Dropped::Ignored);
        }
        let a = self.allocations.get(tuple).ok_or(Dropped::NoAllocation)?;
        let mut peers = c
            .attributes()
            .iter()
            .filter(|a| a.kind == attr::XOR_PEER_ADDRESS);
        let (Some(peer), None) = (peers.next(), peers.next()) else {
            return Err(Dropped::MalformedStun);
        };
        let peer = packet
            .get(peer.start..peer.start + peer.len)
            .and_then(|v| decode_xor_address(v, &c.transaction_id))
            .ok_or(Dropped::MalformedStun)?;
        let data = c.get(attr::DATA).ok_or(Dropped::MalformedStun)?;
        if !permitted(a, peer.ip(), now) {
            return Err(Dropped::NoPermission);
        }
        self.charge(a, Direction::ToPeer, data.len, now)?;
        Ok(Route {
            relay: a.relay,
            peer,
            data: data.start..data.start + data.len,
        })
    }

    fn client_channel_data(
        &mut self,
        tuple: FiveTuple,
        packet: &[u8],
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), Dropped> {
        let route = self.channel_to_peer(&tuple, packet, now)?;
        out.push(route.output(packet));
        Ok(())
    }

    /// The hot path, client to peer (read-only, allocation-free): where a client's
    /// ChannelData goes, and which bytes of `packet` to send.
    pub fn channel_to_peer(
        &self,
        tuple: &FiveTuple,
        packet: &[u8],
        now: Instant,
    ) -> Result<Route, Dropped> {
        let m = channel::parse(packet, tuple.transport == Transport::Tcp)
            .map_err(|_| Dropped::MalformedChannelData)?;
        let a = self.allocations.get(tuple).ok_or(Dropped::NoAllocation)?;
        let (peer, expires) = a.channels.get(&m.channel).ok_or(Dropped::UnboundChannel)?;
        if *expires <= now {
            return Err(Dropped::UnboundChannel);
        }
        if !permitted(a, peer.ip(), now) {
            return Err(Dropped::NoPermission);
        }
        self.charge(a, Direction::ToPeer, m.data.len(), now)?;
        Ok(Route {
            relay: a.relay,
            peer: *peer,
            data: channel::HEADER_LEN..channel::HEADER_LEN + m.data.len(),
        })
    }

    /// The hot path, peer to client (read-only, allocation-free): what to send the client
    /// for `data` from `peer` arriving on `relay`. With a channel bound to the peer, the
    /// ChannelData header to put in front of the data (and, to a TCP client, padding to 4);
    /// otherwise a Data indication, written into `scratch` (its allocation reused).
    pub fn peer_to_client(
        &self,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        now: Instant,
        scratch: &mut Vec<u8>,
    ) -> Result<(FiveTuple, ToClient), Dropped> {
        let tuple = *self.by_relay.get(&relay).ok_or(Dropped::NoAllocation)?;
        let a = self.allocations.get(&tuple).ok_or(Dropped::NoAllocation)?;
        if !permitted(a, peer.ip(), now) {
            return Err(Dropped::NoPermission);
        }
        let len = u16::try_from(data.len()).map_err(|_| Dropped::Ignored)?;
        self.charge(a, Direction::ToClient, data.len(), now)?;
        let bound = a
            .channels
            .iter()
            .find(|(_, (p, e))| *p == peer && *e > now)
            .map(|(n, _)| *n);
        if let Some(number) = bound {
            let mut header = [0u8; channel::HEADER_LEN];
            channel::write_header(&mut header, number, len);
            return Ok((tuple, ToClient::Channel(header)));
        }
        // A Data indication: a fresh transaction id per indication (RFC 8656 §11.4).
        let seq = self.data_seq.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 12];
        for (d, s) in id.iter_mut().zip(
            seq.to_be_bytes()
                .iter()
                .chain(relay.port().to_be_bytes().iter()),
        ) {
            *d = *s;
        }
        let mut w = Writer::reuse(std::mem::take(scratch), Class::Indication, DATA, id);
        w.xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, data);
        *scratch = w.finish();
        Ok((tuple, ToClient::Indication))
    }

    /// A datagram from `peer` to the relayed address `relay`, as bytes for the client
    /// (ChannelData, padded on TCP, or a Data indication); dropped without a permission.
    /// The allocating form of [`Server::peer_to_client`].
    pub fn peer_packet(
        &self,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Result<Output, Dropped> {
        let mut scratch = Vec::new();
        let (tuple, framing) = self.peer_to_client(relay, peer, data, now, &mut scratch)?;
        let bytes = match framing {
            ToClient::Channel(header) => {
                let mut b = Vec::with_capacity(channel::HEADER_LEN + data.len() + 3);
                b.extend_from_slice(&header);
                b.extend_from_slice(data);
                if tuple.transport == Transport::Tcp {
                    b.resize(b.len() + channel::stream_padding(data.len()), 0);
                }
                b
            }
            ToClient::Indication => scratch,
        };
        Ok(Output::ToClient { tuple, bytes })
    }

    /// Charges a relayed packet to the allocation's budget, then to its user's. A packet the
    /// user's budget refuses has still used the allocation's: a conservative count, and
    /// one atomic operation each on the hot path.
    fn charge(
        &self,
        a: &Allocation,
        direction: Direction,
        bytes: usize,
        now: Instant,
    ) -> Result<(), Dropped> {
        let ok = a
            .meters
            .get(direction)
            .charge(self.cfg.bandwidth_per_allocation, bytes, now)
            && a.user_meters
                .get(direction)
                .charge(self.cfg.bandwidth_per_user, bytes, now);
        if ok {
            Ok(())
        } else {
            Err(Dropped::OverBandwidth)
        }
    }

    /// Removes expired allocations, permissions and channels.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Output>) {
        let expired: Vec<FiveTuple> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(t, _)| *t)
            .collect();
        for tuple in expired {
            self.remove(tuple, out);
        }
        for a in self.allocations.values_mut() {
            a.permissions.retain(|_, e| *e > now);
            a.channels.retain(|_, (_, e)| *e > now);
        }
    }

    /// The shell could not bind the relayed socket: the allocation is dropped. Returns the
    /// client whose answer must then not be sent (it retransmits and gets another port).
    pub fn relay_failed_client(&mut self, relay: SocketAddr) -> Option<SocketAddr> {
        let tuple = self.by_relay.get(&relay).copied()?;
        let mut ignore = Vec::new();
        self.remove(tuple, &mut ignore);
        Some(tuple.client)
    }

    /// The client's TCP connection closed: its allocation goes with it (RFC 8656 §3.1).
    pub fn client_closed(&mut self, tuple: FiveTuple, out: &mut Vec<Output>) {
        self.remove(tuple, out);
    }

    fn remove(&mut self, tuple: FiveTuple, out: &mut Vec<Output>) {
        if let Some(a) = self.allocations.remove(&tuple) {
            self.by_relay.remove(&a.relay);
            if let Some(share) = self.per_user.get_mut(&a.username) {
                share.allocations = share.allocations.saturating_sub(1);
                if share.allocations == 0 {
                    self.per_user.remove(&a.username);
                }
            }
            if let Some(n) = self.per_source.get_mut(&tuple.client.ip()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_source.remove(&tuple.client.ip());
                }
            }
            out.push(Output::CloseRelay { relay: a.relay });
        }
    }

    /// A free port (even if asked; with the next one free too when it is to be reserved).
    fn free_port(&mut self, even: bool, with_next: bool, now: Instant) -> Option<u16> {
        self.reservations.retain(|_, (_, expires)| *expires > now);
        let (lo, hi) = self.cfg.ports;
        let span = u32::from(hi.saturating_sub(lo)) + 1;
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = if self.next_port >= hi {
                lo
            } else {
                self.next_port + 1
            };
            if even && !port.is_multiple_of(2) {
                continue;
            }
            let taken = |p: u16| {
                self.by_relay
                    .contains_key(&SocketAddr::new(self.cfg.relay_ip, p))
                    || self.reservations.values().any(|(r, _)| *r == p)
            };
            if taken(port) || (with_next && (port >= hi || taken(port + 1))) {
                continue;
            }
            return Some(port);
        }
        None
    }

    /// An unguessable reservation token (a keyed hash of a counter).
    fn new_token(&mut self) -> [u8; 8] {
        use std::hash::BuildHasher;
        let seq = self.data_seq.fetch_add(1, Ordering::Relaxed);
        self.token_hasher.hash_one(seq).to_be_bytes()
    }
}

fn permitted(a: &Allocation, peer: IpAddr, now: Instant) -> bool {
    a.permissions
        .get(&peer)
        .is_some_and(|&expires| expires > now)
}

fn value<'p>(packet: &'p [u8], c: &Checked, kind: u16) -> Option<&'p [u8]> {
    let a = c.get(kind)?;
    packet.get(a.start..a.start + a.len)
}

fn secs32(d: Duration) -> [u8; 4] {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX).to_be_bytes()
}

/// Whether the request carried MESSAGE-INTEGRITY-SHA256: the answer then does too.
fn sha256(c: &Checked) -> bool {
    c.get(attr::MESSAGE_INTEGRITY_SHA256).is_some()
}

fn error(c: &Checked, code: u16, reason: &str, key: Option<&[u8; 16]>) -> Vec<u8> {
    let mut w = Writer::new(Class::Error, c.method, c.transaction_id);
    w.error_code(code, reason)
        .attr(SOFTWARE_ATTR, SOFTWARE.as_bytes());
    if let Some(key) = key {
        w.sign(key, sha256(c));
    }
    w.finish_with_fingerprint()
}

/// Decodes an XOR-…-ADDRESS value (RFC 8489 §14.2).
pub fn decode_xor_address(v: &[u8], transaction_id: &[u8; 12]) -> Option<SocketAddr> {
    let &[_, family, p0, p1] = v.first_chunk::<4>()?;
    let cookie = stun::MAGIC_COOKIE.to_be_bytes();
    let port = u16::from_be_bytes([p0, p1]) ^ (stun::MAGIC_COOKIE >> 16) as u16;
    let addr = v.get(4..)?;
    match (family, addr.len()) {
        (0x01, 4) => {
            let mut o = [0u8; 4];
            for (i, b) in o.iter_mut().enumerate() {
                *b = addr.get(i)? ^ cookie.get(i)?;
            }
            Some(SocketAddr::new(IpAddr::from(o), port))
        }
        (0x02, 16) => {
            let mut o = [0u8; 16];
            let key: Vec<u8> = cookie
                .iter()
                .chain(transaction_id.iter())
                .copied()
                .collect();
            for (i, b) in o.iter_mut().enumerate() {
                *b = addr.get(i)? ^ key.get(i)?;
            }
            Some(SocketAddr::new(IpAddr::from(o), port))
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests start simulated time from a real instant
mod tests;
