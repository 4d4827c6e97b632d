//! The kernel fast path (`relay.kernel_offload`): the TC program of `kernel/turn_relay.bpf.c`
//! loaded and attached to the relay's interfaces, and its maps kept in step with what the
//! core hands over ([`Output::KernelChannel`](crate::core::turn::server::Output)). The
//! policy stays in the core; this owns the kernel's copy of it:
//! - a channel handed over is written both ways (the client's 5-tuple and channel to the
//!   peer; the peer and relayed address to the client), with its deadline in the kernel's
//!   monotonic clock, so an expiry holds without user space;
//! - its meters (per allocation and per user, each direction) are written with it and
//!   shared by the channels that charge them; the user's rate follows this member's pool
//!   share;
//! - [`KernelPath::sweep`] (every second) reads the counters back into the relay's
//!   statistics, hands what each allocation relayed to the core, which charges it to the
//!   budgets user space relays from (one budget for both paths), drops what has expired,
//!   and counts the kernel's bandwidth drops.
//!
//! When the kernel cannot take it (not built with clang, no privilege, an old kernel), the
//! edge says so once and relays everything in user space, as it does without the option.
//! The maps are bounded (sized from `relay.max_allocations`); a channel that finds them
//! full stays in user space and is counted.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray};
use aya::programs::{tc, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

use crate::core::turn::bandwidth::{Budget, Direction};
use crate::core::turn::server::{FiveTuple, KernelChannel};
use crate::sync::MutexExt;

/// The program, built by build.rs (empty when it was not).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/turn_relay.bpf.o"));
/// Why it was not built (empty when it was).
const NOT_BUILT: &str = env!("SIPEDGE_BPF_UNAVAILABLE");

type ClientKey = [u8; 16];
type HopValue = [u8; 64];
type PeerKey = [u8; 12];
/// `struct meter` of the program.
type MeterValue = [u8; 24];

const UNLIMITED: u64 = u64::MAX;

/// The kernel path, loaded and attached.
pub(super) struct KernelPath {
    maps: Mutex<Maps>,
    /// What `/status` says: the interfaces it is attached to.
    pub(super) interfaces: Vec<String>,
    /// Channels relayed in the kernel now, and those the maps had no room for.
    pub(super) channels: AtomicU64,
    pub(super) refused_full: AtomicU64,
}

struct Maps {
    /// The program and its links: dropping it detaches them.
    _ebpf: Ebpf,
    to_peer: BpfHashMap<MapData, ClientKey, HopValue>,
    to_client: BpfHashMap<MapData, PeerKey, HopValue>,
    meters: BpfHashMap<MapData, u64, MeterValue>,
    drops: PerCpuArray<MapData, u64>,
    installed: HashMap<(FiveTuple, u16), Installed>,
    /// Meters in the kernel, and how many installed channels charge each.
    meter_refs: HashMap<u64, usize>,
    /// The kernel's drops as last read, by direction.
    drops_seen: [u64; 2],
    /// Bytes relayed in the kernel since the last sweep, by allocation (its id), to the
    /// peer and to the client: the core charges them to the allocation's budgets. At most
    /// one entry per allocation that had a channel here since then.
    spent: HashMap<u64, [u64; 2]>,
    routes: Routes,
}

/// The host's routes and addresses as last read (at most a second old: channels are
/// handed over at the rate of requests, which a storm of them makes high).
#[derive(Default)]
struct Routes {
    read_at: Option<Instant>,
    /// `/proc/net/fib_trie` and `/proc/net/route`.
    trie: String,
    table: String,
}

impl Routes {
    fn fresh(&mut self) -> &Routes {
        let now = super::super::clock::now();
        if self
            .read_at
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            self.trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
            self.table = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
            self.read_at = Some(now);
        }
        self
    }
}

/// A channel in the kernel.
struct Installed {
    client_key: ClientKey,
    peer_key: PeerKey,
    until: Instant,
    /// `until` on the kernel's clock, as written (an entry another channel has taken over
    /// since has another).
    until_ns: u64,
    /// Meters charged (0: none): the allocation's and the user's, to the peer, then to the
    /// client.
    meters: [u64; 4],
    /// The allocation's id (what it relayed is charged to it).
    allocation: u64,
    user: Arc<str>,
    user_budget: Option<Budget>,
    /// Packets and bytes to the peer, then to the client, as last read.
    seen: [u64; 4],
}

/// What the kernel relayed since the last sweep, for the statistics.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Relayed {
    pub(super) to_peers: u64,
    pub(super) bytes_to_peers: u64,
    pub(super) to_clients: u64,
    pub(super) bytes_to_clients: u64,
    /// Packets the kernel dropped over a bandwidth budget.
    pub(super) over_budget: u64,
}

impl KernelPath {
    /// Loads the program and attaches it to `interfaces` (every Ethernet and loopback
    /// interface when empty), its maps sized for `channels` channels.
    pub(super) fn start(interfaces: &[String], channels: u32) -> Result<KernelPath, String> {
        if OBJECT.is_empty() {
            return Err(format!("not built into this binary ({NOT_BUILT})"));
        }
        let interfaces = if interfaces.is_empty() {
            relay_interfaces()?
        } else {
            interfaces.to_vec()
        };
        let channels = channels.clamp(1024, 1 << 21);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("to_peer", channels)
            .map_max_entries("to_client", channels)
            .map_max_entries("meters", channels.saturating_mul(2))
            .load(OBJECT)
            .map_err(|e| format!("cannot load the BPF program: {e}"))?;
        let program: &mut SchedClassifier = ebpf
            .program_mut("turn_relay")
            .ok_or("the BPF object has no turn_relay program")?
            .try_into()
            .map_err(|e| format!("turn_relay: {e}"))?;
        program
            .load()
            .map_err(|e| format!("the kernel refused the program: {e}"))?;
        for name in &interfaces {
            // Before TCX (6.6) the program hangs off a clsact qdisc; there may be one.
            let _ = tc::qdisc_add_clsact(name);
            program
                .attach(name, TcAttachType::Ingress)
                .map_err(|e| format!("cannot attach to {name}: {e}"))?;
        }
        let to_peer = take_map(&mut ebpf, "to_peer")?;
        let to_client = take_map(&mut ebpf, "to_client")?;
        let meters = take_map(&mut ebpf, "meters")?;
        let drops = ebpf
            .take_map("drops")
            .ok_or("no map drops")
            .and_then(|m| PerCpuArray::try_from(m).map_err(|_| "map drops"))?;
        Ok(KernelPath {
            maps: Mutex::new(Maps {
                _ebpf: ebpf,
                to_peer,
                to_client,
                meters,
                drops,
                installed: HashMap::new(),
                meter_refs: HashMap::new(),
                drops_seen: [0; 2],
                spent: HashMap::new(),
                routes: Routes::default(),
            }),
            interfaces,
            channels: AtomicU64::new(0),
            refused_full: AtomicU64::new(0),
        })
    }

    /// Hands `k` to the kernel (again, with its new deadline and budgets, if it is there).
    /// Returns what it relayed under the entry it replaces.
    pub(super) fn install(&self, k: &KernelChannel) -> Relayed {
        let (IpAddr::V4(client), IpAddr::V4(server), IpAddr::V4(peer), IpAddr::V4(relay)) = (
            k.tuple.client.ip(),
            k.tuple.server.ip(),
            k.peer.ip(),
            k.relay.ip(),
        ) else {
            return Relayed::default(); // IPv4 only: the rest stays in user space
        };
        let client_key = client_key(
            client,
            k.tuple.client.port(),
            server,
            k.tuple.server.port(),
            k.channel,
        );
        let peer_key = peer_key(peer, k.peer.port(), relay, k.relay.port());
        let meters = [
            meter_key(k.allocation, Direction::ToPeer, k.allocation_budget),
            meter_key(k.user_id, Direction::ToPeer, k.user_budget),
            meter_key(k.allocation, Direction::ToClient, k.allocation_budget),
            meter_key(k.user_id, Direction::ToClient, k.user_budget),
        ];
        let mut maps = self.maps.lock_unpoisoned();
        // Handed over again as it is (a request that moved none of its deadlines): nothing
        // to write. Every authenticated request hands its allocation's channels over; this
        // keeps a flood of them from costing map writes and route lookups per channel.
        if maps.installed.get(&(k.tuple, k.channel)).is_some_and(|ch| {
            ch.peer_key == peer_key
                && ch.until == k.until
                && ch.meters == meters
                && ch.user_budget == k.user_budget
        }) {
            return Relayed::default();
        }
        // The ways out, as a datagram from the relayed socket (or the listener) would go; a
        // destination without a route stays in user space.
        let routes = maps.routes.fresh();
        let (Some(to_peer_way), Some(to_client_way)) =
            (egress(routes, peer), egress(routes, client))
        else {
            return Relayed::default();
        };
        // Each direction's packets come in by the way back to their sender: the client's by
        // the interface toward the client, the peer's by the one toward the peer. (An
        // interface index beyond the entry's 16 bits: user space relays it.)
        let (Ok(client_in), Ok(peer_in)) = (
            u16::try_from(to_client_way.ifindex),
            u16::try_from(to_peer_way.ifindex),
        ) else {
            return Relayed::default();
        };
        let until = kernel_clock(k.until);
        let mut relayed = Relayed::default();
        let budgets = [
            k.allocation_budget,
            k.user_budget,
            k.allocation_budget,
            k.user_budget,
        ];
        // The new entry's meters are held before the old entry's are let go: a meter only
        // this channel charges would otherwise be deleted and written again empty, a fresh
        // burst for every request that hands the channel over again (a Refresh every 10 ms
        // would relay a hundred bursts a second).
        for (&key, budget) in meters.iter().zip(budgets) {
            maps.hold_meter(key, budget);
        }
        // A channel again: its counters first, and its old peer out if it changed.
        if let Some(old) = maps.installed.remove(&(k.tuple, k.channel)) {
            relayed = maps.collect(&old).0;
            if old.peer_key != peer_key {
                maps.remove_peer_entry(&old);
            }
            maps.release_meters(&old.meters);
        } else {
            self.channels.fetch_add(1, Ordering::Relaxed);
        }
        let to_peer = Hop {
            src: (relay, k.relay.port()),
            dst: (peer, k.peer.port()),
            channel: 0,
            until_ns: until,
            meters: [meters[0], meters[1]],
            way: to_peer_way,
            from_ifindex: client_in,
        }
        .encode();
        let to_client = Hop {
            src: (server, k.tuple.server.port()),
            dst: (client, k.tuple.client.port()),
            channel: k.channel,
            until_ns: until,
            meters: [meters[2], meters[3]],
            way: to_client_way,
            from_ifindex: peer_in,
        }
        .encode();
        let written = maps
            .to_peer
            .insert(client_key, to_peer, 0)
            .and_then(|()| maps.to_client.insert(peer_key, to_client, 0));
        if let Err(e) = written {
            // Full (or refused): the channel stays in user space.
            let _ = maps.to_peer.remove(&client_key);
            let _ = maps.to_client.remove(&peer_key);
            maps.release_meters(&meters);
            self.channels.fetch_sub(1, Ordering::Relaxed);
            if self.refused_full.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(error = %e, "the kernel path's maps are full: further channels are relayed in user space");
            }
            return relayed;
        }
        maps.installed.insert(
            (k.tuple, k.channel),
            Installed {
                client_key,
                peer_key,
                until: k.until,
                until_ns: until,
                meters,
                allocation: k.allocation,
                user: k.user.clone(),
                user_budget: k.user_budget,
                seen: [0; 4],
            },
        );
        relayed
    }

    /// Takes a channel out of the kernel (its allocation is gone). Returns what it relayed
    /// since the last sweep.
    pub(super) fn remove(&self, tuple: FiveTuple, channel: u16) -> Relayed {
        let mut maps = self.maps.lock_unpoisoned();
        let Some(old) = maps.installed.remove(&(tuple, channel)) else {
            return Relayed::default();
        };
        self.channels.fetch_sub(1, Ordering::Relaxed);
        maps.uninstall(old)
    }

    /// Reads back what the kernel relayed and dropped, takes out what expired by `now`,
    /// sets each user's meters to `user_budget` (this member's share now; `None` for a
    /// user gone, whose channels go with their allocations), and hands `kernel_spent` the
    /// bytes each allocation relayed here since the last sweep (by its id; to the peer,
    /// then to the client), its channels gone since included.
    pub(super) fn sweep(
        &self,
        now: Instant,
        user_budget: impl Fn(&str) -> Option<Option<Budget>>,
        kernel_spent: impl Fn(u64, [u64; 2]),
    ) -> Relayed {
        let mut total = Relayed::default();
        let keys: Vec<(FiveTuple, u16)> = self
            .maps
            .lock_unpoisoned()
            .installed
            .keys()
            .copied()
            .collect();
        let mut budgets: HashMap<Arc<str>, Option<Option<Budget>>> = HashMap::new();
        for key in keys {
            // One channel at a time under the lock: a relay worker handing a channel over
            // waits for one channel's reads, never for the whole sweep.
            let user = self
                .maps
                .lock_unpoisoned()
                .installed
                .get(&key)
                .map(|ch| ch.user.clone());
            let Some(user) = user else {
                continue;
            };
            let budget = *budgets
                .entry(user.clone())
                .or_insert_with(|| user_budget(&user));
            let mut maps = self.maps.lock_unpoisoned();
            let Some(mut ch) = maps.installed.remove(&key) else {
                continue;
            };
            if ch.until <= now {
                self.channels.fetch_sub(1, Ordering::Relaxed);
                total.add(maps.uninstall(ch));
                continue;
            }
            let (relayed, seen) = maps.collect(&ch);
            total.add(relayed);
            ch.seen = seen;
            if let Some(budget) = budget {
                if budget != ch.user_budget && ch.user_budget.is_some() && budget.is_some() {
                    for &m in [ch.meters[1], ch.meters[3]].iter() {
                        maps.set_meter_budget(m, budget);
                    }
                    ch.user_budget = budget;
                }
            }
            maps.installed.insert(key, ch);
        }
        let mut maps = self.maps.lock_unpoisoned();
        // Drops over a budget, from every CPU.
        let index = [0u32, 1];
        for (i, seen) in index.iter().zip([0usize, 1]) {
            let n: u64 = maps
                .drops
                .get(i, 0)
                .map(|v| v.iter().copied().sum())
                .unwrap_or(0);
            if let Some(before) = maps.drops_seen.get_mut(seen) {
                total.over_budget += n.saturating_sub(*before);
                *before = n;
            }
        }
        let spent = std::mem::take(&mut maps.spent);
        drop(maps);
        for (allocation, bytes) in spent {
            kernel_spent(allocation, bytes);
        }
        total
    }
}

impl Relayed {
    fn add(&mut self, o: Relayed) {
        self.to_peers += o.to_peers;
        self.bytes_to_peers += o.bytes_to_peers;
        self.to_clients += o.to_clients;
        self.bytes_to_clients += o.bytes_to_clients;
        self.over_budget += o.over_budget;
    }
}

impl Maps {
    /// The counters of `ch`'s two entries now.
    fn read_seen(&self, ch: &Installed) -> [u64; 4] {
        let to_peer = self.to_peer.get(&ch.client_key, 0).ok();
        let to_client = self.to_client.get(&ch.peer_key, 0).ok();
        let (p, pb) = to_peer.map_or((0, 0), |h| counters(&h));
        let (c, cb) = to_client.map_or((0, 0), |h| counters(&h));
        [p, pb, c, cb]
    }

    /// What `ch` relayed since it was last read, and its counters now (read once: a packet
    /// counted between two reads would be lost to the statistics); its bytes are owed to
    /// its allocation's budgets until the next sweep hands them over.
    fn collect(&mut self, ch: &Installed) -> (Relayed, [u64; 4]) {
        let now = self.read_seen(ch);
        let d = |i: usize| {
            now.get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(ch.seen.get(i).copied().unwrap_or(0))
        };
        let relayed = Relayed {
            to_peers: d(0),
            bytes_to_peers: d(1),
            to_clients: d(2),
            bytes_to_clients: d(3),
            over_budget: 0,
        };
        if relayed.bytes_to_peers > 0 || relayed.bytes_to_clients > 0 {
            let owed = self.spent.entry(ch.allocation).or_insert([0; 2]);
            owed[0] = owed[0].saturating_add(relayed.bytes_to_peers);
            owed[1] = owed[1].saturating_add(relayed.bytes_to_clients);
        }
        (relayed, now)
    }

    fn uninstall(&mut self, ch: Installed) -> Relayed {
        let (relayed, _) = self.collect(&ch);
        let _ = self.to_peer.remove(&ch.client_key);
        self.remove_peer_entry(&ch);
        self.release_meters(&ch.meters);
        relayed
    }

    /// Removes `ch`'s entry for its peer, unless another channel of the same relayed
    /// address and peer has taken it over since (its relayed port given to another
    /// allocation after this one's deadline passed).
    fn remove_peer_entry(&mut self, ch: &Installed) {
        if self
            .to_client
            .get(&ch.peer_key, 0)
            .is_ok_and(|h| hop_until(&h) == ch.until_ns)
        {
            let _ = self.to_client.remove(&ch.peer_key);
        }
    }

    fn hold_meter(&mut self, key: u64, budget: Option<Budget>) {
        if key == 0 {
            return;
        }
        let refs = self.meter_refs.entry(key).or_insert(0);
        *refs += 1;
        if *refs == 1 {
            let _ = self.meters.insert(key, meter(budget), 0);
        }
    }

    fn release_meters(&mut self, keys: &[u64; 4]) {
        for &key in keys {
            if key == 0 {
                continue;
            }
            if let Some(refs) = self.meter_refs.get_mut(&key) {
                *refs = refs.saturating_sub(1);
                if *refs == 0 {
                    self.meter_refs.remove(&key);
                    let _ = self.meters.remove(&key);
                }
            }
        }
    }

    /// A meter's rate, its state kept.
    fn set_meter_budget(&mut self, key: u64, budget: Option<Budget>) {
        if key == 0 {
            return;
        }
        let Ok(old) = self.meters.get(&key, 0) else {
            return;
        };
        let mut value = meter(budget);
        if let (Some(tat), Some(dst)) = (old.get(..8), value.get_mut(..8)) {
            dst.copy_from_slice(tat);
        }
        let _ = self.meters.insert(key, value, 0);
    }
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<BpfHashMap<MapData, K, V>, String> {
    let map = ebpf.take_map(name).ok_or(format!("no map {name}"))?;
    BpfHashMap::try_from(map).map_err(|e: MapError| format!("map {name}: {e}"))
}

/// Every interface a packet for the relay may come in on: Ethernet and loopback devices
/// (the program reads Ethernet framing; other link types are left to user space).
fn relay_interfaces() -> Result<Vec<String>, String> {
    let dir = std::fs::read_dir("/sys/class/net").map_err(|e| format!("/sys/class/net: {e}"))?;
    let mut names = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = std::fs::read_to_string(entry.path().join("type")).unwrap_or_default();
        // ARPHRD_ETHER and ARPHRD_LOOPBACK.
        if matches!(kind.trim(), "1" | "772") {
            names.push(name);
        }
    }
    names.sort();
    if names.is_empty() {
        return Err("no Ethernet or loopback interface".into());
    }
    Ok(names)
}

fn client_key(
    client: Ipv4Addr,
    client_port: u16,
    server: Ipv4Addr,
    server_port: u16,
    channel: u16,
) -> ClientKey {
    let mut k = [0u8; 16];
    put(&mut k, 0, &client.octets());
    put(&mut k, 4, &server.octets());
    put(&mut k, 8, &client_port.to_be_bytes());
    put(&mut k, 10, &server_port.to_be_bytes());
    put(&mut k, 12, &channel.to_be_bytes());
    k
}

fn peer_key(peer: Ipv4Addr, peer_port: u16, relay: Ipv4Addr, relay_port: u16) -> PeerKey {
    let mut k = [0u8; 12];
    put(&mut k, 0, &peer.octets());
    put(&mut k, 4, &relay.octets());
    put(&mut k, 8, &peer_port.to_be_bytes());
    put(&mut k, 10, &relay_port.to_be_bytes());
    k
}

/// One direction's entry, as the program's `struct hop` lays it out.
struct Hop {
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    /// The channel header to put in front (toward the client; 0 toward the peer).
    channel: u16,
    until_ns: u64,
    /// The allocation's and the user's meter (0: none).
    meters: [u64; 2],
    way: Egress,
    /// The interface packets for this entry must come in by: the way back to their sender.
    from_ifindex: u16,
}

impl Hop {
    fn encode(&self) -> HopValue {
        let mut h = [0u8; 64];
        put(&mut h, 0, &self.src.0.octets());
        put(&mut h, 4, &self.dst.0.octets());
        put(&mut h, 8, &self.src.1.to_be_bytes());
        put(&mut h, 10, &self.dst.1.to_be_bytes());
        put(&mut h, 12, &self.channel.to_be_bytes());
        put(&mut h, 16, &self.until_ns.to_ne_bytes());
        put(&mut h, 24, &self.meters[0].to_ne_bytes());
        put(&mut h, 32, &self.meters[1].to_ne_bytes());
        put(&mut h, 56, &self.way.ifindex.to_ne_bytes());
        put(&mut h, 60, &self.way.mtu.to_ne_bytes());
        put(&mut h, 62, &self.from_ifindex.to_ne_bytes());
        h
    }
}

/// The interface a datagram to some address leaves by, and its MTU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Egress {
    ifindex: u32,
    mtu: u16,
}

/// The way out to `dst`, as the host would send a datagram there: to an address of this
/// host (a loopback one, or any interface's) by the loopback device; a broadcast or
/// multicast address by nobody (user space, which refuses it, decides); anything else by
/// the main routing table (`/proc/net/route`: the longest prefix, then the lowest metric).
fn egress(routes: &Routes, dst: Ipv4Addr) -> Option<Egress> {
    if dst.is_broadcast() || dst.is_multicast() || dst.is_unspecified() {
        return None;
    }
    let kind = address_kind(&routes.trie, dst);
    if dst.is_loopback() || kind == Some("LOCAL") {
        return Some(Egress {
            ifindex: LOOPBACK_IFINDEX,
            mtu: u16::MAX,
        });
    }
    if kind == Some("BROADCAST") {
        return None;
    }
    let iface = best_route(&routes.table, dst)?;
    let sys = |what: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{iface}/{what}"))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(Egress {
        ifindex: u32::try_from(sys("ifindex")?).ok()?,
        mtu: u16::try_from(sys("mtu")?).unwrap_or(u16::MAX),
    })
}

const LOOPBACK_IFINDEX: u32 = 1;

/// What `/proc/net/fib_trie` says `dst` is when it names it as a host entry: `LOCAL` (an
/// address of this host) or `BROADCAST` (a subnet's broadcast address).
fn address_kind(trie: &str, dst: Ipv4Addr) -> Option<&'static str> {
    let mut lines = trie.lines();
    let wanted = dst.to_string();
    while let Some(line) = lines.next() {
        if line.trim_start().strip_prefix("|-- ") != Some(wanted.as_str()) {
            continue;
        }
        // The entry's kinds follow it, one per line ("/32 host LOCAL").
        for kind_line in lines.by_ref() {
            let kind_line = kind_line.trim_start();
            if !kind_line.starts_with('/') {
                break;
            }
            if kind_line.starts_with("/32 ") {
                if kind_line.ends_with(" LOCAL") {
                    return Some("LOCAL");
                }
                if kind_line.ends_with(" BROADCAST") {
                    return Some("BROADCAST");
                }
            }
        }
        return None;
    }
    None
}

/// The interface of the route `table` (`/proc/net/route`'s text) gives `dst`.
fn best_route(table: &str, dst: Ipv4Addr) -> Option<String> {
    const RTF_UP: u32 = 1;
    // Addresses are printed as the hex of the in-memory (network order) word.
    let addr = |hex: &str| {
        u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    let dst = u32::from(dst);
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, net, flags, metric, mask) = (
                f.first()?,
                addr(f.get(1)?)?,
                f.get(3)?,
                f.get(6)?,
                addr(f.get(7)?)?,
            );
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let metric: u32 = metric.parse().ok()?;
            let (net, mask) = (u32::from(net), u32::from(mask));
            (flags & RTF_UP != 0 && dst & mask == net)
                .then(|| (mask.count_ones(), metric, iface.to_string()))
        })
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, _, iface)| iface)
}

fn hop_until(h: &HopValue) -> u64 {
    word(h, 16)
}

/// A hop's packets and bytes.
fn counters(h: &HopValue) -> (u64, u64) {
    (word(h, 40), word(h, 48))
}

fn meter(budget: Option<Budget>) -> MeterValue {
    let (rate, burst) = match budget {
        None => (UNLIMITED, Duration::ZERO),
        Some(b) => (b.bytes_per_sec(), b.burst()),
    };
    let mut m = [0u8; 24];
    put(&mut m, 8, &rate.to_ne_bytes());
    let burst = u64::try_from(burst.as_nanos()).unwrap_or(u64::MAX);
    put(&mut m, 16, &burst.to_ne_bytes());
    m
}

/// A meter's key: `id` (an allocation's or a user's, from one counter) and the direction;
/// 0 (no meter) for an unlimited budget.
fn meter_key(id: u64, direction: Direction, budget: Option<Budget>) -> u64 {
    match budget {
        None => 0,
        Some(_) => (id << 1) | direction as u64,
    }
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

fn word(buf: &[u8], at: usize) -> u64 {
    buf.get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_ne_bytes)
}

/// `at` on the kernel's monotonic clock (what `bpf_ktime_get_ns` reads), in nanoseconds.
fn kernel_clock(at: Instant) -> u64 {
    let now = super::super::clock::now();
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let now_ns = u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0));
    let ahead = u64::try_from(at.saturating_duration_since(now).as_nanos()).unwrap_or(u64::MAX);
    now_ns.saturating_add(ahead)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_hops_are_laid_out_as_the_program_reads_them() {
        let c = client_key(
            [10, 0, 0, 1].into(),
            0x1234,
            [10, 0, 0, 2].into(),
            3478,
            0x4001,
        );
        assert_eq!(
            c,
            [10, 0, 0, 1, 10, 0, 0, 2, 0x12, 0x34, 0x0d, 0x96, 0x40, 0x01, 0, 0]
        );
        let p = peer_key([10, 0, 0, 3].into(), 5000, [10, 0, 0, 2].into(), 50000);
        assert_eq!(p, [10, 0, 0, 3, 10, 0, 0, 2, 0x13, 0x88, 0xc3, 0x50]);
        let h = Hop {
            src: ([1, 2, 3, 4].into(), 1),
            dst: ([5, 6, 7, 8].into(), 2),
            channel: 0x4002,
            until_ns: 77,
            meters: [9, 11],
            way: Egress {
                ifindex: 3,
                mtu: 1500,
            },
            from_ifindex: 7,
        }
        .encode();
        assert_eq!(
            h.get(..14),
            Some(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2, 0x40, 0x02][..])
        );
        assert_eq!((hop_until(&h), word(&h, 24), word(&h, 32)), (77, 9, 11));
        assert_eq!(counters(&h), (0, 0));
        assert_eq!(h.get(56..64), Some(&[3, 0, 0, 0, 0xdc, 0x05, 7, 0][..]));
    }

    #[test]
    fn the_way_out_is_the_longest_matching_route() {
        // /proc/net/route as a little-endian host prints it.
        let table =
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            eth1\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth2\t0002000A\t00000000\t0001\t0\t0\t50\t00FFFFFF\t0\t0\t0\n\
            down0\t0202000A\t00000000\t0000\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n";
        if cfg!(target_endian = "little") {
            assert_eq!(
                best_route(table, [10, 0, 2, 2].into()).as_deref(),
                Some("eth1")
            );
            assert_eq!(
                best_route(table, [192, 0, 2, 7].into()).as_deref(),
                Some("eth0")
            );
        }
        assert_eq!(
            best_route("Iface\tDestination\n", [10, 0, 2, 2].into()),
            None
        );
    }

    #[test]
    fn local_and_broadcast_addresses_are_told_apart_from_routed_ones() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n\
            \x20    +-- 192.0.2.0/24 2 0 2\n        +-- 192.0.2.0/30 2 0 2\n\
            \x20          |-- 192.0.2.0\n              /24 link UNICAST\n\
            \x20          |-- 192.0.2.2\n              /32 host LOCAL\n\
            \x20       |-- 192.0.2.255\n           /32 link BROADCAST\n";
        assert_eq!(address_kind(trie, [192, 0, 2, 2].into()), Some("LOCAL"));
        assert_eq!(
            address_kind(trie, [192, 0, 2, 255].into()),
            Some("BROADCAST")
        );
        assert_eq!(address_kind(trie, [192, 0, 2, 0].into()), None);
        assert_eq!(address_kind(trie, [192, 0, 2, 9].into()), None);
        let mut routes = Routes::default();
        let routes = routes.fresh();
        assert_eq!(egress(routes, [255, 255, 255, 255].into()), None);
        assert_eq!(egress(routes, [224, 0, 0, 1].into()), None);
        assert_eq!(
            egress(routes, [127, 0, 0, 9].into()).map(|e| e.ifindex),
            Some(LOOPBACK_IFINDEX)
        );
    }

    #[test]
    fn meters_carry_the_budget_and_unlimited_has_no_meter() {
        let b = Budget::kbit(8);
        let m = meter(b);
        assert_eq!(
            (word(&m, 0), word(&m, 8), word(&m, 16)),
            (0, 1000, 1_000_000_000)
        );
        assert_eq!(word(&meter(None), 8), UNLIMITED);
        assert_eq!(meter_key(5, Direction::ToClient, b), 11);
        assert_eq!(meter_key(5, Direction::ToPeer, b), 10);
        assert_eq!(meter_key(5, Direction::ToPeer, None), 0);
    }

    #[test]
    fn deadlines_are_on_the_kernels_clock() {
        let now = super::super::super::clock::now();
        let a = kernel_clock(now + Duration::from_secs(10));
        let b = kernel_clock(now + Duration::from_secs(20));
        let diff = b.saturating_sub(a);
        assert!(diff > 9_990_000_000 && diff < 10_010_000_000, "{diff}");
    }
}
