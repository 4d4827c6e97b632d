//! `load`'s tests: PEM pairs, PKCS#12 bundles (ours and OpenSSL's), SEC1 and PKCS#1 keys,
//! trust stores and subjectAltNames, on certificates the dev PKI makes. They sit above
//! `dev` (which itself loads with `load`), so `load` depends on nothing that depends on it.

use crate::tls::dev::{self, DevNames};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::tls::error::TlsError;
use crate::tls::load::*;
use crate::tls::roles::{DevPki, DevRole};
use crate::topology::{CaSource, CertSource};
use std::process::Command;

fn names() -> DevNames {
    DevNames {
        external: vec!["edge.example.test".into(), "127.0.0.1".into()],
        internal: vec!["edge-int.example.test".into(), "::1".into()],
        director: vec!["director.example.test".into()],
    }
}

/// A PEM pair loaded as the external certificate.
fn load_pem(cert: &Path, key: &Path) -> Result<CertifiedKeyMaterial, TlsError> {
    load_cert(
        &CertSource::Pem {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        },
        None,
        DevRole::External,
    )
}

/// A PKCS#12 bundle loaded as the external certificate.
fn load_p12(path: &Path, password: &str) -> Result<CertifiedKeyMaterial, TlsError> {
    load_cert(
        &CertSource::Pkcs12 {
            path: path.to_path_buf(),
            password: password.into(),
        },
        None,
        DevRole::External,
    )
}

/// The dev PKI's external certificate and key, loaded from its own files.
fn external(pki: &DevPki) -> CertifiedKeyMaterial {
    load_cert(&pki.source(DevRole::External), None, DevRole::External).unwrap()
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
    let m = external(&pki);
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
    match load_pem(&pki.external.0, &pki.internal.1) {
        Err(TlsError::KeyMismatch { cert, key }) => {
            assert_eq!(cert, pki.external.0);
            assert_eq!(key, pki.internal.1);
        }
        other => panic!("expected KeyMismatch, got {other:?}"),
    }
}

/// A PEM file `name` in `dir` with one `label` section of eight bytes that are nothing.
fn write_pem(dir: &Path, name: &str, label: &str) -> PathBuf {
    let path = dir.join(name);
    let pem = format!("-----BEGIN {label}-----\nAAECAwQFBgc=\n-----END {label}-----\n");
    std::fs::write(&path, pem).unwrap();
    path
}

#[test]
fn missing_empty_and_encrypted_files_are_named() {
    let (dir, pki) = pki();
    let missing = dir.path().join("nope.pem");
    let r = load_pem(&missing, &pki.external.1);
    assert!(matches!(r, Err(TlsError::Read { path, .. }) if path == missing));

    // A key file given as the certificate: no CERTIFICATE section.
    let r = load_pem(&pki.external.1, &pki.external.1);
    assert!(matches!(r, Err(TlsError::NoCertificate { .. })), "{r:?}");

    // A certificate given as the key: no key section.
    let r = load_pem(&pki.external.0, &pki.external.0);
    assert!(matches!(r, Err(TlsError::NoKey { .. })), "{r:?}");

    let enc = write_pem(dir.path(), "enc.key", "ENCRYPTED PRIVATE KEY");
    let r = load_pem(&pki.external.0, &enc);
    assert!(matches!(r, Err(TlsError::EncryptedKey { .. })), "{r:?}");

    let garbage = write_pem(dir.path(), "garbage.pem", "CERTIFICATE");
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
    let m = external(&pki);
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
    let m = external(pki);
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

    let m = load_p12(&path, "s3cret").unwrap();
    assert_eq!(m.leaf(), pem.leaf());
    assert_eq!(m.chain.len(), 2);
    assert_eq!(m.key.secret_der(), pem.key.secret_der());

    let r = load_p12(&path, "guess");
    assert!(
        matches!(&r, Err(TlsError::Pkcs12Password { path: p }) if *p == path),
        "{r:?}"
    );

    let r = load_p12(&pki.ca_cert, "x");
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
    let expected = external(&pki);
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
        let m = load_p12(&out, "pfx-pass").unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.leaf(), expected.leaf(), "{name}");
        let r = load_p12(&out, "wrong");
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
    let m = load_pem(&pki.external.0, &sec1).unwrap();
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
    let m = load_pem(&rsa_cert, &rsa_key).unwrap();
    assert!(matches!(m.key, PrivateKeyDer::Pkcs1(_)));
    // And an RSA key against the EC certificate is a mismatch, not a crash.
    let r = load_pem(&pki.external.0, &dir.path().join("rsa.key"));
    assert!(matches!(r, Err(TlsError::KeyMismatch { .. })), "{r:?}");
}
