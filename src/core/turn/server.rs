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
//!
//! The server's parts, each in its own file:
//! - here: the types the shell sees, the tables, and the dispatch of a client's packet;
//! - `config`: the settings ([`TurnConfig`]);
//! - `allocate`: Allocate and Refresh, and EVEN-PORT reservations;
//! - `permissions`: CreatePermission and ChannelBind;
//! - `relay`: the hot path, both directions ([`Route`], [`ToClient`]);
//! - `tables`: quotas, holds, removal and expiry;
//! - `invariants`: [`Server::check_invariants`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::auth::{authenticate, AuthContext};
use super::bandwidth::Meters;
use super::demux::{classify, PacketKind};
use super::encode::{binding_response, unknown_attributes_answer, Writer, BINDING};
use super::error::{BadRequest, Refused};
use super::policy::Origin;
use super::ports::Ports;
use super::strangers::Strangers;
use super::stun::{self, attr, Checked, Class};
use crate::core::net::SourceKey;

mod allocate;
mod config;
mod invariants;
mod kernel;
mod permissions;
mod pool_ask;
mod relay;
mod tables;

pub use config::TurnConfig;
pub use kernel::KernelChannel;
pub use pool_ask::{PoolAsk, PoolReport, PoolVerdict, MAX_ASKS};
pub use relay::{Route, ToClient};

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
    /// Bind a relayed UDP socket here for the allocation `allocation` (its id), and keep it
    /// only while [`Server::holds_relay`] says the allocation still holds it (it may have
    /// gone before the socket was bound); if binding fails, call [`Server::relay_failed`].
    OpenRelay { relay: SocketAddr, allocation: u64 },
    /// Close a relayed socket.
    CloseRelay { relay: SocketAddr },
    /// Ask the pool whether a user may hold more relays; answer with
    /// [`Server::pool_answer`] (or not: the ask is decided here at its deadline).
    AskPool(PoolAsk),
    /// The kernel may relay this channel on its own until its `until` (with
    /// `kernel_offload`; installed again, with a later `until`, whenever one is granted).
    KernelChannel(KernelChannel),
    /// The kernel must stop relaying this channel: its allocation is gone.
    KernelChannelGone { tuple: FiveTuple, channel: u16 },
    /// A TURN-over-TCP (or TLS) client's allocation is gone (deleted, expired): its
    /// connection is closed once what is queued for it (the answer to its Refresh) is
    /// written. The connection exists for its allocation (RFC 8656 §3.1: the allocation
    /// goes with the connection); kept, it would hold one of the zone's TCP slots and the
    /// source's connections with no allocation counted in any quota.
    CloseClient { tuple: FiveTuple },
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
    /// An Allocate again while the pool is asked about the first (its answer will come).
    AwaitingPool,
}

impl Dropped {
    /// Every reason, in the order of [`Dropped::index`].
    pub const ALL: [Dropped; 13] = [
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
        Dropped::AwaitingPool,
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
            Dropped::AwaitingPool => "awaiting_pool",
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

/// An authenticated request on an allocation (Refresh, CreatePermission, ChannelBind), as
/// its method's handler sees it.
#[derive(Clone, Copy)]
struct OnAllocation<'a> {
    tuple: FiveTuple,
    packet: &'a [u8],
    c: &'a Checked,
    /// The credential's: only its allocation's own may act on it.
    username: &'a str,
    now: Instant,
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
    /// Names the user's meters in the kernel path (from the allocations' id counter).
    id: u64,
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
    /// What the other members of the pool report each user holding there (the shell feeds
    /// it from the pool's exchange): counted against `max_allocations_per_user` here.
    pool_holds: HashMap<Box<str>, usize>,
    per_source: HashMap<SourceKey, usize>,
    /// Allocates waiting for the pool's answer.
    asks: pool_ask::PoolAsks,
    /// Allocations and reservations together (what `max_allocations` bounds).
    held: usize,
    /// Changes of what users hold (the pool orders this member's counts by it).
    holds_seq: u64,
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
            pool_holds: HashMap::new(),
            per_source: HashMap::new(),
            asks: pool_ask::PoolAsks::default(),
            held: 0,
            holds_seq: 0,
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

    /// What this member tells the pool between asks: what each user holds here
    /// (allocations and reservations), numbered by the changes so far (a later count has a
    /// larger number); users with an ask outstanding are left to their asks.
    pub fn pool_report(&self) -> PoolReport {
        let asking: Vec<Arc<str>> = self.asks.asking().cloned().collect();
        let holds = self
            .per_user
            .iter()
            .filter(|(user, _)| self.asks.queued(user) == 0)
            .map(|(user, share)| (user.clone(), share.holds))
            .collect();
        PoolReport {
            seq: self.holds_seq,
            holds,
            asking,
        }
    }

    /// What the other members hold per user, replacing what they held before: counted in
    /// the user quota here, and the users' bandwidth budgets shared accordingly. Bounded: at
    /// most as many users as this server may hold allocations (the rest are not counted
    /// here; their members still enforce them).
    pub fn set_pool_holds(&mut self, holds: impl IntoIterator<Item = (Box<str>, usize)>) {
        let cap = self.cfg.max_allocations;
        self.pool_holds = holds
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .take(cap)
            .collect();
        for (user, share) in &self.per_user {
            let elsewhere = self.pool_holds.get(&**user).copied().unwrap_or(0);
            share.meters.set_share(share.holds, elsewhere);
        }
    }

    /// What the pool says one user holds on the other members (from an ask's answer).
    fn set_pool_hold(&mut self, user: &str, elsewhere: usize) {
        if elsewhere == 0 {
            self.pool_holds.remove(user);
        } else if let Some(n) = self.pool_holds.get_mut(user) {
            *n = elsewhere;
        } else if self.pool_holds.len() < self.cfg.max_allocations {
            self.pool_holds.insert(user.into(), elsewhere);
        }
        if let Some(share) = self.per_user.get(user) {
            share.meters.set_share(share.holds, elsewhere);
        }
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
        // A retransmitted Allocate over UDP gets the same answer (RFC 8656 §7.2), once it
        // has one.
        if c.method == ALLOCATE && self.asks.is_waiting(&tuple) {
            return Err(Dropped::AwaitingPool);
        }
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
        let on = OnAllocation {
            tuple,
            packet,
            c,
            username: &who.username,
            now,
        };
        let result = match c.method {
            ALLOCATE => {
                match self.allocate(tuple, origin, packet, c, who.username, key, now, out) {
                    // Asked of the pool: answered when it answers, or when it is too late to.
                    Ok(None) => return Ok(()),
                    Ok(Some(bytes)) => Ok(bytes),
                    Err(refused) => Err(refused),
                }
            }
            REFRESH => self.refresh(on, out),
            CREATE_PERMISSION => self.create_permission(on),
            _ => self.channel_bind(on),
        };
        let bytes = match result {
            Ok(bytes) => {
                // Whatever the request extended (the allocation, a permission, a binding),
                // the kernel learns the new deadlines before the client the answer.
                self.kernel_channels(tuple, now, out);
                bytes
            }
            Err(refused) => error(c, refused, Some(&key)),
        };
        out.push(Output::ToClient { tuple, bytes });
        Ok(())
    }
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
    error_answer(
        c.method,
        &c.transaction_id,
        refused,
        key.map(|k| (k, sha256(c))),
    )
}

/// An error answer to `method`'s transaction, signed with `key` (SHA-256 integrity if so).
fn error_answer(
    method: u16,
    transaction_id: &[u8; 12],
    refused: Refused,
    key: Option<(&[u8; 16], bool)>,
) -> Vec<u8> {
    let mut w = Writer::new(Class::Error, method, *transaction_id);
    w.error_code(refused.code(), refused.reason());
    if let Some((key, sha256)) = key {
        w.sign(key, sha256);
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
