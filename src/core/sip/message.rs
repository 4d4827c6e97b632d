//! A validated SIP message: the received bytes plus the offsets of everything the edge reads.
//!
//! Owns the message-level checks (RFC 3261 §8.2 and §16.3 as they apply to a proxy): the
//! mandatory headers and their counts, the grammar of each header the edge reads, CSeq
//! against the method, Content-Length against the body, tags and branches. Policy (who may
//! send what, where it goes) is `proxy`'s; editing is `splice`'s.

use bytes::Bytes;

use super::parse::{
    self, find_param, is_lws, is_token, is_token_char, parse_hostport, parse_params, parse_uri,
    split_commas, Head, HeadLimits, Param, Scheme, Span, StartLine,
};
use super::reject::Why;
use super::HeaderName;

/// Longest tag, branch or Call-ID accepted. Real ones are 8–64 characters; anything longer
/// is an attempt to overflow someone's buffer.
pub const MAX_ID_LEN: usize = 256;
/// RFC 3261 §8.1.1.5: the CSeq number MUST be less than 2**31.
const MAX_CSEQ: u32 = (1 << 31) - 1;
/// Max-Forwards above this is refused rather than trusted (RFC 3261 §20.22 suggests 70).
const MAX_MAX_FORWARDS: u32 = 255;
/// The RFC 3261 branch prefix.
pub const MAGIC_COOKIE: &[u8] = b"z9hG4bK";

/// SIP methods the edge tells apart. Extension methods (SERVICE and friends) are `Other`
/// and are forwarded like any non-INVITE request (RFC 3261 §16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Subscribe,
    Notify,
    Refer,
    Message,
    Info,
    Prack,
    Update,
    Publish,
    Service,
    Other,
}

impl Method {
    /// Every method the edge tells apart, in the order of [`Method::index`].
    pub const ALL: [Method; 16] = [
        Method::Invite,
        Method::Ack,
        Method::Bye,
        Method::Cancel,
        Method::Register,
        Method::Options,
        Method::Subscribe,
        Method::Notify,
        Method::Refer,
        Method::Message,
        Method::Info,
        Method::Prack,
        Method::Update,
        Method::Publish,
        Method::Service,
        Method::Other,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The method's name (metrics labels); `other` for extension methods.
    pub fn label(self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Info => "INFO",
            Method::Prack => "PRACK",
            Method::Update => "UPDATE",
            Method::Publish => "PUBLISH",
            Method::Service => "SERVICE",
            Method::Other => "other",
        }
    }

    /// Methods are case-sensitive (RFC 3261 §7.1).
    pub fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"REGISTER" => Method::Register,
            b"OPTIONS" => Method::Options,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"INFO" => Method::Info,
            b"PRACK" => Method::Prack,
            b"UPDATE" => Method::Update,
            b"PUBLISH" => Method::Publish,
            b"SERVICE" => Method::Service,
            _ => Method::Other,
        }
    }

    /// Requests that can create a dialog, and so get Record-Route (RFC 3261 §12, RFC 6665
    /// §4.1.2 for SUBSCRIBE/NOTIFY, RFC 3515 for REFER).
    pub fn forms_dialog(self) -> bool {
        matches!(
            self,
            Method::Invite | Method::Subscribe | Method::Notify | Method::Refer
        )
    }
}

/// Request or response, with what the edge reads of the start line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request {
        method: Method,
        /// The method as written (extension methods compare by bytes).
        method_span: Span,
        uri: Span,
    },
    Response {
        status: u16,
    },
}

/// One Via value (a Via header may hold several, comma-separated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via {
    /// Index of the header line in `head.headers`.
    pub header: usize,
    pub value: Span,
    pub transport: Span,
    /// sent-by host as written (brackets kept for IPv6).
    pub host: Span,
    /// The whole sent-by (`host[:port]`) as written.
    pub sent_by: Span,
    pub port: Option<u16>,
    pub branch: Option<Span>,
    /// `rport` (RFC 3581), flag or with value.
    pub rport: Option<Param>,
    pub received: Option<Param>,
}

/// One entry of a Route, Record-Route or Path header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub header: usize,
    /// The whole element (`<sip:…;lr>;params`).
    pub value: Span,
    /// The URI inside the angle brackets.
    pub uri: Span,
}

/// A message that passed every syntax check. Holds the original bytes.
#[derive(Clone, Debug)]
pub struct Message {
    pub raw: Bytes,
    pub head: Head,
    pub body: Span,
    pub kind: Kind,
    /// Every Via value, top first.
    pub vias: Vec<Via>,
    pub from_tag: Option<Span>,
    pub to_tag: Option<Span>,
    /// The URIs of From and To (inside the angle brackets, if any).
    pub from_uri: Span,
    pub to_uri: Span,
    pub call_id: Span,
    pub cseq: u32,
    pub cseq_method: Span,
    /// Max-Forwards header index and value (mandatory in requests).
    pub max_forwards: Option<(usize, u32)>,
    /// Route entries, top first.
    pub routes: Vec<RouteEntry>,
    /// Proxy-Require option tags (the whole value), when present.
    pub proxy_require: Option<Span>,
}

impl Message {
    /// Parses and validates a whole message (one datagram, or a test's bytes): the body is
    /// everything after the header block and must match Content-Length.
    pub fn parse(raw: Bytes, limits: &HeadLimits) -> Result<Message, Why> {
        let head_end = parse::find_head_end(&raw, 0).ok_or(Why::MalformedStartLine)?;
        let head = parse::parse_head(&raw, head_end, limits)?;
        let content_length = content_length(&raw, &head)?;
        if content_length != raw.len() - head.len {
            return Err(Why::ContentLengthMismatch);
        }
        Message::validate(raw, head)
    }

    /// Validates a framed message: `raw` is exactly head + body, with the body length taken
    /// from Content-Length by the framer.
    pub fn validate(raw: Bytes, head: Head) -> Result<Message, Why> {
        let buf: &[u8] = &raw;
        let kind = match head.start {
            StartLine::Request { method, uri } => {
                check_request_line_version(buf, head.start_line)?;
                match parse_uri(uri.of(buf)) {
                    // RFC 3261 §19.1.1: headers (`?...`) are not allowed in a Request-URI
                    // (RFC 4475 §3.1.2.11 escruri): they would be applied by whoever reads them.
                    Ok(u) if u.has_headers => return Err(Why::MalformedRequestUri),
                    Ok(_) => {}
                    Err(parse::UriError::Scheme) => return Err(Why::UnsupportedScheme),
                    Err(parse::UriError::Malformed) => return Err(Why::MalformedRequestUri),
                }
                Kind::Request {
                    method: Method::from_bytes(method.of(buf)),
                    method_span: method,
                    uri,
                }
            }
            StartLine::Response { status, .. } => Kind::Response { status },
        };
        let is_request = matches!(kind, Kind::Request { .. });

        let mut vias = Vec::with_capacity(4);
        let mut routes = Vec::new();
        let mut from = None;
        let mut to = None;
        let mut call_id = None;
        let mut cseq = None;
        let mut max_forwards = None;
        let mut content_length_seen = false;
        let mut proxy_require = None;
        let mut elements = Vec::with_capacity(4);
        let mut params = Vec::with_capacity(8);

        for (index, h) in head.headers.iter().enumerate() {
            let name = h.name;
            let once = |slot: &mut Option<Span>| {
                if slot.replace(h.value).is_some() {
                    Err(Why::DuplicateHeader(name))
                } else {
                    Ok(())
                }
            };
            match name {
                HeaderName::Via => {
                    elements.clear();
                    split_commas(buf, h.value, &mut elements).map_err(|_| Why::Malformed(name))?;
                    for &v in &elements {
                        vias.push(
                            parse_via(buf, index, v, &mut params).ok_or(Why::Malformed(name))?,
                        );
                    }
                }
                HeaderName::From => once(&mut from)?,
                HeaderName::To => once(&mut to)?,
                HeaderName::CallId => once(&mut call_id)?,
                HeaderName::CSeq => once(&mut cseq)?,
                HeaderName::MaxForwards => {
                    if max_forwards.is_some() {
                        return Err(Why::DuplicateHeader(name));
                    }
                    let n = parse_decimal(h.value.of(buf))
                        .filter(|&n| n <= MAX_MAX_FORWARDS)
                        .ok_or(Why::Malformed(name))?;
                    max_forwards = Some((index, n));
                }
                HeaderName::ContentLength => {
                    // The framer has checked value and count on streams; this catches the
                    // whole-message path and keeps one rule for both.
                    if content_length_seen {
                        return Err(Why::ConflictingContentLength);
                    }
                    content_length_seen = true;
                }
                HeaderName::Route | HeaderName::RecordRoute | HeaderName::Path => {
                    elements.clear();
                    split_commas(buf, h.value, &mut elements).map_err(|_| Why::Malformed(name))?;
                    for &v in &elements {
                        let na = parse_name_addr(buf, v, AddrForm::RouteSip, &mut params)
                            .filter(|na| na.scheme != Some(Scheme::Tel))
                            .ok_or(Why::Malformed(name))?;
                        if name == HeaderName::Route {
                            routes.push(RouteEntry {
                                header: index,
                                value: v,
                                uri: na.uri,
                            });
                        }
                    }
                }
                HeaderName::Contact if h.value.of(buf) != b"*" => {
                    elements.clear();
                    split_commas(buf, h.value, &mut elements).map_err(|_| Why::Malformed(name))?;
                    for &v in &elements {
                        parse_name_addr(buf, v, AddrForm::AnyUri, &mut params)
                            .ok_or(Why::Malformed(name))?;
                    }
                }
                HeaderName::ProxyRequire => {
                    // A list header: several lines are legal (RFC 3261 §7.3.1). The first is
                    // kept for the 420's Unsupported; any at all means 420.
                    proxy_require.get_or_insert(h.value);
                    elements.clear();
                    split_commas(buf, h.value, &mut elements).map_err(|_| Why::Malformed(name))?;
                    if !elements.iter().all(|e| is_token(e.of(buf))) {
                        return Err(Why::Malformed(name));
                    }
                }
                _ => {}
            }
        }

        if vias.is_empty() {
            return Err(Why::MissingHeader(HeaderName::Via));
        }
        let from = from.ok_or(Why::MissingHeader(HeaderName::From))?;
        let to = to.ok_or(Why::MissingHeader(HeaderName::To))?;
        let call_id = call_id.ok_or(Why::MissingHeader(HeaderName::CallId))?;
        let cseq = cseq.ok_or(Why::MissingHeader(HeaderName::CSeq))?;
        if !content_length_seen {
            return Err(Why::MissingContentLength);
        }
        if is_request && max_forwards.is_none() {
            return Err(Why::MissingHeader(HeaderName::MaxForwards));
        }

        let (from_uri, from_tag) = tag_of(buf, from, HeaderName::From, &mut params)?;
        let (to_uri, to_tag) = tag_of(buf, to, HeaderName::To, &mut params)?;
        if is_request && from_tag.is_none() {
            // RFC 3261 §8.1.1.3: the From tag is mandatory; RFC 2543 peers are not served.
            return Err(Why::MissingFromTag);
        }
        if !is_call_id(call_id.of(buf)) {
            return Err(Why::Malformed(HeaderName::CallId));
        }
        let (cseq_number, cseq_method) =
            parse_cseq(buf, cseq).ok_or(Why::Malformed(HeaderName::CSeq))?;
        if let Kind::Request { method_span, .. } = kind {
            if cseq_method.of(buf) != method_span.of(buf) {
                return Err(Why::CSeqMethodMismatch);
            }
            // The top Via is the sender's: its branch identifies the transaction. An RFC
            // 2543 sender's branch has no magic cookie, or there is none: such transactions
            // are named another way (RFC 3261 §17.2.3; see `proxy`). The cookie alone
            // names nothing (RFC 4475 §3.2.1 'badbranch').
            let top = vias.first().ok_or(Why::MissingHeader(HeaderName::Via))?;
            if top.branch.is_some_and(|b| b.of(buf) == MAGIC_COOKIE) {
                return Err(Why::BadBranch);
            }
        }

        let body = Span::new(head.len, raw.len());
        Ok(Message {
            raw,
            head,
            body,
            kind,
            vias,
            from_tag,
            from_uri,
            to_uri,
            to_tag,
            call_id,
            cseq: cseq_number,
            cseq_method,
            max_forwards,
            routes,
            proxy_require,
        })
    }

    pub fn is_request(&self) -> bool {
        matches!(self.kind, Kind::Request { .. })
    }

    pub fn method(&self) -> Option<Method> {
        match self.kind {
            Kind::Request { method, .. } => Some(method),
            Kind::Response { .. } => None,
        }
    }

    /// The bytes of a span of this message.
    pub fn bytes(&self, span: Span) -> &[u8] {
        span.of(&self.raw)
    }

    /// The top Via (every valid message has one).
    /// The host of a URI in this message (`domain` of `sip:user@domain`), as written.
    pub fn uri_host(&self, uri: Span) -> Option<&[u8]> {
        let bytes = self.bytes(uri);
        let parsed = super::parse::parse_uri(bytes).ok()?;
        Some(parsed.host.of(bytes))
    }

    /// The Request-URI, for a request.
    pub fn request_uri(&self) -> Option<Span> {
        match self.kind {
            Kind::Request { uri, .. } => Some(uri),
            Kind::Response { .. } => None,
        }
    }

    pub fn top_via(&self) -> Option<&Via> {
        self.vias.first()
    }
}

fn check_request_line_version(buf: &[u8], start_line: Span) -> Result<(), Why> {
    let line = start_line.of(buf);
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    if version.eq_ignore_ascii_case(b"SIP/2.0") {
        return Ok(());
    }
    let looks_like_version = version.len() > 4
        && version
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
        && version
            .get(4..)
            .is_some_and(|r| r.iter().all(|&b| b.is_ascii_digit() || b == b'.'));
    if looks_like_version {
        Err(Why::UnsupportedVersion)
    } else {
        Err(Why::MalformedStartLine)
    }
}

/// Reads Content-Length from a tokenized head: exactly one, all digits, no sign, no spaces
/// inside. Used by the framer and by [`Message::parse`].
pub fn content_length(buf: &[u8], head: &Head) -> Result<usize, Why> {
    let mut found = None;
    for h in head
        .headers
        .iter()
        .filter(|h| h.name == HeaderName::ContentLength)
    {
        if found.is_some() {
            // Even two equal values are refused: two parsers may pick different ones.
            return Err(Why::ConflictingContentLength);
        }
        let digits = h.value.of(buf);
        if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Why::Malformed(HeaderName::ContentLength));
        }
        found = Some(
            digits
                .iter()
                .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0')),
        );
    }
    found.ok_or(Why::MissingContentLength)
}

/// 1*DIGIT into a u32 (at most 10 digits; overflow is `None`).
fn parse_decimal(d: &[u8]) -> Option<u32> {
    if d.is_empty() || d.len() > 10 || !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = d.iter().fold(0u64, |n, &c| n * 10 + u64::from(c - b'0'));
    u32::try_from(n).ok()
}

/// `via-parm = sent-protocol LWS sent-by *( SEMI via-params )`, RFC 3261 §20.42.
fn parse_via(buf: &[u8], header: usize, v: Span, params: &mut Vec<Param>) -> Option<Via> {
    let mut pos = v.start;
    let read_token = |pos: &mut usize| {
        let start = *pos;
        while *pos < v.end && buf.get(*pos).is_some_and(|&b| is_token_char(b)) {
            *pos += 1;
        }
        (*pos > start).then_some(Span::new(start, *pos))
    };
    let skip_lws = |pos: &mut usize| {
        let start = *pos;
        while *pos < v.end && buf.get(*pos).is_some_and(|&b| is_lws(b)) {
            *pos += 1;
        }
        *pos > start
    };
    let slash = |pos: &mut usize| {
        let mut p = *pos;
        while p < v.end && buf.get(p).is_some_and(|&b| is_lws(b)) {
            p += 1;
        }
        if buf.get(p) != Some(&b'/') {
            return false;
        }
        p += 1;
        while p < v.end && buf.get(p).is_some_and(|&b| is_lws(b)) {
            p += 1;
        }
        *pos = p;
        true
    };
    let name = read_token(&mut pos)?;
    if !slash(&mut pos) {
        return None;
    }
    let version = read_token(&mut pos)?;
    if !slash(&mut pos) {
        return None;
    }
    let transport = read_token(&mut pos)?;
    if !name.of(buf).eq_ignore_ascii_case(b"SIP") || version.of(buf) != b"2.0" {
        return None;
    }
    if !skip_lws(&mut pos) {
        return None;
    }
    let sent_by_start = pos;
    while pos < v.end && buf.get(pos).is_some_and(|&b| b != b';' && !is_lws(b)) {
        pos += 1;
    }
    let sent_by = Span::new(sent_by_start, pos);
    let (host_len, port) = parse_hostport(sent_by.of(buf))?;
    params.clear();
    parse_params(buf, Span::new(pos, v.end), params).ok()?;
    let branch = find_param(buf, params, b"branch").ok()?;
    let branch = match branch {
        Some(Param { value: Some(b), .. }) if b.len() <= MAX_ID_LEN && is_token(b.of(buf)) => {
            Some(b)
        }
        Some(_) => return None,
        None => None,
    };
    let rport = find_param(buf, params, b"rport").ok()?;
    let received = find_param(buf, params, b"received").ok()?;
    Some(Via {
        header,
        value: v,
        transport,
        host: Span::new(sent_by_start, sent_by_start + host_len),
        sent_by,
        port,
        branch,
        rport,
        received,
    })
}

/// What the edge reads of a name-addr or addr-spec with parameters.
#[derive(Clone, Copy, Debug)]
struct NameAddr {
    uri: Span,
    /// `None`: a scheme the edge does not read (From, To, Contact only).
    scheme: Option<Scheme>,
    /// From the first `;` after the address (or empty).
    params: Span,
}

/// What a header's addresses may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddrForm {
    /// Route, Record-Route, Path: name-addr only (RFC 3261 §20.34), a SIP or SIPS URI.
    RouteSip,
    /// From, To, Contact: name-addr or addr-spec, any absoluteURI (RFC 3261 §20.10, RFC 4475
    /// §3.3.4 'unksm2': `To: isbn:2983792873`, `Contact: <name:John_Smith>`).
    AnyUri,
}

/// `( name-addr / addr-spec ) *( SEMI param )` (RFC 3261 §20.20, §20.39).
fn parse_name_addr(
    buf: &[u8],
    v: Span,
    form: AddrForm,
    params: &mut Vec<Param>,
) -> Option<NameAddr> {
    let require_angle = form == AddrForm::RouteSip;
    let bytes = v.of(buf);
    let mut i = 0;
    // display-name: a quoted string, or tokens separated by LWS.
    if bytes.first() == Some(&b'"') {
        i = 1;
        loop {
            match bytes.get(i)? {
                b'\\' => i += 2,
                b'"' => {
                    i += 1;
                    break;
                }
                _ => i += 1,
            }
        }
        while bytes.get(i).is_some_and(|&b| is_lws(b)) {
            i += 1;
        }
        if bytes.get(i) != Some(&b'<') {
            return None;
        }
    } else if let Some(lt) = bytes.iter().position(|&b| b == b'<') {
        let display = bytes.get(..lt)?;
        if !display.iter().all(|&b| is_token_char(b) || is_lws(b)) {
            return None;
        }
        i = lt;
    }
    let (uri, after) = if bytes.get(i) == Some(&b'<') {
        let close = i + bytes.get(i..)?.iter().position(|&b| b == b'>')?;
        (
            Span::new(v.start + i + 1, v.start + close),
            v.start + close + 1,
        )
    } else {
        if require_angle {
            return None;
        }
        // addr-spec form: parameters after the URI belong to the header (RFC 3261 §20.10),
        // and the URI itself cannot contain ';' or '?' or ','.
        let end = bytes.iter().position(|&b| b == b';').unwrap_or(bytes.len());
        let uri = parse::trim(buf, Span::new(v.start, v.start + end));
        if uri.of(buf).iter().any(|&b| matches!(b, b'?' | b',')) {
            return None;
        }
        (uri, v.start + end)
    };
    let scheme = match parse_uri(uri.of(buf)) {
        Ok(parsed) => Some(parsed.scheme),
        Err(parse::UriError::Scheme) if form == AddrForm::AnyUri => {
            is_absolute_uri(uri.of(buf)).then_some(())?;
            None
        }
        Err(_) => return None,
    };
    let params_span = Span::new(after, v.end);
    params.clear();
    parse_params(buf, params_span, params).ok()?;
    Some(NameAddr {
        uri,
        scheme,
        params: params_span,
    })
}

/// `absoluteURI` of a scheme the edge does not read (RFC 3261 §25.1, RFC 3986): a scheme,
/// a colon, and at least one byte of visible ASCII or UTF-8; never whitespace, quotes or
/// angle brackets.
fn is_absolute_uri(uri: &[u8]) -> bool {
    let Some(colon) = uri.iter().position(|&b| b == b':') else {
        return false;
    };
    let (scheme, rest) = uri.split_at(colon);
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && rest.len() > 1
        && rest
            .iter()
            .all(|&b| b > b' ' && b != 0x7f && !matches!(b, b'<' | b'>' | b'"'))
}

/// The URI and `tag` of a From or To value: at most one tag, a non-empty token of sane
/// length.
fn tag_of(
    buf: &[u8],
    value: Span,
    name: HeaderName,
    params: &mut Vec<Param>,
) -> Result<(Span, Option<Span>), Why> {
    let na = parse_name_addr(buf, value, AddrForm::AnyUri, params).ok_or(Why::Malformed(name))?;
    params.clear();
    parse_params(buf, na.params, params).map_err(|_| Why::Malformed(name))?;
    match find_param(buf, params, b"tag") {
        Err(_) => Err(Why::BadTag(name)),
        Ok(None) => Ok((na.uri, None)),
        Ok(Some(Param { value: Some(t), .. })) if t.len() <= MAX_ID_LEN && is_token(t.of(buf)) => {
            Ok((na.uri, Some(t)))
        }
        Ok(Some(_)) => Err(Why::BadTag(name)),
    }
}

/// `callid = word [ "@" word ]` (RFC 3261 §25.1).
fn is_call_id(id: &[u8]) -> bool {
    fn is_word(w: &[u8]) -> bool {
        !w.is_empty()
            && w.iter().all(|&b| {
                is_token_char(b)
                    || matches!(
                        b,
                        b'(' | b')'
                            | b'<'
                            | b'>'
                            | b':'
                            | b'\\'
                            | b'"'
                            | b'/'
                            | b'['
                            | b']'
                            | b'?'
                            | b'{'
                            | b'}'
                    )
            })
    }
    if id.len() > MAX_ID_LEN {
        return false;
    }
    let mut parts = id.splitn(2, |&b| b == b'@');
    match (parts.next(), parts.next()) {
        (Some(a), None) => is_word(a),
        (Some(a), Some(b)) => is_word(a) && is_word(b),
        _ => false,
    }
}

/// `CSeq = 1*DIGIT LWS Method`.
fn parse_cseq(buf: &[u8], value: Span) -> Option<(u32, Span)> {
    let bytes = value.of(buf);
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    let number = parse_decimal(bytes.get(..digits)?).filter(|&n| n <= MAX_CSEQ)?;
    let ws = bytes
        .get(digits..)?
        .iter()
        .take_while(|&&b| is_lws(b))
        .count();
    if ws == 0 {
        return None;
    }
    let method = Span::new(value.start + digits + ws, value.end);
    is_token(method.of(buf)).then_some((number, method))
}

#[cfg(test)]
mod tests;
