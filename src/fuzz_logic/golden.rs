//! The golden-file pipeline: exactly what a connection of the edge does with the bytes it
//! reads — a real [`Session`] (framing, validation, admission, the proxy decision) around
//! a [`SimEdge`] — on the default limits, with the loopback topology's names
//! (`edge.sipedge.test`, internal `127.0.0.2:5061`, domain `sipedge.test`). Flows 1..=5 are
//! remote users' connections (external), 6..=9 connections of the pool and internal
//! servers; a message arrives on flow 1 from outside, on flow 6 from inside.

use super::sim::{SimEdge, SimEvent};
use crate::core::firewall::Rate;
use crate::core::sip::calls::CallLimits;
use crate::core::sip::frame::FrameLimits;
use crate::core::sip::parse::HeadLimits;
use crate::core::sip::proxy::{Flow, Proxy, ProxyConfig, Side, SideAddr};
use crate::core::sip::session::{CloseReason, PartnerTarget, Session};
use crate::core::sip::token::{DialogBinding, FlowId, FlowKeys, TokenKind};
use crate::topology::defaults;

pub use super::sim::GOLDEN_NOW;

/// What happened to one input, in the words of a `.expected` file.
#[derive(Debug, Default)]
pub struct Outcome {
    /// One line per event: `forward`, `to-flow N`, `pong`, `NNN Reason`, `drop`,
    /// and a final `close` when the edge would close the connection.
    pub events: Vec<String>,
    /// Bytes forwarded to the pool or a flow, in order.
    pub forwarded: Vec<Vec<u8>>,
    /// Bytes answered on the arriving connection.
    pub answered: Vec<Vec<u8>>,
}

pub fn limits() -> FrameLimits {
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    FrameLimits {
        head: HeadLimits {
            max_headers: size(defaults::MAX_HEADERS),
            max_line_bytes: size(defaults::MAX_LINE_BYTES),
        },
        max_header_bytes: size(defaults::MAX_HEADER_BYTES),
        max_body_bytes: size(defaults::MAX_BODY_BYTES),
    }
}

pub fn proxy() -> Proxy {
    Proxy::new(
        ProxyConfig {
            external: SideAddr {
                host: "edge.sipedge.test".into(),
                port: 5061,
            },
            internal: SideAddr {
                host: "127.0.0.2".into(),
                port: 5061,
            },
            own_hosts: vec!["edge.sipedge.test".into(), "127.0.0.2".into()],
            external_hosts: vec!["edge.sipedge.test".into()],
            served_domains: vec!["sipedge.test".into()],
            federation: Default::default(),
            strip_headers: vec!["x-internal-auth".into()],
            next_hops: vec![std::net::SocketAddr::from(([127, 0, 0, 1], 5070))],
        },
        keys(),
    )
}

fn keys() -> FlowKeys {
    FlowKeys::new(&[7; 32])
}

/// The Via token of flow `n` under [`proxy`]'s keys (for `<FTOK:n>` markers).
pub fn token(n: u64) -> String {
    keys().token(TokenKind::Via, FlowId(n)).as_str().to_string()
}

/// The Path token of flow `n` (for `<PTOK:n>` markers).
pub fn path_token(n: u64) -> String {
    keys()
        .token(TokenKind::Path, FlowId(n))
        .as_str()
        .to_string()
}

/// The Record-Route token of flow `n` for the dialog with this Call-ID and initiator tag,
/// initiated from outside (`o`) or from the inside (`i`) (for `<RTOK:o:n:call-id:tag>`).
pub fn dialog_token(initiated: char, n: u64, call_id: &str, tag: &str) -> Option<String> {
    let kind = match initiated {
        'o' => TokenKind::DialogFromOutside,
        'i' => TokenKind::DialogFromInside,
        _ => return None,
    };
    let binding = DialogBinding {
        call_id: call_id.as_bytes(),
        initiator_tag: tag.as_bytes(),
    };
    Some(
        keys()
            .dialog_token(kind, FlowId(n), binding)
            .as_str()
            .to_string(),
    )
}

/// The 16 hex digits of the edge's branch for a request that arrived on flow `from`, went
/// to flow `to` (0: the pool) and carried the RFC 3261 branch `sender` with this Call-ID
/// (for `<BRANCH:from:to:sender:call-id>`).
pub fn branch(from: u64, to: u64, sender: &str, call_id: &str) -> String {
    let tx = crate::core::sip::token::SenderTx::Branch {
        branch: sender.as_bytes(),
        call_id: call_id.as_bytes(),
    };
    format!("{:016x}", keys().branch(FlowId(from), FlowId(to), tx))
}

/// The zone of golden flow `n`.
pub fn zone(n: u64) -> Option<Side> {
    match n {
        1..=5 => Some(Side::External),
        6..=9 => Some(Side::Internal),
        _ => None,
    }
}

/// Runs `data`, arriving on flow 1 (from outside) or 6 (from inside), through the edge.
pub fn run(data: &[u8], side: Side) -> Outcome {
    let mut edge = SimEdge::new(
        proxy(),
        SimEdge::lenient_limits(limits()),
        SimEdge::no_bans(),
        CallLimits {
            max_calls: 10_000,
            max_duration: std::time::Duration::from_secs(3600),
        },
    );
    edge.limits.connection_requests = Rate {
        per_sec: 1_000_000,
        burst: 1_000_000,
    };
    for n in 1..=9 {
        if let Some(z) = zone(n) {
            edge.flows.insert(FlowId(n), z);
        }
    }
    let (arriving, remote) = match side {
        Side::External => (
            FlowId(1),
            std::net::SocketAddr::from(([203, 0, 113, 7], 40000)),
        ),
        Side::Internal => (
            FlowId(6),
            std::net::SocketAddr::from(([127, 0, 0, 1], 5070)),
        ),
    };
    let flow = Flow::new(&edge.proxy.keys(), arriving, side, remote);
    #[allow(clippy::disallowed_methods)] // golden runs start simulated time somewhere
    let now = std::time::Instant::now();
    let mut session = Session::new(flow, now);
    session.handle_input(now, data, &mut edge);
    let mut out = Outcome::default();
    for event in edge.take_events() {
        match event {
            SimEvent::ToPool { bytes, .. } => {
                out.events.push("forward".into());
                out.forwarded.push(bytes.to_vec());
            }
            SimEvent::ToFlow { flow, bytes, .. } => {
                out.events.push(format!("to-flow {}", flow.0));
                out.forwarded.push(bytes.to_vec());
            }
            SimEvent::ToPartner { target, bytes, .. } => {
                out.events.push(match target {
                    PartnerTarget::Listed(p) => format!("to-partner {}", p.0),
                    PartnerTarget::Discovered(t) => format!("to-discovered {t:?}"),
                });
                out.forwarded.push(bytes.to_vec());
            }
            SimEvent::Rejected { why, answer, .. } => match (why.status(), answer) {
                (Some((status, reason)), Some(bytes)) => {
                    out.events.push(format!("{status} {reason}"));
                    out.answered.push(bytes);
                }
                _ => out.events.push("drop".into()),
            },
            SimEvent::Credentials { answer } => match answer {
                Some(bytes) => {
                    let line = bytes.split(|&b| b == b'\r').next().unwrap_or_default();
                    let status =
                        String::from_utf8_lossy(line.get(8..).unwrap_or_default()).to_string();
                    out.events.push(format!("credentials {status}"));
                    out.answered.push(bytes);
                }
                None => out.events.push("drop".into()),
            },
            SimEvent::DroppedResponse { .. } => out.events.push("drop".into()),
            SimEvent::Keepalive => out.events.push("pong".into()),
        }
    }
    match session.closed() {
        Some(CloseReason::Framing(_)) => out.events.push("close".into()),
        _ if session.has_partial_input() => {
            // An incomplete message waits for more bytes (then header_timeout).
            out.events.push("incomplete".into());
        }
        _ => {}
    }
    out
}
