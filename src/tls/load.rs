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

use crate::tls::dev::{DevPki, DevRole};
use crate::tls::error::TlsError;
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

    let signer = rustls::crypto::ring::sign::any_supported_type(&m.key).map_err(|source| {
        TlsError::UnsupportedKey {
            path: key_path.to_path_buf(),
            source,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::dev::{self, DevNames};
    use std::process::Command;

    fn names() -> DevNames {
        DevNames {
            external: vec!["edge.example.test".into(), "127.0.0.1".into()],
            internal: vec!["edge-int.example.test".into(), "::1".into()],
            director: vec!["director.example.test".into()],
        }
    }

    fn pki() -> (tempfile::TempDir, DevPki) {
        let dir = tempfile::tempdir().unwrap();
        let pki = dev::generate(dir.path(), &names()).unwrap();
        (dir, pki)
    }

    fn openssl_available() -> bool {
        let ok = Command::new("openssl")
            .arg("version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("note: openssl not found; skipping the part of this test that needs it");
        }
        ok
    }

    fn openssl(args: &[&str]) {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn pem_round_trip() {
        let (_dir, pki) = pki();
        let src = pki.source(DevRole::External);
        let m = load_cert(&src, None, DevRole::External).unwrap();
        assert_eq!(m.chain.len(), 1);
        let pem = std::fs::read(&pki.external.0).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        assert_eq!(m.leaf(), Some(&der));
        // Clone keeps the key, Debug hides it.
        let c = m.clone();
        assert_eq!(c.key.secret_der(), m.key.secret_der());
        assert!(format!("{m:?}").contains("redacted"));
    }

    #[test]
    fn dev_source_picks_the_role_files() {
        let (_dir, pki) = pki();
        let ext = load_cert(&CertSource::Dev, Some(&pki), DevRole::External).unwrap();
        let int = load_cert(&CertSource::Dev, Some(&pki), DevRole::Internal).unwrap();
        assert_ne!(ext.leaf(), int.leaf());
        let sans = subject_alt_names(int.leaf().unwrap()).unwrap();
        assert!(sans.contains(&SanEntry::Dns("edge-int.example.test".into())));
        assert!(matches!(
            load_cert(&CertSource::Dev, None, DevRole::External),
            Err(TlsError::DevPkiMissing)
        ));
    }

    #[test]
    fn key_that_does_not_match_is_rejected() {
        let (_dir, pki) = pki();
        let src = CertSource::Pem {
            cert: pki.external.0.clone(),
            key: pki.internal.1.clone(),
        };
        match load_cert(&src, None, DevRole::External) {
            Err(TlsError::KeyMismatch { cert, key }) => {
                assert_eq!(cert, pki.external.0);
                assert_eq!(key, pki.internal.1);
            }
            other => panic!("expected KeyMismatch, got {other:?}"),
        }
    }

    #[test]
    fn missing_empty_and_encrypted_files_are_named() {
        let (dir, pki) = pki();
        let missing = dir.path().join("nope.pem");
        let r = load_cert(
            &CertSource::Pem {
                cert: missing.clone(),
                key: pki.external.1.clone(),
            },
            None,
            DevRole::External,
        );
        assert!(matches!(r, Err(TlsError::Read { path, .. }) if path == missing));

        // A key file given as the certificate: no CERTIFICATE section.
        let r = load_cert(
            &CertSource::Pem {
                cert: pki.external.1.clone(),
                key: pki.external.1.clone(),
            },
            None,
            DevRole::External,
        );
        assert!(matches!(r, Err(TlsError::NoCertificate { .. })), "{r:?}");

        // A certificate given as the key: no key section.
        let r = load_cert(
            &CertSource::Pem {
                cert: pki.external.0.clone(),
                key: pki.external.0.clone(),
            },
            None,
            DevRole::External,
        );
        assert!(matches!(r, Err(TlsError::NoKey { .. })), "{r:?}");

        let enc = dir.path().join("enc.key");
        std::fs::write(
            &enc,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAECAwQFBgc=\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let r = load_cert(
            &CertSource::Pem {
                cert: pki.external.0.clone(),
                key: enc,
            },
            None,
            DevRole::External,
        );
        assert!(matches!(r, Err(TlsError::EncryptedKey { .. })), "{r:?}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgc=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let r = load_roots(&CaSource::Pem(garbage.clone()), None);
        assert!(
            matches!(&r, Err(TlsError::MalformedCertificate { path: Some(p), .. }) if *p == garbage),
            "{r:?}"
        );
    }

    #[test]
    fn roots_from_pem_and_dev() {
        let (_dir, pki) = pki();
        let store = load_roots(&CaSource::Pem(pki.ca_cert.clone()), None).unwrap();
        assert_eq!(store.len(), 1);
        let store = load_roots(&CaSource::Dev, Some(&pki)).unwrap();
        assert_eq!(store.len(), 1);
        assert!(matches!(
            load_roots(&CaSource::Dev, None),
            Err(TlsError::DevPkiMissing)
        ));
        assert!(matches!(
            load_roots(&CaSource::Pem(pki.external.1.clone()), None),
            Err(TlsError::NoCertificate { .. })
        ));
    }

    #[test]
    fn sans_are_dns_names_and_ips() {
        let (_dir, pki) = pki();
        let m = load_cert(&pki.source(DevRole::External), None, DevRole::External).unwrap();
        let sans = subject_alt_names(m.leaf().unwrap()).unwrap();
        assert_eq!(
            sans,
            vec![
                SanEntry::Dns("edge.example.test".into()),
                SanEntry::Ip("127.0.0.1".parse().unwrap()),
            ]
        );
        assert_eq!(sans[1].to_string(), "IP:127.0.0.1");
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(
            subject_alt_names(&junk),
            Err(TlsError::MalformedCertificate { path: None, .. })
        ));
    }

    /// Writes the external dev certificate and key (and the CA) as a PKCS#12 bundle with
    /// p12-keystore's own writer.
    fn write_p12(pki: &DevPki, out: &Path, password: &str) -> CertifiedKeyMaterial {
        use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
        let m = load_cert(&pki.source(DevRole::External), None, DevRole::External).unwrap();
        let ca = CertificateDer::from_pem_file(&pki.ca_cert).unwrap();
        let chain = PrivateKeyChain::new(
            "edge-key-1",
            PrivateKey::from_der(m.key.secret_der()).unwrap(),
            [
                Certificate::from_der(m.leaf().unwrap()).unwrap(),
                Certificate::from_der(&ca).unwrap(),
            ],
        );
        let mut store = KeyStore::new();
        store.add_entry("edge", KeyStoreEntry::PrivateKeyChain(chain));
        std::fs::write(out, store.writer(password).write().unwrap()).unwrap();
        m
    }

    #[test]
    fn pkcs12_load_and_wrong_password() {
        let (dir, pki) = pki();
        let path = dir.path().join("edge.pfx");
        let pem = write_p12(&pki, &path, "s3cret");

        let src = CertSource::Pkcs12 {
            path: path.clone(),
            password: "s3cret".into(),
        };
        let m = load_cert(&src, None, DevRole::External).unwrap();
        assert_eq!(m.leaf(), pem.leaf());
        assert_eq!(m.chain.len(), 2);
        assert_eq!(m.key.secret_der(), pem.key.secret_der());

        let wrong = CertSource::Pkcs12 {
            path: path.clone(),
            password: "guess".into(),
        };
        let r = load_cert(&wrong, None, DevRole::External);
        assert!(
            matches!(&r, Err(TlsError::Pkcs12Password { path: p }) if *p == path),
            "{r:?}"
        );

        let not_p12 = CertSource::Pkcs12 {
            path: pki.ca_cert.clone(),
            password: "x".into(),
        };
        let r = load_cert(&not_p12, None, DevRole::External);
        assert!(matches!(r, Err(TlsError::Pkcs12 { .. })), "{r:?}");
    }

    /// A bundle as Windows exports it (legacy 3DES + SHA-1 MAC), made with the openssl command.
    #[test]
    fn pkcs12_from_openssl_legacy_and_modern() {
        if !openssl_available() {
            return;
        }
        let (dir, pki) = pki();
        let cert = pki.external.0.to_str().unwrap();
        let key = pki.external.1.to_str().unwrap();
        let ca = pki.ca_cert.to_str().unwrap();
        let expected = load_cert(&pki.source(DevRole::External), None, DevRole::External).unwrap();
        let variants: [(&str, &[&str]); 2] = [
            (
                "legacy.pfx",
                &[
                    "-keypbe",
                    "PBE-SHA1-3DES",
                    "-certpbe",
                    "PBE-SHA1-3DES",
                    "-macalg",
                    "sha1",
                ],
            ),
            ("modern.pfx", &[]),
        ];
        for (name, extra) in variants {
            let out = dir.path().join(name);
            let out_s = out.to_str().unwrap();
            let mut args = vec![
                "pkcs12",
                "-export",
                "-in",
                cert,
                "-inkey",
                key,
                "-certfile",
                ca,
                "-out",
                out_s,
                "-passout",
                "pass:pfx-pass",
                "-name",
                "edge",
            ];
            args.extend_from_slice(extra);
            openssl(&args);
            let m = load_cert(
                &CertSource::Pkcs12 {
                    path: out.clone(),
                    password: "pfx-pass".into(),
                },
                None,
                DevRole::External,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(m.leaf(), expected.leaf(), "{name}");
            let r = load_cert(
                &CertSource::Pkcs12 {
                    path: out,
                    password: "wrong".into(),
                },
                None,
                DevRole::External,
            );
            assert!(
                matches!(r, Err(TlsError::Pkcs12Password { .. })),
                "{name}: {r:?}"
            );
        }
    }

    /// SEC1 (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`) keys, converted by openssl.
    #[test]
    fn sec1_and_pkcs1_keys() {
        if !openssl_available() {
            return;
        }
        let (dir, pki) = pki();
        let sec1 = dir.path().join("sec1.key");
        openssl(&[
            "ec",
            "-in",
            pki.external.1.to_str().unwrap(),
            "-out",
            sec1.to_str().unwrap(),
        ]);
        assert!(std::fs::read_to_string(&sec1)
            .unwrap()
            .contains("BEGIN EC PRIVATE KEY"));
        let m = load_cert(
            &CertSource::Pem {
                cert: pki.external.0.clone(),
                key: sec1,
            },
            None,
            DevRole::External,
        )
        .unwrap();
        assert!(matches!(m.key, PrivateKeyDer::Sec1(_)));

        let rsa_key = dir.path().join("rsa.key");
        let rsa_cert = dir.path().join("rsa.pem");
        openssl(&[
            "genrsa",
            "-traditional",
            "-out",
            rsa_key.to_str().unwrap(),
            "2048",
        ]);
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            rsa_key.to_str().unwrap(),
            "-out",
            rsa_cert.to_str().unwrap(),
            "-days",
            "2",
            "-subj",
            "/CN=rsa.example.test",
            "-addext",
            "subjectAltName=DNS:rsa.example.test",
        ]);
        let m = load_cert(
            &CertSource::Pem {
                cert: rsa_cert.clone(),
                key: rsa_key,
            },
            None,
            DevRole::External,
        )
        .unwrap();
        assert!(matches!(m.key, PrivateKeyDer::Pkcs1(_)));
        // And an RSA key against the EC certificate is a mismatch, not a crash.
        let r = load_cert(
            &CertSource::Pem {
                cert: pki.external.0.clone(),
                key: dir.path().join("rsa.key"),
            },
            None,
            DevRole::External,
        );
        assert!(matches!(r, Err(TlsError::KeyMismatch { .. })), "{r:?}");
    }
}
