//! The A/V Edge's TURN relay (RFC 8656) and STUN (RFC 8489), sans-IO: packets, addresses
//! and `now` in; answers, relayed packets and relay sockets to open or close out. The shell
//! (`shell::turn`) owns the sockets, the lock around [`server::Server`] and the clock.
//!
//! - [`server`]: the TURN server's state machine: allocations, permissions, channels,
//!   EVEN-PORT reservations, quotas and the read-only hot path, all bounded;
//! - [`demux`]: what a datagram or stream frame is (RFC 7983);
//! - [`stun`]: the strict STUN message check that runs before any attribute is trusted;
//! - [`channel`]: ChannelData framing (the relay's hot path);
//! - [`encode`]: writing STUN messages, and the Binding responder;
//! - [`auth`]: long-term credential authentication with REST usernames from the pool ring;
//! - [`nonce`]: stateless nonces (unauthenticated requests create no state);
//! - [`strangers`]: the per-source budget of answer bytes for requests that did not
//!   authenticate;
//! - [`error`]: why a request is refused, mapped once to its code and reason;
//! - [`policy`]: which peers a relay may reach, from which zone;
//! - [`bandwidth`]: byte-rate budgets per allocation and per user;
//! - [`ports`]: the relayed port range as a bitmap.

pub mod auth;
pub mod bandwidth;
pub mod channel;
pub mod demux;
pub mod encode;
pub mod error;
pub mod nonce;
pub mod policy;
pub mod ports;
pub mod server;
pub mod strangers;
pub mod stun;
