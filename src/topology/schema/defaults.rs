//! Defaults, named so README, examples and code agree.

use std::time::Duration;

/// Header block: generous enough for NTLM/Kerberos Authorization headers of remote
/// Lync/Skype clients, small enough that a flood of maximal heads stays cheap.
pub const MAX_HEADER_BYTES: u64 = 32 * 1024;
pub const MAX_BODY_BYTES: u64 = 64 * 1024;
pub const MAX_HEADERS: u64 = 128;
/// One header line: a Kerberos token in base64 reaches several KiB.
pub const MAX_LINE_BYTES: u64 = 8 * 1024;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time from the first byte of a message to the end of its header block (slowloris).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// RFC 5626 clients keep alive every ~2 minutes; Lync's edge uses 30 minutes.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1800);
/// A peer that stops reading holds at most its queue for this long.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SIGTERM waits for transactions and calls to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Per connection: a few hundred typical messages; a slow reader costs no more.
pub const MAX_QUEUED_BYTES: u64 = 256 * 1024;
pub const MAX_CONNECTIONS: u64 = 10_000;
pub const RETRY_AFTER: Duration = Duration::from_secs(30);
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
pub const PROBE_RISE: u64 = 2;
pub const PROBE_FALL: u64 = 3;
pub const EDGE_NAME: &str = "sipedge";
pub const MAX_HANDSHAKES: u64 = 256;
pub const MAX_OUTSTANDING: u64 = 10_000;
/// Calls crossing the edge at once (a Lync Edge is sized for ~12 000 remote users).
pub const MAX_CALLS: u64 = 50_000;
/// Calls one external source holds at once (a NAT'd office belongs in allow_sources).
pub const MAX_CALLS_PER_SOURCE: u64 = 200;
/// How long an answered call without BYE is counted.
pub const MAX_CALL_DURATION: Duration = Duration::from_secs(12 * 3600);
// Per source (IPv4 address or IPv6 /64). A Lync/Skype client signing in sends ~15
// requests at once (REGISTER, SUBSCRIBEs, SERVICEs); NAT'd offices belong on the allow-list.
pub const CONNECT_RATE: u64 = 10;
pub const CONNECT_BURST: u64 = 30;
pub const CONNECTIONS_PER_SOURCE: u64 = 100;
pub const REQUEST_RATE: u64 = 100;
pub const REQUEST_BURST: u64 = 200;
pub const CONNECTION_REQUEST_RATE: u64 = 20;
pub const CONNECTION_REQUEST_BURST: u64 = 60;
pub const BAN_AFTER: u64 = 100;
pub const STRIKE_WINDOW: Duration = Duration::from_secs(10);
pub const BAN_TIME: Duration = Duration::from_secs(300);
pub const MAX_SOURCES: u64 = 100_000;
