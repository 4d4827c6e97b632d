//! sipedge: a SIP edge for the DMZ. The Access Edge (a SIP application firewall and proxy
//! between remote users and the Director pool inside), federation with partner edges, and
//! the A/V Edge (a TURN relay and the service that hands out its credentials).
//!
//! Module map (what each owns, and what it must not touch):
//! - [`core`]: sans-IO protocol logic. Bytes and `Instant`s in, decisions and bytes out.
//!   No tokio, sockets, clock reads or file reads.
//!   - [`core::sip`]: SIP framing, strict validation, the proxy's decisions and spliced
//!     edits, flow tokens, sessions, the call table, federation and next-hop health;
//!   - [`core::turn`]: the TURN relay's state machine (RFC 8656) and STUN (RFC 8489);
//!   - [`core::firewall`]: per-source connection and request rates, connection counts,
//!     strikes and bans;
//!   - [`core::net`]: address prefixes and the per-source key (IPv4 address, IPv6 /64) the
//!     policies share;
//!   - [`core::keyring`]: the pool key ring every edge of a pool shares;
//!   - [`core::credentials`]: TURN REST credentials, minted and verified with the ring;
//!   - [`core::avauth`]: the A/V authentication service, answering relay-credential
//!     requests from the inside (MS-AVEDGEA), and [`core::mras`] its XML messages;
//!   - [`core::toml_depth`]: the nesting guard every TOML reader runs before parsing.
//! - [`topology`]: the deployment description. TOML as operators write it becomes a typed,
//!   cross-checked [`topology::Topology`]; every problem names file, line and key.
//! - [`tls`]: rustls configurations, mutual-TLS verifiers, certificate loading (PEM, PKCS#12),
//!   the dev PKI for the loopback default, and the `sipedge cert` tools.
//! - [`shell`]: tokio. The only code with sockets, tasks and clocks; it moves bytes between
//!   connections and the core: the SIP listeners and the Director pool, partner edges, the
//!   TURN relay and the operations listener.
//! - [`obs`]: logging set-up, log rate limiting, redaction, and the metric names and
//!   rendering of `/metrics` and `/status` (from a plain-data snapshot the shell fills).
//! - [`sync`]: the policy on poisoned locks, in one place.
//! - `fuzz_logic` (hidden): the logic behind the fuzz targets, which `tests/corpus.rs` and
//!   the property tests run too.

pub mod core;
#[doc(hidden)]
pub mod fuzz_logic;
pub mod obs;
pub mod shell;
pub mod sync;
pub mod tls;
pub mod topology;
