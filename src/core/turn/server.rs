//! The TURN server (RFC 8656) as a sans-IO state machine: client packets, peer packets and
//! time in; packets to send and relay sockets to open or close out. Allocations are keyed by
//! the client's 5-tuple; each holds its relayed address, lifetime, permissions (per peer
//! IP) and channels. Requests are answered with the error codes RFC 8656 names for each
//! case; unauthenticated requests create no state (stateless nonces) and draw at most a
//! per-source budget of answer bytes (`strangers`).
//!
//! Every resource a client can make the server hold has a bound and an owner: allocations
//! and EVEN-PORT reservations count together against the user's (the name after the REST
//! timestamp) and the source's (IPv4 address, IPv6 /64) quotas and the total; permissions
//! and channels per allocation are capped; reservations die with their allocation or after
//! 30 s. Nothing here does work proportional to the number of allocations or reservations:
//! ports come from a bitmap (`ports`), deadlines from ordered queues, so the lock the shell
//! holds around a call is held for a bounded time.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::auth::{authenticate, AuthContext};
use super::bandwidth::{Budget, Direction, Meters};
use super::channel::{self, CHANNEL_MAX, CHANNEL_MIN};
use super::demux::{classify, PacketKind};
use super::encode::{binding_response, unknown_attributes_answer, Writer, BINDING, SOFTWARE};
use super::error::{BadRequest, Refused};
use super::policy::{Origin, PeerPolicy};
use super::ports::Ports;
use super::strangers::{StrangerLimits, Strangers};
use super::stun::{self, attr, Checked, Class};
use crate::core::net::SourceKey;

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
    /// Allocations and reservations per user (the name after the REST timestamp, whatever
    /// the credential it came with).
    pub max_allocations_per_user: usize,
    /// Allocations and reservations per source (IPv4 address, IPv6 /64): a flood of users
    /// from one source cannot take every relayed port.
    pub max_allocations_per_source: usize,
    /// Allocations and reservations in all (508 beyond; the port range bounds it too).
    pub max_allocations: usize,
    /// Relayed bandwidth per allocation and per user, each direction apart (`None`:
    /// unlimited); excess packets are dropped and counted.
    pub bandwidth_per_allocation: Option<Budget>,
    pub bandwidth_per_user: Option<Budget>,
    pub policy: PeerPolicy,
    pub max_credential_lifetime_secs: u64,
    /// Permissions (peer addresses) and channels one allocation may hold.
    pub max_permissions_per_allocation: usize,
    pub max_channels_per_allocation: usize,
    /// Answer bytes a source may draw without authenticating.
    pub strangers: StrangerLimits,
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
            max_permissions_per_allocation: 64,
            max_channels_per_allocation: 64,
            strangers: StrangerLimits {
                bytes_per_sec: 8 * 1024,
                max_sources: 100_000,
            },
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
    /// Bind a relayed UDP socket here (if that fails, call [`Server::relay_failed_client`]).
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
    /// The answer to a request that did not authenticate would exceed its source's budget
    /// of such bytes (the shell also strikes the source).
    StrangerBudget,
    /// A Send indication with a comprehension-required attribute the server does not
    /// support (RFC 8489 §7.3.2: indications are discarded).
    UnknownAttribute,
    /// A peer address no packet may go to (port 0).
    BadPeer,
}

impl Dropped {
    /// Every reason, in the order of [`Dropped::index`].
    pub const ALL: [Dropped; 12] = [
        Dropped::NotStunOrChannelData,
        Dropped::MalformedStun,
        Dropped::MalformedChannelData,
        Dropped::NoAllocation,
        Dropped::NoPermission,
        Dropped::UnboundChannel,
        Dropped::UnauthenticatedIndication,
        Dropped::OverBandwidth,
        Dropped::Ignored,
        Dropped::StrangerBudget,
        Dropped::UnknownAttribute,
        Dropped::BadPeer,
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
            Dropped::StrangerBudget => "unauthenticated_budget",
            Dropped::UnknownAttribute => "unknown_attribute",
            Dropped::BadPeer => "bad_peer",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

struct Allocation {
    id: u64,
    origin: Origin,
    /// The credential's username (requests on the allocation must carry the same).
    username: String,
    /// Who is charged: the user (after the REST timestamp) and the source.
    user: Arc<str>,
    source: SourceKey,
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
    /// The port this allocation reserved with EVEN-PORT (R), until claimed or expired.
    reservation: Option<u16>,
}

/// A port reserved by an EVEN-PORT request with the R bit, waiting for its token.
struct Reservation {
    token: [u8; 8],
    owner: u64,
    user: Arc<str>,
    source: SourceKey,
    expires: Instant,
}

/// What one user holds: its allocations and reservations, and their shared bandwidth
/// meters.
struct UserShare {
    holds: usize,
    meters: Arc<Meters>,
}

/// The server.
pub struct Server {
    cfg: TurnConfig,
    allocations: HashMap<FiveTuple, Allocation>,
    by_id: HashMap<u64, FiveTuple>,
    by_relay: HashMap<SocketAddr, FiveTuple>,
    per_user: HashMap<Arc<str>, UserShare>,
    per_source: HashMap<SourceKey, usize>,
    /// Allocations and reservations together (what `max_allocations` bounds).
    held: usize,
    ports: Ports,
    /// Allocation lifetimes, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Reservations by port, their tokens, and their expiry in order (all live 30 s).
    reservations: HashMap<u16, Reservation>,
    reservation_tokens: HashMap<[u8; 8], u16>,
    reservation_queue: VecDeque<(Instant, u16)>,
    strangers: Strangers,
    next_id: u64,
    /// Transaction ids of Data indications (each needs a fresh one) and token counter.
    data_seq: AtomicU64,
    token_hasher: std::collections::hash_map::RandomState,
}

/// How long a reserved port waits for its RESERVATION-TOKEN (RFC 8656 §7.1: 30 s).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// The user a REST username (`<expiry>:<user>`) names; the whole name otherwise.
pub fn user_of(username: &str) -> &str {
    match username.split_once(':') {
        Some((expiry, user)) if expiry.bytes().all(|b| b.is_ascii_digit()) => user,
        _ => username,
    }
}

impl Server {
    /// `seed` spreads the first relayed port over the range (from the shell's randomness);
    /// `now` is the epoch of its meters.
    pub fn new(cfg: TurnConfig, seed: u16, now: Instant) -> Server {
        let epoch = now;
        Server {
            ports: Ports::new(cfg.ports.0, cfg.ports.1, seed),
            strangers: Strangers::new(cfg.strangers, epoch),
            cfg,
            allocations: HashMap::new(),
            by_id: HashMap::new(),
            by_relay: HashMap::new(),
            per_user: HashMap::new(),
            per_source: HashMap::new(),
            held: 0,
            deadlines: BTreeSet::new(),
            reservations: HashMap::new(),
            reservation_tokens: HashMap::new(),
            reservation_queue: VecDeque::new(),
            next_id: 1,
            data_seq: AtomicU64::new(u64::from(seed) << 32),
            token_hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    pub fn allocations(&self) -> usize {
        self.allocations.len()
    }

    /// Allocations and reservations held now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Reservations waiting for their token now.
    pub fn reservations(&self) -> usize {
        self.reservations.len()
    }

    /// Whether this 5-tuple holds an allocation (a TCP client has authenticated).
    pub fn has_allocation(&self, tuple: &FiveTuple) -> bool {
        self.allocations.contains_key(tuple)
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
                        self.request(auth, tuple, origin, packet, &checked, now, now_unix, out)
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

    /// An answer to a request that has not authenticated: sent only within its source's
    /// budget.
    fn answer_stranger(
        &mut self,
        tuple: FiveTuple,
        bytes: Vec<u8>,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), Dropped> {
        if !self.strangers.allow(tuple.client.ip(), bytes.len(), now) {
            return Err(Dropped::StrangerBudget);
        }
        out.push(Output::ToClient { tuple, bytes });
        Ok(())
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
    ) -> Result<(), Dropped> {
        if c.method == BINDING {
            return match binding_response(c, tuple.client) {
                Some(bytes) => self.answer_stranger(tuple, bytes, now, out),
                None => Ok(()),
            };
        }
        if !matches!(
            c.method,
            ALLOCATE | REFRESH | CREATE_PERMISSION | CHANNEL_BIND
        ) {
            let refused = Refused::BadRequest(BadRequest::UnknownMethod);
            return self.answer_stranger(tuple, error(c, refused, None), now, out);
        }
        if !c.unknown_required().is_empty() {
            return self.answer_stranger(tuple, unknown_attributes_answer(c), now, out);
        }
        // A retransmitted Allocate over UDP gets the same answer (RFC 8656 §7.2).
        if c.method == ALLOCATE {
            if let Some(a) = self.allocations.get(&tuple) {
                if a.allocate_tx.0 == c.transaction_id {
                    out.push(Output::ToClient {
                        tuple,
                        bytes: a.allocate_tx.1.clone(),
                    });
                    return Ok(());
                }
            }
        }
        let who = match authenticate(auth, packet, c, tuple.client.ip(), now_unix) {
            Ok(who) => who,
            Err(e) => {
                let nonce = auth.nonces.issue(tuple.client.ip(), now_unix);
                let mut w = Writer::new(Class::Error, c.method, c.transaction_id);
                let refused = Refused::from(e);
                w.error_code(refused.code(), refused.reason())
                    .attr(attr::REALM, auth.realm.as_bytes())
                    .attr(attr::NONCE, nonce.as_bytes());
                return self.answer_stranger(tuple, w.finish_with_fingerprint(), now, out);
            }
        };
        let key = who.key;
        let result = match c.method {
            ALLOCATE => self.allocate(tuple, origin, packet, c, who.username, key, now, out),
            REFRESH => self.refresh(tuple, packet, c, &who.username, now, out),
            CREATE_PERMISSION => self.create_permission(tuple, packet, c, &who.username, now),
            _ => self.channel_bind(tuple, packet, c, &who.username, now),
        };
        let bytes = match result {
            Ok(bytes) => bytes,
            Err(refused) => error(c, refused, Some(&key)),
        };
        out.push(Output::ToClient { tuple, bytes });
        Ok(())
    }

    /// Whether `user` and `source` may hold `more` allocations or reservations beyond what
    /// they hold, within the total too.
    fn quota(&self, user: &str, source: SourceKey, more: usize) -> Result<(), Refused> {
        let of_user = self.per_user.get(user).map_or(0, |u| u.holds);
        let of_source = self.per_source.get(&source).copied().unwrap_or(0);
        if of_user + more > self.cfg.max_allocations_per_user
            || of_source + more > self.cfg.max_allocations_per_source
        {
            return Err(Refused::AllocationQuotaReached);
        }
        if self.held + more > self.cfg.max_allocations {
            return Err(Refused::InsufficientCapacity);
        }
        Ok(())
    }

    /// Counts one allocation or reservation for `user` and `source`; returns the user's
    /// meters.
    fn charge_hold(&mut self, user: &Arc<str>, source: SourceKey, now: Instant) -> Arc<Meters> {
        self.held += 1;
        *self.per_source.entry(source).or_insert(0) += 1;
        let share = self
            .per_user
            .entry(user.clone())
            .or_insert_with(|| UserShare {
                holds: 0,
                meters: Arc::new(Meters::new(now)),
            });
        share.holds += 1;
        share.meters.clone()
    }

    fn release_hold(&mut self, user: &str, source: SourceKey) {
        self.held = self.held.saturating_sub(1);
        if let Some(share) = self.per_user.get_mut(user) {
            share.holds = share.holds.saturating_sub(1);
            if share.holds == 0 {
                self.per_user.remove(user);
            }
        }
        if let Some(n) = self.per_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&source);
            }
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
    ) -> Result<Vec<u8>, Refused> {
        if self.allocations.contains_key(&tuple) {
            return Err(Refused::AllocationMismatch);
        }
        let transport = value(packet, c, attr::REQUESTED_TRANSPORT)
            .ok_or(Refused::BadRequest(BadRequest::MissingRequestedTransport))?;
        if transport.first() != Some(&UDP) {
            return Err(Refused::UnsupportedTransportProtocol);
        }
        let token = value(packet, c, attr::RESERVATION_TOKEN);
        if token.is_some() && c.get(attr::EVEN_PORT).is_some() {
            // RFC 8656 §7.2: the two attributes exclude each other.
            return Err(Refused::BadRequest(
                BadRequest::EvenPortWithReservationToken,
            ));
        }
        // RFC 8656 §7.2: REQUESTED- and ADDITIONAL-ADDRESS-FAMILY exclude each other; an
        // additional IPv6 relay is not offered (single-family relays): the IPv4 allocation
        // succeeds with ADDRESS-ERROR-CODE 440 for the family not granted.
        let additional = value(packet, c, attr::ADDITIONAL_ADDRESS_FAMILY);
        if additional.is_some() && c.get(attr::REQUESTED_ADDRESS_FAMILY).is_some() {
            return Err(Refused::BadRequest(BadRequest::BothAddressFamilyAttributes));
        }
        let additional_refused = match additional.and_then(|v| v.first().copied()) {
            None => None,
            Some(0x02) => Some(0x02u8),
            Some(_) => return Err(Refused::BadRequest(BadRequest::BadAdditionalAddressFamily)),
        };
        if let Some(family) = value(packet, c, attr::REQUESTED_ADDRESS_FAMILY) {
            let wanted_v6 = match family.first() {
                Some(0x01) => false,
                Some(0x02) => true,
                _ => return Err(Refused::BadRequest(BadRequest::BadRequestedAddressFamily)),
            };
            if wanted_v6 != self.cfg.relay_ip.is_ipv6() {
                return Err(Refused::AddressFamilyNotSupported);
            }
        }
        let user: Arc<str> = Arc::from(user_of(&username));
        let source = SourceKey::of(tuple.client.ip());
        let even_port = value(packet, c, attr::EVEN_PORT);
        let reserve_next = even_port
            .and_then(|v| v.first())
            .is_some_and(|b| b & 0x80 != 0);
        // RFC 8656 §7.2: a token claims a port reserved by an earlier EVEN-PORT with the R
        // bit (the RTCP port next to an RTP relay). Its reservation ends here, whoever
        // claims it; the new allocation is charged like any other.
        let port = match token {
            Some(token) => {
                let token: [u8; 8] = token
                    .try_into()
                    .map_err(|_| Refused::BadRequest(BadRequest::BadReservationToken))?;
                let port = self
                    .reservation_tokens
                    .get(&token)
                    .copied()
                    .filter(|p| self.reservations.get(p).is_some_and(|r| r.expires > now))
                    .ok_or(Refused::InsufficientCapacity)?;
                self.quota(&user, source, 1)
                    .or_else(|e| self.quota_after_claim(port, &user, source).ok_or(e))?;
                self.end_reservation(port, false);
                port
            }
            None => {
                self.quota(&user, source, 1 + usize::from(reserve_next))?;
                self.ports
                    .take(even_port.is_some(), reserve_next)
                    .ok_or(Refused::InsufficientCapacity)?
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let reserved_token = if reserve_next {
            let token = self.new_token();
            let reserved = port + 1;
            self.charge_hold(&user, source, now);
            self.reservations.insert(
                reserved,
                Reservation {
                    token,
                    owner: id,
                    user: user.clone(),
                    source,
                    expires: now + RESERVATION_LIFETIME,
                },
            );
            self.reservation_tokens.insert(token, reserved);
            self.reservation_queue
                .push_back((now + RESERVATION_LIFETIME, reserved));
            // Claimed and ended reservations linger in the queue until their deadline:
            // keep it within a constant factor of the live ones whatever the churn
            // (amortised O(1): a compaction follows at least as many pushes as it keeps).
            if self.reservation_queue.len() > 2 * self.reservations.len() + 64 {
                let live = &self.reservations;
                // One entry per live reservation: a port reserved again at the same instant
                // leaves entries identical to the live one's.
                let mut kept = std::collections::HashSet::new();
                self.reservation_queue.retain(|(t, p)| {
                    live.get(p).is_some_and(|r| r.expires == *t) && kept.insert(*p)
                });
            }
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
        if let Some(token) = reserved_token {
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
        let user_meters = self.charge_hold(&user, source, now);
        self.by_relay.insert(relay, tuple);
        self.by_id.insert(id, tuple);
        let expires = now + lifetime;
        self.deadlines.insert((expires, id));
        self.allocations.insert(
            tuple,
            Allocation {
                id,
                origin,
                username,
                user,
                source,
                key,
                relay,
                expires,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                allocate_tx: (c.transaction_id, answer.clone()),
                meters: Meters::new(now),
                user_meters,
                reservation: reserved_token.map(|_| port + 1),
            },
        );
        out.push(Output::OpenRelay { relay });
        Ok(answer)
    }

    /// When the quota refused a claim: it passes if the reservation being claimed is the
    /// claimant's own hold (the reservation is given up for the allocation, one for one).
    fn quota_after_claim(&self, port: u16, user: &str, source: SourceKey) -> Option<()> {
        let r = self.reservations.get(&port)?;
        (&*r.user == user && r.source == source).then_some(())
    }

    /// Ends the reservation of `port`: its hold is released, and its port too when
    /// `free_port` (not when an Allocate claims it and takes the port over).
    fn end_reservation(&mut self, port: u16, free_port: bool) {
        if let Some(r) = self.reservations.remove(&port) {
            self.reservation_tokens.remove(&r.token);
            if let Some(owner) = self
                .by_id
                .get(&r.owner)
                .and_then(|t| self.allocations.get_mut(t))
            {
                owner.reservation = None;
            }
            let user = r.user.clone();
            self.release_hold(&user, r.source);
            if free_port {
                self.ports.release(port);
            }
        }
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

    fn owned(&mut self, tuple: FiveTuple, username: &str) -> Result<&mut Allocation, Refused> {
        match self.allocations.get_mut(&tuple) {
            Some(a) if a.username == username => Ok(a),
            // RFC 8656 §7: a request for an allocation made with other credentials.
            Some(_) => Err(Refused::WrongCredentials),
            None => Err(Refused::AllocationMismatch),
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
    ) -> Result<Vec<u8>, Refused> {
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
            let (old, id) = (a.expires, a.id);
            a.expires = now + lifetime;
            self.deadlines.remove(&(old, id));
            self.deadlines.insert((now + lifetime, id));
        }
        let mut w = Writer::new(Class::Success, REFRESH, c.transaction_id);
        w.attr(attr::LIFETIME, &secs32(lifetime))
            .attr(SOFTWARE_ATTR, SOFTWARE.as_bytes())
            .sign(&key, sha256(c));
        Ok(w.finish_with_fingerprint())
    }

    /// Every XOR-PEER-ADDRESS of a request (CreatePermission may carry several).
    fn peers(&self, packet: &[u8], c: &Checked) -> Result<Vec<SocketAddr>, Refused> {
        let mut peers = Vec::new();
        for a in c
            .attributes()
            .iter()
            .filter(|a| a.kind == attr::XOR_PEER_ADDRESS)
        {
            let v = packet
                .get(a.start..a.start + a.len)
                .ok_or(Refused::BadRequest(BadRequest::BadPeerAddress))?;
            peers.push(
                decode_xor_address(v, &c.transaction_id)
                    .ok_or(Refused::BadRequest(BadRequest::BadPeerAddress))?,
            );
        }
        if peers.is_empty() {
            return Err(Refused::BadRequest(BadRequest::MissingPeerAddress));
        }
        Ok(peers)
    }

    fn check_peer(
        &self,
        a_relay: SocketAddr,
        origin: Origin,
        peer: SocketAddr,
    ) -> Result<(), Refused> {
        if peer.is_ipv6() != a_relay.is_ipv6() {
            return Err(Refused::PeerAddressFamilyMismatch);
        }
        self.cfg
            .policy
            .check(peer.ip(), origin)
            .map_err(|_| Refused::Forbidden)
    }

    fn create_permission(
        &mut self,
        tuple: FiveTuple,
        packet: &[u8],
        c: &Checked,
        username: &str,
        now: Instant,
    ) -> Result<Vec<u8>, Refused> {
        let peers = self.peers(packet, c)?;
        let (relay, origin) = {
            let a = self.owned(tuple, username)?;
            (a.relay, a.origin)
        };
        for peer in &peers {
            self.check_peer(relay, origin, *peer)?;
        }
        let expires = now + self.cfg.permission_lifetime;
        let max = self.cfg.max_permissions_per_allocation;
        let a = self.owned(tuple, username)?;
        prune(a, now);
        let new = peers
            .iter()
            .filter(|p| !a.permissions.contains_key(&p.ip()))
            .map(|p| p.ip())
            .collect::<std::collections::HashSet<_>>()
            .len();
        if a.permissions.len() + new > max {
            return Err(Refused::InsufficientCapacity);
        }
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
    ) -> Result<Vec<u8>, Refused> {
        let number = value(packet, c, attr::CHANNEL_NUMBER)
            .and_then(|v| v.first_chunk::<2>())
            .map(|b| u16::from_be_bytes(*b))
            .filter(|n| (CHANNEL_MIN..=CHANNEL_MAX).contains(n))
            .ok_or(Refused::BadRequest(BadRequest::BadChannelNumber))?;
        let peers = self.peers(packet, c)?;
        let [peer] = peers.as_slice() else {
            return Err(Refused::BadRequest(BadRequest::OnePeerAddress));
        };
        let peer = *peer;
        if peer.port() == 0 {
            return Err(Refused::BadRequest(BadRequest::BadPeerPort));
        }
        let (relay, origin) = {
            let a = self.owned(tuple, username)?;
            (a.relay, a.origin)
        };
        self.check_peer(relay, origin, peer)?;
        let channel_lifetime = self.cfg.channel_lifetime;
        let permission_lifetime = self.cfg.permission_lifetime;
        let (max_channels, max_permissions) = (
            self.cfg.max_channels_per_allocation,
            self.cfg.max_permissions_per_allocation,
        );
        let a = self.owned(tuple, username)?;
        prune(a, now);
        // RFC 8656 §12.2: a channel is bound to one peer and a peer to one channel.
        if let Some((bound, _)) = a.channels.get(&number) {
            if *bound != peer {
                return Err(Refused::BadRequest(BadRequest::ChannelBoundToAnotherPeer));
            }
        }
        if a.channels
            .iter()
            .any(|(n, (p, _))| *p == peer && *n != number)
        {
            return Err(Refused::BadRequest(BadRequest::PeerBoundToAnotherChannel));
        }
        let new_channel = !a.channels.contains_key(&number);
        let new_permission = !a.permissions.contains_key(&peer.ip());
        if (new_channel && a.channels.len() >= max_channels)
            || (new_permission && a.permissions.len() >= max_permissions)
        {
            return Err(Refused::InsufficientCapacity);
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
        // RFC 8489 §7.3.2: an indication with an unknown comprehension-required attribute
        // (DONT-FRAGMENT among them: the relay does not set DF per packet) is discarded.
        if !c.unknown_required().is_empty() {
            return Err(Dropped::UnknownAttribute);
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
        if peer.port() == 0 {
            return Err(Dropped::BadPeer);
        }
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
        // At most `max_channels_per_allocation` entries, nearly always one or two: a scan
        // costs less than hashing the peer's address.
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
                channel::framed(&header, data, tuple.transport == Transport::Tcp)
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

    /// Removes what expired by `now`: allocations past their lifetime and reservations past
    /// theirs (each in order of its deadline: the work is what expired, not what is held).
    /// Expired permissions and channels are ignored where they are read and pruned when
    /// their allocation is next touched.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Output>) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.remove(&(deadline, id));
            if let Some(tuple) = self.by_id.get(&id).copied() {
                self.remove(tuple, out);
            }
        }
        while let Some(&(deadline, port)) = self.reservation_queue.front() {
            if deadline > now {
                break;
            }
            self.reservation_queue.pop_front();
            // Claimed or ended reservations linger in the queue: only a live one that is
            // due goes.
            if self
                .reservations
                .get(&port)
                .is_some_and(|r| r.expires <= now)
            {
                self.end_reservation(port, true);
            }
        }
    }

    /// When [`Server::expire`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let allocation = self.deadlines.first().map(|(t, _)| *t);
        let reservation = self.reservation_queue.front().map(|(t, _)| *t);
        match (allocation, reservation) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        }
    }

    /// Every table agrees with every other and with the bounds: for tests and the fuzz
    /// targets after each step (O(held): never on the packet path).
    pub fn check_invariants(&self) -> Result<(), String> {
        let cfg = &self.cfg;
        let fail = |what: String| Err(what);
        if self.held != self.allocations.len() + self.reservations.len() {
            return fail(format!(
                "held {} != {} allocations + {} reservations",
                self.held,
                self.allocations.len(),
                self.reservations.len()
            ));
        }
        if self.held > cfg.max_allocations {
            return fail(format!("held {} > max {}", self.held, cfg.max_allocations));
        }
        if self.ports.taken() != self.held {
            return fail(format!(
                "{} ports taken, {} held",
                self.ports.taken(),
                self.held
            ));
        }
        if self.by_id.len() != self.allocations.len()
            || self.by_relay.len() != self.allocations.len()
            || self.deadlines.len() != self.allocations.len()
        {
            return fail("allocation indexes disagree".into());
        }
        let mut per_user: HashMap<&str, usize> = HashMap::new();
        let mut per_source: HashMap<SourceKey, usize> = HashMap::new();
        for (tuple, a) in &self.allocations {
            if self.by_id.get(&a.id) != Some(tuple)
                || self.by_relay.get(&a.relay) != Some(tuple)
                || !self.deadlines.contains(&(a.expires, a.id))
                || self.ports.is_free(a.relay.port())
            {
                return fail(format!("allocation {} not indexed", a.id));
            }
            if a.permissions.len() > cfg.max_permissions_per_allocation
                || a.channels.len() > cfg.max_channels_per_allocation
            {
                return fail(format!("allocation {} over its caps", a.id));
            }
            // RFC 8656 §12.2: one peer, one channel.
            let mut peers: Vec<SocketAddr> = a.channels.values().map(|(p, _)| *p).collect();
            peers.sort_unstable();
            peers.dedup();
            if peers.len() != a.channels.len() {
                return fail(format!("allocation {} binds a peer twice", a.id));
            }
            if let Some(port) = a.reservation {
                if self.reservations.get(&port).map(|r| r.owner) != Some(a.id) {
                    return fail(format!("allocation {} lost its reservation", a.id));
                }
            }
            *per_user.entry(&a.user).or_default() += 1;
            *per_source.entry(a.source).or_default() += 1;
        }
        if self.reservation_tokens.len() != self.reservations.len() {
            return fail("reservation tokens disagree".into());
        }
        for (port, r) in &self.reservations {
            let owner = self
                .by_id
                .get(&r.owner)
                .and_then(|t| self.allocations.get(t));
            if owner.and_then(|a| a.reservation) != Some(*port)
                || self.reservation_tokens.get(&r.token) != Some(port)
                || self.ports.is_free(*port)
                || !self
                    .reservation_queue
                    .iter()
                    .any(|(t, p)| p == port && *t == r.expires)
            {
                return fail(format!("reservation of port {port} not indexed"));
            }
            *per_user.entry(&r.user).or_default() += 1;
            *per_source.entry(r.source).or_default() += 1;
        }
        // Compacted on every push past 2 x live + 64: never past 2 x the most that can be
        // held + 64, whatever the churn.
        if self.reservation_queue.len() > 2 * cfg.max_allocations + 65 {
            return fail(format!(
                "reservation queue of {} past its bound ({} live)",
                self.reservation_queue.len(),
                self.reservations.len()
            ));
        }
        let users: HashMap<&str, usize> =
            self.per_user.iter().map(|(u, s)| (&**u, s.holds)).collect();
        if users != per_user || per_source != self.per_source {
            return fail("per-user or per-source counts disagree".into());
        }
        if per_user.values().any(|&n| n > cfg.max_allocations_per_user)
            || per_source
                .values()
                .any(|&n| n > cfg.max_allocations_per_source)
        {
            return fail("a quota is exceeded".into());
        }
        Ok(())
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
        let Some(a) = self.allocations.remove(&tuple) else {
            return;
        };
        self.by_relay.remove(&a.relay);
        self.by_id.remove(&a.id);
        self.deadlines.remove(&(a.expires, a.id));
        // Its reservation dies with it (RFC 8656 §7.1), port and all.
        if let Some(port) = a.reservation {
            self.end_reservation(port, true);
        }
        self.release_hold(&a.user, a.source);
        self.ports.release(a.relay.port());
        out.push(Output::CloseRelay { relay: a.relay });
    }

    /// An unguessable reservation token (a keyed hash of a counter).
    fn new_token(&mut self) -> [u8; 8] {
        use std::hash::BuildHasher;
        let seq = self.data_seq.fetch_add(1, Ordering::Relaxed);
        self.token_hasher.hash_one(seq).to_be_bytes()
    }
}

/// Drops an allocation's expired permissions and channels (bounded by its caps).
fn prune(a: &mut Allocation, now: Instant) {
    a.permissions.retain(|_, e| *e > now);
    a.channels.retain(|_, (_, e)| *e > now);
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

/// An error answer: no SOFTWARE (nothing an attacker needs, fewer bytes to draw).
fn error(c: &Checked, refused: Refused, key: Option<&[u8; 16]>) -> Vec<u8> {
    let mut w = Writer::new(Class::Error, c.method, c.transaction_id);
    w.error_code(refused.code(), refused.reason());
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
