//! The pool key ring: the secrets every edge of a pool shares, as text in and text out
//! (the shell reads and writes the file, checks its permissions, and supplies the time and
//! the randomness).
//!
//! A key has an id, a secret, a creation time and the time from which it signs. The signing
//! key is the newest whose `signs_from` has passed; every key in the ring verifies. A key
//! stops signing when a newer one starts; it is kept until every credential it can have
//! signed has expired ([`MAX_CREDENTIAL_LIFETIME`] after it stopped signing), then pruned.
//!
//! Purposes are separated: TURN REST credentials use the secret text itself as the
//! HMAC-SHA1 key (what coturn's `static-auth-secret` does, so a pool migrating from coturn
//! keeps its credentials valid); every other purpose (flow tokens, TURN nonces) uses a key
//! derived with HKDF-SHA256 and a purpose label, so material of one purpose is never valid
//! for another.

use std::fmt::Write as _;

use hkdf::Hkdf;
use sha2::Sha256;

/// The longest credential lifetime any configuration may ask for (180 days).
pub const MAX_CREDENTIAL_LIFETIME_SECS: u64 = 180 * 24 * 60 * 60;
/// The same, as named in the module docs.
pub const MAX_CREDENTIAL_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(MAX_CREDENTIAL_LIFETIME_SECS);
/// Shortest secret accepted (an imported coturn secret may be a passphrase).
pub const MIN_SECRET_LEN: usize = 16;
const MAX_SECRET_LEN: usize = 1024;
const MAX_KEYS: usize = 64;

/// What a derived key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// HMAC keys of the SIP flow tokens.
    FlowToken,
    /// TURN stateless nonces.
    TurnNonce,
    /// TLS session tickets (any member resumes any member's sessions).
    TlsTicket,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::FlowToken => b"sipedge/v1/sip-flow-token",
            Purpose::TurnNonce => b"sipedge/v1/turn-nonce",
            Purpose::TlsTicket => b"sipedge/v1/tls-ticket",
        }
    }
}

/// One key of the ring.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub id: String,
    /// The shared secret as text (64 hex digits when generated; an imported secret as given).
    secret: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds from which this key signs.
    pub signs_from: u64,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("created", &self.created)
            .field("signs_from", &self.signs_from)
            .finish()
    }
}

impl Key {
    /// The secret bytes used as the TURN REST HMAC key (coturn-compatible).
    pub fn credential_key(&self) -> &[u8] {
        self.secret.as_bytes()
    }

    /// A 256-bit key for `purpose`, derived from the secret.
    pub fn derive(&self, purpose: Purpose) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(b"sipedge-keyring"), self.secret.as_bytes());
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit: expand cannot fail.
        let _ = hk.expand(purpose.label(), &mut out);
        out
    }
}

/// Why a ring (or a change to it) is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("key {index}: {message}")]
    Key { index: usize, message: String },
    #[error("the ring has no key")]
    Empty,
    #[error("the ring already holds {MAX_KEYS} keys; prune it first")]
    Full,
    #[error("secret too short ({len} bytes; at least {MIN_SECRET_LEN})")]
    ShortSecret { len: usize },
    #[error("secret too long or not printable ASCII")]
    BadSecret,
    #[error("a key with this secret is already in the ring ({id})")]
    Duplicate { id: String },
}

/// The ring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ring {
    keys: Vec<Key>,
}

impl Ring {
    /// A ring with one key, signing from `now`.
    pub fn init(secret: [u8; 32], now: u64) -> Ring {
        let mut ring = Ring::default();
        ring.keys.push(Key {
            id: "k1".into(),
            secret: hex(&secret),
            created: now,
            signs_from: now,
        });
        ring
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The key that signs at `now`: the newest whose `signs_from` has passed (the oldest key
    /// if none has yet, so a fresh ring always signs).
    pub fn signing_key(&self, now: u64) -> Option<&Key> {
        // Keys are kept in signing order: the last one that has started signs.
        self.keys
            .iter()
            .rev()
            .find(|k| k.signs_from <= now)
            .or_else(|| self.keys.first())
    }

    /// Adds a new generated key that signs from `now + signs_in`, then prunes.
    pub fn rotate(&mut self, secret: [u8; 32], now: u64, signs_in: u64) -> Result<&Key, RingError> {
        self.add(hex(&secret), now, now.saturating_add(signs_in))
    }

    /// Adopts an existing shared secret (coturn's `static-auth-secret`), signing from `now`.
    pub fn import(&mut self, secret: &str, now: u64) -> Result<&Key, RingError> {
        let secret = secret.trim();
        check_secret(secret)?;
        self.add(secret.to_string(), now, now)
    }

    fn add(&mut self, secret: String, now: u64, signs_from: u64) -> Result<&Key, RingError> {
        if let Some(k) = self.keys.iter().find(|k| k.secret == secret) {
            return Err(RingError::Duplicate { id: k.id.clone() });
        }
        self.prune(now);
        if self.keys.len() >= MAX_KEYS {
            return Err(RingError::Full);
        }
        let next = self
            .keys
            .iter()
            .filter_map(|k| k.id.strip_prefix('k')?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        self.keys.push(Key {
            id: format!("k{next}"),
            secret,
            created: now,
            signs_from,
        });
        self.keys.sort_by_key(|k| (k.signs_from, k.created));
        Ok(self
            .keys
            .iter()
            .find(|k| k.id == format!("k{next}"))
            .unwrap_or_else(|| unreachable!()))
    }

    /// When `key` stopped signing (the `signs_from` of a later key that has started), if it
    /// has. Keys are kept in signing order, so "later" is "after it in the ring", which also
    /// settles keys that start in the same second.
    pub fn retired_at(&self, key: &Key, now: u64) -> Option<u64> {
        let pos = self.keys.iter().position(|k| k.id == key.id)?;
        self.keys
            .get(pos + 1..)?
            .iter()
            .filter(|k| k.signs_from <= now)
            .map(|k| k.signs_from)
            .min()
    }

    /// Removes keys that stopped signing more than the longest credential lifetime ago:
    /// nothing they signed can still be valid. Returns the ids removed.
    pub fn prune(&mut self, now: u64) -> Vec<String> {
        let gone: Vec<String> = self
            .keys
            .iter()
            .filter(|k| {
                self.retired_at(k, now)
                    .is_some_and(|r| now.saturating_sub(r) > MAX_CREDENTIAL_LIFETIME_SECS)
            })
            .map(|k| k.id.clone())
            .collect();
        self.keys.retain(|k| !gone.contains(&k.id));
        gone
    }

    /// Parses a ring file's text. Every key must be complete and valid.
    pub fn parse(text: &str) -> Result<Ring, RingError> {
        // The TOML parser recurses per nesting level: refuse deep files before it runs.
        if super::toml_depth::nesting_depth(text) > super::toml_depth::MAX_NESTING {
            return Err(RingError::Syntax {
                line: 0,
                message: format!("nested deeper than {}", super::toml_depth::MAX_NESTING),
            });
        }
        let doc: toml::Table = toml::from_str(text).map_err(|e| RingError::Syntax {
            line: e.span().map_or(0, |s| {
                text.get(..s.start).unwrap_or(text).matches('\n').count() + 1
            }),
            message: e.message().to_string(),
        })?;
        for key in doc.keys() {
            if key != "version" && key != "key" {
                return Err(RingError::Syntax {
                    line: 0,
                    message: format!("unknown key `{key}` (known: version, key)"),
                });
            }
        }
        match doc.get("version").and_then(toml::Value::as_integer) {
            Some(1) => {}
            _ => {
                return Err(RingError::Syntax {
                    line: 0,
                    message: "`version = 1` is required".into(),
                })
            }
        }
        let entries = match doc.get("key") {
            Some(toml::Value::Array(a)) => a.as_slice(),
            None => &[],
            Some(_) => {
                return Err(RingError::Syntax {
                    line: 0,
                    message: "`key` must be an array of tables ([[key]])".into(),
                })
            }
        };
        let mut ring = Ring::default();
        for (index, entry) in entries.iter().enumerate() {
            let bad = |message: &str| RingError::Key {
                index: index + 1,
                message: message.to_string(),
            };
            let table = entry.as_table().ok_or_else(|| bad("not a table"))?;
            for k in table.keys() {
                if !["id", "secret", "created", "signs_from"].contains(&k.as_str()) {
                    return Err(bad(&format!(
                        "unknown key `{k}` (known: id, secret, created, signs_from)"
                    )));
                }
            }
            let text = |name: &str| {
                table
                    .get(name)
                    .and_then(toml::Value::as_str)
                    .ok_or_else(|| bad(&format!("`{name}` (a string) is required")))
            };
            let time = |name: &str| {
                table
                    .get(name)
                    .and_then(toml::Value::as_integer)
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| bad(&format!("`{name}` (unix seconds) is required")))
            };
            let id = text("id")?;
            if id.is_empty()
                || id.len() > 32
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(bad("`id` must be 1-32 letters, digits or '-'"));
            }
            if ring.keys.iter().any(|k| k.id == id) {
                return Err(bad(&format!("duplicate id `{id}`")));
            }
            let secret = text("secret")?;
            check_secret(secret).map_err(|e| bad(&e.to_string()))?;
            ring.keys.push(Key {
                id: id.to_string(),
                secret: secret.to_string(),
                created: time("created")?,
                signs_from: time("signs_from")?,
            });
        }
        if ring.keys.is_empty() {
            return Err(RingError::Empty);
        }
        if ring.keys.len() > MAX_KEYS {
            return Err(RingError::Full);
        }
        ring.keys.sort_by_key(|k| (k.signs_from, k.created));
        Ok(ring)
    }

    /// The ring file's text.
    pub fn to_text(&self) -> String {
        let mut out = String::from(
            "# sipedge pool key ring. Every edge of the pool holds a copy of this file.\n\
             # SECRET: keep it mode 0600, owned by the sipedge user; manage it with `sipedge keys`.\n\
             version = 1\n",
        );
        for k in &self.keys {
            let _ = write!(
                out,
                "\n[[key]]\nid = \"{}\"\nsecret = \"{}\"\ncreated = {}\nsigns_from = {}\n",
                k.id,
                escape(&k.secret),
                k.created,
                k.signs_from
            );
        }
        out
    }
}

fn check_secret(secret: &str) -> Result<(), RingError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(RingError::ShortSecret { len: secret.len() });
    }
    if secret.len() > MAX_SECRET_LEN || !secret.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(RingError::BadSecret);
    }
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    #[test]
    fn text_round_trip_and_redacted_debug() {
        let mut ring = Ring::init([1; 32], T0);
        ring.import("a-coturn-static-auth-secret", T0 + 10).unwrap();
        let text = ring.to_text();
        let again = Ring::parse(&text).unwrap();
        assert_eq!(again, ring);
        assert_eq!(again.keys().len(), 2);
        assert_eq!(again.keys()[0].credential_key(), hex(&[1; 32]).as_bytes());
        assert!(
            !format!("{ring:?}").contains("coturn"),
            "secrets never in Debug"
        );
    }

    #[test]
    fn rotation_signs_with_the_new_key_and_keeps_the_old_until_its_credentials_expire() {
        let mut ring = Ring::init([1; 32], T0);
        assert_eq!(ring.signing_key(T0).unwrap().id, "k1");
        ring.rotate([2; 32], T0 + DAY, 3600).unwrap();
        // Not signing yet during the distribution delay.
        assert_eq!(ring.signing_key(T0 + DAY).unwrap().id, "k1");
        assert_eq!(ring.signing_key(T0 + DAY + 3600).unwrap().id, "k2");
        let k1 = ring.keys()[0].clone();
        assert_eq!(ring.retired_at(&k1, T0 + DAY + 3600), Some(T0 + DAY + 3600));
        // Within the longest credential lifetime the old key stays; after it, it goes.
        assert!(ring
            .prune(T0 + DAY + 3600 + MAX_CREDENTIAL_LIFETIME_SECS)
            .is_empty());
        assert_eq!(
            ring.prune(T0 + DAY + 3601 + MAX_CREDENTIAL_LIFETIME_SECS),
            vec!["k1".to_string()]
        );
        assert_eq!(ring.keys().len(), 1);
        assert_eq!(ring.signing_key(T0 + 400 * DAY).unwrap().id, "k2");
    }

    #[test]
    fn keys_added_in_the_same_second_retire_in_order() {
        let mut ring = Ring::init([1; 32], T0);
        ring.rotate([2; 32], T0, 0).unwrap();
        assert_eq!(ring.signing_key(T0).unwrap().id, "k2");
        let k1 = ring.keys()[0].clone();
        assert_eq!(ring.retired_at(&k1, T0), Some(T0));
        assert_eq!(
            ring.prune(T0 + MAX_CREDENTIAL_LIFETIME_SECS + 1),
            vec!["k1".to_string()]
        );
    }

    #[test]
    fn purposes_are_separated() {
        let ring = Ring::init([7; 32], T0);
        let k = ring.signing_key(T0).unwrap();
        let flow = k.derive(Purpose::FlowToken);
        let nonce = k.derive(Purpose::TurnNonce);
        assert_ne!(flow, nonce);
        assert_ne!(&flow[..], k.credential_key());
        assert_eq!(
            flow,
            k.derive(Purpose::FlowToken),
            "deterministic: every pool member agrees"
        );
    }

    #[test]
    fn bad_rings_are_refused_with_a_reason() {
        let good = Ring::init([1; 32], T0).to_text();
        let cases = [
            ("", "`version = 1`"),
            ("version = 2\n", "`version = 1`"),
            ("version = 1\n", "no key"),
            ("version = 1\nextra = 3\n", "unknown key"),
            (
                &good.replace("signs_from", "signs_form"),
                "unknown key `signs_form`",
            ),
            (&good.replace(&hex(&[1; 32]), "short"), "too short"),
            (&good.replace("id = \"k1\"", "id = \"k 1\""), "`id`"),
            (
                &format!(
                    "{good}\n[[key]]\nid = \"k1\"\nsecret = \"{}\"\ncreated = 1\nsigns_from = 1\n",
                    hex(&[2; 32])
                ),
                "duplicate id",
            ),
            ("version = 1\n[[key]\n", "line"),
            (
                &format!("version = 1\nx = {}", "[".repeat(5000)),
                "nested deeper",
            ),
        ];
        for (text, want) in cases {
            let err = Ring::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn import_refuses_short_and_duplicate_secrets() {
        let mut ring = Ring::init([1; 32], T0);
        assert_eq!(
            ring.import("short", T0),
            Err(RingError::ShortSecret { len: 5 })
        );
        assert_eq!(
            ring.import("has a\nnewline in it", T0),
            Err(RingError::BadSecret)
        );
        let k = ring
            .import("  coturn-secret-0123456789\n", T0)
            .unwrap()
            .id
            .clone();
        assert_eq!(
            ring.import("coturn-secret-0123456789", T0),
            Err(RingError::Duplicate { id: k })
        );
    }
}
