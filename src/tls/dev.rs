//! The dev PKI for the loopback default and for tests: a throw-away CA and ECDSA P-256 leaf
//! certificates for the edge's two sides, a Director stub and a test client, generated at run
//! time into the state directory (never into the repository).
//!
//! This module owns making, writing and re-checking those files. It does not load them for
//! use (that is `load`) and has nothing to do with production certificates.
//!
//! The CA's private key is never written to disk: once the leaves are signed the CA cannot
//! vouch for anything else, so a dev CA that leaks into a trust store is of little use to
//! anyone. Changing the names therefore means a whole new PKI, which is cheap.

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{DnsName, UnixTime};
use rustls::server::WebPkiClientVerifier;

use crate::tls::error::TlsError;
use crate::tls::load::{load_cert, load_roots, subject_alt_names, SanEntry};
pub use crate::tls::roles::{DevPki, DevRole};

/// The subjectAltNames of the dev certificates; each entry a DNS name or an IP literal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DevNames {
    /// The edge's external (Internet-facing) certificate.
    pub external: Vec<String>,
    /// The edge's internal certificate (server toward the pool, and its client certificate).
    pub internal: Vec<String>,
    /// A Director stub's certificate (tests and the loopback default's next hop).
    pub director: Vec<String>,
}

/// The test client certificate's only name (CN and SAN).
pub const CLIENT_NAME: &str = "client.sipedge.test";

/// The dev CA's subject: says what it is to anyone who finds it in a trust store.
pub const CA_COMMON_NAME: &str = "sipedge dev CA — NOT FOR PRODUCTION";

/// Leaves live a year: long enough not to bother a developer, short enough to be renewed.
const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// `ensure` renews a PKI that would expire within this, so a running edge never sees it expire.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Validity starts a little in the past to tolerate clock skew between processes.
const BACKDATE: Duration = Duration::from_secs(60 * 60);
/// 9999-12-31T23:59:59Z, the last instant an X.509 GeneralizedTime can hold.
const LAST_X509_SECOND: u64 = 253_402_300_799;

/// Reuses the dev PKI in `dir` if every file is there, parses, chains to the dev CA, stays
/// valid for a while yet and covers `names`; otherwise makes a new one. Returns the PKI and
/// whether it was (re)created.
pub fn ensure(dir: &Path, names: &DevNames) -> Result<(DevPki, bool), TlsError> {
    ensure_at(dir, names, wall_clock())
}

/// [`ensure`] with the current time passed in (tests, and callers with their own clock).
pub fn ensure_at(
    dir: &Path,
    names: &DevNames,
    now: SystemTime,
) -> Result<(DevPki, bool), TlsError> {
    check_names(names)?;
    let pki = DevPki::at(dir);
    match check_reusable(&pki, names, now) {
        Ok(()) => {
            tracing::debug!(dir = %dir.display(), "reusing dev PKI");
            Ok((pki, false))
        }
        Err(why) => {
            tracing::info!(dir = %dir.display(), reason = %why, "generating dev PKI");
            Ok((generate_at(dir, names, now)?, true))
        }
    }
}

/// Always makes a fresh dev PKI in `dir` (replacing any there), valid from now.
pub fn generate(dir: &Path, names: &DevNames) -> Result<DevPki, TlsError> {
    generate_at(dir, names, wall_clock())
}

/// [`generate`] with the current time passed in.
pub fn generate_at(dir: &Path, names: &DevNames, now: SystemTime) -> Result<DevPki, TlsError> {
    check_names(names)?;
    let pki = DevPki::at(dir);
    let files = make_pki(&pki, names, now)?;
    write_all_or_nothing(dir, &files)?;
    Ok(pki)
}

// === names ===

/// The SANs wanted for `role`.
fn wanted(names: &DevNames, role: DevRole) -> Vec<String> {
    match role {
        DevRole::External => names.external.clone(),
        DevRole::Internal => names.internal.clone(),
        DevRole::Director => names.director.clone(),
        DevRole::Client => vec![CLIENT_NAME.to_owned()],
    }
}

/// Every role has names, and every name is something a peer can verify against.
fn check_names(names: &DevNames) -> Result<(), TlsError> {
    for role in DevRole::ALL {
        let list = wanted(names, role);
        if list.is_empty() {
            return Err(TlsError::DevNoNames { role });
        }
        for name in list {
            if san_entry(&name).is_none() {
                return Err(TlsError::DevName { role, name });
            }
        }
    }
    Ok(())
}

/// A name as the SAN it becomes, DNS names lower-cased (they compare case-insensitively).
fn san_entry(name: &str) -> Option<SanEntry> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Some(SanEntry::Ip(ip));
    }
    DnsName::try_from(name)
        .ok()
        .map(|_| SanEntry::Dns(name.to_ascii_lowercase()))
}

// === reuse ===

/// Why an existing dev PKI is not reused (logged, never returned).
enum Unfit {
    Missing,
    Unreadable(TlsError),
    KeyReadable(PathBuf),
    Chain(DevRole, rustls::Error),
    ExpiresSoon(DevRole, rustls::Error),
    Names(DevRole),
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfit::Missing => f.write_str("no dev PKI yet"),
            Unfit::Unreadable(e) => write!(f, "existing files unusable: {e}"),
            Unfit::KeyReadable(p) => write!(f, "{} is readable by others", p.display()),
            Unfit::Chain(role, e) => write!(f, "{role} certificate does not verify: {e}"),
            Unfit::ExpiresSoon(role, e) => write!(f, "{role} certificate expires soon: {e}"),
            Unfit::Names(role) => write!(f, "{role} certificate lacks some of the wanted names"),
        }
    }
}

fn check_reusable(pki: &DevPki, names: &DevNames, now: SystemTime) -> Result<(), Unfit> {
    if !pki.ca_cert.exists() {
        return Err(Unfit::Missing);
    }
    let roots = load_roots(&pki.ca_source(), None).map_err(Unfit::Unreadable)?;
    // All dev leaves carry the clientAuth EKU, so webpki's client verifier checks chain,
    // signatures and validity for every one of them without needing a server name.
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        crate::tls::config::provider(),
    )
    .build()
    .map_err(|source| Unfit::Unreadable(TlsError::ClientVerifier { source }))?;
    let unix = |t: SystemTime| {
        UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
    };
    let soon = now.checked_add(RENEW_BEFORE).unwrap_or(now);

    for role in DevRole::ALL {
        let m = load_cert(&pki.source(role), None, role).map_err(Unfit::Unreadable)?;
        let key_path = pki.files(role).1;
        let mode = fs::metadata(key_path)
            .map_err(|source| {
                Unfit::Unreadable(TlsError::Read {
                    path: key_path.to_path_buf(),
                    source,
                })
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(Unfit::KeyReadable(key_path.to_path_buf()));
        }
        let (leaf, intermediates) = m.chain.split_first().ok_or(Unfit::Missing)?;
        verifier
            .verify_client_cert(leaf, intermediates, unix(now))
            .map_err(|e| Unfit::Chain(role, e))?;
        verifier
            .verify_client_cert(leaf, intermediates, unix(soon))
            .map_err(|e| Unfit::ExpiresSoon(role, e))?;
        let have: Vec<SanEntry> = subject_alt_names(leaf)
            .map_err(Unfit::Unreadable)?
            .into_iter()
            .map(|san| match san {
                SanEntry::Dns(d) => SanEntry::Dns(d.to_ascii_lowercase()),
                ip => ip,
            })
            .collect();
        let covered = wanted(names, role)
            .iter()
            .filter_map(|n| san_entry(n))
            .all(|want| have.contains(&want));
        if !covered {
            return Err(Unfit::Names(role));
        }
    }
    Ok(())
}

// === generation ===

/// One file of the PKI: where, what, and whether it is a secret (mode 0600).
struct PkiFile {
    path: PathBuf,
    contents: String,
    secret: bool,
}

fn make_pki(pki: &DevPki, names: &DevNames, now: SystemTime) -> Result<Vec<PkiFile>, TlsError> {
    let gen = |what| move |source| TlsError::DevGenerate { what, source };

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen("CA key"))?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "sipedge (dev)");
    // Path length 0: the CA signs leaves only.
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut ca_params, now, CA_LIFETIME)?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(gen("CA certificate"))?;

    let mut files = vec![PkiFile {
        path: pki.ca_cert.clone(),
        contents: ca.pem(),
        secret: false,
    }];
    for role in DevRole::ALL {
        let sans = wanted(names, role);
        let mut params = CertificateParams::new(sans.clone()).map_err(gen("leaf names"))?;
        // The CN is for humans reading the certificate; nothing matches on it.
        params.distinguished_name = DistinguishedName::new();
        if let Some(first) = sans.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Both: the internal certificate is also the edge's client certificate toward the
        // pool, the external one toward partners, and the Director stub dials the edge too.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, now, LEAF_LIFETIME)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen("leaf key"))?;
        let cert = params
            .signed_by(&key, &*ca)
            .map_err(gen("leaf certificate"))?;
        let (cert_path, key_path) = pki.files(role);
        files.push(PkiFile {
            path: cert_path.to_path_buf(),
            contents: cert.pem(),
            secret: false,
        });
        files.push(PkiFile {
            path: key_path.to_path_buf(),
            contents: key.serialize_pem(),
            secret: true,
        });
    }
    Ok(files)
}

/// Validity from `now - BACKDATE` to `now + lifetime`.
fn set_validity(
    params: &mut CertificateParams,
    now: SystemTime,
    lifetime: Duration,
) -> Result<(), TlsError> {
    let since_epoch = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TlsError::DevClock)?;
    let start = since_epoch
        .checked_sub(BACKDATE)
        .ok_or(TlsError::DevClock)?;
    let end = since_epoch
        .checked_add(lifetime)
        .filter(|end| end.as_secs() <= LAST_X509_SECOND)
        .ok_or(TlsError::DevClock)?;
    // rcgen's dates are `time::OffsetDateTime`; adding a std Duration to its epoch avoids a
    // direct dependency on `time`. The bound above keeps the sum within the type's range.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + start;
    params.not_after = epoch + end;
    Ok(())
}

/// Writes every file under a temporary name first, then renames them into place, so a crash
/// leaves either the old files or the new ones per file; a mix of generations fails the chain
/// check in [`ensure`] and is regenerated on the next start.
fn write_all_or_nothing(dir: &Path, files: &[PkiFile]) -> Result<(), TlsError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    // Only the directories we create get 0700; an existing state dir is the operator's.
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(write_err(dir))?;

    let mut staged: Vec<(PathBuf, &Path)> = Vec::with_capacity(files.len());
    let result = (|| {
        for file in files {
            let tmp = temp_name(&file.path);
            staged.push((tmp.clone(), &file.path));
            write_new(&tmp, file.contents.as_bytes(), file.secret).map_err(write_err(&tmp))?;
        }
        for (tmp, path) in &staged {
            fs::rename(tmp, path).map_err(write_err(path))?;
        }
        // Make the renames themselves durable.
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err(dir))
    })();
    if result.is_err() {
        for (tmp, _) in &staged {
            let _ = fs::remove_file(tmp);
        }
    }
    result
}

/// `.<name>.tmp-<pid>` beside the final file (same directory, so rename is atomic).
fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Creates `path` (replacing a stale temp file), with mode 0600 for secrets from the start so
/// a key is never readable by others, not even briefly.
fn write_new(path: &Path, contents: &[u8], secret: bool) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Certificate validity is wall-clock time by definition, and the dev PKI is made once at
/// start-up, outside any protocol core: the one clock read in `tls`.
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> SystemTime {
    SystemTime::now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::load::CertifiedKeyMaterial;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn names() -> DevNames {
        DevNames {
            external: vec!["sip.example.test".into(), "127.0.0.1".into()],
            internal: vec!["edge-int.example.test".into()],
            director: vec!["director.example.test".into(), "::1".into()],
        }
    }

    fn read_all(pki: &DevPki) -> Vec<String> {
        let mut out = vec![fs::read_to_string(&pki.ca_cert).unwrap()];
        for role in DevRole::ALL {
            let (c, k) = pki.files(role);
            out.push(fs::read_to_string(c).unwrap());
            out.push(fs::read_to_string(k).unwrap());
        }
        out
    }

    fn leaf(pki: &DevPki, role: DevRole) -> CertifiedKeyMaterial {
        load_cert(&pki.source(role), None, role).unwrap()
    }

    #[test]
    fn ensure_creates_then_reuses() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/dev-pki");
        let (pki, created) = ensure(&dir, &names()).unwrap();
        assert!(created);
        let first = read_all(&pki);

        let (again, created) = ensure(&dir, &names()).unwrap();
        assert!(!created);
        assert_eq!(again, pki);
        assert_eq!(read_all(&again), first);

        // Permissions: keys 0600, the created directory 0700, no temp files left behind.
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for role in DevRole::ALL {
            let key = pki.files(role).1;
            assert_eq!(
                fs::metadata(key).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // The CA says what it is, and its key is not on disk.
        let ca = fs::read(&pki.ca_cert).unwrap();
        let ca = CertificateDer::from_pem_slice(&ca).unwrap();
        let parsed = crate::tls::load::parse_x509(&ca).unwrap();
        assert!(parsed.subject().to_string().contains("NOT FOR PRODUCTION"));
        assert!(!dir.join("ca.key").exists());

        // The client certificate carries its fixed name.
        let client = leaf(&pki, DevRole::Client);
        assert_eq!(
            subject_alt_names(client.leaf().unwrap()).unwrap(),
            vec![SanEntry::Dns(CLIENT_NAME.into())]
        );
    }

    #[test]
    fn ensure_regenerates_when_names_change() {
        let tmp = tempfile::tempdir().unwrap();
        let (pki, _) = ensure(tmp.path(), &names()).unwrap();
        let before = read_all(&pki);

        // Same names, different case: still covered.
        let mut upper = names();
        upper.external[0] = "SIP.Example.TEST".into();
        assert!(!ensure(tmp.path(), &upper).unwrap().1);

        let mut more = names();
        more.external.push("sip2.example.test".into());
        let (pki, created) = ensure(tmp.path(), &more).unwrap();
        assert!(created);
        assert_ne!(read_all(&pki), before);
        let sans = subject_alt_names(leaf(&pki, DevRole::External).leaf().unwrap()).unwrap();
        assert!(sans.contains(&SanEntry::Dns("sip2.example.test".into())));

        // A subset of what the certificate covers needs nothing new.
        assert!(!ensure(tmp.path(), &names()).unwrap().1);
    }

    #[test]
    fn ensure_regenerates_expiring_broken_mixed_or_exposed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let now = wall_clock();
        let (pki, _) = ensure_at(dir, &names(), now).unwrap();

        // Expiring within the renewal window (a year minus 20 days later).
        assert!(!ensure_at(dir, &names(), now + 300 * DAY).unwrap().1);
        assert!(ensure_at(dir, &names(), now + 345 * DAY).unwrap().1);

        // A truncated certificate.
        fs::write(&pki.internal.0, "-----BEGIN CERTIFICATE-----\n").unwrap();
        assert!(ensure(dir, &names()).unwrap().1);

        // A leaf (with its key) from another PKI: parses and matches, but does not chain.
        let other = tempfile::tempdir().unwrap();
        let other_pki = generate(other.path(), &names()).unwrap();
        fs::copy(&other_pki.director.0, &pki.director.0).unwrap();
        fs::copy(&other_pki.director.1, &pki.director.1).unwrap();
        assert!(ensure(dir, &names()).unwrap().1);

        // A key someone made group-readable.
        fs::set_permissions(&pki.client.1, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(ensure(dir, &names()).unwrap().1);
        assert_eq!(
            fs::metadata(&pki.client.1).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!ensure(dir, &names()).unwrap().1);
    }

    #[test]
    fn bad_names_are_errors_not_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let mut n = names();
        n.director.clear();
        assert!(matches!(
            generate(tmp.path(), &n),
            Err(TlsError::DevNoNames {
                role: DevRole::Director
            })
        ));
        let mut n = names();
        n.internal.push("not a name".into());
        assert!(matches!(
            ensure(tmp.path(), &n),
            Err(TlsError::DevName { role: DevRole::Internal, name }) if name == "not a name"
        ));
        assert!(!tmp.path().join("ca.pem").exists());
        assert!(matches!(
            generate_at(tmp.path(), &names(), UNIX_EPOCH),
            Err(TlsError::DevClock)
        ));
    }
}
