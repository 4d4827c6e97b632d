//! What the proxy writes: its Via, Record-Route and Path entries, the trust stamp, numbers
//! without temporary strings, and the tidy-ups applied with every splice.

use super::*;

/// `n` in decimal, without a temporary string.
pub(super) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
        start -= 1;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
}

/// `n` as 16 lower-case hex digits.
pub(super) fn push_hex16(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        let nibble = ((n >> (shift * 4)) & 0xf) as usize;
        out.push(HEX.get(nibble).copied().unwrap_or(b'0'));
    }
}

pub(super) trait ApplyTidy {
    fn apply_tidy(self, msg: &Message) -> Option<Vec<u8>>;
}

impl ApplyTidy for Splice {
    /// Applies the proxy's edits plus tidy-ups that remove ambiguity without changing
    /// meaning: folded lines are flattened; whitespace between a header name and its
    /// colon (`Content-Length : 5`, legal per RFC 3261 HCOLON) is removed; and a
    /// Content-Length with leading zeros is written in plain decimal, so no next hop can
    /// read the head or the body's length differently from the edge.
    fn apply_tidy(mut self, msg: &Message) -> Option<Vec<u8>> {
        for h in &msg.head.headers {
            let between = Span::new(h.name_span.end, h.value.start.max(h.name_span.end));
            if let Some(colon) = msg.bytes(between).iter().position(|&b| b == b':') {
                if colon > 0 {
                    self.delete_unless_edited(Span::new(h.name_span.end, h.name_span.end + colon));
                }
            }
            if h.name == HeaderName::ContentLength {
                let digits = msg.bytes(h.value);
                if digits.len() > 1 && digits.first() == Some(&b'0') {
                    let n = msg.body.len();
                    self.replace(h.value, n.to_string().as_bytes());
                }
            }
        }
        self.apply(&msg.raw, msg.head.folded.then_some(msg.head.len))
    }
}

/// Offset of the first header line with this name, or the end of the start line.
pub(super) fn first_line_of(msg: &Message, name: HeaderName) -> usize {
    msg.head
        .headers
        .iter()
        .find(|h| h.name == name)
        .map_or(msg.head.start_line.end, |h| h.line.start)
}

pub(super) fn write_via(out: &mut Vec<u8>, side: &SideAddr, branch: u64, token: &FlowToken) {
    out.extend_from_slice(b"Via: SIP/2.0/TLS ");
    out.extend_from_slice(side.host.as_bytes());
    out.push(b':');
    push_decimal(out, u64::from(side.port));
    out.extend_from_slice(b";branch=");
    out.extend_from_slice(BRANCH_PREFIX);
    push_hex16(out, branch);
    out.extend_from_slice(b";ftok=");
    out.extend_from_slice(token.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The trust stamp for the inside on what a partner edge sent (the Lync Edge's form): what
/// kind of partner, and which edge, verified by certificate.
pub(super) fn write_trust(out: &mut Vec<u8>, kind: &str, edge: &[u8]) {
    out.extend_from_slice(b"ms-edge-proxy-message-trust: ms-source-type=");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b";ms-ep-fqdn=");
    out.extend_from_slice(edge);
    out.extend_from_slice(b";ms-source-network=federation;ms-source-verified-user=verified\r\n");
}

/// `Record-Route: <first>, <second>` (RFC 5658: one entry per interface, the first facing
/// the next hop), both carrying `token`.
pub(super) fn write_record_route(
    out: &mut Vec<u8>,
    first: &SideAddr,
    second: &SideAddr,
    token: &FlowToken,
) {
    out.extend_from_slice(b"Record-Route: ");
    write_route_uri(out, first, Some(token));
    out.extend_from_slice(b", ");
    write_route_uri(out, second, Some(token));
    out.extend_from_slice(b"\r\n");
}

pub(super) fn write_route_uri(out: &mut Vec<u8>, side: &SideAddr, token: Option<&FlowToken>) {
    out.extend_from_slice(b"<sip:");
    if let Some(t) = token {
        out.extend_from_slice(t.as_bytes());
        out.push(b'@');
    }
    out.extend_from_slice(side.host.as_bytes());
    out.push(b':');
    push_decimal(out, u64::from(side.port));
    out.extend_from_slice(b";transport=tls;lr>");
}
