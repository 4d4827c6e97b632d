//! TURN REST API credentials (draft-uberti-behave-turn-rest, as coturn's `use-auth-secret`
//! implements it): username `<expiry unix time>:<user>`, password
//! `base64(HMAC-SHA1(secret, username))`. Minted with the ring's signing key, verified
//! against every key of the ring in constant time. Sans-IO: the caller passes `now`.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

use super::keyring::{Key, Ring, MAX_CREDENTIAL_LIFETIME_SECS};

/// Default lifetime: a working day, as the Lync/Skype A/V authentication service issues.
pub const DEFAULT_LIFETIME_SECS: u64 = 8 * 60 * 60;
/// Shortest lifetime that may be configured or asked for.
pub const MIN_LIFETIME_SECS: u64 = 60;
const MAX_USER_LEN: usize = 256;

/// A minted credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
    /// Unix seconds.
    pub expires: u64,
}

/// Why a credential is refused (each a distinct reason for logs and `token verify`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("malformed username (want <expiry-unix-time>:<user>)")]
    MalformedUsername,
    #[error("malformed password (want base64 of a 20-byte HMAC-SHA1)")]
    MalformedPassword,
    #[error("expired")]
    Expired,
    #[error("expiry too far in the future (beyond the maximum lifetime)")]
    BeyondLifetime,
    #[error("signature does not match any key of the ring (tampered, or signed by another ring)")]
    BadSignature,
    #[error("the ring has no key")]
    NoKey,
    #[error("user name empty, too long, or not printable")]
    BadUser,
}

/// The expiry a mint at `now` with `ttl` gets, clamped to the allowed lifetimes.
pub fn lifetime(ttl_secs: u64) -> u64 {
    ttl_secs.clamp(MIN_LIFETIME_SECS, MAX_CREDENTIAL_LIFETIME_SECS)
}

/// Mints a credential for `user` valid for `ttl_secs` (clamped to 1 minute – 180 days).
pub fn mint(
    ring: &Ring,
    user: &str,
    ttl_secs: u64,
    now: u64,
) -> Result<Credential, CredentialError> {
    if user.is_empty()
        || user.len() > MAX_USER_LEN
        || !user.bytes().all(|b| (0x21..0x7f).contains(&b))
    {
        return Err(CredentialError::BadUser);
    }
    let key = ring.signing_key(now).ok_or(CredentialError::NoKey)?;
    let expires = now.saturating_add(lifetime(ttl_secs));
    let username = format!("{expires}:{user}");
    let password = password(key, &username);
    Ok(Credential {
        username,
        password,
        expires,
    })
}

/// Verifies a credential at `now`: well-formed, not expired, not dated beyond
/// `max_lifetime_secs` from now, signed by a key of the ring. Returns the user part.
pub fn verify<'u>(
    ring: &Ring,
    username: &'u str,
    password: &str,
    now: u64,
    max_lifetime_secs: u64,
) -> Result<&'u str, CredentialError> {
    let (expiry, user) = username
        .split_once(':')
        .ok_or(CredentialError::MalformedUsername)?;
    if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CredentialError::MalformedUsername);
    }
    let expiry: u64 = expiry
        .parse()
        .map_err(|_| CredentialError::MalformedUsername)?;
    if user.is_empty() || user.len() > MAX_USER_LEN {
        return Err(CredentialError::MalformedUsername);
    }
    let given = BASE64
        .decode(password.as_bytes())
        .ok()
        .filter(|p| p.len() == 20)
        .ok_or(CredentialError::MalformedPassword)?;
    if expiry <= now {
        return Err(CredentialError::Expired);
    }
    if expiry - now > max_lifetime_secs.min(MAX_CREDENTIAL_LIFETIME_SECS) {
        return Err(CredentialError::BeyondLifetime);
    }
    // Every key is tried, whatever matches first: the time taken does not tell which key.
    let mut ok = subtle::Choice::from(0);
    for key in ring.keys() {
        ok |= sign(key.credential_key(), username).ct_eq(&given[..]);
    }
    if bool::from(ok) {
        Ok(user)
    } else {
        Err(CredentialError::BadSignature)
    }
}

/// The password of a REST username under one ring key (what coturn computes too).
pub fn password(key: &Key, username: &str) -> String {
    BASE64.encode(sign(key.credential_key(), username))
}

fn sign(key: &[u8], username: &str) -> [u8; 20] {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(username.as_bytes());
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;
    const H8: u64 = DEFAULT_LIFETIME_SECS;

    #[test]
    fn mint_verify_round_trip() {
        let ring = Ring::init([3; 32], T0);
        let c = mint(&ring, "alice@corp.example", H8, T0).unwrap();
        assert_eq!(c.username, format!("{}:alice@corp.example", T0 + H8));
        assert_eq!(c.expires, T0 + H8);
        assert_eq!(
            verify(&ring, &c.username, &c.password, T0 + 1, H8),
            Ok("alice@corp.example")
        );
        // Up to the last second, not at expiry.
        assert!(verify(&ring, &c.username, &c.password, T0 + H8 - 1, H8).is_ok());
        assert_eq!(
            verify(&ring, &c.username, &c.password, T0 + H8, H8),
            Err(CredentialError::Expired)
        );
    }

    #[test]
    fn the_format_is_coturns() {
        // coturn: password = base64(hmac-sha1(static-auth-secret, "expiry:user")).
        let mut ring = Ring::default();
        ring.import("north-pole-secret-0001", T0).unwrap();
        let c = mint(&ring, "bob", 3600, T0).unwrap();
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(b"north-pole-secret-0001").unwrap();
        mac.update(format!("{}:bob", T0 + 3600).as_bytes());
        assert_eq!(c.password, BASE64.encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn every_failure_has_its_reason() {
        let ring = Ring::init([3; 32], T0);
        let c = mint(&ring, "alice", H8, T0).unwrap();
        let v = |u: &str, p: &str| verify(&ring, u, p, T0 + 10, H8).map(str::to_string);
        // Tampered: the user part changed after signing.
        let tampered = c.username.replace("alice", "mallory");
        assert_eq!(
            v(&tampered, &c.password),
            Err(CredentialError::BadSignature)
        );
        // Tampered expiry (extended).
        let later = format!("{}:alice", T0 + H8 - 5);
        assert_eq!(v(&later, &c.password), Err(CredentialError::BadSignature));
        // Signed by another ring.
        let other = Ring::init([4; 32], T0);
        let foreign = mint(&other, "alice", H8, T0).unwrap();
        assert_eq!(
            v(&foreign.username, &foreign.password),
            Err(CredentialError::BadSignature)
        );
        // Malformed usernames and passwords.
        for u in [
            "alice",
            ":alice",
            "12x:alice",
            &format!("{}:", T0 + 100),
            "99999999999999999999999:a",
        ] {
            assert_eq!(
                v(u, &c.password),
                Err(CredentialError::MalformedUsername),
                "{u}"
            );
        }
        for p in ["", "not base64!", "AAAA"] {
            assert_eq!(
                v(&c.username, p),
                Err(CredentialError::MalformedPassword),
                "{p}"
            );
        }
        // Future-dated beyond the configured lifetime (minted elsewhere for 90 days).
        let far = mint(&ring, "alice", 90 * 86_400, T0).unwrap();
        assert_eq!(
            v(&far.username, &far.password),
            Err(CredentialError::BeyondLifetime)
        );
        // Expired.
        assert_eq!(
            verify(&ring, &c.username, &c.password, T0 + H8 + 1, H8),
            Err(CredentialError::Expired)
        );
    }

    #[test]
    fn a_credential_survives_rotation_until_it_expires_and_the_old_key_is_pruned() {
        let mut ring = Ring::init([3; 32], T0);
        let before = mint(&ring, "alice", H8, T0).unwrap();
        ring.rotate([5; 32], T0 + 60, 0).unwrap();
        let after = mint(&ring, "alice", H8, T0 + 120).unwrap();
        assert_ne!(before.password, after.password, "signed by the new key");
        assert!(verify(&ring, &before.username, &before.password, T0 + 120, H8).is_ok());
        assert!(verify(&ring, &after.username, &after.password, T0 + 120, H8).is_ok());
        let much_later = T0 + 60 + MAX_CREDENTIAL_LIFETIME_SECS + 1;
        assert_eq!(ring.prune(much_later), vec!["k1".to_string()]);
        // A credential of the pruned key, even re-dated, no longer verifies.
        let old_key_cred = {
            let old = Ring::init([3; 32], much_later);
            mint(&old, "alice", H8, much_later).unwrap()
        };
        assert_eq!(
            verify(
                &ring,
                &old_key_cred.username,
                &old_key_cred.password,
                much_later + 1,
                H8
            ),
            Err(CredentialError::BadSignature)
        );
    }

    #[test]
    fn lifetimes_are_clamped_and_users_checked() {
        let ring = Ring::init([3; 32], T0);
        assert_eq!(
            mint(&ring, "a", 1, T0).unwrap().expires,
            T0 + MIN_LIFETIME_SECS
        );
        assert_eq!(
            mint(&ring, "a", u64::MAX, T0).unwrap().expires,
            T0 + MAX_CREDENTIAL_LIFETIME_SECS
        );
        for bad in ["", "has space", "new\nline", &"x".repeat(300)] {
            assert_eq!(mint(&ring, bad, H8, T0), Err(CredentialError::BadUser));
        }
    }
}
