//! Why a message is refused, and the one mapping from that reason to what the sender gets:
//! a SIP status and reason phrase, or nothing (a silent drop).
//!
//! Responses are built from the sender's own lines (Via, From, To, Call-ID, CSeq; RFC 3261
//! §8.2.6) found by a lenient scan of the raw bytes, so that even a request whose header
//! block could not be tokenized gets an answer when one can be formed safely. Nothing here
//! is forwarded to the inside: a reject only ever goes back to where the request came from.

use super::HeaderName;

/// Every reason the edge refuses a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Why {
    // --- size (513) ---
    HeaderBlockTooLarge,
    BodyTooLarge,
    LineTooLong,
    TooManyHeaders,
    // --- framing and syntax (400 unless said) ---
    MissingContentLength,
    ConflictingContentLength,
    ContentLengthMismatch,
    MalformedStartLine,
    /// 505.
    UnsupportedVersion,
    MalformedRequestUri,
    /// 416.
    UnsupportedScheme,
    /// A control byte, NUL, bare CR/LF or invalid UTF-8 in the header block.
    IllegalByte(Option<HeaderName>),
    /// Whitespace or a non-token byte inside a header name, or no colon.
    MalformedHeaderName,
    /// A continuation line with no header before it.
    FoldingAtStart,
    MissingHeader(HeaderName),
    DuplicateHeader(HeaderName),
    Malformed(HeaderName),
    CSeqMethodMismatch,
    BadBranch,
    BadTag(HeaderName),
    /// A request without a From tag (RFC 3261 §8.1.1.3; RFC 2543 peers are not served).
    MissingFromTag,
    // --- proxy checks (RFC 3261 §16.3) ---
    /// 483: Max-Forwards reached 0.
    TooManyHops,
    /// 482: the request already went through this edge from outside.
    Loop,
    /// 420: a Proxy-Require option tag the edge does not support.
    BadExtension,
    // --- policy and routing ---
    /// 403: the Request-URI names no domain this edge serves (nor its external listener).
    DomainNotServed,
    /// 403: a Request-URI that names the edge itself other than as its external listener,
    /// in a dialog.
    RequestUriNotAllowed,
    /// 403: `maddr` in the Request-URI or a Route from outside would redirect the request.
    MaddrNotAllowed,
    /// 403: a Route from outside left after the edge's own entries, in a request that
    /// proves no dialog the edge recorded (or one naming the edge itself).
    RouteNotAllowed,
    /// 403: a flow token failed its signature check.
    InvalidFlowToken,
    /// 404: a request from the inside names no remote flow.
    NoRoute,
    /// 430 (RFC 5626): the flow named by the token is gone.
    FlowFailed,
    /// 408: the next hop did not answer within the transaction timeout.
    RequestTimeout,
    /// 408: the header block did not arrive within `limits.header_timeout`; the connection
    /// closes.
    HeaderTimeout,
    /// 503 with Retry-After: the source (or the edge) holds as many calls as it may.
    CallLimit {
        retry_after_secs: u32,
    },
    /// 503 with Retry-After: no next hop is up.
    PoolUnavailable {
        retry_after_secs: u32,
    },
    /// 503 with Retry-After: the edge is shedding load.
    Overloaded {
        retry_after_secs: u32,
    },
    /// 503 with Retry-After: the sender exceeded its request rate (per connection or source).
    RateLimited {
        retry_after_secs: u32,
    },
    /// A response that names no flow of this edge: dropped.
    StrayResponse,
    /// 403: relay credentials are issued to the inside only.
    CredentialsFromOutside,
    // --- federation ---
    /// 403: a partner edge sent a request whose From domain is not one of that partner's.
    PartnerDomainMismatch,
    /// 403: a request claims a partner's domain (From) on a connection that is not that
    /// partner's edge (no certificate naming it).
    NotPartnerEdge,
    /// 403: a partner edge sent a request for a domain this edge does not serve (To).
    PartnerTargetNotServed,
    /// 403: partners do not register users here.
    PartnerRegister,
    /// 503 with Retry-After: no connection to the partner edge could be made.
    PartnerUnavailable {
        retry_after_secs: u32,
    },
    /// 503 with Retry-After: the partner holds as many dialogs as it may.
    PartnerDialogs {
        retry_after_secs: u32,
    },
    /// 503 with Retry-After: the edge is draining (shutting down gracefully); new work goes
    /// to another member of the pool.
    Draining {
        retry_after_secs: u32,
    },
}

impl Why {
    /// The status and reason phrase to answer with; `None` when the only answer is silence
    /// (responses are never answered; see [`response`] for when a request cannot be).
    pub fn status(&self) -> Option<(u16, &'static str)> {
        use HeaderName as H;
        Some(match self {
            Why::HeaderBlockTooLarge => (513, "Message Too Large"),
            Why::BodyTooLarge => (513, "Message Body Too Large"),
            Why::LineTooLong => (513, "Header Line Too Long"),
            Why::TooManyHeaders => (513, "Too Many Headers"),
            Why::MissingContentLength => (400, "Missing Content-Length"),
            Why::ConflictingContentLength => (400, "Conflicting Content-Length"),
            Why::ContentLengthMismatch => (400, "Content-Length Mismatch"),
            Why::MalformedStartLine => (400, "Malformed Request Line"),
            Why::UnsupportedVersion => (505, "Version Not Supported"),
            Why::MalformedRequestUri => (400, "Malformed Request-URI"),
            Why::UnsupportedScheme => (416, "Unsupported URI Scheme"),
            Why::IllegalByte(_) => (400, "Illegal Character"),
            Why::MalformedHeaderName => (400, "Malformed Header Name"),
            Why::FoldingAtStart => (400, "Malformed Header Folding"),
            Why::MissingHeader(h) => (400, missing_phrase(*h)),
            Why::DuplicateHeader(h) => (400, duplicate_phrase(*h)),
            Why::Malformed(h) => (400, malformed_phrase(*h)),
            Why::CSeqMethodMismatch => (400, "CSeq Method Mismatch"),
            Why::BadBranch => (400, "Malformed Via Branch"),
            Why::BadTag(H::To) => (400, "Malformed To Tag"),
            Why::BadTag(_) => (400, "Malformed From Tag"),
            Why::MissingFromTag => (400, "Missing From Tag"),
            Why::TooManyHops => (483, "Too Many Hops"),
            Why::Loop => (482, "Loop Detected"),
            Why::BadExtension => (420, "Bad Extension"),
            Why::DomainNotServed => (403, "Domain Not Served"),
            Why::RequestUriNotAllowed => (403, "Request-URI Not Allowed"),
            Why::MaddrNotAllowed => (403, "maddr Not Allowed"),
            Why::RouteNotAllowed => (403, "Route Not Allowed"),
            Why::InvalidFlowToken => (403, "Invalid Flow Token"),
            Why::NoRoute => (404, "No Route"),
            Why::FlowFailed => (430, "Flow Failed"),
            Why::RequestTimeout => (408, "Request Timeout"),
            Why::HeaderTimeout => (408, "Request Timeout"),
            Why::CallLimit { .. } => (503, "Call Limit"),
            Why::PoolUnavailable { .. } => (503, "Service Unavailable"),
            Why::Overloaded { .. } => (503, "Overloaded"),
            Why::RateLimited { .. } => (503, "Rate Limited"),
            Why::CredentialsFromOutside => (403, "Credentials Issued Inside Only"),
            Why::PartnerDomainMismatch => (403, "From Domain Not Owned By Partner"),
            Why::NotPartnerEdge => (403, "Partner Domain From Non-Partner"),
            Why::PartnerTargetNotServed => (403, "Domain Not Served"),
            Why::PartnerRegister => (403, "Partners Do Not Register"),
            Why::PartnerUnavailable { .. } => (503, "Partner Unavailable"),
            Why::PartnerDialogs { .. } => (503, "Partner Dialog Limit"),
            Why::Draining { .. } => (503, "Draining"),
            Why::StrayResponse => return None,
        })
    }

    /// A short stable label for logs and metrics (never user data).
    pub fn label(&self) -> &'static str {
        match self {
            Why::HeaderBlockTooLarge => "header_block_too_large",
            Why::BodyTooLarge => "body_too_large",
            Why::LineTooLong => "line_too_long",
            Why::TooManyHeaders => "too_many_headers",
            Why::MissingContentLength => "missing_content_length",
            Why::ConflictingContentLength => "conflicting_content_length",
            Why::ContentLengthMismatch => "content_length_mismatch",
            Why::MalformedStartLine => "malformed_start_line",
            Why::UnsupportedVersion => "unsupported_version",
            Why::MalformedRequestUri => "malformed_request_uri",
            Why::UnsupportedScheme => "unsupported_scheme",
            Why::IllegalByte(_) => "illegal_byte",
            Why::MalformedHeaderName => "malformed_header_name",
            Why::FoldingAtStart => "folding_at_start",
            Why::MissingHeader(_) => "missing_header",
            Why::DuplicateHeader(_) => "duplicate_header",
            Why::Malformed(_) => "malformed_header",
            Why::CSeqMethodMismatch => "cseq_method_mismatch",
            Why::BadBranch => "bad_branch",
            Why::BadTag(_) => "bad_tag",
            Why::MissingFromTag => "missing_from_tag",
            Why::TooManyHops => "too_many_hops",
            Why::Loop => "loop",
            Why::BadExtension => "bad_extension",
            Why::DomainNotServed => "domain_not_served",
            Why::RequestUriNotAllowed => "request_uri_not_allowed",
            Why::MaddrNotAllowed => "maddr_not_allowed",
            Why::RouteNotAllowed => "route_not_allowed",
            Why::InvalidFlowToken => "invalid_flow_token",
            Why::NoRoute => "no_route",
            Why::FlowFailed => "flow_failed",
            Why::RequestTimeout => "request_timeout",
            Why::HeaderTimeout => "header_timeout",
            Why::CallLimit { .. } => "call_limit",
            Why::PoolUnavailable { .. } => "pool_unavailable",
            Why::Overloaded { .. } => "overloaded",
            Why::RateLimited { .. } => "rate_limited",
            Why::StrayResponse => "stray_response",
            Why::CredentialsFromOutside => "credentials_from_outside",
            Why::PartnerDomainMismatch => "partner_domain_mismatch",
            Why::NotPartnerEdge => "not_partner_edge",
            Why::PartnerTargetNotServed => "partner_target_not_served",
            Why::PartnerRegister => "partner_register",
            Why::PartnerUnavailable { .. } => "partner_unavailable",
            Why::PartnerDialogs { .. } => "partner_dialogs",
            Why::Draining { .. } => "draining",
        }
    }

    /// Every label, in a fixed order: per-reason counters are indexed by [`Why::index`].
    pub const LABELS: &'static [&'static str] = &[
        "header_block_too_large",
        "body_too_large",
        "line_too_long",
        "too_many_headers",
        "missing_content_length",
        "conflicting_content_length",
        "content_length_mismatch",
        "malformed_start_line",
        "unsupported_version",
        "malformed_request_uri",
        "unsupported_scheme",
        "illegal_byte",
        "malformed_header_name",
        "folding_at_start",
        "missing_header",
        "duplicate_header",
        "malformed_header",
        "cseq_method_mismatch",
        "bad_branch",
        "bad_tag",
        "missing_from_tag",
        "too_many_hops",
        "loop",
        "bad_extension",
        "domain_not_served",
        "invalid_flow_token",
        "no_route",
        "flow_failed",
        "request_timeout",
        "pool_unavailable",
        "overloaded",
        "rate_limited",
        "stray_response",
        "credentials_from_outside",
        "partner_domain_mismatch",
        "not_partner_edge",
        "partner_target_not_served",
        "partner_register",
        "partner_unavailable",
        "partner_dialogs",
        "draining",
        "request_uri_not_allowed",
        "maddr_not_allowed",
        "route_not_allowed",
        "header_timeout",
        "call_limit",
    ];

    /// Position of this reason's label in [`Why::LABELS`].
    pub fn index(&self) -> usize {
        let label = self.label();
        Self::LABELS.iter().position(|l| *l == label).unwrap_or(0)
    }

    /// Whether the sender's own bytes caused this (a strike against the source), as opposed
    /// to the edge's or the pool's state.
    pub fn is_offence(&self) -> bool {
        !matches!(
            self,
            Why::PoolUnavailable { .. }
                | Why::Overloaded { .. }
                | Why::RateLimited { .. }
                | Why::PartnerUnavailable { .. }
                | Why::PartnerDialogs { .. }
                | Why::Draining { .. }
                | Why::RequestTimeout
                | Why::FlowFailed
                | Why::CallLimit { .. }
        )
    }
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status() {
            Some((code, phrase)) => write!(f, "{code} {phrase}"),
            None => f.write_str("drop"),
        }
    }
}

fn missing_phrase(h: HeaderName) -> &'static str {
    match h {
        HeaderName::Via => "Missing Via Header",
        HeaderName::From => "Missing From Header",
        HeaderName::To => "Missing To Header",
        HeaderName::CallId => "Missing Call-ID Header",
        HeaderName::CSeq => "Missing CSeq Header",
        HeaderName::MaxForwards => "Missing Max-Forwards Header",
        HeaderName::ContentLength => "Missing Content-Length",
        _ => "Missing Header",
    }
}

fn duplicate_phrase(h: HeaderName) -> &'static str {
    match h {
        HeaderName::From => "Duplicate From Header",
        HeaderName::To => "Duplicate To Header",
        HeaderName::CallId => "Duplicate Call-ID Header",
        HeaderName::CSeq => "Duplicate CSeq Header",
        HeaderName::MaxForwards => "Duplicate Max-Forwards Header",
        HeaderName::ContentLength => "Conflicting Content-Length",
        HeaderName::ProxyRequire => "Duplicate Proxy-Require Header",
        _ => "Duplicate Header",
    }
}

fn malformed_phrase(h: HeaderName) -> &'static str {
    match h {
        HeaderName::Via => "Malformed Via Header",
        HeaderName::From => "Malformed From Header",
        HeaderName::To => "Malformed To Header",
        HeaderName::CallId => "Malformed Call-ID Header",
        HeaderName::CSeq => "Malformed CSeq Header",
        HeaderName::MaxForwards => "Malformed Max-Forwards Header",
        HeaderName::ContentLength => "Malformed Content-Length",
        HeaderName::Route => "Malformed Route Header",
        HeaderName::RecordRoute => "Malformed Record-Route Header",
        HeaderName::Path => "Malformed Path Header",
        HeaderName::Contact => "Malformed Contact Header",
        HeaderName::ProxyRequire => "Malformed Proxy-Require Header",
        _ => "Malformed Header",
    }
}

/// The edge's whole answer to a refused request (`raw`, as it arrived): the status and
/// reason of `why`, a `Retry-After` for every refusal that is only for now, and for an
/// unsupported extension the `Unsupported` list (RFC 3261 §8.2.2.3) from the request's
/// `Proxy-Require` value. `None` when silence is the answer (see [`response`]).
pub fn answer(raw: &[u8], why: Why, proxy_require: Option<&[u8]>) -> Option<Vec<u8>> {
    let (status, reason) = why.status()?;
    let extra = match why {
        Why::PoolUnavailable { retry_after_secs }
        | Why::PartnerUnavailable { retry_after_secs }
        | Why::PartnerDialogs { retry_after_secs }
        | Why::Draining { retry_after_secs }
        | Why::Overloaded { retry_after_secs }
        | Why::CallLimit { retry_after_secs }
        | Why::RateLimited { retry_after_secs } => {
            format!("Retry-After: {retry_after_secs}\r\n").into_bytes()
        }
        Why::BadExtension => {
            let mut line = b"Unsupported: ".to_vec();
            line.extend_from_slice(proxy_require.unwrap_or_default());
            line.extend_from_slice(b"\r\n");
            line
        }
        _ => Vec::new(),
    };
    response(raw, status, reason, &extra)
}

/// Builds the response to a refused request from the request's raw bytes, or `None` when no
/// response can be formed: the message is a response or an ACK (RFC 3261 §17.2.1: ACKs are
/// never answered), or a line the response must echo (Via, From, To, Call-ID, CSeq) is
/// missing, ambiguous or holds bytes that are unsafe to echo.
///
/// `extra` holds whole header lines (with CRLF) to add, e.g. `Retry-After: 30\r\n`.
pub fn response(raw: &[u8], status: u16, reason: &str, extra: &[u8]) -> Option<Vec<u8>> {
    response_with_body(raw, status, reason, extra, None)
}

/// [`response`] with a body (`content_type`, bytes): answers the edge gives itself (the A/V
/// authentication service).
pub fn response_with_body(
    raw: &[u8],
    status: u16,
    reason: &str,
    extra: &[u8],
    body: Option<(&str, &[u8])>,
) -> Option<Vec<u8>> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |p| p + 2);
    let head = raw.get(..head_end)?;
    let mut lines = LogicalLines { buf: head, pos: 0 };
    let start = lines.next()?;
    let method = start.split(|&b| b == b' ').next()?;
    if method.is_empty()
        || start.len() < 4
        || start
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
        || method == b"ACK"
    {
        return None;
    }

    let mut vias: Vec<&[u8]> = Vec::new();
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    for line in lines {
        if !is_echo_safe(line) {
            // A line we would not echo is fine as long as we need not echo it.
            let name = header_name_of(line);
            if matches!(
                name,
                HeaderName::Via
                    | HeaderName::From
                    | HeaderName::To
                    | HeaderName::CallId
                    | HeaderName::CSeq
            ) {
                return None;
            }
            continue;
        }
        let slot = match header_name_of(line) {
            HeaderName::Via => {
                vias.push(line);
                continue;
            }
            HeaderName::From => &mut from,
            HeaderName::To => &mut to,
            HeaderName::CallId => &mut call_id,
            HeaderName::CSeq => &mut cseq,
            _ => continue,
        };
        if slot.replace(line).is_some() {
            return None; // two of a singleton: which one would the sender match?
        }
    }
    // Without a Call-ID the answer can still be matched (RFC 3261 §17.1.3 matches on the
    // branch and the CSeq method): it goes without one rather than not at all.
    let (from, to, cseq) = (from?, to?, cseq?);
    if vias.is_empty() {
        return None;
    }

    let mut out = Vec::with_capacity(256 + head.len() / 2);
    out.extend_from_slice(format!("SIP/2.0 {status} {reason}\r\n").as_bytes());
    for via in vias {
        out.extend_from_slice(via);
        out.extend_from_slice(b"\r\n");
    }
    for line in [Some(from), Some(to), call_id, Some(cseq)]
        .into_iter()
        .flatten()
    {
        out.extend_from_slice(line);
        if std::ptr::eq(line, to) && !has_tag(line) && status > 100 {
            // RFC 3261 §8.2.6.2: the UAS adds a To tag; derive it from the request so a
            // retransmission gets the same one.
            let tag = fnv1a(call_id.unwrap_or_default())
                ^ fnv1a(cseq).rotate_left(17)
                ^ fnv1a(from).rotate_left(31);
            out.extend_from_slice(format!(";tag=se{tag:016x}").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"Server: sipedge\r\n");
    match body {
        Some((content_type, body)) => {
            out.extend_from_slice(
                format!(
                    "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(body);
        }
        None => out.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
    }
    Some(out)
}

/// [`response`] to a request whose header block has not fully arrived (the header
/// timeout): only the complete lines are read, so a truncated Via or CSeq is never echoed.
pub fn response_to_partial(raw: &[u8], status: u16, reason: &str) -> Option<Vec<u8>> {
    let end = raw.windows(2).rposition(|w| w == b"\r\n")? + 2;
    let mut complete = raw.get(..end)?.to_vec();
    // A head that stops after a full line: close it so that the scan ends there.
    complete.extend_from_slice(b"\r\n");
    response(&complete, status, reason, b"")
}

/// Physical lines joined with their continuation lines, each without its final CRLF.
struct LogicalLines<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for LogicalLines<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.buf.get(self.pos..)?;
        if rest.is_empty() || rest.starts_with(b"\r\n") {
            return None;
        }
        let start = self.pos;
        let mut end = start;
        loop {
            let rest = self.buf.get(end..)?;
            let crlf = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .map_or(rest.len(), |p| p);
            end += crlf;
            let after = end + 2;
            // Continuation lines belong to this one (RFC 3261 §7.3.1).
            if self
                .buf
                .get(after)
                .is_some_and(|&b| b == b' ' || b == b'\t')
                && start != 0
            {
                end = after;
                continue;
            }
            self.pos = after.min(self.buf.len() + 2);
            return self.buf.get(start..end);
        }
    }
}

fn header_name_of(line: &[u8]) -> HeaderName {
    let colon = line.iter().position(|&b| b == b':').unwrap_or(0);
    let name = line.get(..colon).unwrap_or_default();
    let trimmed_len = name.len()
        - name
            .iter()
            .rev()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
    HeaderName::from_bytes(name.get(..trimmed_len).unwrap_or_default())
}

/// A line is safe to echo if every byte is HTAB, visible ASCII, SP, a byte above 0x7f, or
/// the CR LF of a fold (CR LF followed by SP or HTAB). Bytes that are not UTF-8 are echoed:
/// the answer goes back only to the sender who wrote them, and refusing to answer would
/// leave it without a status.
fn is_echo_safe(line: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = line.get(i) {
        match b {
            b'\r' => {
                let folded = line.get(i + 1) == Some(&b'\n')
                    && line.get(i + 2).is_some_and(|&c| c == b' ' || c == b'\t');
                if !folded {
                    return false;
                }
                i += 3;
                continue;
            }
            b'\t' => {}
            0..=0x1f | 0x7f => return false,
            _ => {}
        }
        i += 1;
    }
    true
}

/// Whether a To/From line carries a `tag` parameter outside `<…>` and quotes.
fn has_tag(line: &[u8]) -> bool {
    let mut in_quote = false;
    let mut in_angle = false;
    let mut prev_backslash = false;
    for (i, &b) in line.iter().enumerate() {
        if in_quote {
            if b == b'"' && !prev_backslash {
                in_quote = false;
            }
            prev_backslash = b == b'\\' && !prev_backslash;
            continue;
        }
        match b {
            b'"' => in_quote = true,
            b'<' => in_angle = true,
            b'>' => in_angle = false,
            b';' if !in_angle => {
                let rest = skip_wsp(line.get(i + 1..).unwrap_or_default());
                if rest
                    .get(..3)
                    .is_some_and(|n| n.eq_ignore_ascii_case(b"tag"))
                    && skip_wsp(rest.get(3..).unwrap_or_default()).first() == Some(&b'=')
                {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

fn skip_wsp(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&c| c == b' ' || c == b'\t').count();
    s.get(n..).unwrap_or_default()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_every_reason_has_its_own_index() {
        let mut seen = std::collections::BTreeSet::new();
        for l in Why::LABELS {
            assert!(seen.insert(*l), "duplicate label {l}");
        }
        let samples = [
            Why::HeaderBlockTooLarge,
            Why::MissingHeader(HeaderName::Via),
            Why::RateLimited {
                retry_after_secs: 1,
            },
            Why::StrayResponse,
            Why::Overloaded {
                retry_after_secs: 1,
            },
        ];
        for why in samples {
            assert_eq!(Why::LABELS[why.index()], why.label());
        }
        assert_eq!(Why::LABELS.len(), seen.len());
        assert!(Why::MalformedStartLine.is_offence());
        assert!(!Why::PoolUnavailable {
            retry_after_secs: 1
        }
        .is_offence());
    }

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK1\r\n\
        Via: SIP/2.0/TLS 192.0.2.9;branch=z9hG4bK0\r\n\
        Max-Forwards: 0\r\n\
        From: <sip:alice@example.com>;tag=a1\r\n\
        To: <sip:bob@example.com>\r\n\
        Call-ID: c1@192.0.2.1\r\n\
        CSeq: 1 INVITE\r\n\
        Subject: hi\r\n\
        Content-Length: 0\r\n\r\n";

    #[test]
    fn echoes_vias_and_dialog_headers_and_adds_to_tag() {
        let r = response(INVITE.as_bytes(), 483, "Too Many Hops", b"").unwrap();
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("SIP/2.0 483 Too Many Hops\r\nVia: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK1\r\nVia: SIP/2.0/TLS 192.0.2.9;branch=z9hG4bK0\r\n"));
        assert!(text.contains("To: <sip:bob@example.com>;tag=se"));
        assert!(!text.contains("Subject"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn never_answers_ack_or_responses_or_ambiguity() {
        let ack = INVITE
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK");
        assert!(response(ack.as_bytes(), 400, "x", b"").is_none());
        assert!(response(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", 400, "x", b"").is_none());
        let two_to = INVITE.replace("Subject: hi", "t: <sip:eve@example.com>");
        assert!(response(two_to.as_bytes(), 400, "x", b"").is_none());
        let injected = INVITE.replace("Call-ID: c1@192.0.2.1", "Call-ID: c1\nVia: evil");
        assert!(response(injected.as_bytes(), 400, "x", b"").is_none());
    }

    #[test]
    fn has_tag_ignores_uri_params() {
        assert!(!has_tag(b"To: <sip:bob@x;tag=1>"));
        assert!(has_tag(b"To: <sip:bob@x> ; TAG = 1"));
        assert!(has_tag(b"t: sip:bob@x;tag=1"));
    }
}
