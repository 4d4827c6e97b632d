//! The `[edge]` table: the instance's name, the pool FQDN partners and clients know it by,
//! and the SIP domains served behind it.

use std::collections::BTreeSet;

use super::defaults;
use super::fields::valid_dns_name;
use crate::topology::model::Edge;
use crate::topology::reader::{Doc, Section};

pub(super) const EDGE_KEYS: &[&str] = &["name", "pool_fqdn", "sip_domains"];

pub(super) fn read_edge(doc: &mut Doc<'_>, root: Section<'_, '_>) -> Option<Edge> {
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

fn valid_instance_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}
