//! Certificate tooling for operators (`sipedge cert ...`): a key and a certificate signing
//! request to submit to a CA, and the check of every certificate a topology serves with.
//!
//! The check is what a load balancer or a partner will find out the hard way: the chain to
//! the roots that will judge it, every name the topology needs among the subjectAltNames
//! (never the CN), the key belonging to the certificate, and the days left.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::RootCertStore;

use crate::tls::error::TlsError;
use crate::tls::load::{load_cert, load_roots, summarize, system_roots};
use crate::tls::roles::{DevPki, DevRole};
use crate::topology::{CaSource, CertSource, Topology};

/// Certificates this close to their end are reported (yellow, still passing).
pub const WARN_DAYS: i64 = 30;

/// The key a request is made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA P-256 (the default: small, fast, everywhere).
    EcdsaP256,
    /// RSA 2048 with SHA-256, for CAs (and old clients) that want RSA.
    Rsa2048,
}

/// A new private key and a CSR for `sans` (the first one is also the subject CN, for CAs
/// that still want one): both as PEM.
pub fn request(sans: &[String], kind: KeyKind) -> Result<(String, String), TlsError> {
    let fail = |what: &'static str| move |source| TlsError::DevGenerate { what, source };
    let key = match kind {
        KeyKind::EcdsaP256 => KeyPair::generate().map_err(fail("request key"))?,
        KeyKind::Rsa2048 => rsa_2048()?,
    };
    let mut params = CertificateParams::new(sans.to_vec()).map_err(fail("request names"))?;
    let mut dn = DistinguishedName::new();
    if let Some(first) = sans.first() {
        dn.push(DnType::CommonName, first.as_str());
    }
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(fail("certificate signing request"))?;
    let csr = csr.pem().map_err(fail("certificate signing request"))?;
    Ok((key.serialize_pem(), csr))
}

/// An RSA 2048 key (ring signs with RSA but cannot make RSA keys; RustCrypto's rsa does,
/// from the system RNG).
fn rsa_2048() -> Result<KeyPair, TlsError> {
    use rsa::pkcs8::EncodePrivateKey;
    let fail = |what: &'static str| move |source| TlsError::DevGenerate { what, source };
    let private = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).map_err(|e| {
        TlsError::KeyGeneration {
            what: "RSA key",
            detail: e.to_string(),
        }
    })?;
    let der = private
        .to_pkcs8_der()
        .map_err(|e| TlsError::KeyGeneration {
            what: "RSA key encoding",
            detail: e.to_string(),
        })?;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
    KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256)
        .map_err(fail("RSA key pair"))
}

/// Writes a new key and CSR for `sans` into `dir` as `<first name>.key` (mode 0600) and
/// `<first name>.csr`; refuses to replace existing files. Returns their paths.
pub fn write_request(
    dir: &Path,
    sans: &[String],
    kind: KeyKind,
) -> Result<(PathBuf, PathBuf), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let first = sans.first().map_or("sipedge", String::as_str);
    let stem = first.replace(['*', '/'], "_");
    let (key, csr) = request(sans, kind)?;
    let key_path = dir.join(format!("{stem}.key"));
    let csr_path = dir.join(format!("{stem}.csr"));
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    for (path, text, mode) in [(&key_path, &key, 0o600), (&csr_path, &csr, 0o644)] {
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        written.map_err(|source| TlsError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok((key_path, csr_path))
}

/// One certificate of the topology, checked.
#[derive(Clone, Debug)]
pub struct Checked {
    /// `external` or `internal`.
    pub role: &'static str,
    pub subject: String,
    pub sans: Vec<String>,
    /// Days until it expires (negative: since it expired); `None` if it could not be read.
    pub days_left: Option<i64>,
    /// What is wrong (red); empty when it serves.
    pub problems: Vec<String>,
}

impl Checked {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Passing, but close to its end.
    pub fn expiring(&self) -> bool {
        self.ok() && self.days_left.is_some_and(|d| d < WARN_DAYS)
    }
}

/// Checks every certificate the topology serves with, at `now`: the external one against
/// the roots remote users and partners judge it by (the federation CA file if any, the
/// dev CA for a dev certificate, else the system's) for the pool FQDN and the external SIP
/// host; the internal one against `internal.ca` for the internal SIP host.
pub fn check_topology(t: &Topology, dev: Option<&DevPki>, now: SystemTime) -> Vec<Checked> {
    let mut external_names = vec![t.edge.pool_fqdn.clone(), t.external.sip_host.clone()];
    external_names.dedup();
    let external_roots = || -> Result<RootCertStore, TlsError> {
        match (
            &t.external.cert,
            t.federation.as_ref().and_then(|f| f.ca.as_ref()),
        ) {
            (CertSource::Dev, _) => load_roots(&CaSource::Dev, dev),
            (_, Some(ca)) => load_roots(&CaSource::Pem(ca.clone()), None),
            (_, None) => system_roots(),
        }
    };
    let internal_roots = || load_roots(&t.internal.ca, dev);
    vec![
        check_one(
            "external",
            &t.external.cert,
            dev,
            DevRole::External,
            external_roots(),
            &external_names,
            now,
        ),
        check_one(
            "internal",
            &t.internal.cert,
            dev,
            DevRole::Internal,
            internal_roots(),
            std::slice::from_ref(&t.internal.sip_host),
            now,
        ),
    ]
}

fn check_one(
    role: &'static str,
    source: &CertSource,
    dev: Option<&DevPki>,
    dev_role: DevRole,
    roots: Result<RootCertStore, TlsError>,
    names: &[String],
    now: SystemTime,
) -> Checked {
    let mut checked = Checked {
        role,
        subject: String::new(),
        sans: Vec::new(),
        days_left: None,
        problems: Vec::new(),
    };
    // Loading checks that the key belongs to the certificate.
    let material = match load_cert(source, dev, dev_role) {
        Ok(m) => m,
        Err(e) => {
            checked.problems.push(e.to_string());
            return checked;
        }
    };
    let Some((leaf, intermediates)) = material.chain.split_first() else {
        checked.problems.push("no certificate".into());
        return checked;
    };
    let now_unix = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    match summarize(leaf) {
        Ok(s) => {
            checked.days_left = Some((s.not_after - now_unix).div_euclid(86_400));
            checked.subject = s.subject;
            checked.sans = s.sans;
            if s.not_after <= now_unix {
                checked.problems.push(format!(
                    "expired {} days ago",
                    (now_unix - s.not_after).div_euclid(86_400)
                ));
            } else if s.not_before > now_unix {
                checked.problems.push("not valid yet".into());
            }
        }
        Err(e) => checked.problems.push(e.to_string()),
    }
    // The names the topology needs, among the subjectAltNames (a wildcard counts as a
    // verifier would count it).
    for name in names {
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if !checked.sans.iter().any(|s| covers(s, bare)) {
            checked
                .problems
                .push(format!("{bare} is not among the subjectAltNames"));
        }
    }
    // The chain, as the peers will verify it (expiry is reported above, once).
    let roots = match roots {
        Ok(r) => r,
        Err(e) => {
            checked.problems.push(format!("trust roots: {e}"));
            return checked;
        }
    };
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        crate::tls::config::provider(),
    )
    .build();
    let Ok(verifier) = verifier else {
        checked.problems.push("trust roots: unusable".into());
        return checked;
    };
    let Some(name) = checked
        .sans
        .first()
        .and_then(|n| ServerName::try_from(n.clone()).ok())
    else {
        checked.problems.push("no subjectAltName to verify".into());
        return checked;
    };
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now_unix).unwrap_or(0),
    ));
    if let Err(e) = verifier.verify_server_cert(leaf, intermediates, &name, &[], at) {
        use rustls::{CertificateError, Error};
        match e {
            Error::InvalidCertificate(CertificateError::Expired)
            | Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
            | Error::InvalidCertificate(CertificateError::NotValidYet)
            | Error::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => {}
            Error::InvalidCertificate(CertificateError::UnknownIssuer) => checked
                .problems
                .push("does not chain to the trust roots (unknown issuer)".into()),
            // A CA of the same name that did not sign it.
            Error::InvalidCertificate(CertificateError::BadSignature) => checked
                .problems
                .push("does not chain to the trust roots (bad signature)".into()),
            other => checked.problems.push(format!("chain: {other}")),
        }
    }
    checked
}

/// Whether subjectAltName `san` covers `name` (exact, or a one-label wildcard).
fn covers(san: &str, name: &str) -> bool {
    if san.eq_ignore_ascii_case(name) {
        return true;
    }
    match (san.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((label, rest))) => {
            !label.is_empty() && rest.eq_ignore_ascii_case(suffix)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DER of a PEM certificate request.
    fn csr_der(pem: &str) -> Vec<u8> {
        rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|d: rustls_pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
            .unwrap()
    }

    #[test]
    fn a_request_parses_back_with_its_names() {
        use x509_parser::prelude::FromDer;
        let sans = vec![
            "sip.corp.example".to_string(),
            "av.corp.example".to_string(),
        ];
        let (key, csr) = request(&sans, KeyKind::EcdsaP256).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        let der = csr_der(&csr);
        let (_, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        let names: Vec<String> = parsed
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => Some(
                    san.general_names
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(
            names,
            ["DNSName(sip.corp.example)", "DNSName(av.corp.example)"]
        );
        assert!(parsed
            .certification_request_info
            .subject
            .to_string()
            .contains("sip.corp.example"));
    }

    #[test]
    fn an_rsa_request_carries_an_rsa_2048_key() {
        use x509_parser::prelude::FromDer;
        let (key, csr) = request(&["sip.corp.example".to_string()], KeyKind::Rsa2048).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        let der = csr_der(&csr);
        let (_, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        let spki = &parsed.certification_request_info.subject_pki;
        assert_eq!(
            spki.algorithm.algorithm.to_id_string(),
            "1.2.840.113549.1.1.1"
        );
        match spki.parsed().unwrap() {
            x509_parser::public_key::PublicKey::RSA(rsa) => assert_eq!(rsa.key_size(), 2048),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(covers("sip.corp.example", "SIP.corp.example"));
        assert!(covers("*.corp.example", "sip.corp.example"));
        assert!(!covers("*.corp.example", "a.sip.corp.example"));
        assert!(!covers("*.corp.example", "corp.example"));
        assert!(!covers("sip.corp.example", "corp.example"));
    }

    use crate::tls::dev::{generate_at, DevNames};
    use std::time::Duration;

    fn topology() -> Topology {
        crate::topology::parse(
            crate::topology::EMBEDDED_DEFAULT,
            None,
            &crate::topology::StateEnv::default().with("SIPEDGE_STATE_DIR", "/nonexistent"),
        )
        .unwrap()
    }

    fn pki(dir: &Path, external: &[&str], at: SystemTime) -> DevPki {
        let names = DevNames {
            external: external.iter().map(|n| n.to_string()).collect(),
            internal: vec!["127.0.0.2".into()],
            director: vec!["director.sipedge.test".into()],
        };
        generate_at(dir, &names, at).unwrap()
    }

    fn now() -> SystemTime {
        crate::shell::clock::wall()
    }

    #[test]
    fn a_good_topology_is_all_green() {
        let dir = tempfile::tempdir().unwrap();
        let p = pki(dir.path(), &["edge.sipedge.test", "127.0.0.1"], now());
        let checked = check_topology(&topology(), Some(&p), now());
        assert_eq!(checked.len(), 2);
        for c in &checked {
            assert!(c.ok(), "{c:?}");
            assert!(c.days_left.unwrap() > 300);
            assert!(!c.expiring());
        }
        assert!(checked[0].sans.contains(&"edge.sipedge.test".to_string()));
    }

    #[test]
    fn expired_wrong_san_and_wrong_chain_are_red() {
        // Made two years ago: the leaf certificates (one year) have expired.
        let dir = tempfile::tempdir().unwrap();
        let old = now() - Duration::from_secs(2 * 365 * 86_400);
        let p = pki(dir.path(), &["edge.sipedge.test", "127.0.0.1"], old);
        let checked = check_topology(&topology(), Some(&p), now());
        assert!(
            checked[0]
                .problems
                .iter()
                .any(|m| m.starts_with("expired ")),
            "{checked:?}"
        );
        assert!(checked[0].days_left.unwrap() < 0);

        // A certificate for other names.
        let dir = tempfile::tempdir().unwrap();
        let p = pki(dir.path(), &["other.example"], now());
        let checked = check_topology(&topology(), Some(&p), now());
        // The pool's name and the name written in the Record-Route (the loopback
        // default writes its address).
        assert_eq!(
            checked[0].problems,
            [
                "edge.sipedge.test is not among the subjectAltNames",
                "127.0.0.1 is not among the subjectAltNames"
            ],
            "{checked:?}"
        );
        assert!(checked[1].ok());

        // An internal certificate from another CA than internal.ca names.
        let dir = tempfile::tempdir().unwrap();
        let p = pki(dir.path(), &["edge.sipedge.test", "127.0.0.1"], now());
        let other = tempfile::tempdir().unwrap();
        let q = pki(other.path(), &["edge.sipedge.test", "127.0.0.1"], now());
        let mut t = topology();
        t.internal.cert = q.source(DevRole::Internal);
        let checked = check_topology(&t, Some(&p), now());
        assert!(checked[0].ok(), "{checked:?}");
        assert_eq!(checked[1].problems.len(), 1, "{checked:?}");
        assert!(
            checked[1].problems[0].starts_with("does not chain to the trust roots"),
            "{checked:?}"
        );

        // A key that does not belong to the certificate.
        let mut t = topology();
        let (cert, _) = p.files(DevRole::Internal);
        let (_, key) = q.files(DevRole::Internal);
        t.internal.cert = CertSource::Pem {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        };
        let checked = check_topology(&t, Some(&p), now());
        assert!(
            checked[1].problems[0].contains("does not match"),
            "{checked:?}"
        );
    }
}
