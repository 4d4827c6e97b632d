//! Stream framing (RFC 3261 §18.3, RFC 5626 §3.5.1): finds where one message ends in the
//! bytes of a TLS stream.
//!
//! Owns: CRLF keep-alives, the header-block size limit, and Content-Length — mandatory on
//! streams, exactly one, digits only, within the body limit. Any framing error leaves the
//! stream unsynchronised, so the caller answers if it can and closes the connection.

use super::message::content_length;
use super::parse::{find_head_end, parse_head, Head, HeadLimits};
use super::reject::Why;

/// Limits on one framed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    pub head: HeadLimits,
    /// Largest header block (start line to the empty line, inclusive).
    pub max_header_bytes: usize,
    /// Largest body (Content-Length).
    pub max_body_bytes: usize,
}

/// What the front of the buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A CRLF CRLF keep-alive ping: consume 4 bytes and answer CRLF (RFC 5626 §3.5.1).
    Ping,
    /// A lone CRLF (a pong, or padding before a start line, RFC 3261 §7.5): consume 2 bytes.
    Pong,
    /// A complete message of `len` bytes; `head` holds offsets from the buffer's start.
    Message { head: Head, len: usize },
}

/// Incremental framer for one connection. Remembers how far it scanned so that a sender
/// trickling bytes costs linear time, and keeps the parsed head while the body arrives.
#[derive(Debug, Default)]
pub struct Framer {
    scanned: usize,
    pending: Option<(Head, usize)>,
}

impl Framer {
    pub fn new() -> Framer {
        Framer::default()
    }

    /// Whether part of a message has arrived (for the header timeout: a keep-alive-only
    /// connection is idle, not slow).
    pub fn is_mid_message(&self, buf: &[u8]) -> bool {
        !buf.is_empty() && !buf.iter().all(|&b| b == b'\r' || b == b'\n')
    }

    /// Looks at the front of `buf`. `Ok(None)` means more bytes are needed. After a frame is
    /// returned the caller consumes its length from `buf` before calling again.
    pub fn check(&mut self, buf: &[u8], limits: &FrameLimits) -> Result<Option<Frame>, Why> {
        if let Some((_, len)) = &self.pending {
            if buf.len() < *len {
                return Ok(None);
            }
            let Some((head, len)) = self.pending.take() else {
                return Ok(None);
            };
            self.scanned = 0;
            return Ok(Some(Frame::Message { head, len }));
        }
        match buf {
            [b'\r', b'\n', b'\r', b'\n', ..] => return Ok(Some(Frame::Ping)),
            [b'\r', b'\n', next, ..] if *next != b'\r' => return Ok(Some(Frame::Pong)),
            [b'\r'] | [b'\r', b'\n'] | [b'\r', b'\n', b'\r'] => return Ok(None),
            _ => {}
        }
        let Some(head_end) = find_head_end(buf, self.scanned) else {
            if buf.len() > limits.max_header_bytes {
                return Err(Why::HeaderBlockTooLarge);
            }
            self.scanned = buf.len();
            return Ok(None);
        };
        if head_end > limits.max_header_bytes {
            return Err(Why::HeaderBlockTooLarge);
        }
        let head = parse_head(buf, head_end, &limits.head)?;
        let body = content_length(buf, &head)?;
        if body > limits.max_body_bytes {
            return Err(Why::BodyTooLarge);
        }
        let len = head_end + body;
        if buf.len() < len {
            self.pending = Some((head, len));
            return Ok(None);
        }
        self.scanned = 0;
        Ok(Some(Frame::Message { head, len }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits {
        head: HeadLimits {
            max_headers: 32,
            max_line_bytes: 512,
        },
        max_header_bytes: 2048,
        max_body_bytes: 1024,
    };

    const MSG: &[u8] = b"MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn keepalives() {
        let mut f = Framer::new();
        assert_eq!(f.check(b"\r\n\r\nMESS", &LIMITS), Ok(Some(Frame::Ping)));
        assert_eq!(f.check(b"\r\nMESS", &LIMITS), Ok(Some(Frame::Pong)));
        assert_eq!(f.check(b"\r\n", &LIMITS), Ok(None));
    }

    #[test]
    fn byte_by_byte_equals_all_at_once() {
        let mut f = Framer::new();
        for n in 1..MSG.len() {
            assert_eq!(f.check(&MSG[..n], &LIMITS), Ok(None), "at {n}");
        }
        match f.check(MSG, &LIMITS) {
            Ok(Some(Frame::Message { len, .. })) => assert_eq!(len, MSG.len()),
            other => panic!("{other:?}"),
        }
        // The framer is ready for the next message.
        let two = [MSG, MSG].concat();
        match f.check(&two, &LIMITS) {
            Ok(Some(Frame::Message { len, .. })) => assert_eq!(len, MSG.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn content_length_rules() {
        let mut f = Framer::new();
        let missing = b"MESSAGE sip:b@x SIP/2.0\r\nVia: x\r\n\r\n";
        assert_eq!(f.check(missing, &LIMITS), Err(Why::MissingContentLength));
        let dup = b"MESSAGE sip:b@x SIP/2.0\r\nContent-Length: 0\r\nl: 0\r\n\r\n";
        assert_eq!(
            Framer::new().check(dup, &LIMITS),
            Err(Why::ConflictingContentLength)
        );
        let neg = b"MESSAGE sip:b@x SIP/2.0\r\nContent-Length: -1\r\n\r\n";
        assert!(Framer::new().check(neg, &LIMITS).is_err());
        let big = b"MESSAGE sip:b@x SIP/2.0\r\nContent-Length: 1025\r\n\r\n";
        assert_eq!(Framer::new().check(big, &LIMITS), Err(Why::BodyTooLarge));
    }

    #[test]
    fn header_block_limit() {
        let mut f = Framer::new();
        let long = vec![b'A'; 2049];
        assert_eq!(f.check(&long, &LIMITS), Err(Why::HeaderBlockTooLarge));
    }
}
