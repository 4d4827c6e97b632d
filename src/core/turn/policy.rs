//! Peer policy: which peer addresses a relay may send to. The classic TURN attack is to use
//! the relay as a proxy into the DMZ or the internal network (or the cloud metadata
//! service), including through IPv6 forms that embed an IPv4 address. Every form is
//! normalised to what it actually reaches before the rules apply:
//! IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), 6to4 (`2002:AABB:CCDD::`),
//! NAT64 (`64:ff9b::/96`), Teredo (`2001::/32`, the client address obfuscated).
//!
//! Always denied: unspecified, loopback, link-local (169.254/16 — the metadata service —
//! and fe80::/10), multicast and broadcast, reserved, documentation-only benchmarking space
//! is allowed (tests use it), and the edge's own addresses (a relay looping into the edge's
//! own listeners), but for the relay's own relayed ports on the relay's address (another
//! allocation: two clients of one edge, each behind its own relay, reach each other only
//! so), which [`PeerPolicy::check_addr`] allows by port. Private ranges, and the internal ranges the topology names, are denied to
//! allocations made from outside unless explicitly allowed; the operator's `deny` prefixes
//! win over everything.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::core::net::Prefix;

/// Where the allocation was made from: its client's zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    External,
    Internal,
}

/// Why a peer is refused (answered 403 Forbidden).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    Unspecified,
    Loopback,
    LinkLocal,
    Multicast,
    Reserved,
    /// A private/internal address, for an allocation from outside.
    Internal,
    /// One of the edge's own addresses.
    Own,
    /// The operator's deny list.
    Configured,
    /// An address of the local-use NAT64 prefix (64:ff9b:1::/48): what it reaches depends
    /// on the translator's layout, so it is refused unless the operator allows it.
    Translated,
}

/// The operator's additions (topology).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerPolicy {
    /// Internal ranges an external client's relay may reach anyway (e.g. a media server).
    pub allow_internal: Vec<Prefix>,
    /// Ranges of the internal network beyond the private ones (an enterprise numbered in
    /// public space): treated as internal.
    pub internal: Vec<Prefix>,
    /// The edge's own addresses (interfaces, relay, public address).
    pub own: Vec<IpAddr>,
    /// Always refused, whatever the origin.
    pub deny: Vec<Prefix>,
    /// Let loopback peers through (tests on one host only; coturn's
    /// `--allow-loopback-peers`).
    pub allow_loopback: bool,
    /// The relay's addresses as peers name them (relay_ip, public_ip), and its relayed
    /// ports: a peer there is another allocation of this relay, allowed though the address
    /// is the edge's own. Any other port of those addresses stays refused.
    pub relayed: Vec<IpAddr>,
    pub relayed_ports: (u16, u16),
}

/// What an address may really reach: itself, and the IPv4 address an IPv6 form of it
/// carries. The local-use NAT64 prefix 64:ff9b:1::/48 (RFC 8215) may be cut by a translator
/// into any RFC 6052 layout from /48 to /96, so which IPv4 address such an address reaches
/// cannot be known: [`PeerPolicy::check`] refuses that prefix unless the operator allows it.
#[derive(Clone, Copy, Debug)]
pub struct Reaches {
    addrs: [Option<IpAddr>; 6],
}

impl Reaches {
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addrs.iter().flatten().copied()
    }
}

/// The address itself and the IPv4 addresses embedded in it.
pub fn reaches(ip: IpAddr) -> Reaches {
    let mut addrs = [None; 6];
    addrs[0] = Some(ip);
    let IpAddr::V6(v6) = ip else {
        return Reaches { addrs };
    };
    let s = v6.segments();
    let o = v6.octets();
    let v4 = |a: u8, b: u8, c: u8, d: u8| Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
    let mut n = 1;
    let mut push = |a: Option<IpAddr>| {
        if let Some(slot) = addrs.get_mut(n) {
            *slot = a;
            n += 1;
        }
    };
    match s {
        // ::ffff:a.b.c.d (mapped).
        [0, 0, 0, 0, 0, 0xffff, _, _] => push(v4(o[12], o[13], o[14], o[15])),
        // ::ffff:0:a.b.c.d (SIIT IPv4-translated, RFC 6145).
        [0, 0, 0, 0, 0xffff, 0, _, _] => push(v4(o[12], o[13], o[14], o[15])),
        // ::a.b.c.d (compatible, deprecated but routable by some), except :: and ::1.
        [0, 0, 0, 0, 0, 0, hi, lo] if !(hi == 0 && lo <= 1) => push(v4(o[12], o[13], o[14], o[15])),
        // 6to4: 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD.
        [0x2002, _, _, ..] => push(v4(o[2], o[3], o[4], o[5])),
        // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052).
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => push(v4(o[12], o[13], o[14], o[15])),
        // The local-use 64:ff9b:1::/48 (RFC 8215): a translator may use it whole or any
        // longer prefix in it, so every RFC 6052 layout from /48 on (the u octet, bits
        // 64-71, is skipped) is a reading.
        [0x64, 0xff9b, 1, ..] => {
            push(v4(o[6], o[7], o[9], o[10])); // /48
            push(v4(o[7], o[9], o[10], o[11])); // /56
            push(v4(o[9], o[10], o[11], o[12])); // /64
            push(v4(o[12], o[13], o[14], o[15])); // /96
        }
        // Teredo 2001:0::/32: the client's IPv4 address is the last 32 bits inverted.
        [0x2001, 0, ..] => push(v4(!o[12], !o[13], !o[14], !o[15])),
        _ => {}
    }
    Reaches { addrs }
}

/// Whether an address lies in the local-use NAT64 prefix 64:ff9b:1::/48 (RFC 8215).
fn is_local_nat64(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[..3] == [0x64, 0xff9b, 1])
}

/// What an address really reaches, for its first reading (callers that need one address:
/// the edge's own list; the policy itself reads them all).
pub fn effective(ip: IpAddr) -> IpAddr {
    reaches(ip).iter().nth(1).unwrap_or(ip)
}

impl PeerPolicy {
    /// Whether `ip` is one of the relay's own addresses, exactly as written (other
    /// spellings of it, IPv4-mapped and the like, stay refused as the edge's own).
    pub fn is_relayed_ip(&self, ip: IpAddr) -> bool {
        self.relayed.contains(&ip)
    }

    /// Whether `peer` is a relayed port on one of the relay's own addresses.
    pub fn is_relayed(&self, peer: std::net::SocketAddr) -> bool {
        let (min, max) = self.relayed_ports;
        self.is_relayed_ip(peer.ip()) && (min..=max).contains(&peer.port())
    }

    /// For a Send indication to an address the allocation holds a permission for: false
    /// when that is the relay's own address at a port that is not a relayed one (a
    /// listener of the edge). Loopback test relays (`allow_loopback`) are not held to it.
    pub fn may_send_to(&self, peer: std::net::SocketAddr) -> bool {
        !self.is_relayed_ip(peer.ip())
            || self.is_relayed(peer)
            || (self.allow_loopback && peer.ip().is_loopback())
    }

    /// [`PeerPolicy::check`] for a permission, which names an address only: the relay's own
    /// addresses pass (what is sent there is held to the relayed ports, per packet).
    pub fn check_permission(&self, peer: IpAddr, origin: Origin) -> Result<(), Denied> {
        match self.check(peer, origin) {
            Err(Denied::Own) if self.is_relayed_ip(peer) => Ok(()),
            verdict => verdict,
        }
    }

    /// [`PeerPolicy::check`] for a peer with its port (a channel, a Send indication): the
    /// relay's own relayed ports pass, nothing else of the edge's own addresses does.
    pub fn check_addr(&self, peer: std::net::SocketAddr, origin: Origin) -> Result<(), Denied> {
        match self.check(peer.ip(), origin) {
            Err(Denied::Own) if self.is_relayed(peer) => Ok(()),
            verdict => verdict,
        }
    }

    /// Whether a relay allocated from `origin` may reach `peer`: every address the peer may
    /// really reach must pass (the first refusal is the answer).
    pub fn check(&self, peer: IpAddr, origin: Origin) -> Result<(), Denied> {
        let reaches = reaches(peer);
        for ip in reaches.iter() {
            if self.deny.iter().any(|p| p.contains(ip)) {
                return Err(Denied::Configured);
            }
        }
        if is_local_nat64(peer) {
            // Allowed by name, it is the operator's translator: its readings must still not
            // reach what no relay may (loopback, link-local, the edge itself), but garbage
            // readings of another layout (0.x, reserved) do not count against it.
            if !self.allow_internal.iter().any(|p| p.contains(peer)) {
                return Err(Denied::Translated);
            }
            for real in reaches.iter().skip(1) {
                match self.check_one(peer, real, origin) {
                    Err(Denied::Unspecified | Denied::Reserved | Denied::Internal) | Ok(()) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }
        for real in reaches.iter() {
            self.check_one(peer, real, origin)?;
        }
        Ok(())
    }

    fn check_one(&self, peer: IpAddr, real: IpAddr, origin: Origin) -> Result<(), Denied> {
        let allowed_internal = self.allows_internal(peer, real);
        let verdict = match real {
            IpAddr::V4(a) => check_v4(a, origin, allowed_internal),
            IpAddr::V6(a) => check_v6(a, origin, allowed_internal),
        };
        let verdict = match verdict {
            Err(Denied::Loopback) if self.allow_loopback => Ok(()),
            v => v,
        };
        verdict?;
        // One host playing every part in tests: its loopback addresses are its own too.
        let own = self.own.iter().map(|o| effective(*o));
        if !(self.allow_loopback && real.is_loopback()) && own.clone().any(|o| o == real) {
            return Err(Denied::Own);
        }
        let named_internal = self.internal.iter().any(|p| p.contains(real));
        if named_internal && origin == Origin::External && !allowed_internal {
            return Err(Denied::Internal);
        }
        Ok(())
    }

    fn allows_internal(&self, peer: IpAddr, real: IpAddr) -> bool {
        self.allow_internal
            .iter()
            .any(|p| p.contains(peer) || p.contains(real))
    }
}

fn check_v4(a: Ipv4Addr, origin: Origin, allowed_internal: bool) -> Result<(), Denied> {
    let [o0, o1, ..] = a.octets();
    if a.is_unspecified() || o0 == 0 {
        return Err(Denied::Unspecified);
    }
    if a.is_loopback() {
        return Err(Denied::Loopback);
    }
    if a.is_link_local() {
        return Err(Denied::LinkLocal);
    }
    if a.is_multicast() || a.is_broadcast() {
        return Err(Denied::Multicast);
    }
    // 240/4 reserved; 192.0.0/24 IETF protocol assignments.
    if o0 >= 240 || (o0 == 192 && o1 == 0 && a.octets()[2] == 0) {
        return Err(Denied::Reserved);
    }
    // RFC 1918, shared address space (100.64/10, carrier-grade NAT).
    let internal = a.is_private() || (o0 == 100 && (64..128).contains(&o1));
    if internal && origin == Origin::External && !allowed_internal {
        return Err(Denied::Internal);
    }
    Ok(())
}

fn check_v6(a: Ipv6Addr, origin: Origin, allowed_internal: bool) -> Result<(), Denied> {
    let s = a.segments();
    if a.is_unspecified() {
        return Err(Denied::Unspecified);
    }
    if a.is_loopback() {
        return Err(Denied::Loopback);
    }
    if s[0] & 0xffc0 == 0xfe80 {
        return Err(Denied::LinkLocal);
    }
    if a.is_multicast() {
        return Err(Denied::Multicast);
    }
    // Site-local (deprecated fec0::/10), discard-only 100::/64.
    if s[0] & 0xffc0 == 0xfec0 || (s[0] == 0x100 && s[1] == 0 && s[2] == 0 && s[3] == 0) {
        return Err(Denied::Reserved);
    }
    // Unique local fc00::/7.
    let internal = s[0] & 0xfe00 == 0xfc00;
    if internal && origin == Origin::External && !allowed_internal {
        return Err(Denied::Internal);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// `p`'s verdict on each peer from its origin.
    fn assert_verdicts(p: &PeerPolicy, cases: &[(&str, Origin, Result<(), Denied>)]) {
        for &(peer, origin, verdict) in cases {
            assert_eq!(p.check(ip(peer), origin), verdict, "{peer} from {origin:?}");
        }
    }

    #[test]
    fn every_bypass_form_is_denied() {
        let p = PeerPolicy::default();
        for (form, why) in [
            ("0.0.0.0", Denied::Unspecified),
            ("::", Denied::Unspecified),
            ("::1", Denied::Loopback),
            ("127.0.0.1", Denied::Loopback),
            ("127.1.2.3", Denied::Loopback),
            ("::ffff:127.0.0.1", Denied::Loopback),
            ("::127.0.0.1", Denied::Loopback),
            ("2002:7f00:1::", Denied::Loopback),
            ("64:ff9b::7f00:1", Denied::Loopback),
            // 64:ff9b:1::/48, whatever the layout (the red team's form reached 127.0.0.1
            // behind a /48 translator): refused unless allowed.
            ("64:ff9b:1::7f00:1", Denied::Translated),
            ("64:ff9b:1:7f00:0:100:808:808", Denied::Translated),
            ("64:ff9b:1:7f:0:1::", Denied::Translated),
            ("64:ff9b:1:0:7f:0:1:0", Denied::Translated),
            ("64:ff9b:1:a9fe:a9:fe00::", Denied::Translated),
            // SIIT IPv4-translated (RFC 6145).
            ("::ffff:0:7f00:1", Denied::Loopback),
            ("::ffff:0:a9fe:a9fe", Denied::LinkLocal),
            ("169.254.169.254", Denied::LinkLocal),
            ("::ffff:169.254.169.254", Denied::LinkLocal),
            ("fe80::1", Denied::LinkLocal),
            ("224.0.0.1", Denied::Multicast),
            ("ff02::1", Denied::Multicast),
            ("255.255.255.255", Denied::Multicast),
            ("240.0.0.1", Denied::Reserved),
            ("0.1.2.3", Denied::Unspecified),
            ("::ffff:0.0.0.1", Denied::Unspecified),
            ("::ffff:0.0.0.0", Denied::Unspecified),
        ] {
            for origin in [Origin::External, Origin::Internal] {
                assert_eq!(
                    p.check(ip(form), origin),
                    Err(why),
                    "{form} from {origin:?}"
                );
            }
        }
    }

    #[test]
    fn internal_ranges_only_from_inside_unless_allowed() {
        let p = PeerPolicy::default();
        for internal in [
            "10.1.2.3",
            "172.16.0.9",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "2002:a00:1::",
            "::ffff:0:a00:1",
        ] {
            assert_eq!(
                p.check(ip(internal), Origin::External),
                Err(Denied::Internal),
                "{internal}"
            );
            assert_eq!(
                p.check(ip(internal), Origin::Internal),
                Ok(()),
                "{internal}"
            );
        }
        let allowing = PeerPolicy {
            allow_internal: vec![Prefix::parse("10.20.0.0/16").unwrap()],
            deny: vec![Prefix::parse("203.0.113.66").unwrap()],
            ..PeerPolicy::default()
        };
        assert_verdicts(
            &allowing,
            &[
                ("10.20.5.5", Origin::External, Ok(())),
                ("10.21.5.5", Origin::External, Err(Denied::Internal)),
                ("203.0.113.66", Origin::Internal, Err(Denied::Configured)),
                (
                    "::ffff:203.0.113.66",
                    Origin::Internal,
                    Err(Denied::Configured),
                ),
            ],
        );
    }

    #[test]
    fn named_internal_ranges_and_the_edges_own_addresses() {
        let p = PeerPolicy {
            internal: vec![Prefix::parse("198.18.0.0/15").unwrap()],
            allow_internal: vec![Prefix::parse("198.19.7.0/24").unwrap()],
            own: vec![ip("192.0.2.10"), ip("203.0.113.10"), ip("2001:db8::10")],
            ..PeerPolicy::default()
        };
        assert_verdicts(
            &p,
            &[
                ("198.18.1.1", Origin::External, Err(Denied::Internal)),
                ("::ffff:198.18.1.1", Origin::External, Err(Denied::Internal)),
                ("2002:c612:101::", Origin::External, Err(Denied::Internal)),
                ("198.18.1.1", Origin::Internal, Ok(())),
                ("198.19.7.7", Origin::External, Ok(())),
                ("192.0.2.10", Origin::Internal, Err(Denied::Own)),
                ("203.0.113.10", Origin::External, Err(Denied::Own)),
                ("::ffff:203.0.113.10", Origin::External, Err(Denied::Own)),
                ("64:ff9b::c000:20a", Origin::Internal, Err(Denied::Own)),
                ("2001:db8::10", Origin::External, Err(Denied::Own)),
                ("203.0.113.11", Origin::External, Ok(())),
            ],
        );
        // Tests on one host: loopback peers are allowed even when the edge listens there.
        let one_host = PeerPolicy {
            own: vec![ip("127.0.0.1")],
            allow_loopback: true,
            ..PeerPolicy::default()
        };
        assert_eq!(one_host.check(ip("127.0.0.1"), Origin::Internal), Ok(()));
        assert_eq!(
            PeerPolicy {
                allow_loopback: false,
                ..one_host
            }
            .check(ip("127.0.0.1"), Origin::Internal),
            Err(Denied::Loopback)
        );
    }

    #[test]
    fn the_local_use_nat64_prefix_only_when_allowed_and_never_into_loopback() {
        let p = PeerPolicy::default();
        let public_v96 = ip("64:ff9b:1::c633:6407");
        assert_eq!(
            p.check(public_v96, Origin::Internal),
            Err(Denied::Translated)
        );
        let allowing = PeerPolicy {
            allow_internal: vec![Prefix::parse("64:ff9b:1::/48").unwrap()],
            ..PeerPolicy::default()
        };
        assert_eq!(allowing.check(public_v96, Origin::External), Ok(()));
        // Allowed by name, a reading that reaches loopback or the metadata service still
        // does not pass.
        assert_verdicts(
            &allowing,
            &[
                (
                    "64:ff9b:1:7f00:0:100:808:808",
                    Origin::Internal,
                    Err(Denied::Loopback),
                ),
                (
                    "64:ff9b:1::a9fe:a9fe",
                    Origin::Internal,
                    Err(Denied::LinkLocal),
                ),
            ],
        );
    }

    #[test]
    fn public_peers_pass() {
        let p = PeerPolicy::default();
        for public in [
            "198.51.100.7",
            "203.0.113.5",
            "2001:db8::5",
            "8.8.8.8",
            "2606:4700::1",
        ] {
            assert_eq!(p.check(ip(public), Origin::External), Ok(()), "{public}");
        }
        // Teredo embeds the (inverted) client address: a Teredo form of 127.0.0.1 is loopback.
        let teredo_loopback =
            Ipv6Addr::new(0x2001, 0, 0x4136, 0xe378, 0x8000, 0x63bf, !0x7f00, !0x0001);
        assert_eq!(
            p.check(IpAddr::V6(teredo_loopback), Origin::Internal),
            Err(Denied::Loopback)
        );
    }
}
