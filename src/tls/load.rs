//! Certificate and key loading: PEM chains and keys, PKCS#12 bundles, the dev PKI's files, and
//! trust stores. This module owns turning files into DER and proving a key belongs to its leaf
//! certificate; it builds no rustls configuration (that is `config`) and makes no certificates
//! (that is `dev`). It also reads subjectAltNames, the only names the edge ever matches on.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;

use crate::tls::error::TlsError;
use crate::tls::roles::{DevPki, DevRole};
use crate::topology::{CaSource, CertSource};

/// A certificate chain (leaf first) and the private key of its leaf, checked to belong together.
pub struct CertifiedKeyMaterial {
    /// Leaf first, then intermediates (a root, if present, is harmless).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// One subjectAltName entry the edge understands. Other kinds (e-mail, URI, ...) are skipped.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SanEntry {
    /// A dNSName, as written in the certificate.
    Dns(String),
    /// An iPAddress.
    Ip(IpAddr),
}

/// Loads the certificate chain and key named by `src`. `role` picks the dev PKI's files when
/// `src` is [`CertSource::Dev`] (and is ignored otherwise).
pub fn load_cert(
    src: &CertSource,
    dev: Option<&DevPki>,
    role: DevRole,
) -> Result<CertifiedKeyMaterial, TlsError> {
    match src {
        CertSource::Pem { cert, key } => load_pem_pair(cert, key),
        CertSource::Pkcs12 { path, password } => load_pkcs12(path, password),
        CertSource::Dev => {
            let dev = dev.ok_or(TlsError::DevPkiMissing)?;
            let (cert, key) = dev.files(role);
            load_pem_pair(cert, key)
        }
    }
}

/// Loads the trust anchors named by `src` into a store for rustls' verifiers. Every certificate
/// in the file must be acceptable as an anchor, and there must be at least one.
pub fn load_roots(src: &CaSource, dev: Option<&DevPki>) -> Result<RootCertStore, TlsError> {
    let path = match src {
        CaSource::Pem(path) => path.as_path(),
        CaSource::Dev => dev.ok_or(TlsError::DevPkiMissing)?.ca_cert.as_path(),
    };
    let certs = read_pem_certs(path)?;
    let mut store = RootCertStore::empty();
    for cert in certs {
        // A CA file with a broken entry is a broken CA file: say so rather than trust less
        // than the operator thinks (rustls' `add_parsable_certificates` would skip it).
        store
            .add(cert)
            .map_err(|source| TlsError::CertificateRejected {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(store)
}

/// The system's trust roots (partner edges with certificates from public CAs). Entries the
/// system store holds but rustls cannot use are skipped; none at all is an error.
pub fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "system trust store entry skipped");
    }
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        return Err(TlsError::NoTrustAnchors);
    }
    Ok(store)
}

/// What operators check of a certificate: who it names and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub sans: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// The summary of a certificate (subject, subjectAltNames, validity).
pub fn summarize(cert: &CertificateDer<'_>) -> Result<CertSummary, TlsError> {
    let malformed = |source| TlsError::MalformedCertificate { path: None, source };
    let parsed = parse_x509(cert).map_err(malformed)?;
    let sans = subject_alt_names(cert)?
        .into_iter()
        .map(|s| match s {
            SanEntry::Dns(name) => name,
            SanEntry::Ip(ip) => ip.to_string(),
        })
        .collect();
    Ok(CertSummary {
        subject: parsed.subject().to_string(),
        sans,
        not_before: parsed.validity().not_before.timestamp(),
        not_after: parsed.validity().not_after.timestamp(),
    })
}

/// The DNS names and IP addresses in a certificate's subjectAltName extension, in order.
/// The subject CN is never consulted (RFC 6125 §6.4.4: SANs take precedence, and the edge uses
/// them exclusively).
pub fn subject_alt_names(cert: &CertificateDer<'_>) -> Result<Vec<SanEntry>, TlsError> {
    let malformed = |source| TlsError::MalformedCertificate { path: None, source };
    let parsed = parse_x509(cert).map_err(malformed)?;
    let Some(ext) = parsed.subject_alternative_name().map_err(malformed)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for name in &ext.value.general_names {
        match name {
            GeneralName::DNSName(dns) => out.push(SanEntry::Dns((*dns).to_owned())),
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes).map(IpAddr::from).ok(),
                    16 => <[u8; 16]>::try_from(*bytes).map(IpAddr::from).ok(),
                    _ => None,
                };
                out.push(SanEntry::Ip(
                    ip.ok_or_else(|| malformed(X509Error::InvalidExtensions))?,
                ));
            }
            // A dNSName that is not valid text: webpki would refuse it too.
            GeneralName::Invalid(..) => return Err(malformed(X509Error::InvalidExtensions)),
            _ => {}
        }
    }
    Ok(out)
}

// === impl CertifiedKeyMaterial ===

impl CertifiedKeyMaterial {
    /// The end-entity certificate (`None` only if someone built this with an empty chain).
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.chain.first()
    }
}

impl Clone for CertifiedKeyMaterial {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for CertifiedKeyMaterial {
    // Never print key bytes, not even in a debug log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKeyMaterial")
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for SanEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => write!(f, "DNS:{name}"),
            Self::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

// === loaders ===

/// A PEM chain in one file and a PEM key (PKCS#8, PKCS#1 or SEC1) in another (or the same).
fn load_pem_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKeyMaterial, TlsError> {
    let chain = read_pem_certs(cert_path)?;
    let key_pem = read(key_path)?;
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            return Err(if contains(&key_pem, b"ENCRYPTED PRIVATE KEY") {
                TlsError::EncryptedKey {
                    path: key_path.to_path_buf(),
                }
            } else {
                TlsError::NoKey {
                    path: key_path.to_path_buf(),
                }
            });
        }
        Err(source) => {
            return Err(TlsError::Pem {
                path: key_path.to_path_buf(),
                source,
            })
        }
    };
    let material = CertifiedKeyMaterial { chain, key };
    check_key_matches(&material, cert_path, key_path)?;
    Ok(material)
}

/// A PKCS#12 bundle: the first private key that has a certificate, with the chain the bundle
/// carries for it.
fn load_pkcs12(path: &Path, password: &str) -> Result<CertifiedKeyMaterial, TlsError> {
    use p12_keystore::error::Error as P12Error;
    use p12_keystore::{KeyStore, Pkcs12ImportPolicy};

    let data = read(path)?;
    // Strict: only keys linked to their certificate (by localKeyId), which is how Windows and
    // OpenSSL export them.
    let store =
        KeyStore::from_pkcs12(&data, password, Pkcs12ImportPolicy::Strict).map_err(|source| {
            match source {
                // A failed MAC or padding check is, in practice, a wrong password.
                P12Error::MacError(_) | P12Error::UnpadError => TlsError::Pkcs12Password {
                    path: path.to_path_buf(),
                },
                source => TlsError::Pkcs12 {
                    path: path.to_path_buf(),
                    source,
                },
            }
        })?;
    let Some((alias, keychain)) = store.private_key_chain() else {
        return Err(TlsError::NoKey {
            path: path.to_path_buf(),
        });
    };
    let keys = store
        .entries()
        .filter(|(_, e)| matches!(e, p12_keystore::KeyStoreEntry::PrivateKeyChain(_)))
        .count();
    if keys > 1 {
        tracing::warn!(file = %path.display(), alias, keys, "PKCS#12 bundle holds several keys; using the first");
    }
    let chain: Vec<CertificateDer<'static>> = keychain
        .certs()
        .iter()
        .map(|c| CertificateDer::from(c.as_der().to_vec()))
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    for cert in &chain {
        parse_x509(cert).map_err(|source| TlsError::MalformedCertificate {
            path: Some(path.to_path_buf()),
            source,
        })?;
    }
    // p12-keystore hands keys out as PKCS#8, whatever the bag held.
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(keychain.key().as_der().to_vec()));
    let material = CertifiedKeyMaterial { chain, key };
    check_key_matches(&material, path, path)?;
    Ok(material)
}

/// Proves the key is the leaf certificate's: a mismatch would otherwise only show up as
/// failed handshakes in production.
fn check_key_matches(
    m: &CertifiedKeyMaterial,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    use rustls::{Error, InconsistentKeys};

    let signer = super::config::provider()
        .key_provider
        .load_private_key(m.key.clone_key())
        .map_err(|source| TlsError::UnsupportedKey {
            path: key_path.to_path_buf(),
            source,
        })?;
    match CertifiedKey::new(m.chain.clone(), signer).keys_match() {
        Ok(()) => Ok(()),
        Err(Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(TlsError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        }),
        // ring always knows its public key; should a key type not, rustls itself accepts the
        // pair (`CertifiedKey::from_der`), and so do we.
        Err(Error::InconsistentKeys(InconsistentKeys::Unknown)) => {
            tracing::warn!(key = %key_path.display(), "cannot check that the key matches its certificate");
            Ok(())
        }
        Err(source) => Err(TlsError::CertificateRejected {
            path: cert_path.to_path_buf(),
            source,
        }),
    }
}

/// Every `CERTIFICATE` section of a PEM file (other sections are skipped), each parsed once as
/// X.509 so a broken certificate is reported with its file.
fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = read(path)?;
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&data) {
        let cert = cert.map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
        parse_x509(&cert).map_err(|source| TlsError::MalformedCertificate {
            path: Some(path.to_path_buf()),
            source,
        })?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Parses one DER certificate, refusing trailing bytes.
pub(crate) fn parse_x509<'a>(
    der: &'a CertificateDer<'_>,
) -> Result<x509_parser::certificate::X509Certificate<'a>, X509Error> {
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(X509Error::InvalidCertificate),
        Err(x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e)) => Err(e),
        Err(x509_parser::nom::Err::Incomplete(_)) => Err(X509Error::InvalidCertificate),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
