//! TURN/STUN (RFC 8656, RFC 8489) sans-IO pieces of the A/V Edge:
//! - [`demux`]: what a datagram or stream frame is (RFC 7983);
//! - [`channel`]: ChannelData framing (the relay's hot path);
//! - [`nonce`]: stateless nonces (unauthenticated requests create no state);
//! - [`stun`]: the strict STUN message check that runs before any attribute is trusted;
//! - [`auth`]: long-term credential authentication with REST usernames;
//! - [`encode`]: writing STUN messages, and the Binding responder;
//! - [`error`]: why a request is refused, mapped once to its code and reason;
//! - [`policy`]: which peers a relay may reach;
//! - [`bandwidth`]: byte-rate budgets per allocation and per user.
//!
//! The allocation state machine and the relay shell build on these (issue 5).

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
