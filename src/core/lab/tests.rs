//! The lab Director on its own: registrations with Path, a call routed by lookup and back
//! by the route set, stateless branches, and what it refuses.

use super::*;

const ME: &str = "127.0.0.1:5070";
const EDGE: ConnId = 1;
const PATH_A: &str = "<sip:vAAA@127.0.0.2:5061;transport=tls;lr>";
const PATH_B: &str = "<sip:vBBB@127.0.0.2:5061;transport=tls;lr>";

fn now() -> Instant {
    #[allow(clippy::disallowed_methods)] // a fixed start; the lab is handed times after it
    Instant::now()
}

fn register(user: &str, path: &str, contact_port: u16, expires: u32) -> String {
    format!(
        "REGISTER sip:sipedge.test SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.2:5061;branch=z9hG4bKedge-{user}\r\n\
         Via: SIP/2.0/TLS 192.168.1.5:{contact_port};branch=z9hG4bK-{user}\r\n\
         Path: {path}\r\nMax-Forwards: 69\r\n\
         From: <sip:{user}@sipedge.test>;tag=r-{user}\r\nTo: <sip:{user}@sipedge.test>\r\n\
         Call-ID: reg-{user}\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:{user}@192.168.1.5:{contact_port};transport=tls>;expires={expires}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn invite(to: &str, branch: &str) -> String {
    format!(
        "INVITE sip:{to}@sipedge.test SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.2:5061;branch=z9hG4bKedge-{branch}\r\n\
         Record-Route: <sip:oAAA@127.0.0.2:5061;transport=tls;lr>, <sip:oAAA@edge.sipedge.test:5061;transport=tls;lr>\r\n\
         Via: SIP/2.0/TLS 192.168.1.5:50000;branch=z9hG4bK-{branch}\r\n\
         Max-Forwards: 69\r\n\
         From: <sip:alice@sipedge.test>;tag=a1\r\nTo: <sip:{to}@sipedge.test>\r\n\
         Call-ID: call-1\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:alice@192.168.1.5:50000;transport=tls>\r\nContent-Length: 0\r\n\r\n"
    )
}

fn text(sends: &[Send]) -> Vec<(ConnId, String)> {
    sends
        .iter()
        .map(|(c, b)| (*c, String::from_utf8_lossy(b).into_owned()))
        .collect()
}

fn registered_pair(t: Instant) -> LabDirector {
    let mut lab = LabDirector::new(ME);
    for (user, path, port) in [("alice", PATH_A, 50000), ("bob", PATH_B, 50002)] {
        let got = text(&lab.handle(EDGE, register(user, path, port, 600).as_bytes(), t));
        assert_eq!(got.len(), 1);
        assert!(got[0].1.starts_with("SIP/2.0 200 OK\r\n"), "{}", got[0].1);
        assert!(got[0].1.contains(&format!(
            "Contact: <sip:{user}@192.168.1.5:{port};transport=tls>;expires=600\r\n"
        )));
        // The response goes back through the edge: both Vias echoed.
        assert!(got[0]
            .1
            .contains("Via: SIP/2.0/TLS 127.0.0.2:5061;branch=z9hG4bKedge-"));
    }
    assert_eq!(
        lab.registered(t),
        ["alice@sipedge.test", "bob@sipedge.test"]
    );
    lab
}

#[test]
fn a_call_goes_to_the_registered_user_by_its_path_and_back_by_the_route_set() {
    let t = now();
    let mut lab = registered_pair(t);
    let out = text(&lab.handle(EDGE, invite("bob", "i1").as_bytes(), t));
    assert_eq!(out.len(), 1);
    let (to, fwd) = &out[0];
    assert_eq!(*to, EDGE);
    let lines: Vec<&str> = fwd.split("\r\n").collect();
    assert_eq!(
        lines[0],
        "INVITE sip:bob@192.168.1.5:50002;transport=tls SIP/2.0"
    );
    assert!(
        lines[1].starts_with("Via: SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bKlab"),
        "{fwd}"
    );
    assert!(lines[1].ends_with(";lc=1"), "{fwd}");
    assert_eq!(
        lines[2],
        "Via: SIP/2.0/TLS 127.0.0.2:5061;branch=z9hG4bKedge-i1"
    );
    assert!(fwd.contains(&format!("Route: {PATH_B}\r\n")), "{fwd}");
    assert!(fwd.contains("Record-Route: <sip:127.0.0.1:5070;transport=tls;lr>\r\n"));
    assert!(fwd.contains("Max-Forwards: 68\r\n"));
    // Still one message the edge's strict parser takes.
    assert!(Message::parse(Bytes::from(fwd.clone()), &LIMITS).is_ok());

    // Bob's 200 comes back (the edge took its own Via off): ours comes off, back to the edge.
    let our_via = lines[1].trim_start_matches("Via: ");
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: {our_via}\r\nVia: SIP/2.0/TLS 127.0.0.2:5061;branch=z9hG4bKedge-i1\r\n\
         Via: SIP/2.0/TLS 192.168.1.5:50000;branch=z9hG4bK-i1\r\n\
         From: <sip:alice@sipedge.test>;tag=a1\r\nTo: <sip:bob@sipedge.test>;tag=b1\r\n\
         Call-ID: call-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    let back = text(&lab.handle(EDGE, ok.as_bytes(), t));
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].0, EDGE);
    assert!(back[0].1.starts_with(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 127.0.0.2:5061;branch=z9hG4bKedge-i1\r\n"
    ));

    // The BYE in the dialog: our Route entry comes off, the rest leads back to the edge.
    let bye = "BYE sip:bob@192.168.1.5:50002;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.2:5061;branch=z9hG4bKedge-bye\r\n\
         Via: SIP/2.0/TLS 192.168.1.5:50000;branch=z9hG4bK-bye\r\n\
         Route: <sip:127.0.0.1:5070;transport=tls;lr>, <sip:vBBB@127.0.0.2:5061;transport=tls;lr>\r\n\
         Max-Forwards: 69\r\n\
         From: <sip:alice@sipedge.test>;tag=a1\r\nTo: <sip:bob@sipedge.test>;tag=b1\r\n\
         Call-ID: call-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    let out = text(&lab.handle(EDGE, bye.as_bytes(), t));
    assert_eq!(out.len(), 1);
    let fwd = &out[0].1;
    assert!(fwd.starts_with("BYE sip:bob@192.168.1.5:50002;transport=tls SIP/2.0\r\n"));
    assert!(
        fwd.contains("\r\nRoute: <sip:vBBB@127.0.0.2:5061;transport=tls;lr>\r\n"),
        "{fwd}"
    );
    assert!(!fwd.contains("127.0.0.1:5070;transport=tls;lr"), "{fwd}");
    assert!(
        !fwd.contains("Record-Route"),
        "no Record-Route inside a dialog"
    );
}

#[test]
fn cancel_and_a_failed_invites_ack_carry_the_invites_branch_without_state() {
    let t = now();
    let mut lab = registered_pair(t);
    let branch_of = |sends: Vec<Send>| {
        let text = String::from_utf8(sends[0].1.clone()).unwrap();
        text.split("branch=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };
    let invite_branch = branch_of(lab.handle(EDGE, invite("bob", "c1").as_bytes(), t));
    let cancel = invite("bob", "c1")
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    assert_eq!(
        branch_of(lab.handle(EDGE, cancel.as_bytes(), t)),
        invite_branch
    );
    let other = branch_of(lab.handle(EDGE, invite("bob", "c2").as_bytes(), t));
    assert_ne!(other, invite_branch);
}

#[test]
fn unknown_users_expired_bindings_and_loops_are_answered_not_forwarded() {
    let t = now();
    let mut lab = registered_pair(t);
    let out = text(&lab.handle(EDGE, invite("carol", "n1").as_bytes(), t));
    assert!(
        out[0].1.starts_with("SIP/2.0 404 Not Found\r\n"),
        "{}",
        out[0].1
    );
    // Registered for 600 s: gone after.
    let later = t + Duration::from_secs(601);
    let out = text(&lab.handle(EDGE, invite("bob", "n2").as_bytes(), later));
    assert!(out[0].1.starts_with("SIP/2.0 404"), "{}", out[0].1);
    let out = text(
        &lab.handle(
            EDGE,
            invite("bob", "n3")
                .replace("Max-Forwards: 69", "Max-Forwards: 0")
                .as_bytes(),
            t,
        ),
    );
    assert!(out[0].1.starts_with("SIP/2.0 483"), "{}", out[0].1);
    // Unregistering: Expires 0.
    let gone = text(&lab.handle(EDGE, register("alice", PATH_A, 50000, 0).as_bytes(), t));
    assert!(gone[0].1.starts_with("SIP/2.0 200 OK"));
    assert_eq!(lab.registered(t), ["bob@sipedge.test"]);
    // A response that is not ours, garbage, and the edge's probe.
    assert!(lab
        .handle(
            EDGE,
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 10.0.0.9;branch=z9hG4bKx\r\n\r\n",
            t
        )
        .is_empty());
    assert!(lab.handle(EDGE, b"\x00\x01garbage", t).is_empty());
    let probe = "OPTIONS sip:director.sipedge.test SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.2:5061;branch=z9hG4bKprobe1\r\nMax-Forwards: 70\r\n\
         From: <sip:edge@sipedge.test>;tag=p\r\nTo: <sip:director.sipedge.test>\r\n\
         Call-ID: probe-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let out = text(&lab.handle(EDGE, probe.as_bytes(), t));
    assert!(out[0].1.starts_with("SIP/2.0 200 OK"), "{}", out[0].1);
}

#[test]
fn addresses_of_record_compare_by_user_and_host() {
    assert_eq!(
        aor(b"sip:Alice@SIPEDGE.test:5061;transport=tls").as_deref(),
        Some("Alice@sipedge.test")
    );
    assert_eq!(aor(b"<sips:bob@[::1]:5061>").as_deref(), Some("bob@[::1]"));
    assert_eq!(aor(b"sip:sipedge.test"), None);
    assert_eq!(aor(b"tel:+1555"), None);
    assert_eq!(
        host_port(b"sip:127.0.0.1:5070;transport=tls;lr"),
        b"127.0.0.1:5070"
    );
    assert_eq!(
        param(b"<sip:a@b;x=1>;expires=30", b"expires"),
        Some(&b"30"[..])
    );
    assert_eq!(param(b"<sip:a@b;expires=9>", b"expires"), None);
}
