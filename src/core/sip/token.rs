//! Flow tokens: HMAC-signed names of the edge's connections (RFC 5626 §5.2 "flow tokens").
//!
//! A token names a flow (one TLS connection) and carries a MAC, so nobody can write a Via,
//! Route or Path that makes the edge send on someone else's connection. Tokens are only
//! ever verified by the edge instance that made them (flows are per instance), so the key is
//! per process and random; a restart invalidates all tokens, exactly as it drops all flows.
//!
//! Also owns the branch hash for the edge's own Via (RFC 3261 §16.11): deterministic in the
//! flow and the incoming branch, so a CANCEL or an ACK for a non-2xx gets the branch of its
//! INVITE without any per-transaction state.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::hash::{BuildHasher, Hasher};

/// The id of one flow (connection) inside this edge instance. Never reused in a process.
/// Ids with the top bit set name no connection but a federation partner (any connection to
/// its edge): Record-Routes of partner dialogs carry them, so in-dialog requests survive
/// the partner's connections coming and going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

const PARTNER_BIT: u64 = 1 << 63;

impl FlowId {
    /// The virtual flow of the partner with this stable key ([`super::federation`]: derived
    /// from the partner edge's FQDN, so every pool member and every restart agrees).
    pub fn partner(key: u64) -> FlowId {
        FlowId(PARTNER_BIT | (key & !PARTNER_BIT))
    }

    /// The partner key a virtual flow carries, if it is one.
    pub fn as_partner(self) -> Option<u64> {
        (self.0 & PARTNER_BIT != 0).then_some(self.0 & !PARTNER_BIT)
    }
}

/// Length of a token's text: 16 hex digits of flow id and 20 of MAC (80 bits).
pub const TOKEN_LEN: usize = 36;
const ID_HEX: usize = 16;
const MAC_BYTES: usize = 10;

/// A token as it appears on the wire: lower-case hex, valid as a SIP URI user part and as a
/// Via parameter value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FlowToken([u8; TOKEN_LEN]);

impl FlowToken {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Only hex digits are ever written into a token.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::fmt::Debug for FlowToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FlowToken({})", self.as_str())
    }
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not 36 lower-case hex digits.
    Malformed,
    /// The MAC does not match: forged or tampered.
    BadSignature,
}

/// The keys of this edge instance: one that signs, and older ones of the pool key ring that
/// still verify (tokens in long-lived Record-Routes survive a key rotation).
#[derive(Clone)]
pub struct FlowKeys {
    mac: Hmac<Sha256>,
    older: Vec<Hmac<Sha256>>,
    branch: std::collections::hash_map::RandomState,
}

fn hmac_key(secret: &[u8; 32]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length: this cannot fail for 32 bytes.
    <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

impl FlowKeys {
    /// `secret` must come from a CSPRNG (the shell uses ring's `SystemRandom`).
    pub fn new(
        secret: &[u8; 32],
        branch_seed: std::collections::hash_map::RandomState,
    ) -> FlowKeys {
        FlowKeys {
            mac: hmac_key(secret),
            older: Vec::new(),
            branch: branch_seed,
        }
    }

    /// Signs with `signing`; also accepts tokens of `older` keys.
    pub fn with_older(
        signing: &[u8; 32],
        older: &[[u8; 32]],
        branch_seed: std::collections::hash_map::RandomState,
    ) -> FlowKeys {
        FlowKeys {
            mac: hmac_key(signing),
            older: older.iter().map(hmac_key).collect(),
            branch: branch_seed,
        }
    }

    fn tag(&self, id: FlowId) -> [u8; MAC_BYTES] {
        Self::tag_with(&self.mac, id)
    }

    fn tag_with(key: &Hmac<Sha256>, id: FlowId) -> [u8; MAC_BYTES] {
        let mut mac = key.clone();
        mac.update(b"sipedge-flow-v1");
        mac.update(&id.0.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_BYTES];
        for (o, b) in out.iter_mut().zip(full.iter()) {
            *o = *b;
        }
        out
    }

    /// The token naming `id`. Computed once per connection, not per message.
    pub fn token(&self, id: FlowId) -> FlowToken {
        let mut out = [b'0'; TOKEN_LEN];
        let (id_part, mac_part) = out.split_at_mut(ID_HEX);
        write_hex(&id.0.to_be_bytes(), id_part);
        write_hex(&self.tag(id), mac_part);
        FlowToken(out)
    }

    /// Checks a token's MAC in constant time and returns the flow it names.
    pub fn verify(&self, text: &[u8]) -> Result<FlowId, TokenError> {
        if text.len() != TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (id_hex, mac_hex) = text.split_at(ID_HEX);
        let mut id = [0u8; 8];
        let mut mac = [0u8; MAC_BYTES];
        if !read_hex(id_hex, &mut id) || !read_hex(mac_hex, &mut mac) {
            return Err(TokenError::Malformed);
        }
        let flow = FlowId(u64::from_be_bytes(id));
        // Every key is tried: the time taken does not tell which one matched.
        let mut ok = subtle::ConstantTimeEq::ct_eq(&self.tag(flow)[..], &mac[..]);
        for older in &self.older {
            ok |= subtle::ConstantTimeEq::ct_eq(&Self::tag_with(older, flow)[..], &mac[..]);
        }
        if ok.into() {
            Ok(flow)
        } else {
            Err(TokenError::BadSignature)
        }
    }

    /// The hash in the edge's branch for a request that arrived on `flow` with the sender's
    /// branch `incoming`.
    pub fn branch_hash(&self, flow: FlowId, incoming: &[u8]) -> u64 {
        let mut h = self.branch.build_hasher();
        h.write_u64(flow.0);
        h.write(incoming);
        h.finish()
    }
}

fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        if let [hi, lo] = pair {
            *hi = HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0');
            *lo = HEX.get(usize::from(b & 0xf)).copied().unwrap_or(b'0');
        }
    }
}

/// Lower-case hex only: one spelling per token, so a token cannot be varied to probe.
fn read_hex(text: &[u8], out: &mut [u8]) -> bool {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if text.len() != out.len() * 2 {
        return false;
    }
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        match (
            pair.first().copied().and_then(nibble),
            pair.get(1).copied().and_then(nibble),
        ) {
            (Some(hi), Some(lo)) => *o = hi << 4 | lo,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: u8) -> FlowKeys {
        FlowKeys::new(&[secret; 32], Default::default())
    }

    #[test]
    fn tokens_of_an_older_ring_key_still_verify_after_rotation() {
        let old = keys(1);
        let token = old.token(FlowId(7));
        let rotated = FlowKeys::with_older(&[2; 32], &[[1; 32]], Default::default());
        assert_eq!(rotated.verify(token.as_bytes()), Ok(FlowId(7)));
        assert_ne!(
            rotated.token(FlowId(7)).as_str(),
            token.as_str(),
            "new tokens use the new key"
        );
        assert_eq!(
            keys(2).verify(token.as_bytes()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn round_trip() {
        let k = keys(1);
        let t = k.token(FlowId(42));
        assert_eq!(t.as_str().len(), TOKEN_LEN);
        assert_eq!(k.verify(t.as_bytes()), Ok(FlowId(42)));
    }

    #[test]
    fn forgeries_are_refused() {
        let k = keys(1);
        let t = k.token(FlowId(42));
        // Another flow id with the old MAC.
        let mut forged = t.as_bytes().to_vec();
        forged[15] = b'b';
        assert_eq!(k.verify(&forged), Err(TokenError::BadSignature));
        // Another key.
        assert_eq!(keys(2).verify(t.as_bytes()), Err(TokenError::BadSignature));
        // Upper-case, short, non-hex.
        assert_eq!(
            k.verify(t.as_str().to_uppercase().as_bytes()),
            Err(TokenError::Malformed)
        );
        assert_eq!(k.verify(&t.as_bytes()[1..]), Err(TokenError::Malformed));
        assert_eq!(k.verify(&[b'g'; TOKEN_LEN]), Err(TokenError::Malformed));
    }

    #[test]
    fn branch_hash_is_deterministic_per_flow_and_branch() {
        let k = keys(1);
        assert_eq!(
            k.branch_hash(FlowId(1), b"z9hG4bKa"),
            k.branch_hash(FlowId(1), b"z9hG4bKa")
        );
        assert_ne!(
            k.branch_hash(FlowId(1), b"z9hG4bKa"),
            k.branch_hash(FlowId(2), b"z9hG4bKa")
        );
    }
}
