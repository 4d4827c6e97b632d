//! SIP for the Access Edge: stream framing, strict validation, proxy edits by splicing the
//! original bytes, flow tokens, and the next-hop pool's health and load bookkeeping.
//!
//! The pipeline for one message: [`frame::Framer`] finds a complete message on a stream,
//! [`message::Message::parse`] tokenizes and validates it, [`proxy::Proxy::handle`] decides
//! (forward where, with which edits, or reject how) and [`splice`] writes the bytes.

pub mod dialogs;
pub mod federation;
pub mod frame;
pub mod health;
pub mod message;
pub mod outstanding;
pub mod parse;
pub mod proxy;
pub mod reject;
pub mod splice;
pub mod token;

pub use message::Message;
pub use reject::Why;

/// Header names the edge reads or edits; everything else is `Other` and passes byte-exact.
/// Compact forms (RFC 3261 §7.3.3) map to the same name, so `l:` and `Content-Length:`
/// together are a duplicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    ContentLength,
    Route,
    RecordRoute,
    Path,
    Contact,
    ProxyRequire,
    Require,
    Supported,
    /// `ms-edge-proxy-message-trust`: only the edge may set it.
    MsEdgeProxyMessageTrust,
    /// `P-Asserted-Identity` (RFC 3325): only trusted hops may set it.
    PAssertedIdentity,
    /// `Privacy` (RFC 3323): `id` means the asserted identity must not leave the trust domain.
    Privacy,
    ContentType,
    Other,
}

impl HeaderName {
    /// Maps a header name as written (any case, compact or long form).
    pub fn from_bytes(name: &[u8]) -> HeaderName {
        if name.len() == 1 {
            return match name.first().map(u8::to_ascii_lowercase) {
                Some(b'v') => HeaderName::Via,
                Some(b'f') => HeaderName::From,
                Some(b't') => HeaderName::To,
                Some(b'i') => HeaderName::CallId,
                Some(b'l') => HeaderName::ContentLength,
                Some(b'm') => HeaderName::Contact,
                Some(b'k') => HeaderName::Supported,
                Some(b'c') => HeaderName::ContentType,
                _ => HeaderName::Other,
            };
        }
        const LONG: &[(&[u8], HeaderName)] = &[
            (b"via", HeaderName::Via),
            (b"from", HeaderName::From),
            (b"to", HeaderName::To),
            (b"call-id", HeaderName::CallId),
            (b"cseq", HeaderName::CSeq),
            (b"max-forwards", HeaderName::MaxForwards),
            (b"content-length", HeaderName::ContentLength),
            (b"route", HeaderName::Route),
            (b"record-route", HeaderName::RecordRoute),
            (b"path", HeaderName::Path),
            (b"contact", HeaderName::Contact),
            (b"proxy-require", HeaderName::ProxyRequire),
            (b"require", HeaderName::Require),
            (b"supported", HeaderName::Supported),
            (
                b"ms-edge-proxy-message-trust",
                HeaderName::MsEdgeProxyMessageTrust,
            ),
            (b"p-asserted-identity", HeaderName::PAssertedIdentity),
            (b"privacy", HeaderName::Privacy),
            (b"content-type", HeaderName::ContentType),
        ];
        LONG.iter()
            .find(|(long, _)| long.eq_ignore_ascii_case(name))
            .map_or(HeaderName::Other, |&(_, h)| h)
    }

    /// The canonical long form, for reason phrases and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderName::Via => "Via",
            HeaderName::From => "From",
            HeaderName::To => "To",
            HeaderName::CallId => "Call-ID",
            HeaderName::CSeq => "CSeq",
            HeaderName::MaxForwards => "Max-Forwards",
            HeaderName::ContentLength => "Content-Length",
            HeaderName::Route => "Route",
            HeaderName::RecordRoute => "Record-Route",
            HeaderName::Path => "Path",
            HeaderName::Contact => "Contact",
            HeaderName::ProxyRequire => "Proxy-Require",
            HeaderName::Require => "Require",
            HeaderName::Supported => "Supported",
            HeaderName::MsEdgeProxyMessageTrust => "ms-edge-proxy-message-trust",
            HeaderName::PAssertedIdentity => "P-Asserted-Identity",
            HeaderName::Privacy => "Privacy",
            HeaderName::ContentType => "Content-Type",
            HeaderName::Other => "header",
        }
    }

    /// Headers that carry trust: stripped from anything arriving from outside.
    pub fn carries_trust(self) -> bool {
        matches!(
            self,
            HeaderName::MsEdgeProxyMessageTrust | HeaderName::PAssertedIdentity
        )
    }
}
