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
    external_server_config_with(CertSlot::new(m)?, partner_roots)
}

/// [`external_server_config`] serving from a [`CertSlot`] (reloadable).
pub fn external_server_config_with(
    slot: Arc<CertSlot>,
    partner_roots: Option<RootCertStore>,
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
    // Stateless TLS 1.3 (and 1.2) tickets; ring's ticketer rotates its key every few hours.
    cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(config_err(WHAT))?;
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
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(config_err(WHAT))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
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
    const WHAT: &str = "client";
    if roots.is_empty() {
        return Err(TlsError::NoTrustAnchors);
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(config_err(WHAT))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(slot);
    Ok(Arc::new(cfg))
}

/// A client trusting `roots`, with or without a client certificate (test clients, partner
/// edges, the Director stub dialling the edge).
pub fn client_config_trusting(
    roots: RootCertStore,
    client: Option<CertifiedKeyMaterial>,
) -> Result<Arc<ClientConfig>, TlsError> {
    const WHAT: &str = "client";
    if roots.is_empty() {
        return Err(TlsError::NoTrustAnchors);
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(config_err(WHAT))?
        .with_root_certificates(roots);
    let cfg = match client {
        Some(m) => builder
            .with_client_auth_cert(m.chain, m.key)
            .map_err(config_err(WHAT))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
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

/// The one crypto provider, passed explicitly to every builder so nothing depends on a
/// process-wide default being installed.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn config_err(what: &'static str) -> impl Fn(rustls::Error) -> TlsError {
    move |source| TlsError::Config { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::dev::{self, DevNames, DevPki, DevRole, CLIENT_NAME};
    use crate::tls::load::{load_cert, load_roots};
    use rustls::pki_types::ServerName;
    use rustls::{
        CertificateError, ClientConnection, Error, HandshakeKind, ProtocolVersion, ServerConnection,
    };
    use std::io::{Read, Write};

    fn names() -> DevNames {
        DevNames {
            external: vec!["sip.example.test".into(), "127.0.0.1".into()],
            internal: vec!["edge-int.example.test".into()],
            director: vec!["director.example.test".into()],
        }
    }

    fn new_pki() -> (tempfile::TempDir, DevPki) {
        let dir = tempfile::tempdir().unwrap();
        let pki = dev::generate(dir.path(), &names()).unwrap();
        (dir, pki)
    }

    fn material(pki: &DevPki, role: DevRole) -> CertifiedKeyMaterial {
        load_cert(&pki.source(role), None, role).unwrap()
    }

    fn roots(pki: &DevPki) -> RootCertStore {
        load_roots(&pki.ca_source(), None).unwrap()
    }

    #[derive(Debug)]
    enum Failed {
        Client(Error),
        Server(Error),
    }

    /// Moves bytes both ways until neither side has anything to say, surfacing the first
    /// side that fails. No sockets.
    fn pump(c: &mut ClientConnection, s: &mut ServerConnection) -> Result<(), Failed> {
        for _ in 0..32 {
            let mut progressed = false;
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                progressed = true;
                let mut rd = buf.as_slice();
                while !rd.is_empty() {
                    s.read_tls(&mut rd).unwrap();
                    s.process_new_packets().map_err(Failed::Server)?;
                }
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                progressed = true;
                let mut rd = buf.as_slice();
                while !rd.is_empty() {
                    c.read_tls(&mut rd).unwrap();
                    c.process_new_packets().map_err(Failed::Client)?;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
        panic!("handshake did not settle");
    }

    fn connect(
        ccfg: &Arc<ClientConfig>,
        scfg: &Arc<ServerConfig>,
        name: &str,
    ) -> (ClientConnection, ServerConnection, Result<(), Failed>) {
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        let mut c = ClientConnection::new(ccfg.clone(), server_name).unwrap();
        let mut s = ServerConnection::new(scfg.clone()).unwrap();
        let r = pump(&mut c, &mut s);
        (c, s, r)
    }

    /// Sends a line client → server through the TLS session and reads it back.
    fn exchange(c: &mut ClientConnection, s: &mut ServerConnection) {
        let msg = b"OPTIONS sip:edge SIP/2.0\r\n\r\n";
        c.writer().write_all(msg).unwrap();
        pump(c, s).unwrap();
        let mut got = vec![0; msg.len()];
        s.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, msg);
    }

    #[test]
    fn external_serves_clients_trusting_the_dev_ca() {
        let (_d, pki) = new_pki();
        let scfg = external_server_config(material(&pki, DevRole::External), None).unwrap();
        let ccfg = client_config_trusting(roots(&pki), None).unwrap();

        let (mut c, mut s, r) = connect(&ccfg, &scfg, "sip.example.test");
        r.unwrap();
        assert_eq!(c.protocol_version(), Some(ProtocolVersion::TLSv1_3));
        exchange(&mut c, &mut s);
        // No client certificate on this side, and the server's SANs are what the client sees.
        assert_eq!(peer_identity(&s), None);
        let id = peer_identity(&c).unwrap();
        assert_eq!(id.dns_names, vec!["sip.example.test".to_owned()]);
        assert!(id.has_dns_name("SIP.example.test"));

        // An IP SAN verifies too (the loopback default dials 127.0.0.1).
        connect(&ccfg, &scfg, "127.0.0.1").2.unwrap();

        // A name the certificate does not carry is refused by the client.
        let r = connect(&ccfg, &scfg, "other.example.test").2;
        assert!(
            matches!(
                r,
                Err(Failed::Client(Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )))
            ),
            "{r:?}"
        );
    }

    #[test]
    fn external_speaks_tls12_and_resumes_both_versions() {
        let (_d, pki) = new_pki();
        let scfg = external_server_config(material(&pki, DevRole::External), None).unwrap();

        // TLS 1.3: tickets.
        let ccfg = client_config_trusting(roots(&pki), None).unwrap();
        let (_, _, r) = connect(&ccfg, &scfg, "sip.example.test");
        r.unwrap();
        let (c, _, r) = connect(&ccfg, &scfg, "sip.example.test");
        r.unwrap();
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));

        // TLS 1.2 only client.
        let tls12 = Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&TLS12])
                .unwrap()
                .with_root_certificates(roots(&pki))
                .with_no_client_auth(),
        );
        let (mut c, mut s, r) = connect(&tls12, &scfg, "sip.example.test");
        r.unwrap();
        assert_eq!(c.protocol_version(), Some(ProtocolVersion::TLSv1_2));
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
        exchange(&mut c, &mut s);
        let (c, _, r) = connect(&tls12, &scfg, "sip.example.test");
        r.unwrap();
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
    }

    #[test]
    fn internal_requires_a_client_certificate_from_the_ca() {
        let (_d, pki) = new_pki();
        let scfg = internal_server_config(material(&pki, DevRole::Internal), roots(&pki)).unwrap();

        // No certificate: the server refuses. In TLS 1.3 the client's side of the handshake
        // has already finished; it learns of the rejection only when it next reads.
        let anon = client_config_trusting(roots(&pki), None).unwrap();
        let mut c = ClientConnection::new(
            anon.clone(),
            ServerName::try_from("edge-int.example.test").unwrap(),
        )
        .unwrap();
        let mut s = ServerConnection::new(scfg.clone()).unwrap();
        let r = pump(&mut c, &mut s);
        assert!(
            matches!(r, Err(Failed::Server(Error::NoCertificatesPresented))),
            "{r:?}"
        );
        assert!(!c.is_handshaking());
        let mut alert = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut alert).unwrap();
        }
        c.read_tls(&mut alert.as_slice()).unwrap();
        assert!(matches!(
            c.process_new_packets(),
            Err(Error::AlertReceived(_))
        ));

        // A certificate from another CA (same names, different PKI): refused. Both dev CAs
        // share a subject, so webpki finds the wrong issuer and reports a bad signature.
        let (_d2, other) = new_pki();
        let stranger =
            client_config_trusting(roots(&pki), Some(material(&other, DevRole::Client))).unwrap();
        let r = connect(&stranger, &scfg, "edge-int.example.test").2;
        assert!(
            matches!(
                r,
                Err(Failed::Server(Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature
                )))
            ),
            "{r:?}"
        );

        // The dev client certificate: accepted, and its SAN is the peer identity.
        let client =
            client_config_trusting(roots(&pki), Some(material(&pki, DevRole::Client))).unwrap();
        let (mut c, mut s, r) = connect(&client, &scfg, "edge-int.example.test");
        r.unwrap();
        exchange(&mut c, &mut s);
        assert_eq!(
            peer_identity(&s),
            Some(PeerIdentity {
                dns_names: vec![CLIENT_NAME.to_owned()]
            })
        );
        assert_eq!(
            peer_identity(&c).unwrap().dns_names,
            vec!["edge-int.example.test".to_owned()]
        );
    }

    #[test]
    fn pool_client_reaches_a_director_stub() {
        let (_d, pki) = new_pki();
        let director =
            server_config_requiring_client(material(&pki, DevRole::Director), roots(&pki)).unwrap();
        let edge = pool_client_config(material(&pki, DevRole::Internal), roots(&pki)).unwrap();
        let (mut c, mut s, r) = connect(&edge, &director, "director.example.test");
        r.unwrap();
        exchange(&mut c, &mut s);
        assert!(peer_identity(&s)
            .unwrap()
            .has_dns_name("edge-int.example.test"));
        assert!(peer_identity(&c)
            .unwrap()
            .has_dns_name("director.example.test"));

        // The Director is verified by name: the edge's own internal name is not the pool's.
        let r = connect(&edge, &director, "edge-int.example.test").2;
        assert!(
            matches!(r, Err(Failed::Client(Error::InvalidCertificate(_)))),
            "{r:?}"
        );
    }

    #[test]
    fn empty_trust_stores_are_refused() {
        let (_d, pki) = new_pki();
        assert!(matches!(
            internal_server_config(material(&pki, DevRole::Internal), RootCertStore::empty()),
            Err(TlsError::NoTrustAnchors)
        ));
        assert!(matches!(
            client_config_trusting(RootCertStore::empty(), None),
            Err(TlsError::NoTrustAnchors)
        ));
    }

    #[test]
    fn mismatched_material_is_a_config_error() {
        let (_d, pki) = new_pki();
        let mut m = material(&pki, DevRole::External);
        m.key = material(&pki, DevRole::Internal).key;
        assert!(matches!(
            external_server_config(m, None),
            Err(TlsError::Config { .. })
        ));
    }
}
