//! The `[next_hop]` table: the Directors (or front ends) inside that the edge forwards to,
//! the name their certificates carry, and how they are probed (`[next_hop.probe]`).

use std::collections::BTreeSet;
use std::time::Duration;

use super::defaults;
use super::fields::{secs, valid_dns_name};
use crate::topology::model::{NextHopPool, Probe};
use crate::topology::reader::{Doc, Section};

pub(super) const NEXT_HOP_KEYS: &[&str] = &["members", "server_name", "retry_after", "probe"];
pub(super) const PROBE_KEYS: &[&str] = &["interval", "timeout", "rise", "fall"];

const MAX_MEMBERS: usize = 64;

pub(super) fn read_next_hop(doc: &mut Doc<'_>, root: Section<'_, '_>) -> Option<NextHopPool> {
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
