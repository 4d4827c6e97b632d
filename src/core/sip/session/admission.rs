//! Whether a message may go on, before and after the proxy decides where: the firewall's
//! say (rates, bans, a partner's rate), overload shedding and drain, and the calls a
//! message starts, answers or ends.

use super::*;

impl Session {
    /// The firewall's say on a message from outside (requests and responses alike): a
    /// partner's rate, or the connection's and the source's rates (503 + Retry-After) and
    /// the source's ban (close).
    pub(super) fn admit<E: Edge>(
        &mut self,
        edge: &mut E,
        msg: &Message,
        now: Instant,
    ) -> Result<(), Why> {
        // A listed partner's edge carries many users over few connections: its own rate
        // applies, not the per-connection and per-source ones (nor their strikes and bans).
        // (A partner a reload removed falls through: its connection is held to everyone's
        // limits, and the proxy refuses its requests.)
        if let Some(verdict) = self.flow.partner.and_then(|p| edge.partner_admit(p, now)) {
            return verdict.map_err(|wait| Why::RateLimited {
                retry_after_secs: secs_at_least_1(wait),
            });
        }
        // A discovered edge carries many users too: its domain's rate applies, not the
        // per-connection one. But it is no partner of the operator's: its address's rate,
        // strikes and ban still hold, or one certificate naming many domains (every name and
        // each of its parent domains is one) would multiply the domain rate without bound.
        let discovered = self.flow.partner.is_none()
            && match edge.proxy().discovered_sender(&self.flow, msg) {
                Some(domain) => {
                    let domain = domain.to_vec();
                    edge.discovered_admit(&domain, now)
                        .map_err(|wait| Why::RateLimited {
                            retry_after_secs: secs_at_least_1(wait),
                        })?;
                    true
                }
                None => false,
            };
        let ip = self.flow.remote.ip();
        if !discovered {
            if let Err(wait) = self.requests.take(edge.limits().connection_requests, now) {
                edge.refused(Refusal::RequestRate { retry_after: wait });
                self.strike(edge, now);
                return Err(Why::RateLimited {
                    retry_after_secs: secs_at_least_1(wait),
                });
            }
        }
        match edge.source_request(ip, now) {
            Ok(()) => Ok(()),
            Err(refusal @ Refusal::Banned { .. }) => {
                edge.refused(refusal);
                edge.banned_close(&self.flow, now);
                self.closed = Some(CloseReason::Banned);
                Err(Why::RateLimited {
                    retry_after_secs: refusal.retry_after_secs(),
                })
            }
            Err(refusal) => {
                edge.refused(refusal);
                Err(Why::RateLimited {
                    retry_after_secs: refusal.retry_after_secs(),
                })
            }
        }
    }

    /// Overload shedding and drain, for a request about to be forwarded that proves no
    /// dialog the edge recorded (a To tag proves nothing): while draining, new calls either
    /// way and any new request from outside get 503 so clients take their work to another
    /// pool member; above `max_outstanding`, new work from outside gets 503. ACK starts
    /// nothing and always passes; a recorded dialog's requests and CANCEL pass up to twice
    /// `max_outstanding`.
    pub(super) fn shed<E: Edge>(&self, edge: &E, msg: &Message, action: &Action) -> Option<Why> {
        let method = msg.method()?;
        if matches!(action, Action::Reject(_) | Action::Credentials) || method == Method::Ack {
            return None;
        }
        let outside = self.flow.side == Side::External;
        // A recorded dialog's requests and CANCEL are spared the overload limit and the
        // drain (a call can always end), but not a hard limit at twice it: each is still a
        // transaction the edge holds, and a dialog's token would otherwise be a pass to
        // hold them without bound.
        if action.proof() == Proof::Dialog || method == Method::Cancel {
            let hard = edge.limits().max_outstanding.saturating_mul(2);
            return (outside && edge.outstanding() >= hard).then(|| Why::Overloaded {
                retry_after_secs: edge.retry_after_secs(),
            });
        }
        if edge.is_draining() && (method == Method::Invite || outside) {
            return Some(Why::Draining {
                retry_after_secs: 1,
            });
        }
        if outside && edge.outstanding() >= edge.limits().max_outstanding {
            return Some(Why::Overloaded {
                retry_after_secs: edge.retry_after_secs(),
            });
        }
        None
    }

    /// An INVITE that starts a call (`key`) about to be forwarded: counted against its
    /// owner's bound and the edge's. `Ok(true)` for a new call, to be aborted if the send
    /// fails; `Ok(false)` for one already counted (a retransmission).
    pub(super) fn begin_call<E: Edge>(
        &self,
        edge: &mut E,
        key: CallKey,
        msg: &Message,
        action: &Action,
        now: Instant,
    ) -> Result<bool, Why> {
        let (owner, limit) = self.call_owner(edge, msg, action);
        let partner = matches!(owner, Owner::Partner(_));
        match edge.call_begin(key, Charge { owner, limit }, now) {
            Ok(fresh) => Ok(fresh),
            Err(AtLimit::Owner | AtLimit::Taken) if partner => Err(Why::PartnerDialogs {
                retry_after_secs: PARTNER_RETRY_AFTER_SECS,
            }),
            Err(_) => Err(Why::CallLimit {
                retry_after_secs: edge.retry_after_secs(),
            }),
        }
    }

    /// Who a new call is charged to, and how many that owner may hold.
    pub(super) fn call_owner<E: Edge>(
        &self,
        edge: &E,
        msg: &Message,
        action: &Action,
    ) -> (Owner, Option<usize>) {
        let partner = |target: PartnerTarget| match edge.partner_dialog_limit(&target) {
            Some((key, max)) => (Owner::Partner(key), Some(max)),
            None => (Owner::Inside, None),
        };
        match (self.flow.side, action) {
            (Side::Internal, Action::ToPartner { partner: p, .. }) => {
                partner(PartnerTarget::Listed(*p))
            }
            (Side::Internal, Action::ToDiscovered { target, .. }) => {
                partner(PartnerTarget::Discovered(target.clone()))
            }
            (Side::Internal, _) => (Owner::Inside, None),
            (Side::External, _) => {
                if let Some(p) = self.flow.partner {
                    return partner(PartnerTarget::Listed(p));
                }
                if let Some(domain) = edge.proxy().discovered_sender(&self.flow, msg) {
                    let domain = String::from_utf8_lossy(domain).to_ascii_lowercase();
                    return match edge.partner_dialog_limit(&PartnerTarget::Discovered(
                        DiscoveredTarget::Domain(domain.clone()),
                    )) {
                        Some((key, max)) => (Owner::Partner(key), Some(max)),
                        None => (Owner::Partner(discovered_key(domain.as_bytes())), Some(0)),
                    };
                }
                let ip = self.flow.remote.ip();
                let limit = (!edge.is_allowed(ip)).then_some(edge.limits().max_calls_per_source);
                (Owner::Source(SourceKey::of(ip)), limit)
            }
        }
    }

    /// What a forwarded message does to a call: a final answer to an INVITE answers it,
    /// a BYE of a dialog the edge recorded (or from the inside) ends it.
    pub(super) fn track_call<E: Edge>(
        &self,
        edge: &mut E,
        msg: &Message,
        proof: Proof,
        now: Instant,
    ) {
        match msg.kind {
            Kind::Response { status }
                if status >= 200 && msg.bytes(msg.cseq_method) == b"INVITE" =>
            {
                // A response comes back across the edge: its INVITE entered on the other
                // side.
                if let Some(tag) = msg.from_tag {
                    let entered = self.flow.side.other();
                    let key = edge.call_key(msg.bytes(msg.call_id), msg.bytes(tag), entered);
                    edge.call_answered(key, status, now);
                }
            }
            Kind::Request {
                method: Method::Bye,
                ..
            } if proof == Proof::Dialog || self.flow.side == Side::Internal => {
                // Either party may hang up, and a call between two remote users has a leg
                // that entered on each side: whichever of them exist end.
                for tag in [msg.from_tag, msg.to_tag].into_iter().flatten() {
                    for entered in [Side::External, Side::Internal] {
                        let key = edge.call_key(msg.bytes(msg.call_id), msg.bytes(tag), entered);
                        edge.call_ended(key);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The initiator's tag of an INVITE that starts a call and goes on: what its call is keyed
/// by. A To tag makes an INVITE a re-INVITE of a call already counted only when it proves a
/// dialog the edge recorded, or comes from the inside: from outside a To tag alone proves
/// nothing (the request is new work, shed and admitted as such), and an INVITE that claims
/// one is counted as the call it may start, or the call limits would be a header away.
pub(super) fn initial_invite<'m>(
    msg: &'m Message,
    action: &Action,
    side: Side,
) -> Option<&'m [u8]> {
    if msg.method() != Some(Method::Invite)
        || matches!(action, Action::Reject(_) | Action::Credentials)
        || (msg.to_tag.is_some() && (action.proof() == Proof::Dialog || side == Side::Internal))
    {
        return None;
    }
    msg.from_tag.map(|t| msg.bytes(t))
}
fn secs_at_least_1(d: Duration) -> u32 {
    u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX)
}
