//! The topology as the core and the shell take it: connection, call and firewall limits,
//! the proxy's, the relay's and the partners' configurations, the key ring. Pure
//! translation (and the ring file read); start-up and reload call it.

use std::net::SocketAddr;
use std::sync::Arc;

use super::error::StartError;
use super::ring::LiveRing;
use super::shared::ConnLimits;
use super::{clock, dns, keyfile, partners};
use crate::core::firewall::{Rate, SourcePolicy};
use crate::core::keyring::Ring;
use crate::core::sip::calls::CallLimits;
use crate::core::sip::federation::{Federation, Partner};
use crate::core::sip::frame::FrameLimits;
use crate::core::sip::parse::HeadLimits;
use crate::core::sip::proxy::{ProxyConfig, SideAddr};
use crate::core::sip::session::SessionLimits;
use crate::tls::DevNames;
use crate::topology::{CaSource, CertSource, KeysSource, Topology};

/// The connection limits of a topology.
pub(super) fn conn_limits(topology: &Topology) -> ConnLimits {
    let limits = &topology.limits;
    ConnLimits {
        session: SessionLimits {
            frame: FrameLimits {
                head: HeadLimits {
                    max_headers: limits.max_headers,
                    max_line_bytes: limits.max_line_bytes,
                },
                max_header_bytes: limits.max_header_bytes,
                max_body_bytes: limits.max_body_bytes,
            },
            idle_timeout: limits.idle_timeout,
            header_timeout: limits.header_timeout,
            connection_requests: Rate {
                per_sec: topology.firewall.connection_request_rate,
                burst: topology.firewall.connection_request_burst,
            },
            max_outstanding: limits.max_outstanding,
            max_calls_per_source: limits.max_calls_per_source,
        },
        handshake_timeout: limits.handshake_timeout,
        max_connections: limits.max_connections,
        max_handshakes: limits.max_handshakes,
        write_timeout: limits.write_timeout,
        max_queued_bytes: limits.max_queued_bytes,
    }
}

/// The call table's bounds from a topology.
pub(super) fn call_limits(topology: &Topology) -> CallLimits {
    CallLimits {
        max_calls: topology.limits.max_calls,
        max_duration: topology.limits.max_call_duration,
    }
}

/// The TURN server's settings and listeners from the topology: listeners default to both
/// interfaces on the advertised UDP port; a listener's zone is that of its address.
/// Listener addresses with the zone each serves.
pub(super) type ZonedListeners = Vec<(SocketAddr, crate::core::turn::policy::Origin)>;

pub(super) fn turn_config(
    t: &Topology,
    relay: &crate::topology::Relay,
    ext: SocketAddr,
    int: SocketAddr,
) -> (
    crate::core::turn::server::TurnConfig,
    ZonedListeners,
    ZonedListeners,
    ZonedListeners,
) {
    use crate::core::turn::bandwidth::Budget;
    use crate::core::turn::policy::{Origin, PeerPolicy};
    let relay_ip = relay.relay_ip.unwrap_or(ext.ip());
    let public_ip = relay.public_ip.unwrap_or(relay_ip);
    let realm = relay
        .realm
        .clone()
        .or_else(|| t.edge.sip_domains.first().cloned())
        .unwrap_or_else(|| t.edge.pool_fqdn.clone());
    let mut cfg = crate::core::turn::server::TurnConfig::new(
        &realm,
        relay_ip,
        public_ip,
        (relay.port_min, relay.port_max),
    );
    cfg.max_credential_lifetime_secs = relay.credential_lifetime.as_secs();
    cfg.max_allocations_per_user = relay.max_allocations_per_user;
    if let Some(pool) = &t.pool {
        // The pool's task gives up on Redis at its timeout and says so; the core's own
        // deadline a little later is the backstop.
        cfg.pool_ask_timeout = pool.timeout + std::time::Duration::from_millis(100);
    }
    cfg.max_allocations_per_source = relay.max_allocations_per_source;
    cfg.max_allocations = relay.max_allocations;
    cfg.bandwidth_per_allocation = Budget::kbit(relay.max_kbps_per_allocation);
    cfg.bandwidth_per_user = Budget::kbit(relay.max_kbps_per_user);
    cfg.max_permissions_per_allocation = relay.max_permissions_per_allocation;
    cfg.max_channels_per_allocation = relay.max_channels_per_allocation;
    cfg.permission_lifetime = relay.permission_lifetime;
    cfg.channel_lifetime = relay.channel_lifetime;
    cfg.kernel_offload = relay.kernel_offload;
    cfg.strangers.bytes_per_sec = relay.unauthenticated_bytes_per_second;
    // The stranger table is bounded like the firewall's source table.
    cfg.strangers.max_sources = t.firewall.max_sources;
    // Listeners default to both interfaces on the advertised port.
    let or_both = |given: &[SocketAddr], port: u16| -> Vec<SocketAddr> {
        if given.is_empty() {
            vec![
                SocketAddr::new(ext.ip(), port),
                SocketAddr::new(int.ip(), port),
            ]
        } else {
            given.to_vec()
        }
    };
    let listen = or_both(&relay.listen_udp, relay.udp_port);
    // The interface the address is on; `check` refuses a topology where that is unclear,
    // and anything that still is gets the strict (external) policy.
    let zone = |a: SocketAddr| {
        let origin = match t.listener_zone(a.ip()) {
            Some(crate::topology::ListenerZone::Internal) => Origin::Internal,
            Some(crate::topology::ListenerZone::External) | None => Origin::External,
        };
        (a, origin)
    };
    let listen_tcp = or_both(&relay.listen_tcp, relay.tcp_port);
    let listen_tls = match relay.tls_port {
        Some(port) => or_both(&relay.listen_tls, port),
        None => Vec::new(),
    };
    // A relay must not loop into the edge itself: every address it owns is refused. The
    // host's own addresses too, configured or not (a secondary address, an IPv6 SLAAC or
    // temporary one, a bridge's): a datagram to any of them is delivered locally, to every
    // service bound to the wildcard address, past the host firewall's loopback rules.
    let mut own = vec![ext.ip(), int.ip(), relay_ip, public_ip];
    own.extend(
        listen
            .iter()
            .chain(&listen_tcp)
            .chain(&listen_tls)
            .map(|a| a.ip()),
    );
    own.extend(
        relay
            .external_addresses
            .iter()
            .chain(&relay.internal_addresses),
    );
    // (A test on one host, allow_loopback_peers, has its peers on the host itself: there
    // only the addresses the topology names stay the edge's own.)
    if !relay.allow_loopback_peers {
        own.extend(super::listen::host_addresses());
    }
    own.sort();
    own.dedup();
    cfg.policy = PeerPolicy {
        allow_loopback: relay.allow_loopback_peers,
        allow_internal: relay.allow_peers.clone(),
        internal: relay.internal_ranges.clone(),
        deny: relay.deny_peers.clone(),
        own,
        // Another allocation of this relay: two remote users of one edge, each behind its
        // relay, reach each other only there.
        relayed: {
            let mut r = vec![relay_ip, public_ip];
            r.dedup();
            r
        },
        relayed_ports: (relay.port_min, relay.port_max),
    };
    (
        cfg,
        listen.into_iter().map(zone).collect(),
        listen_tcp.into_iter().map(zone).collect(),
        listen_tls.into_iter().map(zone).collect(),
    )
}

/// The pool key ring, live: the file the topology names, or a dev ring under `state_dir`
/// generated on first start.
pub(super) fn load_ring(t: &Topology) -> Result<Option<LiveRing>, StartError> {
    match &t.keys {
        None => Ok(None),
        Some(KeysSource::File(path)) => Ok(Some(LiveRing::new(keyfile::load(path)?, path.clone()))),
        Some(KeysSource::Dev) => {
            let path = t.state_dir.join("ring.toml");
            if !path.exists() {
                std::fs::create_dir_all(&t.state_dir).map_err(|source| {
                    keyfile::KeyFileError::Io {
                        path: t.state_dir.clone(),
                        source,
                    }
                })?;
                let ring = Ring::init(keyfile::random_secret()?, clock::now_unix());
                keyfile::store(&path, &ring, true)?;
                tracing::info!(path = %path.display(), "generated a dev key ring");
            }
            Ok(Some(LiveRing::new(keyfile::load(&path)?, path)))
        }
    }
}

pub(super) fn source_policy(f: &crate::topology::Firewall) -> SourcePolicy {
    SourcePolicy {
        connect_rate: Rate {
            per_sec: f.connect_rate,
            burst: f.connect_burst,
        },
        max_connections: f.connections_per_source,
        request_rate: Rate {
            per_sec: f.request_rate,
            burst: f.request_burst,
        },
        ban_after: f.ban_after,
        strike_window: f.strike_window,
        ban_time: f.ban_time,
        allow: f.allow_sources.clone(),
        max_sources: f.max_sources,
    }
}

/// The names the dev PKI must cover for this topology.
pub fn dev_names(t: &Topology) -> DevNames {
    let mut external = vec![t.edge.pool_fqdn.clone(), t.external.sip_host.clone()];
    external.push(t.external.sip_bind.ip().to_string());
    // TURN over TLS serves the external certificate: it names the relay's host too.
    if let Some(relay) = t.relay.as_ref().filter(|r| r.tls_port.is_some()) {
        external.push(relay.host.clone());
    }
    let mut internal = vec![
        t.internal.sip_host.clone(),
        t.internal.sip_bind.ip().to_string(),
    ];
    internal.push(format!("{}.internal", t.edge.name));
    let director = vec![t.next_hop.server_name.clone()];
    for v in [&mut external, &mut internal] {
        for name in v.iter_mut() {
            *name = name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
        }
        v.sort();
        v.dedup();
    }
    DevNames {
        external,
        internal,
        director,
    }
}

pub(super) fn uses_dev_pki(t: &Topology) -> bool {
    t.external.cert == CertSource::Dev
        || t.internal.cert == CertSource::Dev
        || t.internal.ca == CaSource::Dev
}

pub(super) fn proxy_config(t: &Topology, ext: SocketAddr, int: SocketAddr) -> ProxyConfig {
    let host_of = |addr: SocketAddr| match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let mut own_hosts = vec![
        t.external.sip_host.to_ascii_lowercase(),
        t.internal.sip_host.to_ascii_lowercase(),
        t.edge.pool_fqdn.to_ascii_lowercase(),
        host_of(ext),
        host_of(int),
    ];
    own_hosts.sort();
    own_hosts.dedup();
    let mut external_hosts = vec![
        t.external.sip_host.to_ascii_lowercase(),
        t.edge.pool_fqdn.to_ascii_lowercase(),
        host_of(ext),
    ];
    external_hosts.sort();
    external_hosts.dedup();
    ProxyConfig {
        external_hosts,
        strip_headers: t.firewall.strip_headers.clone(),
        next_hops: t.next_hop.members.clone(),
        external: SideAddr {
            host: t.external.sip_host.clone(),
            port: ext.port(),
        },
        internal: SideAddr {
            host: t.internal.sip_host.clone(),
            port: int.port(),
        },
        own_hosts,
        served_domains: t
            .edge
            .sip_domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect(),
        federation: federation_of(t),
    }
}

/// The core's view of the topology's partners.
pub(super) fn federation_of(t: &Topology) -> Federation {
    let partners = t.federation.iter().flat_map(|f| &f.partners);
    let mut federation = Federation::new(
        partners
            .map(|p| Partner {
                fqdn: p.fqdn.clone(),
                domains: p.domains.clone(),
                // A burst of two seconds' worth: a partner's traffic comes in waves.
                rate: Rate {
                    per_sec: p.rate,
                    burst: p.rate.saturating_mul(2),
                },
                max_dialogs: p.max_dialogs,
            })
            .collect(),
    );
    federation.discovery = t.federation.as_ref().is_some_and(|f| f.discovery);
    federation
}

/// A resolver when some partner has no static addresses.
pub(super) fn partner_dns(
    f: &crate::topology::FederationConfig,
) -> Result<Option<dns::Dns>, StartError> {
    if !f.discovery && f.partners.iter().all(|p| !p.addresses.is_empty()) {
        return Ok(None);
    }
    dns::Dns::new(&f.dns)
        .map(Some)
        .map_err(|e| StartError::Dns(e.to_string()))
}

/// Where each partner edge is reached, in the order of the federation's partners.
pub(super) fn partner_targets(
    f: &crate::topology::FederationConfig,
) -> Result<Vec<partners::StaticEdge>, StartError> {
    f.partners
        .iter()
        .map(|p| {
            let server_name = match &p.fqdn {
                Some(fqdn) => Some(
                    rustls_pki_types::ServerName::try_from(fqdn.clone())
                        .map_err(|_| StartError::ServerName(fqdn.clone()))?,
                ),
                None => None,
            };
            Ok(partners::StaticEdge {
                addresses: p.addresses.clone(),
                server_name,
            })
        })
        .collect()
}

/// Which addresses a discovered partner's edge may have: public unicast ones, as a relay
/// peer from outside, and what `federation.discovery_allow` names; never the edge's own
/// (its listeners, the host's addresses).
fn discovered_address_policy(
    t: &Topology,
    f: &crate::topology::FederationConfig,
) -> partners::DiscoveredAddresses {
    let mut own = vec![t.external.sip_bind.ip(), t.internal.sip_bind.ip()];
    own.extend(super::listen::host_addresses());
    own.sort();
    own.dedup();
    partners::DiscoveredAddresses {
        allow: f.discovery_allow.clone(),
        policy: crate::core::turn::policy::PeerPolicy {
            own,
            ..Default::default()
        },
    }
}

/// Everything about partners that a reload may replace, from the topology.
pub(super) fn partner_config(
    t: &Topology,
    f: &crate::topology::FederationConfig,
) -> Result<partners::Config, StartError> {
    let federation = federation_of(t);
    // federation_of keeps the topology's order: edges pair up with partners.
    let edges = federation
        .iter()
        .map(|(id, _)| id)
        .zip(partner_targets(f)?)
        .collect();
    Ok(partners::Config {
        federation: Arc::new(federation),
        dns: partner_dns(f)?,
        edges,
        discovered_addresses: discovered_address_policy(t, f),
        // A burst of two seconds' worth, as for listed partners.
        discovery: partners::DiscoveryLimits {
            rate: Rate {
                per_sec: f.discovery_rate,
                burst: f.discovery_rate.saturating_mul(2),
            },
            max_dialogs: f.discovery_max_dialogs,
        },
    })
}

#[cfg(test)]
mod host_address_tests {
    use super::*;

    #[test]
    fn a_discovered_edge_may_not_be_the_edge_itself_or_behind_it() {
        let t = crate::topology::embedded_default().unwrap();
        let mut f = crate::topology::FederationConfig {
            ca: None,
            max_connections_per_partner: 4,
            dns: Vec::new(),
            discovery: true,
            discovery_rate: 20,
            discovery_max_dialogs: 100,
            discovery_allow: Vec::new(),
            partners: Vec::new(),
        };
        let check = |f: &crate::topology::FederationConfig, ip: &str| {
            discovered_address_policy(&t, f).allows(ip.parse().unwrap())
        };
        for refused in [
            "127.0.0.1",
            "127.0.0.2",
            "10.0.0.5",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.5",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!check(&f, refused), "{refused}");
        }
        for host in super::super::listen::host_addresses() {
            assert!(!check(&f, &host.to_string()), "the host's own {host}");
        }
        assert!(check(&f, "198.51.100.7"), "a public address");
        assert!(check(&f, "2001:db8::7"));
        // A lab on loopback, a private federation: named, allowed.
        f.discovery_allow = vec![
            crate::core::net::Prefix::parse("127.0.0.0/8").unwrap(),
            crate::core::net::Prefix::parse("10.20.0.0/16").unwrap(),
        ];
        assert!(check(&f, "127.0.3.1"));
        assert!(check(&f, "10.20.1.1"));
        // Named or not, the edge's own addresses never are.
        assert!(
            !check(&f, "127.0.0.1"),
            "the host's own, allowed range or not"
        );
        assert!(!check(&f, "::ffff:127.0.0.1"));
        assert!(!check(&f, "10.0.0.5"), "only what is named");
        assert!(!check(&f, "169.254.169.254"));
    }
}
