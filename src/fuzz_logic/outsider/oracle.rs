//! The oracle: its own book of the dialogs each connection may speak in and the requests
//! the Director sent to each, and the trust boundary's properties checked against it
//! whenever something reaches the Director, and between steps.

use bytes::Bytes;

use super::clients::{push_bounded, tokens_in};
use super::{
    client_addr, Booked, Pending, World, CLIENTS, MAX_CALLS, MAX_CALLS_PER_SOURCE, REPARSE,
};
use crate::core::net::SourceKey;
use crate::core::sip::calls::Owner;
use crate::core::sip::message::Message;
use crate::core::sip::parse::parse_uri;
use crate::core::sip::token::FlowId;

impl World {
    /// What reached the Director from outside connection `origin` (via the pool or its
    /// flow): the properties are checked here.
    pub(super) fn at_director(&mut self, origin: FlowId, bytes: &[u8], via_pool: bool) {
        self.reached_director += 1;
        let msg = match Message::parse(Bytes::copy_from_slice(bytes), &REPARSE) {
            Ok(m) => m,
            Err(why) => panic!(
                "the edge forwarded what it rejects ({why:?}):\n{}",
                String::from_utf8_lossy(bytes)
            ),
        };
        let text = String::from_utf8_lossy(bytes).to_string();
        let call_id = String::from_utf8_lossy(msg.bytes(msg.call_id)).to_string();
        let tag = |t: Option<crate::core::sip::parse::Span>| {
            t.map(|t| String::from_utf8_lossy(msg.bytes(t)).to_string())
        };
        let (from_tag, to_tag) = (tag(msg.from_tag), tag(msg.to_tag));
        if msg.is_request() {
            assert!(
                via_pool,
                "a request from outside went somewhere else: {text}"
            );
            let proven = self.proven(origin, &call_id, from_tag.as_deref(), to_tag.as_deref());
            let ruri = msg
                .request_uri()
                .map(|r| msg.bytes(r).to_vec())
                .unwrap_or_default();
            let allowed_ruri = parse_uri(&ruri).is_ok_and(|u| {
                let host = u.host.of(&ruri);
                let served = host.eq_ignore_ascii_case(b"sipedge.test")
                    && matches!(u.port, None | Some(5060) | Some(5061));
                let listener = host.eq_ignore_ascii_case(b"edge.sipedge.test")
                    && matches!(u.port, None | Some(5061));
                served || listener
            });
            assert!(
                proven || allowed_ruri,
                "property 1: reached the inside for {} without a proven dialog:\n{text}",
                String::from_utf8_lossy(&ruri)
            );
            assert!(
                proven || msg.routes.is_empty(),
                "property 1: a Route from outside reached the inside without a proven dialog:\n{text}"
            );
            assert!(
                !ruri.to_ascii_lowercase().windows(5).any(|w| w == b"maddr"),
                "maddr reached the inside:\n{text}"
            );
            if !allowed_ruri {
                self.proven_elsewhere += 1;
            }
            let method = msg.method();
            let forms = method.is_some_and(|m| m.forms_dialog()) && to_tag.is_none();
            if forms {
                if let Some(t) = &from_tag {
                    self.booked.insert(Booked {
                        flow: origin,
                        call_id: call_id.clone(),
                        initiator_tag: t.clone(),
                        outside_initiated: true,
                    });
                }
            }
            if method != Some(crate::core::sip::message::Method::Ack) {
                self.pending.push(Pending { text });
            }
        } else {
            assert!(!via_pool, "a response went to the pool: {text}");
            self.responses_in += 1;
            // The edge removed its own Via: the top one is the Director's.
            let branch = msg
                .top_via()
                .and_then(|v| v.branch)
                .map(|b| String::from_utf8_lossy(msg.bytes(b)).to_string())
                .unwrap_or_default();
            assert!(
                self.sent_out
                    .contains(&(origin, call_id.clone(), branch.clone())),
                "property 2: a response the Director never asked flow {} for \
                 reached it (Call-ID {call_id}, branch {branch}):\n{text}",
                origin.0
            );
        }
    }

    /// Whether the oracle's book says connection `conn` may speak in this dialog.
    fn proven(
        &self,
        flow: FlowId,
        call_id: &str,
        from_tag: Option<&str>,
        to_tag: Option<&str>,
    ) -> bool {
        self.booked.iter().any(|b| {
            b.flow == flow
                && b.call_id == call_id
                && if b.outside_initiated {
                    from_tag == Some(b.initiator_tag.as_str())
                } else {
                    to_tag == Some(b.initiator_tag.as_str())
                }
        })
    }

    /// What reached an outside connection: learned.
    pub(super) fn at_client(&mut self, flow: FlowId, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes).to_string();
        let conn = self
            .sessions
            .iter()
            .find(|(_, s)| s.flow().id == flow)
            .map_or(0, |(c, _)| *c);
        let mine = self.own_tokens.entry(conn).or_default();
        for t in tokens_in(text.as_bytes()) {
            push_bounded(mine, t);
        }
        if !text.starts_with("SIP/2.0") {
            let inbox = self.inbox.entry(conn).or_default();
            if inbox.len() >= 16 {
                inbox.remove(0);
            }
            inbox.push(text.clone());
        }
        // A request the Director sent: the oracle notes it (responses to it may go in), and
        // a dialog-forming one books the dialog for this connection.
        if let Ok(msg) = Message::parse(Bytes::copy_from_slice(bytes), &REPARSE) {
            if msg.is_request() {
                let call_id = String::from_utf8_lossy(msg.bytes(msg.call_id)).to_string();
                if let Some(v) = msg.vias.get(1).and_then(|v| v.branch) {
                    let branch = String::from_utf8_lossy(msg.bytes(v)).to_string();
                    self.sent_out.insert((flow, call_id.clone(), branch));
                }
                if msg.method().is_some_and(|m| m.forms_dialog()) && msg.to_tag.is_none() {
                    if let Some(t) = msg.from_tag {
                        self.booked.insert(Booked {
                            flow,
                            call_id,
                            initiator_tag: String::from_utf8_lossy(msg.bytes(t)).to_string(),
                            outside_initiated: false,
                        });
                    }
                }
            }
        }
        self.learn(text.as_bytes());
    }

    /// The properties that hold between steps.
    pub(super) fn check(&self) {
        assert!(
            self.edge.calls.len() <= MAX_CALLS,
            "property 3: {} calls, more than {MAX_CALLS}",
            self.edge.calls.len()
        );
        for conn in 1..=CLIENTS {
            let owner = Owner::Source(SourceKey::of(client_addr(conn).ip()));
            assert!(
                self.edge.calls.count(owner) <= MAX_CALLS_PER_SOURCE,
                "property 3: a source holds {} calls",
                self.edge.calls.count(owner)
            );
        }
        assert!(self.tokens.len() <= 64 && self.pending.len() <= 4096);
    }
}
