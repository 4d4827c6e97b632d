//! The `[firewall]` table: per-source connection and request rates, strikes and bans, the
//! sources exempt from them, the size of the source table, and the headers stripped from
//! external messages.

use super::fields::{header_names, prefix_list, secs};
use crate::topology::model::Firewall;
use crate::topology::reader::{Doc, Section};

pub(super) const FIREWALL_KEYS: &[&str] = &[
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

pub(super) fn read_firewall(doc: &mut Doc<'_>, root: Section<'_, '_>) -> Option<Firewall> {
    use super::defaults::*;
    let s = doc.table(root, "firewall", FIREWALL_KEYS, false);
    let n = |doc: &mut Doc<'_>, key, range, default| {
        u32::try_from(doc.integer(s, key, range, default)).unwrap_or(u32::MAX)
    };
    // Rates, bursts and connection counts: at least 1.
    let positive = |doc: &mut Doc<'_>, key, default| n(doc, key, (1, 1_000_000), default);
    let mut firewall = Firewall {
        connect_rate: positive(doc, "connect_rate", CONNECT_RATE),
        connect_burst: positive(doc, "connect_burst", CONNECT_BURST),
        connections_per_source: positive(doc, "connections_per_source", CONNECTIONS_PER_SOURCE),
        request_rate: positive(doc, "request_rate", REQUEST_RATE),
        request_burst: positive(doc, "request_burst", REQUEST_BURST),
        connection_request_rate: positive(doc, "connection_request_rate", CONNECTION_REQUEST_RATE),
        connection_request_burst: positive(
            doc,
            "connection_request_burst",
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
