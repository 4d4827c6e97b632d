//! The `[limits]` table: message sizes, timeouts, connection and call counts, each with
//! its range and default, and the checks between them.

use super::fields::secs;
use crate::topology::model::Limits;
use crate::topology::reader::{Doc, Section};

pub(super) const LIMIT_KEYS: &[&str] = &[
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

pub(super) fn read_limits(doc: &mut Doc<'_>, root: Section<'_, '_>) -> Limits {
    use super::defaults::*;
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
