//! `TlsError`: everything that can go wrong while loading certificates, building rustls
//! configurations or making the dev PKI. Each variant names the file involved (where there is
//! one) and what was wrong with it, so `sipedge check` and start-up can tell an operator exactly
//! which file to fix. Nothing in `tls` panics on bad files; it returns one of these.

use std::io;
use std::path::{Path, PathBuf};

use crate::tls::roles::DevRole;

/// A certificate, key, trust store, rustls configuration or dev PKI problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file could not be read (missing, permissions, ...).
    #[error("{}: cannot read: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The file is not well-formed PEM.
    #[error("{}: not valid PEM: {source}", .path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },

    /// The file holds no certificate (no `CERTIFICATE` section, or an empty PKCS#12 chain).
    #[error("{}: no certificate found", .path.display())]
    NoCertificate { path: PathBuf },

    /// A certificate could not be parsed as X.509. `path` is `None` for certificates that did
    /// not come from a file (a peer's, or one already in memory).
    #[error("{}: malformed certificate: {source}", origin(.path.as_deref()))]
    MalformedCertificate {
        path: Option<PathBuf>,
        #[source]
        source: x509_parser::error::X509Error,
    },

    /// rustls/webpki refused a certificate (as a trust anchor, or as the leaf of a chain).
    #[error("{}: certificate rejected: {source}", .path.display())]
    CertificateRejected {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },

    /// The file holds no private key (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY` or SEC1
    /// `EC PRIVATE KEY` in PEM; a key bag in PKCS#12).
    #[error(
        "{}: no private key found (expected PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY, \
         or a PKCS#12 key with its certificate)",
        .path.display()
    )]
    NoKey { path: PathBuf },

    /// The PEM private key is encrypted; the edge starts unattended and takes plain keys
    /// (protected by file permissions) or a PKCS#12 bundle with a password.
    #[error(
        "{}: the private key is encrypted; decrypt it (openssl pkey) or use a PKCS#12 bundle with a password",
        .path.display()
    )]
    EncryptedKey { path: PathBuf },

    /// The private key is of a type or curve the ring provider cannot sign with.
    #[error("{}: unsupported private key: {source}", .path.display())]
    UnsupportedKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },

    /// The private key is not the one the leaf certificate was issued for.
    #[error("{}: private key does not match the certificate in {}", .key.display(), .cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },

    /// The PKCS#12 password is wrong (the integrity check or decryption failed).
    #[error("{}: wrong PKCS#12 password (integrity check failed)", .path.display())]
    Pkcs12Password { path: PathBuf },

    /// The PKCS#12 bundle is malformed or uses an unsupported algorithm.
    #[error("{}: cannot read PKCS#12 bundle: {source}", .path.display())]
    Pkcs12 {
        path: PathBuf,
        #[source]
        source: p12_keystore::error::Error,
    },

    /// A trust store or client configuration without any trust anchor would reject everyone.
    #[error("no trust anchors: the CA set is empty")]
    NoTrustAnchors,

    /// rustls refused to build a configuration.
    #[error("rustls {what} configuration: {source}")]
    Config {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },

    /// The mutual-TLS client verifier could not be built.
    #[error("client certificate verifier: {source}")]
    ClientVerifier {
        #[source]
        source: rustls::server::VerifierBuilderError,
    },

    /// The topology asks for dev certificates but no dev PKI was set up (see `dev::ensure`).
    #[error("dev certificates requested but no dev PKI was set up")]
    DevPkiMissing,

    /// A dev certificate needs at least one subjectAltName.
    #[error("dev PKI: no names given for the {role} certificate")]
    DevNoNames { role: DevRole },

    /// A name asked for in a dev certificate is neither a DNS name nor an IP literal.
    #[error(
        "dev PKI: {name:?} (for the {role} certificate) is neither a DNS name nor an IP address"
    )]
    DevName { role: DevRole, name: String },

    /// The clock is outside the range X.509 validity dates can express.
    #[error("dev PKI: the system clock is outside the range certificates can express")]
    DevClock,

    /// rcgen failed to make a key or certificate.
    #[error("dev PKI: cannot generate the {what}: {source}")]
    DevGenerate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },

    /// A key could not be generated or encoded (RSA for `cert request --rsa`).
    #[error("cannot generate the {what}: {detail}")]
    KeyGeneration { what: &'static str, detail: String },

    /// A dev PKI file or directory could not be written.
    #[error("{}: cannot write: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How a certificate's origin reads in a message.
fn origin(path: Option<&Path>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => "certificate".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_send_sync_and_names_the_file() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<TlsError>();

        let e = TlsError::KeyMismatch {
            cert: PathBuf::from("/etc/sipedge/edge.pem"),
            key: PathBuf::from("/etc/sipedge/edge.key"),
        };
        let text = e.to_string();
        assert!(text.contains("/etc/sipedge/edge.pem"), "{text}");
        assert!(text.contains("/etc/sipedge/edge.key"), "{text}");
    }
}
