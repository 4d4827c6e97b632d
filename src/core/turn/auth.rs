//! TURN long-term credential authentication with REST-API usernames (RFC 8489 §9.2, as
//! coturn's `use-auth-secret` does it), in two steps because the key depends on the
//! username (CRATES.md trap 2): read USERNAME, REALM and NONCE from the checked message,
//! check the nonce (stateless), check the username's expiry, then for each key of the pool
//! ring derive the password and the long-term key MD5(username:realm:password) and verify
//! MESSAGE-INTEGRITY ourselves in constant time (trap 3). MESSAGE-INTEGRITY is required on
//! every authenticated request (trap 1): its absence is a 401 like any failure.

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::nonce::{NonceError, Nonces};
use super::stun::{attr, Checked, HEADER_LEN};
use crate::core::keyring::{Ring, MAX_CREDENTIAL_LIFETIME_SECS};

/// An authenticated request: who, and the key its response must be signed with.
#[derive(Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub username: String,
    pub key: [u8; 16],
}

impl std::fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticated")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Why a request is not authenticated, and the error the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// 401 with REALM and a fresh NONCE: no credentials, or the wrong ones.
    Unauthorized,
    /// 438 with a fresh NONCE: a nonce of ours, expired or from another address.
    StaleNonce,
    /// 400: USERNAME, REALM or NONCE present but unusable.
    BadRequest,
}

impl AuthError {
    pub fn code(self) -> u16 {
        match self {
            AuthError::Unauthorized => 401,
            AuthError::StaleNonce => 438,
            AuthError::BadRequest => 400,
        }
    }
}

fn text<'m>(msg: &'m [u8], checked: &Checked, kind: u16) -> Option<&'m [u8]> {
    let a = checked.get(kind)?;
    msg.get(a.start..a.start + a.len)
}

/// What authentication checks against: the pool ring, the nonce key, the realm, and the
/// longest credential lifetime accepted.
pub struct AuthContext<'a> {
    pub ring: &'a Ring,
    pub nonces: &'a Nonces,
    pub realm: &'a str,
    pub max_lifetime_secs: u64,
}

/// Authenticates a checked request from `client` at `now` (Unix seconds).
pub fn authenticate(
    ctx: &AuthContext<'_>,
    msg: &[u8],
    checked: &Checked,
    client: IpAddr,
    now: u64,
) -> Result<Authenticated, AuthError> {
    let AuthContext {
        ring,
        nonces,
        realm,
        max_lifetime_secs,
    } = *ctx;
    let (Some(username), Some(nonce), Some(_)) = (
        text(msg, checked, attr::USERNAME),
        text(msg, checked, attr::NONCE),
        checked.integrity_at,
    ) else {
        return Err(AuthError::Unauthorized);
    };
    if text(msg, checked, attr::REALM) != Some(realm.as_bytes()) {
        return Err(AuthError::Unauthorized);
    }
    match nonces.check(nonce, client, now) {
        Ok(()) => {}
        Err(NonceError::Stale) => return Err(AuthError::StaleNonce),
        Err(NonceError::Invalid) => return Err(AuthError::Unauthorized),
    }
    let username = std::str::from_utf8(username).map_err(|_| AuthError::BadRequest)?;
    // The REST username carries its expiry: refuse expired ones before any HMAC work.
    let expiry: u64 = username
        .split_once(':')
        .and_then(|(e, _)| e.parse().ok())
        .ok_or(AuthError::Unauthorized)?;
    if expiry <= now || expiry - now > max_lifetime_secs.min(MAX_CREDENTIAL_LIFETIME_SECS) {
        return Err(AuthError::Unauthorized);
    }
    // The stronger integrity when the client offers it (RFC 8489 §14.6: it may be truncated
    // to 16..32 bytes in steps of 4), else MESSAGE-INTEGRITY.
    let (sha, mi) = match checked.get(attr::MESSAGE_INTEGRITY_SHA256) {
        Some(m) => (true, m),
        None => (
            false,
            checked
                .get(attr::MESSAGE_INTEGRITY)
                .ok_or(AuthError::Unauthorized)?,
        ),
    };
    let valid_len = if sha {
        (16..=32).contains(&mi.len) && mi.len % 4 == 0
    } else {
        mi.len == 20
    };
    let given = msg
        .get(mi.start..mi.start + mi.len)
        .filter(|_| valid_len)
        .ok_or(AuthError::BadRequest)?;
    let at = mi.start - 4;
    let covered = covered_by(msg, at, 4 + mi.len).ok_or(AuthError::BadRequest)?;
    let mut found: Option<[u8; 16]> = None;
    for key in ring.keys() {
        let password = crate::core::credentials::password(key, username);
        let long_term = long_term_key(username, realm, &password);
        let ok = if sha {
            let full = hmac_sha256(&long_term, &[&covered.0, covered.1]);
            full.get(..given.len()).unwrap_or_default().ct_eq(given)
        } else {
            hmac_sha1(&long_term, &[&covered.0, covered.1]).ct_eq(given)
        };
        if bool::from(ok) {
            found = Some(long_term);
        }
    }
    match found {
        Some(key) => Ok(Authenticated {
            username: username.to_string(),
            key,
        }),
        None => Err(AuthError::Unauthorized),
    }
}

/// The bytes an integrity attribute at `at` (of `attr_len` bytes with its header) covers
/// (RFC 8489 §14.5, §14.6): the header with its length set to end just after it, then
/// everything before it.
fn covered_by(msg: &[u8], at: usize, attr_len: usize) -> Option<([u8; 4], &[u8])> {
    let len = u16::try_from(at + attr_len - HEADER_LEN).ok()?;
    let &[t0, t1, _, _] = msg.first_chunk::<4>()?;
    let [l0, l1] = len.to_be_bytes();
    Some(([t0, t1, l0, l1], msg.get(4..at)?))
}

/// RFC 8489 §9.2.2: key = MD5(username ":" realm ":" password) (OpaqueString is the
/// identity on the printable ASCII REST credentials use).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// MESSAGE-INTEGRITY-SHA256 for a response being built (full length).
pub fn integrity_sha256(key: &[u8], msg_so_far: &[u8]) -> [u8; 32] {
    hmac_sha256(key, &[msg_so_far])
}

/// MESSAGE-INTEGRITY for a response being built: HMAC-SHA1 over `msg_so_far` (header
/// included, the length field already covering the MESSAGE-INTEGRITY attribute).
pub fn integrity(key: &[u8], msg_so_far: &[u8]) -> [u8; 20] {
    hmac_sha1(key, &[msg_so_far])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::credentials;
    use crate::core::turn::stun::check;

    const T0: u64 = 1_800_000_000;
    const REALM: &str = "sipedge.test";

    fn ip() -> IpAddr {
        "203.0.113.9".parse().unwrap()
    }

    /// An Allocate encoded by stun-rs with the long-term key of a REST credential.
    fn allocate(username: &str, password: &str, nonce: &str, realm: &str) -> Vec<u8> {
        use stun_rs::attributes::stun::{MessageIntegrity, Nonce, Realm, UserName};
        use stun_rs::attributes::turn::RequestedTrasport;
        use stun_rs::methods::ALLOCATE;
        use stun_rs::{
            Algorithm, AlgorithmId, HMACKey, MessageClass, MessageEncoderBuilder,
            StunMessageBuilder,
        };
        let user = UserName::new(username).unwrap();
        let realm = Realm::new(realm).unwrap();
        let key =
            HMACKey::new_long_term(&user, &realm, password, Algorithm::from(AlgorithmId::MD5))
                .unwrap();
        let msg = StunMessageBuilder::new(ALLOCATE, MessageClass::Request)
            .with_attribute(RequestedTrasport::from(stun_rs::protocols::UDP))
            .with_attribute(user)
            .with_attribute(realm)
            .with_attribute(Nonce::new(nonce).unwrap())
            .with_attribute(MessageIntegrity::new(key))
            .build();
        let mut buf = [0u8; 512];
        let n = MessageEncoderBuilder::default()
            .build()
            .encode(&mut buf, &msg)
            .unwrap();
        buf[..n].to_vec()
    }

    fn ctx<'a>(ring: &'a Ring, nonces: &'a Nonces) -> AuthContext<'a> {
        AuthContext {
            ring,
            nonces,
            realm: REALM,
            max_lifetime_secs: 8 * 3600,
        }
    }

    fn setup() -> (Ring, Nonces) {
        (Ring::init([4; 32], T0), Nonces::new(&[5; 32], REALM, 600))
    }

    #[test]
    fn a_rest_credential_authenticates_an_allocate_encoded_by_stun_rs() {
        let (ring, nonces) = setup();
        let c = credentials::mint(&ring, "alice", 3600, T0).unwrap();
        let nonce = nonces.issue(ip(), T0);
        let msg = allocate(&c.username, &c.password, &nonce, REALM);
        let checked = check(&msg).unwrap();
        let ok = authenticate(&ctx(&ring, &nonces), &msg, &checked, ip(), T0 + 5).unwrap();
        assert_eq!(ok.username, c.username);
        assert_eq!(ok.key, long_term_key(&c.username, REALM, &c.password));
    }

    #[test]
    fn every_failure_maps_to_its_error_code() {
        let (ring, nonces) = setup();
        let c = credentials::mint(&ring, "alice", 3600, T0).unwrap();
        let nonce = nonces.issue(ip(), T0);
        let run = |msg: &[u8], now: u64, client: IpAddr| {
            let checked = check(msg).unwrap();
            authenticate(&ctx(&ring, &nonces), msg, &checked, client, now)
        };
        // Wrong password (tampered or another ring).
        let wrong = allocate(&c.username, "not-the-password", &nonce, REALM);
        assert_eq!(run(&wrong, T0, ip()), Err(AuthError::Unauthorized));
        // Stale nonce (expired; and from another address).
        let good = allocate(&c.username, &c.password, &nonce, REALM);
        assert_eq!(run(&good, T0 + 601, ip()), Err(AuthError::StaleNonce));
        assert_eq!(
            run(&good, T0, "203.0.113.10".parse().unwrap()),
            Err(AuthError::StaleNonce)
        );
        // A nonce that is not ours.
        let foreign = allocate(&c.username, &c.password, "0123456789abcdef", REALM);
        assert_eq!(run(&foreign, T0, ip()), Err(AuthError::Unauthorized));
        // Another realm.
        let realm = allocate(&c.username, &c.password, &nonce, "other.test");
        assert_eq!(run(&realm, T0, ip()), Err(AuthError::Unauthorized));
        // Expired credential (with a fresh nonce).
        let later = T0 + 3601;
        let fresh = nonces.issue(ip(), later);
        let expired = allocate(&c.username, &c.password, &fresh, REALM);
        assert_eq!(run(&expired, later, ip()), Err(AuthError::Unauthorized));
        assert_eq!(AuthError::StaleNonce.code(), 438);
    }

    #[test]
    fn message_integrity_sha256_is_verified_when_offered() {
        use crate::core::turn::encode::Writer;
        use crate::core::turn::stun::Class;
        let (ring, nonces) = setup();
        let c = credentials::mint(&ring, "alice", 3600, T0).unwrap();
        let key = long_term_key(&c.username, REALM, &c.password);
        let nonce = nonces.issue(ip(), T0);
        let build = |k: &[u8; 16]| {
            let mut w = Writer::new(Class::Request, 0x003, [3; 12]);
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .attr(attr::USERNAME, c.username.as_bytes())
                .attr(attr::REALM, REALM.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes())
                .integrity_sha256(k);
            w.finish_with_fingerprint()
        };
        let msg = build(&key);
        let checked = check(&msg).unwrap();
        assert!(authenticate(&ctx(&ring, &nonces), &msg, &checked, ip(), T0).is_ok());
        let wrong = build(&[0; 16]);
        let checked = check(&wrong).unwrap();
        assert_eq!(
            authenticate(&ctx(&ring, &nonces), &wrong, &checked, ip(), T0),
            Err(AuthError::Unauthorized)
        );
    }

    #[test]
    fn integrity_is_required() {
        let (ring, nonces) = setup();
        // A Binding request with no credentials at all.
        let msg = [
            0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        let checked = check(&msg).unwrap();
        assert_eq!(
            authenticate(&ctx(&ring, &nonces), &msg, &checked, ip(), T0),
            Err(AuthError::Unauthorized)
        );
    }
}
