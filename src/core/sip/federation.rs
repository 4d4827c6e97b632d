//! Federation (sans-IO): the partner edges of the topology, which domains each speaks for,
//! which connection is a partner's, and where requests for a partner's domain go.
//!
//! A connection is a partner's only when its certificate verified and one of its
//! subjectAltNames is the partner edge's FQDN (the common name is never read). On such a
//! connection a request must come from one of that partner's domains and go to one of ours;
//! elsewhere, a request claiming a partner's domain in From is refused (anti-spoofing).

use crate::core::firewall::Rate;

/// A partner, by its stable key ([`Partner::key`]): a connection keeps naming the same
/// partner across reloads that reorder, add or remove partners (a removed one is found no
/// more, and its connections' requests are refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartnerId(pub u64);

/// One partner organisation: an allowed partner server (its edge's FQDN known) or an
/// allowed partner domain (its edge found by DNS SRV and named by a host within one of its
/// domains).
#[derive(Clone, Debug, PartialEq)]
pub struct Partner {
    /// The partner edge's FQDN (lower-case): its certificate must name it, and outbound
    /// connections verify it. `None` for an allowed partner domain.
    pub fqdn: Option<String>,
    /// The SIP domains the partner speaks for (lower-case).
    pub domains: Vec<String>,
    /// Messages per second accepted from the partner, over all its connections.
    pub rate: Rate,
    /// Dialogs (calls) with the partner at once, both directions together.
    pub max_dialogs: usize,
}

impl Partner {
    /// The partner's stable key: 63 bits of SHA-256 of its edge's FQDN. Record-Routes of
    /// partner dialogs carry it, so it must not depend on the topology's order or on which
    /// pool member wrote it.
    pub fn key(&self) -> u64 {
        use sha2::{Digest, Sha256};
        let name = match &self.fqdn {
            Some(fqdn) => fqdn.to_ascii_lowercase(),
            None => format!("domain:{}", self.label().to_ascii_lowercase()),
        };
        let digest = Sha256::digest(name.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
        u64::from_be_bytes(first) >> 1
    }

    /// How the partner is named in logs, metrics and the trust stamp: its edge's FQDN, or
    /// its first domain.
    pub fn label(&self) -> &str {
        match &self.fqdn {
            Some(fqdn) => fqdn,
            None => self.domains.first().map_or("", String::as_str),
        }
    }

    /// Whether `host` may be this partner's edge: its FQDN, or (an allowed partner domain)
    /// a host within one of its domains.
    pub fn names_edge(&self, host: &[u8]) -> bool {
        match &self.fqdn {
            Some(fqdn) => eq(fqdn, host),
            None => self.domains.iter().any(|d| within(host, d)),
        }
    }
}

/// Whether `name` is `domain` or a host below it (`sip.b.test` within `b.test`); wildcard
/// names are never within anything.
pub fn within(name: &[u8], domain: &str) -> bool {
    if name.first() == Some(&b'*') {
        return false;
    }
    let d = domain.as_bytes();
    name.eq_ignore_ascii_case(d)
        || (name.len() > d.len() + 1
            && name
                .get(name.len() - d.len()..)
                .is_some_and(|tail| tail.eq_ignore_ascii_case(d))
            && name.get(name.len() - d.len() - 1) == Some(&b'.'))
}

/// The partners, looked up by domain, by host and by certificate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Federation {
    partners: Vec<Partner>,
    /// Each partner's [`Partner::key`], computed once: lookups by key happen per message.
    keys: Vec<u64>,
    /// Open federation: any other domain whose edge proves itself by certificate (a host
    /// within the domain), found by SRV when the inside writes to it.
    pub discovery: bool,
}

/// The stable key of a discovered partner (its domain), for Record-Routes like
/// [`Partner::key`]; a different name space, so it never equals a listed partner's.
pub fn discovered_key(domain: &[u8]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"discovered:");
    h.update(domain.to_ascii_lowercase());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(first) >> 1
}

impl Federation {
    /// At most `u16::MAX` partners (the topology enforces far fewer).
    pub fn new(partners: Vec<Partner>) -> Federation {
        let mut partners = partners;
        partners.truncate(usize::from(u16::MAX));
        let keys = partners.iter().map(Partner::key).collect();
        Federation {
            partners,
            keys,
            discovery: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.partners.is_empty()
    }

    pub fn get(&self, id: PartnerId) -> Option<&Partner> {
        self.iter().find(|(k, _)| *k == id).map(|(_, p)| p)
    }

    pub fn iter(&self) -> impl Iterator<Item = (PartnerId, &Partner)> {
        self.keys.iter().map(|k| PartnerId(*k)).zip(&self.partners)
    }

    /// The partner that speaks for `domain`.
    pub fn by_domain(&self, domain: &[u8]) -> Option<PartnerId> {
        self.iter()
            .find(|(_, p)| p.domains.iter().any(|d| eq(d, domain)))
            .map(|(id, _)| id)
    }

    /// The partner whose edge is `host` (its FQDN, or a host within an allowed partner
    /// domain), or whose domain `host` is (a Request-URI `sip:bob@partner.example`).
    pub fn by_host(&self, host: &[u8]) -> Option<PartnerId> {
        self.by_domain(host).or_else(|| {
            self.iter()
                .find(|(_, p)| p.names_edge(host))
                .map(|(id, _)| id)
        })
    }

    /// The partner a virtual flow's key names ([`Partner::key`]).
    pub fn by_key(&self, key: u64) -> Option<PartnerId> {
        self.get(PartnerId(key)).map(|_| PartnerId(key))
    }

    /// The partner a verified certificate's DNS subjectAltNames name: exactly an allowed
    /// partner server's FQDN first, else a host within an allowed partner domain (a
    /// wildcard SAN makes no partner).
    pub fn by_certificate(&self, dns_names: &[String]) -> Option<PartnerId> {
        let named = |p: &Partner| dns_names.iter().any(|n| p.names_edge(n.as_bytes()));
        self.iter()
            .find(|(_, p)| p.fqdn.is_some() && named(p))
            .or_else(|| self.iter().find(|(_, p)| p.fqdn.is_none() && named(p)))
            .map(|(id, _)| id)
    }
}

fn eq(ours: &str, theirs: &[u8]) -> bool {
    ours.as_bytes().eq_ignore_ascii_case(theirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn federation() -> Federation {
        let rate = Rate {
            per_sec: 20,
            burst: 40,
        };
        Federation::new(vec![
            Partner {
                fqdn: Some("sip.partner.example".into()),
                domains: vec!["partner.example".into(), "partner.test".into()],
                rate,
                max_dialogs: 100,
            },
            Partner {
                fqdn: Some("edge.other.example".into()),
                domains: vec!["other.example".into()],
                rate,
                max_dialogs: 100,
            },
            // An allowed partner domain: any edge within it.
            Partner {
                fqdn: None,
                domains: vec!["third.example".into()],
                rate,
                max_dialogs: 100,
            },
        ])
    }

    #[test]
    fn partners_are_found_by_domain_host_and_certificate() {
        let f = federation();
        let id = |i: usize| f.iter().nth(i).unwrap().0;
        assert_eq!(f.by_domain(b"PARTNER.test"), Some(id(0)));
        assert_eq!(f.by_domain(b"other.example"), Some(id(1)));
        assert_eq!(f.by_domain(b"sip.partner.example"), None);
        assert_eq!(f.by_host(b"sip.partner.example"), Some(id(0)));
        assert_eq!(f.by_host(b"partner.example"), Some(id(0)));
        assert_eq!(f.by_host(b"corp.example"), None);
        let sans = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            f.by_certificate(&sans(&["x.example", "Edge.Other.Example"])),
            Some(id(1))
        );
        assert_eq!(f.by_certificate(&sans(&["*.partner.example"])), None);
        assert_eq!(f.by_certificate(&sans(&["partner.example"])), None);
        assert_eq!(f.get(PartnerId(3)), None);
        assert_eq!(f.by_key(id(1).0), Some(id(1)));
        // The allowed partner domain: a certificate for a host within it, not a wildcard,
        // not a look-alike.
        assert_eq!(f.by_certificate(&sans(&["sip.third.example"])), Some(id(2)));
        assert_eq!(f.by_certificate(&sans(&["third.example"])), Some(id(2)));
        assert_eq!(f.by_certificate(&sans(&["*.third.example"])), None);
        assert_eq!(f.by_certificate(&sans(&["evilthird.example"])), None);
        assert_eq!(f.by_certificate(&sans(&["third.example.evil"])), None);
        assert_eq!(f.by_host(b"edge7.third.example"), Some(id(2)));
        assert_eq!(f.by_host(b"edge7.partner.example"), None);
        assert_ne!(f.get(id(2)).unwrap().key(), f.get(id(1)).unwrap().key());
    }
}
