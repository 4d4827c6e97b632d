//! The `[relay]` table: the TURN relay's listeners and their zones, relayed addresses and
//! ports, credentials, quotas, bandwidth, peer policy and TCP client bounds; and the check
//! that every relay listener's zone follows from an interface.

use super::fields::{ip_list, prefix_list, secs, specific_ip, valid_dns_name};
use crate::topology::model::{Relay, Topology};
use crate::topology::reader::{Doc, Section};

pub(super) const RELAY_KEYS: &[&str] = &[
    "host",
    "udp_port",
    "tcp_port",
    "credential_lifetime",
    "listen_udp",
    "listen_tcp",
    "tls_port",
    "listen_tls",
    "relay_ip",
    "public_ip",
    "port_min",
    "port_max",
    "allow_loopback_peers",
    "realm",
    "max_allocations_per_user",
    "max_allocations_per_source",
    "max_allocations",
    "max_kbps_per_allocation",
    "max_kbps_per_user",
    "internal_ranges",
    "allow_peers",
    "deny_peers",
    "external_addresses",
    "internal_addresses",
    "max_tcp_clients",
    "tcp_auth_timeout",
    "max_queued_bytes_per_client",
    "unauthenticated_bytes_per_second",
    "max_permissions_per_allocation",
    "max_channels_per_allocation",
    "workers",
    "kernel_offload",
    "kernel_offload_interfaces",
    "permission_lifetime",
    "channel_lifetime",
];

/// `Some(None)` without a `[relay]` table; `None` on a problem.
pub(super) fn read_relay(doc: &mut Doc<'_>, root: Section<'_, '_>) -> Option<Option<Relay>> {
    let s = doc.table(root, "relay", RELAY_KEYS, false);
    if !s.present() {
        return Some(None);
    }
    let host = doc.string(s, "host", true).and_then(|(host, line)| {
        let host = host.to_ascii_lowercase();
        if valid_dns_name(&host) || host.parse::<std::net::IpAddr>().is_ok() {
            Some(host)
        } else {
            doc.problem(
                line,
                s.key("host"),
                format!("\"{host}\" is neither a DNS name nor an IP address"),
            );
            None
        }
    });
    let port = |doc: &mut Doc<'_>, key, default| {
        u16::try_from(doc.integer(s, key, (1, 65_535), default)).unwrap_or(1)
    };
    let udp_port = port(doc, "udp_port", 3478);
    let tcp_port = port(doc, "tcp_port", 443);
    let credential_lifetime = doc.duration(
        s,
        "credential_lifetime",
        (
            secs(60),
            secs(crate::core::keyring::MAX_CREDENTIAL_LIFETIME_SECS),
        ),
        secs(crate::core::credentials::DEFAULT_LIFETIME_SECS),
    );
    let listen_udp = doc.socket_addr_list(s, "listen_udp", false).map(|(l, _)| l);
    let listen_tcp = doc.socket_addr_list(s, "listen_tcp", false).map(|(l, _)| l);
    // TURN over TLS only when asked for: a port clients are told about.
    let tls_port = s.has("tls_port").then(|| port(doc, "tls_port", 5349));
    let listen_tls = doc.socket_addr_list(s, "listen_tls", false).map(|(l, _)| l);
    if tls_port.is_none() && listen_tls.as_ref().is_some_and(|l| !l.is_empty()) {
        let line = doc.line_of_key(s, "listen_tls");
        doc.problem(
            line,
            s.key("listen_tls"),
            "needs relay.tls_port (the port turns: URIs advertise)",
        );
    }
    let ip = |doc: &mut Doc<'_>, key: &str| -> Option<Option<std::net::IpAddr>> {
        match doc.string(s, key, false) {
            None if s.has(key) => None,
            None => Some(None),
            Some((text, line)) => match specific_ip(&text) {
                Ok(ip) => Some(Some(ip)),
                Err(why) => {
                    doc.problem(line, s.key(key), why);
                    None
                }
            },
        }
    };
    let relay_ip = ip(doc, "relay_ip");
    let public_ip = ip(doc, "public_ip");
    let port_min = port(doc, "port_min", 50_000);
    let port_max = port(doc, "port_max", 59_999);
    if port_min > port_max {
        let line = doc.line_of_key(s, "port_max");
        doc.problem(line, s.key("port_max"), "must be at least relay.port_min");
    }
    let allow_loopback_peers = doc
        .boolean(s, "allow_loopback_peers")
        .is_some_and(|(b, _)| b);
    let realm = doc
        .string(s, "realm", false)
        .map(|(r, _)| r.to_ascii_lowercase());
    let quota = |doc: &mut Doc<'_>, key, default| {
        usize::try_from(doc.integer(s, key, (1, 1_000_000), default)).unwrap_or(1)
    };
    let max_allocations_per_user = quota(doc, "max_allocations_per_user", 10);
    let max_allocations_per_source = quota(doc, "max_allocations_per_source", 50);
    let max_allocations = quota(doc, "max_allocations", 10_000);
    let kbps = |doc: &mut Doc<'_>, key, default| doc.integer(s, key, (0, 100_000_000), default);
    let max_kbps_per_allocation = kbps(doc, "max_kbps_per_allocation", 3000);
    let max_kbps_per_user = kbps(doc, "max_kbps_per_user", 10_000);
    let internal_ranges = prefix_list(doc, s, "internal_ranges");
    let allow_peers = prefix_list(doc, s, "allow_peers");
    let deny_peers = prefix_list(doc, s, "deny_peers");
    let external_addresses = ip_list(doc, s, "external_addresses");
    let internal_addresses = ip_list(doc, s, "internal_addresses");
    let max_tcp_clients = quota(doc, "max_tcp_clients", 4096);
    let tcp_auth_timeout = doc.duration(s, "tcp_auth_timeout", (secs(1), secs(300)), secs(10));
    let max_queued_bytes_per_client = usize::try_from(doc.integer(
        s,
        "max_queued_bytes_per_client",
        (16 * 1024, 64 * 1024 * 1024),
        256 * 1024,
    ))
    .unwrap_or(256 * 1024);
    let unauthenticated_bytes_per_second = doc.integer(
        s,
        "unauthenticated_bytes_per_second",
        (0, 100_000_000),
        8 * 1024,
    );
    let max_permissions_per_allocation =
        usize::try_from(doc.integer(s, "max_permissions_per_allocation", (1, 4096), 64))
            .unwrap_or(64);
    let max_channels_per_allocation =
        usize::try_from(doc.integer(s, "max_channels_per_allocation", (1, 4096), 64)).unwrap_or(64);
    let workers = usize::try_from(doc.integer(s, "workers", (0, 64), 0)).unwrap_or(0);
    let kernel_offload = doc.boolean(s, "kernel_offload").is_some_and(|(b, _)| b);
    let kernel_offload_interfaces = match doc.string_list(s, "kernel_offload_interfaces", false) {
        None if s.has("kernel_offload_interfaces") => None,
        None => Some(Vec::new()),
        Some((names, line)) => {
            // An interface name as the kernel takes it (IFNAMSIZ, no '/', no blank).
            let bad = names.iter().find(|n| {
                n.is_empty()
                    || n.len() > 15
                    || n.contains('/')
                    || n.chars().any(|c| c.is_whitespace() || c.is_control())
            });
            match bad {
                Some(bad) => {
                    doc.problem(
                        line,
                        s.key("kernel_offload_interfaces"),
                        format!("\"{bad}\" is not an interface name"),
                    );
                    None
                }
                None => Some(names),
            }
        }
    };
    // RFC 8656's lifetimes (300 s, 600 s) by default; coturn lets them be set too.
    let permission_lifetime =
        doc.duration(s, "permission_lifetime", (secs(1), secs(3600)), secs(300));
    let channel_lifetime = doc.duration(s, "channel_lifetime", (secs(1), secs(3600)), secs(600));
    Some(Some(Relay {
        host: host?,
        udp_port,
        tcp_port,
        credential_lifetime,
        listen_udp: listen_udp.unwrap_or_default(),
        listen_tcp: listen_tcp.unwrap_or_default(),
        tls_port,
        listen_tls: listen_tls.unwrap_or_default(),
        relay_ip: relay_ip?,
        public_ip: public_ip?,
        port_min,
        port_max,
        allow_loopback_peers,
        realm,
        max_allocations_per_user,
        max_allocations_per_source,
        max_allocations,
        max_kbps_per_allocation,
        max_kbps_per_user,
        internal_ranges: internal_ranges?,
        allow_peers: allow_peers?,
        deny_peers: deny_peers?,
        external_addresses: external_addresses?,
        internal_addresses: internal_addresses?,
        max_tcp_clients,
        tcp_auth_timeout,
        max_queued_bytes_per_client,
        unauthenticated_bytes_per_second,
        max_permissions_per_allocation,
        max_channels_per_allocation,
        workers,
        kernel_offload,
        kernel_offload_interfaces: kernel_offload_interfaces?,
        permission_lifetime,
        channel_lifetime,
    }))
}

/// Every relay listener's zone follows from the interface its address is on; an address
/// on neither (a second public address, the external NIC's IPv6 address) or on both is
/// refused: a zone is never guessed.
pub(super) fn check_relay_zones(doc: &mut Doc<'_>, root: Section<'_, '_>, t: &Topology) {
    let Some(relay) = &t.relay else { return };
    let section = doc.peek(root, "relay");
    // A relay may reach another allocation on its own address (relayed ports only): no
    // listener of the edge may sit in that range on that address.
    let relay_ips = [
        relay.relay_ip.unwrap_or(t.external.sip_bind.ip()),
        relay
            .public_ip
            .unwrap_or(relay.relay_ip.unwrap_or(t.external.sip_bind.ip())),
    ];
    let or_both =
        |given: &[std::net::SocketAddr], port: Option<u16>| -> Vec<std::net::SocketAddr> {
            match (given.is_empty(), port) {
                (false, _) => given.to_vec(),
                (true, Some(port)) => vec![
                    std::net::SocketAddr::new(t.external.sip_bind.ip(), port),
                    std::net::SocketAddr::new(t.internal.sip_bind.ip(), port),
                ],
                (true, None) => Vec::new(),
            }
        };
    let mut listeners = vec![t.external.sip_bind, t.internal.sip_bind];
    listeners.extend(t.operations.as_ref().map(|o| o.listen));
    listeners.extend(or_both(&relay.listen_udp, Some(relay.udp_port)));
    listeners.extend(or_both(&relay.listen_tcp, Some(relay.tcp_port)));
    listeners.extend(or_both(&relay.listen_tls, relay.tls_port));
    let range = relay.port_min..=relay.port_max;
    if let Some(inside) = listeners
        .iter()
        .find(|l| relay_ips.contains(&l.ip()) && range.contains(&l.port()))
    {
        let line = doc.line_of_key(section, "port_min");
        doc.problem(
            line,
            "relay.port_min",
            format!(
                "the relayed ports include {inside}, a listener of the edge on the relay's \
                 address (relays reach each other's ports there): keep the range apart"
            ),
        );
    }
    for ip in &relay.external_addresses {
        if relay.internal_addresses.contains(ip) || *ip == t.internal.sip_bind.ip() {
            let line = doc.line_of_key(section, "external_addresses");
            doc.problem(
                line,
                "relay.external_addresses",
                format!("{ip} is an internal address too: one address, one zone"),
            );
        }
    }
    for (key, list) in [
        ("listen_udp", &relay.listen_udp),
        ("listen_tcp", &relay.listen_tcp),
        ("listen_tls", &relay.listen_tls),
    ] {
        for addr in list {
            if t.listener_zone(addr.ip()).is_some() {
                continue;
            }
            // (Wildcards are refused where the list is read.)
            let line = doc.line_of_key(section, key);
            doc.problem(
                line,
                format!("relay.{key}"),
                format!(
                    "{addr} is on neither interface (or on both): name its zone in \
                     relay.external_addresses or relay.internal_addresses"
                ),
            );
        }
    }
}
