//! The `[capture]` table: SIP capture as HEP v3 to a collector in the internal zone. Off
//! unless the table is there: a capture holds what people say to each other.

use std::path::Path;

use super::interfaces::read_password;
use crate::topology::model::{CaptureConfig, CaptureTransport, Topology};
use crate::topology::reader::{Doc, Section};
use crate::topology::StateEnv;

pub(super) const CAPTURE_KEYS: &[&str] = &[
    "collector",
    "transport",
    "agent_id",
    "password_env",
    "password_file",
    "zones",
    "bodies",
    "max_queued_bytes",
];

/// `Some(None)` without a `[capture]` table; `None` on a problem.
pub(super) fn read_capture(
    doc: &mut Doc<'_>,
    root: Section<'_, '_>,
    base: &Path,
    env: &StateEnv,
) -> Option<Option<CaptureConfig>> {
    let s = doc.table(root, "capture", CAPTURE_KEYS, false);
    if !s.present() {
        return Some(None);
    }
    let collector = doc.socket_addr(s, "collector", true).map(|(a, _)| a);
    let transport = match doc.string(s, "transport", false) {
        None => Some(CaptureTransport::Udp),
        Some((t, line)) => match t.as_str() {
            "udp" => Some(CaptureTransport::Udp),
            "tcp" => Some(CaptureTransport::Tcp),
            other => {
                doc.problem(
                    line,
                    s.key("transport"),
                    format!("\"{other}\": expected \"udp\" or \"tcp\""),
                );
                None
            }
        },
    };
    let agent_id = u32::try_from(doc.integer(s, "agent_id", (0, u64::from(u32::MAX)), 1)).ok();
    let password = if s.has("password_env") || s.has("password_file") {
        Some(read_password(doc, s, base, env)?)
    } else {
        None
    };
    let zones = match doc.string_list(s, "zones", false) {
        None => Some((true, true)),
        Some((zones, line)) => {
            let known = zones.iter().all(|z| z == "external" || z == "internal");
            if !known || zones.is_empty() {
                doc.problem(
                    line,
                    s.key("zones"),
                    "a non-empty list of \"external\" and \"internal\"",
                );
                None
            } else {
                Some((
                    zones.iter().any(|z| z == "external"),
                    zones.iter().any(|z| z == "internal"),
                ))
            }
        }
    };
    let bodies = doc.boolean(s, "bodies").is_none_or(|(b, _)| b);
    let max_queued_bytes = usize::try_from(doc.integer(
        s,
        "max_queued_bytes",
        (64 * 1024, 256 * 1024 * 1024),
        4 * 1024 * 1024,
    ))
    .ok();
    let ((external, internal), collector, transport) = (zones?, collector?, transport?);
    Some(Some(CaptureConfig {
        collector,
        transport,
        agent_id: agent_id?,
        password,
        external,
        internal,
        bodies,
        max_queued_bytes: max_queued_bytes?,
    }))
}

/// The collector is inside: never on the external interface's address, nor one of the
/// edge's own SIP listeners.
pub(super) fn check_collector(doc: &mut Doc<'_>, root: Section<'_, '_>, t: &Topology) {
    let Some(capture) = &t.capture else {
        return;
    };
    let section = doc.peek(root, "capture");
    let line = doc.line_of_key(section, "collector");
    let to = capture.collector;
    if to.ip() == t.external.sip_bind.ip() {
        doc.problem(
            line,
            "capture.collector",
            "on the external interface: a capture is personal data and goes to the inside only",
        );
    } else if to == t.internal.sip_bind {
        doc.problem(line, "capture.collector", "same address as internal.sip");
    }
}
