//! The connection's behaviour end to end on simulated time: a remote user, the edge and a
//! pool member's Director, no sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::core::sip::outstanding::{INVITE_TIMEOUT, NON_INVITE_TIMEOUT};

const CALL_ID: &str = "pair-call-1@198.51.100.20";

fn invite(call_id: &str, branch: &str) -> String {
    format!(
        "INVITE sip:bob@sipedge.test SIP/2.0\r\n\
         Via: SIP/2.0/TLS 198.51.100.20:50123;branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@sipedge.test>;tag=alice1\r\n\
         To: Bob <sip:bob@sipedge.test>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@198.51.100.20:50123;transport=tls>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn message(call_id: &str) -> String {
    format!(
        "MESSAGE sip:bob@sipedge.test SIP/2.0\r\n\
         Via: SIP/2.0/TLS 198.51.100.20:50123;branch=z9hG4bKm{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@sipedge.test>;tag=alice1\r\n\
         To: <sip:bob@sipedge.test>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 MESSAGE\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The user's in-dialog request of `method` for the dialog the 2xx `answer` set up: Route
/// from its Record-Route (reversed, RFC 3261 §12.1.2), To with the Director's tag.
fn in_dialog(answer: &str, method: &str, cseq: u32) -> String {
    let mut routes: Vec<&str> = answer
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("Record-Route: "))
        .flat_map(|v| v.split(", "))
        .collect();
    routes.reverse();
    let to = answer
        .split("\r\n")
        .find(|l| l.starts_with("To: "))
        .unwrap();
    let route_lines: String = routes.iter().map(|r| format!("Route: {r}\r\n")).collect();
    format!(
        "{method} sip:bob@10.0.0.5:5061;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 198.51.100.20:50123;branch=z9hG4bKd{method}{cseq};rport\r\n\
         {route_lines}\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@sipedge.test>;tag=alice1\r\n\
         {to}\r\n\
         Call-ID: {CALL_ID}\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn status_of(msg: &str) -> u16 {
    msg.strip_prefix("SIP/2.0 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sets up a call; returns the 200 OK as the user got it.
fn call(pair: &mut Pair) -> String {
    pair.user_sends(invite(CALL_ID, "inv1").as_bytes());
    let at_director = pair.director_received();
    assert_eq!(at_director.len(), 1, "{at_director:?}");
    let ok = director_answer(&at_director[0], 200, "OK");
    pair.director_sends(&ok);
    let got = pair.user_received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(status_of(&got[0]), 200, "{}", got[0]);
    got[0].clone()
}

#[test]
fn the_member_comes_up_on_answered_probes_and_goes_down_when_they_stop() {
    let mut pair = Pair::new();
    assert!(!pair.edge.pool_up, "a member starts down");
    pair.advance(PROBE.interval);
    assert!(pair.edge.pool_up, "up after {} answered probes", PROBE.rise);
    assert!(pair.probes_answered >= 2);
    // Nothing of the probes reaches anyone else.
    assert!(pair.user_received().is_empty());
    assert!(pair.director_received().is_empty());

    pair.director_alive = false;
    pair.advance(PROBE.interval * (PROBE.fall + 1));
    assert!(
        !pair.edge.pool_up,
        "down after {} missed probes",
        PROBE.fall
    );
    // With the pool down, the user's new work is refused at once, 503 with Retry-After.
    pair.user_sends(message("while-down").as_bytes());
    let got = pair.user_received();
    assert_eq!(status_of(&got[0]), 503, "{got:?}");
    assert!(got[0].contains("Retry-After: 30"), "{}", got[0]);
    assert!(pair.director_received().is_empty());
}

#[test]
fn a_call_crosses_with_the_edges_tokens_and_its_bye_ends_it() {
    let mut pair = Pair::up();
    pair.user_sends(invite(CALL_ID, "inv1").as_bytes());
    let at_director = pair.director_received();
    let forwarded = &at_director[0];
    assert!(forwarded.starts_with("INVITE sip:bob@sipedge.test"));
    assert!(
        forwarded.contains("Via: SIP/2.0/TLS 127.0.0.2:5061;branch=z9hG4bKse"),
        "{forwarded}"
    );
    assert!(forwarded.contains("Record-Route: <sip:"), "{forwarded}");
    assert!(forwarded.contains("received=203.0.113.7"), "{forwarded}");
    assert_eq!(pair.edge.calls.len(), 1, "the call is counted");
    assert_eq!(pair.edge.outstanding, 1, "one transaction at the member");

    pair.director_sends(&director_answer(forwarded, 200, "OK"));
    let ok = pair.user_received().remove(0);
    assert_eq!(status_of(&ok), 200);
    assert!(
        !ok.contains("Via: SIP/2.0/TLS 127.0.0.2"),
        "the edge's Via came off: {ok}"
    );
    assert_eq!(pair.edge.outstanding, 0, "the final answer completed it");

    pair.user_sends(in_dialog(&ok, "BYE", 2).as_bytes());
    let bye = pair.director_received();
    assert_eq!(bye.len(), 1, "the BYE proved its dialog: {bye:?}");
    assert!(bye[0].starts_with("BYE "));
    assert_eq!(pair.edge.calls.len(), 0, "the BYE ended the call");
}

#[test]
fn a_member_that_does_not_answer_is_answered_for_with_408_at_the_transaction_timeout() {
    let mut pair = Pair::up();
    pair.user_sends(message("silent-1").as_bytes());
    assert_eq!(pair.director_received().len(), 1);
    assert_eq!(pair.edge.outstanding, 1);
    pair.advance(NON_INVITE_TIMEOUT - Duration::from_secs(1));
    assert!(pair.user_received().is_empty(), "not before Timer F");
    pair.advance(Duration::from_secs(2));
    let got = pair.user_received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(status_of(&got[0]), 408, "{}", got[0]);
    assert!(got[0].contains("Call-ID: silent-1"));
    assert!(
        got[0].contains("branch=z9hG4bKmsilent-1"),
        "answers the user's own transaction: {}",
        got[0]
    );
    assert_eq!(pair.edge.outstanding, 0);

    // An INVITE waits for Timer C, and its call ends with the 408.
    pair.user_sends(invite("silent-call", "inv2").as_bytes());
    assert_eq!(pair.edge.calls.len(), 1);
    pair.advance(INVITE_TIMEOUT + Duration::from_secs(1));
    let got = pair.user_received();
    assert_eq!(status_of(&got[0]), 408, "{got:?}");
    assert_eq!(pair.edge.calls.len(), 0, "the 408 ended the call");
}

#[test]
fn a_lost_member_connection_answers_503_for_what_it_held_and_takes_nothing_more() {
    let mut pair = Pair::up();
    pair.user_sends(invite("held-call", "inv3").as_bytes());
    pair.user_sends(message("held-message").as_bytes());
    assert_eq!(pair.director_received().len(), 2);
    assert_eq!(pair.edge.calls.len(), 1);

    pair.member_connection_lost();
    let mut got = pair.user_received();
    got.sort();
    assert_eq!(got.len(), 2, "{got:?}");
    for answer in &got {
        assert_eq!(status_of(answer), 503, "{answer}");
        assert!(answer.contains("Retry-After: 30"), "{answer}");
    }
    assert_eq!(pair.edge.calls.len(), 0, "the 503 ended the call");
    let link = pair
        .link
        .as_ref()
        .expect("the link comes back for the next connection");
    assert!(!link.is_up() && link.outstanding() == 0);
    assert!(!pair.edge.pool_up);

    // Nothing waits for a member that is gone.
    pair.user_sends(message("after-loss").as_bytes());
    let got = pair.user_received();
    assert_eq!(status_of(&got[0]), 503, "{got:?}");
}

#[test]
fn draining_refuses_new_work_but_lets_a_recorded_dialog_finish() {
    let mut pair = Pair::up();
    let ok = call(&mut pair);
    pair.edge.draining = true;

    pair.user_sends(invite("new-while-draining", "inv4").as_bytes());
    let got = pair.user_received();
    assert_eq!(status_of(&got[0]), 503, "{got:?}");
    assert!(got[0].contains("Retry-After: 1"), "{}", got[0]);
    pair.user_sends(message("new-message").as_bytes());
    assert_eq!(status_of(&pair.user_received()[0]), 503);
    assert!(pair.director_received().is_empty(), "nothing new went in");

    // The dialog the edge recorded proves itself with its Record-Route token.
    pair.user_sends(in_dialog(&ok, "BYE", 2).as_bytes());
    assert_eq!(pair.director_received().len(), 1, "the BYE goes through");
    assert_eq!(pair.edge.calls.len(), 0);
}

#[test]
fn a_claimed_dialog_without_the_edges_token_is_new_work_and_is_shed() {
    let mut pair = Pair::up();
    let ok = call(&mut pair);
    pair.edge.draining = true;
    // The same dialog's To tag and Call-ID, but a Route the edge did not mint: it proves
    // nothing, so it is new work from outside — refused while draining.
    let forged = in_dialog(&ok, "INFO", 3).replace("sip:", "sip:x").replacen(
        "INFO sip:xbob",
        "INFO sip:bob",
        1,
    );
    pair.user_sends(forged.as_bytes());
    let got = pair.user_received();
    assert!(
        matches!(status_of(&got[0]), 403 | 503),
        "refused, never forwarded: {got:?}"
    );
    assert!(pair.director_received().is_empty());
}

#[test]
fn overload_sheds_new_work_from_outside_with_the_pools_retry_after() {
    let mut pair = Pair::up();
    pair.edge.limits.max_outstanding = 2;
    pair.user_sends(message("load-1").as_bytes());
    pair.user_sends(message("load-2").as_bytes());
    assert_eq!(pair.director_received().len(), 2);
    assert_eq!(pair.edge.outstanding, 2);
    pair.user_sends(message("load-3").as_bytes());
    let got = pair.user_received();
    assert_eq!(status_of(&got[0]), 503, "{got:?}");
    assert!(got[0].contains("Call-ID: load-3"));
    assert!(pair.director_received().is_empty());
    // Answers free the room again.
    let answer = crate::core::sip::reject::response(
        message("load-1")
            .replace(
                "Via: ",
                "Via: SIP/2.0/TLS 127.0.0.2:5061;branch=z9hG4bKsebad;ftok=x\r\nVia: ",
            )
            .as_bytes(),
        200,
        "OK",
        b"",
    )
    .unwrap();
    // A response whose edge Via the edge did not mint is dropped and frees nothing.
    pair.director_sends(&answer);
    assert!(
        pair.user_received().is_empty(),
        "a forged response goes nowhere"
    );
    assert_eq!(pair.edge.outstanding, 2);
}

#[test]
fn a_recorded_dialogs_requests_pass_the_overload_limit_but_not_twice_it() {
    let mut pair = Pair::up();
    let ok = call(&mut pair);
    pair.edge.limits.max_outstanding = 2;
    // Unanswered INFOs in the dialog: spared the overload limit (a call can always end),
    // each still a transaction the edge holds, so not without bound.
    for cseq in 2..6 {
        pair.user_sends(in_dialog(&ok, "INFO", cseq).as_bytes());
    }
    assert_eq!(pair.director_received().len(), 4);
    assert_eq!(pair.edge.outstanding, 4);
    pair.user_sends(in_dialog(&ok, "INFO", 6).as_bytes());
    let got = pair.user_received();
    assert_eq!(status_of(&got[0]), 503, "{got:?}");
    assert!(pair.director_received().is_empty());
    // ACK holds nothing and always passes.
    pair.user_sends(in_dialog(&ok, "ACK", 1).as_bytes());
    assert_eq!(pair.director_received().len(), 1);
}

#[test]
fn an_invite_claiming_a_to_tag_without_the_edges_token_is_counted_as_a_call() {
    let mut pair = Pair::up();
    // A re-INVITE of a recorded dialog (its token) is the call already counted.
    let ok = call(&mut pair);
    assert_eq!(pair.edge.calls.len(), 1);
    pair.user_sends(in_dialog(&ok, "INVITE", 2).as_bytes());
    assert_eq!(pair.director_received().len(), 1);
    assert_eq!(pair.edge.calls.len(), 1, "a re-INVITE is no new call");
    // A To tag alone proves nothing: the INVITE is new work and may start a call, so it
    // counts against the call limits like any other.
    let claimed = invite("claimed", "inv-claimed").replace(
        "To: Bob <sip:bob@sipedge.test>",
        "To: Bob <sip:bob@sipedge.test>;tag=made-up",
    );
    pair.user_sends(claimed.as_bytes());
    assert_eq!(pair.director_received().len(), 1);
    assert_eq!(pair.edge.calls.len(), 2, "counted as the call it may start");
}

#[test]
fn a_discovered_edge_is_held_to_its_address_rate_whatever_domains_it_names() {
    // Open federation: one certificate name proves every domain it is within (each of its
    // parent domains), each with a rate of its own; the address's rate caps them together.
    let mut pair = Pair::up();
    let mut federation = (*pair.edge.proxy.federation()).clone();
    federation.discovery = true;
    pair.edge
        .proxy
        .set_federation(std::sync::Arc::new(federation));
    let mut policy = SimEdge::no_bans();
    policy.request_rate = crate::core::firewall::Rate {
        per_sec: 1,
        burst: 5,
    };
    pair.edge.guard.set_policy(policy);
    let flow = crate::core::sip::proxy::Flow {
        certificate: Some(std::sync::Arc::from(vec![
            "a.b.c.d.e.f.g.attacker.example".to_string()
        ])),
        ..pair.user.flow().clone()
    };
    pair.user = Session::new(flow, pair.now);
    let domains = [
        "b.c.d.e.f.g.attacker.example",
        "c.d.e.f.g.attacker.example",
        "d.e.f.g.attacker.example",
        "e.f.g.attacker.example",
        "f.g.attacker.example",
        "g.attacker.example",
        "attacker.example",
        "b.c.d.e.f.g.attacker.example",
    ];
    for (i, domain) in domains.iter().enumerate() {
        let m = message(&format!("fed-{i}")).replace(
            "From: <sip:alice@sipedge.test>",
            &format!("From: <sip:mallory@{domain}>"),
        );
        pair.user_sends(m.as_bytes());
    }
    let forwarded = pair.director_received().len();
    let refused: Vec<u16> = pair.user_received().iter().map(|r| status_of(r)).collect();
    assert_eq!(forwarded, 5, "the address's burst, over all the domains");
    assert_eq!(refused, vec![503, 503, 503], "{refused:?}");
}

#[test]
fn a_request_held_for_an_answer_keeps_its_header_block_not_the_read_buffer() {
    // One read: an INVITE, then a MESSAGE with a large body. What the edge keeps to answer
    // the INVITE in the pool's place (for up to 181 s) is a copy of its header block; a
    // slice of the read buffer would keep the MESSAGE's 60 KB with it.
    let mut pair = Pair::up();
    let invite = invite("held", "inv-held");
    let body = "x".repeat(60_000);
    let big = message("big").replace(
        "Content-Length: 0",
        &format!("Content-Type: text/plain\r\nContent-Length: {}", body.len()),
    ) + &body;
    pair.user_sends(format!("{invite}{big}").as_bytes());
    assert_eq!(pair.director_received().len(), 2);
    let [held, message_held] = std::mem::take(&mut pair.answerables).try_into().unwrap();
    let head = invite.find("\r\n\r\n").unwrap() + 4;
    assert!(held.raw.len() <= head, "{} > {head}", held.raw.len());
    assert!(message_held.raw.len() < 1000, "{}", message_held.raw.len());
    // Not adjacent to the MESSAGE's bytes: not a slice of the same buffer.
    assert_ne!(
        held.raw.as_ptr().wrapping_add(held.raw.len()),
        message_held.raw.as_ptr()
    );
    assert_eq!(
        crate::core::sip::reject::response(&held.raw, 408, "Request Timeout", b"")
            .map(|r| String::from_utf8_lossy(&r).contains("Call-ID: held")),
        Some(true),
        "the copy still answers"
    );
}

#[test]
fn a_header_block_that_does_not_complete_gets_408_and_the_connection_closes() {
    let mut pair = Pair::up();
    let header_timeout = pair.edge.limits.header_timeout;
    // Everything but the Content-Length line and the blank line.
    let whole = message("slow");
    let partial = &whole[..whole.find("Content-Length").unwrap()];
    pair.user_sends(partial.as_bytes());
    pair.advance(header_timeout - Duration::from_millis(1));
    assert!(pair.user_closed().is_none());
    pair.advance(Duration::from_millis(2));
    assert_eq!(pair.user_closed(), Some(CloseReason::HeaderTimeout));
    let got = pair.user_received();
    assert_eq!(status_of(&got[0]), 408, "{got:?}");
    assert!(pair.director_received().is_empty());
}

#[test]
fn an_idle_connection_closes_and_the_members_keeps_probing() {
    let mut pair = Pair::up();
    let idle = pair.edge.limits.idle_timeout;
    pair.advance(idle + Duration::from_secs(1));
    assert_eq!(pair.user_closed(), Some(CloseReason::Idle));
    assert!(
        pair.edge.pool_up,
        "answered probes keep the member's connection alive"
    );
    assert!(pair.member.as_ref().unwrap().closed().is_none());
}

/// The walk's properties (every request answered once timers run out, nothing outstanding,
/// no call past the longest) over seeded walks; the fuzz target `sip_pair` runs the same.
#[test]
fn seeded_walks_leave_nothing_unanswered_or_outstanding() {
    for seed in 0..64 {
        walk(
            &mut crate::fuzz_logic::outsider::Seeded::new(seed, 200),
            200,
        );
    }
}

/// What capture copied of `flow`'s connection in `direction`, as text.
fn captured(
    pair: &Pair,
    flow: FlowId,
    direction: crate::core::sip::session::Direction,
) -> Vec<String> {
    pair.edge
        .captured
        .iter()
        .filter(|(f, d, _)| *f == flow && *d == direction)
        .map(|(_, _, b)| String::from_utf8_lossy(b).into_owned())
        .collect()
}

#[test]
fn capture_copies_every_message_of_both_connections_once_each_in_order() {
    use crate::core::sip::session::Direction::{Received, Sent};
    let mut pair = Pair::new();
    pair.edge.capturing = true;
    // Probes and their answers, a call, a keep-alive, and a message the edge refuses.
    pair.advance(PROBE.interval);
    let ok = call(&mut pair);
    pair.user_sends(b"\r\n\r\n");
    pair.user_sends(in_dialog(&ok, "ACK", 1).as_bytes());
    pair.user_sends(in_dialog(&ok, "BYE", 2).as_bytes());
    let bye = pair.director_received().pop().unwrap();
    pair.director_sends(&director_answer(&bye, 200, "OK"));
    let refused = message("bad").replace("CSeq: 1 MESSAGE", "CSeq: one MESSAGE");
    pair.user_sends(refused.as_bytes());
    assert_eq!(status_of(&pair.user_received().pop().unwrap()), 400);

    // Each copy is one whole message as it crossed, in the order it crossed, keep-alives
    // aside: the concatenation of the copies is the wire, message for message.
    let wire = &pair.wire;
    let from_user = split(&wire.user_to_edge);
    let to_user = split(&wire.edge_to_user);
    let from_director = split(&wire.director_to_edge);
    let to_director = split(&wire.edge_to_director);
    assert_eq!(captured(&pair, USER, Received), from_user);
    assert_eq!(captured(&pair, USER, Sent), to_user);
    assert_eq!(captured(&pair, MEMBER, Received), from_director);
    assert_eq!(captured(&pair, MEMBER, Sent), to_director);
    // What that covers: the refused message and its 400, the probes, the whole call.
    assert_eq!(from_user.len(), 4, "INVITE, ACK, BYE, the refused MESSAGE");
    assert!(from_user[3].contains("CSeq: one MESSAGE"));
    assert_eq!(to_user.len(), 3, "200 (INVITE), 200 (BYE), 400");
    assert!(
        to_director
            .iter()
            .filter(|m| m.starts_with("OPTIONS "))
            .count()
            >= 2
    );
    assert!(to_director.iter().any(|m| m.starts_with("ACK ")));
    assert!(to_director.iter().any(|m| m.starts_with("BYE ")));
    assert!(
        from_director
            .iter()
            .filter(|m| m.starts_with("SIP/2.0 200"))
            .count()
            >= 4
    );
    let copies = pair.edge.captured.len();
    assert_eq!(
        copies,
        from_user.len() + to_user.len() + from_director.len() + to_director.len()
    );
}
