//! sipedge: a SIP edge for the DMZ.
//!
//! Module map (what each owns, and what it must not touch):
//! - [`core`]: sans-IO protocol logic. Bytes and `Instant`s in, decisions and bytes out.
//!   No tokio, sockets, clock reads or file reads.
//! - [`topology`]: the deployment description. TOML as operators write it (`raw`) becomes a
//!   typed, cross-checked [`topology::Topology`]; every problem names file, line and key.
//! - [`tls`]: rustls configurations, mutual-TLS verifiers, certificate loading (PEM, PKCS#12)
//!   and the dev PKI for the loopback default.
//! - [`shell`]: tokio. The only code with sockets, tasks and clocks; it moves bytes between
//!   connections and the core.
//! - [`obs`]: logging set-up, redaction, and the metric names and rendering of `/metrics` and
//!   `/status` (from a plain-data snapshot the shell fills).
//! - [`sync`]: the policy on poisoned locks, in one place.

pub mod core;
#[doc(hidden)]
pub mod fuzz_logic;
pub mod obs;
pub mod shell;
pub mod sync;
pub mod tls;
pub mod topology;
