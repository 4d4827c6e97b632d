//! Field readers and checks more than one table shares: durations in seconds, lists of IP
//! addresses, prefixes and header names, and DNS names (RFC 1123).

use std::time::Duration;

use crate::topology::reader::{Doc, Section};

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A specific IP address (not the unspecified one).
pub(super) fn specific_ip(text: &str) -> Result<std::net::IpAddr, String> {
    match text.parse::<std::net::IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => Ok(ip),
        _ => Err(format!("\"{text}\" is not a specific IP address")),
    }
}

/// An optional list of specific IP addresses; `None` on a problem (reported).
pub(super) fn ip_list(
    doc: &mut Doc<'_>,
    s: Section<'_, '_>,
    key: &str,
) -> Option<Vec<std::net::IpAddr>> {
    doc.optional_list(s, key, specific_ip)
}

/// An optional list of SIP header names (RFC 3261 `token`s), lower-cased; `None` on a
/// problem (reported).
pub(super) fn header_names(
    doc: &mut Doc<'_>,
    s: Section<'_, '_>,
    key: &str,
) -> Option<Vec<String>> {
    doc.optional_list(s, key, |text| {
        let token = !text.is_empty() && text.bytes().all(crate::core::sip::parse::is_token_char);
        if token {
            Ok(text.to_ascii_lowercase())
        } else {
            Err(format!(
                "\"{text}\" is not a header name (letters, digits, -.!%*_+`'~)"
            ))
        }
    })
}

/// An optional list of addresses and prefixes; `None` on a problem (reported).
pub(super) fn prefix_list(
    doc: &mut Doc<'_>,
    s: Section<'_, '_>,
    key: &str,
) -> Option<Vec<crate::core::net::Prefix>> {
    doc.optional_list(s, key, |text| {
        crate::core::net::Prefix::parse(text).ok_or_else(|| {
            format!("\"{text}\" is not an address or prefix (10.0.0.0/8, 2001:db8::/32)")
        })
    })
}

/// A host name per RFC 1123: dot-separated labels of letters, digits and inner hyphens.
pub(super) fn valid_dns_name(name: &str) -> bool {
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
