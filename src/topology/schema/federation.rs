//! The `[federation]` table and its `[federation.partners.NAME]` entries: the partners'
//! domains, edges and budgets, DNS discovery for open federation; and the check that every
//! domain and edge has one owner.

use std::path::Path;

use super::fields::{prefix_list, valid_dns_name};
use crate::topology::model::{FederationConfig, PartnerConfig, Topology};
use crate::topology::reader::{parse_socket_addr, Doc, Section};

pub(super) const FEDERATION_KEYS: &[&str] = &[
    "ca",
    "max_connections_per_partner",
    "dns",
    "discovery",
    "discovery_rate",
    "discovery_max_dialogs",
    "discovery_allow",
    "partners",
];
pub(super) const PARTNER_KEYS: &[&str] = &["fqdn", "domains", "addresses", "rate", "max_dialogs"];

/// `Some(None)` without a `[federation]` table; `None` on a problem.
pub(super) fn read_federation(
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
    let dns = doc.optional_list(s, "dns", parse_socket_addr);
    let discovery = doc.boolean(s, "discovery").is_some_and(|(b, _)| b);
    let discovery_rate =
        u32::try_from(doc.integer(s, "discovery_rate", (1, 100_000), 20)).unwrap_or(20);
    let discovery_max_dialogs =
        usize::try_from(doc.integer(s, "discovery_max_dialogs", (1, 1_000_000), 100))
            .unwrap_or(100);
    let discovery_allow = prefix_list(doc, s, "discovery_allow");
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
        let addresses = doc.optional_list(p, "addresses", parse_socket_addr);
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
        discovery_allow: discovery_allow?,
        partners,
    }))
}

/// Every domain has one owner: ours, or one partner's, listed once; partner edges are not
/// this edge and not each other.
pub(super) fn check_partners(doc: &mut Doc<'_>, root: Section<'_, '_>, t: &Topology) {
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
