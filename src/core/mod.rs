//! Sans-IO protocol cores. Bytes and `Instant`s in, decisions and bytes out: no tokio, no
//! sockets, no clock reads, no file reads.

pub mod avauth;
pub mod credentials;
pub mod firewall;
pub mod hep;
pub mod keyring;
pub mod lab;
pub mod mras;
pub mod net;
pub mod sip;
pub mod toml_depth;
pub mod turn;
