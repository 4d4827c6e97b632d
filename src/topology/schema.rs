//! The topology schema: which keys exist, their defaults and ranges, and the cross-checks
//! between them. `topology/README.md` documents the same keys; keep the two in step.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::de::DeTable;

use super::model::*;
use super::reader::{Doc, Section};
use super::StateEnv;

/// Defaults, named so README, examples and code agree.
pub mod defaults {
    use std::time::Duration;

    /// Header block: generous enough for NTLM/Kerberos Authorization headers of remote
    /// Lync/Skype clients, small enough that a flood of maximal heads stays cheap.
    pub const MAX_HEADER_BYTES: u64 = 32 * 1024;
    pub const MAX_BODY_BYTES: u64 = 64 * 1024;
    pub const MAX_HEADERS: u64 = 128;
    /// One header line: a Kerberos token in base64 reaches several KiB.
    pub const MAX_LINE_BYTES: u64 = 8 * 1024;
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Time from the first byte of a message to the end of its header block (slowloris).
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// RFC 5626 clients keep alive every ~2 minutes; Lync's edge uses 30 minutes.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1800);
    /// A peer that stops reading holds at most its queue for this long.
    pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long SIGTERM waits for transactions and calls to finish.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
    /// Per connection: a few hundred typical messages; a slow reader costs no more.
    pub const MAX_QUEUED_BYTES: u64 = 256 * 1024;
    pub const MAX_CONNECTIONS: u64 = 10_000;
    pub const RETRY_AFTER: Duration = Duration::from_secs(30);
    pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
    pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
    pub const PROBE_RISE: u64 = 2;
    pub const PROBE_FALL: u64 = 3;
    pub const EDGE_NAME: &str = "sipedge";
    pub const MAX_HANDSHAKES: u64 = 256;
    pub const MAX_OUTSTANDING: u64 = 10_000;
    /// Calls crossing the edge at once (a Lync Edge is sized for ~12 000 remote users).
    pub const MAX_CALLS: u64 = 50_000;
    /// Calls one external source holds at once (a NAT'd office belongs in allow_sources).
    pub const MAX_CALLS_PER_SOURCE: u64 = 200;
    /// How long an answered call without BYE is counted.
    pub const MAX_CALL_DURATION: Duration = Duration::from_secs(12 * 3600);
    // Per source (IPv4 address or IPv6 /64). A Lync/Skype client signing in sends ~15
    // requests at once (REGISTER, SUBSCRIBEs, SERVICEs); NAT'd offices belong on the allow-list.
    pub const CONNECT_RATE: u64 = 10;
    pub const CONNECT_BURST: u64 = 30;
    pub const CONNECTIONS_PER_SOURCE: u64 = 100;
    pub const REQUEST_RATE: u64 = 100;
    pub const REQUEST_BURST: u64 = 200;
    pub const CONNECTION_REQUEST_RATE: u64 = 20;
    pub const CONNECTION_REQUEST_BURST: u64 = 60;
    pub const BAN_AFTER: u64 = 100;
    pub const STRIKE_WINDOW: Duration = Duration::from_secs(10);
    pub const BAN_TIME: Duration = Duration::from_secs(300);
    pub const MAX_SOURCES: u64 = 100_000;
}

const ROOT_KEYS: &[&str] = &[
    "state_dir",
    "edge",
    "external",
    "internal",
    "next_hop",
    "limits",
    "firewall",
    "operations",
    "keys",
    "relay",
    "federation",
];
const FEDERATION_KEYS: &[&str] = &[
    "ca",
    "max_connections_per_partner",
    "dns",
    "discovery",
    "discovery_rate",
    "discovery_max_dialogs",
    "partners",
];
const PARTNER_KEYS: &[&str] = &["fqdn", "domains", "addresses", "rate", "max_dialogs"];
const KEYS_KEYS: &[&str] = &["ring", "dev"];
const RELAY_KEYS: &[&str] = &[
    "host",
    "udp_port",
    "tcp_port",
    "credential_lifetime",
    "listen_udp",
    "listen_tcp",
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
];
const OPERATIONS_KEYS: &[&str] = &["listen"];
const EDGE_KEYS: &[&str] = &["name", "pool_fqdn", "sip_domains"];
const IFACE_KEYS: &[&str] = &["sip", "sip_host", "tls"];
const EXTERNAL_TLS_KEYS: &[&str] = &[
    "cert",
    "key",
    "pkcs12",
    "password_env",
    "password_file",
    "dev",
];
const INTERNAL_TLS_KEYS: &[&str] = &[
    "cert",
    "key",
    "pkcs12",
    "password_env",
    "password_file",
    "dev",
    "ca",
];
const NEXT_HOP_KEYS: &[&str] = &["members", "server_name", "retry_after", "probe"];
const PROBE_KEYS: &[&str] = &["interval", "timeout", "rise", "fall"];
const LIMIT_KEYS: &[&str] = &[
    "max_header_bytes",
    "max_body_bytes",
    "max_headers",
    "max_line_bytes",
    "handshake_timeout",
    "header_timeout",
    "idle_timeout",
    "write_timeout",
    "max_queued_bytes",
    "max_connections",
    "max_handshakes",
    "max_outstanding",
    "drain_timeout",
    "max_calls",
    "max_calls_per_source",
    "max_call_duration",
];
const FIREWALL_KEYS: &[&str] = &[
    "connect_rate",
    "connect_burst",
    "connections_per_source",
    "request_rate",
    "request_burst",
    "connection_request_rate",
    "connection_request_burst",
    "ban_after",
    "strike_window",
    "ban_time",
    "allow_sources",
    "max_sources",
    "strip_headers",
];

const MAX_MEMBERS: usize = 64;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Reads the whole document; `None` when any problem was recorded in `doc`.
pub(super) fn resolve(
    doc: &mut Doc<'_>,
    root: &DeTable<'_>,
    source: Option<&Path>,
    env: &StateEnv,
) -> Option<Topology> {
    // Relative paths are relative to the topology file, not to wherever the edge was started.
    let base = source
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let root = doc.root(root, ROOT_KEYS);

    let state_dir = match doc.string(root, "state_dir", false) {
        Some((dir, _)) => base.join(dir),
        None => env.default_state_dir(),
    };
    let edge = read_edge(doc, root);
    let external = read_external(doc, root, &base, env, edge.as_ref());
    let internal = read_internal(doc, root, &base, env);
    let next_hop = read_next_hop(doc, root);
    let limits = read_limits(doc, root);
    let firewall = read_firewall(doc, root);
    let operations = read_operations(doc, root);
    let keys = read_keys(doc, root, &base);
    let relay = read_relay(doc, root);
    let federation = read_federation(doc, root, &base);

    let (Some(edge), Some(external), Some(internal), Some(next_hop)) =
        (edge, external, internal, next_hop)
    else {
        return None;
    };
    let topology = Topology {
        source: source.map(Path::to_path_buf),
        state_dir,
        edge,
        external,
        internal,
        next_hop,
        limits,
        firewall: firewall?,
        operations: operations?,
        keys: keys?,
        relay: relay?,
        federation: federation?,
    };
    cross_check(doc, root, &topology);
    doc.problems.is_empty().then_some(topology)
}

fn read_edge(doc: &mut Doc<'_>, root: Section<'_, '_>) -> Option<Edge> {
    let s = doc.table(root, "edge", EDGE_KEYS, true);
    let name = match doc.string(s, "name", false) {
        Some((name, line)) if !valid_instance_name(&name) => {
            doc.problem(
                line,
                s.key("name"),
                format!("\"{name}\": use 1-63 letters, digits, '.', '_' or '-'"),
            );
            None
        }
        Some((name, _)) => Some(name),
        None => Some(defaults::EDGE_NAME.to_string()),
    };
    let pool_fqdn = doc.string(s, "pool_fqdn", true).and_then(|(fqdn, line)| {
        let fqdn = fqdn.to_ascii_lowercase();
        if valid_dns_name(&fqdn) {
            Some(fqdn)
        } else {
            doc.problem(
                line,
                s.key("pool_fqdn"),
                format!("\"{fqdn}\" is not a DNS name"),
            );
            None
        }
    });
    let sip_domains = doc
        .string_list(s, "sip_domains", true)
        .and_then(|(list, line)| {
            let mut out = Vec::with_capacity(list.len());
            let mut seen = BTreeSet::new();
            let mut ok = true;
            for domain in list {
                let domain = domain.to_ascii_lowercase();
                if !valid_dns_name(&domain) {
                    doc.problem(
                        line,
                        s.key("sip_domains"),
                        format!("\"{domain}\" is not a DNS name"),
                    );
                    ok = false;
                } else if !seen.insert(domain.clone()) {
                    doc.problem(
                        line,
                        s.key("sip_domains"),
                        format!("\"{domain}\" is listed twice"),
                    );
                    ok = false;
                } else {
                    out.push(domain);
                }
            }
            if ok && out.is_empty() {
                doc.problem(
                    line,
                    s.key("sip_domains"),
                    "list at least one SIP domain served behind this edge",
                );
                ok = false;
            }
            ok.then_some(out)
        });
    Some(Edge {
        name: name?,
        pool_fqdn: pool_fqdn?,
        sip_domains: sip_domains?,
    })
}

fn read_external(
    doc: &mut Doc<'_>,
    root: Section<'_, '_>,
    base: &Path,
    env: &StateEnv,
    edge: Option<&Edge>,
) -> Option<ExternalIface> {
    let s = doc.table(root, "external", IFACE_KEYS, true);
    let bind = doc.socket_addr(s, "sip", true);
    let host = read_host(doc, s);
    let tls = doc.table(s, "external.tls", EXTERNAL_TLS_KEYS, true);
    let (cert, _) = read_tls(doc, tls, base, env, false);
    let (sip_bind, _) = bind?;
    let sip_host = match host? {
        Some(host) => host,
        None => edge?.pool_fqdn.clone(),
    };
    Some(ExternalIface {
        sip_bind,
        sip_host,
        cert: cert?,
    })
}

fn read_internal(
    doc: &mut Doc<'_>,
    root: Section<'_, '_>,
    base: &Path,
    env: &StateEnv,
) -> Option<InternalIface> {
    let s = doc.table(root, "internal", IFACE_KEYS, true);
    let bind = doc.socket_addr(s, "sip", true);
    let host = read_host(doc, s);
    let tls = doc.table(s, "internal.tls", INTERNAL_TLS_KEYS, true);
    let (cert, ca) = read_tls(doc, tls, base, env, true);
    let (sip_bind, _) = bind?;
    let sip_host = match host? {
        Some(host) => host,
        None => host_of(sip_bind),
    };
    Some(InternalIface {
        sip_bind,
        sip_host,
        cert: cert?,
        ca: ca?,
    })
}

/// `sip_host`: `Some(None)` when absent (the caller defaults it), `None` on a problem.
fn read_host(doc: &mut Doc<'_>, s: Section<'_, '_>) -> Option<Option<String>> {
    match doc.string(s, "sip_host", false) {
        None if s.has("sip_host") => None,
        None => Some(None),
        Some((host, line)) => {
            let host = host.to_ascii_lowercase();
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if valid_dns_name(&host) || bare.parse::<std::net::IpAddr>().is_ok() {
                // IPv6 literals go into Via and Record-Route bracketed (RFC 3261 §25.1).
                match bare.parse::<std::net::Ipv6Addr>() {
                    Ok(v6) => Some(Some(format!("[{v6}]"))),
                    Err(_) => Some(Some(host)),
                }
            } else {
                doc.problem(
                    line,
                    s.key("sip_host"),
                    format!("\"{host}\" is neither a DNS name nor an IP address"),
                );
                None
            }
        }
    }
}

fn host_of(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    }
}

/// One `tls` table: a PEM pair, a PKCS#12 bundle, or the dev PKI; and (internal only) the
/// CA that peers chain to.
fn read_tls(
    doc: &mut Doc<'_>,
    s: Section<'_, '_>,
    base: &Path,
    env: &StateEnv,
    wants_ca: bool,
) -> (Option<CertSource>, Option<CaSource>) {
    if !s.present() {
        return (None, None);
    }
    let dev = doc.boolean(s, "dev").is_some_and(|(b, _)| b);
    if dev {
        let mut clash = false;
        for key in [
            "cert",
            "key",
            "pkcs12",
            "password_env",
            "password_file",
            "ca",
        ] {
            if s.has(key) {
                let line = doc.line_of_key(s, key);
                doc.problem(
                    line,
                    s.key(key),
                    "not allowed with dev = true (the dev PKI provides it)",
                );
                clash = true;
            }
        }
        return if clash {
            (None, None)
        } else {
            (Some(CertSource::Dev), Some(CaSource::Dev))
        };
    }
    let pem = s.has("cert") || s.has("key");
    let p12 = s.has("pkcs12");
    let cert = match (pem, p12) {
        (true, true) => {
            let line = doc.line_of_key(s, "pkcs12");
            doc.problem(
                line,
                s.key("pkcs12"),
                "give either cert and key (PEM) or pkcs12, not both",
            );
            None
        }
        (true, false) => {
            for key in ["password_env", "password_file"] {
                if s.has(key) {
                    let line = doc.line_of_key(s, key);
                    doc.problem(line, s.key(key), "only for pkcs12 (PEM keys must be unencrypted, protected by file permissions)");
                }
            }
            let cert = doc.string(s, "cert", true);
            let key = doc.string(s, "key", true);
            match (cert, key) {
                (Some((cert, _)), Some((key, _))) => Some(CertSource::Pem {
                    cert: base.join(cert),
                    key: base.join(key),
                }),
                _ => None,
            }
        }
        (false, true) => {
            let path = doc.string(s, "pkcs12", true);
            let password = read_password(doc, s, base, env);
            match (path, password) {
                (Some((path, _)), Some(password)) => Some(CertSource::Pkcs12 {
                    path: base.join(path),
                    password,
                }),
                _ => None,
            }
        }
        (false, false) => {
            doc.problem(
                doc.line_of_key(s, "cert"),
                s.key("cert"),
                "missing: set cert and key (PEM), or pkcs12 with password_env or password_file, or dev = true",
            );
            None
        }
    };
    let ca = if wants_ca {
        doc.string(s, "ca", true)
            .map(|(ca, _)| CaSource::Pem(base.join(ca)))
    } else {
        None
    };
    (cert, ca)
}

/// The PKCS#12 password: from an environment variable or a file, never from the topology
/// itself (topologies get copied into tickets and repositories).
fn read_password(
    doc: &mut Doc<'_>,
    s: Section<'_, '_>,
    base: &Path,
    env: &StateEnv,
) -> Option<Secret> {
    let from_env = doc.string(s, "password_env", false);
    let from_file = doc.string(s, "password_file", false);
    match (from_env, from_file) {
        (Some(_), Some((_, line))) => {
            doc.problem(
                line,
                s.key("password_file"),
                "give password_env or password_file, not both",
            );
            None
        }
        (Some((var, line)), None) => match env.var(&var) {
            Some(value) => Some(Secret::from(value)),
            None => {
                doc.problem(
                    line,
                    s.key("password_env"),
                    format!("environment variable {var} is not set"),
                );
                None
            }
        },
        (None, Some((file, line))) => {
            let path = base.join(file);
            match std::fs::read_to_string(&path) {
                // One trailing newline is what `echo pw > file` leaves; it is not part of it.
                Ok(text) => Some(Secret::from(
                    text.strip_suffix('\n')
                        .unwrap_or(&text)
                        .trim_end_matches('\r'),
                )),
                Err(e) => {
                    doc.problem(
                        line,
                        s.key("password_file"),
                        format!("{}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, None) => {
            if !s.has("password_env") && !s.has("password_file") {
                let line = doc.line_of_key(s, "pkcs12");
                doc.problem(
                    line,
                    s.key("password_env"),
                    "pkcs12 needs password_env or password_file",
                );
            }
            None
        }
    }
}

fn read_next_hop(doc: &mut Doc<'_>, root: Section<'_, '_>) -> Option<NextHopPool> {
    let s = doc.table(root, "next_hop", NEXT_HOP_KEYS, true);
    let members = doc
        .socket_addr_list(s, "members", true)
        .and_then(|(members, line)| {
            let unique: BTreeSet<_> = members.iter().collect();
            if members.is_empty() {
                doc.problem(
                    line,
                    s.key("members"),
                    "list at least one Director (address:port)",
                );
                None
            } else if members.len() > MAX_MEMBERS {
                doc.problem(
                    line,
                    s.key("members"),
                    format!("at most {MAX_MEMBERS} members"),
                );
                None
            } else if unique.len() != members.len() {
                doc.problem(line, s.key("members"), "a member is listed twice");
                None
            } else {
                Some(members)
            }
        });
    let server_name = doc.string(s, "server_name", true).and_then(|(name, line)| {
        let name = name.to_ascii_lowercase();
        if valid_dns_name(&name) || name.parse::<std::net::IpAddr>().is_ok() {
            Some(name)
        } else {
            doc.problem(
                line,
                s.key("server_name"),
                format!("\"{name}\" is not a DNS name or IP address"),
            );
            None
        }
    });
    let retry_after = doc.duration(
        s,
        "retry_after",
        (secs(1), secs(3600)),
        defaults::RETRY_AFTER,
    );
    let p = doc.table(s, "next_hop.probe", PROBE_KEYS, false);
    let probe = Probe {
        interval: doc.duration(
            p,
            "interval",
            (Duration::from_millis(100), secs(3600)),
            defaults::PROBE_INTERVAL,
        ),
        timeout: doc.duration(
            p,
            "timeout",
            (Duration::from_millis(50), secs(60)),
            defaults::PROBE_TIMEOUT,
        ),
        rise: u32::try_from(doc.integer(p, "rise", (1, 100), defaults::PROBE_RISE)).unwrap_or(1),
        fall: u32::try_from(doc.integer(p, "fall", (1, 100), defaults::PROBE_FALL)).unwrap_or(1),
    };
    if probe.timeout >= probe.interval {
        let line = doc.line_of_key(p, "timeout");
        doc.problem(
            line,
            p.key("timeout"),
            "must be shorter than next_hop.probe.interval",
        );
    }
    Some(NextHopPool {
        members: members?,
        server_name: server_name?,
        probe,
        retry_after,
    })
}

fn read_limits(doc: &mut Doc<'_>, root: Section<'_, '_>) -> Limits {
    use defaults::*;
    let s = doc.table(root, "limits", LIMIT_KEYS, false);
    let size = |doc: &mut Doc<'_>, key, range, default| {
        usize::try_from(doc.integer(s, key, range, default)).unwrap_or(usize::MAX)
    };
    let limits = Limits {
        max_header_bytes: size(
            doc,
            "max_header_bytes",
            (1024, 256 * 1024),
            MAX_HEADER_BYTES,
        ),
        max_body_bytes: size(doc, "max_body_bytes", (0, 16 * 1024 * 1024), MAX_BODY_BYTES),
        max_headers: size(doc, "max_headers", (8, 1024), MAX_HEADERS),
        max_line_bytes: size(doc, "max_line_bytes", (256, 256 * 1024), MAX_LINE_BYTES),
        handshake_timeout: doc.duration(
            s,
            "handshake_timeout",
            (secs(1), secs(120)),
            HANDSHAKE_TIMEOUT,
        ),
        header_timeout: doc.duration(s, "header_timeout", (secs(1), secs(300)), HEADER_TIMEOUT),
        idle_timeout: doc.duration(s, "idle_timeout", (secs(10), secs(86_400)), IDLE_TIMEOUT),
        write_timeout: doc.duration(s, "write_timeout", (secs(1), secs(300)), WRITE_TIMEOUT),
        max_queued_bytes: size(
            doc,
            "max_queued_bytes",
            (16 * 1024, 64 * 1024 * 1024),
            MAX_QUEUED_BYTES,
        ),
        max_connections: size(doc, "max_connections", (1, 1_000_000), MAX_CONNECTIONS),
        max_handshakes: size(doc, "max_handshakes", (1, 100_000), MAX_HANDSHAKES),
        max_outstanding: size(doc, "max_outstanding", (1, 10_000_000), MAX_OUTSTANDING),
        drain_timeout: doc.duration(s, "drain_timeout", (secs(0), secs(86_400)), DRAIN_TIMEOUT),
        max_calls: size(doc, "max_calls", (1, 10_000_000), MAX_CALLS),
        max_calls_per_source: size(
            doc,
            "max_calls_per_source",
            (1, 1_000_000),
            MAX_CALLS_PER_SOURCE,
        ),
        max_call_duration: doc.duration(
            s,
            "max_call_duration",
            (secs(60), secs(7 * 86_400)),
            MAX_CALL_DURATION,
        ),
    };
    if limits.max_queued_bytes
        < limits
            .max_header_bytes
            .saturating_add(limits.max_body_bytes)
    {
        let line = doc.line_of_key(s, "max_queued_bytes");
        doc.problem(
            line,
            s.key("max_queued_bytes"),
            "must hold at least one largest message (max_header_bytes + max_body_bytes)",
        );
    }
    if limits.max_line_bytes > limits.max_header_bytes {
        let line = doc.line_of_key(s, "max_line_bytes");
        doc.problem(
            line,
            s.key("max_line_bytes"),
            "must not exceed limits.max_header_bytes",
        );
    }
    limits
}

/// `Some(None)` without a `[keys]` table; `None` on a problem.
fn read_keys(doc: &mut Doc<'_>, root: Section<'_, '_>, base: &Path) -> Option<Option<KeysSource>> {
    let s = doc.table(root, "keys", KEYS_KEYS, false);
    if !s.present() {
        return Some(None);
    }
    let dev = doc.boolean(s, "dev").is_some_and(|(b, _)| b);
    let ring = doc.string(s, "ring", false);
    match (dev, ring) {
        (true, Some((_, line))) => {
            doc.problem(line, s.key("ring"), "give ring or dev = true, not both");
            None
        }
        (true, None) => Some(Some(KeysSource::Dev)),
        (false, Some((path, _))) => Some(Some(KeysSource::File(base.join(path)))),
        (false, None) => {
            if !s.has("ring") {
                doc.problem(
                    doc.line_of_key(s, "ring"),
                    s.key("ring"),
                    "missing: the ring file (`sipedge keys init`), or dev = true",
                );
            }
            None
        }
    }
}

/// `Some(None)` without a `[relay]` table; `None` on a problem.
fn read_relay(doc: &mut Doc<'_>, root: Section<'_, '_>) -> Option<Option<Relay>> {
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
    let ip = |doc: &mut Doc<'_>, key: &str| -> Option<Option<std::net::IpAddr>> {
        match doc.string(s, key, false) {
            None if s.has(key) => None,
            None => Some(None),
            Some((text, line)) => match text.parse::<std::net::IpAddr>() {
                Ok(ip) if !ip.is_unspecified() => Some(Some(ip)),
                _ => {
                    doc.problem(
                        line,
                        s.key(key),
                        format!("\"{text}\" is not a specific IP address"),
                    );
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
    Some(Some(Relay {
        host: host?,
        udp_port,
        tcp_port,
        credential_lifetime,
        listen_udp: listen_udp.unwrap_or_default(),
        listen_tcp: listen_tcp.unwrap_or_default(),
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
    }))
}

/// An optional list of specific IP addresses; `None` on a problem (reported).
fn ip_list(doc: &mut Doc<'_>, s: Section<'_, '_>, key: &str) -> Option<Vec<std::net::IpAddr>> {
    let Some((list, line)) = doc.string_list(s, key, false) else {
        return (!s.has(key)).then(Vec::new);
    };
    let mut ips = Vec::new();
    let mut ok = true;
    for text in list {
        match text.parse::<std::net::IpAddr>() {
            Ok(ip) if !ip.is_unspecified() => ips.push(ip),
            _ => {
                doc.problem(
                    line,
                    s.key(key),
                    format!("\"{text}\" is not a specific IP address"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(ips)
}

/// An optional list of SIP header names (RFC 3261 `token`s), lower-cased; `None` on a
/// problem (reported).
fn header_names(doc: &mut Doc<'_>, s: Section<'_, '_>, key: &str) -> Option<Vec<String>> {
    let Some((list, line)) = doc.string_list(s, key, false) else {
        return (!s.has(key)).then(Vec::new);
    };
    let mut names = Vec::new();
    let mut ok = true;
    for text in list {
        let token = !text.is_empty() && text.bytes().all(crate::core::sip::parse::is_token_char);
        if token {
            names.push(text.to_ascii_lowercase());
        } else {
            doc.problem(
                line,
                s.key(key),
                format!("\"{text}\" is not a header name (letters, digits, -.!%*_+`'~)"),
            );
            ok = false;
        }
    }
    ok.then_some(names)
}

/// An optional list of addresses and prefixes; `None` on a problem (reported).
fn prefix_list(
    doc: &mut Doc<'_>,
    s: Section<'_, '_>,
    key: &str,
) -> Option<Vec<crate::core::net::Prefix>> {
    let Some((list, line)) = doc.string_list(s, key, false) else {
        return (!s.has(key)).then(Vec::new);
    };
    let mut prefixes = Vec::new();
    let mut ok = true;
    for text in list {
        match crate::core::net::Prefix::parse(&text) {
            Some(prefix) => prefixes.push(prefix),
            None => {
                doc.problem(
                    line,
                    s.key(key),
                    format!("\"{text}\" is not an address or prefix (10.0.0.0/8, 2001:db8::/32)"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(prefixes)
}

/// `Some(None)` without a `[federation]` table; `None` on a problem.
fn read_federation(
    doc: &mut Doc<'_>,
    root: Section<'_, '_>,
    base: &Path,
) -> Option<Option<FederationConfig>> {
    let s = doc.table(root, "federation", FEDERATION_KEYS, false);
    if !s.present() {
        return Some(None);
    }
    let ca = doc.string(s, "ca", false).map(|(path, _)| base.join(path));
    let max_connections_per_partner =
        usize::try_from(doc.integer(s, "max_connections_per_partner", (1, 64), 4)).unwrap_or(4);
    let dns = match doc.socket_addr_list(s, "dns", false) {
        Some((list, _)) => Some(list),
        None if s.has("dns") => None,
        None => Some(Vec::new()),
    };
    let discovery = doc.boolean(s, "discovery").is_some_and(|(b, _)| b);
    let discovery_rate =
        u32::try_from(doc.integer(s, "discovery_rate", (1, 100_000), 20)).unwrap_or(20);
    let discovery_max_dialogs =
        usize::try_from(doc.integer(s, "discovery_max_dialogs", (1, 1_000_000), 100))
            .unwrap_or(100);
    // A table of named entries: names are checked by entry_names, keys by each entry.
    // Open federation alone needs none.
    let list = doc.peek(s, "federation.partners");
    if !list.present() && !discovery {
        doc.problem(
            doc.line_of_key(s, "partners"),
            s.key("partners"),
            "missing: one table per partner, [federation.partners.NAME]",
        );
        return None;
    }
    let names = doc.entry_names(list);
    let paths: Vec<String> = names
        .iter()
        .map(|n| format!("federation.partners.{n}"))
        .collect();
    let mut partners = Vec::new();
    let mut ok = true;
    for (name, path) in names.iter().zip(&paths) {
        let p = doc.table(list, path, PARTNER_KEYS, true);
        // Without fqdn: an allowed partner domain, its edge found by DNS.
        let fqdn = match doc.string(p, "fqdn", false) {
            None if p.has("fqdn") => None,
            None => Some(None),
            Some((fqdn, line)) => {
                let fqdn = fqdn.to_ascii_lowercase();
                if valid_dns_name(&fqdn) {
                    Some(Some(fqdn))
                } else {
                    doc.problem(line, p.key("fqdn"), format!("\"{fqdn}\" is not a DNS name"));
                    None
                }
            }
        };
        let domains = doc
            .string_list(p, "domains", true)
            .and_then(|(list, line)| {
                let list: Vec<String> = list.iter().map(|d| d.to_ascii_lowercase()).collect();
                match list.iter().find(|d| !valid_dns_name(d)) {
                    Some(bad) => {
                        doc.problem(
                            line,
                            p.key("domains"),
                            format!("\"{bad}\" is not a DNS name"),
                        );
                        None
                    }
                    None if list.is_empty() => {
                        doc.problem(line, p.key("domains"), "at least one domain");
                        None
                    }
                    None => Some(list),
                }
            });
        let addresses = match doc.socket_addr_list(p, "addresses", false) {
            Some((list, _)) => Some(list),
            None if p.has("addresses") => None,
            None => Some(Vec::new()),
        };
        let rate = u32::try_from(doc.integer(p, "rate", (1, 1_000_000), 500)).unwrap_or(500);
        let max_dialogs =
            usize::try_from(doc.integer(p, "max_dialogs", (1, 10_000_000), 1000)).unwrap_or(1000);
        if let (Some(None), Some(list)) = (&fqdn, &addresses) {
            if !list.is_empty() {
                let line = doc.line_of_key(p, "addresses");
                doc.problem(
                    line,
                    p.key("addresses"),
                    "a partner without fqdn is found by DNS: give its edge's fqdn with addresses",
                );
            }
        }
        match (fqdn, domains, addresses) {
            (Some(fqdn), Some(domains), Some(addresses)) => partners.push(PartnerConfig {
                name: name.clone(),
                fqdn,
                domains,
                addresses,
                rate,
                max_dialogs,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(Some(FederationConfig {
        ca,
        max_connections_per_partner,
        dns: dns?,
        discovery,
        discovery_rate,
        discovery_max_dialogs,
        partners,
    }))
}

/// `Some(None)` when there is no `[operations]` table; `None` on a problem.
fn read_operations(doc: &mut Doc<'_>, root: Section<'_, '_>) -> Option<Option<Operations>> {
    let s = doc.table(root, "operations", OPERATIONS_KEYS, false);
    if !s.present() {
        return Some(None);
    }
    let (listen, _) = doc.socket_addr(s, "listen", true)?;
    Some(Some(Operations { listen }))
}

fn read_firewall(doc: &mut Doc<'_>, root: Section<'_, '_>) -> Option<Firewall> {
    use defaults::*;
    let s = doc.table(root, "firewall", FIREWALL_KEYS, false);
    let n = |doc: &mut Doc<'_>, key, range, default| {
        u32::try_from(doc.integer(s, key, range, default)).unwrap_or(u32::MAX)
    };
    let mut firewall = Firewall {
        connect_rate: n(doc, "connect_rate", (1, 1_000_000), CONNECT_RATE),
        connect_burst: n(doc, "connect_burst", (1, 1_000_000), CONNECT_BURST),
        connections_per_source: n(
            doc,
            "connections_per_source",
            (1, 1_000_000),
            CONNECTIONS_PER_SOURCE,
        ),
        request_rate: n(doc, "request_rate", (1, 1_000_000), REQUEST_RATE),
        request_burst: n(doc, "request_burst", (1, 1_000_000), REQUEST_BURST),
        connection_request_rate: n(
            doc,
            "connection_request_rate",
            (1, 1_000_000),
            CONNECTION_REQUEST_RATE,
        ),
        connection_request_burst: n(
            doc,
            "connection_request_burst",
            (1, 1_000_000),
            CONNECTION_REQUEST_BURST,
        ),
        ban_after: n(doc, "ban_after", (0, 1_000_000), BAN_AFTER),
        strike_window: doc.duration(s, "strike_window", (secs(1), secs(3600)), STRIKE_WINDOW),
        ban_time: doc.duration(s, "ban_time", (secs(1), secs(7 * 86_400)), BAN_TIME),
        allow_sources: Vec::new(),
        strip_headers: Vec::new(),
        max_sources: usize::try_from(doc.integer(
            s,
            "max_sources",
            (1024, 10_000_000),
            MAX_SOURCES,
        ))
        .unwrap_or(usize::MAX),
    };
    firewall.allow_sources = prefix_list(doc, s, "allow_sources")?;
    firewall.strip_headers = header_names(doc, s, "strip_headers")?;
    Some(firewall)
}

/// Every domain has one owner: ours, or one partner's, listed once; partner edges are not
/// this edge and not each other.
fn check_partners(doc: &mut Doc<'_>, root: Section<'_, '_>, t: &Topology) {
    let Some(f) = &t.federation else { return };
    let federation = doc.peek(root, "federation");
    let list = doc.peek(federation, "federation.partners");
    let mut owners: Vec<(&str, String)> = t
        .edge
        .sip_domains
        .iter()
        .map(|d| (d.as_str(), "this edge (edge.sip_domains)".to_string()))
        .collect();
    let mut fqdns: Vec<(&str, String)> = vec![(
        t.edge.pool_fqdn.as_str(),
        "this edge's pool FQDN".to_string(),
    )];
    for p in &f.partners {
        let line = |doc: &Doc<'_>, key: &str| {
            let entry = doc.peek(list, p.name.as_str());
            doc.line_of_key(entry, key)
        };
        let key = |k: &str| format!("federation.partners.{}.{k}", p.name);
        for d in &p.domains {
            if let Some((_, owner)) = owners.iter().find(|(o, _)| o == d) {
                let at = line(doc, "domains");
                doc.problem(
                    at,
                    key("domains"),
                    format!("\"{d}\" also belongs to {owner}"),
                );
            } else {
                owners.push((d.as_str(), format!("partner {}", p.name)));
            }
        }
        let Some(fqdn) = &p.fqdn else { continue };
        if let Some((_, owner)) = fqdns.iter().find(|(o, _)| o == fqdn) {
            let at = line(doc, "fqdn");
            doc.problem(at, key("fqdn"), format!("\"{fqdn}\" is also {owner}"));
        } else {
            fqdns.push((fqdn.as_str(), format!("partner {}'s edge", p.name)));
        }
    }
}

/// Checks that span tables: the two zones never share a socket, and no next hop is the edge.
fn cross_check(doc: &mut Doc<'_>, root: Section<'_, '_>, t: &Topology) {
    check_partners(doc, root, t);
    let internal = doc.peek(root, "internal");
    let next_hop = doc.peek(root, "next_hop");
    if t.external.sip_bind.ip() == t.internal.sip_bind.ip() {
        let line = doc.line_of_key(internal, "sip");
        doc.problem(
            line,
            "internal.sip",
            format!(
                "same address as external.sip ({}): the two trust zones need separate interfaces",
                t.external.sip_bind.ip()
            ),
        );
    }
    if let Some(ops) = &t.operations {
        let section = doc.peek(root, "operations");
        let line = doc.line_of_key(section, "listen");
        if ops.listen.ip() == t.external.sip_bind.ip() {
            doc.problem(
                line,
                "operations.listen",
                "on the external interface: health, status and metrics are for the inside only",
            );
        } else if ops.listen == t.internal.sip_bind {
            doc.problem(line, "operations.listen", "same address as internal.sip");
        }
    }
    if t.relay.is_some() && t.keys.is_none() {
        let line = doc.line_of_key(doc.peek(root, "relay"), "host");
        doc.problem(
            line,
            "relay",
            "relay credentials need the pool key ring: add [keys]",
        );
    }
    check_relay_zones(doc, root, t);
    for member in &t.next_hop.members {
        if *member == t.internal.sip_bind || *member == t.external.sip_bind {
            let line = doc.line_of_key(next_hop, "members");
            doc.problem(
                line,
                "next_hop.members",
                format!("{member} is this edge's own listener (a loop)"),
            );
        }
    }
}

/// Every relay listener's zone follows from the interface its address is on; an address
/// on neither (a second public address, the external NIC's IPv6 address) or on both is
/// refused: a zone is never guessed.
fn check_relay_zones(doc: &mut Doc<'_>, root: Section<'_, '_>, t: &Topology) {
    let Some(relay) = &t.relay else { return };
    let section = doc.peek(root, "relay");
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

fn valid_instance_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A host name per RFC 1123: dot-separated labels of letters, digits and inner hyphens.
pub(crate) fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 || name.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    // An all-numeric last label would read as an IPv4 address to some resolvers.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    name.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

#[cfg(test)]
pub(super) fn all_tables() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("", ROOT_KEYS),
        ("edge", EDGE_KEYS),
        ("external", IFACE_KEYS),
        ("external.tls", EXTERNAL_TLS_KEYS),
        ("internal", IFACE_KEYS),
        ("internal.tls", INTERNAL_TLS_KEYS),
        ("next_hop", NEXT_HOP_KEYS),
        ("next_hop.probe", PROBE_KEYS),
        ("limits", LIMIT_KEYS),
        ("firewall", FIREWALL_KEYS),
        ("operations", OPERATIONS_KEYS),
        ("keys", KEYS_KEYS),
        ("relay", RELAY_KEYS),
        ("federation", FEDERATION_KEYS),
        ("federation.partners.NAME", PARTNER_KEYS),
    ]
}
