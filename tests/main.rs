//! The integration tests: one binary (ripgrep style), one module per area.

// Tests may unwrap, index and read the clock: a panic here is a failed test, not a crash.
#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

/// Shared fixtures: PKI, topologies, a TLS client, a mutual-TLS Director stub.
mod support;

/// The Access Edge end to end over loopback sockets.
mod access_edge;

/// The SIP trust boundary as an outsider tries it: tokens, steering, forged responses,
/// admission, the call table, trust headers, timeouts, RFC 4475.
mod trust_boundary;

/// Real peers: SIPp through stunnel on both sides of the edge.
mod interop;

/// The real binary: check, run, exit codes.
mod cli;

/// The application firewall under floods, slowloris, deaf clients and handshake floods.
mod firewall;

/// Health and metrics for operators and load balancers.
mod operations;

/// Real TURN peer: coturn accepts sipedge's credentials.
mod coturn;

/// The A/V authentication service (relay credentials over SIP SERVICE).
mod avauth;

/// The A/V Edge's bounds as an outsider tries them (reservations, quotas, TURN over TCP,
/// the stranger budget, peer spellings, table caps).
mod av_bounds;

/// The TURN relay against coturn's client.
mod turn;

/// End-to-end SRTP through the relay (webrtc-srtp in tests only).
mod srtp;

/// Federation: two organisations' edges over mutual TLS.
mod federation;

/// A pool of edges sharing bans on a real redis-server; Redis away and back.
mod pool;

/// The DMZ deployment in network namespaces (root only).
mod netns;

/// The outsider property test: generated message sequences against real sessions.
mod outsider;

/// The kernel fast path (eBPF) in network namespaces: relays, and enforces the policy.
mod kernel_offload;

/// SIP capture in HEP v3, read by real decoders (sngrep, tshark).
mod capture;

/// Two baresip softphones call each other through `sipedge run` and its lab Director.
mod softphones;
