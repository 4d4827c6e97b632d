//! Flow tokens and the edge's branch: every proof the edge hands out and later accepts.
//!
//! A token names a flow (one TLS connection, or a federation partner) and carries an 80-bit
//! MAC (two SipHash-2-4 outputs under keys HMAC-SHA256 derives from the ring secret) over
//! what it was minted for, so nobody can write a Via, Route or Path that makes the edge send
//! on someone else's connection, or reuse a token it saw for anything but its purpose:
//!
//! | kind | written in | proves | accepted |
//! |---|---|---|---|
//! | [`TokenKind::Via`] | `ftok=` of the edge's Via | the flow a request came from | in responses (with the branch) |
//! | [`TokenKind::Path`] | Path of a REGISTER (RFC 3327) | a registered flow | in a Route from the inside |
//! | [`TokenKind::DialogFromOutside`], [`TokenKind::DialogFromInside`] | Record-Route | one dialog: Call-ID and the initiator's tag, the side that initiated it, and the flow | in a Route, from either side |
//!
//! The edge's branch (RFC 3261 §16.11) is a keyed hash (SipHash-2-4) of the flow a request
//! came from, the flow it went to and the sender's transaction, so a response proves which
//! transaction it answers: the edge forwards only responses to requests it forwarded, from
//! the flow it forwarded them to. It is deterministic, so a CANCEL or an ACK for a non-2xx
//! gets the branch of its INVITE without any per-transaction state.
//!
//! Keys come from the pool key ring (so partner dialogs survive restarts and moves between
//! pool members) or, without a ring, from a random per-process secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use siphasher::sip::SipHasher24;
use std::hash::Hasher;

/// The id of one flow (connection) inside this edge instance. Never reused in a process.
/// Ids with the top bit set name no connection but a federation partner (any connection to
/// its edge): Record-Routes of partner dialogs carry them, so in-dialog requests survive
/// the partner's connections coming and going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

const PARTNER_BIT: u64 = 1 << 63;

impl FlowId {
    /// Not a connection: the Director pool as the target of a request from outside (any
    /// pool connection may answer it). Flow ids of connections start at 1.
    pub const POOL: FlowId = FlowId(0);

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

/// What a token was minted for. Part of what its MAC covers, and its first character, so a
/// token of one kind can never pass for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// `ftok=` in the edge's own Via.
    Via,
    /// Path of a REGISTER: new requests from the inside to the registered flow.
    Path,
    /// Record-Route of a dialog whose initial request came from outside: the outside party
    /// initiated it, and its tag is the one bound.
    DialogFromOutside,
    /// Record-Route of a dialog initiated from the inside.
    DialogFromInside,
}

impl TokenKind {
    fn letter(self) -> u8 {
        match self {
            TokenKind::Via => b'v',
            TokenKind::Path => b'p',
            TokenKind::DialogFromOutside => b'o',
            TokenKind::DialogFromInside => b'i',
        }
    }

    fn of_letter(b: u8) -> Option<TokenKind> {
        Some(match b {
            b'v' => TokenKind::Via,
            b'p' => TokenKind::Path,
            b'o' => TokenKind::DialogFromOutside,
            b'i' => TokenKind::DialogFromInside,
            _ => return None,
        })
    }

    /// Whether this kind is bound to a dialog (Record-Route).
    pub fn is_dialog(self) -> bool {
        matches!(
            self,
            TokenKind::DialogFromOutside | TokenKind::DialogFromInside
        )
    }
}

/// Length of a token's text: the kind letter, 16 hex digits of flow id and 20 of MAC (80 bits).
pub const TOKEN_LEN: usize = 1 + ID_HEX + MAC_BYTES * 2;
const ID_HEX: usize = 16;
const MAC_BYTES: usize = 10;

/// A token as it appears on the wire: a kind letter then lower-case hex, valid as a SIP URI
/// user part and as a Via parameter value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FlowToken([u8; TOKEN_LEN]);

impl FlowToken {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Only a letter and hex digits are ever written into a token.
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
    /// Not a token's shape: a kind letter and 36 lower-case hex digits.
    Malformed,
    /// The MAC does not match what it claims: forged, tampered, or used for something it
    /// was not minted for (another dialog, another kind).
    BadSignature,
}

/// A token read off the wire, not yet checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimedToken {
    pub kind: TokenKind,
    pub flow: FlowId,
    mac: [u8; MAC_BYTES],
}

impl ClaimedToken {
    /// Reads a token's text (kind, flow and MAC); checks nothing else.
    pub fn parse(text: &[u8]) -> Result<ClaimedToken, TokenError> {
        let (&letter, rest) = text.split_first().ok_or(TokenError::Malformed)?;
        if text.len() != TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let kind = TokenKind::of_letter(letter).ok_or(TokenError::Malformed)?;
        let (id_hex, mac_hex) = rest.split_at(ID_HEX);
        let mut id = [0u8; 8];
        let mut mac = [0u8; MAC_BYTES];
        if !read_hex(id_hex, &mut id) || !read_hex(mac_hex, &mut mac) {
            return Err(TokenError::Malformed);
        }
        Ok(ClaimedToken {
            kind,
            flow: FlowId(u64::from_be_bytes(id)),
            mac,
        })
    }
}

/// What a dialog token is bound to: the Call-ID and the tag of the party that initiated
/// the dialog (the From tag of its initial request).
#[derive(Clone, Copy, Debug)]
pub struct DialogBinding<'a> {
    pub call_id: &'a [u8],
    pub initiator_tag: &'a [u8],
}

/// The keys of this edge instance: one that signs, and older ones of the pool key ring that
/// still verify (tokens in long-lived Record-Routes survive a key rotation).
#[derive(Clone)]
pub struct FlowKeys {
    mac: TokenKey,
    older: Vec<TokenKey>,
    /// SipHash-2-4 key of the edge's branches.
    branch: (u64, u64),
    /// The branch keys of `older`: a response to a request forwarded before a rotation
    /// still matches its transaction.
    older_branch: Vec<(u64, u64)>,
}

fn hmac_key(secret: &[u8; 32]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length: this cannot fail for 32 bytes.
    <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

/// The token MAC key: two independent SipHash-2-4 keys, derived from a ring secret.
/// A token's MAC is both outputs, truncated to 80 bits: a standard PRF (the one the
/// branch uses) at a third of HMAC-SHA256's cost on the per-dialog path, and an 80-bit
/// tag is far beyond what online guessing (one request per try) can reach.
#[derive(Clone)]
struct TokenKey([(u64, u64); 2]);

fn token_key(secret: &[u8; 32]) -> TokenKey {
    let mut mac = hmac_key(secret);
    mac.update(b"sipedge-token-v3");
    let full = mac.finalize().into_bytes();
    let mut words = [0u64; 4];
    for (w, chunk) in words.iter_mut().zip(full.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    let [a, b, c, d] = words;
    TokenKey([(a, b), (c, d)])
}

/// The branch key, derived from the signing secret (a key of its own for each use).
fn branch_key(secret: &[u8; 32]) -> (u64, u64) {
    let mut mac = hmac_key(secret);
    mac.update(b"sipedge-branch-v2");
    let full = mac.finalize().into_bytes();
    let mut k0 = [0u8; 8];
    let mut k1 = [0u8; 8];
    for (o, b) in k0.iter_mut().chain(k1.iter_mut()).zip(full.iter()) {
        *o = *b;
    }
    (u64::from_le_bytes(k0), u64::from_le_bytes(k1))
}

/// A transaction as the sender named it: what the edge's branch is computed over, and
/// what a response must reproduce.
#[derive(Clone, Copy, Debug)]
pub enum SenderTx<'a> {
    /// An RFC 3261 branch (magic cookie): unique by itself within the Call-ID.
    Branch { branch: &'a [u8], call_id: &'a [u8] },
    /// An RFC 2543 sender (no magic cookie, or no branch at all): the transaction is named
    /// by the top Via's sent-by and branch (if any), the Call-ID, the From tag and the CSeq
    /// number (RFC 3261 §17.2.3; the Request-URI and To tag are left out because a response
    /// does not carry the former and gains the latter).
    Legacy {
        sent_by: &'a [u8],
        branch: &'a [u8],
        call_id: &'a [u8],
        from_tag: &'a [u8],
        cseq: u32,
    },
}

impl FlowKeys {
    /// `secret` must come from a CSPRNG (the shell uses ring's `SystemRandom`) or the pool
    /// ring.
    pub fn new(secret: &[u8; 32]) -> FlowKeys {
        FlowKeys::with_older(secret, &[])
    }

    /// Signs with `signing`; also accepts tokens of `older` keys.
    pub fn with_older(signing: &[u8; 32], older: &[[u8; 32]]) -> FlowKeys {
        FlowKeys {
            mac: token_key(signing),
            older: older.iter().map(token_key).collect(),
            branch: branch_key(signing),
            older_branch: older.iter().map(branch_key).collect(),
        }
    }

    fn tag_with(
        key: &TokenKey,
        kind: TokenKind,
        id: FlowId,
        binding: Option<DialogBinding<'_>>,
    ) -> [u8; MAC_BYTES] {
        let mut full = [0u8; 16];
        for (half, &(k0, k1)) in full.chunks_exact_mut(8).zip(key.0.iter()) {
            let mut h = SipHasher24::new_with_keys(k0, k1);
            h.write(b"sipedge-flow-v3");
            h.write(&[kind.letter()]);
            h.write(&id.0.to_be_bytes());
            if let Some(b) = binding {
                // Length-prefixed: no Call-ID/tag split can collide with another.
                h.write(&(b.call_id.len() as u64).to_be_bytes());
                h.write(b.call_id);
                h.write(&(b.initiator_tag.len() as u64).to_be_bytes());
                h.write(b.initiator_tag);
            }
            half.copy_from_slice(&h.finish().to_be_bytes());
        }
        let mut out = [0u8; MAC_BYTES];
        for (o, b) in out.iter_mut().zip(full.iter()) {
            *o = *b;
        }
        out
    }

    fn write(kind: TokenKind, id: FlowId, mac: &[u8; MAC_BYTES]) -> FlowToken {
        let mut out = [b'0'; TOKEN_LEN];
        if let Some((letter, rest)) = out.split_first_mut() {
            *letter = kind.letter();
            let (id_part, mac_part) = rest.split_at_mut(ID_HEX);
            write_hex(&id.0.to_be_bytes(), id_part);
            write_hex(mac, mac_part);
        }
        FlowToken(out)
    }

    /// A token of a kind bound to no dialog (Via, Path). Computed once per connection.
    pub fn token(&self, kind: TokenKind, id: FlowId) -> FlowToken {
        debug_assert!(!kind.is_dialog(), "dialog tokens are bound to a dialog");
        Self::write(kind, id, &Self::tag_with(&self.mac, kind, id, None))
    }

    /// The Record-Route token of one dialog.
    pub fn dialog_token(
        &self,
        kind: TokenKind,
        id: FlowId,
        binding: DialogBinding<'_>,
    ) -> FlowToken {
        debug_assert!(kind.is_dialog());
        Self::write(
            kind,
            id,
            &Self::tag_with(&self.mac, kind, id, Some(binding)),
        )
    }

    /// Checks a claimed token's MAC in constant time, for what the caller says it must be
    /// bound to (`None` for Via and Path tokens).
    pub fn check(
        &self,
        claimed: &ClaimedToken,
        binding: Option<DialogBinding<'_>>,
    ) -> Result<FlowId, TokenError> {
        if claimed.kind.is_dialog() != binding.is_some() {
            return Err(TokenError::BadSignature);
        }
        // Every key is tried: the time taken does not tell which one matched.
        let mut ok = subtle::ConstantTimeEq::ct_eq(
            &Self::tag_with(&self.mac, claimed.kind, claimed.flow, binding)[..],
            &claimed.mac[..],
        );
        for older in &self.older {
            ok |= subtle::ConstantTimeEq::ct_eq(
                &Self::tag_with(older, claimed.kind, claimed.flow, binding)[..],
                &claimed.mac[..],
            );
        }
        if ok.into() {
            Ok(claimed.flow)
        } else {
            Err(TokenError::BadSignature)
        }
    }

    /// Reads and checks a token of a kind bound to no dialog; `Err` also when the text is
    /// a token of another kind.
    pub fn verify(&self, kind: TokenKind, text: &[u8]) -> Result<FlowId, TokenError> {
        let claimed = ClaimedToken::parse(text)?;
        if claimed.kind != kind {
            return Err(TokenError::BadSignature);
        }
        self.check(&claimed, None)
    }

    /// The hash in the edge's branch for a request that arrived on `from`, goes to
    /// `target`, and was sent as transaction `tx`.
    pub fn branch(&self, from: FlowId, target: FlowId, tx: SenderTx<'_>) -> u64 {
        Self::branch_with(self.branch, from, target, tx)
    }

    /// Whether `branch` is the edge's for that request under the signing key or an older
    /// one (a response to a request forwarded before a rotation).
    pub fn branch_matches(
        &self,
        from: FlowId,
        target: FlowId,
        tx: SenderTx<'_>,
        branch: u64,
    ) -> bool {
        std::iter::once(&self.branch)
            .chain(&self.older_branch)
            .any(|key| Self::branch_with(*key, from, target, tx) == branch)
    }

    fn branch_with(key: (u64, u64), from: FlowId, target: FlowId, tx: SenderTx<'_>) -> u64 {
        let mut h = SipHasher24::new_with_keys(key.0, key.1);
        h.write_u64(from.0);
        h.write_u64(target.0);
        let mut field = |bytes: &[u8]| {
            h.write_u64(bytes.len() as u64);
            h.write(bytes);
        };
        match tx {
            SenderTx::Branch { branch, call_id } => {
                field(b"3261");
                field(branch);
                field(call_id);
            }
            SenderTx::Legacy {
                sent_by,
                branch,
                call_id,
                from_tag,
                cseq,
            } => {
                field(b"2543");
                field(sent_by);
                field(branch);
                field(call_id);
                field(from_tag);
                field(&cseq.to_be_bytes());
            }
        }
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
        FlowKeys::new(&[secret; 32])
    }

    /// `token` with its byte at `at` replaced by `to`.
    fn altered(token: &FlowToken, at: usize, to: u8) -> Vec<u8> {
        let mut bytes = token.as_bytes().to_vec();
        bytes[at] = to;
        bytes
    }

    fn dialog<'a>(call_id: &'a str, tag: &'a str) -> DialogBinding<'a> {
        DialogBinding {
            call_id: call_id.as_bytes(),
            initiator_tag: tag.as_bytes(),
        }
    }

    #[test]
    fn tokens_of_an_older_ring_key_still_verify_after_rotation() {
        let old = keys(1);
        let token = old.token(TokenKind::Via, FlowId(7));
        let rotated = FlowKeys::with_older(&[2; 32], &[[1; 32]]);
        assert_eq!(
            rotated.verify(TokenKind::Via, token.as_bytes()),
            Ok(FlowId(7))
        );
        assert_ne!(
            rotated.token(TokenKind::Via, FlowId(7)).as_str(),
            token.as_str(),
            "new tokens use the new key"
        );
        assert_eq!(
            keys(2).verify(TokenKind::Via, token.as_bytes()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn round_trip() {
        let k = keys(1);
        let t = k.token(TokenKind::Path, FlowId(42));
        assert_eq!(t.as_str().len(), TOKEN_LEN);
        assert!(t.as_str().starts_with('p'));
        assert_eq!(k.verify(TokenKind::Path, t.as_bytes()), Ok(FlowId(42)));
    }

    #[test]
    fn a_token_proves_only_its_kind() {
        let k = keys(1);
        let via = k.token(TokenKind::Via, FlowId(42));
        assert_eq!(
            k.verify(TokenKind::Path, via.as_bytes()),
            Err(TokenError::BadSignature)
        );
        // Relabelled: the MAC covers the kind.
        assert_eq!(
            k.verify(TokenKind::Path, &altered(&via, 0, b'p')),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn a_dialog_token_proves_only_its_dialog() {
        let k = keys(1);
        let t = k.dialog_token(
            TokenKind::DialogFromOutside,
            FlowId(5),
            dialog("call-1", "tag-a"),
        );
        let claimed = ClaimedToken::parse(t.as_bytes()).unwrap();
        assert_eq!(claimed.kind, TokenKind::DialogFromOutside);
        assert_eq!(
            k.check(&claimed, Some(dialog("call-1", "tag-a"))),
            Ok(FlowId(5))
        );
        for other in [
            dialog("call-2", "tag-a"),
            dialog("call-1", "tag-b"),
            // The boundary between Call-ID and tag is part of what is signed.
            dialog("call-1t", "ag-a"),
        ] {
            assert_eq!(
                k.check(&claimed, Some(other)),
                Err(TokenError::BadSignature)
            );
        }
        assert_eq!(k.check(&claimed, None), Err(TokenError::BadSignature));
        // The other direction's letter on the same MAC.
        let flipped = altered(&t, 0, b'i');
        let claimed = ClaimedToken::parse(&flipped).unwrap();
        assert_eq!(
            k.check(&claimed, Some(dialog("call-1", "tag-a"))),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn forgeries_are_refused() {
        let k = keys(1);
        let t = k.token(TokenKind::Via, FlowId(42));
        // Another key.
        assert_eq!(
            keys(2).verify(TokenKind::Via, t.as_bytes()),
            Err(TokenError::BadSignature)
        );
        for (forged, why) in [
            // Another flow id with the old MAC.
            (altered(&t, 16, b'b'), TokenError::BadSignature),
            // Upper-case, short, non-hex, unknown kind.
            (
                t.as_str().to_uppercase().into_bytes(),
                TokenError::Malformed,
            ),
            (t.as_bytes()[1..].to_vec(), TokenError::Malformed),
            (vec![b'g'; TOKEN_LEN], TokenError::Malformed),
            (altered(&t, 0, b'x'), TokenError::Malformed),
        ] {
            assert_eq!(
                k.verify(TokenKind::Via, &forged),
                Err(why),
                "{}",
                String::from_utf8_lossy(&forged)
            );
        }
    }

    #[test]
    fn branch_is_deterministic_and_covers_flows_and_transaction() {
        let k = keys(1);
        let tx = SenderTx::Branch {
            branch: b"z9hG4bKa",
            call_id: b"c1",
        };
        let b = k.branch(FlowId(1), FlowId::POOL, tx);
        assert_eq!(b, k.branch(FlowId(1), FlowId::POOL, tx));
        assert_ne!(b, k.branch(FlowId(2), FlowId::POOL, tx));
        assert_ne!(b, k.branch(FlowId(1), FlowId(9), tx));
        assert_ne!(
            b,
            k.branch(
                FlowId(1),
                FlowId::POOL,
                SenderTx::Branch {
                    branch: b"z9hG4bKa",
                    call_id: b"c2"
                }
            )
        );
        assert_ne!(b, keys(2).branch(FlowId(1), FlowId::POOL, tx));
        let legacy = |cseq| SenderTx::Legacy {
            sent_by: b"192.0.2.1:5060",
            branch: b"",
            call_id: b"c1",
            from_tag: b"t",
            cseq,
        };
        assert_eq!(
            k.branch(FlowId(1), FlowId::POOL, legacy(1)),
            k.branch(FlowId(1), FlowId::POOL, legacy(1))
        );
        assert_ne!(
            k.branch(FlowId(1), FlowId::POOL, legacy(1)),
            k.branch(FlowId(1), FlowId::POOL, legacy(2))
        );
    }
}
