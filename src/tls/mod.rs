//! TLS: rustls configurations, mutual-TLS verifiers, peer identity, certificate loading
//! (PEM, PKCS#12), the dev PKI for the loopback default, and the operators' certificate
//! tools.
//!
//! The files depend on each other one way only, in this order (each uses only those above
//! it):
//! - [`roles`]: the dev PKI's vocabulary, [`DevRole`] and where its files are ([`DevPki`]);
//! - [`error`]: [`TlsError`], naming the file and what was wrong with it;
//! - [`load`]: files → DER certificate chains, keys (checked against their leaf) and trust
//!   stores; subjectAltName extraction;
//! - [`config`]: rustls `ServerConfig`/`ClientConfig` for the external listener, the internal
//!   (mutual-TLS) listener and the Director pool client; peer identity from a handshake; the
//!   crypto provider;
//! - [`dev`]: a throw-away CA and ECDSA P-256 certificates generated into the state directory
//!   (and re-checked with `load` and `config` before reuse);
//! - [`tools`]: `sipedge cert`: certificate signing requests and the check of a topology's
//!   certificates.
//!
//! The tests of `load` and `config` need certificates from `dev`, so they sit above it, in
//! `tests`.
//!
//! Everything here uses the ring provider explicitly and matches names on subjectAltName
//! only. Nothing here opens sockets or spawns tasks (that is `shell`), and nothing panics on
//! bad input files.

pub mod config;
pub mod dev;
pub mod error;
pub mod load;
pub mod roles;
pub mod tools;

pub use config::{
    client_config_trusting, client_config_with, external_server_config,
    external_server_config_with, internal_server_config, internal_server_config_with,
    peer_identity, pool_client_config, server_config_requiring_client, CertSlot, PeerIdentity,
};
pub use dev::DevNames;
pub use error::TlsError;
pub use load::{
    load_cert, load_roots, subject_alt_names, summarize, system_roots, CertSummary,
    CertifiedKeyMaterial, SanEntry,
};
pub use roles::{DevPki, DevRole};

#[cfg(test)]
mod tests;
