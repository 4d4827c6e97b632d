//! A simulated edge around real sessions: what the golden files, the outsider property
//! test and the session fuzz target drive, with no sockets, tasks or clock.
//!
//! [`SimEdge`] implements the session's [`Edge`] with the core's own parts (the proxy, the
//! firewall's [`SourceGuard`], the call table) and records what a shell would have done:
//! messages handed to the pool or to a flow, refusals and their answers, credentials. The
//! connections named by flow ids are a table of zones, like the shell's flow table.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::core::firewall::{Rate, Refusal, SourceGuard, SourcePolicy, Strike};
use crate::core::sip::calls::{AtLimit, CallKey, CallLimits, Calls, Charge};
use crate::core::sip::federation::{discovered_key, PartnerId};
use crate::core::sip::frame::FrameLimits;
use crate::core::sip::message::{Message, Method};
use crate::core::sip::pool_link::{Answerable, PoolRequest};
use crate::core::sip::proxy::{DiscoveredTarget, Flow, Proxy, Side, TxKey};
use crate::core::sip::reject::Why;
use crate::core::sip::session::{
    Direction, Edge, FlowRefused, PartnerRequest, PartnerTarget, PoolRefused, SessionLimits,
};
use crate::core::sip::token::FlowId;

/// One thing the simulated edge did, in order.
#[derive(Clone, Debug)]
pub enum SimEvent {
    /// Handed to the Director pool.
    ToPool {
        from: FlowId,
        bytes: Bytes,
        tx: Option<(TxKey, Method)>,
        /// How the edge answers it should the member fail it.
        answerable: Answerable,
    },
    /// Handed to a flow (a response back, a request from the inside).
    ToFlow {
        from: FlowId,
        flow: FlowId,
        bytes: Bytes,
    },
    ToPartner {
        from: FlowId,
        target: PartnerTarget,
        bytes: Bytes,
        answerable: Answerable,
    },
    /// Refused; `answer` is what went back on the arriving connection.
    Rejected {
        flow: FlowId,
        why: Why,
        answer: Option<Vec<u8>>,
    },
    /// A credentials request answered by the A/V authentication service.
    Credentials {
        answer: Option<Vec<u8>>,
    },
    /// A response whose flow could not take it.
    DroppedResponse {
        target: FlowId,
    },
    Keepalive,
}

/// The ring and relay the simulated A/V authentication service issues from.
pub const GOLDEN_NOW: u64 = 1_800_000_000;

/// A simulated edge.
pub struct SimEdge {
    pub proxy: Proxy,
    pub limits: SessionLimits,
    pub guard: SourceGuard,
    pub calls: Calls,
    pub draining: bool,
    /// Whether the pool takes requests.
    pub pool_up: bool,
    /// Transactions in flight toward the pool (the harness sets it).
    pub outstanding: usize,
    /// The connections that exist, by zone.
    pub flows: BTreeMap<FlowId, Side>,
    /// Dialogs each partner (or discovered domain) may hold.
    pub partner_dialogs: usize,
    pub events: Vec<SimEvent>,
    /// Every message the sessions framed or wrote, as SIP capture would copy it (when
    /// `capturing`: the fuzz target does not keep them).
    pub captured: Vec<(FlowId, Direction, Bytes)>,
    pub capturing: bool,
    /// Rejects by reason label.
    pub rejects: BTreeMap<&'static str, u64>,
}

impl SimEdge {
    pub fn new(
        proxy: Proxy,
        limits: SessionLimits,
        policy: SourcePolicy,
        calls: CallLimits,
    ) -> SimEdge {
        SimEdge {
            proxy,
            limits,
            guard: SourceGuard::new(policy),
            calls: Calls::new(calls, (11, 12)),
            draining: false,
            pool_up: true,
            outstanding: 0,
            flows: BTreeMap::new(),
            partner_dialogs: 100,
            events: Vec::new(),
            captured: Vec::new(),
            capturing: false,
            rejects: BTreeMap::new(),
        }
    }

    /// Limits generous enough that only what a test sets bites.
    pub fn lenient_limits(frame: FrameLimits) -> SessionLimits {
        SessionLimits {
            frame,
            idle_timeout: Duration::from_secs(1800),
            header_timeout: Duration::from_secs(10),
            connection_requests: Rate {
                per_sec: 1_000_000,
                burst: 1_000_000,
            },
            max_outstanding: 10_000,
            max_calls_per_source: 10_000,
        }
    }

    /// A firewall policy without bans.
    pub fn no_bans() -> SourcePolicy {
        SourcePolicy {
            connect_rate: Rate {
                per_sec: 1_000_000,
                burst: 1_000_000,
            },
            max_connections: 1_000_000,
            request_rate: Rate {
                per_sec: 1_000_000,
                burst: 1_000_000,
            },
            ban_after: 0,
            strike_window: Duration::from_secs(10),
            ban_time: Duration::from_secs(300),
            allow: Vec::new(),
            max_sources: 100_000,
        }
    }

    pub fn take_events(&mut self) -> Vec<SimEvent> {
        std::mem::take(&mut self.events)
    }
}

impl Edge for SimEdge {
    fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    fn source_request(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        self.guard.request(ip, now)
    }

    fn strike(&mut self, ip: IpAddr, now: Instant) -> Strike {
        self.guard.strike(ip, now)
    }

    fn is_banned(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.guard.banned(ip, now).is_some()
    }

    fn is_allowed(&self, ip: IpAddr) -> bool {
        self.guard.allowed(ip)
    }

    fn partner_admit(&mut self, p: PartnerId, _now: Instant) -> Option<Result<(), Duration>> {
        self.proxy.federation().get(p).map(|_| Ok(()))
    }

    fn discovered_admit(&mut self, _domain: &[u8], _now: Instant) -> Result<(), Duration> {
        Ok(())
    }

    fn partner_dialog_limit(&self, target: &PartnerTarget) -> Option<(u64, usize)> {
        let key = match target {
            PartnerTarget::Listed(p) => p.0,
            PartnerTarget::Discovered(DiscoveredTarget::Domain(d))
            | PartnerTarget::Discovered(DiscoveredTarget::Edge { domain: d, .. }) => {
                discovered_key(d.as_bytes())
            }
        };
        Some((key, self.partner_dialogs))
    }

    fn outstanding(&self) -> usize {
        self.outstanding
    }

    fn pool_any_up(&self) -> bool {
        self.pool_up
    }

    fn retry_after_secs(&self) -> u32 {
        30
    }

    fn is_draining(&self) -> bool {
        self.draining
    }

    fn call_key(&self, call_id: &[u8], initiator_tag: &[u8], entered: Side) -> CallKey {
        self.calls.key(call_id, initiator_tag, entered)
    }

    fn call_begin(&mut self, key: CallKey, charge: Charge, now: Instant) -> Result<bool, AtLimit> {
        self.calls.begin_for(key, charge, now)
    }

    fn call_abort(&mut self, key: CallKey) {
        self.calls.abort(key);
    }

    fn call_answered(&mut self, key: CallKey, status: u16, now: Instant) {
        self.calls.answered(key, status, now);
    }

    fn call_ended(&mut self, key: CallKey) {
        self.calls.ended(key);
    }

    fn to_pool(&mut self, request: PoolRequest) -> Result<(), PoolRefused> {
        if !self.pool_up {
            return Err(PoolRefused);
        }
        self.events.push(SimEvent::ToPool {
            from: FlowId(u64::MAX),
            bytes: request.bytes,
            tx: request.tx,
            answerable: request.answerable,
        });
        Ok(())
    }

    fn to_flow(&mut self, flow: FlowId, from: Side, bytes: Bytes) -> Result<(), FlowRefused> {
        match self.flows.get(&flow) {
            None => Err(FlowRefused::Gone),
            Some(side) if *side == from => Err(FlowRefused::SameZone),
            Some(_) => {
                self.events.push(SimEvent::ToFlow {
                    from: FlowId(u64::MAX),
                    flow,
                    bytes,
                });
                Ok(())
            }
        }
    }

    fn to_partner(&mut self, request: PartnerRequest) -> Result<(), Why> {
        self.events.push(SimEvent::ToPartner {
            from: FlowId(u64::MAX),
            target: request.target,
            bytes: request.bytes,
            answerable: request.answerable,
        });
        Ok(())
    }

    fn credentials(&mut self, _flow: &Flow, msg: &Message) -> Option<Vec<u8>> {
        // The A/V authentication service of the loopback default, at a fixed time with a
        // fixed ring: the answer is reproducible.
        let ring = crate::core::keyring::Ring::init([9; 32], GOLDEN_NOW);
        let relay = crate::core::avauth::RelayInfo {
            host: "av.sipedge.test".into(),
            udp_port: 3478,
            tcp_port: 443,
            tls_port: None,
            max_lifetime_secs: 8 * 3600,
        };
        let (answer, _) = crate::core::avauth::answer(msg, Some((&ring, &relay)), GOLDEN_NOW);
        self.events.push(SimEvent::Credentials {
            answer: answer.clone(),
        });
        answer
    }

    fn rejected(
        &mut self,
        flow: &Flow,
        why: Why,
        _msg: Option<&Message>,
        answer: Option<&[u8]>,
        _now: Instant,
    ) {
        *self.rejects.entry(why.label()).or_insert(0) += 1;
        self.events.push(SimEvent::Rejected {
            flow: flow.id,
            why,
            answer: answer.map(<[u8]>::to_vec),
        });
    }

    fn forwarded(&mut self, flow: &Flow, _msg: &Message) {
        // The last event is what was just sent: name who sent it.
        match self.events.last_mut() {
            Some(SimEvent::ToPool { from, .. })
            | Some(SimEvent::ToFlow { from, .. })
            | Some(SimEvent::ToPartner { from, .. }) => *from = flow.id,
            _ => {}
        }
    }

    fn refused(&mut self, _refusal: Refusal) {}

    fn banned_close(&mut self, _flow: &Flow, _now: Instant) {}

    fn dropped_response(&mut self, _flow: &Flow, target: FlowId) {
        self.events.push(SimEvent::DroppedResponse { target });
    }

    fn keepalive(&mut self, _flow: &Flow) {
        self.events.push(SimEvent::Keepalive);
    }

    fn capture(&mut self, flow: &Flow, direction: Direction, message: &[u8]) {
        if self.capturing {
            self.captured
                .push((flow.id, direction, Bytes::copy_from_slice(message)));
        }
    }
}
