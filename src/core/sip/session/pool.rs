//! What a session to a pool member does beyond any other: probes and their answers, the
//! member's transaction timers, and the answers the edge gives in the member's place.

use super::*;

impl Session {
    /// A pool member's timers: a probe when one is due, a missed probe, transactions the
    /// member did not answer in time (408 in its place).
    pub(super) fn pool_timers<E: Edge>(&mut self, edge: &mut E, now: Instant) {
        let Some(link) = &mut self.pool else {
            return;
        };
        let (probe, transition) = link.health.handle_timeout(now);
        if let Some(t) = transition {
            edge.member_event(link, MemberEvent::Transition(t), now);
        }
        let probe = probe.map(|seq| {
            link.probe_sent = Some(now);
            let probe = edge
                .proxy()
                .probe(link.id, link.addr, seq, &link.from_domain);
            edge.member_event(link, MemberEvent::ProbeSent, now);
            probe
        });
        let mut expired = Vec::new();
        link.outstanding.expire(now, |a| expired.push(a));
        if let Some(probe) = probe {
            self.write(edge, &probe);
        }
        for answerable in expired {
            answer_in_place_of(edge, &answerable, Why::RequestTimeout, now);
        }
    }

    /// Whether `msg` answers one of the edge's probes (it goes no further): on a member's
    /// connection it feeds the member's health; a probe answer anywhere else is nobody's.
    pub(super) fn probe_answered<E: Edge>(
        &mut self,
        edge: &mut E,
        msg: &Message,
        now: Instant,
    ) -> bool {
        let Some((member, seq, status)) = edge.proxy().probe_answer(msg) else {
            return false;
        };
        if let Some(link) = self.pool.as_deref_mut().filter(|l| l.id == member) {
            let transition = link.health.handle_answer(seq, status);
            if let Some(sent) = link.probe_sent.take() {
                let rtt = now.saturating_duration_since(sent);
                edge.member_event(link, MemberEvent::ProbeAnswered { status, rtt }, now);
            }
            if let Some(t) = transition {
                edge.member_event(link, MemberEvent::Transition(t), now);
            }
        }
        true
    }
}

/// The edge answers a forwarded request in its next hop's place (a 408 or 503): to the
/// flow it came from, and the call it started ends.
pub fn answer_in_place_of<E: Edge>(edge: &mut E, answerable: &Answerable, why: Why, now: Instant) {
    let Some((answer, status)) = answerable.answer(why) else {
        return;
    };
    // The origin may be gone, or not reading: nobody else can take the answer.
    let _ = edge.to_flow(answerable.origin, Side::Internal, Bytes::from(answer));
    if let Some(key) = answerable.call {
        edge.call_answered(key, status, now);
    }
}
