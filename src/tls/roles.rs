//! The dev PKI's vocabulary: which dev certificate ([`DevRole`]) and where the dev PKI keeps
//! each one's files ([`DevPki`]). Loading (`load`), errors (`error`) and generation (`dev`)
//! all speak it, so it depends on none of them; it does no I/O.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::topology::{CaSource, CertSource};

/// Where the dev PKI's files are: PEM, `(certificate, key)` for each leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevPki {
    pub dir: PathBuf,
    /// The dev CA's certificate: the trust anchor for all of the leaves below.
    pub ca_cert: PathBuf,
    pub external: (PathBuf, PathBuf),
    pub internal: (PathBuf, PathBuf),
    pub director: (PathBuf, PathBuf),
    /// A test client certificate (its one name is `CLIENT_NAME`, in `dev`) for internal test peers.
    pub client: (PathBuf, PathBuf),
}

/// Which dev certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DevRole {
    External,
    Internal,
    Director,
    Client,
}

impl DevPki {
    /// The file layout of a dev PKI in `dir` (whether or not the files exist).
    pub fn at(dir: &Path) -> Self {
        let pair = |role: DevRole| {
            (
                dir.join(format!("{role}.pem")),
                dir.join(format!("{role}.key")),
            )
        };
        Self {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.pem"),
            external: pair(DevRole::External),
            internal: pair(DevRole::Internal),
            director: pair(DevRole::Director),
            client: pair(DevRole::Client),
        }
    }

    /// The `(certificate, key)` files of `role`.
    pub fn files(&self, role: DevRole) -> (&Path, &Path) {
        let (cert, key) = match role {
            DevRole::External => &self.external,
            DevRole::Internal => &self.internal,
            DevRole::Director => &self.director,
            DevRole::Client => &self.client,
        };
        (cert, key)
    }

    /// `role`'s files as a topology certificate source (what tests hand to `load_cert`).
    pub fn source(&self, role: DevRole) -> CertSource {
        let (cert, key) = self.files(role);
        CertSource::Pem {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }
    }

    /// The dev CA as a topology trust-anchor source.
    pub fn ca_source(&self) -> CaSource {
        CaSource::Pem(self.ca_cert.clone())
    }
}

impl DevRole {
    pub const ALL: [DevRole; 4] = [
        DevRole::External,
        DevRole::Internal,
        DevRole::Director,
        DevRole::Client,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DevRole::External => "external",
            DevRole::Internal => "internal",
            DevRole::Director => "director",
            DevRole::Client => "client",
        }
    }
}

impl fmt::Display for DevRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
