//! What a session asks of the edge around it ([`Edge`]): the firewall's and the partners'
//! verdicts, the pool's and the call table's state, and where messages go. Every call
//! returns at once; nothing here waits for the network.

use super::*;

/// Where a request for a partner goes (as the shell's partner table knows it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PartnerTarget {
    Listed(PartnerId),
    Discovered(DiscoveredTarget),
}

/// A request on its way to a partner's edge: where, the bytes to write, and how to answer
/// it (503) if no connection to the partner can be made.
#[derive(Clone, Debug)]
pub struct PartnerRequest {
    pub target: PartnerTarget,
    pub bytes: Bytes,
    pub answerable: Answerable,
}

/// Why the pool did not take a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolRefused;

/// Why a flow did not take a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowRefused {
    /// No such flow: the connection is gone (430 Flow Failed for requests).
    Gone,
    /// Its queue is full: its peer does not read.
    Full,
    /// The flow is in the sender's own zone: no legitimate route does that.
    SameZone,
}

/// Which way a captured message crossed its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Read from the peer (whatever the edge then did with it).
    Received,
    /// Written to the peer.
    Sent,
}

/// What a session asks of the edge around it. Every call returns at once: nothing here
/// waits for the network.
pub trait Edge {
    fn proxy(&self) -> &Proxy;
    /// The limits in force.
    fn limits(&self) -> &SessionLimits;

    // --- the firewall (external sources) ---
    /// One message from `ip`: the source's rate, or its ban.
    fn source_request(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal>;
    /// An offence by `ip`.
    fn strike(&mut self, ip: IpAddr, now: Instant) -> Strike;
    fn is_banned(&mut self, ip: IpAddr, now: Instant) -> bool;
    /// Exempt from per-source limits (`firewall.allow_sources`).
    fn is_allowed(&self, ip: IpAddr) -> bool;

    // --- partners ---
    /// A message from listed partner `p`: its rate; `None` when `p` is no partner any more.
    fn partner_admit(&mut self, p: PartnerId, now: Instant) -> Option<Result<(), Duration>>;
    /// A message from a discovered partner's `domain`: the discovery rate.
    fn discovered_admit(&mut self, domain: &[u8], now: Instant) -> Result<(), Duration>;
    /// The dialog limit of a partner: its key and how many dialogs it may hold.
    fn partner_dialog_limit(&self, target: &PartnerTarget) -> Option<(u64, usize)>;

    // --- the pool and the edge's state ---
    fn outstanding(&self) -> usize;
    fn pool_any_up(&self) -> bool;
    /// Retry-After of the pool's 503s.
    fn retry_after_secs(&self) -> u32;
    fn is_draining(&self) -> bool;

    // --- calls ---
    /// The key of a call leg: its Call-ID, initiator tag, and the side its INVITE entered
    /// the edge on (`CallHasher::key`).
    fn call_key(&self, call_id: &[u8], initiator_tag: &[u8], entered: Side) -> CallKey;
    fn call_begin(&mut self, key: CallKey, charge: Charge, now: Instant) -> Result<bool, AtLimit>;
    fn call_abort(&mut self, key: CallKey);
    fn call_answered(&mut self, key: CallKey, status: u16, now: Instant);
    fn call_ended(&mut self, key: CallKey);

    // --- sending (queues; never waits) ---
    fn to_pool(&mut self, request: PoolRequest) -> Result<(), PoolRefused>;
    fn to_flow(&mut self, flow: FlowId, from: Side, bytes: Bytes) -> Result<(), FlowRefused>;
    /// To a partner's edge (waiting, bounded, while a connection opens).
    fn to_partner(&mut self, request: PartnerRequest) -> Result<(), Why>;
    /// The A/V authentication service's answer to a credentials request from the inside.
    fn credentials(&mut self, flow: &Flow, msg: &Message) -> Option<Vec<u8>>;

    // --- what only a connection to a pool member reports ---
    /// A probe, its answer, or the member going up or down.
    fn member_event(&mut self, _link: &PoolLink, _event: MemberEvent, _now: Instant) {}

    // --- counters and logs ---
    /// A message (or the stream) was refused; `answer` is what the session wrote back, if
    /// an answer could be formed.
    fn rejected(
        &mut self,
        flow: &Flow,
        why: Why,
        msg: Option<&Message>,
        answer: Option<&[u8]>,
        now: Instant,
    );
    /// A CRLF CRLF keep-alive was answered (RFC 5626 §3.5.1).
    fn keepalive(&mut self, _flow: &Flow) {}
    fn forwarded(&mut self, flow: &Flow, msg: &Message);
    fn refused(&mut self, refusal: Refusal);
    /// The connection closes because its source is banned.
    fn banned_close(&mut self, flow: &Flow, now: Instant);
    /// A response nobody could take (its flow gone or full).
    fn dropped_response(&mut self, flow: &Flow, target: FlowId);
    /// A whole SIP message crossed `flow`'s connection, either way: every one the session
    /// framed (before any check: what was refused is captured too) and every one it wrote,
    /// once each, in order (keep-alives are not messages). For SIP capture; the edge
    /// decides whether and where to copy it, and must not wait to.
    fn capture(&mut self, flow: &Flow, direction: Direction, message: &[u8]);
}
