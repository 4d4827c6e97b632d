//! The TURN server's settings: what the topology decides (addresses, ports, lifetimes,
//! quotas, bandwidth budgets, peer policy) and RFC 8656's defaults for the rest.

use std::net::IpAddr;
use std::time::Duration;

use crate::core::turn::bandwidth::Budget;
use crate::core::turn::policy::PeerPolicy;
use crate::core::turn::strangers::StrangerLimits;

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
    /// How long an Allocate waits for the pool's answer before it is decided on what this
    /// member knows (the pool's timeout).
    pub pool_ask_timeout: Duration,
    /// Whether established UDP channels are handed to the kernel path
    /// ([`Output::KernelChannel`](super::Output::KernelChannel)).
    pub kernel_offload: bool,
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
            pool_ask_timeout: Duration::from_millis(500),
            kernel_offload: false,
        }
    }
}
