//! Stateless nonces (RFC 8656 §9: "the server SHOULD ... include a NONCE"): the nonce is
//! its own record — issue time and an HMAC over (time, client address, realm) with a key
//! derived from the pool ring — so an unauthenticated request costs the server no state,
//! any pool member verifies any member's nonce, and a nonce replayed from another address
//! or after its lifetime is stale (438).

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// RFC 8489 §9.2: nonces with the "security feature" cookie start `obMatJos2`; we do not
/// claim feature bits, so ours are plain.
const LEN: usize = 8 + 24;
/// A nonce older than this is stale (coturn's default is 600 s).
pub const DEFAULT_LIFETIME_SECS: u64 = 600;

/// Why a nonce is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceError {
    /// Not one of ours at all (401 with a fresh nonce).
    Invalid,
    /// Ours but expired, or issued to another address (438 Stale Nonce).
    Stale,
}

/// Issues and checks nonces.
#[derive(Clone)]
pub struct Nonces {
    mac: Hmac<Sha256>,
    realm: String,
    lifetime_secs: u64,
}

impl Nonces {
    /// `key` is the ring's `Purpose::TurnNonce` key.
    pub fn new(key: &[u8; 32], realm: &str, lifetime_secs: u64) -> Nonces {
        Nonces {
            // HMAC takes keys of any length: this cannot fail.
            mac: <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!()),
            realm: realm.to_string(),
            lifetime_secs,
        }
    }

    fn tag(&self, issued: u32, client: IpAddr) -> [u8; 12] {
        let mut mac = self.mac.clone();
        mac.update(b"sipedge-turn-nonce-v1");
        mac.update(&issued.to_be_bytes());
        match client {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
        mac.update(self.realm.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 12];
        for (o, b) in out.iter_mut().zip(full.iter()) {
            *o = *b;
        }
        out
    }

    /// A nonce for `client` at `now` (Unix seconds): 8 hex digits of time, 24 of MAC.
    pub fn issue(&self, client: IpAddr, now: u64) -> String {
        let issued = u32::try_from(now).unwrap_or(u32::MAX);
        let mut s = format!("{issued:08x}");
        for b in self.tag(issued, client) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    pub fn check(&self, nonce: &[u8], client: IpAddr, now: u64) -> Result<(), NonceError> {
        if nonce.len() != LEN
            || !nonce
                .iter()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(NonceError::Invalid);
        }
        let text = std::str::from_utf8(nonce).map_err(|_| NonceError::Invalid)?;
        let issued = u32::from_str_radix(text.get(..8).ok_or(NonceError::Invalid)?, 16)
            .map_err(|_| NonceError::Invalid)?;
        let mut mac = [0u8; 12];
        for (i, m) in mac.iter_mut().enumerate() {
            let pair = text.get(8 + 2 * i..10 + 2 * i).ok_or(NonceError::Invalid)?;
            *m = u8::from_str_radix(pair, 16).map_err(|_| NonceError::Invalid)?;
        }
        if !bool::from(self.tag(issued, client).ct_eq(&mac)) {
            // A valid nonce given to another address reads as forged here; both are
            // answered with a fresh nonce, which is what the client needs either way.
            return Err(NonceError::Stale);
        }
        let age = now.saturating_sub(u64::from(issued));
        if u64::from(issued) > now.saturating_add(60) || age > self.lifetime_secs {
            return Err(NonceError::Stale);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn issue_check_expire() {
        let n = Nonces::new(&[1; 32], "sipedge.test", 600);
        let nonce = n.issue(ip("203.0.113.5"), T0);
        assert_eq!(nonce.len(), LEN);
        assert_eq!(
            n.check(nonce.as_bytes(), ip("203.0.113.5"), T0 + 10),
            Ok(())
        );
        assert_eq!(
            n.check(nonce.as_bytes(), ip("203.0.113.5"), T0 + 600),
            Ok(())
        );
        assert_eq!(
            n.check(nonce.as_bytes(), ip("203.0.113.5"), T0 + 601),
            Err(NonceError::Stale)
        );
        assert_eq!(
            n.check(nonce.as_bytes(), ip("203.0.113.6"), T0 + 10),
            Err(NonceError::Stale),
            "another address"
        );
    }

    #[test]
    fn any_pool_member_checks_any_members_nonce_but_not_another_pools() {
        let a = Nonces::new(&[1; 32], "sipedge.test", 600);
        let b = Nonces::new(&[1; 32], "sipedge.test", 600);
        let other = Nonces::new(&[2; 32], "sipedge.test", 600);
        let nonce = a.issue(ip("::1"), T0);
        assert_eq!(b.check(nonce.as_bytes(), ip("::1"), T0), Ok(()));
        assert_eq!(
            other.check(nonce.as_bytes(), ip("::1"), T0),
            Err(NonceError::Stale)
        );
    }

    #[test]
    fn garbage_is_invalid() {
        let n = Nonces::new(&[1; 32], "r", 600);
        for bad in [
            &b""[..],
            b"xyz",
            &[b'0'; LEN - 1],
            &[b'G'; LEN],
            "00000000AAAAAAAAAAAAAAAAAAAAAAAA".as_bytes(),
        ] {
            assert_eq!(
                n.check(bad, ip("::1"), T0),
                Err(NonceError::Invalid),
                "{bad:?}"
            );
        }
        let future = n.issue(ip("::1"), T0 + 3600);
        assert_eq!(
            n.check(future.as_bytes(), ip("::1"), T0),
            Err(NonceError::Stale),
            "from the future"
        );
    }
}
