//! Concurrent dialogs per federation partner (sans-IO): the Lync Edge's per-partner limit.
//!
//! A dialog is counted from its INVITE (either direction) until a final failure answers it,
//! a BYE crosses, or it outlives its bound: 3 minutes unanswered (RFC 3261 Timer C), 12
//! hours established (a partner that never sends BYE must not hold a slot forever). The
//! table is bounded by the limits themselves: a partner at its limit gets 503, and nothing
//! it sends makes the table grow.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long an INVITE may wait for its final answer (RFC 3261 §16.6 Timer C: > 3 min).
pub const UNANSWERED: Duration = Duration::from_secs(180);
/// How long an established dialog is counted without a BYE.
pub const ESTABLISHED: Duration = Duration::from_secs(12 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dialog {
    partner: u64,
    established: bool,
    until: Instant,
}

/// The dialogs of every partner (by the partner's stable key), by Call-ID.
#[derive(Debug, Default)]
pub struct Dialogs {
    by_call: HashMap<Vec<u8>, Dialog>,
    per_partner: HashMap<u64, usize>,
}

/// What a message does to a dialog; most messages do nothing, and need no lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// An INVITE outside a dialog.
    Begin,
    /// A final response to an INVITE.
    Answered(u16),
    /// A BYE.
    End,
}

impl Event {
    pub fn of(msg: &crate::core::sip::message::Message) -> Option<Event> {
        use crate::core::sip::message::{Kind, Method};
        match msg.kind {
            Kind::Request {
                method: Method::Invite,
                ..
            } if msg.to_tag.is_none() => Some(Event::Begin),
            Kind::Request {
                method: Method::Bye,
                ..
            } => Some(Event::End),
            Kind::Response { status }
                if status >= 200 && msg.bytes(msg.cseq_method) == b"INVITE" =>
            {
                Some(Event::Answered(status))
            }
            _ => None,
        }
    }
}

/// The partner is at its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtLimit;

impl Dialogs {
    /// An INVITE that starts a dialog with `partner`: counted, unless the partner already
    /// holds `max` (expired ones are dropped first). A retransmission counts once; a
    /// Call-ID another partner holds is refused (it would move that partner's dialog).
    pub fn begin(
        &mut self,
        partner: u64,
        call_id: &[u8],
        max: usize,
        now: Instant,
    ) -> Result<(), AtLimit> {
        if let Some(d) = self.by_call.get(call_id) {
            return if d.partner == partner {
                Ok(())
            } else {
                Err(AtLimit)
            };
        }
        if self.count(partner) >= max {
            self.expire(now);
        }
        if self.count(partner) >= max {
            return Err(AtLimit);
        }
        self.by_call.insert(
            call_id.to_vec(),
            Dialog {
                partner,
                established: false,
                until: now + UNANSWERED,
            },
        );
        *self.per_partner.entry(partner).or_insert(0) += 1;
        Ok(())
    }

    /// A final response to the INVITE: 2xx establishes the dialog, anything else ends it.
    /// `from_partner`: the partner that sent it, when a partner did (it may only answer
    /// for its own dialogs); `None` from the inside.
    pub fn answered(
        &mut self,
        from_partner: Option<u64>,
        call_id: &[u8],
        status: u16,
        now: Instant,
    ) {
        let Some(d) = self.by_call.get_mut(call_id) else {
            return;
        };
        if from_partner.is_some_and(|p| p != d.partner) {
            return;
        }
        match status {
            200..=299 if !d.established => {
                d.established = true;
                d.until = now + ESTABLISHED;
            }
            // A failure after a 2xx (forking) leaves the established dialog alone.
            300.. if !d.established => self.remove(call_id),
            _ => {}
        }
    }

    /// A BYE crossed: the dialog is over (`from_partner` as for [`Dialogs::answered`]).
    pub fn ended(&mut self, from_partner: Option<u64>, call_id: &[u8]) {
        if let Some(d) = self.by_call.get(call_id) {
            if from_partner.is_none_or(|p| p == d.partner) {
                self.remove(call_id);
            }
        }
    }

    fn remove(&mut self, call_id: &[u8]) {
        if let Some(d) = self.by_call.remove(call_id) {
            if let Some(n) = self.per_partner.get_mut(&d.partner) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_partner.remove(&d.partner);
                }
            }
        }
    }

    /// Dialogs counted for `partner` (expired ones included until the next sweep).
    pub fn count(&self, partner: u64) -> usize {
        self.per_partner.get(&partner).copied().unwrap_or(0)
    }

    /// Drops every expired dialog.
    pub fn expire(&mut self, now: Instant) {
        let expired: Vec<Vec<u8>> = self
            .by_call
            .iter()
            .filter(|(_, d)| d.until <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for call_id in expired {
            self.remove(&call_id);
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests start simulated time from a real instant
mod tests {
    use super::*;

    #[test]
    fn a_partner_at_its_limit_is_refused_until_a_dialog_ends() {
        let t0 = Instant::now();
        let mut d = Dialogs::default();
        assert_eq!(d.begin(1, b"c1", 2, t0), Ok(()));
        assert_eq!(
            d.begin(1, b"c1", 2, t0),
            Ok(()),
            "a retransmission counts once"
        );
        assert_eq!(d.begin(1, b"c2", 2, t0), Ok(()));
        assert_eq!(d.begin(1, b"c3", 2, t0), Err(AtLimit));
        // Another partner has its own count, but not another's Call-ID.
        assert_eq!(d.begin(2, b"c3", 2, t0), Ok(()));
        assert_eq!(d.begin(2, b"c1", 2, t0), Err(AtLimit));
        // A failure answer ends an unanswered dialog; a 2xx establishes; BYE ends.
        d.answered(None, b"c1", 486, t0);
        assert_eq!(d.count(1), 1);
        assert_eq!(d.begin(1, b"c4", 2, t0), Ok(()));
        d.answered(Some(1), b"c2", 200, t0);
        d.answered(Some(1), b"c2", 486, t0);
        assert_eq!(
            d.count(1),
            2,
            "a late failure does not end an established dialog"
        );
        // Another partner can neither end nor answer partner 1's dialogs.
        d.ended(Some(2), b"c2");
        d.answered(Some(2), b"c4", 486, t0);
        assert_eq!(d.count(1), 2);
        d.ended(Some(1), b"c2");
        assert_eq!(d.count(1), 1);
        d.ended(None, b"unknown");
        d.answered(None, b"unknown", 200, t0);
        assert_eq!(d.count(9), 0);
    }

    #[test]
    fn dialogs_expire_unanswered_after_timer_c_and_established_after_hours() {
        let t0 = Instant::now();
        let mut d = Dialogs::default();
        d.begin(1, b"ringing", 10, t0).unwrap();
        d.begin(1, b"talking", 10, t0).unwrap();
        d.answered(None, b"talking", 200, t0);
        d.expire(t0 + UNANSWERED + Duration::from_secs(1));
        assert_eq!(d.count(1), 1);
        d.expire(t0 + ESTABLISHED + Duration::from_secs(1));
        assert_eq!(d.count(1), 0);
        // At the limit, expired dialogs make room without a sweep.
        d.begin(1, b"a", 1, t0).unwrap();
        assert_eq!(
            d.begin(1, b"b", 1, t0 + Duration::from_secs(1)),
            Err(AtLimit)
        );
        assert_eq!(
            d.begin(1, b"b", 1, t0 + UNANSWERED + Duration::from_secs(1)),
            Ok(())
        );
    }
}
