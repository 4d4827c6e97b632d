//! The topology schema: which keys exist, their defaults and ranges, and the cross-checks
//! between them. `topology/README.md` documents the same keys; keep the two in step.
//!
//! One file per table (`edge`, `interfaces` for `[external]` and `[internal]`, `next_hop`,
//! `limits`, `firewall`, `keys`, `operations`, `relay`, `federation`, `pool`, `capture`), each with its keys,
//! ranges and defaults; `fields` has the readers they share. Here: the root table, the
//! order tables are read in, and the checks that span tables.

use std::path::Path;

use toml::de::DeTable;

use super::model::Topology;
use super::reader::{Doc, Section};
use super::StateEnv;

mod capture;
pub mod defaults;
mod edge;
mod federation;
mod fields;
mod firewall;
mod interfaces;
mod keys;
mod limits;
mod next_hop;
mod operations;
mod pool;
mod relay;

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
    "pool",
    "capture",
];

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
    let edge = edge::read_edge(doc, root);
    let external = interfaces::read_external(doc, root, &base, env, edge.as_ref());
    let internal = interfaces::read_internal(doc, root, &base, env);
    let next_hop = next_hop::read_next_hop(doc, root);
    let limits = limits::read_limits(doc, root);
    let firewall = firewall::read_firewall(doc, root);
    let operations = operations::read_operations(doc, root);
    let keys = keys::read_keys(doc, root, &base);
    let relay = relay::read_relay(doc, root);
    let federation = federation::read_federation(doc, root, &base);
    let pool = pool::read_pool(doc, root, &base, env);
    let capture = capture::read_capture(doc, root, &base, env);

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
        pool: pool?,
        capture: capture?,
    };
    cross_check(doc, root, &topology);
    doc.problems.is_empty().then_some(topology)
}

/// Checks that span tables: the two zones never share a socket, and no next hop is the edge.
fn cross_check(doc: &mut Doc<'_>, root: Section<'_, '_>, t: &Topology) {
    federation::check_partners(doc, root, t);
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
    relay::check_relay_zones(doc, root, t);
    capture::check_collector(doc, root, t);
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

#[cfg(test)]
pub(super) fn all_tables() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("", ROOT_KEYS),
        ("edge", edge::EDGE_KEYS),
        ("external", interfaces::IFACE_KEYS),
        ("external.tls", interfaces::EXTERNAL_TLS_KEYS),
        ("internal", interfaces::IFACE_KEYS),
        ("internal.tls", interfaces::INTERNAL_TLS_KEYS),
        ("next_hop", next_hop::NEXT_HOP_KEYS),
        ("next_hop.probe", next_hop::PROBE_KEYS),
        ("limits", limits::LIMIT_KEYS),
        ("firewall", firewall::FIREWALL_KEYS),
        ("operations", operations::OPERATIONS_KEYS),
        ("keys", keys::KEYS_KEYS),
        ("relay", relay::RELAY_KEYS),
        ("federation", federation::FEDERATION_KEYS),
        ("federation.partners.NAME", federation::PARTNER_KEYS),
        ("pool", pool::POOL_KEYS),
        ("capture", capture::CAPTURE_KEYS),
    ]
}
