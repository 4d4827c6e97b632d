//! Addresses as the edge's policies see them: prefixes (`10.0.0.0/8`) for allow- and
//! deny-lists, and the key a per-source limit is counted under (an IPv4 address or an IPv6
//! /64). IPv4-mapped IPv6 addresses are their IPv4 address everywhere.

use std::net::IpAddr;

/// An address prefix (`10.0.0.0/8`, `2001:db8::/32`, or a single address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    pub fn parse(text: &str) -> Option<Prefix> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        (len <= max).then_some(Prefix { addr, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(p), IpAddr::V4(a)) => mask_eq(
                u128::from(u32::from(p)),
                u128::from(u32::from(a)),
                self.len,
                32,
            ),
            (IpAddr::V6(p), IpAddr::V6(a)) => mask_eq(u128::from(p), u128::from(a), self.len, 128),
            _ => false,
        }
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask_eq(p: u128, a: u128, len: u8, bits: u8) -> bool {
    if len == 0 {
        return true;
    }
    let shift = u32::from(bits - len.min(bits));
    (p >> shift) == (a >> shift)
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) are their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What the limits are keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4(u32),
    /// The /64 of an IPv6 source.
    V6(u64),
    /// Every source that arrived while the table was full.
    Overflow,
}

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match canonical(ip) {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => SourceKey::V6((u128::from(v6) >> 64) as u64),
        }
    }

    /// The key as pool members exchange it (`4:c0000201`, `6:20010db800010002`); the
    /// overflow entry has none (it is no one source, and never leaves the process).
    pub fn to_wire(self) -> Option<String> {
        match self {
            SourceKey::V4(a) => Some(format!("4:{a:08x}")),
            SourceKey::V6(p) => Some(format!("6:{p:016x}")),
            SourceKey::Overflow => None,
        }
    }

    /// A key as [`SourceKey::to_wire`] writes it; `None` for anything else.
    pub fn from_wire(text: &str) -> Option<SourceKey> {
        let (family, hex) = text.split_once(':')?;
        // Lower-case hex only: one spelling per key, as `to_wire` writes it.
        if hex.is_empty() || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        match (family, hex.len()) {
            ("4", 8) => u32::from_str_radix(hex, 16).ok().map(SourceKey::V4),
            ("6", 16) => u64::from_str_radix(hex, 16).ok().map(SourceKey::V6),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes() {
        let p = Prefix::parse("192.0.2.0/24").unwrap();
        assert!(p.contains(ip("192.0.2.77")));
        assert!(!p.contains(ip("192.0.3.1")));
        assert!(p.contains(ip("::ffff:192.0.2.1")), "v4-mapped counts as v4");
        assert!(Prefix::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!Prefix::parse("0.0.0.0/0").unwrap().contains(ip("::1")));
        assert!(Prefix::parse("2001:db8::/32")
            .unwrap()
            .contains(ip("2001:db8:1::5")));
        assert!(Prefix::parse("203.0.113.9")
            .unwrap()
            .contains(ip("203.0.113.9")));
        assert!(!Prefix::parse("203.0.113.9")
            .unwrap()
            .contains(ip("203.0.113.8")));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "x", "10.0.0.0/", "/8"] {
            assert!(Prefix::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn keys_cross_the_pool_as_text_and_nothing_else_parses() {
        for text in ["192.0.2.1", "2001:db8:1:2::1", "::ffff:198.51.100.9"] {
            let key = SourceKey::of(ip(text));
            let wire = key.to_wire().unwrap();
            assert_eq!(SourceKey::from_wire(&wire), Some(key), "{wire}");
        }
        assert_eq!(
            SourceKey::of(ip("192.0.2.1")).to_wire().unwrap(),
            "4:c0000201"
        );
        assert_eq!(SourceKey::Overflow.to_wire(), None);
        for bad in [
            "",
            "4:",
            "4:c00002",
            "4:c000020100",
            "6:zz",
            "5:c0000201",
            "4:+0000201",
            "overflow",
        ] {
            assert_eq!(SourceKey::from_wire(bad), None, "{bad}");
        }
    }

    #[test]
    fn ipv6_sources_are_keyed_by_their_64() {
        assert_eq!(
            SourceKey::of(ip("2001:db8:1:2::1")),
            SourceKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            SourceKey::of(ip("2001:db8:1:2::1")),
            SourceKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            SourceKey::of(ip("::ffff:192.0.2.1")),
            SourceKey::of(ip("192.0.2.1"))
        );
    }
}
