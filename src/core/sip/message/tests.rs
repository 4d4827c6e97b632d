use super::*;

const LIMITS: HeadLimits = HeadLimits {
    max_headers: 64,
    max_line_bytes: 2048,
};

pub(crate) const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
    Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK776asdhds;rport\r\n\
    Max-Forwards: 70\r\n\
    To: Bob <sip:bob@example.com>\r\n\
    From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
    Call-ID: a84b4c76e66710@pc33.example.com\r\n\
    CSeq: 314159 INVITE\r\n\
    Contact: <sip:alice@192.0.2.1:5061;transport=tls>\r\n\
    Content-Type: application/sdp\r\n\
    Content-Length: 4\r\n\r\nv=0\n";

fn parse(s: &str) -> Result<Message, Why> {
    Message::parse(Bytes::copy_from_slice(s.as_bytes()), &LIMITS)
}

#[test]
fn valid_invite() {
    let m = parse(INVITE).unwrap();
    assert_eq!(m.method(), Some(Method::Invite));
    assert_eq!(m.cseq, 314159);
    assert_eq!(m.bytes(m.from_tag.unwrap()), b"1928301774");
    assert!(m.to_tag.is_none());
    let via = m.top_via().unwrap();
    assert_eq!(m.bytes(via.host), b"192.0.2.1");
    assert_eq!(via.port, Some(5061));
    assert!(via.rport.is_some());
    assert_eq!(m.max_forwards.map(|(_, n)| n), Some(70));
    assert_eq!(m.bytes(m.body), b"v=0\n");
}

#[test]
fn rejects() {
    let cases: &[(&str, &str, Why)] = &[
        (
            "Content-Length: 4\r\n",
            "Content-Length: 4\r\nl: 4\r\n",
            Why::ConflictingContentLength,
        ),
        (
            "Content-Length: 4",
            "Content-Length: 5",
            Why::ContentLengthMismatch,
        ),
        (
            "CSeq: 314159 INVITE",
            "CSeq: 314159 BYE",
            Why::CSeqMethodMismatch,
        ),
        (
            "Call-ID: a84b4c76e66710@pc33.example.com\r\n",
            "",
            Why::MissingHeader(HeaderName::CallId),
        ),
        (
            "Max-Forwards: 70\r\n",
            "",
            Why::MissingHeader(HeaderName::MaxForwards),
        ),
        (
            "To: Bob <sip:bob@example.com>\r\n",
            "To: Bob <sip:bob@example.com>\r\nt: <sip:x@y>\r\n",
            Why::DuplicateHeader(HeaderName::To),
        ),
        ("branch=z9hG4bK776asdhds", "branch=z9hG4bK", Why::BadBranch),
        (";tag=1928301774", ";tag=", Why::Malformed(HeaderName::From)),
        (
            ";tag=1928301774",
            ";tag=1;tag=2",
            Why::BadTag(HeaderName::From),
        ),
        ("SIP/2.0\r\nVia", "SIP/3.0\r\nVia", Why::UnsupportedVersion),
        ("INVITE sip:bob", "INVITE http:bob", Why::UnsupportedScheme),
        (
            "Max-Forwards: 70",
            "Max-Forwards: 7O",
            Why::Malformed(HeaderName::MaxForwards),
        ),
        (
            "CSeq: 314159",
            "CSeq: 2147483648",
            Why::Malformed(HeaderName::CSeq),
        ),
    ];
    for (from, to, why) in cases {
        let text = INVITE.replacen(from, to, 1);
        assert_ne!(text, INVITE, "case {to:?} did not apply");
        assert_eq!(parse(&text).err(), Some(*why), "case {to:?}");
    }
}

#[test]
fn ipv6_via_and_extension_method() {
    let text = INVITE
        .replace("192.0.2.1:5061;branch", "[2001:db8::1]:5061;branch")
        .replace("INVITE sip:bob@example.com", "SERVICE sip:bob@example.com")
        .replace("314159 INVITE", "314159 SERVICE");
    let m = parse(&text).unwrap();
    assert_eq!(m.method(), Some(Method::Service));
    assert_eq!(m.bytes(m.top_via().unwrap().host), b"[2001:db8::1]");
}
