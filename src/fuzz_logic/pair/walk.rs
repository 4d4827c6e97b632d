//! Random walks over a [`Pair`]: a remote user's requests and garbage, a Director that
//! answers some requests and forgets others, probes that stop, a member connection lost
//! and made again, drain, reconnections and time passing. The fuzz target `sip_pair` and
//! a seeded property test run it.
//!
//! The property, after every walk: once time passes with no new input, every request the
//! user sent on a connection that is still up has a final answer (the Director's, or the
//! edge's own: 408 at the transaction timer, 503 for a lost member, a refusal), nothing
//! is outstanding at the member, and the call table is empty once the longest call is over.
//! Along the way the member never holds more transactions than requests were sent.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{director_answer, Pair, PROBE};
use crate::core::sip::outstanding::INVITE_TIMEOUT;
use crate::fuzz_logic::outsider::{Choices, FromInput};

/// The fuzz target's entry: choices from `data`.
pub fn run(data: &[u8]) {
    walk(&mut FromInput(data), 300);
}

/// One walk of at most `steps` steps; panics when a property does not hold.
pub fn walk(c: &mut dyn Choices, steps: usize) {
    let mut w = Walk {
        pair: Pair::new(),
        owed: BTreeSet::new(),
        at_director: Vec::new(),
        dialogs: Vec::new(),
        n: 0,
    };
    for _ in 0..steps {
        if !c.more() {
            break;
        }
        w.step(c);
        w.collect();
        w.check_member_view();
    }
    // No new input from here on: every timer runs out.
    w.pair.director_alive = c.pick(2) == 0;
    w.pair.advance(INVITE_TIMEOUT + Duration::from_secs(2));
    w.collect();
    assert!(
        w.owed.is_empty() || w.pair.user_closed().is_some(),
        "requests without a final answer: {:?}",
        w.owed
    );
    let outstanding = w
        .pair
        .member
        .as_ref()
        .and_then(|m| m.pool_link())
        .map_or(0, |l| l.outstanding());
    assert_eq!(outstanding, 0, "a transaction outlived its timer");
    let longest = w.pair.edge.calls.limits().max_duration;
    w.pair.advance(longest + Duration::from_secs(1));
    assert_eq!(
        w.pair.edge.calls.len(),
        0,
        "a call outlived the longest call"
    );
}

/// One of `items` (non-empty), as `c` picks.
fn pick<T: Copy + Default>(c: &mut dyn Choices, items: &[T]) -> T {
    items.get(c.pick(items.len())).copied().unwrap_or_default()
}

struct Walk {
    pair: Pair,
    /// (Call-ID, CSeq method) of the requests the user sent on this connection that have
    /// no final answer yet.
    owed: BTreeSet<(String, String)>,
    /// Requests the Director holds, unanswered.
    at_director: Vec<String>,
    /// The 2xx answers to the user's INVITEs: dialogs it may send in.
    dialogs: Vec<String>,
    n: u64,
}

impl Walk {
    fn step(&mut self, c: &mut dyn Choices) {
        match c.pick(12) {
            0..=2 => self.user_request(c),
            3 => self.user_bye(c),
            4 => {
                // Garbage on a connection of its own: what follows it on that connection
                // is the garbage's business, not the property's.
                self.pair.user_reconnects();
                self.owed.clear();
                let garbage = c.bytes(300);
                self.pair.user_sends(&garbage);
                self.pair.user_reconnects();
            }
            5..=6 => self.director_answers(c),
            7 => {
                let by = pick(c, &[10, 1_000, 5_000, 33_000, 182_000]);
                self.pair.advance(Duration::from_millis(by));
            }
            8 => self.pair.edge.draining = !self.pair.edge.draining,
            9 => self.pair.director_alive = !self.pair.director_alive,
            10 => {
                if self.pair.member.is_some() {
                    self.pair.member_connection_lost();
                    // What the Director held is gone with the connection.
                    self.at_director.clear();
                } else {
                    self.pair.member_reconnects();
                    self.pair.advance(PROBE.interval);
                }
            }
            _ => {
                self.pair.user_reconnects();
                self.owed.clear();
                self.dialogs.clear();
            }
        }
    }

    fn user_request(&mut self, c: &mut dyn Choices) {
        self.n += 1;
        let method = pick(c, &["INVITE", "MESSAGE", "OPTIONS"]);
        let call_id = format!("walk-{}", self.n);
        let msg = format!(
            "{method} sip:bob@sipedge.test SIP/2.0\r\n\
             Via: SIP/2.0/TLS 198.51.100.20:50123;branch=z9hG4bKw{n};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@sipedge.test>;tag=a{n}\r\n\
             To: <sip:bob@sipedge.test>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 {method}\r\n\
             Contact: <sip:alice@198.51.100.20:50123;transport=tls>\r\n\
             Content-Length: 0\r\n\r\n",
            n = self.n
        );
        self.owed.insert((call_id, method.to_string()));
        self.pair.user_sends(msg.as_bytes());
    }

    /// A BYE in a dialog the user holds, routed by the Record-Route its 2xx carried.
    fn user_bye(&mut self, c: &mut dyn Choices) {
        if self.dialogs.is_empty() {
            return;
        }
        let ok = self.dialogs.swap_remove(c.pick(self.dialogs.len()));
        self.n += 1;
        let header = |name: &str| {
            ok.split("\r\n")
                .find(|l| l.starts_with(name))
                .unwrap_or_default()
                .to_string()
        };
        let mut routes: Vec<String> = ok
            .split("\r\n")
            .filter_map(|l| l.strip_prefix("Record-Route: "))
            .flat_map(|v| v.split(", ").map(str::to_string).collect::<Vec<_>>())
            .collect();
        routes.reverse();
        let route: String = routes.iter().map(|r| format!("Route: {r}\r\n")).collect();
        let (from, to, call_id) = (header("From: "), header("To: "), header("Call-ID: "));
        let msg = format!(
            "BYE sip:bob@10.0.0.5:5061;transport=tls SIP/2.0\r\n\
             Via: SIP/2.0/TLS 198.51.100.20:50123;branch=z9hG4bKwb{n};rport\r\n\
             {route}Max-Forwards: 70\r\n{from}\r\n{to}\r\n{call_id}\r\n\
             CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            n = self.n
        );
        let id = call_id.trim_start_matches("Call-ID: ").to_string();
        self.owed.insert((id, "BYE".into()));
        self.pair.user_sends(msg.as_bytes());
    }

    fn director_answers(&mut self, c: &mut dyn Choices) {
        if self.at_director.is_empty() {
            return;
        }
        let i = c.pick(self.at_director.len());
        let status = pick(c, &[180, 200, 200, 486, 503]);
        let request = if status < 200 {
            self.at_director.get(i).cloned().unwrap_or_default()
        } else {
            self.at_director.swap_remove(i)
        };
        let reason = match status {
            180 => "Ringing",
            200 => "OK",
            486 => "Busy Here",
            _ => "Service Unavailable",
        };
        self.pair
            .director_sends(&director_answer(&request, status, reason));
    }

    /// What reached the user and the Director since the last step.
    fn collect(&mut self) {
        for msg in self.pair.director_received() {
            if !msg.starts_with("ACK ") && !msg.starts_with("SIP/2.0") {
                self.at_director.push(msg);
            }
        }
        for msg in self.pair.user_received() {
            let Some(status) = msg
                .strip_prefix("SIP/2.0 ")
                .and_then(|r| r.get(..3))
                .and_then(|s| s.parse::<u16>().ok())
            else {
                continue;
            };
            let line = |name: &str| {
                msg.split("\r\n")
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_default()
                    .to_string()
            };
            let call_id = line("Call-ID: ");
            let method = line("CSeq: ")
                .split(' ')
                .nth(1)
                .unwrap_or_default()
                .to_string();
            if status >= 200 {
                self.owed.remove(&(call_id, method.clone()));
            }
            if (200..300).contains(&status) && method == "INVITE" {
                self.dialogs.push(msg);
            }
        }
        if self.pair.user_closed().is_some() {
            self.pair.user_reconnects();
            self.owed.clear();
            self.dialogs.clear();
        }
    }

    /// The member never holds more transactions than the user sent requests.
    fn check_member_view(&self) {
        let link = self.pair.member.as_ref().and_then(|m| m.pool_link());
        assert!(
            link.map_or(0, |l| l.outstanding()) <= self.n as usize,
            "more transactions than requests"
        );
    }
}
