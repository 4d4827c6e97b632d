//! The edge's own SIP tokenizer: offsets over the received bytes, strict by design.
//!
//! Owns: the start line, the header block (names, values, folding, forbidden bytes) and the
//! small grammars the edge itself must read (URIs, host/port, parameters, comma lists).
//! It does not decide policy and never copies: every piece is a [`Span`] into the original
//! buffer, so the proxy can forward the original bytes with splices (see `splice`).
//!
//! Where RFC 3261 allows a lenient reading, this module takes the one that cannot be
//! smuggled: bare CR or LF, NUL and other control bytes, whitespace inside a header name and
//! non-UTF-8 header bytes are rejected rather than repaired.

use super::reject::Why;
use super::HeaderName;

/// A half-open byte range into the message buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    /// The bytes of this span; empty if the span does not fit `buf` (cannot happen for spans
    /// made by this module over the same buffer, but input paths never index unchecked).
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start..self.end).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The first line of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Span, uri: Span },
    Response { status: u16, reason: Span },
}

/// One header field (one logical line, continuation lines included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    /// The name as written (compact or long form, any case).
    pub name_span: Span,
    /// The value, without leading and trailing whitespace. May contain folds (CRLF + WSP).
    pub value: Span,
    /// The whole field including its final CRLF: what to delete to remove the header.
    pub line: Span,
}

/// The tokenized header block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub start: StartLine,
    /// The start line including its CRLF.
    pub start_line: Span,
    pub headers: Vec<Header>,
    /// Offset just past the empty line that ends the header block.
    pub len: usize,
    /// Whether any header is folded over several lines (the splicer flattens folds).
    pub folded: bool,
}

/// Limits the tokenizer enforces on a header block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    pub max_headers: usize,
    pub max_line_bytes: usize,
}

const SP: u8 = b' ';
const HTAB: u8 = b'\t';

fn is_wsp(b: u8) -> bool {
    b == SP || b == HTAB
}

/// Whitespace inside a value span: SP, HTAB and the CR LF of a fold (the tokenizer has
/// already proved that every CR or LF inside a value belongs to a fold).
pub fn is_lws(b: u8) -> bool {
    matches!(b, SP | HTAB | b'\r' | b'\n')
}

/// RFC 3261 §25.1 `token` characters.
pub fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token_char(b))
}

/// Finds the end of the header block (the offset just past CRLF CRLF), scanning from
/// `from` (callers resume where the previous scan stopped, so a slow sender costs O(n)).
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    let hay = buf.get(start..)?;
    hay.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| start + p + 4)
}

/// Tokenizes a header block. `buf` holds at least `head_end` bytes; `head_end` is the offset
/// just past the CRLF CRLF that ends it (see [`find_head_end`]).
pub fn parse_head(buf: &[u8], head_end: usize, limits: &HeadLimits) -> Result<Head, Why> {
    let head = buf.get(..head_end).ok_or(Why::MalformedStartLine)?;
    // Header bytes are UTF-8 text (RFC 3261 §7.3.1 allows UTF8-NONASCII); anything else is
    // rejected rather than passed on to parsers that may read it differently.
    if std::str::from_utf8(head).is_err() {
        return Err(Why::IllegalByte(None));
    }

    let first_end = line_end(head, 0)?;
    if first_end > limits.max_line_bytes {
        return Err(Why::LineTooLong);
    }
    let start = parse_start_line(head, Span::new(0, first_end))?;
    let start_line = Span::new(0, first_end + 2);

    let mut headers: Vec<Header> = Vec::with_capacity(16);
    let mut folded = false;
    let mut pos = first_end + 2;
    loop {
        let end = line_end(head, pos)?;
        if end == pos {
            // The empty line: end of the header block, which must be where the caller found
            // it (a bare LF cannot make an earlier "end" that smuggles headers into a body).
            if end + 2 != head_end {
                return Err(Why::IllegalByte(None));
            }
            // Values are checked whole, folds included: a quoted string may span a fold.
            for h in &headers {
                let value = Span::new(h.name_span.end, h.line.end.saturating_sub(2));
                check_value_bytes(value.of(head), Some(h.name))?;
            }
            return Ok(Head {
                start,
                start_line,
                headers,
                len: end + 2,
                folded,
            });
        }
        if end - pos > limits.max_line_bytes {
            return Err(Why::LineTooLong);
        }
        let line = Span::new(pos, end);
        let first = head.get(pos).copied().unwrap_or(0);
        if is_wsp(first) {
            // A continuation line (RFC 3261 §7.3.1 folding) extends the previous header.
            // Before the first header it has nothing to extend.
            let last = headers.last_mut().ok_or(Why::FoldingAtStart)?;
            folded = true;
            last.line.end = end + 2;
            let trimmed = trim_end(head, Span::new(last.value.start, end));
            if last.value.is_empty() {
                last.value = trim_start(head, trimmed);
            } else {
                last.value.end = trimmed.end;
            }
        } else {
            if headers.len() >= limits.max_headers {
                return Err(Why::TooManyHeaders);
            }
            headers.push(parse_header_line(head, line)?);
        }
        pos = end + 2;
    }
}

/// Offset of the CRLF ending the line that starts at `pos`. The first CR or LF must be the
/// CR of a CRLF: a bare CR or LF is how headers get injected toward the next hop.
fn line_end(buf: &[u8], pos: usize) -> Result<usize, Why> {
    let rest = buf.get(pos..).ok_or(Why::MalformedStartLine)?;
    let i = rest
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .ok_or(Why::MalformedStartLine)?;
    if rest.get(i..i + 2) != Some(b"\r\n") {
        return Err(Why::IllegalByte(None));
    }
    Ok(pos + i)
}

fn parse_header_line(head: &[u8], line: Span) -> Result<Header, Why> {
    let bytes = line.of(head);
    let colon = bytes
        .iter()
        .position(|&b| b == b':')
        .ok_or(Why::MalformedHeaderName)?;
    let raw_name = bytes.get(..colon).unwrap_or_default();
    // HCOLON = *( SP / HTAB ) ":" SWS: whitespace may stand between name and colon, never
    // inside the name.
    let name_len = raw_name.len() - raw_name.iter().rev().take_while(|&&b| is_wsp(b)).count();
    let name = raw_name.get(..name_len).unwrap_or_default();
    if !is_token(name) {
        return Err(Why::MalformedHeaderName);
    }
    let name_kind = HeaderName::from_bytes(name);
    let value_raw = Span::new(line.start + colon + 1, line.end);
    let value = trim_start(head, trim_end(head, value_raw));
    Ok(Header {
        name: name_kind,
        name_span: Span::new(line.start, line.start + name_len),
        value,
        line: Span::new(line.start, line.end + 2),
    })
}

/// Whether UTF-8 text holds NEL (U+0085), LS (U+2028) or PS (U+2029).
fn has_unicode_line_separator(bytes: &[u8]) -> bool {
    let lead = bytes
        .iter()
        .fold(false, |any, &b| any | (b == 0xc2) | (b == 0xe2));
    lead && (bytes.windows(2).any(|w| w == [0xc2, 0x85])
        || bytes
            .windows(3)
            .any(|w| w == [0xe2, 0x80, 0xa8] || w == [0xe2, 0x80, 0xa9]))
}

/// A header value (folds included) may hold HTAB, SP, visible ASCII and UTF-8. A control
/// byte other than CR and LF is allowed only as a quoted-pair inside a quoted string that
/// closes within the value (RFC 3261 §25.1: `quoted-pair = "\\" (%x00-09 / %x0B-0C /
/// %x0E-7F)`, as RFC 4475 'intmeth' uses it), where no parser can take it for anything but
/// text. The Unicode line separators NEL, LS and PS are refused everywhere: a next hop that
/// splits lines on them would read headers the edge never saw.
fn check_value_bytes(bytes: &[u8], name: Option<HeaderName>) -> Result<(), Why> {
    // Nearly every value is printable ASCII: one branch-free pass (it vectorises) proves
    // it holds none of the bytes the walk below looks at (control bytes, DEL, and the
    // lead bytes of NEL, LS and PS).
    let suspect = |b: u8| {
        ((b < 0x20) & (b != HTAB) & (b != b'\r') & (b != b'\n'))
            | (b == 0x7f)
            | (b == 0xc2)
            | (b == 0xe2)
    };
    if !bytes.iter().fold(false, |any, &b| any | suspect(b)) {
        return Ok(());
    }
    let illegal = Err(Why::IllegalByte(name));
    let mut in_quote = false;
    // An escaped control byte seen in the quoted string still open.
    let mut escaped_control = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            // The CR LF of a fold: the tokenizer proved each is followed by SP or HTAB.
            b'\r' | b'\n' => {}
            b'"' => {
                in_quote = !in_quote;
                escaped_control = false;
            }
            b'\\' if in_quote => {
                match bytes.get(i + 1) {
                    None | Some(b'\r' | b'\n') => return illegal,
                    Some(&next) if next < 0x20 || next == 0x7f => escaped_control = true,
                    Some(_) => {}
                }
                i += 2;
                continue;
            }
            HTAB => {}
            0..=0x1f | 0x7f => return illegal,
            0xc2 if bytes.get(i + 1) == Some(&0x85) => return illegal,
            0xe2 if matches!(bytes.get(i + 1..i + 3), Some([0x80, 0xa8 | 0xa9])) => return illegal,
            _ => {}
        }
        i += 1;
    }
    if in_quote && escaped_control {
        return illegal;
    }
    Ok(())
}

fn trim_end(buf: &[u8], s: Span) -> Span {
    let mut end = s.end;
    while end > s.start && buf.get(end - 1).is_some_and(|&b| is_lws(b)) {
        end -= 1;
    }
    Span::new(s.start, end)
}

fn trim_start(buf: &[u8], s: Span) -> Span {
    let mut start = s.start;
    while start < s.end && buf.get(start).is_some_and(|&b| is_lws(b)) {
        start += 1;
    }
    Span::new(start, s.end)
}

/// Trims LWS (folds included) from both ends of a span.
pub fn trim(buf: &[u8], s: Span) -> Span {
    trim_start(buf, trim_end(buf, s))
}

fn parse_start_line(buf: &[u8], line: Span) -> Result<StartLine, Why> {
    let bytes = line.of(buf);
    if bytes.iter().any(|&b| b < 0x20 || b == 0x7f) || has_unicode_line_separator(bytes) {
        return Err(Why::IllegalByte(None));
    }
    if bytes.len() >= 4
        && bytes
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
    {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase (RFC 3261 §7.2).
        let sp1 = bytes
            .iter()
            .position(|&b| b == SP)
            .ok_or(Why::MalformedStartLine)?;
        if !bytes
            .get(..sp1)
            .unwrap_or_default()
            .eq_ignore_ascii_case(b"SIP/2.0")
        {
            return Err(Why::MalformedStartLine);
        }
        let code = bytes.get(sp1 + 1..sp1 + 4).ok_or(Why::MalformedStartLine)?;
        if bytes.get(sp1 + 4) != Some(&SP) || !code.iter().all(u8::is_ascii_digit) {
            return Err(Why::MalformedStartLine);
        }
        let status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
        if !(100..=699).contains(&status) {
            return Err(Why::MalformedStartLine);
        }
        return Ok(StartLine::Response {
            status,
            reason: Span::new(line.start + sp1 + 5, line.end),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version: single SPs (RFC 3261 §7.1).
    let mut parts = bytes.split(|&b| b == SP);
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Why::MalformedStartLine);
    };
    // Version and URI are checked by validation, which can still answer 505 or 416 because
    // the headers are known by then.
    if !is_token(method) || uri.is_empty() || version.is_empty() {
        return Err(Why::MalformedStartLine);
    }
    let uri_start = line.start + method.len() + 1;
    let uri_span = Span::new(uri_start, uri_start + uri.len());
    Ok(StartLine::Request {
        method: Span::new(line.start, line.start + method.len()),
        uri: uri_span,
    })
}

/// URI schemes the edge carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
}

/// What the edge reads of a URI (offsets relative to the URI bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    /// The user part (sip/sips), empty if none.
    pub user: Span,
    /// Host as written (brackets included for IPv6); empty for tel.
    pub host: Span,
    pub port: Option<u16>,
    /// `;params` (without the first `;`), up to `?` or the end.
    pub params: Span,
    /// Whether `?headers` follow (never allowed in a Request-URI).
    pub has_headers: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UriError {
    Scheme,
    Malformed,
}

/// Parses a SIP, SIPS or tel URI (RFC 3261 §19.1, RFC 3966) strictly enough to route on it.
pub fn parse_uri(uri: &[u8]) -> Result<Uri, UriError> {
    let colon = uri
        .iter()
        .position(|&b| b == b':')
        .ok_or(UriError::Malformed)?;
    let scheme = uri.get(..colon).unwrap_or_default();
    if !scheme.first().is_some_and(u8::is_ascii_alphabetic)
        || !scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Err(UriError::Malformed);
    }
    // Visible ASCII or UTF-8 only; never whitespace, quotes or angle brackets.
    if uri
        .iter()
        .any(|&b| b <= SP || b == 0x7f || matches!(b, b'<' | b'>' | b'"'))
    {
        return Err(UriError::Malformed);
    }
    let rest_start = colon + 1;
    let rest = uri.get(rest_start..).unwrap_or_default();
    let scheme = if scheme.eq_ignore_ascii_case(b"sip") {
        Scheme::Sip
    } else if scheme.eq_ignore_ascii_case(b"sips") {
        Scheme::Sips
    } else if scheme.eq_ignore_ascii_case(b"tel") {
        if rest.is_empty() {
            return Err(UriError::Malformed);
        }
        let end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
        return Ok(Uri {
            scheme: Scheme::Tel,
            user: Span::new(rest_start, rest_start + end),
            host: Span::default(),
            port: None,
            params: Span::new((rest_start + end + 1).min(uri.len()), uri.len()),
            has_headers: false,
        });
    } else {
        return Err(UriError::Scheme);
    };
    // '@' is allowed unescaped only once, ending the userinfo (RFC 3261 §25.1: not in the
    // user part, params or headers). `sip:victim@elsewhere@ours` is refused rather than
    // read one way here and another way by the next hop.
    if rest.iter().filter(|&&b| b == b'@').count() > 1 {
        return Err(UriError::Malformed);
    }
    let host_start = rest.iter().rposition(|&b| b == b'@').map_or(0, |p| p + 1);
    if host_start == 1 {
        return Err(UriError::Malformed); // "sip:@host"
    }
    let user_end = if host_start > 0 {
        // userinfo = user [":" password]
        let info = rest.get(..host_start - 1).unwrap_or_default();
        info.iter().position(|&b| b == b':').unwrap_or(info.len())
    } else {
        0
    };
    let hostport = rest.get(host_start..).unwrap_or_default();
    let hp_end = hostport
        .iter()
        .position(|&b| b == b';' || b == b'?')
        .unwrap_or(hostport.len());
    let (host_len, port) =
        parse_hostport(hostport.get(..hp_end).unwrap_or_default()).ok_or(UriError::Malformed)?;
    let params_start = rest_start + host_start + hp_end;
    // `?` may appear in the user part (RFC 3261 user-unreserved); headers start at the
    // first `?` after the host.
    let headers_at = rest
        .get(host_start..)
        .unwrap_or_default()
        .iter()
        .position(|&b| b == b'?')
        .map(|q| rest_start + host_start + q);
    let params_end = headers_at.unwrap_or(uri.len()).max(params_start);
    let params = if uri.get(params_start) == Some(&b';') {
        Span::new(params_start + 1, params_end)
    } else {
        Span::new(params_start, params_start)
    };
    Ok(Uri {
        scheme,
        user: Span::new(rest_start, rest_start + user_end),
        host: Span::new(rest_start + host_start, rest_start + host_start + host_len),
        port,
        params,
        has_headers: headers_at.is_some(),
    })
}

/// `host [":" port]` where host is a hostname, IPv4 address or bracketed IPv6 reference.
/// Returns the host's length and the port.
pub fn parse_hostport(hp: &[u8]) -> Option<(usize, Option<u16>)> {
    let host_len = if hp.first() == Some(&b'[') {
        let close = hp.iter().position(|&b| b == b']')?;
        let inner = std::str::from_utf8(hp.get(1..close)?).ok()?;
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        close + 1
    } else {
        let end = hp.iter().position(|&b| b == b':').unwrap_or(hp.len());
        let host = hp.get(..end)?;
        if !is_hostname_or_ipv4(host) {
            return None;
        }
        end
    };
    match hp.get(host_len..)? {
        [] => Some((host_len, None)),
        [b':', digits @ ..] => Some((host_len, Some(parse_port(digits)?))),
        _ => None,
    }
}

fn parse_port(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).ok()
}

/// RFC 3261 `hostname` (labels of alphanumerics and '-', optional final dot) or IPv4.
fn is_hostname_or_ipv4(h: &[u8]) -> bool {
    if h.is_empty() || h.len() > 253 {
        return false;
    }
    let h = h.strip_suffix(b".").unwrap_or(h);
    h.split(|&b| b == b'.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
            && label.first() != Some(&b'-')
            && label.last() != Some(&b'-')
    })
}

/// A list or parameter grammar error (the caller knows which header it was).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// Splits a header value at top-level commas: commas inside `<…>`, quoted strings (with
/// backslash escapes) do not split. Returns spans trimmed of LWS; an empty element or an
/// unbalanced quote or bracket is an error.
pub fn split_commas(buf: &[u8], value: Span, out: &mut Vec<Span>) -> Result<(), Malformed> {
    let bytes = value.of(buf);
    let mut in_quote = false;
    let mut escaped = false;
    let mut in_angle = false;
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if in_quote {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_quote = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_quote = true,
            b'<' if !in_angle => in_angle = true,
            b'>' if in_angle => in_angle = false,
            b'<' | b'>' => return Err(Malformed),
            b',' if !in_angle => {
                push_element(buf, Span::new(value.start + start, value.start + i), out)?;
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quote || in_angle {
        return Err(Malformed);
    }
    push_element(buf, Span::new(value.start + start, value.end), out)
}

fn push_element(buf: &[u8], s: Span, out: &mut Vec<Span>) -> Result<(), Malformed> {
    let t = trim(buf, s);
    if t.is_empty() {
        return Err(Malformed);
    }
    out.push(t);
    Ok(())
}

/// One `;name[=value]` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: Span,
    /// `None` for a flag parameter (`;lr`).
    pub value: Option<Span>,
    /// From the `;` to the end of the value.
    pub whole: Span,
}

/// Parses `;name[=value]…` parameters starting at a `;` (or at the end). Names are tokens;
/// values are tokens, host-like text or quoted strings. Anything else is an error.
pub fn parse_params(buf: &[u8], span: Span, out: &mut Vec<Param>) -> Result<(), Malformed> {
    let mut pos = span.start;
    let at = |i: usize| buf.get(i).copied();
    let skip_lws = |mut i: usize| {
        while i < span.end && at(i).is_some_and(is_lws) {
            i += 1;
        }
        i
    };
    pos = skip_lws(pos);
    while pos < span.end {
        if at(pos) != Some(b';') {
            return Err(Malformed);
        }
        let whole_start = pos;
        pos = skip_lws(pos + 1);
        let name_start = pos;
        while pos < span.end && at(pos).is_some_and(is_token_char) {
            pos += 1;
        }
        if pos == name_start {
            return Err(Malformed);
        }
        let name = Span::new(name_start, pos);
        pos = skip_lws(pos);
        let mut value = None;
        if at(pos) == Some(b'=') && pos < span.end {
            pos = skip_lws(pos + 1);
            let v_start = pos;
            if at(pos) == Some(b'"') {
                pos += 1;
                loop {
                    match at(pos) {
                        _ if pos >= span.end => return Err(Malformed),
                        Some(b'\\') => pos += 2,
                        Some(b'"') => {
                            pos += 1;
                            break;
                        }
                        _ => pos += 1,
                    }
                }
            } else {
                // token, or an IPv6 reference / address for received= and maddr=.
                while pos < span.end
                    && at(pos).is_some_and(|b| is_token_char(b) || matches!(b, b':' | b'[' | b']'))
                {
                    pos += 1;
                }
            }
            if pos == v_start || pos > span.end {
                return Err(Malformed);
            }
            value = Some(Span::new(v_start, pos));
        }
        out.push(Param {
            name,
            value,
            whole: Span::new(whole_start, pos),
        });
        pos = skip_lws(pos);
    }
    Ok(())
}

/// Finds a parameter by name (case-insensitive); an error if it appears twice.
pub fn find_param(buf: &[u8], params: &[Param], name: &[u8]) -> Result<Option<Param>, Malformed> {
    let mut found = None;
    for p in params {
        if p.name.of(buf).eq_ignore_ascii_case(name) {
            if found.is_some() {
                return Err(Malformed);
            }
            found = Some(*p);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_headers: 64,
        max_line_bytes: 1024,
    };

    fn head(s: &str) -> Result<Head, Why> {
        let b = s.as_bytes();
        let end = find_head_end(b, 0).expect("test input has a header block");
        parse_head(b, end, &LIMITS)
    }

    #[test]
    fn folded_header_extends_previous_value() {
        let text = "OPTIONS sip:a@b SIP/2.0\r\nSubject: one\r\n  two\r\nX: y\r\n\r\n";
        let h = head(text).unwrap();
        assert!(h.folded);
        assert_eq!(h.headers.len(), 2);
        assert_eq!(h.headers[0].value.of(text.as_bytes()), b"one\r\n  two");
        assert_eq!(h.len, text.len());
    }

    #[test]
    fn space_before_colon_is_legal_but_not_inside_name() {
        assert!(head("OPTIONS sip:a@b SIP/2.0\r\nVia : x\r\n\r\n").is_ok());
        assert_eq!(
            head("OPTIONS sip:a@b SIP/2.0\r\nContent Length: 0\r\n\r\n"),
            Err(Why::MalformedHeaderName)
        );
    }

    #[test]
    fn bare_lf_and_nul_are_rejected() {
        assert!(matches!(
            head("OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\nVia: evil\r\n\r\n"),
            Err(Why::IllegalByte(_))
        ));
        assert!(matches!(
            head("OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\0y\r\n\r\n"),
            Err(Why::IllegalByte(_))
        ));
    }

    #[test]
    fn bare_lf_cannot_end_the_header_block_early() {
        // An early "empty line" made of a bare LF would turn the rest into a body.
        for text in [
            "OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\nVia: evil\r\n\r\n",
            "OPTIONS sip:a@b SIP/2.0\r\nSubject: a\r\n b\nX: y\r\n\r\n",
            "OPTIONS sip:a@b SIP/2.0\r\nSubject: a\r\n\r\r\n\r\n",
            "OPTIONS sip:a@b SIP/2.0\nX: y\r\n\r\n",
        ] {
            assert!(matches!(head(text), Err(Why::IllegalByte(_))), "{text:?}");
        }
    }

    #[test]
    fn uris() {
        let u = parse_uri(b"sip:alice@[2001:db8::10]:5061;transport=tls").unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.port, Some(5061));
        assert_eq!(
            u.host.of(b"sip:alice@[2001:db8::10]:5061;transport=tls"),
            b"[2001:db8::10]"
        );
        assert!(parse_uri(b"tel:+1-201-555-0123").is_ok());
        assert_eq!(parse_uri(b"http://x"), Err(UriError::Scheme));
        assert_eq!(parse_uri(b"sip:a@b:99999"), Err(UriError::Malformed));
        assert_eq!(parse_uri(b"sip:a@-b"), Err(UriError::Malformed));
        assert_eq!(parse_uri(b"sip:@b"), Err(UriError::Malformed));
        let u = parse_uri(b"SIP:a;x=y@host.example.com;lr").unwrap();
        assert_eq!(
            u.host.of(b"SIP:a;x=y@host.example.com;lr"),
            b"host.example.com"
        );
        assert_eq!(u.params.of(b"SIP:a;x=y@host.example.com;lr"), b"lr");
    }

    #[test]
    fn commas_inside_angles_and_quotes_do_not_split() {
        let v = br#"<sip:a,b@h;lr>, "x, y" <sip:c@d>,<sip:e@f>"#;
        let mut out = Vec::new();
        split_commas(v, Span::new(0, v.len()), &mut out).unwrap();
        assert_eq!(out.len(), 3);
        assert!(split_commas(b"a,,b", Span::new(0, 4), &mut Vec::new()).is_err());
        assert!(split_commas(b"<sip:a", Span::new(0, 6), &mut Vec::new()).is_err());
    }

    #[test]
    fn params() {
        let v = br#";branch=z9hG4bK1 ; rport;received=[::1];x="a;b""#;
        let mut out = Vec::new();
        parse_params(v, Span::new(0, v.len()), &mut out).unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(out[1].value, None);
        assert!(find_param(v, &out, b"BRANCH").unwrap().is_some());
        assert!(parse_params(b";=x", Span::new(0, 3), &mut Vec::new()).is_err());
    }
}
