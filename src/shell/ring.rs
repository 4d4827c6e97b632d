//! The pool key ring as a running edge holds it ([`LiveRing`]): read at start, read again on
//! SIGHUP and whenever its file changes (the edge looks every few seconds, so a ring the
//! operator's tooling copies to every member reaches them all without a signal), and the
//! flow-token keys derived again when the ring changes or a new key's `signs_from` comes.
//!
//! A ring file that does not load (unreadable, open permissions, malformed) leaves the
//! running ring in place; the error is logged once per change of the file. Secrets never
//! leave the process: what `/status` shows of a key is its id and times.

use crate::sync::{MutexExt, RwLockExt};
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use super::keyfile::{self, KeyFileError};
use crate::core::keyring::{Purpose, Ring};
use crate::core::sip::proxy::Proxy;
use crate::core::sip::token::FlowKeys;

/// How often the ring file is looked at (a stat; read only when it changed).
pub const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// What identifies a version of the file without reading it: modification time (ns),
/// length, inode (an atomic rename, as `sipedge keys rotate` writes, changes the inode).
type FileStamp = (i64, i64, u64, u64);

/// The ring in force, and the file it comes from.
pub struct LiveRing {
    current: RwLock<Arc<Ring>>,
    /// The file it comes from; `None` for a ring given in memory (tests).
    path: Option<PathBuf>,
    /// The file's stamp when it was last read (or last failed to load).
    stamp: Mutex<Option<FileStamp>>,
}

impl LiveRing {
    /// The ring loaded from `path` at start.
    pub fn new(ring: Ring, path: PathBuf) -> LiveRing {
        let stamp = file_stamp(&path);
        LiveRing {
            current: RwLock::new(Arc::new(ring)),
            path: Some(path),
            stamp: Mutex::new(stamp),
        }
    }

    /// A ring that comes from no file and never changes.
    pub fn fixed(ring: Ring) -> LiveRing {
        LiveRing {
            current: RwLock::new(Arc::new(ring)),
            path: None,
            stamp: Mutex::new(None),
        }
    }

    /// The ring in force now.
    pub fn get(&self) -> Arc<Ring> {
        self.current.read_unpoisoned().clone()
    }

    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// Reads the file again if it changed since it was last read (`force`: whatever its
    /// stamp says, as on SIGHUP). `Ok(true)` when the ring in force changed; an error
    /// leaves the running ring in place.
    pub fn refresh(&self, force: bool) -> Result<bool, KeyFileError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let stamp = file_stamp(path);
        {
            let mut last = self.stamp.lock_unpoisoned();
            if !force && stamp == *last {
                return Ok(false);
            }
            // Remembered before the read: a bad file is reported once, not every check.
            *last = stamp;
        }
        let ring = keyfile::load(path)?;
        Ok(self.replace(ring))
    }

    /// Puts `ring` in force (read and checked by the caller, as a reload does before it
    /// changes anything); whether it differs from the ring it replaces.
    pub fn replace(&self, ring: Ring) -> bool {
        if let Some(path) = &self.path {
            *self.stamp.lock_unpoisoned() = file_stamp(path);
        }
        let mut current = self.current.write_unpoisoned();
        if **current == ring {
            return false;
        }
        *current = Arc::new(ring);
        true
    }
}

impl std::fmt::Debug for LiveRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids only: the secrets stay out of every log line.
        let ids: Vec<String> = self.get().keys().iter().map(|k| k.id.clone()).collect();
        f.debug_struct("LiveRing")
            .field("path", &self.path)
            .field("keys", &ids)
            .finish()
    }
}

/// The ring in force and the flow-token keys that follow it: what the edge's ring watch
/// and a reload apply.
pub struct RingWatch {
    pub ring: SharedRing,
    /// Signs flow tokens if the ring is ever empty.
    fallback: [u8; 32],
    /// The id of the key the flow tokens are signed with now.
    signing: Mutex<Option<String>>,
}

impl RingWatch {
    pub fn new(ring: SharedRing, fallback: [u8; 32], now: u64) -> RingWatch {
        let signing = signing_id(&ring.get(), now);
        RingWatch {
            ring,
            fallback,
            signing: Mutex::new(signing),
        }
    }

    /// The flow-token keys for the ring in force at `now`.
    pub fn flow_keys(&self, now: u64) -> FlowKeys {
        flow_keys(&self.ring.get(), now, &self.fallback)
    }

    /// After the ring may have changed (`ring_changed`) or time passed: new flow-token keys
    /// for `proxy` when the ring or its signing key changed. Whether they did.
    pub fn follow(&self, proxy: &Proxy, ring_changed: bool, now: u64) -> bool {
        let ring = self.ring.get();
        let id = signing_id(&ring, now);
        let mut signing = self.signing.lock_unpoisoned();
        if !ring_changed && *signing == id {
            return false;
        }
        proxy.set_keys(flow_keys(&ring, now, &self.fallback));
        tracing::info!(
            keys = ring.keys().len(),
            signing = id.as_deref().unwrap_or("-"),
            "key ring in force"
        );
        *signing = id;
        true
    }

    /// One look at the ring file (and the clock): what the periodic watch does.
    pub fn check(&self, proxy: &Proxy, now: u64) {
        let changed = match self.ring.refresh(false) {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!(error = %e, "key ring file not taken; the running ring stays");
                false
            }
        };
        self.follow(proxy, changed, now);
    }
}

fn file_stamp(path: &std::path::Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.mtime(), meta.mtime_nsec(), meta.size(), meta.ino()))
}

/// The flow-token keys of `ring` at `now` (Unix seconds): its signing key signs, every other
/// key verifies, so tokens and branches minted before a rotation still verify after it.
/// `fallback` signs when the ring is empty.
pub fn flow_keys(ring: &Ring, now: u64, fallback: &[u8; 32]) -> FlowKeys {
    let signing = ring
        .signing_key(now)
        .map(|k| k.derive(Purpose::FlowToken))
        .unwrap_or(*fallback);
    let older: Vec<[u8; 32]> = ring
        .keys()
        .iter()
        .map(|k| k.derive(Purpose::FlowToken))
        .filter(|k| *k != signing)
        .collect();
    FlowKeys::with_older(&signing, &older)
}

/// The id of the key that signs at `now`, if any.
pub fn signing_id(ring: &Ring, now: u64) -> Option<String> {
    ring.signing_key(now).map(|k| k.id.clone())
}

/// A shared handle.
pub type SharedRing = Arc<LiveRing>;

/// TLS session tickets (TLS 1.3 and 1.2) sealed with AES-256-GCM under a key derived from
/// the pool ring's signing key, so that a client that reconnects to another member of the
/// pool resumes without a full handshake. A ticket names its key by a 4-byte id (a hash of
/// the derived key, not the key); any key still in the ring opens it, so tickets survive a
/// rotation for as long as their key stays in the ring.
pub struct RingTicketer {
    ring: SharedRing,
    random: ring::rand::SystemRandom,
    /// The sealing keys of the ring last seen, so that a handshake does not derive them
    /// again (an HKDF, a digest and an AES key schedule per key, per ticket).
    keys: Mutex<Option<TicketKeys>>,
}

/// The ticket keys of one ring snapshot, in the ring's order (`None` where a key has none).
struct TicketKeys {
    ring: Arc<Ring>,
    keys: Vec<Option<SealingKey>>,
}

/// A ticket sealing key and the id tickets name it by.
type SealingKey = (ring::aead::LessSafeKey, [u8; TICKET_ID]);

/// How long a ticket may be used (what rustls's own ticketer gives).
const TICKET_LIFETIME_SECS: u32 = 6 * 3600;
const TICKET_ID: usize = 4;
const TICKET_NONCE: usize = 12;

impl RingTicketer {
    pub fn new(ring: SharedRing) -> RingTicketer {
        RingTicketer {
            ring,
            random: ring::rand::SystemRandom::new(),
            keys: Mutex::new(None),
        }
    }

    /// Runs `f` on the ring now and its keys' sealing keys (in the ring's order), derived
    /// again only when the ring changed.
    fn with_keys<R>(&self, f: impl FnOnce(&Ring, &[Option<SealingKey>]) -> R) -> R {
        let ring = self.ring.get();
        let mut cached = self.keys.lock_unpoisoned();
        let keys = match &mut *cached {
            Some(c) if Arc::ptr_eq(&c.ring, &ring) => c,
            stale => stale.insert(TicketKeys {
                keys: ring.keys().iter().map(Self::key_of).collect(),
                ring: ring.clone(),
            }),
        };
        f(&ring, &keys.keys)
    }

    /// The sealing key of a ring key, and the id a ticket names it by.
    fn key_of(key: &crate::core::keyring::Key) -> Option<(ring::aead::LessSafeKey, [u8; 4])> {
        let secret = key.derive(Purpose::TlsTicket);
        let digest = ring::digest::digest(&ring::digest::SHA256, &secret);
        let id: [u8; TICKET_ID] = digest.as_ref().get(..TICKET_ID)?.try_into().ok()?;
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &secret).ok()?;
        Some((ring::aead::LessSafeKey::new(unbound), id))
    }
}

impl std::fmt::Debug for RingTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RingTicketer")
    }
}

impl rustls::server::ProducesTickets for RingTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let now = super::clock::now_unix();
        self.with_keys(|ring, keys| {
            let signing = ring.signing_key(now)?;
            let (key, id) = ring
                .keys()
                .iter()
                .zip(keys)
                .find(|(k, _)| std::ptr::eq(*k, signing))
                .and_then(|(_, sealing)| sealing.as_ref())?;
            self.seal(key, *id, plain)
        })
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let (id, rest) = cipher.split_at_checked(TICKET_ID)?;
        let (nonce, sealed) = rest.split_at_checked(TICKET_NONCE)?;
        let nonce: [u8; TICKET_NONCE] = nonce.try_into().ok()?;
        self.with_keys(|_, keys| {
            let (key, id) = keys.iter().flatten().find(|(_, kid)| kid[..] == *id)?;
            let mut buf = sealed.to_vec();
            let plain = key
                .open_in_place(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::from(*id),
                    &mut buf,
                )
                .ok()?;
            Some(plain.to_vec())
        })
    }
}

impl RingTicketer {
    fn seal(
        &self,
        key: &ring::aead::LessSafeKey,
        id: [u8; TICKET_ID],
        plain: &[u8],
    ) -> Option<Vec<u8>> {
        use ring::rand::SecureRandom as _;
        let mut nonce = [0u8; TICKET_NONCE];
        self.random.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(TICKET_ID + TICKET_NONCE + plain.len() + 16);
        out.extend_from_slice(&id);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(id),
            &mut sealed,
        )
        .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_changed_file_is_read_again_and_a_bad_one_leaves_the_ring_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring.toml");
        let first = Ring::init([1; 32], NOW);
        keyfile::store(&path, &first, true).unwrap();
        let live = LiveRing::new(keyfile::load(&path).unwrap(), path.clone());
        assert!(!live.refresh(false).unwrap(), "unchanged: not even read");

        let mut rotated = first.clone();
        rotated.rotate([2; 32], NOW, 60).unwrap();
        keyfile::store(&path, &rotated, false).unwrap();
        assert!(live.refresh(false).unwrap(), "a new version is taken");
        assert_eq!(live.get().keys().len(), 2);
        assert_eq!(signing_id(&live.get(), NOW).as_deref(), Some("k1"));
        assert_eq!(signing_id(&live.get(), NOW + 60).as_deref(), Some("k2"));

        std::fs::write(&path, "not a ring").unwrap();
        assert!(live.refresh(false).is_err(), "reported");
        assert!(!live.refresh(false).unwrap(), "once per change of the file");
        assert_eq!(*live.get(), rotated, "the running ring stays");
        // Forced (SIGHUP): read again whatever the stamp says.
        assert!(live.refresh(true).is_err());
    }

    #[test]
    fn tickets_open_on_any_member_of_the_ring_and_survive_a_rotation() {
        use rustls::server::ProducesTickets as _;
        let ring = Ring::init([1; 32], NOW);
        let a = RingTicketer::new(Arc::new(LiveRing::fixed(ring.clone())));
        let b = RingTicketer::new(Arc::new(LiveRing::fixed(ring.clone())));
        let ticket = a.encrypt(b"session state").unwrap();
        assert_eq!(
            b.decrypt(&ticket).unwrap(),
            b"session state",
            "another member opens it"
        );
        assert_ne!(
            a.encrypt(b"session state").unwrap(),
            ticket,
            "a fresh nonce each time"
        );
        let mut forged = ticket.clone();
        if let Some(last) = forged.last_mut() {
            *last ^= 1;
        }
        assert!(b.decrypt(&forged).is_none(), "tampered");
        assert!(b.decrypt(&ticket[..10]).is_none(), "truncated");
        let other = RingTicketer::new(Arc::new(LiveRing::fixed(Ring::init([9; 32], NOW))));
        assert!(other.decrypt(&ticket).is_none(), "another pool's ring");
        // After a rotation the old key still opens its tickets.
        let mut rotated = ring;
        rotated.rotate([2; 32], NOW, 0).unwrap();
        let c = RingTicketer::new(Arc::new(LiveRing::fixed(rotated.clone())));
        assert_eq!(c.decrypt(&ticket).unwrap(), b"session state");
        // A ticketer whose ring is replaced under it (a reload) uses the new ring at once:
        // its cached keys are the ring's, not the ones it started with.
        let live = Arc::new(LiveRing::fixed(Ring::init([9; 32], NOW)));
        let d = RingTicketer::new(live.clone());
        let own = d.encrypt(b"mine").unwrap();
        assert!(d.decrypt(&ticket).is_none(), "not its ring yet");
        live.replace(rotated);
        assert_eq!(d.decrypt(&ticket).unwrap(), b"session state");
        assert!(d.decrypt(&own).is_none(), "its old ring's key is gone");
        let sealed = d.encrypt(b"after").unwrap();
        assert_eq!(
            c.decrypt(&sealed).unwrap(),
            b"after",
            "sealed with the new ring"
        );
    }

    #[test]
    fn tokens_of_the_old_signing_key_verify_after_the_new_one_signs() {
        use crate::core::sip::token::{FlowId, TokenKind};
        let mut ring = Ring::init([1; 32], NOW);
        ring.rotate([2; 32], NOW, 60).unwrap();
        let before = flow_keys(&ring, NOW, &[0; 32]);
        let after = flow_keys(&ring, NOW + 60, &[0; 32]);
        let token = before.token(TokenKind::Via, FlowId(7));
        assert_ne!(
            token.as_str(),
            after.token(TokenKind::Via, FlowId(7)).as_str(),
            "the new key signs"
        );
        assert_eq!(
            after.verify(TokenKind::Via, token.as_str().as_bytes()),
            Ok(FlowId(7))
        );
    }
}
