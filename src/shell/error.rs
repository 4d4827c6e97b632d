//! Why an edge could not start.

use std::net::SocketAddr;

use super::keyfile;
use crate::tls::TlsError;

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("certificates: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("next_hop.server_name {0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("DNS resolver for federation: {0}")]
    Dns(String),
    #[error("no secure random numbers: {0}")]
    Random(String),
    #[error("key ring: {0}")]
    Keys(#[from] keyfile::KeyFileError),
}
