//! rustls configurations for each side of the edge, and the peer identity read from a
//! finished handshake. This module owns protocol versions, the crypto provider (ring, chosen
//! explicitly rather than through a process-wide default), client authentication and session
//! resumption. It reads no files (that is `load`).
//!
//! - External listener: TLS 1.3 and 1.2, server authentication only, resumption by tickets and
//!   a session cache (a reconnect storm after an outage is mostly resumptions).
//! - Internal listener: mutual TLS, a client certificate chaining to the topology's CA is
//!   required; there is no anonymous mode.
//! - Toward the Director pool: the edge's internal certificate as client certificate, the
//!   server verified against the topology's CA and the name the caller passes to `connect()`.
//!
//! Identity is subjectAltName only; the subject CN is never read.

use crate::sync::RwLockExt;
use std::sync::{Arc, OnceLock};

use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ServerConfig, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::version::{TLS12, TLS13};
use rustls::{CommonState, RootCertStore, SupportedProtocolVersion};

use crate::tls::error::TlsError;
use crate::tls::load::{subject_alt_names, CertifiedKeyMaterial, SanEntry};

/// TLS 1.3 first; 1.2 stays for Lync/Skype-era clients and partner edges.
static VERSIONS: &[&SupportedProtocolVersion] = &[&TLS13, &TLS12];

/// Stateful sessions remembered on the external side (TLS 1.2 session IDs; TLS 1.3 uses
/// tickets). At ~30 KB per live connection this cache is noise: entries are a few hundred
/// bytes, so 16 Ki entries cost a few MB and cover a reconnect storm of that many clients.
const EXTERNAL_SESSION_CACHE: usize = 16 * 1024;

/// A certificate and key that can be replaced while the edge runs (reload): new handshakes,
/// served or made, use what is in the slot at that moment; established connections keep
/// what they negotiated.
#[derive(Debug)]
pub struct CertSlot {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl CertSlot {
    pub fn new(m: CertifiedKeyMaterial) -> Result<Arc<CertSlot>, TlsError> {
        Ok(Arc::new(CertSlot {
            current: std::sync::RwLock::new(certified_key(m)?),
        }))
    }

    /// Checks material for the slot (key and certificate together) without installing it,
    /// so several slots can be checked before any changes.
    pub fn prepare(m: CertifiedKeyMaterial) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        certified_key(m)
    }

    /// Installs what [`CertSlot::prepare`] checked: new handshakes use it from now on.
    pub fn install(&self, key: Arc<rustls::sign::CertifiedKey>) {
        *self.current.write_unpoisoned() = key;
    }

    fn get(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.current.read_unpoisoned().clone()
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let key = self.get();
        key.key.choose_scheme(sigschemes).is_some().then_some(key)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn certified_key(m: CertifiedKeyMaterial) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let key = provider()
        .key_provider
        .load_private_key(m.key)
        .map_err(config_err("certificate slot"))?;
    let certified = rustls::sign::CertifiedKey::new(m.chain, key);
    // The same check the builders make: the key belongs to the certificate (a key type
    // that cannot tell passes, as there).
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(config_err("certificate slot")(e)),
    }
    Ok(Arc::new(certified))
}

/// Who the peer of a finished handshake is, by the DNS names in its certificate's
/// subjectAltName (lower-cased; never the subject CN).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub dns_names: Vec<String>,
}

/// The Internet-facing listener: TLS 1.3 and 1.2, session resumption by tickets and a
/// stateful cache. With `partner_roots` (federation), a client certificate is requested:
/// remote users may present none, but one that is presented must chain to those roots (a
/// certificate from an unknown CA fails the handshake); which partner it names is read
/// after the handshake ([`peer_identity`]).
pub fn external_server_config(
    m: CertifiedKeyMaterial,
    partner_roots: Option<RootCertStore>,
) -> Result<Arc<ServerConfig>, TlsError> {
    external_server_config_with(CertSlot::new(m)?, partner_roots, None)
}

/// [`external_server_config`] serving from a [`CertSlot`] (reloadable).
pub fn external_server_config_with(
    slot: Arc<CertSlot>,
    partner_roots: Option<RootCertStore>,
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    const WHAT: &str = "external server";
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(config_err(WHAT))?;
    let builder = match partner_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            if roots.is_empty() {
                return Err(TlsError::NoTrustAnchors);
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|source| TlsError::ClientVerifier { source })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_cert_resolver(slot);
    cfg.session_storage = ServerSessionMemoryCache::new(EXTERNAL_SESSION_CACHE);
    // One TLS 1.3 ticket per handshake (rustls sends two): a SIP client holds one
    // connection, resumes it once after a failover and gets a fresh ticket then; a second
    // would be one more seal per handshake for nothing.
    cfg.send_tls13_tickets = 1;
    // The cheaper suite first (see `provider`).
    cfg.ignore_client_order = true;
    // Stateless TLS 1.3 (and 1.2) tickets: sealed with keys from the pool ring when there is
    // one (a client resumes on any member), else aws-lc's ticketer (rotating its own key).
    cfg.ticketer = match ticketer {
        Some(t) => t,
        None => rustls::crypto::aws_lc_rs::Ticketer::new().map_err(config_err(WHAT))?,
    };
    Ok(Arc::new(cfg))
}

/// The listener facing the Director pool: mutual TLS, a client certificate chaining to
/// `roots` is required (no anonymous clients). Resumption uses rustls' default session cache;
/// the internal side has few, long-lived connections.
pub fn internal_server_config(
    m: CertifiedKeyMaterial,
    roots: RootCertStore,
) -> Result<Arc<ServerConfig>, TlsError> {
    internal_server_config_with(CertSlot::new(m)?, roots)
}

/// [`internal_server_config`] serving from a [`CertSlot`] (reloadable).
pub fn internal_server_config_with(
    slot: Arc<CertSlot>,
    roots: RootCertStore,
) -> Result<Arc<ServerConfig>, TlsError> {
    const WHAT: &str = "internal server";
    if roots.is_empty() {
        return Err(TlsError::NoTrustAnchors);
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|source| TlsError::ClientVerifier { source })?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(config_err(WHAT))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    // The cheaper suite first (see `provider`).
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// A server that requires client certificates chaining to `roots`: exactly
/// [`internal_server_config`], under the name test code (a Director stub) looks for.
pub fn server_config_requiring_client(
    m: CertifiedKeyMaterial,
    roots: RootCertStore,
) -> Result<Arc<ServerConfig>, TlsError> {
    internal_server_config(m, roots)
}

/// The edge toward the Director pool: presents `m` as its client certificate and verifies the
/// server against `roots` and the name passed to `connect()` (the pool's `server_name`).
pub fn pool_client_config(
    m: CertifiedKeyMaterial,
    roots: RootCertStore,
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_trusting(roots, Some(m))
}

/// A client trusting `roots` that presents the certificate in `slot` (reloadable): the edge
/// toward the Director pool and toward partner edges.
pub fn client_config_with(
    roots: RootCertStore,
    slot: Arc<CertSlot>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let cfg = client_trusting(roots)?.with_client_cert_resolver(slot);
    Ok(Arc::new(cfg))
}

/// A client trusting `roots`, with or without a client certificate (test clients, partner
/// edges, the Director stub dialling the edge).
pub fn client_config_trusting(
    roots: RootCertStore,
    client: Option<CertifiedKeyMaterial>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = client_trusting(roots)?;
    let cfg = match client {
        Some(m) => builder
            .with_client_auth_cert(m.chain, m.key)
            .map_err(config_err(CLIENT))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

const CLIENT: &str = "client";

/// A client verifying servers against `roots` (refused when empty), its own certificate yet
/// to be chosen.
fn client_trusting(
    roots: RootCertStore,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, TlsError> {
    if roots.is_empty() {
        return Err(TlsError::NoTrustAnchors);
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(config_err(CLIENT))?;
    Ok(builder.with_root_certificates(roots))
}

/// The peer's identity from its leaf certificate's subjectAltName DNS names. `None` when the
/// peer sent no certificate (or, defensively, one that does not parse; rustls has verified it
/// by then). A `&ServerConnection` or `&ClientConnection` derefs to `&CommonState`.
pub fn peer_identity(conn: &CommonState) -> Option<PeerIdentity> {
    let leaf = conn.peer_certificates()?.first()?;
    let sans = match subject_alt_names(leaf) {
        Ok(sans) => sans,
        Err(e) => {
            tracing::warn!(error = %e, "verified peer certificate has unreadable SANs");
            return None;
        }
    };
    let dns_names = sans
        .into_iter()
        .filter_map(|san| match san {
            SanEntry::Dns(name) => Some(name.to_ascii_lowercase()),
            SanEntry::Ip(_) => None,
        })
        .collect();
    Some(PeerIdentity { dns_names })
}

// === impl PeerIdentity ===

impl PeerIdentity {
    /// Whether `name` is one of the peer's DNS names (ASCII case-insensitive, exact: a
    /// wildcard SAN is not expanded here).
    pub fn has_dns_name(&self, name: &str) -> bool {
        self.dns_names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

// === helpers ===

/// The one crypto provider, passed explicitly to every builder the edge makes: aws-lc-rs,
/// with AES-128-GCM/SHA-256 first. It is also installed as the process default, for the
/// libraries that build a client configuration of their own (redis-rs, for `rediss://`),
/// since the tree holds ring's provider too and rustls then picks neither by itself.
///
/// Why aws-lc-rs (issue 18): its X25519 and P-256 are faster than ring's. A server's share
/// of a full TLS 1.3 handshake (ECDSA P-256, X25519), measured in one process without
/// sockets, is ~105 µs against ring's ~125 µs; through the edge (`cargo bench --bench
/// tls_idle`) 0.14 against 0.17 ms at 4 clients in parallel. Key exchange: X25519, P-256,
/// P-384, and the post-quantum hybrid X25519MLKEM768 for a client that asks for it first
/// (the server follows the client's order of groups): SIP signalling carries SRTP keys
/// (SDES), so a recording of today's TLS must not open tomorrow's media.
///
/// Why AES-128-GCM/SHA-256 first (measured with `perf` on the edge during full TLS 1.3
/// handshakes, with ring): SHA-384's transcript hash and key schedule cost 8 % of the
/// edge's handshake CPU. AES-128-GCM/SHA-256 is TLS 1.3's mandatory suite (RFC 8446 §9.1);
/// AES-256-GCM and ChaCha20-Poly1305 stay offered. The servers choose by this order
/// (`ignore_client_order`), since clients (rustls, OpenSSL) list AES-256 first.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            use rustls::crypto::aws_lc_rs::cipher_suite::*;
            use rustls::crypto::aws_lc_rs::kx_group;
            let provider = CryptoProvider {
                cipher_suites: vec![
                    TLS13_AES_128_GCM_SHA256,
                    TLS13_AES_256_GCM_SHA384,
                    TLS13_CHACHA20_POLY1305_SHA256,
                    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                    TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                    TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                    TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                    TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                ],
                kx_groups: vec![
                    kx_group::X25519,
                    kx_group::SECP256R1,
                    kx_group::SECP384R1,
                    kx_group::X25519MLKEM768,
                ],
                ..rustls::crypto::aws_lc_rs::default_provider()
            };
            // Already installed (by an earlier call's race, or by the embedding program):
            // that one stays the default, this one is still the edge's.
            let _ = provider.clone().install_default();
            Arc::new(provider)
        })
        .clone()
}

fn config_err(what: &'static str) -> impl Fn(rustls::Error) -> TlsError {
    move |source| TlsError::Config { what, source }
}
